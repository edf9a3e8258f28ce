// Package blockcmd is the `weed block` command: its Run dispatches to
// block subcommands, each with its own flag set. The first is
// `weed block serve`, which serves one local volume file over NBD and
// iSCSI until SIGINT or SIGTERM.
//
// It owns command-line parsing, validation and process lifetime (signals,
// orderly shutdown) for those subcommands. It never implements the volume
// engine or a wire protocol; it wires blockvol and the frontends together.
package blockcmd

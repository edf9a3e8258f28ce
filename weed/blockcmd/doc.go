// Package blockcmd is the `weed block` command: Main dispatches to block
// subcommands, each with its own flag set. The first is `weed block serve`,
// which serves one local volume file over NBD and iSCSI until its context is
// cancelled (the weed binary cancels it on SIGINT/SIGTERM).
//
// It owns command-line parsing, validation and the orderly stop of those
// subcommands. It does not import upstream SeaweedFS (the weed main package
// adapts it to upstream's command framework and signal handling), so its
// tests build in seconds. It never implements the volume
// engine or a wire protocol; it wires blockvol and the frontends together.
package blockcmd

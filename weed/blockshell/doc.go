// Package blockshell is the `weed shell` face of block volumes: the
// commands block.create, block.list, block.status, block.promote,
// block.repair and block.delete — their flags, size parsing, the calls to
// the master leader's BlockMaster gRPC service, the text and JSON output
// (failover count, loss warnings, replica lag and the primary's recoveries
// of copies — phase, plan, bytes done/total, ETA, last outcome — included),
// and the mapping of gRPC errors to messages an operator can act on.
//
// block.repair -name=N [-replica=SERVER] [-rebuild] [-json] calls
// RepairVolume and says which copies will be recovered and which members
// were left alone as in sync; -json prints RepairView.
//
// It does not import upstream SeaweedFS, so its tests build and run in
// seconds. The connection to the master comes in through Env: package
// weed/blockshell/weedshell adapts upstream's shell (its CommandEnv and its
// master client) to Env and appends the commands to upstream's
// shell.Commands.
//
//	err := blockshell.Run(ctx, env, "block.create", []string{"-name=db1", "-size=20GiB"}, os.Stdout)
//
// A follower master answers "not leader; leader is X": Run retries once on
// X before reporting that the master is not the leader.
//
// It owns: command-line parsing and validation of the block commands, the
// rendering of VolumeInfo for operators (including one-line NBD and iSCSI
// attach examples) and friendly errors.
//
// It must never: decide anything the master decides (placement, epochs,
// leases), keep state between commands, or print a success line for a
// request the master refused.
package blockshell

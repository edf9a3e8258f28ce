// Package v2bridge gives the recovery executor (package executor) real I/O:
// the primary side (Peer) reads its blockvol WAL and extent and ships them
// to the replica side (Service), which applies them to a blockvol volume
// through ApplyReplicatedBatch, TruncateWAL and the rebuild sequence
// (BeginRebuild, WriteBase, InstallBase, FinishRebuild).
//
// Wire: recovery traffic has its own listener (Service.Serve), separate
// from the steady-state data plane of package replication, with the same
// shape: length-prefixed frames with a CRC32C, one request and one answer at
// a time, and every request naming the volume, the sender's epoch and the
// attempt number of its token. The replica refuses an epoch other than its
// volume's (replication.ErrStaleEpoch / replication.ErrEpochAhead) and an
// attempt older than the newest one it has seen at that epoch
// (engine.ErrStaleToken), so a superseded attempt fails closed on both sides;
// the Peer calls Slots.Check(tok) before every request too.
//
// Rebuild from the primary's extent (engine.Full): the base LSN is the
// primary's durable LSN when the base is pinned; the executor holds the WAL
// after it before the first byte is read. The extent is then read while
// writes continue (a fuzzy image: every block holds its version at the base
// LSN or a newer one), so the replay of (baseLSN, target] rewrites every
// block a racing write touched, in LSN order, and the result is exact.
// The manifest (base LSN, size) travels with the first chunk; the SHA-256
// is computed by the primary over exactly the bytes it sent and checked by
// the replica over exactly the bytes it received (VerifyBase), because a
// fuzzy image has no digest before it is read. executor.Base.SHA256 is
// therefore left zero by PinBase.
//
// Snapshot rebuilds (engine.Snapshot) are not possible yet: blockvol has no
// snapshots, so PinBase returns executor.ErrBaseUnavailable for them.
//
// It owns: the recovery wire format, the replica-side recovery handlers and
// the executor I/O adapter (Peer.IO).
//
// It must never: import weed/ or upstream SeaweedFS, decide what recovery to
// run (engine does), renumber records, act on a request whose epoch or
// attempt is stale, report an LSN as achieved before the replica fsynced it,
// or panic on bytes from the network.
package v2bridge

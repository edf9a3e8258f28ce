// Package v2bridge gives the recovery executor (package executor) real I/O:
// the primary side (Peer) reads its blockvol WAL and extent and ships them
// to the replica side (Service), which applies them to a blockvol volume
// through ApplyReplicatedBatch, TruncateWAL and the rebuild sequence
// (BeginRebuild, WriteBase, InstallBase, FinishRebuild).
//
// Wire: recovery traffic shares the volume server's replication listener
// (one port per volume server): a Peer writes Preface (8 bytes whose first
// is no replication frame type) first on every connection it dials, and
// the replication.Server, given Route(Preface, svc), hands such connections
// to Service.ServeConn. Service.Serve accepts on a listener of its own
// (tests), checking the preface itself. After the preface the stream has
// the data plane's shape: length-prefixed frames with a CRC32C, requests
// answered in order, and every request naming the volume, the sender's
// epoch and the attempt number of its token. The replica refuses an epoch other than its
// volume's (replication.ErrStaleEpoch / replication.ErrEpochAhead) and an
// attempt older than the newest one it has seen at that epoch
// (engine.ErrStaleToken), so a superseded attempt fails closed on both sides;
// the Peer calls Slots.Check(tok) before every request too.
//
// Base digest (wire version 2, Preface "WBRECV02"; digest.go): no base
// byte is hashed with SHA-256 on the wire path. Every frame already carries
// a CRC32C of its payload, computed by the sender as it writes the frame
// and checked by the receiver as it reads it (a corrupt frame is refused
// with its reason and ends the connection); the base's digest is a
// SHA-256 over the manifest (base LSN, size) and, per base request in
// order, its kind (data or zero range), offset, length and frame CRC. The
// Peer adds each request as it writes it, the replica each request it
// applied; VerifyBase sends the Peer's and the replica compares (a request
// lost, duplicated, reordered, applied at another offset, or data turned
// into zeros gives executor.ErrBaseMismatch even where the offset checks
// would not see it). A peer of version 1 is refused at the preface.
//
// Throughput: StreamWAL encodes records straight from the WAL scan into
// pipelined apply requests of about 1 MiB; only the last request of a call
// asks the replica to fsync before it answers, so the durable LSN it
// reports covers the whole call. Base chunks (1 MiB) are not awaited one by
// one: TransferBase returns once its chunks are sent, with at most 16 of
// them unanswered, so the replica writes while the primary goes on; a
// refusal among those answers fails a later TransferBase or VerifyBase,
// which waits for all of them (nothing is trusted before VerifyBase and
// Commit anyway). While TransferBase sends a batch, a background stage
// owned by the Peer reads the next batch (the executor's next call, if it
// asks for that range; anything else is read again) and, for a snapshot
// base only, hashes the batch sent into the image's SHA-256, in two
// goroutines; whatever uses that hash or the pinned image (VerifyBase, the
// pin's Release, PinBase, Close) waits for that stage first. A batch's
// requests enter the digest as they go out, so a batch not wholly sent
// loses the transfer. A data chunk goes out in one writev from its read
// buffer; the replica reads it mostly straight into its frame buffer (a
// 16 KiB read buffer) and writes it to the extent with one pwrite per run
// of non-zero blocks. Runs of zero blocks of at least 16 KiB travel as zero
// ranges (opZero: offset and length, no bytes) and become holes on the
// replica. The replica's connection handler reads and checks the next
// frames (4 ahead) while it applies the current one. The rebuild
// needs the replica's extent fsynced once, in InstallBase (VerifyBase), not
// per chunk. The replica writes the base behind it (writeBehindLocked):
// the range holding each 16 MiB of base data written is handed to the
// disk at once (blockvol's StartBaseWriteback: sync_file_range), and
// once more than two such windows are in flight the oldest is waited for
// and dropped from the page cache (DropBase); before InstallBase the rest
// is written back and dropped too, so no large folio of the base stays
// cached for a later 4 KiB write to dirty whole. The disk writes overlap the
// transfer, InstallBase's fsync has little left to write, and the image
// streams through about 48 MiB of page cache instead of filling it: on a
// VM whose host takes freed guest memory back, filling fresh pages was
// most of a large rebuild's CPU (1 GiB: 3-4.5 CPU-s/GiB with or without a
// write load; 1.2-1.6 with the drop). The hints (blockvol's
// WritebackPacer and CacheDropper) make nothing durable; an error of a
// write-back wait fails the replica's volume (it may have taken the
// file's write-back error from the next fsync).
// The replay after the base (until Commit) asks for no fsync
// either: the replica is untrusted until Commit, which fsyncs it before it
// checks the achieved LSN and clears the flag in FinishRebuild; so replay
// progress counts records applied, and only catch-up progress (and every
// outcome) counts records the replica fsynced. Each StreamWAL call ends
// with one fsync on the replica, so a catch-up makes as many as the
// executor makes batches: callers should give executor.Config a
// BatchRecords in the thousands for 4 KiB writes (64 records a batch is
// 256 KiB per fsync) and a BatchBytes of several MiB.
//
// Rebuild from the primary's extent (engine.Full): the base LSN is the
// primary's durable LSN when the base is pinned; the executor holds the WAL
// after it before the first byte is read. The extent is then read while
// writes continue (a fuzzy image: every block holds its version at the base
// LSN or a newer one), so the replay of (baseLSN, target] rewrites every
// block a racing write touched, in LSN order, and the result is exact.
// The manifest (base LSN, size) travels with the first chunk; the digest
// is computed by the primary over exactly the requests it sent and checked
// by the replica over exactly the requests it applied (VerifyBase), because
// a fuzzy image has no digest before it is read. executor.Base.SHA256 is
// therefore left zero by PinBase.
//
// Because of that, Commit first replays the WAL on to the primary's head as
// it was when the last base byte was read (flushed on the primary first),
// then calls FinishRebuild: the replica it makes trusted is exactly the
// primary at some LSN ≥ the executor's achieved LSN (its durable LSN may
// exceed the outcome's Achieved).
//
// Planning: Peer.View builds the engine.PrimaryView and holds the WAL from
// its tail until the token's attempt ends, so the records a plan binds (a
// catch-up's From, a full rebuild's Tail-1) cannot be flushed away between
// planning and the executor's own pin; with nil terms its Terms are the
// primary's own durable term history (blockvol.Terms; unknown below the
// oldest term, then the current epoch from head+1). Peer.Report gives the
// replica's report with its term history up to its durable LSN (a hello
// with B = helloTerms; the answer carries the terms after its flags, bit
// 4), so engine.PlanRecovery matches the two histories exactly: a copy
// diverged at an old epoch is truncated or rebuilt even when all its
// records were checkpointed, and a matching one is caught up. A replica
// that does not send terms (an older build) gets the older rule (Epoch 0
// when its last record's epoch is unknown and the view names several
// epochs). The verify of a rebuild carries the primary's terms up to the
// base LSN in its Data (blockvol.InstallBaseTerms); without them the
// replica's history starts unknown.
//
// The replica side fences its volume for TruncateWAL and BeginRebuild and
// unfences it again as RoleReplica of the same epoch and lease for the
// catch-up and the replay; steady-state appends from package replication
// to that volume fail meanwhile (the primary's cursor retries).
//
// Snapshot rebuilds (engine.Snapshot, snapshot.go): View reports the
// primary volume's blockvol base snapshot (LSN, trusted) as the view's Base;
// PinBase opens exactly the snapshot at the plan's BaseLSN (manifest and
// image size checked) and fails closed with ErrSnapshotDrifted (replaced
// or deleted since planning) or ErrSnapshotUntrusted, both wrapping
// executor.ErrBaseUnavailable (the executor escalates). TransferBase then
// reads the pinned image instead of the live extent, over the same wire;
// VerifyBase checks that the bytes read hash to the manifest's SHA-256 (an
// image damaged on disk is marked untrusted on the primary and the attempt
// fails with executor.ErrBaseMismatch; the replica never installs it) and
// then sends the base's digest like a full base's, so the replica checks
// that it received exactly those bytes. The image is read once: its
// SHA-256 is never computed apart, and only on the primary.
// The image is exact, so Commit replays nothing beyond the executor's
// target.
//
// It owns: the recovery wire format, the replica-side recovery handlers and
// the executor I/O adapter (Peer.IO).
//
// It must never: import weed/ or upstream SeaweedFS, decide what recovery to
// run (engine does), renumber records, act on a request whose epoch or
// attempt is stale, report an LSN as achieved by a trusted replica (catch-up
// progress) or by a recovery (its outcome) before the replica fsynced it,
// let a replica become trusted before all it holds is durable, or panic on
// bytes from the network.
package v2bridge

// Package blockvolume is the volume-server side of block volumes in a
// SeaweedFS cluster: a Manager owns one directory of volume files (the
// volume server's -block.dir), serves every volume over NBD and iSCSI,
// answers the master's BlockVolume gRPC calls and keeps a heartbeat stream
// to the master leader, from which it takes epochs and leases.
//
// # API
//
//	m, err := blockvolume.New(blockvolume.Options{
//		Dir: "/data/block", ServerID: "10.0.0.5:8080",
//		Endpoints: &blockpb.ServerEndpoints{GrpcAddress: ..., HttpAddress: ..., DataCenter: ..., Rack: ...},
//		NBDAddr: ":10809", ISCSIAddr: ":3260", ReplAddr: ":9334",
//		Masters: func() []string { return []string{"m1:19333"} }, // gRPC addresses
//		Dial:    func(ctx context.Context, addr string) (*grpc.ClientConn, error) { ... },
//		Pulse:   500 * time.Millisecond,
//		SnapshotInterval: time.Hour,                          // -block.snapshotInterval; 0: no base snapshots
//	})
//	err = m.Start()                                          // listeners, volumes (fenced), heartbeat
//	m.Register(grpcServer)                                   // = blockpb.RegisterBlockVolumeServer(grpcServer, m.GRPCService())
//	httpMux.Handle("/block/", m.HTTPHandler())               // GET /block/status[?name=N]
//	registry.MustRegister(m.Collectors()...)                 // weedblock_volume_* metrics
//	defer m.Close()                                          // idempotent; waits for everything
//
// Endpoints: empty NBD / iSCSI / replication addresses are filled from the
// listen addresses; a listen address without a host (":3260") is advertised
// with the host of Endpoints.GrpcAddress.
//
// Volume NAME lives in Dir/NAME.blk, is the NBD export NAME and the iSCSI
// target iqn.2026-11.io.weedblock:NAME (LUN 0). Names are lower-case
// letters, digits, '.' and '-' (no '_': an IQN cannot hold it). An iSCSI
// login for a volume whose stored config names another server primary is
// redirected (temporary redirect) to that member's iscsi_address.
//
// # Epochs and leases
//
// Every volume opens fenced: reads work, writes fail (NBD EPERM, SCSI DATA
// PROTECT / WRITE PROTECTED). The volume's config blob holds the
// marshalled blockpb.EpochConfig it was last given (AllocateVolume or a
// heartbeat assignment). Each heartbeat carries a seq; the Manager
// remembers when it sent each one. A volume becomes writable only through
// an assignment naming this server primary of the volume's epoch (the
// master sends one while a primary reports itself fenced): it is unfenced
// until send_time(heartbeat_seq) + lease_ms — the lease starts when the
// heartbeat was sent, never when the answer came, so the volume server's
// lease always ends before the master's view of it. Later answers with
// lease_ms > 0 renew every primary so confirmed in this process (the
// server-wide grant); AllocateVolume alone, a restart, or a volume the
// registry does not know never unfence anything. Without master contact no
// renewal arrives and the engine refuses writes once the lease runs out.
// Response processing order: assignments (a newer epoch where this server
// is not a member fences the volume at that epoch; one that keeps it
// primary moves it there without a gap; a replica is unfenced as replica;
// re-applying the current config changes nothing; an assignment that would
// create a volume deleted here at that epoch or later is stale and
// ignored), then deletes (the volume is closed, its sessions dropped and
// its file removed), then lease renewals.
//
// The report's epoch is the volume's persisted epoch; role is this server's
// role in the stored config of that epoch; fenced means "refuses frontend
// writes now" (fenced, not primary, lease over, or unhealthy).
//
// # Replication (DESIGN §5, §7)
//
// ReplAddr is the replication listener (a replication.Server for every
// volume here). A volume whose stored config of its current epoch names
// this server a REPLICA is unfenced in the engine as a replica (frontend
// writes still fail: only a primary writes) and registered with the
// Server, so the primary of that epoch can append to it; it is registered
// when allocated, reopened, or assigned, and unregistered when it becomes
// primary, is deleted or the Manager closes. A copy that is not a member of
// its current epoch (role NONE: a returning old primary, a removed member)
// follows the same way so the primary can catch it up, and keeps
// reporting role NONE and fenced; it also serves no frontend reads
// (ErrNotMember: NBD EIO) since it may hold writes the primary never had.
//
// A confirmed primary (assignment in this process) whose config has other
// members ships its WAL to them with a replication.Primary in the config's
// durability mode (quorum with fewer than three copies is sync), and the
// NBD export and iSCSI LU then write and flush through replication.Volume:
// a FLUSH or FUA write is acknowledged only once the mode's commit covers
// it. A new epoch installs its members (SetMembers; an empty list keeps the
// Primary so a FLUSH waiting on a removed member completes); a member the
// Primary gives up on is sent to the master's RemoveMember with the
// Primary's epoch and this server's id. Before an assignment takes the
// primary role away the volume is fenced and the Primary stopped.
//
// Between an assignment making a volume primary with members and its
// Primary starting, frontend writes are refused (as if fenced) so no
// acknowledged write escapes replication; if the Primary cannot start (a
// member without a replication address) they stay refused.
//
// Heartbeat answers' catch_up targets for volumes this server is the
// confirmed primary of (at that epoch) are recovered (see Recovery below):
// a catch-up, truncation or rebuild through v2bridge, then an async
// Primary whose only member is that server follows the live stream; once
// its cursor is in sync the primary calls ReportCaughtUp and the master's
// next epoch makes it a member. When this server took over as primary in
// this process (it was not primary before, or this is the first
// assignment naming it primary since the process started — a crashed
// primary may have lost records a member had made durable, in the same
// epoch), a returning copy it never
// shipped to whose durable LSN is beyond the head this primary had when it
// took over holds records this primary never had (an old primary's last
// writes): it has diverged and is rebuilt, never caught up as it is. The
// same check covers the members of the epoch it took over with (RF=3's
// third copy, an old primary demoted by a promote): the Primary gets the
// takeover head (replication.Takeover) and a member it never shipped to
// whose head is beyond it goes needs-rebuild, gets nothing, and is
// reported to the master for removal (it then comes back as a catch-up
// target and is rebuilt). Without takeover state (the member was already
// shipped to before it reconnected) the replication hello still finds
// such a member: the
// epoch of its head record (from its term history) differs from the
// primary's record at that LSN, and it goes needs-rebuild the same way.
// The primary's view of each member and catch-up
// is reported in VolumeReport.replicas, its recoveries in
// VolumeReport.recoveries.
//
// # Recovery (DESIGN §6, issue 6)
//
// Replica side: the replication listener also carries recovery traffic
// (v2bridge; connections starting with v2bridge.Preface are routed to a
// v2bridge.Service). Every healthy local copy that is not the confirmed
// primary — replicas, copies outside their epoch, untrusted copies — is
// registered with it, so the primary of the copy's epoch can truncate,
// catch up or rebuild it; it is unregistered when it becomes primary, is
// deleted, goes unhealthy or the Manager closes. Requests at another epoch
// than the copy's are refused (the copy first learns the epoch from its
// own assignment).
//
// Primary side: for each catch-up target of a confirmed primary (the
// master lists non-member copies while the volume has fewer members than
// its RF) a recovery goroutine runs attempts: engine.Slots.Acquire for
// (volume, server id) at the primary's epoch and the target's replication
// address; v2bridge.Peer.View (terms: the primary's own durable term
// history, blockvol.Terms) and Peer.Report (the copy's history); engine.PlanRecovery; executor.Run. The plan is the
// cheapest safe one: zero-gap, catch-up from the WAL, truncation of
// records beyond what the primary holds (then catch-up), or a rebuild
// (full base, or a base snapshot plus WAL when one fits). A rebuild is
// forced when the target carries rebuild=true (block.repair -rebuild),
// when the copy is untrusted, when an earlier attempt or the live stream
// escalated, and when the copy diverged (its durable LSN beyond the
// takeover head, see above). Divergence is found from the term histories
// (blockvol keeps the epoch of every record, durably, across checkpoints
// and restarts): the copy's records match the primary's only up to the
// highest LSN where both know the same epoch, so a deposed primary's last
// writes are truncated or rebuilt even when they were checkpointed and
// this primary restarted since it took over (no takeover head then); an
// unknown epoch never matches. The takeover check stays as a second
// guard. Outcomes: InSync → the copy is handed to the live
// stream (an async replication.Primary whose cursor starts at the copy's
// durable+1; a WAL hold keeps those records until the cursor holds its
// own) and reported caught up once that cursor is in sync; NeedsRebuild →
// planned again at once as a rebuild; Aborted or an error before the run
// (copy unreachable, at another epoch) → retried with backoff from 200 ms
// doubling to 10 s, each distinct error logged once. A live stream that
// finds the copy cannot be followed sends it back for a rebuild. A new
// repair_seq cancels the live attempt (Slots.Cancel) and plans again. A
// new epoch of the primary, the target listed with another address or no
// longer listed (for 4 answers in a row: one missed heartbeat of the
// copy's server does not restart a rebuild), the primary losing its role,
// a delete or Close stop the recovery: the attempt is cancelled, the executor releases its pins and
// slot, the goroutine ends (Close waits for it). A copy is trusted again
// only by a rebuild's commit; a half-done rebuild leaves it untrusted.
//
// Progress: VolumeReport.recoveries (heartbeat, VolumeStatus and
// /block/status) has one entry per copy the primary recovers or last
// recovered: phase (plan, catch-up, truncate, rebuild, follow — in sync,
// on the live stream —, failed — waiting to retry —, done), bytes done and
// total (a rebuild: the volume size, then the WAL tail; a catch-up:
// estimated from the LSN range), ETA from the rate so far, the plan in
// words, target and achieved LSN, attempt number, start time, last
// outcome, forced flag and counts of finished catch-ups and rebuilds. A
// copy reports its own VolumeReport.recovery with phase "rebuild" while it
// is untrusted. Metrics: weedblock_volume_recoveries_started_total{kind},
// _recoveries_finished_total{kind,outcome}, _recovery_bytes_total{kind},
// _recoveries_active, _recovery_duration_seconds{kind} (kind: zero-gap,
// catch-up, truncate, rebuild; outcome: in-sync, needs-rebuild, aborted).
//
// What a returning copy gets: one stopped for a while and restarted is
// caught up from the WAL when the records after its durable LSN are still
// there (the degraded primary keeps a hold from its tail when it lost the
// copy, budget half the WAL; a write load that outruns it revokes the hold
// and the copy is rebuilt); one whose file was deleted comes back as an
// empty untrusted copy (below) and is rebuilt.
//
// # Base snapshots (snapshot.go)
//
// With Options.SnapshotInterval > 0 a goroutine owned by the Manager
// (started by Start, waited for by Close after the volumes are closed,
// which aborts a snapshot being copied; it never takes opMu) makes a pass
// every min(interval, 1 s) over the volumes, one at a time:
//
//   - a serving primary (stored role PRIMARY, unfenced within its lease —
//     only an assignment of this epoch in this process grants that —,
//     healthy, trusted, replication factor not 1) gets a new
//     blockvol.CreateSnapshot when interval has passed since its last
//     attempt (or since its snapshot was taken, while that snapshot is still
//     a rebuild base, so a restart does not retake a usable one), and at
//     once when a catch-up target appears (a new live recovery) while
//     SnapshotBase says it has no usable base. A scheduled snapshot waits
//     while a recovery attempt of the volume runs (the attempt may have
//     planned with the current base or still read it);
//   - a copy whose stored config of its current epoch does not name this
//     server primary (demoted, replica, removed) has its snapshot deleted:
//     it is only ever a base on a primary, and costs disk.
//
// Failures are logged once per volume until a snapshot works again;
// ErrSnapshotAborted / ErrSnapshotBusy (closing, deleted, being rebuilt, a
// rebuild still reading the slot) are quiet. The recoveries then plan a
// rebuild from the snapshot plus the WAL after it when the snapshot is a
// base (v2bridge). With the interval 0 no loop runs and snapshots found
// at Start are deleted (turning snapshots off gives the space back).
// Deleting a volume (DeleteVolume, a master delete, an allocation undone)
// also removes blockvol.SnapshotFiles. Reports: VolumeReport.snapshot_lsn,
// snapshot_trusted, snapshot_base (trusted and the WAL still holds what
// follows it); metrics weedblock_volume_snapshots_total{volume,outcome}
// (taken, failed, aborted) and weedblock_volume_snapshot_lsn{volume}.
//
// Cost, per primary volume: up to its allocated size of disk beside the
// volume file (sparse image; two slots while one is replaced), a full read
// of the extent per snapshot, and a WAL hold of up to half the WAL after
// the snapshot's LSN (revoked before it would stall writers).
//
// # Lost copies and untrusted copies
//
// An assignment never creates a trusted copy: one naming this server a
// member of a volume it does not have (its file was lost) creates it empty
// and durably untrusted (SetUntrusted before it is registered anywhere),
// fenced at the assignment's epoch. AllocateVolume with recovery_copy
// creates the same copy for a server that need not be a member of the
// config (idempotent; an existing copy is left as it is). An untrusted
// copy — such a copy, or one whose rebuild did not finish, also after a
// restart — is never unfenced as primary or replica by this package
// (an assignment making it primary returns an error and leaves it
// fenced), follows no live stream, serves no reads (ErrUntrusted: NBD
// EIO) and no writes, and reports untrusted=true so the master takes it
// out of the epoch and lists it as a catch-up target; only the primary's
// rebuild (v2bridge) moves it and makes it trusted.
//
// # Master connection
//
// The client tries Masters() in turn. A response with leader set, or a
// stream error whose message ends in "leader is X", makes it reconnect to X
// at once (upstream's "host:port.grpcPort" form is turned into
// host:grpcPort). Failures back off from Pulse doubling up to MaxBackoff.
//
// # gRPC (BlockVolume)
//
// AllocateVolume: creates Dir/NAME.blk (free space checked:
// ResourceExhausted), persists the epoch and the config, stays fenced.
// Idempotent for the same name and geometry; another geometry is
// AlreadyExists; a config where this server is not a member (unless
// recovery_copy, see above), or an epoch older than the volume's, is
// FailedPrecondition; a bad spec is
// InvalidArgument. DeleteVolume: FailedPrecondition while NBD connections
// or iSCSI sessions are attached (unless force) or for a stale epoch (0
// skips the check); an unknown name succeeds (idempotent). VolumeStatus:
// one volume (NotFound if unknown) or all for an empty name.
//
// It owns: the volume files under Dir, their frontend exports, the
// heartbeat client, the lease arithmetic on the volume-server side and the
// wiring of each volume's replication role (listener, Primary, catch-ups)
// and the recoveries it runs as primary (recovery.go), and when the base
// snapshots of its primaries are taken and deleted (snapshot.go).
//
// It must never: import upstream SeaweedFS (the launcher in weed/cluster
// adapts it), unfence a volume for an epoch it was not given, start a lease
// later than the heartbeat that earned it, shorten a serving primary's
// lease by re-applying an unchanged assignment, delete a file it could not
// open, create a trusted copy from an assignment, unfence or serve an
// untrusted copy, catch up a diverged copy as it is, keep a base snapshot
// on a copy it is not primary of, leave snapshot files behind a deleted
// volume, or keep goroutines after Close.
package blockvolume

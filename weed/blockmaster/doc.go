// Package blockmaster is the master side of weedblock's control plane: the
// registry of block volumes, their placement on volume servers, the epochs
// and leases, and the BlockMaster gRPC service (weed/pb/block.proto).
//
// # API
//
//	m, err := blockmaster.New(blockmaster.Options{
//		Dir:        mdir,                     // registry in mdir/block/registry.json
//		IsLeader:   func() bool {...},        // upstream raft leadership
//		Leader:     func() string {...},      // for "not leader; leader is X"
//		Topology:   blockmaster.TopologyFunc(snapshot), // upstream: id, dc, rack, free, alive
//		DialConn:   func(ctx, grpcAddr) (*grpc.ClientConn, error) {...}, // closed after each use
//		// or DialVolume: func(ctx, grpcAddr) (blockpb.BlockVolumeClient, error) (dialer owns conns)
//		Pulse: 500ms, Lease: 3s, Margin: 500ms, // the defaults
//	})
//	m.Register(grpcServer)                      // = blockpb.RegisterBlockMasterServer(grpcServer, m)
//	mux.Handle("/block/", m.HTTPHandler())      // GET /block/volumes, /block/volume/NAME
//	registry.MustRegister(m.Collectors()...)
//	m.ServerLeft(id) / m.ServerJoined(id)       // from upstream's heartbeat wrapper
//	// RPCs for volume servers: RemoveMember, ReportCaughtUp (from the
//	// primary); for operators: PromoteVolume, RepairVolume. Failover and
//	// the recovery of lost copies run by themselves.
//	m.Close()                                   // ends heartbeat streams, waits
//
// With DialVolume the dialer owns the volume-server connections (it may
// cache them) and the master never closes a client it was given; with
// DialConn the master closes each connection after its call.
//
// # Registry
//
// One JSON file, <Dir>/block/registry.json, rewritten whole on every change:
// temporary file, fsync, rename, fsync of the directory. A change is on disk
// before any server or client hears of it. Leftover temporary files are
// removed at load; a registry file that does not parse stops New with an
// error (starting empty would forget every volume and its epochs).
// Epochs only go forward: a new epoch must exceed the current one, and a
// deleted name leaves a tombstone with its last epoch so that a volume
// created again under that name starts above it (a fresh name starts at 1).
//
// # RPCs
//
// Every RPC of a follower fails with FailedPrecondition "not leader; leader
// is X". CreateVolume validates (InvalidArgument: name
// [a-z0-9][a-z0-9.-]{0,62} — no '_', which an iSCSI IQN cannot hold —,
// size > 0 and a multiple of the block size, block size a power of two
// 512..64 KiB, WAL ≥ 64 KiB and 4 KiB aligned, rf 1..3 (0 means 1), quorum
// needs rf ≥ 3; defaults: 4 KiB blocks, 64 MiB WAL, sync), refuses a known name
// (AlreadyExists), places the copies (FailedPrecondition when fewer than rf
// block servers are alive, ResourceExhausted when too few have the space),
// persists the first epoch, calls AllocateVolume on every member in parallel
// and answers with the VolumeInfo; if any allocation fails, the others are
// deleted, the registry forgets the volume and the member's error code is
// returned. DeleteVolume refuses while the primary reports attached
// sessions unless force (FailedPrecondition), deletes on every member
// (unreachable ones get it later through their heartbeat's deletes), then
// drops the volume from the registry. LookupVolume / DeleteVolume of an
// unknown name: NotFound.
//
// # Placement
//
// Candidates are servers with a live block heartbeat stream that upstream
// has not reported gone (ServerLeft) and, when a Topology is given, that it
// lists alive. The block heartbeat's free_bytes is the free space (0 means
// not reported: the topology's value is used). Copies go to distinct servers
// with the most free space, on distinct racks (data center + rack) while
// possible; the first is the primary. Servers still reporting a local copy
// of the name are skipped.
//
// # Heartbeats and leases
//
// Each BlockHeartbeat is answered with heartbeat_seq = its seq, lease_ms =
// Lease, the assignments the server has not acknowledged (no report of the
// volume, an older epoch or another role, or a healthy primary reporting
// itself fenced) and deletes for local copies of volumes this registry
// deleted (tombstone epoch ≥ the copy's epoch) or of an earlier incarnation
// of a current name (epoch below its first epoch). A name the registry never
// had is an orphan: left alone, logged once, counted in
// weedblock_master_orphan_volumes — a master started on the wrong -mdir, or
// a leader with another registry, must not wipe the cluster. Non-members
// that still hold a copy of the current incarnation get an assignment with
// role NONE so they fence. The volume server counts a lease from when it
// sent the heartbeat; the master records while building the answer (and
// again after sending it) that the primary's lease ends no earlier than then
// + Lease + Margin, so the master always believes a lease ends after the
// primary does (LeaseExpiry). That view is never earlier than the master's
// start + Lease + Margin: an earlier run may have granted a lease just
// before it stopped. A server is alive while its stream is up and
// was heard within 3 pulses and upstream has not reported it gone; a silent
// stream is ended with Unavailable.
//
// # Failover and membership (DESIGN §5, §7)
//
// Every pulse the leader looks for volumes whose primary is not alive
// (stream gone, or silent for 3 pulses, or upstream says it left). It waits
// until the primary's lease must have run out in the master's view
// (LeaseExpiry: last grant + Lease + Margin, never before this master's
// start, or the moment it was seen to become the leader, + Lease +
// Margin), then picks, among the members of the latest
// epoch other than the lost primary, those alive and reporting a trusted,
// healthy copy of this incarnation; the highest durable LSN wins (ties: the
// lower server id). quorum needs such reports from a majority of the latest
// epoch's members. The new epoch (epoch+1, the pick as primary, the other
// alive members as replicas, with their latest endpoints) is persisted
// before any heartbeat carries it; an async volume's epoch is marked
// may_have_lost_writes with the old primary's last durable LSN in its
// reason, and VolumeInfo.lossy_epoch / warning say so from then on (while
// that epoch is in the bounded history). No candidate: the volume stays
// "unavailable", VolumeInfo.failover_blocked says why, and it is tried again
// next pulse. Members that were not alive are left out; they, and a
// returning old primary, are not members of the new epoch: they get role
// NONE and stay fenced until the primary has brought them to the live
// stream and called ReportCaughtUp. The primary learns who to bring back
// from BlockHeartbeatResponse.catch_up (alive non-members holding a copy of
// this incarnation, while members < rf), sent on every heartbeat.
//
// A new primary (not the previous epoch's primary, not the volume's first)
// is not assigned before the old primary's lease must have run out: the
// fence recorded by PromoteVolume and, after a master restart or a change
// of leader, this master's start (or leadership) + Lease + Margin. So a crash between persisting a
// promotion and sending it is safe: the restarted master loads the new
// epoch and assigns it once an earlier run's lease cannot be live.
//
// RemoveMember(name, epoch, server_id, reason, caller_server_id) and
// ReportCaughtUp(name, epoch, server_id, caller_server_id) come from the
// current primary: PermissionDenied when the caller is not the primary,
// FailedPrecondition "stale epoch" when its epoch is not the current one,
// NotFound for a server that is not a member (remove) or unknown (caught
// up), InvalidArgument when the primary names itself. Both answer with the
// new EpochConfig (persisted first); a retry after success (older epoch,
// already removed / already a member) answers with the current config.
// ReportCaughtUp needs the server alive with a trusted, healthy copy and
// fewer members than rf. PromoteVolume(name, to, force): without force, to
// must be a member the failover could pick (alive, trusted, healthy, the
// highest durable LSN among the members other than the current primary,
// quorum heard); a live old primary stays as a replica and is fenced at
// once by its new assignment. force accepts any alive server that reports
// a trusted copy of this incarnation (never one without, nor an untrusted
// one), drops the old primary and marks the epoch may_have_lost_writes.
// Promotions count in
// VolumeInfo.failovers (persisted); the pause from losing the primary to
// the new primary's first unfenced report in its epoch is
// last_failover_pause_ms (memory only); member_lag is the primary's
// ReplicaState per member.
//
// # Recovery of copies (DESIGN §6, issue 6)
//
// Each volume remembers its homes (persisted): every server that was a
// member of any of its epochs. The master never places a copy elsewhere
// after create. Every pulse, for a volume whose primary is alive and fine:
//
//   - a member whose server heartbeats without the volume for 4 heartbeats
//     in a row (lostCopyBeats; a server lists every local volume each
//     time) has lost its copy, and one reporting untrusted=true holds a
//     copy that is not to be trusted: either leaves the epoch (a persisted
//     new epoch, reason "copy lost: ..." / "copy untrusted: ...", counted
//     in weedblock_master_copies_lost_total{reason});
//   - a home that is alive, not a member and lists no copy (for 4
//     heartbeats) gets AllocateVolume{spec, current config, recovery_copy:
//     true} while the volume has fewer copies than rf: the server creates
//     an empty, untrusted copy, which is then a catch-up target like any
//     non-member copy; the primary rebuilds it and ReportCaughtUp makes it
//     a member again. At most one call per server in flight, retried every
//     10 pulses; counted in weedblock_master_recovery_copies_total.
//
// A primary whose copy is lost or untrusted is a lost primary: its lease
// is no longer renewed in the master's view, the volume is "unavailable",
// and the failover replaces it by the usual rules once that lease must
// have run out (reason "failover: copy lost on primary ..."). Neither a
// member with a lost or untrusted copy nor the old primary is part of the
// new epoch; an untrusted copy is never promoted.
//
// RepairVolume(name, replica_server_id, rebuild) (block.repair) needs a
// live primary that holds a trusted copy (FailedPrecondition otherwise)
// and never repairs the primary itself ("promote first"). Without
// replica_server_id it names every other copy: the members and the
// servers reporting a copy of this incarnation. A named member without
// rebuild is in sync and left alone (RepairVolumeResponse.in_sync); with
// rebuild it leaves the epoch first (a persisted new epoch, reason
// "repair: rebuild requested (...)"). Every named non-member copy gets its
// repair sequence bumped and, with rebuild, the forced-rebuild flag; both
// are persisted in the registry (repairs) before the answer and go out in
// the primary's CatchUpTarget (rebuild, repair_seq) on every heartbeat
// answer, across master restarts. ReportCaughtUp clears the flag of the
// server it re-adds (the sequence stays, so a later repair is still a
// change). Unknown volume: NotFound; unknown server or one holding no
// copy: InvalidArgument.
//
// VolumeInfo.recoveries is the primary's latest VolumeReport.recoveries;
// state is "recovering" while one of them runs (a working phase, no
// outcome yet) and the primary serves.
//
// Multi-master: each master keeps its own registry file (registry HA on a
// consensus library comes later, DESIGN §7), so run one master for block
// volumes; a follower answers heartbeats with the leader and sends nothing
// else.
//
// It owns: the registry file under <Dir>/block, epochs, placement, the
// master's lease view, server liveness for block traffic, the choice of a
// new primary and of the members of each epoch.
//
// It must never: import upstream SeaweedFS (so its tests build in seconds),
// let an assignment or epoch leave before it is durable, issue an epoch
// that is not above every earlier epoch of the name, start with an empty
// registry when the file exists but cannot be read, send deletes from a
// follower, delete a copy of a volume it never had, assign a new primary
// before the old primary's lease must have run out, promote a
// non-member (except by force) or a copy it knows to be untrusted, or
// create a copy on a server that was never one of the volume's homes.
package blockmaster

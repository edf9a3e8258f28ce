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
// Multi-master: each master keeps its own registry file (registry HA on a
// consensus library comes later, DESIGN §7), so run one master for block
// volumes; a follower answers heartbeats with the leader and sends nothing
// else.
//
// It owns: the registry file under <Dir>/block, epochs, placement, the
// master's lease view, server liveness for block traffic.
//
// It must never: import upstream SeaweedFS (so its tests build in seconds),
// let an assignment or epoch leave before it is durable, issue an epoch
// that is not above every earlier epoch of the name, start with an empty
// registry when the file exists but cannot be read, send deletes from a
// follower, or delete a copy of a volume it never had.
package blockmaster

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
// this process (it was not primary before), a returning copy it never
// shipped to whose durable LSN is beyond the head this primary had when it
// took over holds records this primary never had (an old primary's last
// writes): it has diverged and is rebuilt, never caught up as it is. The
// same check covers the members of the epoch it took over with (RF=3's
// third copy, an old primary demoted by a promote): the Primary gets the
// takeover head (replication.Takeover) and a member it never shipped to
// whose head is beyond it goes needs-rebuild, gets nothing, and is
// reported to the master for removal (it then comes back as a catch-up
// target and is rebuilt). The primary's view of each member and catch-up
// is reported in VolumeReport.replicas, its recoveries in
// VolumeReport.recoveries.
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
// AlreadyExists; a config where this server is not a member, or an epoch
// older than the volume's, is FailedPrecondition; a bad spec is
// InvalidArgument. DeleteVolume: FailedPrecondition while NBD connections
// or iSCSI sessions are attached (unless force) or for a stale epoch (0
// skips the check); an unknown name succeeds (idempotent). VolumeStatus:
// one volume (NotFound if unknown) or all for an empty name.
//
// It owns: the volume files under Dir, their frontend exports, the
// heartbeat client, the lease arithmetic on the volume-server side and the
// wiring of each volume's replication role (listener, Primary, catch-ups).
//
// It must never: import upstream SeaweedFS (the launcher in weed/cluster
// adapts it), unfence a volume for an epoch it was not given, start a lease
// later than the heartbeat that earned it, shorten a serving primary's
// lease by re-applying an unchanged assignment, delete a file it could not
// open, or keep goroutines after Close.
package blockvolume

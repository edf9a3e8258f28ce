package blockmaster

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/golang/glog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// Defaults of the timing options.
const (
	DefaultPulse      = 500 * time.Millisecond
	DefaultLease      = 3 * time.Second
	DefaultMargin     = 500 * time.Millisecond
	DefaultRPCTimeout = 30 * time.Second
	// silentPulses: a server whose stream has been silent this many pulses
	// is not alive (and its stream is ended).
	silentPulses = 3
)

// TopologyServer is one volume server as upstream's topology sees it.
type TopologyServer struct {
	ID         string // upstream volume server id (the block server_id)
	DataCenter string
	Rack       string
	FreeBytes  uint64
	Alive      bool
}

// Topology gives a snapshot of upstream's volume servers. Implementations
// must be safe for concurrent use and must not call back into the Master.
type Topology interface {
	Servers() []TopologyServer
}

// Clock is the time source; time.Now in production. Leases and liveness are
// computed from it, so values it returns should carry a monotonic reading.
type Clock interface {
	Now() time.Time
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// DialFunc returns a BlockVolume client for a volume server's gRPC address.
// The dialer owns the connection (it may cache it); the master never closes
// it.
type DialFunc func(ctx context.Context, grpcAddr string) (blockpb.BlockVolumeClient, error)

// TopologyFunc adapts a snapshot function to Topology.
type TopologyFunc func() []TopologyServer

// Servers calls f.
func (f TopologyFunc) Servers() []TopologyServer { return f() }

// Options configure a Master.
type Options struct {
	// Dir is the master's metadata directory (upstream -mdir); the registry
	// lives in Dir/block/. Required.
	Dir string
	// IsLeader reports whether this master is the leader; nil means always.
	IsLeader func() bool
	// Leader returns the current leader's gRPC address (host:port) for
	// redirects, "" when unknown; nil means always unknown.
	Leader func() string
	// Topology filters placement to servers upstream sees alive and gives
	// their rack and free space; nil means the block heartbeats alone.
	Topology Topology
	// DialVolume reaches a volume server's BlockVolume service; the dialer
	// owns (and may cache) the connection. Either DialVolume or DialConn
	// is required; DialVolume wins when both are set.
	DialVolume DialFunc
	// DialConn opens a gRPC connection to a volume server; the master
	// closes it after each use.
	DialConn func(ctx context.Context, grpcAddr string) (*grpc.ClientConn, error)
	// Pulse is the expected block heartbeat interval (default 500ms);
	// Lease the lease granted to primaries (default 3s, must exceed
	// Pulse); Margin the clock drift allowance the master adds to its own
	// view of a lease (default 500ms).
	Pulse, Lease, Margin time.Duration
	// RPCTimeout bounds each call to a volume server (default 30s).
	RPCTimeout time.Duration
	// Clock is the time source; nil means the real clock.
	Clock Clock
}

// Master is the block registry and control plane of one SeaweedFS master.
// It implements blockpb.BlockMasterServer; mount HTTPHandler under /block/
// and register Collectors with a Prometheus registry.
type Master struct {
	blockpb.UnimplementedBlockMasterServer

	opts  Options
	clock Clock

	mu      sync.Mutex
	reg     *registry
	pending map[string]string // name -> "creating" / "deleting"
	servers map[string]*serverState
	// upstreamDown: servers upstream's heartbeat says left (ServerLeft).
	upstreamDown map[string]bool
	// leases: volume -> the master's (conservative) view of when the
	// primary's lease ends.
	leases map[string]time.Time
	// started: when this master was made; leases granted before it (by an
	// earlier run) end by started + Lease + Margin at the latest.
	started time.Time
	// leaderSince: when this master was last seen to become the leader
	// (started at first); a previous leader may have granted leases until
	// then. wasLeader: leadership at the last observation.
	leaderSince time.Time
	wasLeader   bool
	// orphans: server -> volumes it reports that the registry never had
	// (name -> reported epoch); left alone, counted in the metrics.
	orphans map[string]map[string]uint64
	// Failover state (failover.go): volumes whose primary is lost, the
	// earliest time a new primary may be assigned, failover pauses.
	lost       map[string]*lossState
	fenceUntil map[string]time.Time
	pauseFrom  map[string]pauseMark
	lastPause  map[string]time.Duration
	// Counters for the metrics (this process).
	failoversTotal uint64
	epochChanges   uint64
	// Recovery (recovery.go): members dropped per trouble kind, recovery
	// copies created, copies named by RepairVolume; the recovery-copy
	// calls in flight and the earliest next attempt per volume+server.
	copiesLost       map[string]uint64
	recoveryCopies   uint64
	repairsRequested uint64
	allocBusy        map[string]bool
	allocNext        map[string]time.Time
	nextStream       uint64
	heartbeats       uint64
	closed           bool

	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// serverState is what the master knows about one volume server's block
// service.
type serverState struct {
	endpoints *blockpb.ServerEndpoints
	reports   map[string]*blockpb.VolumeReport
	freeBytes uint64
	lastSeen  time.Time
	stream    uint64 // id of the live stream, 0 when none
	// absent counts, per volume this server is a home of, the heartbeats
	// in a row that did not list it (recovery.go: a lost copy).
	absent map[string]int
}

// New loads the registry from opts.Dir/block and returns a Master. A registry
// that exists but cannot be read is an error: the master must not start with
// an empty registry and order servers to delete their volumes.
func New(opts Options) (*Master, error) {
	if opts.Dir == "" {
		return nil, errors.New("blockmaster: Options.Dir is required")
	}
	if opts.DialVolume == nil && opts.DialConn == nil {
		return nil, errors.New("blockmaster: Options.DialVolume or Options.DialConn is required")
	}
	if opts.Pulse <= 0 {
		opts.Pulse = DefaultPulse
	}
	if opts.Lease <= 0 {
		opts.Lease = DefaultLease
	}
	if opts.Margin < 0 {
		return nil, fmt.Errorf("blockmaster: negative lease margin %v", opts.Margin)
	}
	if opts.Margin == 0 {
		opts.Margin = DefaultMargin
	}
	if opts.Lease <= opts.Pulse {
		return nil, fmt.Errorf("blockmaster: lease %v must be longer than the pulse %v", opts.Lease, opts.Pulse)
	}
	if opts.RPCTimeout <= 0 {
		opts.RPCTimeout = DefaultRPCTimeout
	}
	clock := opts.Clock
	if clock == nil {
		clock = realClock{}
	}
	reg, err := loadRegistry(filepath.Join(opts.Dir, "block"))
	if err != nil {
		return nil, fmt.Errorf("blockmaster: %w", err)
	}
	glog.Infof("blockmaster: loaded %d volumes from %s", len(reg.volumes), reg.dir)
	m := &Master{
		opts:         opts,
		clock:        clock,
		reg:          reg,
		pending:      map[string]string{},
		servers:      map[string]*serverState{},
		upstreamDown: map[string]bool{},
		leases:       map[string]time.Time{},
		started:      clock.Now(),
		wasLeader:    true,
		orphans:      map[string]map[string]uint64{},
		lost:         map[string]*lossState{},
		fenceUntil:   map[string]time.Time{},
		pauseFrom:    map[string]pauseMark{},
		lastPause:    map[string]time.Duration{},
		copiesLost:   map[string]uint64{},
		allocBusy:    map[string]bool{},
		allocNext:    map[string]time.Time{},
		done:         make(chan struct{}),
	}
	m.leaderSince = m.started
	m.wg.Add(1)
	go m.failoverLoop()
	return m, nil
}

// Register adds the BlockMaster service to a gRPC server.
func (m *Master) Register(r grpc.ServiceRegistrar) { blockpb.RegisterBlockMasterServer(r, m) }

// dial returns a client for a volume server and the function that releases
// it.
func (m *Master) dial(ctx context.Context, addr string) (blockpb.BlockVolumeClient, func(), error) {
	if m.opts.DialVolume != nil {
		c, err := m.opts.DialVolume(ctx, addr)
		return c, func() {}, err
	}
	cc, err := m.opts.DialConn(ctx, addr)
	if err != nil {
		return nil, nil, err
	}
	return blockpb.NewBlockVolumeClient(cc), func() { cc.Close() }, nil
}

// Close ends every heartbeat stream and the failover loop and waits for
// their goroutines. Calls
// in progress finish; new ones fail with Unavailable. Idempotent.
func (m *Master) Close() error {
	m.closeOnce.Do(func() {
		m.mu.Lock()
		m.closed = true
		m.mu.Unlock()
		close(m.done)
	})
	m.wg.Wait()
	return nil
}

// ServerJoined records that upstream's heartbeat sees the server id alive
// again (fed by the launcher's heartbeat wrapper).
func (m *Master) ServerJoined(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.upstreamDown, id)
}

// ServerLeft records that upstream's heartbeat stream of server id ended or
// went silent: the server is not alive for placement or status until
// ServerJoined, whatever its block stream says.
func (m *Master) ServerLeft(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.upstreamDown[id] = true
}

// checkServing returns nil when this master may serve registry calls: it is
// open and the leader.
func (m *Master) checkServing() error {
	select {
	case <-m.done:
		return status.Error(codes.Unavailable, "block master is shutting down")
	default:
	}
	if m.opts.IsLeader != nil && !m.opts.IsLeader() {
		return notLeader(m.leaderName())
	}
	return nil
}

func (m *Master) isLeader() bool { return m.opts.IsLeader == nil || m.opts.IsLeader() }

func (m *Master) leaderName() string {
	if m.opts.Leader == nil {
		return ""
	}
	return m.opts.Leader()
}

// notLeader is the error of a follower: "not leader; leader is X", or "not
// leader; no leader known" when there is none yet.
func notLeader(leader string) error {
	if leader == "" {
		return status.Error(codes.FailedPrecondition, "not leader; no leader known")
	}
	return status.Errorf(codes.FailedPrecondition, "not leader; leader is %s", leader)
}

// aliveLocked reports whether server id has a live, recently heard block
// stream and upstream has not reported it gone.
func (m *Master) aliveLocked(id string, now time.Time) bool {
	s := m.servers[id]
	if s == nil || s.stream == 0 || m.upstreamDown[id] {
		return false
	}
	return now.Sub(s.lastSeen) <= silentPulses*m.opts.Pulse
}

// candidatesLocked lists the servers placement may use.
func (m *Master) candidatesLocked(now time.Time) []candidate {
	var topo map[string]TopologyServer
	if m.opts.Topology != nil {
		topo = map[string]TopologyServer{}
		for _, ts := range m.opts.Topology.Servers() {
			topo[ts.ID] = ts
		}
	}
	var out []candidate
	for id, s := range m.servers {
		if !m.aliveLocked(id, now) {
			continue
		}
		c := candidate{ID: id, DataCenter: s.endpoints.GetDataCenter(), Rack: s.endpoints.GetRack(), FreeBytes: s.freeBytes}
		if topo != nil {
			ts, ok := topo[id]
			if !ok || !ts.Alive {
				continue
			}
			if c.DataCenter == "" {
				c.DataCenter = ts.DataCenter
			}
			if c.Rack == "" {
				c.Rack = ts.Rack
			}
			if c.FreeBytes == 0 {
				c.FreeBytes = ts.FreeBytes
			}
		}
		out = append(out, c)
	}
	return out
}

// ServerStatus is the master's view of one block volume server.
type ServerStatus struct {
	ID           string                   `json:"id"`
	Alive        bool                     `json:"alive"`
	UpstreamGone bool                     `json:"upstream_gone,omitempty"` // ServerLeft without ServerJoined
	Endpoints    *blockpb.ServerEndpoints `json:"endpoints"`
	FreeBytes    uint64                   `json:"free_bytes"`
	LastSeenAgo  time.Duration            `json:"last_seen_ago_ns"`
	Volumes      []string                 `json:"volumes"`           // reported local volumes, sorted
	Orphans      []string                 `json:"orphans,omitempty"` // reported, never in the registry
}

// Servers lists the block servers this master has heard from, sorted by id.
func (m *Master) Servers() []ServerStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.clock.Now()
	out := make([]ServerStatus, 0, len(m.servers))
	for id, s := range m.servers {
		st := ServerStatus{
			ID:           id,
			Alive:        m.aliveLocked(id, now),
			UpstreamGone: m.upstreamDown[id],
			FreeBytes:    s.freeBytes,
			LastSeenAgo:  now.Sub(s.lastSeen),
			Volumes:      []string{},
		}
		if s.endpoints != nil {
			st.Endpoints = proto.Clone(s.endpoints).(*blockpb.ServerEndpoints)
		}
		for name := range s.reports {
			st.Volumes = append(st.Volumes, name)
		}
		sort.Strings(st.Volumes)
		for name := range m.orphans[id] {
			st.Orphans = append(st.Orphans, name)
		}
		sort.Strings(st.Orphans)
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

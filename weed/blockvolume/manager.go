package blockvolume

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang/glog"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/engine"
	"github.com/weedblock/weedblock/executor"
	"github.com/weedblock/weedblock/frontend/iscsi"
	"github.com/weedblock/weedblock/frontend/nbd"
	"github.com/weedblock/weedblock/replication"
	"github.com/weedblock/weedblock/v2bridge"
	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// FileExt is the extension of volume files under Options.Dir: volume NAME
// lives in Dir/NAME.blk.
const FileExt = ".blk"

// DefaultPulse is the heartbeat interval when Options.Pulse is zero.
const DefaultPulse = 500 * time.Millisecond

// nameRE is what a volume name may look like on a volume server: it is
// the NBD export name and the suffix of an IQN, which allows lower-case
// letters, digits, '.', '-' (and ':', not allowed here); no '_'.
var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,62}$`)

// ValidName reports whether name can be a block volume on a volume server.
func ValidName(name string) bool { return nameRE.MatchString(name) }

// Options configure a Manager.
type Options struct {
	// Dir holds the volume files (-block.dir). Created if missing.
	Dir string
	// ServerID is this server's id as the master knows it (upstream's
	// volume server id). Empty: Endpoints.ServerId.
	ServerID string
	// Endpoints are the addresses reported to the master. Copied; empty
	// NBD / iSCSI / replication addresses are filled with the addresses
	// the listeners actually bound.
	Endpoints *blockpb.ServerEndpoints
	// NBDAddr, ISCSIAddr: listen addresses (-block.nbd, -block.iscsi);
	// empty disables that frontend.
	NBDAddr, ISCSIAddr string
	// ReplAddr is the replication listener address (-block.repl): replicas
	// (and non-member copies being caught up) receive the primary's WAL
	// there. Empty: no listener; replicas then cannot follow.
	ReplAddr string
	// Masters returns the master gRPC addresses (host:port) to try. Nil
	// (or Dial nil): no heartbeat; volumes then stay fenced.
	Masters func() []string
	// Dial opens a gRPC connection to a master. The Manager closes what it
	// gets when the stream on it ends.
	Dial func(ctx context.Context, addr string) (*grpc.ClientConn, error)
	// Pulse is the heartbeat interval (default 500 ms).
	Pulse time.Duration
	// MaxBackoff bounds the wait between master connection attempts
	// (default 5 s).
	MaxBackoff time.Duration
	// FlushInterval is passed to every volume (0: engine default).
	FlushInterval time.Duration
	// SnapshotInterval (-block.snapshotInterval): every volume this server
	// serves as primary gets a new base snapshot this often (blockvol
	// CreateSnapshot), so that a copy too far behind for a catch-up can be
	// rebuilt from the snapshot plus the WAL after it. 0 turns snapshots
	// off (and deletes those left from before at the next start). Each
	// costs up to the volume's allocated size on disk beside the volume
	// file and holds up to half the volume's WAL. See snapshot.go.
	SnapshotInterval time.Duration
}

// Manager owns the block volumes of one volume server: the files under
// Options.Dir, the NBD and iSCSI servers that export them, the BlockVolume
// gRPC service and the heartbeat stream to the master leader.
type Manager struct {
	opts     Options
	serverID string
	metrics  *metrics

	// opMu serializes mutations (allocate, delete, assignments) so each
	// sees a stable set of volumes; mu guards the map for readers.
	opMu    sync.Mutex
	mu      sync.Mutex
	volumes map[string]*volume
	started bool
	closed  bool

	endpoints *blockpb.ServerEndpoints // read-only after Start
	nbdSrv    *nbd.Server
	iscsiSrv  *iscsi.Server
	nbdL      net.Listener
	iscsiL    net.Listener
	replSrv   *replication.Server
	replL     net.Listener
	// recSvc is the replica side of recovery (v2bridge), routed on the
	// replication listener; slots keeps at most one recovery attempt per
	// copy this server recovers as primary.
	recSvc *v2bridge.Service
	slots  *engine.Slots
	// stepHook, when set (tests), runs before every batch of a recovery
	// attempt with the recovery's context; an error aborts the attempt.
	stepHook atomic.Pointer[func(context.Context, executor.Step) error]

	hb hbState
	// assignErrs is the last error of each volume's assignment, so a
	// re-sent assignment that keeps failing is logged once (opMu).
	assignErrs map[string]string
	// deleted remembers the epoch each name had when it was deleted here
	// (opMu), so that an assignment already in flight when the master
	// deleted the volume cannot create it again. In memory only.
	deleted map[string]uint64

	ctx    context.Context // ends at Close; set by Start
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// snapWG waits for the snapshot loop (snapshot.go). Close waits for it
	// only after closing the volumes, which aborts a snapshot being copied.
	snapWG sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// New checks opts and returns a Manager that does nothing until Start.
func New(opts Options) (*Manager, error) {
	if opts.Dir == "" {
		return nil, errors.New("blockvolume: Options.Dir is required")
	}
	if opts.Pulse <= 0 {
		opts.Pulse = DefaultPulse
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 5 * time.Second
	}
	if opts.SnapshotInterval < 0 {
		return nil, fmt.Errorf("blockvolume: Options.SnapshotInterval %v is negative (0 turns snapshots off)", opts.SnapshotInterval)
	}
	ep := &blockpb.ServerEndpoints{}
	if opts.Endpoints != nil {
		ep = proto.Clone(opts.Endpoints).(*blockpb.ServerEndpoints)
	}
	id := opts.ServerID
	if id == "" {
		id = ep.GetServerId()
	}
	if id == "" && opts.Masters != nil {
		return nil, errors.New("blockvolume: a server id (Options.ServerID or Endpoints.ServerId) is required with masters")
	}
	ep.ServerId = id
	return &Manager{
		opts:       opts,
		serverID:   id,
		metrics:    newMetrics(),
		volumes:    make(map[string]*volume),
		endpoints:  ep,
		assignErrs: make(map[string]string),
		deleted:    make(map[string]uint64),
		slots:      engine.NewSlots(),
	}, nil
}

// Start creates Dir, opens the listeners, opens every volume file in Dir
// (fenced: reads only until the master grants a lease), exports them and
// starts the heartbeat. On error everything started is stopped again.
func (m *Manager) Start() (err error) {
	m.mu.Lock()
	if m.started || m.closed {
		m.mu.Unlock()
		return errors.New("blockvolume: Start called twice or after Close")
	}
	m.started = true
	m.mu.Unlock()
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	if err := os.MkdirAll(m.opts.Dir, 0o755); err != nil {
		return fmt.Errorf("blockvolume: create %s: %w", m.opts.Dir, err)
	}
	if m.opts.NBDAddr != "" {
		l, err := net.Listen("tcp", m.opts.NBDAddr)
		if err != nil {
			return fmt.Errorf("blockvolume: nbd listen: %w", err)
		}
		m.nbdL = l
		if m.endpoints.NbdAddress == "" {
			m.endpoints.NbdAddress = m.advertised(l)
		}
	}
	if m.opts.ISCSIAddr != "" {
		l, err := net.Listen("tcp", m.opts.ISCSIAddr)
		if err != nil {
			return fmt.Errorf("blockvolume: iscsi listen: %w", err)
		}
		m.iscsiL = l
		if m.endpoints.IscsiAddress == "" {
			m.endpoints.IscsiAddress = m.advertised(l)
		}
	}
	if err := m.listenRepl(); err != nil {
		return err
	}
	if m.nbdL != nil {
		m.nbdSrv = nbd.NewServer(nbd.Options{})
	}
	if m.iscsiL != nil {
		var portals []string // empty: the address the initiator connected to
		if host, _, err := net.SplitHostPort(m.endpoints.IscsiAddress); err == nil && !unspecified(host) {
			portals = []string{m.endpoints.IscsiAddress}
		}
		m.iscsiSrv = iscsi.NewServer(iscsi.Config{Portals: portals, Redirect: m.iscsiRedirect})
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.ctx, m.cancel = ctx, cancel
	if err := m.openExisting(); err != nil {
		return err
	}
	m.serveRepl()
	if m.nbdSrv != nil {
		l, srv := m.nbdL, m.nbdSrv
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			if err := srv.Serve(l); err != nil && !errors.Is(err, nbd.ErrServerClosed) {
				glog.Errorf("blockvolume: nbd serve %s: %v", l.Addr(), err)
			}
		}()
	}
	if m.iscsiSrv != nil {
		l, srv := m.iscsiL, m.iscsiSrv
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			if err := srv.Serve(l); err != nil && !errors.Is(err, iscsi.ErrServerClosed) {
				glog.Errorf("blockvolume: iscsi serve %s: %v", l.Addr(), err)
			}
		}()
	}
	if m.opts.SnapshotInterval > 0 {
		s := newSnapshotter(m, m.opts.SnapshotInterval)
		m.snapWG.Add(1)
		go func() {
			defer m.snapWG.Done()
			s.run(ctx)
		}()
	}
	if m.opts.Masters != nil && m.opts.Dial != nil {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.heartbeatLoop(ctx)
		}()
	}
	glog.Infof("blockvolume: serving %d volume(s) from %s (nbd=%q iscsi=%q)", len(m.names()), m.opts.Dir, m.endpoints.NbdAddress, m.endpoints.IscsiAddress)
	return nil
}

// advertised is the address clients should use for listener l: its own
// address, except that an unspecified host (":3260", "0.0.0.0") takes the
// host of Endpoints.GrpcAddress when there is one.
func (m *Manager) advertised(l net.Listener) string { return m.advertise(l.Addr().String()) }

// advertise is addr with an unspecified host replaced as advertised says.
func (m *Manager) advertise(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || !unspecified(host) {
		return addr
	}
	if gh, _, err := net.SplitHostPort(m.endpoints.GetGrpcAddress()); err == nil && gh != "" && !unspecified(gh) {
		return net.JoinHostPort(gh, port)
	}
	return addr
}

func unspecified(host string) bool {
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// iscsiRedirect sends a login for a volume this server holds but is not
// primary of (per the stored config of the volume's current epoch) to the
// primary's portal, so an initiator configured with any member's portal
// reaches the primary.
func (m *Manager) iscsiRedirect(targetName string) (string, bool) {
	name, ok := strings.CutPrefix(targetName, iscsi.IQNPrefix)
	if !ok {
		return "", false
	}
	v := m.lookup(name)
	if v == nil {
		return "", false
	}
	cfg := v.config()
	if cfg == nil || cfg.GetEpoch() != v.vol.Status().Epoch {
		return "", false
	}
	primary := cfg.GetPrimaryServerId()
	if primary == "" || primary == m.serverID {
		return "", false
	}
	for _, mb := range cfg.GetMembers() {
		if mb.GetServer().GetServerId() == primary {
			if addr := mb.GetServer().GetIscsiAddress(); addr != "" {
				glog.V(1).Infof("blockvolume: iscsi login for %s redirected to primary %s at %s", name, primary, addr)
				return addr, true
			}
		}
	}
	return "", false
}

// openExisting opens every NAME.blk in Dir, fenced. A file that does not
// open is logged and left alone (never deleted).
func (m *Manager) openExisting() error {
	entries, err := os.ReadDir(m.opts.Dir)
	if err != nil {
		return fmt.Errorf("blockvolume: read %s: %w", m.opts.Dir, err)
	}
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), FileExt) {
			continue
		}
		name := strings.TrimSuffix(e.Name(), FileExt)
		path := filepath.Join(m.opts.Dir, e.Name())
		if !ValidName(name) {
			glog.Warningf("blockvolume: ignoring %s: %q is not a valid volume name", path, name)
			continue
		}
		vol, err := blockvol.Open(path, blockvol.Options{FlushInterval: m.opts.FlushInterval})
		if err != nil {
			glog.Errorf("blockvolume: cannot open %s (left untouched): %v", path, err)
			continue
		}
		if err := m.addVolume(newVolume(name, vol, m.metrics)); err != nil {
			m.metrics.forget(name)
			vol.Close()
			return err
		}
		glog.Infof("blockvolume: opened %s fenced (epoch %d)", path, vol.Status().Epoch)
		if v := m.lookup(name); v != nil {
			m.dropSnapshotAtOpen(v)
			m.syncReplLocked(v) // a replica follows again at once
		}
	}
	return nil
}

// addVolume exports v on NBD and iSCSI and registers it.
func (m *Manager) addVolume(v *volume) error {
	name := v.name
	if m.nbdSrv != nil {
		if err := m.nbdSrv.AddExport(name, "weedblock volume "+name, v.dev); err != nil {
			return fmt.Errorf("blockvolume: nbd export %s: %w", name, err)
		}
	}
	if m.iscsiSrv != nil {
		if err := m.iscsiSrv.AddTarget(v.target()); err != nil {
			if m.nbdSrv != nil {
				m.nbdSrv.RemoveExport(name)
			}
			return fmt.Errorf("blockvolume: iscsi target %s: %w", name, err)
		}
	}
	m.mu.Lock()
	m.volumes[name] = v
	m.mu.Unlock()
	return nil
}

// removeVolume unexports v (closing its sessions), closes it and, when
// remove is set, deletes its file and its snapshot files. The caller
// holds opMu.
func (m *Manager) removeVolume(v *volume, remove bool) error {
	m.mu.Lock()
	delete(m.volumes, v.name)
	m.mu.Unlock()
	if m.nbdSrv != nil {
		if err := m.nbdSrv.RemoveExport(v.name); err != nil && !errors.Is(err, nbd.ErrUnknownExport) {
			glog.Warningf("blockvolume: remove nbd export %s: %v", v.name, err)
		}
	}
	if m.iscsiSrv != nil {
		if err := m.iscsiSrv.RemoveTarget(iscsi.IQN(v.name)); err != nil && !errors.Is(err, iscsi.ErrNoTarget) {
			glog.Warningf("blockvolume: remove iscsi target %s: %v", v.name, err)
		}
	}
	m.stopReplLocked(v)
	m.metrics.forget(v.name)
	delete(m.assignErrs, v.name) // callers hold opMu
	if e := v.vol.Status().Epoch; e > m.deleted[v.name] {
		m.deleted[v.name] = e
	}
	path := v.vol.Path()
	err := v.vol.Close()
	if remove {
		// After Close: no snapshot is being written any more.
		err = errors.Join(err, removeFiles(path))
	}
	return err
}

func (m *Manager) lookup(name string) *volume {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.volumes[name]
}

// snapshot returns the volumes sorted by name.
func (m *Manager) snapshot() []*volume {
	m.mu.Lock()
	out := make([]*volume, 0, len(m.volumes))
	for _, v := range m.volumes {
		out = append(out, v)
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func (m *Manager) names() []string {
	var out []string
	for _, v := range m.snapshot() {
		out = append(out, v.name)
	}
	return out
}

// Endpoints returns the addresses this server reports (listeners filled
// in after Start).
func (m *Manager) Endpoints() *blockpb.ServerEndpoints {
	return proto.Clone(m.endpoints).(*blockpb.ServerEndpoints)
}

// ServerID is the id this server reports to the master.
func (m *Manager) ServerID() string { return m.serverID }

// sessions is the number of attached NBD connections and iSCSI sessions
// of volume name.
func (m *Manager) sessions(name string) int {
	n := 0
	if m.nbdSrv != nil {
		n += m.nbdSrv.Sessions(name)
	}
	if m.iscsiSrv != nil {
		n += m.iscsiSrv.Sessions(iscsi.IQN(name))
	}
	return n
}

// Close stops the heartbeat, the listeners and every connection, then
// flushes and closes every volume. It is idempotent; later calls return
// the first result.
func (m *Manager) Close() error {
	m.closeOnce.Do(func() {
		m.mu.Lock()
		m.closed = true
		m.mu.Unlock()
		if m.cancel != nil {
			m.cancel()
		}
		var errs []error
		if m.nbdSrv != nil {
			if err := m.nbdSrv.Close(); err != nil {
				errs = append(errs, err)
			}
		} else if m.nbdL != nil {
			m.nbdL.Close()
		}
		if m.iscsiSrv != nil {
			if err := m.iscsiSrv.Close(); err != nil {
				errs = append(errs, err)
			}
		} else if m.iscsiL != nil {
			m.iscsiL.Close()
		}
		if m.replSrv != nil {
			if err := m.replSrv.Close(); err != nil {
				errs = append(errs, err)
			}
		} else if m.replL != nil {
			m.replL.Close()
		}
		if m.recSvc != nil {
			m.recSvc.Close()
		}
		// Recoveries end with the context; their attempts are cancelled
		// so that none waits for a slow replica.
		m.opMu.Lock()
		for _, v := range m.snapshot() {
			m.stopRecoveriesLocked(v, 0, "server closing")
		}
		m.opMu.Unlock()
		m.wg.Wait()
		// Mutations in progress finish before the volumes go away.
		m.opMu.Lock()
		defer m.opMu.Unlock()
		for _, v := range m.snapshot() {
			m.stopReplLocked(v)
			// Close syncs everything written, fenced or not.
			if err := v.vol.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close %s: %w", v.name, err))
			}
		}
		// The snapshot loop never takes opMu; a snapshot it was taking
		// ended with its volume.
		m.snapWG.Wait()
		m.mu.Lock()
		m.volumes = map[string]*volume{}
		m.mu.Unlock()
		m.closeErr = errors.Join(errs...)
	})
	return m.closeErr
}

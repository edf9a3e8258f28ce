package blockvolume

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/golang/glog"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// silentPulses: a stream with no response for this many pulses is
// abandoned and the master connection retried.
const silentPulses = 6

// sendTimesKept bounds how many heartbeat send times a stream remembers;
// an answer to an older heartbeat grants nothing.
const sendTimesKept = 256

// hbState is what the heartbeat client knows, for /block/status and the
// metrics.
type hbState struct {
	mu     sync.Mutex
	status HeartbeatStatus
}

// HeartbeatStatus describes the heartbeat stream to the master leader.
type HeartbeatStatus struct {
	Master       string    `json:"master"`    // gRPC address of the master in use
	Connected    bool      `json:"connected"` // a stream is up and answered
	LastResponse time.Time `json:"last_response"`
	LeaseMs      int64     `json:"lease_ms"` // last lease granted
	LastError    string    `json:"last_error,omitempty"`
	Seq          uint64    `json:"seq"` // last heartbeat sent
}

func (h *hbState) snapshot() HeartbeatStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.status
}

func (h *hbState) update(f func(*HeartbeatStatus)) {
	h.mu.Lock()
	f(&h.status)
	h.mu.Unlock()
}

// Heartbeat returns the state of the heartbeat client.
func (m *Manager) Heartbeat() HeartbeatStatus { return m.hb.snapshot() }

// heartbeatLoop keeps one heartbeat stream to the master leader until ctx
// ends: it tries the masters in turn, follows leader redirects at once and
// backs off (pulse doubling up to MaxBackoff) after failures.
func (m *Manager) heartbeatLoop(ctx context.Context) {
	var seq uint64 // increases across streams, so it also does on each
	next := 0
	redirect := ""
	backoff := m.opts.Pulse
	for ctx.Err() == nil {
		addr := redirect
		redirect = ""
		if addr == "" {
			masters := m.opts.Masters()
			if len(masters) == 0 {
				m.hb.update(func(s *HeartbeatStatus) { s.LastError = "no master address known" })
				if !sleepCtx(ctx, backoff) {
					return
				}
				backoff = min(2*backoff, m.opts.MaxBackoff)
				continue
			}
			addr = masters[next%len(masters)]
			next++
		}
		answered, leader, err := m.runStream(ctx, addr, &seq)
		m.hb.update(func(s *HeartbeatStatus) {
			s.Connected = false
			if err != nil {
				s.LastError = err.Error()
			}
		})
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			m.metrics.hbErrors.Inc()
			glog.V(1).Infof("blockvolume: heartbeat to %s: %v", addr, err)
		}
		if answered {
			backoff = m.opts.Pulse
		}
		if leader != "" && leader != addr {
			glog.Infof("blockvolume: master %s says the leader is %s", addr, leader)
			redirect = leader
			// A short pause keeps two confused masters from making us spin.
			if !sleepCtx(ctx, min(m.opts.Pulse, 100*time.Millisecond)) {
				return
			}
			continue
		}
		if !sleepCtx(ctx, backoff) {
			return
		}
		backoff = min(2*backoff, m.opts.MaxBackoff)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// runStream runs one heartbeat stream to addr until it fails, ctx ends or
// the master names another leader. answered says whether any response
// arrived; leader is the redirect, if any.
func (m *Manager) runStream(ctx context.Context, addr string, seq *uint64) (answered bool, leader string, err error) {
	cc, err := m.opts.Dial(ctx, addr)
	if err != nil {
		return false, "", fmt.Errorf("dial %s: %w", addr, err)
	}
	defer cc.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := blockpb.NewBlockMasterClient(cc).Heartbeat(sctx)
	if err != nil {
		return false, leaderFromError(err), fmt.Errorf("open heartbeat stream to %s: %w", addr, err)
	}
	m.hb.update(func(s *HeartbeatStatus) { s.Master = addr })

	var (
		timesMu  sync.Mutex
		sent     = map[uint64]time.Time{}
		oldest   = *seq + 1
		lastResp = time.Now() // or stream start
	)
	silentAfter := silentPulses * m.opts.Pulse
	sendErr := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(m.opts.Pulse)
		defer tick.Stop()
		for {
			hb := m.buildHeartbeat()
			timesMu.Lock()
			if quiet := time.Since(lastResp); quiet > silentAfter {
				timesMu.Unlock()
				// A master that takes heartbeats but never answers is as
				// good as gone: try again (maybe another master).
				sendErr <- fmt.Errorf("master %s silent for %v", addr, quiet.Round(time.Millisecond))
				cancel()
				return
			}
			*seq++
			hb.Seq = *seq
			// The lease a response grants runs from this moment.
			sent[hb.Seq] = time.Now()
			for len(sent) > sendTimesKept {
				delete(sent, oldest)
				oldest++
			}
			timesMu.Unlock()
			if err := stream.Send(hb); err != nil {
				sendErr <- err
				return
			}
			m.metrics.heartbeats.Inc()
			m.hb.update(func(s *HeartbeatStatus) { s.Seq = hb.Seq })
			select {
			case <-sctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	defer wg.Wait()
	defer cancel()

	for {
		resp, rerr := stream.Recv()
		if rerr != nil {
			if ctx.Err() != nil {
				return answered, "", nil
			}
			if l := leaderFromError(rerr); l != "" {
				return answered, l, fmt.Errorf("heartbeat stream to %s: %w", addr, rerr)
			}
			select {
			case serr := <-sendErr:
				// The sender gave up first (silent master) or saw why.
				return answered, "", errors.Join(serr, rerr)
			default:
			}
			return answered, "", fmt.Errorf("heartbeat stream to %s: %w", addr, rerr)
		}
		if l := resp.GetLeader(); l != "" {
			return answered, normalizeLeader(l), nil
		}
		answered = true
		timesMu.Lock()
		sentAt, known := sent[resp.GetHeartbeatSeq()]
		lastResp = time.Now()
		timesMu.Unlock()
		m.hb.update(func(s *HeartbeatStatus) {
			s.Connected = true
			s.LastResponse = time.Now()
			s.LeaseMs = resp.GetLeaseMs()
			s.LastError = ""
		})
		m.applyResponse(resp, sentAt, known)
	}
}

// leaderFromError extracts X from a "not leader; leader is X" status.
func leaderFromError(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return ""
	}
	msg := st.Message()
	i := strings.LastIndex(msg, "leader is ")
	if i < 0 {
		return ""
	}
	l := strings.TrimSpace(msg[i+len("leader is "):])
	if f := strings.Fields(l); len(f) > 0 {
		l = strings.TrimRight(f[0], ".,;)")
	}
	return normalizeLeader(l)
}

// normalizeLeader turns upstream's "host:port.grpcPort" form into the gRPC
// address host:grpcPort; anything else is returned as is.
func normalizeLeader(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if i := strings.LastIndexByte(port, '.'); i >= 0 {
		if _, err := strconv.Atoi(port[i+1:]); err == nil {
			return net.JoinHostPort(host, port[i+1:])
		}
	}
	return addr
}

// buildHeartbeat reports every local volume (seq is set by the sender).
func (m *Manager) buildHeartbeat() *blockpb.BlockHeartbeat {
	hb := &blockpb.BlockHeartbeat{
		Server:    m.Endpoints(),
		FreeBytes: freeBytes(m.opts.Dir),
	}
	for _, v := range m.snapshot() {
		hb.Volumes = append(hb.Volumes, v.report(m.serverID, m.sessions(v.name)))
	}
	return hb
}

// freeBytes is the space available to an unprivileged user under dir (0
// when unknown).
func freeBytes(dir string) uint64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0
	}
	return st.Bavail * uint64(st.Bsize)
}

// applyResponse carries out one heartbeat response: assignments first (a
// volume moved to a newer epoch is fenced before any renewal), then
// deletes, then the lease renewal of every volume this server is primary
// of. sentAt is when the answered heartbeat was sent; without it (known
// false) no lease is granted.
func (m *Manager) applyResponse(resp *blockpb.BlockHeartbeatResponse, sentAt time.Time, known bool) {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return
	}
	var leaseUntil time.Time
	if known && resp.GetLeaseMs() > 0 {
		leaseUntil = sentAt.Add(time.Duration(resp.GetLeaseMs()) * time.Millisecond)
	}
	for _, a := range resp.GetAssignments() {
		name := a.GetSpec().GetName()
		err := m.applyAssignmentLocked(a, leaseUntil)
		// The master re-sends an assignment every pulse until it is
		// applied: log a failure once, not twice a second.
		switch {
		case err == nil:
			delete(m.assignErrs, name)
		case m.assignErrs[name] != err.Error():
			m.assignErrs[name] = err.Error()
			glog.Errorf("blockvolume: assignment for %q: %v", name, err)
		}
	}
	// Volumes allocated or reopened since follow their primary (a
	// replica gets no assignment for the epoch it was allocated in).
	for _, v := range m.snapshot() {
		m.syncReplLocked(v)
	}
	m.applyCatchUpsLocked(resp.GetCatchUp())
	for _, name := range resp.GetDeletes() {
		v := m.lookup(name)
		if v == nil {
			continue
		}
		glog.Infof("blockvolume: master no longer knows %s; deleting it", name)
		if err := m.removeVolume(v, true); err != nil {
			glog.Errorf("blockvolume: delete %s: %v", name, err)
		}
	}
	if leaseUntil.IsZero() {
		return
	}
	m.metrics.leaseGrants.Inc()
	for _, v := range m.snapshot() {
		m.renewLocked(v, leaseUntil)
	}
}

// renewLocked extends v's lease to until when the master confirmed, by an
// assignment in this process, that this server is primary of v's current
// epoch (and the stored config agrees). A volume the master never
// confirmed — just allocated, reopened after a restart, or unknown to the
// registry — stays fenced until an assignment arrives.
func (m *Manager) renewLocked(v *volume, until time.Time) {
	st := v.vol.Status()
	if v.confirmed == 0 || v.confirmed != st.Epoch || !st.Healthy || st.Untrusted {
		return
	}
	cfg := v.config()
	if cfg == nil || cfg.GetEpoch() != st.Epoch || roleIn(cfg, m.serverID) != blockpb.Role_ROLE_PRIMARY {
		return
	}
	if !st.Fenced && st.Role == blockvol.RolePrimary && !st.LeaseUntil.IsZero() && !until.After(st.LeaseUntil) {
		return // an older answer: never shorten a lease
	}
	if err := v.vol.Unfence(st.Epoch, blockvol.RolePrimary, until); err != nil {
		glog.Errorf("blockvolume: renew lease of %s: %v", v.name, err)
	}
}

// applyAssignmentLocked makes the volume of a serve epoch a.Config: fence
// at the epoch and store the config, then unfence as primary (with the
// lease) or replica; a non-member stays fenced. A volume this server does
// not have is created from a.Spec when it is a member — empty and
// untrusted (allocLost), never serving until the primary rebuilds it.
func (m *Manager) applyAssignmentLocked(a *blockpb.Assignment, leaseUntil time.Time) error {
	spec, cfg := a.GetSpec(), a.GetConfig()
	if spec == nil || cfg == nil {
		return errors.New("assignment without spec or config")
	}
	name := spec.GetName()
	role := roleIn(cfg, m.serverID)
	v := m.lookup(name)
	if v == nil {
		if role == blockpb.Role_ROLE_NONE {
			return nil // nothing here to fence
		}
		if e, ok := m.deleted[name]; ok && cfg.GetEpoch() <= e {
			// Sent before the master deleted the volume: stale.
			return nil
		}
		// This server should have a copy and has none (its file was
		// lost): an empty, untrusted one waits for a rebuild.
		if _, err := m.allocateLocked(spec, cfg, allocLost); err != nil {
			return err
		}
		v = m.lookup(name)
		if v == nil {
			return errors.New("volume vanished after allocation")
		}
	}
	v.setRF(spec.GetReplicationFactor())
	m.noteTakeoverLocked(v, cfg)
	m.beforeConfigLocked(v, cfg)
	err := m.applyConfigLocked(v, cfg, leaseUntil, true)
	m.syncReplLocked(v)
	return err
}

// applyConfigLocked moves v to cfg (see applyAssignmentLocked): a newer
// epoch fences the volume at that epoch first — unless this server stays
// primary and the lease is known, then Unfence moves it to the new epoch
// without a gap in service; the config is stored when it changed.
// Re-applying the config v already has changes nothing, so a re-sent
// assignment never interrupts a serving primary. assigned says cfg came in
// an assignment (which confirms a primary; AllocateVolume does not).
func (m *Manager) applyConfigLocked(v *volume, cfg *blockpb.EpochConfig, leaseUntil time.Time, assigned bool) error {
	st := v.vol.Status()
	if cfg.GetEpoch() < st.Epoch {
		return fmt.Errorf("%s: assignment epoch %d is older than the volume's %d: ignored", v.name, cfg.GetEpoch(), st.Epoch)
	}
	role := roleIn(cfg, m.serverID)
	newer := cfg.GetEpoch() > st.Epoch
	keepServing := newer && role == blockpb.Role_ROLE_PRIMARY && assigned && !leaseUntil.IsZero() && !st.Untrusted
	if role == blockpb.Role_ROLE_NONE {
		// Not a member of cfg: no reads from before the epoch is
		// visible (syncReplLocked keeps the flag from then on).
		v.dev.notMember.Store(true)
	}
	if newer && !keepServing {
		v.confirmed = 0
		if err := v.vol.FenceEpoch(cfg.GetEpoch()); err != nil {
			return err
		}
	}
	if cur := v.config(); cur == nil || !proto.Equal(cur, cfg) {
		if err := v.setConfig(cfg); err != nil {
			return err
		}
		glog.Infof("blockvolume: %s now in epoch %d as %v", v.name, cfg.GetEpoch(), role)
	}
	if st.Untrusted && role != blockpb.Role_ROLE_NONE {
		// A copy waiting for (or in) a rebuild is never unfenced as
		// primary or replica: the master must take it out of the epoch
		// and have it rebuilt.
		v.confirmed = 0
		if role == blockpb.Role_ROLE_PRIMARY && assigned {
			return fmt.Errorf("%s: this copy is untrusted (waiting for a rebuild): it does not serve as primary of epoch %d", v.name, cfg.GetEpoch())
		}
		return nil
	}
	switch role {
	case blockpb.Role_ROLE_PRIMARY:
		if !assigned {
			return nil
		}
		v.confirmed = cfg.GetEpoch()
		if keepServing {
			// Persists the new epoch and role before returning.
			return v.vol.Unfence(cfg.GetEpoch(), blockvol.RolePrimary, leaseUntil)
		}
		if !leaseUntil.IsZero() {
			m.renewLocked(v, leaseUntil)
		}
	case blockpb.Role_ROLE_REPLICA:
		v.confirmed = 0
		if st := v.vol.Status(); st.Fenced || st.Role != blockvol.RoleReplica {
			if err := v.vol.Unfence(cfg.GetEpoch(), blockvol.RoleReplica, time.Time{}); err != nil {
				return err
			}
		}
	default:
		v.confirmed = 0
	}
	return nil
}

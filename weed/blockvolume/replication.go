package blockvolume

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/golang/glog"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/replication"
	"github.com/weedblock/weedblock/v2bridge"
	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// ErrNotMember: a read from a copy that is not a member of its volume's
// current epoch (NBD EIO, SCSI unrecovered read error). Such a copy may
// hold writes the current primary never had.
var ErrNotMember = errors.New("blockvolume: this copy is not a member of the volume's current epoch")

// ErrUntrusted: a read from a copy being rebuilt (or created empty to be
// rebuilt): its data is not trusted until the rebuild commits.
var ErrUntrusted = errors.New("blockvolume: this copy is being rebuilt and serves no data")

// masterCallTimeout bounds one membership RPC to the master.
const masterCallTimeout = 5 * time.Second

// catchUp is one non-member copy the primary brings back to the live
// stream (a BlockHeartbeatResponse.catch_up target): an async Primary
// whose only member is that server, at the epoch the target was named in.
type catchUp struct {
	epoch     uint64
	serverID  string
	p         *replication.Primary
	reporting atomic.Bool // a ReportCaughtUp call is in flight
}

// listenRepl opens the replication listener and its Server. Called from
// Start before any volume is opened.
func (m *Manager) listenRepl() error {
	if m.opts.ReplAddr == "" {
		if m.endpoints.ReplAddress == "" {
			m.endpoints.ReplAddress = m.advertise(m.opts.ReplAddr)
		}
		return nil
	}
	l, err := net.Listen("tcp", m.opts.ReplAddr)
	if err != nil {
		return fmt.Errorf("blockvolume: replication listen: %w", err)
	}
	m.replL = l
	if m.endpoints.ReplAddress == "" {
		m.endpoints.ReplAddress = m.advertised(l)
	}
	m.replSrv = replication.NewServer()
	// Recovery (v2bridge) shares the port: its connections start with
	// v2bridge.Preface.
	m.recSvc = v2bridge.NewService()
	if err := m.replSrv.Route(v2bridge.Preface, m.recSvc); err != nil {
		return fmt.Errorf("blockvolume: route recovery on the replication listener: %w", err)
	}
	return nil
}

// serveRepl runs the replication Server on its listener (m.wg).
func (m *Manager) serveRepl() {
	if m.replSrv == nil {
		return
	}
	srv, l := m.replSrv, m.replL
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		// Serve may only start after Close (ErrClosed): not an error.
		if err := srv.Serve(l); err != nil && m.ctx.Err() == nil {
			glog.Errorf("blockvolume: replication serve %s: %v", l.Addr(), err)
		}
	}()
}

// durabilityMode maps the config's durability to a replication mode
// (unspecified: sync).
func durabilityMode(d blockpb.Durability) replication.Mode {
	switch d {
	case blockpb.Durability_DURABILITY_QUORUM:
		return replication.ModeQuorum
	case blockpb.Durability_DURABILITY_ASYNC:
		return replication.ModeAsync
	default:
		return replication.ModeSync
	}
}

// replMembers are cfg's members other than self, with their replication
// addresses.
func replMembers(cfg *blockpb.EpochConfig, self string) []replication.Member {
	var out []replication.Member
	for _, mb := range cfg.GetMembers() {
		id := mb.GetServer().GetServerId()
		if id == "" || id == self {
			continue
		}
		out = append(out, replication.Member{ServerID: id, Addr: mb.GetServer().GetReplAddress()})
	}
	return out
}

// currentRole is this server's role in v's stored config of v's current
// epoch (NONE when the config is of another epoch or missing).
func (m *Manager) currentRole(v *volume) (blockpb.Role, *blockpb.EpochConfig, blockvol.Status) {
	st := v.vol.Status()
	cfg := v.config()
	if cfg == nil || cfg.GetEpoch() != st.Epoch {
		return blockpb.Role_ROLE_NONE, cfg, st
	}
	return roleIn(cfg, m.serverID), cfg, st
}

// beforeConfigLocked runs before an assignment moves v to cfg: a volume
// that stops being primary is fenced and its Primary stopped first; one
// that becomes primary stops following (unregistered from the Server)
// before it is unfenced as primary.
func (m *Manager) beforeConfigLocked(v *volume, cfg *blockpb.EpochConfig) {
	role := roleIn(cfg, m.serverID)
	if role == blockpb.Role_ROLE_PRIMARY {
		m.unregisterLocked(v)
		m.unregisterRecoveryLocked(v)
		if len(replMembers(cfg, m.serverID)) > 0 {
			// Writes wait for the Primary syncReplLocked starts.
			v.dev.wantRepl.Store(true)
		}
		return
	}
	if v.hasPrimary() && cfg.GetEpoch() > v.vol.Status().Epoch {
		v.vol.Fence()
		m.stopPrimaryLocked(v)
	}
}

// syncReplLocked makes v's replication match its role in its current
// epoch: a confirmed primary with other members ships to them through a
// Primary (and serves the replication.Volume); a replica is registered
// with the Server; a copy that is not a member follows too, as a replica
// in the engine (which refuses frontend writes), so that the primary can
// catch it up — it still reports role NONE and fenced. The caller holds
// opMu.
func (m *Manager) syncReplLocked(v *volume) {
	role, cfg, st := m.currentRole(v)
	defer func() {
		// Only a primary with members whose Primary did not start
		// keeps refusing writes.
		v.dev.wantRepl.Store(role == blockpb.Role_ROLE_PRIMARY && v.confirmed == st.Epoch &&
			len(replMembers(cfg, m.serverID)) > 0 && v.primary() == nil)
	}()
	// A copy outside its epoch's members may hold records the primary
	// never had (a returning old primary): it serves no reads. Nor does
	// one being rebuilt.
	v.dev.notMember.Store(role == blockpb.Role_ROLE_NONE && cfg != nil && cfg.GetEpoch() == st.Epoch)
	v.dev.untrusted.Store(st.Untrusted)
	if role == blockpb.Role_ROLE_PRIMARY && v.confirmed == st.Epoch && !st.Untrusted {
		m.unregisterLocked(v)
		m.unregisterRecoveryLocked(v)
		members := replMembers(cfg, m.serverID)
		m.noteShippedLocked(v)
		if len(members)+1 < int(v.rf) {
			m.rejoinHoldLocked(v, true)
		}
		// The WAL stays held for returning copies (the rejoin hold, the
		// catch-ups of older epochs) until every member's cursor streams
		// and so holds what its replica lacks.
		defer func() {
			if len(members)+1 >= int(v.rf) && streaming(v.primary(), len(members)) {
				m.rejoinHoldLocked(v, false)
				m.closeCatchUpsLocked(v, st.Epoch)
				m.stopRecoveriesLocked(v, st.Epoch, "the volume is whole")
			}
		}()
		mode := durabilityMode(cfg.GetDurability())
		if mode == replication.ModeQuorum && len(members)+1 < 3 {
			mode = replication.ModeSync // a majority of two is both
		}
		if p := v.primary(); p != nil {
			if p.Epoch() == st.Epoch && v.primMode == mode {
				return
			}
			if v.primMode == mode {
				// A Primary with no members stays: a FLUSH waiting for
				// a removed member completes instead of failing.
				err := p.SetMembers(st.Epoch, members)
				if err == nil {
					glog.Infof("blockvolume: %s primary at epoch %d ships to %v", v.name, st.Epoch, members)
					return
				}
				glog.Warningf("blockvolume: %s: set members at epoch %d: %v; restarting replication", v.name, st.Epoch, err)
			}
			m.stopPrimaryLocked(v)
		}
		if len(members) == 0 {
			return
		}
		name, epoch := v.name, st.Epoch
		// SetMembers moves the Primary to later epochs: a removal names
		// the epoch it is in then (the master refuses an older one).
		var self atomic.Pointer[replication.Primary]
		p, err := replication.NewPrimary(v.vol, replication.PrimaryOptions{
			Name:    name,
			Mode:    mode,
			Epoch:   epoch,
			Members: members,
			RemoveMember: func(serverID, reason string) error {
				e := epoch
				if cur := self.Load(); cur != nil {
					e = cur.Epoch()
				}
				return m.removeMember(name, e, serverID, reason)
			},
			// A member that stayed in the epoch (RF=3's third copy, or an
			// old primary demoted by a promote) may hold records the old
			// primary gave it and not us: it needs a rebuild.
			Takeover: v.takeoverInfo(),
		})
		if err != nil {
			// Writes stay refused (wantRepl); say why once per epoch.
			if v.primErrEpoch != epoch {
				v.primErrEpoch = epoch
				glog.Errorf("blockvolume: %s: start replication at epoch %d (writes refused until it starts): %v", name, epoch, err)
			}
			return
		}
		self.Store(p)
		v.primMode = mode
		v.setPrimary(p, replication.NewVolume(v.vol, p))
		glog.Infof("blockvolume: %s primary at epoch %d (%v) ships to %v", name, epoch, mode, members)
		return
	}
	m.stopPrimaryLocked(v)
	m.closeCatchUpsLocked(v, 0)
	m.stopRecoveriesLocked(v, 0, "no longer the confirmed primary")
	m.rejoinHoldLocked(v, false)
	// Every copy that is not the confirmed primary can be recovered by
	// the primary of its epoch (v2bridge on the replication listener).
	m.registerRecoveryLocked(v, st.Healthy)
	if m.replSrv == nil || !st.Healthy || cfg == nil || st.Untrusted {
		// An untrusted copy (a rebuild not finished, or a lost copy
		// created empty) follows nothing and is never unfenced here:
		// only its rebuild (v2bridge) moves it.
		m.unregisterLocked(v)
		return
	}
	switch {
	case role == blockpb.Role_ROLE_REPLICA, role == blockpb.Role_ROLE_NONE && cfg.GetEpoch() == st.Epoch:
		if st.Fenced || st.Role != blockvol.RoleReplica {
			if err := v.vol.Unfence(st.Epoch, blockvol.RoleReplica, time.Time{}); err != nil {
				glog.Errorf("blockvolume: %s: follow as replica at epoch %d: %v", v.name, st.Epoch, err)
				m.unregisterLocked(v)
				return
			}
		}
		if !v.registered {
			if err := m.replSrv.Register(v.name, v.vol); err != nil {
				glog.Errorf("blockvolume: %s: register for replication: %v", v.name, err)
				return
			}
			v.registered = true
			glog.Infof("blockvolume: %s follows as %v at epoch %d", v.name, role, st.Epoch)
		}
	default:
		m.unregisterLocked(v)
	}
}

// streaming says whether p has n members and each one's cursor is
// connected (and so holds the WAL its replica lacks). A nil p streams to
// nobody.
func streaming(p *replication.Primary, n int) bool {
	if p == nil {
		return n == 0
	}
	k := 0
	for _, rs := range p.Stats().Replicas {
		switch rs.State {
		case replication.StateRemoved:
			continue
		case replication.StateCatchingUp, replication.StateInSync, replication.StateLagging:
			k++
		default:
			return false
		}
	}
	return k == n
}

// registerRecoveryLocked serves v's recovery (the replica side of
// v2bridge) while healthy; unhealthy, it is unregistered.
func (m *Manager) registerRecoveryLocked(v *volume, healthy bool) {
	if m.recSvc == nil {
		return
	}
	if !healthy {
		m.unregisterRecoveryLocked(v)
		return
	}
	if v.recoverable {
		return
	}
	if err := m.recSvc.Register(v.name, v.vol); err != nil {
		glog.Errorf("blockvolume: %s: register for recovery: %v", v.name, err)
		return
	}
	v.recoverable = true
}

func (m *Manager) unregisterRecoveryLocked(v *volume) {
	if v.recoverable && m.recSvc != nil {
		m.recSvc.Unregister(v.name)
	}
	v.recoverable = false
}

func (m *Manager) unregisterLocked(v *volume) {
	if v.registered && m.replSrv != nil {
		m.replSrv.Unregister(v.name)
	}
	v.registered = false
}

// stopPrimaryLocked detaches v's replication.Volume from the frontends and
// stops its Primary.
func (m *Manager) stopPrimaryLocked(v *volume) {
	// What it shipped to stays known to the next Primary and to the
	// recoveries (else a copy it streamed to would look diverged).
	m.noteShippedLocked(v)
	if p := v.setPrimary(nil, nil); p != nil {
		if err := p.Close(); err != nil {
			glog.Warningf("blockvolume: %s: stop replication: %v", v.name, err)
		}
	}
}

// stopReplLocked ends everything replication does for v (delete, close).
func (m *Manager) stopReplLocked(v *volume) {
	m.unregisterLocked(v)
	m.unregisterRecoveryLocked(v)
	m.stopPrimaryLocked(v)
	m.closeCatchUpsLocked(v, 0)
	m.stopRecoveriesLocked(v, 0, "volume closed")
	m.rejoinHoldLocked(v, false)
}

// rejoinHoldLocked keeps, while a confirmed primary has fewer copies than
// the volume's replication factor, a WAL hold from the tail it had when it
// became so: the copies that left the epoch (a crashed old primary, a
// removed member) can then be caught up from the WAL when they return
// instead of needing a rebuild. The hold has a byte budget (half the WAL)
// and the engine revokes it when it alone keeps writers from room; a
// revoked hold is not taken again until the volume is whole.
func (m *Manager) rejoinHoldLocked(v *volume, degraded bool) {
	if !degraded {
		if v.rejoin != nil {
			v.rejoin.Release()
			v.rejoin = nil
		}
		return
	}
	if v.rejoin != nil {
		return
	}
	var st blockvol.Status
	var h *blockvol.Hold
	var err error
	for try := 0; try < 100; try++ {
		st = v.vol.Status()
		if h, err = v.vol.Hold(st.Tail, st.WALSize/2); !errors.Is(err, blockvol.ErrNotRetained) {
			break // the flusher may move the tail between the two: read it again
		}
	}
	if err != nil {
		glog.Warningf("blockvolume: %s: keep the WAL for returning copies: %v", v.name, err)
		return
	}
	v.rejoin = h
	glog.Infof("blockvolume: %s: degraded (rf %d): keeping the WAL from lsn %d for returning copies", v.name, v.rf, st.Tail)
}

// closeCatchUpsLocked stops the catch-ups of v not at epoch keep (0: all).
func (m *Manager) closeCatchUpsLocked(v *volume, keep uint64) {
	v.replMu.Lock()
	var stop []*catchUp
	for id, cu := range v.catchUps {
		if keep == 0 || cu.epoch != keep {
			stop = append(stop, cu)
			delete(v.catchUps, id)
		}
	}
	v.replMu.Unlock()
	for _, cu := range stop {
		cu.p.Close()
	}
}

// applyCatchUpsLocked recovers each listed non-member copy of a volume
// this server is the confirmed primary of: a recovery (recovery.go) plans
// and runs a catch-up, truncation or rebuild through v2bridge; once it is
// in sync the copy follows the live stream through an async Primary whose
// only member it is, and is reported caught up once that cursor is in
// sync. A live stream that finds the copy cannot be followed (behind the
// WAL, diverged) sends it back to the recovery for a rebuild. A changed
// repair_seq restarts the recovery (a rebuild when the target asks for
// one). Recoveries and catch-ups no longer listed stop.
func (m *Manager) applyCatchUpsLocked(targets []*blockpb.CatchUpTarget) {
	want := map[string]map[string]*blockpb.CatchUpTarget{}
	for _, t := range targets {
		id := t.GetServer().GetServerId()
		if id == "" || id == m.serverID || t.GetServer().GetReplAddress() == "" {
			continue
		}
		if want[t.GetName()] == nil {
			want[t.GetName()] = map[string]*blockpb.CatchUpTarget{}
		}
		want[t.GetName()][id] = t
	}
	for _, v := range m.snapshot() {
		role, _, st := m.currentRole(v)
		ts := want[v.name]
		if role != blockpb.Role_ROLE_PRIMARY || v.confirmed != st.Epoch {
			ts = nil
		}
		primary := role == blockpb.Role_ROLE_PRIMARY && v.confirmed == st.Epoch
		v.replMu.Lock()
		var retire []*recovery
		for id, rc := range v.recs {
			t, ok := ts[id]
			switch {
			case !primary || rc.epoch != st.Epoch || (ok && (t.GetEpoch() != rc.epoch || t.GetServer().GetReplAddress() != rc.addr)):
				// Another epoch or address: this attempt's token is stale.
			case !ok && rc.missing < targetGrace:
				// Left out of one answer (the master may have missed a
				// heartbeat of the copy's server): keep going a while.
				rc.missing++
				continue
			case ok:
				rc.missing = 0
				continue
			}
			retire = append(retire, rc)
			delete(v.recs, id)
		}
		var stop []*catchUp
		for id, cu := range v.catchUps {
			// One of an older epoch is stopped by syncReplLocked once
			// the member it became streams; one of this epoch goes with
			// its recovery.
			if cu.epoch == st.Epoch && v.recs[id] == nil {
				stop = append(stop, cu)
				delete(v.catchUps, id)
			}
		}
		v.replMu.Unlock()
		for _, cu := range stop {
			cu.p.Close()
		}
		for _, rc := range retire {
			m.retireRecovery(v, rc, "no longer a catch-up target at this epoch")
		}
		for id, t := range ts {
			if t.GetEpoch() != st.Epoch {
				continue
			}
			m.recoverTargetLocked(v, id, t, st.Epoch)
		}
	}
}

// targetGrace is how many heartbeat answers in a row may leave out a
// catch-up target (at the same epoch) before its recovery stops.
const targetGrace = 4

// recoverTargetLocked drives one catch-up target id of v at epoch (see
// applyCatchUpsLocked). The caller holds opMu.
func (m *Manager) recoverTargetLocked(v *volume, id string, t *blockpb.CatchUpTarget, epoch uint64) {
	v.replMu.Lock()
	rc, cu := v.recs[id], v.catchUps[id]
	v.replMu.Unlock()
	closeCU := func() {
		v.replMu.Lock()
		if v.catchUps[id] == cu {
			delete(v.catchUps, id)
		}
		v.replMu.Unlock()
		cu.p.Close()
		cu = nil
	}
	if cu != nil && cu.epoch != epoch {
		closeCU() // of an older epoch: the copy is a target again, not a member
	}
	switch {
	case rc == nil:
		rc = m.newRecoveryLocked(v, t, epoch)
		v.replMu.Lock()
		if v.recs == nil {
			v.recs = map[string]*recovery{}
		}
		v.recs[id] = rc
		v.replMu.Unlock()
	case t.GetRepairSeq() != rc.seq():
		glog.Infof("blockvolume: %s: repair %d of %s (rebuild %v): planning again", v.name, t.GetRepairSeq(), id, t.GetRebuild())
		if cu != nil {
			closeCU()
		}
		rc.repair(t.GetRepairSeq(), t.GetRebuild())
	default:
		rc.setForced(t.GetRebuild())
	}
	if !rc.following() {
		if cu != nil {
			closeCU()
		}
		return
	}
	if cu == nil {
		// The recovery brought the copy to this primary's history: what
		// it holds beyond the takeover head is ours.
		if v.takeover {
			v.shipped[id] = true
		}
		p, err := replication.NewPrimary(v.vol, replication.PrimaryOptions{
			Name:    v.name,
			Mode:    replication.ModeAsync,
			Epoch:   epoch,
			Members: []replication.Member{{ServerID: id, Addr: t.GetServer().GetReplAddress()}},
			// Not a member: nothing to remove.
			RemoveMember: func(string, string) error { return nil },
			Takeover:     v.takeoverInfo(),
		})
		if err != nil {
			glog.Errorf("blockvolume: %s: follow %s: %v", v.name, id, err)
			return
		}
		cu = &catchUp{epoch: epoch, serverID: id, p: p}
		v.replMu.Lock()
		if v.catchUps == nil {
			v.catchUps = map[string]*catchUp{}
		}
		v.catchUps[id] = cu
		v.replMu.Unlock()
		glog.Infof("blockvolume: %s: %s follows the live stream at epoch %d", v.name, id, epoch)
	}
	rs := cu.p.Stats().Replicas
	if len(rs) == 0 {
		return
	}
	switch rs[0].State {
	case replication.StateCatchingUp, replication.StateLagging:
		rc.releaseHandoff() // the cursor holds the WAL it needs now
	case replication.StateNeedsRebuild:
		why := rs[0].Err
		glog.Warningf("blockvolume: %s: the live stream cannot follow %s (%s): rebuilding it", v.name, id, why)
		closeCU()
		rc.needsRebuild(why)
	case replication.StateInSync:
		rc.releaseHandoff()
		if cu.reporting.CompareAndSwap(false, true) {
			m.reportCaughtUp(v.name, epoch, cu)
		}
	}
}

// noteTakeoverLocked runs before an assignment moves v to cfg: when it
// makes this server primary of a volume it was not primary of, the head
// now is the end of the history it shares with the copies that left (the
// old primary wrote nothing here after it). A returning copy whose head is
// beyond it, and to which this primary never shipped, holds records this
// primary never had: it diverged and is rebuilt (never caught up as is).
//
// The first assignment naming this server primary in this process counts
// as a takeover too, even in the epoch it already had: a primary that
// crashed may have lost records it had shipped but not yet synced, and a
// member that made them durable holds, at the same LSNs and epoch, writes
// this primary will number again. Its head beyond the head this process
// started serving with gives it away.
func (m *Manager) noteTakeoverLocked(v *volume, cfg *blockpb.EpochConfig) {
	st := v.vol.Status()
	if roleIn(cfg, m.serverID) != blockpb.Role_ROLE_PRIMARY {
		v.takeover = false
		return
	}
	if !v.wasPrimary {
		v.wasPrimary = true
		v.takeover, v.takeoverHead = true, st.Head
		v.shipped = map[string]bool{}
		glog.Infof("blockvolume: %s: first serving as primary in this process at epoch %d with head %d", v.name, cfg.GetEpoch(), st.Head)
		return
	}
	if cfg.GetEpoch() <= st.Epoch {
		return
	}
	if prev := v.config(); prev != nil && prev.GetEpoch() == st.Epoch && roleIn(prev, m.serverID) == blockpb.Role_ROLE_PRIMARY {
		return // primary before, primary now: the same history
	}
	v.takeover, v.takeoverHead = true, st.Head
	v.shipped = map[string]bool{}
	glog.Infof("blockvolume: %s: taking over as primary at epoch %d with head %d", v.name, cfg.GetEpoch(), st.Head)
}

// takeoverInfo is what a Primary started now needs to check the copies
// it ships to against the takeover head (nil: this server did not take
// over in this process; the Primary still refuses a copy whose head is
// beyond its own). The copies this server already shipped to since the
// takeover are exempt. The caller holds opMu.
func (v *volume) takeoverInfo() *replication.Takeover {
	if !v.takeover {
		return nil
	}
	tk := &replication.Takeover{Head: v.takeoverHead}
	for id := range v.shipped {
		tk.Shipped = append(tk.Shipped, id)
	}
	return tk
}

// noteShippedLocked remembers, after a takeover, the members v's Primary
// has checked against the takeover head and streams to: records beyond
// it on them are this primary's own. The caller holds opMu.
func (m *Manager) noteShippedLocked(v *volume) {
	p := v.primary()
	if !v.takeover || p == nil {
		return
	}
	for _, id := range p.ShippedTo() {
		v.shipped[id] = true
	}
}

// reportCaughtUp calls ReportCaughtUp in the background (m.wg); on failure
// the next heartbeat answer tries again.
func (m *Manager) reportCaughtUp(name string, epoch uint64, cu *catchUp) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		err := m.masterCall(func(ctx context.Context, c blockpb.BlockMasterClient) error {
			_, err := c.ReportCaughtUp(ctx, &blockpb.ReportCaughtUpRequest{
				Name: name, Epoch: epoch, ServerId: cu.serverID, CallerServerId: m.serverID,
			})
			return err
		})
		if err != nil {
			glog.Warningf("blockvolume: %s: report %s caught up at epoch %d: %v", name, cu.serverID, epoch, err)
			sleepCtx(m.ctx, m.opts.Pulse)
		} else {
			glog.Infof("blockvolume: %s: reported %s caught up at epoch %d", name, cu.serverID, epoch)
		}
		cu.reporting.Store(false)
	}()
}

// removeMember asks the master to drop serverID from name's next epoch
// (the Primary's RemoveMember callback).
func (m *Manager) removeMember(name string, epoch uint64, serverID, reason string) error {
	err := m.masterCall(func(ctx context.Context, c blockpb.BlockMasterClient) error {
		_, err := c.RemoveMember(ctx, &blockpb.RemoveMemberRequest{
			Name: name, Epoch: epoch, ServerId: serverID, CallerServerId: m.serverID,
			Reason: reason,
		})
		return err
	})
	if err != nil {
		glog.Warningf("blockvolume: %s: remove member %s at epoch %d: %v", name, serverID, epoch, err)
		return err
	}
	glog.Infof("blockvolume: %s: asked the master to remove %s (epoch %d)", name, serverID, epoch)
	return nil
}

// masterCall runs call against the master the heartbeat uses (or the first
// known one), following one leader redirect.
func (m *Manager) masterCall(call func(context.Context, blockpb.BlockMasterClient) error) error {
	if m.opts.Dial == nil || m.opts.Masters == nil || m.ctx == nil {
		return errors.New("no master configured")
	}
	addr := m.hb.snapshot().Master
	if addr == "" {
		if ms := m.opts.Masters(); len(ms) > 0 {
			addr = ms[0]
		}
	}
	if addr == "" {
		return errors.New("no master address known")
	}
	var err error
	for try := 0; try < 2 && addr != ""; try++ {
		ctx, cancel := context.WithTimeout(m.ctx, masterCallTimeout)
		err = func() error {
			cc, err := m.opts.Dial(ctx, addr)
			if err != nil {
				return fmt.Errorf("dial %s: %w", addr, err)
			}
			defer cc.Close()
			return call(ctx, blockpb.NewBlockMasterClient(cc))
		}()
		cancel()
		if err == nil {
			return nil
		}
		addr = leaderFromError(err)
	}
	return err
}

// replicaStates is the primary's view of its members and catch-ups for
// the heartbeat report.
func (v *volume) replicaStates() []*blockpb.ReplicaState {
	v.replMu.Lock()
	p := v.prim
	var cus []*catchUp
	for _, cu := range v.catchUps {
		cus = append(cus, cu)
	}
	v.replMu.Unlock()
	var rss []replication.ReplicaStats
	if p != nil {
		rss = append(rss, p.Stats().Replicas...)
	}
	for _, cu := range cus {
		rss = append(rss, cu.p.Stats().Replicas...)
	}
	var out []*blockpb.ReplicaState
	for _, rs := range rss {
		if rs.State == replication.StateRemoved {
			continue
		}
		r := &blockpb.ReplicaState{
			ServerId: rs.ServerID,
			State:    rs.State.String(),
			LagLsn:   rs.LagLSNs,
			LagBytes: uint64(max(rs.LagBytes, 0)),
		}
		if !rs.LastAck.IsZero() {
			r.LastAckUnixMs = rs.LastAck.UnixMilli()
		}
		out = append(out, r)
	}
	return out
}

// primary is v's Primary (nil when it ships to nobody).
func (v *volume) primary() *replication.Primary {
	v.replMu.Lock()
	defer v.replMu.Unlock()
	return v.prim
}

func (v *volume) hasPrimary() bool { return v.primary() != nil }

// setPrimary installs p (serving rv to the frontends) and returns the one
// it replaces.
func (v *volume) setPrimary(p *replication.Primary, rv *replication.Volume) *replication.Primary {
	v.replMu.Lock()
	old := v.prim
	v.prim = p
	v.replMu.Unlock()
	v.dev.repl.Store(rv)
	return old
}

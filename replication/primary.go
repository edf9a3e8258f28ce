package replication

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang/glog"

	"github.com/weedblock/weedblock/blockdev"
	"github.com/weedblock/weedblock/blockvol"
)

// Member is one replica of the current epoch: its server ID (what the
// master names it by) and its replication address (host:port).
type Member struct {
	ServerID string
	Addr     string
}

// Errors of the primary side.
var (
	// ErrCommitTimeout: a FLUSH waited CommitTimeout for the members the
	// mode requires and gave up (an I/O error for the initiator).
	ErrCommitTimeout = errors.New("replication: timed out waiting for replicas to commit")
	// ErrNotShipping: the primary volume is fenced, its lease lapsed, or
	// its epoch is not the replication epoch.
	ErrNotShipping = errors.New("replication: primary may not accept writes")
)

// Defaults for PrimaryOptions.
const (
	DefaultCommitTimeout    = 10 * time.Second
	DefaultMemberTimeout    = 5 * time.Second
	DefaultMaxInFlightBytes = 8 << 20
	// idleTick: how often an idle cursor looks for appends nobody
	// announced and sends a barrier so replicas report durable progress.
	idleTick = 50 * time.Millisecond
	// A cursor woken by a write with less than shipBatchBytes appended
	// since its last pass, and no flush waiting, lingers up to shipLinger
	// before shipping: writes arriving meanwhile go in the same pass, one
	// socket write and one replica wake-up for many records instead of
	// one each. A flush never waits for it: it ships what it needs itself
	// (RequestBarrier). The linger bounds how far an async replica lags
	// behind a trickle of writes.
	shipBatchBytes = 64 << 10
	shipLinger     = 500 * time.Microsecond
)

// PrimaryOptions configure NewPrimary.
type PrimaryOptions struct {
	// Name is the volume name replicas are registered under.
	Name string
	// Mode is the durability mode (required).
	Mode Mode
	// Epoch and Members: the current epoch and its replicas (the primary
	// itself not included). The volume must be unfenced as primary of
	// Epoch for records to be shipped.
	Epoch   uint64
	Members []Member
	// RemoveMember asks the master to drop a member that stopped
	// answering (or needs a rebuild) from the next epoch. It is called at
	// most once per member per epoch (again after an error), from the
	// primary's monitor goroutine. FLUSH keeps waiting (bounded by
	// CommitTimeout) until SetMembers brings the epoch without it.
	// reason says why, for the master's record and the operator.
	RemoveMember func(serverID, reason string) error
	// CommitTimeout bounds how long a FLUSH waits for the mode's commit;
	// 0 means DefaultCommitTimeout.
	CommitTimeout time.Duration
	// MemberTimeout: a member that a FLUSH waits for and that makes no
	// progress for this long is reported to RemoveMember; it also bounds
	// the hello exchange. 0 means DefaultMemberTimeout.
	MemberTimeout time.Duration
	// MaxInFlightBytes bounds the bytes shipped to one replica and not yet
	// acknowledged; 0 means DefaultMaxInFlightBytes. It is capped at 1/8
	// of the WAL.
	MaxInFlightBytes int64
	// HoldBudget is the WAL byte budget of each replica's retention hold
	// (bytes it keeps beyond what the checkpoint needs); 0 means 3/4 of
	// the WAL. A hold is also revoked when it alone keeps writers from
	// WAL room.
	HoldBudget int64
	// Dialer opens connections (tests put a fault proxy here); nil means
	// plain TCP.
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	// Takeover, if set, says where this server's history as primary
	// began; see Takeover. Nil: only the always-on checks apply (a
	// member whose head is beyond the primary's head at hello, or whose
	// head record's epoch differs from the primary's record at that LSN,
	// needs a rebuild; see doc.go).
	Takeover *Takeover
}

// Takeover describes the start of a primary's tenure: the head it had
// when it became primary of the volume (the end of the history it shares
// with the previous primary). A member of NewPrimary's list that, at its
// first successful hello in this Primary's lifetime, reports a head beyond
// Head holds records this primary never had (the previous primary shipped
// or wrote them after this copy's last record): its cursor goes to
// StateNeedsRebuild and ships it nothing. Members added later by
// SetMembers (also one of the first list that left before it was checked
// and came back), and those listed in Shipped, are trusted to hold only
// this server's records (they joined through a path that checked them)
// and are only checked against the primary's head.
type Takeover struct {
	Head uint64
	// Shipped names members this server already shipped to as primary
	// since it took over: records beyond Head on them may be its own.
	Shipped []string
}

// Primary ships one primary volume's WAL to the members of the current
// epoch, one cursor goroutine per member, and decides when an LSN is
// committed for the durability mode.
type Primary struct {
	vol *blockvol.Volume
	o   PrimaryOptions

	cfgMu sync.Mutex // serializes SetMembers and Close

	mu       sync.Mutex
	epoch    uint64
	members  []*replica // current epoch's members, in the order given
	removed  []*replica // members dropped by SetMembers (for Stats), bounded
	changed  chan struct{}
	closed   bool
	shipList atomic.Pointer[[]*replica]
	// unchecked: members of NewPrimary's list still to be checked against
	// the takeover head at their first successful hello.
	unchecked map[string]bool
	// shippedTo: members that passed a hello's checks in this Primary's
	// lifetime (see ShippedTo).
	shippedTo map[string]bool

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewPrimary starts shipping vol's WAL to o.Members.
func NewPrimary(vol *blockvol.Volume, o PrimaryOptions) (*Primary, error) {
	if o.Name == "" {
		return nil, errors.New("replication: new primary: no volume name")
	}
	if o.Mode != ModeSync && o.Mode != ModeQuorum && o.Mode != ModeAsync {
		return nil, fmt.Errorf("replication: new primary %s: bad mode %v", o.Name, o.Mode)
	}
	if err := checkMembers(o.Mode, o.Members); err != nil {
		return nil, fmt.Errorf("replication: new primary %s: %w", o.Name, err)
	}
	if o.CommitTimeout <= 0 {
		o.CommitTimeout = DefaultCommitTimeout
	}
	if o.MemberTimeout <= 0 {
		o.MemberTimeout = DefaultMemberTimeout
	}
	if o.MaxInFlightBytes <= 0 {
		o.MaxInFlightBytes = DefaultMaxInFlightBytes
	}
	if o.HoldBudget <= 0 {
		o.HoldBudget = vol.Status().WALSize / 4 * 3
	}
	if w := vol.Status().WALSize / 8; o.MaxInFlightBytes > w {
		o.MaxInFlightBytes = w
	}
	p := &Primary{vol: vol, o: o, epoch: o.Epoch, changed: make(chan struct{}), shippedTo: make(map[string]bool)}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	if o.Takeover != nil {
		p.unchecked = make(map[string]bool)
		for _, m := range o.Members {
			p.unchecked[m.ServerID] = true
		}
		for _, id := range o.Takeover.Shipped {
			delete(p.unchecked, id)
		}
	}
	p.mu.Lock()
	for _, m := range o.Members {
		p.members = append(p.members, p.startLocked(m, o.Epoch, nil))
	}
	p.publishLocked()
	p.mu.Unlock()
	p.wg.Add(1)
	go p.monitor()
	return p, nil
}

func checkMembers(mode Mode, ms []Member) error {
	seen := make(map[string]bool)
	for _, m := range ms {
		if m.ServerID == "" || m.Addr == "" {
			return fmt.Errorf("member %+v: server ID and address required", m)
		}
		if seen[m.ServerID] {
			return fmt.Errorf("member %s listed twice", m.ServerID)
		}
		seen[m.ServerID] = true
	}
	if mode == ModeQuorum && len(ms)+1 < 3 {
		return fmt.Errorf("quorum mode needs RF ≥ 3, have %d", len(ms)+1)
	}
	return nil
}

// checkTakeover is called at each successful hello of member id with
// the replica's head: the first one of a member still unchecked fails if
// the replica holds records beyond the takeover head (it stays unchecked,
// so a later cursor for it fails too).
func (p *Primary) checkTakeover(id string, replicaHead uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.unchecked[id] {
		if h := p.o.Takeover.Head; replicaHead > h {
			return fmt.Errorf("%w: replica head %d is beyond lsn %d where this primary took over: it holds records this primary never had", errNeedsRebuild, replicaHead, h)
		}
		delete(p.unchecked, id)
	}
	p.shippedTo[id] = true
	return nil
}

// ShippedTo lists the members that passed a hello's checks (head, head
// epoch, takeover) in this Primary's lifetime, whatever their state now:
// from then on records beyond the takeover head on them may be this
// primary's own. The owner carries the list into the Takeover.Shipped of
// a later Primary and its recoveries.
func (p *Primary) ShippedTo() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Sorted(maps.Keys(p.shippedTo))
}

// publishLocked refreshes the lock-free list Notify walks.
func (p *Primary) publishLocked() {
	l := append([]*replica(nil), p.members...)
	p.shipList.Store(&l)
}

// broadcastLocked wakes every commit waiter.
func (p *Primary) broadcastLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// Notify tells the cursors that records of about n bytes were appended.
// Writes through Volume call it; a cursor also polls, so a missed call
// only adds delay. A cursor that is lingering (see shipLinger) is woken
// only once shipBatchBytes have gathered.
func (p *Primary) Notify(n int) {
	if l := p.shipList.Load(); l != nil {
		for _, r := range *l {
			if r.pending.Add(int64(n)) >= shipBatchBytes || !r.lingering.Load() {
				r.kick()
			}
		}
	}
}

// Epoch is the current replication epoch.
func (p *Primary) Epoch() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.epoch
}

// SetMembers installs a new epoch's member list. Members no longer listed
// stop (state removed); on a new epoch every cursor reconnects with it
// (keeping its WAL hold). An older epoch than the current one is refused
// with ErrStaleEpoch. In quorum mode fewer than two members are accepted
// here (an epoch that removed failed members): the commit then needs a
// majority of the primary and the members left.
func (p *Primary) SetMembers(epoch uint64, members []Member) error {
	// Quorum needs RF ≥ 3 to start; an epoch that dropped members keeps
	// the mode (the majority of what is left: with RF 2 that is both).
	if err := checkMembers(ModeSync, members); err != nil {
		return fmt.Errorf("replication: %s: set members at epoch %d: %w", p.o.Name, epoch, err)
	}
	p.cfgMu.Lock()
	defer p.cfgMu.Unlock()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return fmt.Errorf("replication: %s: set members: %w", p.o.Name, blockdev.ErrClosed)
	}
	if epoch < p.epoch {
		cur := p.epoch
		p.mu.Unlock()
		return fmt.Errorf("replication: %s: set members at epoch %d, current %d: %w", p.o.Name, epoch, cur, ErrStaleEpoch)
	}
	want := make(map[string]Member)
	for _, m := range members {
		want[m.ServerID] = m
	}
	var stop []*replica
	keep := make(map[string]*replica)
	for _, r := range p.members {
		if m, ok := want[r.m.ServerID]; ok && m == r.m && epoch == p.epoch {
			keep[r.m.ServerID] = r
			continue
		}
		stop = append(stop, r)
	}
	p.mu.Unlock()
	for _, r := range stop {
		r.stopAndWait()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	holds := make(map[string]*blockvol.Hold)
	// stuck carries how long a member kept in the next epoch has been
	// holding up a commit: a new epoch (another member leaving or coming
	// back) must not restart its timeout, or a silent member that is
	// never removed fails every sync FLUSH once epochs change often.
	stuck := make(map[string]time.Time)
	for _, r := range stop {
		if m, ok := want[r.m.ServerID]; ok && m == r.m && r.state != StateNeedsRebuild {
			holds[r.m.ServerID] = r.hold // the next epoch's cursor keeps it
			stuck[r.m.ServerID] = r.stuckSince
		} else {
			r.releaseHold()
		}
		if _, ok := want[r.m.ServerID]; !ok {
			r.state = StateRemoved
			p.removed = append(p.removed, r)
			if len(p.removed) > 16 {
				p.removed = p.removed[len(p.removed)-16:]
			}
		}
	}
	// A member that was not in the last epoch joins through a path that
	// checked its history (a recovery by this primary): it is no longer
	// held to the takeover head, even if it was in NewPrimary's list and
	// left before passing the check. One that stays stays unchecked.
	had := make(map[string]bool, len(p.members))
	for _, r := range p.members {
		had[r.m.ServerID] = true
	}
	for _, m := range members {
		if !had[m.ServerID] {
			delete(p.unchecked, m.ServerID)
		}
	}
	p.epoch = epoch
	p.members = p.members[:0:0]
	for _, m := range members {
		if r, ok := keep[m.ServerID]; ok {
			p.members = append(p.members, r)
		} else {
			r := p.startLocked(m, epoch, holds[m.ServerID])
			r.stuckSince = stuck[m.ServerID]
			p.members = append(p.members, r)
		}
	}
	p.publishLocked()
	p.broadcastLocked()
	return nil
}

// canShip says whether the primary volume may send records at epoch now.
func (p *Primary) canShip(epoch uint64) error {
	st := p.vol.Status()
	switch {
	case !st.Healthy:
		return fmt.Errorf("%w: volume unhealthy: %v", ErrNotShipping, st.Err)
	case st.Fenced:
		return fmt.Errorf("%w: volume fenced", ErrNotShipping)
	case st.Role != blockvol.RolePrimary:
		return fmt.Errorf("%w: volume role %v", ErrNotShipping, st.Role)
	case !st.LeaseUntil.IsZero() && !time.Now().Before(st.LeaseUntil):
		return fmt.Errorf("%w: lease lapsed", ErrNotShipping)
	case st.Epoch != epoch:
		return fmt.Errorf("%w: volume epoch %d, replication epoch %d", ErrNotShipping, st.Epoch, epoch)
	}
	return nil
}

// committedLocked computes the committed LSN from the primary's durable LSN.
func (p *Primary) committedLocked(primaryDurable uint64) uint64 {
	ds := make([]uint64, len(p.members))
	for i, r := range p.members {
		ds[i] = r.durable
	}
	return committedLSN(p.o.Mode, primaryDurable, ds)
}

// Committed is the highest LSN committed for the durability mode now.
func (p *Primary) Committed() uint64 {
	d := p.vol.Status().Durable
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.committedLocked(d)
}

// RequestBarrier asks every member to make lsn durable, without waiting
// for it. When a member's cursor is not in a pass, the caller ships the
// records lsn needs and the barrier itself (bounded: it never waits for
// in-flight room, and its writes time out); otherwise the cursor does.
// In async mode it does nothing (replicas report durability on their own).
func (p *Primary) RequestBarrier(lsn uint64) {
	if p.o.Mode == ModeAsync {
		return
	}
	var kick []*replica
	p.mu.Lock()
	for _, r := range p.members {
		if r.durable < lsn && r.want(lsn) {
			kick = append(kick, r)
		}
	}
	p.mu.Unlock()
	for _, r := range kick {
		// Every record lsn covers already on the wire: send the barrier
		// from here, so the replica's fsync starts before this caller's
		// own (no cursor wake-up in between), if that cannot block.
		if lc := r.live.Load(); lc != nil {
			if lc.shipped.Load() < lsn && lc.help != nil {
				// The cursor has not shipped them yet (it may not
				// have woken since the write): ship them from here,
				// with the barrier, if it is not in a pass itself.
				lc.help()
			}
			if sh := lc.shipped.Load(); sh >= lsn && lc.sendBarrier(sh, true) {
				continue
			}
		}
		r.kick()
	}
}

// WaitCommitted waits until lsn is committed for the mode: the primary
// must already have flushed it locally (Volume.Flush does). It fails with
// ErrCommitTimeout after CommitTimeout, and at once if the primary volume
// is fenced or its lease lapses.
func (p *Primary) WaitCommitted(lsn uint64) error {
	if st := p.vol.Status(); !st.Fenced && (st.LeaseUntil.IsZero() || time.Now().Before(st.LeaseUntil)) {
		p.mu.Lock()
		ok := !p.closed && p.committedLocked(st.Durable) >= lsn
		p.mu.Unlock()
		if ok {
			return nil
		}
	}
	deadline := time.NewTimer(p.o.CommitTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(idleTick)
	defer tick.Stop()
	for {
		st := p.vol.Status()
		if st.Fenced || (!st.LeaseUntil.IsZero() && !time.Now().Before(st.LeaseUntil)) {
			return fmt.Errorf("replication: %s: commit lsn %d: %w: %w", p.o.Name, lsn, blockdev.ErrReadOnly, ErrNotShipping)
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return fmt.Errorf("replication: %s: commit lsn %d: %w", p.o.Name, lsn, blockdev.ErrClosed)
		}
		c := p.committedLocked(st.Durable)
		ch := p.changed
		var kick []*replica
		if c < lsn && p.o.Mode != ModeAsync {
			now := time.Now()
			for _, r := range p.members {
				if r.durable >= lsn {
					continue
				}
				if r.want(lsn) {
					kick = append(kick, r)
				}
				if r.stuckSince.IsZero() {
					r.stuckSince = now
				}
			}
		}
		p.mu.Unlock()
		if c >= lsn {
			return nil
		}
		for _, r := range kick {
			r.kick()
		}
		select {
		case <-ch:
		case <-tick.C:
		case <-deadline.C:
			return fmt.Errorf("replication: %s: commit lsn %d (committed %d, mode %v) after %v: %w",
				p.o.Name, lsn, c, p.o.Mode, p.o.CommitTimeout, ErrCommitTimeout)
		}
	}
}

// monitor asks the master to remove members that stopped answering or
// need a rebuild.
func (p *Primary) monitor() {
	defer p.wg.Done()
	every := p.o.MemberTimeout / 4
	if every < 10*time.Millisecond {
		every = 10 * time.Millisecond
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		var ask []*replica
		var why []string // why each asked member goes, read under p.mu
		p.mu.Lock()
		epoch := p.epoch
		for _, r := range p.members {
			if r.removeAsked {
				continue
			}
			stuck := !r.stuckSince.IsZero() && now.Sub(r.stuckSince) > p.o.MemberTimeout && p.o.Mode != ModeAsync
			switch {
			case r.state == StateNeedsRebuild:
				r.removeAsked = true
				ask = append(ask, r)
				why = append(why, fmt.Sprintf("replica needs a rebuild: %v", r.lastErr))
			case stuck:
				r.removeAsked = true
				ask = append(ask, r)
				why = append(why, fmt.Sprintf("replica stopped answering the primary (%s for over %v, last error: %v)", r.state, p.o.MemberTimeout, r.lastErr))
			}
		}
		p.mu.Unlock()
		for i, r := range ask {
			glog.Warningf("replication: %s epoch %d: member %s (%s): %s; asking the master to remove it", p.o.Name, epoch, r.m.ServerID, r.m.Addr, why[i])
			if p.o.RemoveMember == nil {
				continue
			}
			if err := p.o.RemoveMember(r.m.ServerID, why[i]); err != nil {
				glog.Errorf("replication: %s: remove member %s: %v", p.o.Name, r.m.ServerID, err)
				p.mu.Lock()
				r.removeAsked = false
				p.mu.Unlock()
			}
		}
	}
}

// Close stops every cursor and waits for them. Commit waiters fail with
// ErrClosed. Idempotent.
func (p *Primary) Close() error {
	p.cfgMu.Lock()
	defer p.cfgMu.Unlock()
	p.mu.Lock()
	p.closed = true
	ms := p.members
	p.broadcastLocked()
	p.mu.Unlock()
	p.cancel()
	for _, r := range ms {
		r.stopAndWait()
		r.releaseHold()
	}
	p.wg.Wait()
	return nil
}

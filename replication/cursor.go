package replication

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang/glog"

	"github.com/weedblock/weedblock/blockvol"
)

// ReplicaState is where one member's cursor is.
type ReplicaState uint8

const (
	// StateConnecting: no connection (dialing, or backing off after a
	// failure).
	StateConnecting ReplicaState = iota + 1
	// StateCatchingUp: connected, shipping records the replica lacks from
	// the WAL.
	StateCatchingUp
	// StateInSync: connected and every record appended so far was shipped.
	StateInSync
	// StateLagging: connected but held back by the in-flight byte bound.
	StateLagging
	// StateNeedsRebuild: the replica cannot be caught up from the WAL
	// (its next record left the WAL, its hold was revoked, or it holds
	// records the primary does not). Streaming to it stopped.
	StateNeedsRebuild
	// StateRemoved: no longer a member.
	StateRemoved
)

func (s ReplicaState) String() string {
	switch s {
	case StateConnecting:
		return "connecting"
	case StateCatchingUp:
		return "catching-up"
	case StateInSync:
		return "in-sync"
	case StateLagging:
		return "lagging"
	case StateNeedsRebuild:
		return "needs-rebuild"
	case StateRemoved:
		return "removed"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// errNeedsRebuild marks a session end that reconnecting cannot fix.
var errNeedsRebuild = errors.New("replica needs rebuild")

// errHelpStop ends a flush's pass (help) that would have to wait for
// in-flight room; the cursor goes on from there.
var errHelpStop = errors.New("replication: flush pass stops at the in-flight bound")

// A flush ships records itself (help) only while at most
// helpInFlightBytes are unacknowledged, and its writes give up (failing
// the connection) after helpWriteTimeout.
const (
	helpInFlightBytes = 512 << 10
	helpWriteTimeout  = time.Second
)

// replica is one member's cursor. Fields below mu are guarded by p.mu.
type replica struct {
	p     *Primary
	m     Member
	epoch uint64

	wake chan struct{} // cap 1: new appends, barrier wanted, progress
	// pending counts the bytes Notify announced since the cursor's last
	// pass began; lingering is set while the cursor waits for more of
	// them (shipLinger), so Notify wakes it only for a full batch.
	pending   atomic.Int64
	lingering atomic.Bool
	// live is the current connection once its cursor streams (nil
	// otherwise): a flush sends its barrier on it directly when every
	// record it covers is already on the wire.
	live atomic.Pointer[liveConn]
	// hold keeps the WAL from the replica's durable+1 on, across
	// reconnects (and across epochs: SetMembers hands it to the next
	// cursor). Owned by run while it runs; released by whoever drops the
	// replica.
	hold   *blockvol.Hold
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	// guarded by p.mu
	state       ReplicaState
	applied     uint64
	durable     uint64
	lastAck     time.Time
	lastErr     error
	barrierWant atomic.Uint64 // highest LSN a flush wants durable
	stuckSince  time.Time
	removeAsked bool
	shipped     uint64 // highest LSN sent on the current connection
	inflight    int64  // bytes sent and not yet acknowledged
	barrierAck  uint64 // latest barrier answered (onProgress)
	// accepted is the connection whose reports count: set once its
	// session has checked the replica's position at hello (a replica
	// ahead of the primary, or of another history, reports a durable LSN
	// that says nothing about this primary's records).
	accepted *Conn
	// acceptedHold is that session's WAL hold: a durable report advances
	// it at once (no cursor wake-up), so a writer waiting for WAL room
	// never finds it pinning records the replica already has durable.
	acceptedHold *blockvol.Hold
}

// liveConn is one session's connection with what was put on it: the
// cursor and flushes (RequestBarrier) both send barriers on it, one
// outstanding at a time.
type liveConn struct {
	cn *Conn
	// help, if set, runs one cursor pass from a flush's goroutine when
	// the cursor is not in one (see session); it reports whether it ran.
	help func() bool
	// shipped: every record up to it is queued on cn (before anything
	// queued later).
	shipped atomic.Uint64
	// barrierSent: the LSN of the latest barrier queued on cn.
	barrierSent atomic.Uint64
}

// sendBarrier queues a barrier for lsn on lc unless one is still
// unanswered (or a later one was sent); it reports whether a barrier
// covering lsn is on the wire after the call. With try (a flush's own
// goroutine) it never blocks: it gives up if the write could wait.
func (lc *liveConn) sendBarrier(lsn uint64, try bool) bool {
	pr := lc.cn.Progress()
	var cur uint64
	for {
		cur = lc.barrierSent.Load()
		if cur >= lsn {
			return true
		}
		if cur > pr.Barrier {
			return false // one outstanding: its answer wakes the cursor
		}
		if lc.barrierSent.CompareAndSwap(cur, lsn) {
			break
		}
	}
	if try {
		if lc.cn.TryBarrier(lsn) {
			return true
		}
		// Not sent: give the turn back to the cursor (unless it sent a
		// later one meanwhile).
		lc.barrierSent.CompareAndSwap(lsn, cur)
		return false
	}
	return lc.cn.Barrier(lsn) == nil
}

func (p *Primary) startLocked(m Member, epoch uint64, hold *blockvol.Hold) *replica {
	r := &replica{p: p, m: m, epoch: epoch, hold: hold, wake: make(chan struct{}, 1), done: make(chan struct{}), state: StateConnecting}
	r.ctx, r.cancel = context.WithCancel(p.ctx)
	go r.run()
	return r
}

// want raises barrierWant to lsn; it reports whether it moved.
func (r *replica) want(lsn uint64) bool {
	for {
		cur := r.barrierWant.Load()
		if cur >= lsn {
			return false
		}
		if r.barrierWant.CompareAndSwap(cur, lsn) {
			return true
		}
	}
}

func (r *replica) kick() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *replica) stopAndWait() {
	r.cancel()
	<-r.done
}

func (r *replica) set(f func(r *replica)) {
	r.p.mu.Lock()
	f(r)
	r.p.mu.Unlock()
}

// holdFrom returns the replica's hold, moved to from (a hold never moves
// back: one that is past from is replaced if from is still in the WAL).
func (r *replica) holdFrom(from uint64) (*blockvol.Hold, error) {
	if h := r.hold; h != nil {
		if err := h.Err(); err != nil {
			return nil, fmt.Errorf("%w: %v", errNeedsRebuild, err)
		}
		if h.LSN() <= from {
			if err := h.Advance(from); err != nil {
				return nil, fmt.Errorf("%w: %v", errNeedsRebuild, err)
			}
			return h, nil
		}
	}
	h, err := r.p.vol.Hold(from, r.p.o.HoldBudget)
	if err != nil {
		if errors.Is(err, blockvol.ErrNotRetained) {
			return nil, fmt.Errorf("%w: hold from %d: %v", errNeedsRebuild, from, err)
		}
		return nil, fmt.Errorf("hold from %d: %w", from, err)
	}
	if r.hold != nil {
		r.hold.Release()
	}
	r.hold = h
	return h, nil
}

// releaseHold drops the hold (after run has returned).
func (r *replica) releaseHold() {
	if r.hold != nil {
		r.hold.Release()
		r.hold = nil
	}
}

// run reconnects until stopped or the replica needs a rebuild.
func (r *replica) run() {
	defer close(r.done)
	if r.hold == nil {
		// Until the replica says where it is, keep everything still in
		// the WAL: a member of the epoch may need any of it.
		for i := 0; i < 10 && r.hold == nil; i++ {
			if h, err := r.p.vol.Hold(r.p.vol.Status().Tail, r.p.o.HoldBudget); err == nil {
				r.hold = h
			}
		}
	}
	backoff := 20 * time.Millisecond
	for r.ctx.Err() == nil {
		shipped, err := r.session()
		if r.ctx.Err() != nil {
			return
		}
		if errors.Is(err, errNeedsRebuild) {
			glog.Warningf("replication: %s: member %s needs a rebuild: %v", r.p.o.Name, r.m.ServerID, err)
			r.set(func(r *replica) { r.state, r.lastErr, r.inflight = StateNeedsRebuild, err, 0 })
			r.releaseHold()
			return
		}
		glog.V(1).Infof("replication: %s: member %s: %v", r.p.o.Name, r.m.ServerID, err)
		r.set(func(r *replica) { r.state, r.lastErr, r.inflight = StateConnecting, err, 0 })
		if shipped {
			backoff = 20 * time.Millisecond
		}
		t := time.NewTimer(backoff)
		select {
		case <-r.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if backoff *= 2; backoff > time.Second {
			backoff = time.Second
		}
	}
}

// onProgress takes a replica's report from its connection.
func (r *replica) onProgress(cn *Conn) {
	pr := cn.Progress()
	p := r.p
	p.mu.Lock()
	if r.accepted != cn {
		// Not (or no longer) the session's accepted connection: its
		// hello position was refused, or it is being torn down.
		p.mu.Unlock()
		if cn.Err() != nil {
			r.kick()
		}
		return
	}
	moved := false
	if pr.Applied > r.applied {
		r.applied = pr.Applied
	}
	var advance *blockvol.Hold
	if pr.Durable > r.durable {
		r.durable = pr.Durable
		moved = true
		advance = r.acceptedHold
	}
	r.lastAck = pr.LastHeard
	if moved {
		if r.durable >= r.barrierWant.Load() {
			r.stuckSince = time.Time{}
		} else {
			r.stuckSince = time.Now()
		}
		p.broadcastLocked()
	}
	// A plain ack needs no cursor pass (it settles its in-flight queue
	// when it ships or waits for room; the hold advanced above); an
	// answered barrier lets it send the next one, which only matters
	// while a flush wants more than is durable; a failure ends its
	// session.
	answered := pr.Barrier > r.barrierAck
	if answered {
		r.barrierAck = pr.Barrier
	}
	wanted := r.barrierWant.Load() > r.durable
	p.mu.Unlock()
	if advance != nil {
		advance.Advance(pr.Durable + 1) // a revoked hold ends the session (its watch)
	}
	if ((moved || answered) && wanted) || cn.Err() != nil {
		r.kick()
	}
}

type sentRec struct {
	lsn  uint64
	size int64
}

// session runs one connection: hello, hold, then the cursor loop. It
// reports whether anything was shipped.
func (r *replica) session() (bool, error) {
	p := r.p
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	if err := p.canShip(r.epoch); err != nil {
		return false, r.waitShippable(ctx, err)
	}
	cn, err := Dial(ctx, r.m.Addr, p.o.Name, r.epoch, DialOptions{
		Dialer:       p.o.Dialer,
		HelloTimeout: p.o.MemberTimeout,
		OnChange:     r.onProgress,
	})
	if err != nil {
		var re *RemoteError
		if errors.As(err, &re) && re.Code == codeApply {
			return false, fmt.Errorf("%w: %v", errNeedsRebuild, err)
		}
		return false, err
	}
	defer cn.Close()
	stop := context.AfterFunc(ctx, cn.abort)
	defer stop()
	st := p.vol.Status()
	rd := cn.ReplicaDurable()
	if rd > st.Head {
		return false, fmt.Errorf("%w: replica durable %d is ahead of primary head %d", errNeedsRebuild, rd, st.Head)
	}
	// A replica only ever receives records this volume appended first, so
	// a head beyond ours means records we never had (or lost in a crash:
	// uncommitted, so a rebuild is safe). Shipping our own records at
	// those LSNs would be taken as duplicates or conflicts: diverged.
	if rh := cn.ReplicaHead(); rh > st.Head {
		return false, fmt.Errorf("%w: replica head %d is ahead of primary head %d", errNeedsRebuild, rh, st.Head)
	}
	if err := p.checkHead(r.m.ServerID, cn); err != nil {
		return false, err
	}
	from := rd + 1
	if from < st.Tail {
		return false, fmt.Errorf("%w: replica's next lsn %d is below the WAL tail %d", errNeedsRebuild, from, st.Tail)
	}
	hold, err := r.holdFrom(from)
	if err != nil {
		return false, err
	}
	var watch sync.WaitGroup
	watch.Add(1)
	go func() {
		defer watch.Done()
		select {
		case <-hold.Revoked():
			cancel()
		case <-ctx.Done():
		}
	}()
	defer func() { cancel(); watch.Wait() }()
	defer r.set(func(r *replica) {
		if r.accepted == cn {
			r.accepted, r.acceptedHold = nil, nil
		}
	})
	r.set(func(r *replica) {
		r.accepted, r.acceptedHold = cn, hold
		r.state, r.lastErr = StateCatchingUp, nil
		r.applied, r.durable = cn.ReplicaHead(), rd
		r.lastAck = time.Now()
		r.shipped, r.inflight = rd, 0
		r.barrierAck = 0
	})
	lc := &liveConn{cn: cn}
	lc.shipped.Store(rd)

	// passMu is held for a cursor pass and guards the cursor state
	// below: passes are made by this goroutine, or by a flush that
	// finds it idle (help), so the flush need not wait for it to wake.
	var passMu sync.Mutex
	helping := false  // a flush's pass: never wait for in-flight room
	var helpErr error // a flush's pass failed: the session ends with it
	helpClosed := false
	defer func() {
		passMu.Lock()
		helpClosed = true
		passMu.Unlock()
	}()
	next := from
	var queue []sentRec // shipped, not yet acknowledged, in LSN order
	var inflight int64
	var sinceBarrier int64 // bytes shipped since the last barrier
	shipped := false
	ended := func(err error) (bool, error) {
		if herr := hold.Err(); herr != nil {
			return shipped, fmt.Errorf("%w: %v", errNeedsRebuild, herr)
		}
		if errors.Is(err, blockvol.ErrNotRetained) {
			return shipped, fmt.Errorf("%w: %v", errNeedsRebuild, err)
		}
		var re *RemoteError
		if errors.As(err, &re) && re.Code == codeApply {
			return shipped, fmt.Errorf("%w: %v", errNeedsRebuild, err)
		}
		if cerr := cn.Err(); cerr != nil && !errors.Is(cerr, ErrConnClosed) {
			return shipped, cerr
		}
		return shipped, err
	}
	// settle drops acknowledged records from the in-flight queue and
	// advances the hold to the replica's durable point.
	settle := func() {
		pr := cn.Progress()
		i := 0
		for i < len(queue) && queue[i].lsn <= pr.Applied {
			inflight -= queue[i].size
			i++
		}
		queue = queue[i:]
		if pr.Durable+1 > hold.LSN() {
			hold.Advance(pr.Durable + 1)
		}
		r.set(func(r *replica) { r.inflight = inflight; r.shipped = next - 1 })
	}
	// barrier sends one barrier when a flush wants one (or, idle, to
	// learn the replica's durable point), one at a time.
	barrier := func(idle bool) error {
		pr := cn.Progress()
		if lc.barrierSent.Load() > pr.Barrier || next-1 <= pr.Durable {
			return nil
		}
		want := r.barrierWant.Load()
		if (want > pr.Durable && next-1 >= want) || idle {
			if lc.sendBarrier(next-1, false) {
				sinceBarrier = 0
			}
			return cn.Err()
		}
		return nil
	}
	send := func(rec blockvol.Record) error {
		size := int64(frameHeaderSize + recordFixed + len(rec.Data))
		if helping && inflight+size > helpInFlightBytes && len(queue) > 0 {
			return errHelpStop
		}
		if inflight+size > p.o.MaxInFlightBytes && len(queue) > 0 {
			r.set(func(r *replica) { r.state = StateLagging })
			if err := cn.Flush(); err != nil {
				return err
			}
			for inflight+size > p.o.MaxInFlightBytes && len(queue) > 0 {
				oldest := queue[0].lsn
				if err := cn.Wait(ctx, func(pr Progress) bool { return pr.Applied >= oldest }); err != nil {
					return err
				}
				settle()
			}
			r.set(func(r *replica) { r.state = StateCatchingUp })
		}
		if err := cn.Send(rec); err != nil {
			return err
		}
		lc.shipped.Store(rec.LSN)
		shipped = true
		queue = append(queue, sentRec{rec.LSN, size})
		inflight += size
		sinceBarrier += size
		next = rec.LSN + 1
		if len(queue)%32 == 0 {
			settle()
		}
		// Keep the replica's durable point (and so the hold) moving even
		// when no flush asks for it.
		return barrier(sinceBarrier > p.o.HoldBudget/4)
	}
	// pass ships every record written so far, then the barrier a flush
	// wants, in one socket write (the replica reads them together: one
	// wake-up, and the records it applies then need no ack of their own).
	// Called with passMu held.
	pass := func() error {
		if err := p.canShip(r.epoch); err != nil {
			return err
		}
		if err := hold.Scan(next, send); err != nil {
			return err
		}
		settle()
		if err := barrier(false); err != nil {
			return err
		}
		return cn.Flush()
	}
	// help is a pass made by a flush (RequestBarrier) while the cursor is
	// not in one. It never waits: it stops at helpInFlightBytes
	// unacknowledged, and its socket writes have a deadline (a replica
	// that cannot take that much in helpWriteTimeout fails the
	// connection, as a cut would).
	lc.help = func() bool {
		if !passMu.TryLock() {
			return false
		}
		defer passMu.Unlock()
		if helpClosed || helpErr != nil || inflight > helpInFlightBytes {
			return false
		}
		helping = true
		cn.c.SetWriteDeadline(time.Now().Add(helpWriteTimeout))
		err := pass()
		cn.c.SetWriteDeadline(time.Time{})
		helping = false
		if err != nil && !errors.Is(err, errHelpStop) {
			helpErr = err
			r.kick()
		}
		return err == nil
	}
	r.live.Store(lc)
	defer r.live.CompareAndSwap(lc, nil)

	tick := time.NewTicker(idleTick)
	defer tick.Stop()
	linger := time.NewTimer(shipLinger)
	linger.Stop()
	defer linger.Stop()
	for {
		if err := ctx.Err(); err != nil {
			return ended(err)
		}
		passMu.Lock()
		r.pending.Store(0)
		err := helpErr
		if err == nil {
			err = pass()
		}
		passMu.Unlock()
		if err != nil {
			return ended(err)
		}
		r.set(func(r *replica) {
			if r.state == StateCatchingUp || r.state == StateLagging {
				r.state = StateInSync
			}
		})
		select {
		case <-ctx.Done():
		case <-r.wake:
			r.linger(ctx, linger)
		case <-tick.C:
			passMu.Lock()
			settle()
			err := barrier(true)
			passMu.Unlock()
			if err != nil {
				return ended(err)
			}
		}
	}
}

// linger, after a wake-up, waits up to shipLinger for more appends
// unless a batch has gathered or a flush wants a barrier (RequestBarrier
// ships what it needs itself when it can, but when it cannot it counts on
// the cursor). It returns at once on a wake-up meanwhile: Notify sends one
// only for a full batch.
func (r *replica) linger(ctx context.Context, t *time.Timer) {
	if r.pending.Load() >= shipBatchBytes || r.barrierWant.Load() > r.lastShipped() {
		return
	}
	r.lingering.Store(true)
	defer r.lingering.Store(false)
	// A write between the check and the flag saw no lingering and kicked.
	select {
	case <-r.wake:
		return
	default:
	}
	t.Reset(shipLinger)
	select {
	case <-ctx.Done():
	case <-r.wake:
	case <-t.C:
	}
	t.Stop() // since Go 1.23 no stale tick is left in t.C
}

// lastShipped is the highest LSN on the live connection (0 without one).
func (r *replica) lastShipped() uint64 {
	if lc := r.live.Load(); lc != nil {
		return lc.shipped.Load()
	}
	return 0
}

// waitShippable waits a little while the primary may not ship, so the
// reconnect loop does not spin.
func (r *replica) waitShippable(ctx context.Context, why error) error {
	t := time.NewTimer(idleTick)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	return why
}

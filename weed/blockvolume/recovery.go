package blockvolume

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/golang/glog"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/engine"
	"github.com/weedblock/weedblock/executor"
	"github.com/weedblock/weedblock/v2bridge"
	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// Retry pacing of a recovery whose attempt was aborted or failed before it
// ran (the replica unreachable, at another epoch, ...).
const (
	recoveryRetryMin = 200 * time.Millisecond
	recoveryRetryMax = 10 * time.Second
	// recoveryEvents: recovery-log events kept per attempt.
	recoveryEvents = 64
	// Executor batches: records per catch-up batch (the copy fsyncs once
	// per batch) and base bytes per rebuild batch.
	recoveryBatchRecords = 4096
	recoveryBatchBytes   = 16 << 20
)

// Phases reported in blockpb.RecoveryProgress.phase.
const (
	phasePlan     = "plan"
	phaseCatchUp  = "catch-up"
	phaseTruncate = "truncate"
	phaseRebuild  = "rebuild"
	phaseFollow   = "follow" // in sync: handed to the live stream
	phaseDone     = "done"
	phaseFailed   = "failed" // between attempts (waiting to retry)
)

// recovery brings one non-member copy (a catch-up target) of a volume this
// server is the confirmed primary of back to the committed point through
// the engine, the executor and v2bridge, then hands it to the live stream
// (the async catch-up Primary of applyCatchUpsLocked). It owns one
// goroutine (Manager.wg), stopped by stop; the Manager's opMu-holding code
// creates, restarts and stops it, the goroutine itself never takes opMu.
type recovery struct {
	m  *Manager
	v  *volume
	id engine.ReplicaID
	// epoch and addr are the target's; a change makes a new recovery.
	epoch uint64
	addr  string
	// takeover: this server took over as primary in this process at
	// takeoverHead and had not shipped to the copy when the recovery
	// started: a copy holding records beyond it has diverged.
	takeover     bool
	takeoverHead uint64

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	wake   chan struct{} // plan again now (repair, escalation)
	// missing counts heartbeat answers in a row without this target
	// (Manager.opMu).
	missing int

	mu sync.Mutex
	// forced: the master asks for a rebuild (CatchUpTarget.rebuild);
	// escalate: the last attempt or the live stream needs one.
	forced, escalate bool
	repairSeq        uint64
	inSync           bool   // the last attempt ended in sync: follow the live stream
	achieved         uint64 // of the last in-sync attempt
	handoff          *blockvol.Hold
	prog             recoveryProgress
}

// recoveryProgress is what reports show of a recovery.
type recoveryProgress struct {
	phase            string
	plan             string
	kind             string // plan kind of the live (or last) attempt
	from, target     uint64
	achieved         uint64
	attempt          uint64
	started          time.Time // of the live (or last) attempt
	bytes            int64
	base             int64 // base size of a rebuild (0: none)
	lastOutcome      string
	rebuilds, catchs uint64
	running          bool
}

// newRecovery starts the recovery of target id (replication address addr)
// of v at epoch; the caller holds opMu.
func (m *Manager) newRecoveryLocked(v *volume, t *blockpb.CatchUpTarget, epoch uint64) *recovery {
	id := t.GetServer().GetServerId()
	ctx, cancel := context.WithCancel(m.ctx)
	rc := &recovery{
		m: m, v: v,
		id:    engine.ReplicaID{Volume: v.name, Server: id},
		epoch: epoch, addr: t.GetServer().GetReplAddress(),
		ctx: ctx, cancel: cancel,
		done: make(chan struct{}), wake: make(chan struct{}, 1),
		forced: t.GetRebuild(), repairSeq: t.GetRepairSeq(),
	}
	if v.takeover && !v.shipped[id] {
		rc.takeover, rc.takeoverHead = true, v.takeoverHead
	}
	if last := v.lastRecovery(id); last != nil {
		rc.prog.rebuilds, rc.prog.catchs = last.rebuilds, last.catchs
	}
	rc.prog.phase = phasePlan
	m.wg.Add(1)
	go rc.run()
	glog.Infof("blockvolume: %s: recovering %s at epoch %d via %s (forced rebuild %v)", v.name, id, epoch, rc.addr, rc.forced)
	return rc
}

// stop ends the recovery: the live attempt is cancelled (its pins and slot
// are released by the executor) and the goroutine exits soon; it does not
// wait (the caller may hold opMu; Close waits through Manager.wg).
func (rc *recovery) stop(why string) {
	rc.cancel()
	rc.m.slots.Cancel(rc.id, why)
	rc.releaseHandoff()
}

// repair restarts the recovery (a new repair_seq): the live attempt is
// cancelled and a new plan made at once, a rebuild when forced.
func (rc *recovery) repair(seq uint64, forced bool) {
	rc.mu.Lock()
	rc.repairSeq, rc.forced, rc.escalate, rc.inSync = seq, forced, false, false
	rc.mu.Unlock()
	rc.m.slots.Cancel(rc.id, fmt.Sprintf("repair %d requested", seq))
	rc.kick()
}

// needsRebuild is called when the live stream found the copy cannot be
// followed (behind the WAL, diverged): the next plan is a rebuild.
func (rc *recovery) needsRebuild(why string) {
	rc.mu.Lock()
	rc.escalate, rc.inSync = true, false
	rc.prog.lastOutcome = "needs-rebuild: " + why
	rc.mu.Unlock()
	rc.kick()
}

func (rc *recovery) kick() {
	select {
	case rc.wake <- struct{}{}:
	default:
	}
}

// following reports whether the last attempt ended in sync, so the copy
// is to follow the live stream.
func (rc *recovery) following() bool {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.inSync
}

// seq is the repair_seq the recovery was last (re)started for.
func (rc *recovery) seq() uint64 {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.repairSeq
}

func (rc *recovery) setForced(forced bool) {
	rc.mu.Lock()
	rc.forced = forced
	rc.mu.Unlock()
}

// releaseHandoff drops the WAL hold that keeps the records after the
// achieved LSN for the live stream (it took its own hold).
func (rc *recovery) releaseHandoff() {
	rc.mu.Lock()
	h := rc.handoff
	rc.handoff = nil
	rc.mu.Unlock()
	if h != nil {
		h.Release()
	}
}

// holdFrom moves the handoff hold to lsn (records lsn.. stay readable so
// the live stream can start at the copy's durable+1 after the attempt
// released its own pins). Failures only mean the live stream may find the
// records gone and ask for a rebuild.
func (rc *recovery) holdFrom(lsn uint64) {
	rc.mu.Lock()
	old := rc.handoff
	rc.mu.Unlock()
	if old != nil && old.LSN() >= lsn {
		return
	}
	st := rc.v.vol.Status()
	h, err := rc.v.vol.Hold(lsn, st.WALSize/2)
	if err != nil {
		glog.V(1).Infof("blockvolume: %s: hold the WAL from %d for %s: %v", rc.v.name, lsn, rc.id.Server, err)
		return
	}
	rc.mu.Lock()
	old = rc.handoff
	rc.handoff = h
	rc.mu.Unlock()
	if old != nil {
		old.Release()
	}
	if rc.ctx.Err() != nil {
		rc.releaseHandoff()
	}
}

// run plans and executes attempts until the recovery is stopped.
func (rc *recovery) run() {
	defer rc.m.wg.Done()
	defer close(rc.done)
	defer rc.releaseHandoff()
	backoff := recoveryRetryMin
	lastErr := ""
	rebuildsInRow := 0
	for rc.ctx.Err() == nil {
		out, err := rc.attempt()
		if rc.ctx.Err() != nil {
			break
		}
		var wait time.Duration
		switch {
		case err != nil:
			rc.mu.Lock()
			rc.prog.phase, rc.prog.lastOutcome, rc.prog.running = phaseFailed, "aborted: "+err.Error(), false
			rc.mu.Unlock()
			if msg := err.Error(); msg != lastErr {
				lastErr = msg
				glog.Warningf("blockvolume: %s: recovery of %s: %v (retrying)", rc.v.name, rc.id.Server, err)
			} else {
				glog.V(1).Infof("blockvolume: %s: recovery of %s: %v", rc.v.name, rc.id.Server, err)
			}
			wait, backoff = backoff, min(2*backoff, recoveryRetryMax)
		case out.Kind == engine.OutcomeInSync:
			backoff, lastErr, rebuildsInRow = recoveryRetryMin, "", 0
			// Follow the live stream until told to plan again.
			select {
			case <-rc.ctx.Done():
			case <-rc.wake:
			}
			continue
		case out.Kind == engine.OutcomeNeedsRebuild:
			rc.mu.Lock()
			rc.escalate = true
			rc.mu.Unlock()
			// At once, unless rebuilds themselves keep escalating.
			if rebuildsInRow++; rebuildsInRow > 1 {
				wait, backoff = backoff, min(2*backoff, recoveryRetryMax)
			}
		default: // aborted
			if out.Reason != lastErr {
				lastErr = out.Reason
				glog.Warningf("blockvolume: %s: recovery of %s aborted: %s (retrying)", rc.v.name, rc.id.Server, out.Reason)
			}
			wait, backoff = backoff, min(2*backoff, recoveryRetryMax)
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-rc.ctx.Done():
			case <-rc.wake:
			case <-t.C:
			}
			t.Stop()
		}
	}
	rc.mu.Lock()
	if rc.prog.phase != phaseFollow {
		rc.prog.phase = phaseDone
	}
	rc.prog.running = false
	rc.mu.Unlock()
}

// committed is the primary's committed LSN (the catch-up frontier).
func (v *volume) committed() uint64 {
	if p := v.primary(); p != nil {
		return p.Committed()
	}
	return v.vol.Status().Durable
}

// attempt runs one plan to its outcome. An error means no attempt ran
// (nothing to count); the slot is released either way.
func (rc *recovery) attempt() (engine.Outcome, error) {
	m, v := rc.m, rc.v
	rc.releaseHandoff()
	rc.mu.Lock()
	rc.inSync = false
	rc.prog.phase, rc.prog.running = phasePlan, true
	rc.mu.Unlock()
	tok, err := m.slots.Acquire(rc.id, rc.epoch, rc.addr)
	if err != nil {
		return engine.Outcome{}, err
	}
	released := false
	defer func() {
		if !released {
			m.slots.Release(tok)
		}
	}()
	if err := rc.ctx.Err(); err != nil {
		return engine.Outcome{}, err // stopped while acquiring
	}
	st := v.vol.Status()
	if st.Epoch != rc.epoch {
		return engine.Outcome{}, fmt.Errorf("primary at epoch %d, recovery of epoch %d", st.Epoch, rc.epoch)
	}
	peer := v2bridge.NewPeer(m.slots, v.vol, v2bridge.PeerOptions{
		// No byte budget on the attempt's WAL holds: a rebuild under
		// writes converges if the WAL can hold what is written while the
		// base is sent; the holds are still revoked (the attempt then
		// escalates) before they would stall writers on a full WAL.
		Name: v.name, Addr: rc.addr, HoldBudget: 0, Committed: v.committed,
	})
	defer peer.Close()
	// A first hello checks that the copy answers at this epoch before
	// anything is read or held here.
	if _, err := peer.Report(rc.ctx, tok); err != nil {
		return engine.Outcome{}, err
	}
	// The view holds the WAL from its tail; its terms are the primary's
	// own durable term history (blockvol keeps it across checkpoints and
	// restarts), and the report carries the copy's: the planner matches
	// them exactly, so a copy holding records of an epoch the primary
	// does not have at those LSNs (a deposed primary's last writes) is
	// truncated or rebuilt, never kept — also after this server restarted
	// and lost the takeover state below.
	view, err := peer.View(tok, nil)
	if err != nil {
		return engine.Outcome{}, err
	}
	rep, err := peer.Report(rc.ctx, tok)
	if err != nil {
		return engine.Outcome{}, err
	}
	rc.mu.Lock()
	forced, escalate := rc.forced, rc.escalate
	rc.mu.Unlock()
	prior := engine.Unknown
	why := ""
	switch {
	case forced:
		prior, why = engine.NeedsRebuild, "operator asked for a rebuild"
	case escalate:
		prior, why = engine.NeedsRebuild, "an earlier attempt or the live stream escalated"
	case rc.takeover && rep.Durable > rc.takeoverHead:
		// Records beyond the head this primary took over with, on a copy
		// it never shipped to: an old primary's last writes. Never kept
		// (a second guard beside the term histories).
		prior = engine.NeedsRebuild
		why = fmt.Sprintf("holds records up to lsn %d, beyond %d where this primary took over: diverged", rep.Durable, rc.takeoverHead)
	}
	plan, err := engine.PlanRecovery(view, rep, prior)
	if err != nil {
		return engine.Outcome{}, fmt.Errorf("plan for %s (report %+v): %w", rc.id.Server, rep, err)
	}
	if why != "" && prior == engine.NeedsRebuild {
		plan.Reason = why + "; " + plan.Reason
	}
	kind := plan.Kind.String()
	rc.mu.Lock()
	rc.prog = recoveryProgress{
		phase: phaseOf(plan.Kind), plan: plan.String(), kind: kind,
		from: plan.From, target: plan.Target, achieved: plan.From, attempt: tok.Attempt,
		started: time.Now(), running: true,
		rebuilds: rc.prog.rebuilds, catchs: rc.prog.catchs,
	}
	if plan.Kind == engine.Rebuild {
		rc.prog.base, rc.prog.achieved = st.Size, 0
	}
	rc.mu.Unlock()
	glog.Infof("blockvolume: %s: recovery of %s attempt %d: %s", v.name, rc.id.Server, tok.Attempt, plan)
	if plan.Kind != engine.Rebuild {
		rc.holdFrom(plan.From + 1)
	}
	mt := m.metrics
	mt.recStarted.WithLabelValues(kind).Inc()
	mt.recActive.Inc()
	start := time.Now()
	log := engine.NewLog(recoveryEvents, time.Now, rc.onEvent)
	// Large batches: a catch-up batch costs the copy one fsync, a base
	// batch one round of pipelined chunks; cancel and budgets are still
	// checked every few MiB.
	cfg := executor.Config{Log: log, OnStep: rc.onStep,
		BatchRecords: recoveryBatchRecords, BatchBytes: recoveryBatchBytes}
	if m.stepHook.Load() != nil {
		// Tests that step through a recovery see the executor's small
		// default batches (many steps on a small volume).
		cfg.BatchRecords, cfg.BatchBytes = 0, 0
	}
	exec := executor.New(m.slots, cfg)
	released = true // Run owns the token
	out := exec.Run(rc.ctx, tok, plan, peer.IO())
	mt.recActive.Dec()
	mt.recFinished.WithLabelValues(kind, out.Kind.String()).Inc()
	mt.recDuration.WithLabelValues(kind).Observe(time.Since(start).Seconds())
	rc.mu.Lock()
	rc.prog.running = false
	rc.prog.achieved = max(rc.prog.achieved, out.Achieved)
	switch out.Kind {
	case engine.OutcomeInSync:
		rc.prog.lastOutcome = out.Kind.String()
		rc.prog.phase = phaseFollow
		rc.inSync, rc.achieved, rc.escalate = true, out.Achieved, false
		if plan.Kind == engine.Rebuild {
			rc.prog.rebuilds++
		} else {
			rc.prog.catchs++
		}
	default:
		rc.prog.lastOutcome = out.Kind.String() + ": " + out.Reason
		rc.prog.phase = phaseFailed
	}
	rc.mu.Unlock()
	if out.Kind == engine.OutcomeInSync {
		rc.holdFrom(out.Achieved + 1)
		glog.Infof("blockvolume: %s: %s in sync at lsn %d after %s (%v); following the live stream", v.name, rc.id.Server, out.Achieved, kind, time.Since(start).Round(time.Millisecond))
	}
	return out, nil
}

func phaseOf(k engine.Kind) string {
	switch k {
	case engine.CatchUp:
		return phaseCatchUp
	case engine.Truncate:
		return phaseTruncate
	case engine.Rebuild:
		return phaseRebuild
	}
	return phaseFollow
}

// onStep sees each batch before it runs: the phase, and the handoff hold
// follows the achieved LSN.
func (rc *recovery) onStep(s executor.Step) error {
	rc.mu.Lock()
	switch s.Phase {
	case executor.PhaseCatchUp:
		if rc.prog.kind != engine.Rebuild.String() {
			rc.prog.phase = phaseCatchUp
		}
	case executor.PhaseTruncate:
		rc.prog.phase = phaseTruncate
	default:
		rc.prog.phase = phaseRebuild
	}
	rc.prog.target = max(rc.prog.target, s.Goal)
	rc.mu.Unlock()
	if h := rc.m.stepHook.Load(); h != nil {
		if err := (*h)(rc.ctx, s); err != nil {
			return err
		}
	}
	if s.Achieved > 0 && s.Phase != executor.PhaseTransfer {
		rc.holdFrom(s.Achieved + 1)
	}
	return nil
}

// onEvent sees every recovery-log event of the attempt (the executor's
// goroutine): progress, bytes, and the log.
func (rc *recovery) onEvent(e engine.Event) {
	rc.mu.Lock()
	kind := rc.prog.kind
	var delta int64
	if e.Bytes > rc.prog.bytes {
		delta = e.Bytes - rc.prog.bytes
		rc.prog.bytes = e.Bytes
	}
	if e.Kind == engine.EventStep && e.LSN > 0 {
		rc.prog.achieved = max(rc.prog.achieved, e.LSN)
	}
	rc.mu.Unlock()
	if delta > 0 {
		rc.m.metrics.recBytes.WithLabelValues(kind).Add(float64(delta))
	}
	switch e.Kind {
	case engine.EventEscalated:
		glog.Warningf("blockvolume: %s: recovery of %s attempt %d escalates to a rebuild: %s", rc.v.name, rc.id.Server, e.Attempt, e.Detail)
	case engine.EventDone:
		glog.Infof("blockvolume: %s: recovery of %s attempt %d: %s (%d bytes)", rc.v.name, rc.id.Server, e.Attempt, e.Detail, e.Bytes)
	default:
		if glog.V(2) {
			glog.Infof("blockvolume: %s: recovery of %s attempt %d: %s lsn %d bytes %d %s", rc.v.name, rc.id.Server, e.Attempt, e.Kind, e.LSN, e.Bytes, e.Detail)
		}
	}
}

// progress is rc as a report entry.
func (rc *recovery) progress() *blockpb.RecoveryProgress {
	rc.mu.Lock()
	p := rc.prog
	forced := rc.forced
	rc.mu.Unlock()
	return p.report(rc.id.Server, forced)
}

func (p recoveryProgress) report(server string, forced bool) *blockpb.RecoveryProgress {
	r := &blockpb.RecoveryProgress{
		Phase:         p.phase,
		ServerId:      server,
		Plan:          p.plan,
		TargetLsn:     p.target,
		AchievedLsn:   p.achieved,
		Attempt:       p.attempt,
		LastOutcome:   p.lastOutcome,
		ForcedRebuild: forced,
		Rebuilds:      p.rebuilds,
		CatchUps:      p.catchs,
		BytesDone:     uint64(max(p.bytes, 0)),
	}
	if !p.started.IsZero() {
		r.StartedUnixMs = p.started.UnixMilli()
	}
	// The total: a rebuild moves the base and then a WAL tail; a catch-up
	// is estimated from the share of the LSN range done.
	switch {
	case p.base > 0:
		r.BytesTotal = uint64(max(p.base, p.bytes))
	case p.achieved > p.from && p.target > p.from && p.bytes > 0:
		r.BytesTotal = uint64(float64(p.bytes) * float64(p.target-p.from) / float64(p.achieved-p.from))
		r.BytesTotal = max(r.BytesTotal, r.BytesDone)
	}
	if p.running && r.BytesTotal > r.BytesDone && p.bytes > 0 {
		if el := time.Since(p.started); el > 0 {
			rate := float64(p.bytes) / el.Seconds()
			r.EtaMs = int64(float64(r.BytesTotal-r.BytesDone) / rate * 1000)
		}
	}
	return r
}

// lastRecovery is the finished recovery kept for id (nil: none).
func (v *volume) lastRecovery(id string) *recoveryProgress {
	v.replMu.Lock()
	defer v.replMu.Unlock()
	if p, ok := v.recLast[id]; ok {
		return &p
	}
	return nil
}

// stopRecoveriesLocked stops v's recoveries not at epoch keep (0: all),
// keeping their last state for reports. The caller holds opMu.
func (m *Manager) stopRecoveriesLocked(v *volume, keep uint64, why string) {
	v.replMu.Lock()
	var stop []*recovery
	for id, rc := range v.recs {
		if keep == 0 || rc.epoch != keep {
			stop = append(stop, rc)
			delete(v.recs, id)
		}
	}
	v.replMu.Unlock()
	for _, rc := range stop {
		m.retireRecovery(v, rc, why)
	}
}

// retireRecovery stops rc and keeps its last state for reports.
func (m *Manager) retireRecovery(v *volume, rc *recovery, why string) {
	rc.stop(why)
	rc.mu.Lock()
	p := rc.prog
	rc.mu.Unlock()
	p.running, p.phase = false, phaseDone
	v.replMu.Lock()
	if v.recLast == nil {
		v.recLast = map[string]recoveryProgress{}
	}
	v.recLast[rc.id.Server] = p
	v.replMu.Unlock()
}

// recoveryReports lists v's live recoveries, then finished ones of other
// copies.
func (v *volume) recoveryReports() []*blockpb.RecoveryProgress {
	v.replMu.Lock()
	live := make([]*recovery, 0, len(v.recs))
	for _, rc := range v.recs {
		live = append(live, rc)
	}
	var last []*blockpb.RecoveryProgress
	for id, p := range v.recLast {
		if v.recs[id] == nil {
			last = append(last, p.report(id, false))
		}
	}
	v.replMu.Unlock()
	var out []*blockpb.RecoveryProgress
	for _, rc := range live {
		out = append(out, rc.progress())
	}
	out = append(out, last...)
	sortRecoveries(out)
	return out
}

func sortRecoveries(rs []*blockpb.RecoveryProgress) {
	sort.Slice(rs, func(i, j int) bool { return rs[i].GetServerId() < rs[j].GetServerId() })
}

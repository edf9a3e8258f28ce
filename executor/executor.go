package executor

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/weedblock/weedblock/engine"
)

// Phase names the part of an attempt a step belongs to.
type Phase string

// Phases.
const (
	PhaseTruncate Phase = "truncate"
	PhaseCatchUp  Phase = "catch-up"
	PhaseTransfer Phase = "transfer" // base image
	PhaseReplay   Phase = "replay"   // WAL after the base
	PhaseCommit   Phase = "commit"
)

// Step is what OnStep sees before each side effect of an attempt.
type Step struct {
	Phase    Phase
	Batch    int    // batches started so far in this attempt, from 1
	Achieved uint64 // LSN reached so far
	Goal     uint64 // LSN this phase is heading for
	Bytes    int64  // bytes moved so far
}

// Config tunes an Executor. Zero values take the defaults noted.
type Config struct {
	BatchRecords uint64        // WAL records per batch (default 64)
	BatchBytes   int64         // base bytes per batch (default 1 MiB)
	MaxDuration  time.Duration // time budget of an attempt (0: none)
	MaxBytes     int64         // byte budget of an attempt (0: none)
	StallBatches int           // batches without progress before aborting (default 3)
	ChaseBatches int           // progressing batches without the gap shrinking before escalating (default 8)
	// Chase makes a catch-up follow the primary's moving committed LSN
	// (CatchUpIO.Frontier) until within HandoffLag of it, instead of
	// stopping at the plan's target.
	Chase      bool
	HandoffLag uint64
	Now        func() time.Time // clock for the time budget (default time.Now)
	OnStep     func(Step) error // fault-injection hook; an error aborts the attempt
	Log        *engine.Log      // recovery log (nil: none)
}

// Executor runs plans. It holds no per-attempt state; Run may be called
// concurrently for different replicas.
type Executor struct {
	slots *engine.Slots
	cfg   Config
}

// New returns an executor whose tokens are checked against slots.
func New(slots *engine.Slots, cfg Config) *Executor {
	if cfg.BatchRecords == 0 {
		cfg.BatchRecords = 64
	}
	if cfg.BatchBytes <= 0 {
		cfg.BatchBytes = 1 << 20
	}
	if cfg.StallBatches <= 0 {
		cfg.StallBatches = 3
	}
	if cfg.ChaseBatches <= 0 {
		cfg.ChaseBatches = 8
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Executor{slots: slots, cfg: cfg}
}

type heldPin struct {
	what     string
	lsn      uint64
	pin      Pin
	released bool
}

type run struct {
	cfg      Config
	slots    *engine.Slots
	tok      engine.Token
	plan     engine.Plan
	ctx      context.Context
	start    time.Time
	bytes    int64
	batch    int
	achieved uint64
	pins     []heldPin
	walPin   WALPin
	walAfter uint64
}

// Run executes plan under tok and returns its outcome. It owns tok: the
// slot is released (exactly once) before Run returns, after every pin.
// Cancelling ctx or tok (epoch bump, endpoint change) aborts the attempt
// at the next batch boundary, and any I/O in flight sees a done context.
func (e *Executor) Run(ctx context.Context, tok engine.Token, plan engine.Plan, io IO) (out engine.Outcome) {
	ctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(tok.Context(), func() { cancel(context.Cause(tok.Context())) })
	r := &run{cfg: e.cfg, slots: e.slots, tok: tok, plan: plan, ctx: ctx, start: e.cfg.Now(), achieved: plan.From}
	if plan.Kind == engine.Rebuild {
		r.achieved = 0 // a replica being rebuilt holds nothing trusted
	}
	r.record(engine.EventPlanned, plan.From, plan.String())
	defer func() {
		if out.Kind == engine.OutcomeNeedsRebuild {
			r.record(engine.EventEscalated, out.Achieved, out.Reason)
		}
		r.releasePins()
		stop()
		cancel(nil)
		detail := "slot released"
		if err := e.slots.Release(tok); err != nil {
			detail = fmt.Sprintf("slot release: %v", err)
		}
		r.record(engine.EventReleased, out.Achieved, detail)
		r.record(engine.EventDone, out.Achieved, out.String())
	}()
	if plan.Epoch != tok.Epoch {
		return *r.aborted(fmt.Sprintf("plan of epoch %d run under token of epoch %d", plan.Epoch, tok.Epoch))
	}
	if o := r.gate(); o != nil {
		return *o
	}
	switch plan.Kind {
	case engine.ZeroGap:
		return engine.InSyncAt(plan.From)
	case engine.CatchUp:
		return r.catchUp(io.CatchUp)
	case engine.Truncate:
		return r.truncate(io)
	case engine.Rebuild:
		return r.rebuild(io.Rebuild)
	}
	return *r.aborted(fmt.Sprintf("unknown plan kind %v", plan.Kind))
}

func (r *run) record(kind engine.EventKind, lsn uint64, detail string) {
	r.cfg.Log.Record(engine.Event{Replica: r.tok.Replica, Epoch: r.tok.Epoch, Attempt: r.tok.Attempt,
		Kind: kind, LSN: lsn, Bytes: r.bytes, Detail: detail})
}

func (r *run) hold(what string, lsn uint64, p Pin) {
	r.pins = append(r.pins, heldPin{what: what, lsn: lsn, pin: p})
	r.record(engine.EventPinned, lsn, what)
}

// releasePins releases every pin not yet released, newest first.
func (r *run) releasePins() {
	for i := len(r.pins) - 1; i >= 0; i-- {
		r.releasePin(i)
	}
	r.pins = nil
}

// releasePin releases pin i unless it already was.
func (r *run) releasePin(i int) {
	h := &r.pins[i]
	if h.released {
		return
	}
	h.released = true
	detail := h.what + " released"
	if err := h.pin.Release(); err != nil {
		detail = fmt.Sprintf("%s release: %v", h.what, err)
	}
	r.record(engine.EventReleased, h.lsn, detail)
}

func (r *run) aborted(reason string) *engine.Outcome {
	o := engine.AbortedBecause(r.achieved, reason)
	return &o
}

func (r *run) escalate(reason string) *engine.Outcome {
	o := engine.NeedsRebuildBecause(r.achieved, reason)
	return &o
}

// gate runs before every side effect: cancellation, the token, the budgets
// and the WAL hold.
func (r *run) gate() *engine.Outcome {
	if r.ctx.Err() != nil {
		return r.aborted(fmt.Sprintf("cancelled: %v", context.Cause(r.ctx)))
	}
	if err := r.slots.Check(r.tok); err != nil {
		return r.aborted(err.Error())
	}
	if d := r.cfg.MaxDuration; d > 0 {
		if spent := r.cfg.Now().Sub(r.start); spent > d {
			return r.aborted(fmt.Sprintf("time budget %v exceeded (%v spent)", d, spent))
		}
	}
	if m := r.cfg.MaxBytes; m > 0 && r.bytes >= m {
		return r.aborted(fmt.Sprintf("byte budget %d exhausted (%d moved)", m, r.bytes))
	}
	if r.walPin != nil && r.walPin.Revoked() {
		return r.escalate(fmt.Sprintf("retention lost: WAL hold (%d, ∞) revoked", r.walAfter))
	}
	return nil
}

// step calls the hook, then the gate (the hook may have cancelled).
func (r *run) step(ph Phase, goal uint64) *engine.Outcome {
	r.batch++
	if r.cfg.OnStep != nil {
		if err := r.cfg.OnStep(Step{Phase: ph, Batch: r.batch, Achieved: r.achieved, Goal: goal, Bytes: r.bytes}); err != nil {
			return r.aborted(fmt.Sprintf("%s step %d: %v", ph, r.batch, err))
		}
	}
	return r.gate()
}

// fail turns an I/O error into an outcome.
func (r *run) fail(ph Phase, err error) *engine.Outcome {
	reason := fmt.Sprintf("%s: %v", ph, err)
	switch {
	case errors.Is(err, ErrRetentionLost), errors.Is(err, ErrTruncationUnsafe),
		errors.Is(err, ErrBaseUnavailable), errors.Is(err, ErrBaseMismatch):
		return r.escalate(reason)
	case r.ctx.Err() != nil:
		return r.aborted(fmt.Sprintf("%s (cancelled: %v)", reason, context.Cause(r.ctx)))
	}
	return r.aborted(reason)
}

func (r *run) pinWAL(src WALSource, after uint64, ph Phase) *engine.Outcome {
	if o := r.gate(); o != nil {
		return o
	}
	p, err := src.PinWAL(r.tok, after)
	if err != nil {
		return r.fail(ph, fmt.Errorf("pin WAL from %d: %w", after+1, err))
	}
	r.hold(fmt.Sprintf("WAL hold (%d, ∞)", after), after, p)
	r.walPin, r.walAfter = p, after
	return nil
}

// stream ships (r.achieved, target] (or on to the frontier when chasing)
// in batches.
func (r *run) stream(ph Phase, src WALSource, frontier func() uint64, target uint64) *engine.Outcome {
	best := uint64(math.MaxUint64)
	stalled, flat := 0, 0
	for {
		goal := target
		if frontier != nil {
			goal = max(goal, frontier())
		}
		if r.achieved >= target && goal-min(goal, r.achieved) <= r.cfg.HandoffLag {
			return nil
		}
		upTo := min(goal, r.achieved+r.cfg.BatchRecords)
		if o := r.step(ph, goal); o != nil {
			return o
		}
		p, err := src.StreamWAL(r.ctx, r.tok, r.achieved, upTo)
		if err != nil {
			return r.fail(ph, fmt.Errorf("stream (%d, %d]: %w", r.achieved, upTo, err))
		}
		if p.Achieved < r.achieved || p.Achieved > upTo {
			return r.aborted(fmt.Sprintf("%s: I/O reported %d outside [%d, %d]", ph, p.Achieved, r.achieved, upTo))
		}
		r.bytes += p.Bytes
		progressed := p.Achieved > r.achieved
		r.achieved = p.Achieved
		r.record(engine.EventStep, r.achieved, fmt.Sprintf("%s batch %d to %d of %d", ph, r.batch, r.achieved, goal))
		if !progressed {
			if stalled++; stalled >= r.cfg.StallBatches {
				return r.aborted(fmt.Sprintf("%s stalled: no progress at %d for %d batches", ph, r.achieved, stalled))
			}
			continue
		}
		stalled = 0
		if gap := goal - r.achieved; gap < best {
			best, flat = gap, 0
		} else if flat++; flat >= r.cfg.ChaseBatches {
			return r.escalate(fmt.Sprintf("%s cannot converge (tail chasing): gap to the primary stayed ≥ %d for %d batches", ph, best, flat))
		}
	}
}

func (r *run) catchUp(io CatchUpIO) engine.Outcome {
	if io == nil {
		return *r.aborted("catch-up planned but no catch-up I/O")
	}
	if o := r.pinWAL(io, r.plan.From, PhaseCatchUp); o != nil {
		return *o
	}
	var frontier func() uint64
	if r.cfg.Chase {
		frontier = io.Frontier
	}
	if o := r.stream(PhaseCatchUp, io, frontier, r.plan.Target); o != nil {
		return *o
	}
	return engine.InSyncAt(r.achieved)
}

func (r *run) truncate(io IO) engine.Outcome {
	if io.Truncate == nil {
		return *r.aborted("truncation planned but no truncate I/O")
	}
	if r.plan.From != r.plan.TruncateTo {
		return *r.aborted(fmt.Sprintf("malformed plan: truncate to %d but catch-up from %d", r.plan.TruncateTo, r.plan.From))
	}
	needCatchUp := r.plan.Target > r.plan.TruncateTo || r.cfg.Chase
	if needCatchUp {
		if io.CatchUp == nil {
			return *r.aborted("truncation + catch-up planned but no catch-up I/O")
		}
		// Hold the WAL before dropping anything, so the catch-up is possible.
		if o := r.pinWAL(io.CatchUp, r.plan.From, PhaseTruncate); o != nil {
			return *o
		}
	}
	if o := r.step(PhaseTruncate, r.plan.TruncateTo); o != nil {
		return *o
	}
	if err := io.Truncate.Truncate(r.tok, r.plan.TruncateTo); err != nil {
		return *r.fail(PhaseTruncate, fmt.Errorf("truncate to %d: %w", r.plan.TruncateTo, err))
	}
	r.achieved = r.plan.TruncateTo
	r.record(engine.EventStep, r.achieved, fmt.Sprintf("truncated to %d", r.achieved))
	if !needCatchUp {
		return engine.InSyncAt(r.achieved)
	}
	var frontier func() uint64
	if r.cfg.Chase {
		frontier = io.CatchUp.Frontier
	}
	if o := r.stream(PhaseCatchUp, io.CatchUp, frontier, r.plan.Target); o != nil {
		return *o
	}
	return engine.InSyncAt(r.achieved)
}

func (r *run) rebuild(io RebuildIO) engine.Outcome {
	if io == nil {
		return *r.aborted("rebuild planned but no rebuild I/O")
	}
	p := r.plan
	if p.Source != engine.Full && p.Source != engine.Snapshot {
		return *r.aborted(fmt.Sprintf("malformed plan: rebuild source %v", p.Source))
	}
	if p.Source == engine.Snapshot && p.BaseLSN > p.Target {
		return *r.aborted(fmt.Sprintf("malformed plan: base %d beyond target %d", p.BaseLSN, p.Target))
	}
	if o := r.gate(); o != nil {
		return *o
	}
	if err := io.MarkUntrusted(r.tok); err != nil {
		return *r.fail(PhaseTransfer, fmt.Errorf("mark untrusted: %w", err))
	}
	r.record(engine.EventStep, 0, "replica marked untrusted")
	var base Base
	if p.Source == engine.Snapshot {
		// The WAL after the bound base first, then exactly that base.
		if o := r.pinWAL(io, p.BaseLSN, PhaseTransfer); o != nil {
			return *o
		}
		if o := r.pinBase(io, &base); o != nil {
			return *o
		}
		if base.Source != engine.Snapshot || base.LSN != p.BaseLSN {
			return *r.escalate(fmt.Sprintf("bound base is snapshot %d but the primary offered %s %d: refusing another base", p.BaseLSN, base.Source, base.LSN))
		}
	} else {
		// Hold the WAL from the planning-time tail, so the checkpoint the
		// base is taken at cannot fall below it; then narrow the hold to
		// the records after the base.
		if o := r.pinWAL(io, p.From, PhaseTransfer); o != nil {
			return *o
		}
		wide := len(r.pins) - 1
		if o := r.pinBase(io, &base); o != nil {
			return *o
		}
		if base.Source != engine.Full {
			return *r.escalate(fmt.Sprintf("full base planned but the primary offered %s %d: refusing another base", base.Source, base.LSN))
		}
		if base.LSN < p.From {
			return *r.escalate(fmt.Sprintf("full base at %d is below the WAL hold (%d, ∞): records after it are not retained", base.LSN, p.From))
		}
		if base.LSN > p.From {
			if o := r.pinWAL(io, base.LSN, PhaseTransfer); o != nil {
				return *o
			}
			r.releasePin(wide)
		}
	}
	stalled := 0
	for off := int64(0); off < base.Size; {
		if o := r.step(PhaseTransfer, base.LSN); o != nil {
			return *o
		}
		want := min(r.cfg.BatchBytes, base.Size-off)
		n, err := io.TransferBase(r.ctx, r.tok, base, off, want)
		if err != nil {
			return *r.fail(PhaseTransfer, fmt.Errorf("base %s %d at offset %d: %w", base.Source, base.LSN, off, err))
		}
		if n < 0 || n > want {
			return *r.aborted(fmt.Sprintf("transfer: I/O reported %d bytes at offset %d of %d", n, off, base.Size))
		}
		off += n
		r.bytes += n
		r.record(engine.EventStep, 0, fmt.Sprintf("base %d/%d bytes", off, base.Size))
		if n == 0 {
			if stalled++; stalled >= r.cfg.StallBatches {
				return *r.aborted(fmt.Sprintf("transfer stalled: no progress at offset %d for %d batches", off, stalled))
			}
		} else {
			stalled = 0
		}
	}
	if o := r.gate(); o != nil {
		return *o
	}
	if err := io.VerifyBase(r.tok, base); err != nil {
		return *r.fail(PhaseTransfer, fmt.Errorf("verify base %d: %w", base.LSN, err))
	}
	r.achieved = base.LSN
	r.record(engine.EventStep, r.achieved, fmt.Sprintf("base %s %d verified", base.Source, base.LSN))
	if o := r.stream(PhaseReplay, io, nil, max(p.Target, base.LSN)); o != nil {
		return *o
	}
	if o := r.step(PhaseCommit, r.achieved); o != nil {
		return *o
	}
	if err := io.Commit(r.tok, r.achieved); err != nil {
		return *r.fail(PhaseCommit, fmt.Errorf("commit at %d: %w", r.achieved, err))
	}
	return engine.InSyncAt(r.achieved)
}

func (r *run) pinBase(io RebuildIO, b *Base) *engine.Outcome {
	if o := r.gate(); o != nil {
		return o
	}
	got, err := io.PinBase(r.tok, r.plan.Source, r.plan.BaseLSN)
	if err != nil {
		return r.fail(PhaseTransfer, fmt.Errorf("pin base %s %d: %w", r.plan.Source, r.plan.BaseLSN, err))
	}
	if got.Pin == nil {
		return r.aborted("pin base: I/O returned no pin")
	}
	r.hold(fmt.Sprintf("base %s %d", got.Source, got.LSN), got.LSN, got.Pin)
	*b = got
	return nil
}

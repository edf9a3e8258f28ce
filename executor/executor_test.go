package executor

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weedblock/weedblock/engine"
)

type env struct {
	p     *primary
	r     *replica
	f     *fakeIO
	slots *engine.Slots
	clk   *clock
	log   *engine.Log
	id    engine.ReplicaID
	tok   engine.Token
}

// newEnv: a primary with n committed writes (epoch 3) and a replica that
// matches it up to durable, flushed to checkpoint.
func newEnv(n int, durable, checkpoint uint64) *env {
	p := newPrimary(3, n)
	r := replicaAt(p, durable, checkpoint)
	s := engine.NewSlots()
	return &env{p: p, r: r, f: newFakeIO(p, r, s), slots: s, clk: &clock{t: time.Unix(1000, 0)},
		log: engine.NewLog(1000, nil, nil), id: engine.ReplicaID{Volume: "vol1", Server: "srv2"}}
}

func (e *env) plan(t *testing.T, prior engine.State) engine.Plan {
	t.Helper()
	p, err := engine.PlanRecovery(e.p.view(), e.r.report(), prior)
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	return p
}

func (e *env) cfg() Config {
	return Config{BatchRecords: 10, BatchBytes: 64, Now: e.clk.Now, Log: e.log}
}

func (e *env) run(t *testing.T, cfg Config, plan engine.Plan) engine.Outcome {
	t.Helper()
	tok, err := e.slots.Acquire(e.id, plan.Epoch, "10.0.0.2:7000")
	if err != nil {
		t.Fatalf("acquire: %v", err)
	}
	e.tok = tok
	out := New(e.slots, cfg).Run(context.Background(), tok, plan, e.f.io())
	e.checkReleased(t)
	return out
}

// checkReleased: every pin released exactly once and the slot released.
func (e *env) checkReleased(t *testing.T) {
	t.Helper()
	if err := e.f.releasedOnce(); err != nil {
		t.Fatal(err)
	}
	if tok, ok := e.slots.Live(e.id); ok {
		t.Fatalf("slot still live after Run: %v", tok)
	}
	if err := e.slots.Release(e.tok); !errors.Is(err, engine.ErrStaleToken) {
		t.Fatalf("Run did not release its token: %v", err)
	}
}

// checkConverged: the oracle — the replica holds exactly the primary's
// image at the achieved LSN, and is trusted there.
func (e *env) checkConverged(t *testing.T, out engine.Outcome, want uint64) {
	t.Helper()
	if out.Kind != engine.OutcomeInSync || out.Achieved != want {
		t.Fatalf("outcome %v, want in-sync at %d", out, want)
	}
	got, exp := e.r.image(), e.p.imageAt(want)
	if !maps.Equal(got, exp) {
		t.Fatalf("replica image differs from primary at %d:\n got %v\nwant %v", want, got, exp)
	}
	rep := e.r.report()
	if rep.Durable != want || rep.Untrusted {
		t.Fatalf("replica report %+v after in-sync at %d", rep, want)
	}
}

func wantOutcome(t *testing.T, out engine.Outcome, kind engine.OutcomeKind, reason string) {
	t.Helper()
	if out.Kind != kind || !strings.Contains(out.Reason, reason) {
		t.Fatalf("outcome %v, want %v with %q", out, kind, reason)
	}
}

func TestCatchUpInSync(t *testing.T) {
	e := newEnv(100, 40, 30)
	e.p.recycle(30)
	plan := e.plan(t, engine.Unknown)
	if plan.Kind != engine.CatchUp || plan.From != 40 || plan.Target != 100 {
		t.Fatalf("plan %v", plan)
	}
	out := e.run(t, e.cfg(), plan)
	e.checkConverged(t, out, 100)
	if pins, rel, _, refused := e.f.counts(); pins != 1 || rel != 1 || refused != 0 {
		t.Fatalf("pins %d releases %d refused %d", pins, rel, refused)
	}
	var kinds []engine.EventKind
	for _, ev := range e.log.Events(e.id) {
		if len(kinds) == 0 || kinds[len(kinds)-1] != ev.Kind {
			kinds = append(kinds, ev.Kind)
		}
	}
	want := []engine.EventKind{engine.EventPlanned, engine.EventPinned, engine.EventStep, engine.EventReleased, engine.EventDone}
	if fmt.Sprint(kinds) != fmt.Sprint(want) {
		t.Fatalf("log kinds %v, want %v", kinds, want)
	}
	st, _ := engine.Unknown.Start()
	if st, _ = st.Finish(out); st != engine.InSync {
		t.Fatalf("state %v", st)
	}
}

func TestZeroGap(t *testing.T) {
	e := newEnv(50, 50, 50)
	plan := e.plan(t, engine.Unknown)
	out := e.run(t, e.cfg(), plan)
	e.checkConverged(t, out, 50)
	if _, _, side, _ := e.f.counts(); side != 0 {
		t.Fatalf("zero gap made %d side effects", side)
	}
}

// TestExitPathsReleasePins drives every way an attempt can end, on a
// catch-up and on a rebuild, and counts the releases.
func TestExitPathsReleasePins(t *testing.T) {
	type fault struct {
		name   string
		setup  func(e *env, cfg *Config)
		kind   engine.OutcomeKind
		reason string
	}
	faults := []fault{
		{"success", func(e *env, cfg *Config) {}, engine.OutcomeInSync, "target reached"},
		{"I/O error", func(e *env, cfg *Config) {
			e.f.streamErr = func(n int) error {
				if n == 2 {
					return errors.New("connection reset")
				}
				return nil
			}
		}, engine.OutcomeAborted, "connection reset"},
		{"time budget", func(e *env, cfg *Config) {
			cfg.MaxDuration = 3 * time.Second
			cfg.OnStep = func(Step) error { e.clk.advance(time.Second); return nil }
		}, engine.OutcomeAborted, "time budget"},
		{"byte budget", func(e *env, cfg *Config) { cfg.MaxBytes = 2 * 10 * recordBytes }, engine.OutcomeAborted, "byte budget"},
		{"stall", func(e *env, cfg *Config) {
			cfg.OnStep = func(s Step) error {
				if s.Batch == 3 {
					e.f.mu.Lock()
					e.f.stall = true
					e.f.mu.Unlock()
				}
				return nil
			}
		}, engine.OutcomeAborted, "stalled"},
		{"epoch bump mid-run", func(e *env, cfg *Config) {
			cfg.OnStep = func(s Step) error {
				if s.Batch == 3 {
					e.slots.Observe(e.id, 4, "10.0.0.2:7000")
				}
				return nil
			}
		}, engine.OutcomeAborted, "epoch 4"},
		{"endpoint change mid-run", func(e *env, cfg *Config) {
			cfg.OnStep = func(s Step) error {
				if s.Batch == 3 {
					e.slots.Observe(e.id, 3, "10.0.0.9:7000")
				}
				return nil
			}
		}, engine.OutcomeAborted, "10.0.0.9:7000"},
		{"hook fault", func(e *env, cfg *Config) {
			cfg.OnStep = func(s Step) error {
				if s.Batch == 2 {
					return errors.New("injected")
				}
				return nil
			}
		}, engine.OutcomeAborted, "injected"},
		{"retention lost (hold revoked)", func(e *env, cfg *Config) {
			n := 0
			cfg.OnStep = func(s Step) error {
				if s.Phase != PhaseTransfer {
					if n++; n == 3 {
						e.p.recycle(95)
					}
				}
				return nil
			}
		}, engine.OutcomeNeedsRebuild, "retention lost"},
	}
	for _, mode := range []string{"catch-up", "rebuild"} {
		for _, fl := range faults {
			t.Run(mode+"/"+fl.name, func(t *testing.T) {
				e := newEnv(100, 40, 30)
				if mode == "rebuild" {
					e.r.untrusted = true
					e.p.snaps[20] = true
				}
				plan := e.plan(t, engine.Unknown)
				cfg := e.cfg()
				fl.setup(e, &cfg)
				out := e.run(t, cfg, plan)
				wantOutcome(t, out, fl.kind, fl.reason)
				pins, rel, _, refused := e.f.counts()
				wantPins := map[string]int{"catch-up": 1, "rebuild": 2}[mode]
				if pins != wantPins || rel != wantPins {
					t.Fatalf("pins %d, releases %d, want %d each", pins, rel, wantPins)
				}
				if refused != 0 {
					t.Fatalf("executor attempted %d side effects with a stale token", refused)
				}
				if fl.kind == engine.OutcomeInSync {
					e.checkConverged(t, out, 100)
				} else if mode == "rebuild" && !e.r.report().Untrusted {
					t.Fatal("interrupted rebuild left the replica trusted")
				}
				evs := e.log.Events(e.id)
				if last := evs[len(evs)-1]; last.Kind != engine.EventDone {
					t.Fatalf("last event %+v", last)
				}
			})
		}
	}
}

func TestCallerCancel(t *testing.T) {
	e := newEnv(100, 40, 40)
	plan := e.plan(t, engine.Unknown)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := e.cfg()
	cfg.OnStep = func(s Step) error {
		if s.Batch == 2 {
			cancel()
		}
		return nil
	}
	tok, err := e.slots.Acquire(e.id, plan.Epoch, "a")
	if err != nil {
		t.Fatal(err)
	}
	e.tok = tok
	out := New(e.slots, cfg).Run(ctx, tok, plan, e.f.io())
	e.checkReleased(t)
	wantOutcome(t, out, engine.OutcomeAborted, "cancelled")
	if out.Achieved != 50 {
		t.Fatalf("achieved %d, want 50 (one batch)", out.Achieved)
	}
}

// TestStaleTokenSideEffectsRefused: once the attempt is superseded, no
// further side effect reaches the replica, and the I/O refuses the old
// token itself.
func TestStaleTokenSideEffectsRefused(t *testing.T) {
	e := newEnv(100, 10, 10)
	plan := e.plan(t, engine.Unknown)
	cfg := e.cfg()
	var atCancel int
	var newTok engine.Token
	cfg.OnStep = func(s Step) error {
		if s.Batch == 3 {
			_, _, atCancel, _ = e.f.counts()
			var err error
			if newTok, err = e.slots.Acquire(e.id, 5, "10.0.0.2:7000"); err != nil {
				return err
			}
		}
		return nil
	}
	tok, err := e.slots.Acquire(e.id, plan.Epoch, "10.0.0.2:7000")
	if err != nil {
		t.Fatal(err)
	}
	e.tok = tok
	out := New(e.slots, cfg).Run(context.Background(), tok, plan, e.f.io())
	if err := e.f.releasedOnce(); err != nil {
		t.Fatal(err)
	}
	if err := e.slots.Release(tok); !errors.Is(err, engine.ErrStaleToken) {
		t.Fatalf("Run did not release its token: %v", err)
	}
	wantOutcome(t, out, engine.OutcomeAborted, "superseded by epoch 5")
	_, _, side, refused := e.f.counts()
	if side != atCancel || refused != 0 {
		t.Fatalf("side effects %d after cancel at %d, refused %d", side, atCancel, refused)
	}
	if got := e.r.report().Durable; got != 30 {
		t.Fatalf("replica durable %d, want 30 (two batches)", got)
	}
	// The bridge side refuses the stale token outright.
	if _, err := e.f.StreamWAL(context.Background(), e.tok, 30, 40); !errors.Is(err, engine.ErrStaleToken) {
		t.Fatalf("stale stream: %v", err)
	}
	if err := e.f.Truncate(e.tok, 0); !errors.Is(err, engine.ErrStaleToken) {
		t.Fatalf("stale truncate: %v", err)
	}
	if err := e.f.Commit(e.tok, 30); !errors.Is(err, engine.ErrStaleToken) {
		t.Fatalf("stale commit: %v", err)
	}
	if got := e.r.report().Durable; got != 30 {
		t.Fatalf("stale calls changed the replica: durable %d", got)
	}
	if err := e.slots.Check(newTok); err != nil {
		t.Fatalf("new attempt's token hurt by the old run: %v", err)
	}
}

func TestPlanEpochMismatchFailsClosed(t *testing.T) {
	e := newEnv(100, 10, 10)
	plan := e.plan(t, engine.Unknown)
	plan.Epoch = 2
	tok, err := e.slots.Acquire(e.id, 3, "a")
	if err != nil {
		t.Fatal(err)
	}
	e.tok = tok
	out := New(e.slots, e.cfg()).Run(context.Background(), tok, plan, e.f.io())
	e.checkReleased(t)
	wantOutcome(t, out, engine.OutcomeAborted, "plan of epoch 2")
	if _, _, side, _ := e.f.counts(); side != 0 {
		t.Fatalf("%d side effects", side)
	}
}

func TestTailChasingEscalates(t *testing.T) {
	e := newEnv(100, 10, 10)
	plan := e.plan(t, engine.Unknown)
	cfg := e.cfg()
	cfg.Chase, cfg.ChaseBatches = true, 4
	cfg.OnStep = func(Step) error { e.p.write(12); return nil } // faster than a batch of 10
	out := e.run(t, cfg, plan)
	wantOutcome(t, out, engine.OutcomeNeedsRebuild, "tail chasing")
	evs := e.log.Events(e.id)
	if n := len(evs); n < 4 || evs[n-4].Kind != engine.EventEscalated || evs[n-3].Kind != engine.EventReleased ||
		evs[n-2].Kind != engine.EventReleased || evs[n-1].Kind != engine.EventDone {
		t.Fatalf("log tail %+v", evs[max(0, len(evs)-4):])
	}
	st, _ := engine.Unknown.Start()
	st, _ = st.Finish(out)
	if st != engine.NeedsRebuild {
		t.Fatalf("state %v", st)
	}
	// Replan: the escalation forces a rebuild, which converges once the
	// primary stops outrunning it.
	plan = e.plan(t, st)
	if plan.Kind != engine.Rebuild {
		t.Fatalf("replan %v", plan)
	}
	out = e.run(t, e.cfg(), plan)
	e.checkConverged(t, out, plan.Target)
}

func TestChaseConvergesWithinHandoffLag(t *testing.T) {
	e := newEnv(100, 10, 10)
	plan := e.plan(t, engine.Unknown)
	cfg := e.cfg()
	cfg.Chase, cfg.HandoffLag = true, 5
	writes := 0
	cfg.OnStep = func(Step) error {
		if writes < 60 {
			e.p.write(3)
			writes += 3
		}
		return nil
	}
	out := e.run(t, cfg, plan)
	if out.Kind != engine.OutcomeInSync || out.Achieved < 100 || e.p.view().Committed-out.Achieved > 5 {
		t.Fatalf("outcome %v, primary at %d", out, e.p.view().Committed)
	}
	e.checkConverged(t, out, out.Achieved)
}

func TestTruncateThenCatchUp(t *testing.T) {
	// Beyond committed: the replica holds 101..105 that the primary never
	// committed (different blocks); truncation drops them.
	e := newEnv(100, 100, 95)
	for l := uint64(101); l <= 105; l++ {
		e.r.wal[l] = 1000 + l
	}
	e.r.durable = 105
	plan := e.plan(t, engine.Unknown)
	if plan.Kind != engine.Truncate || plan.TruncateTo != 100 {
		t.Fatalf("plan %v", plan)
	}
	out := e.run(t, e.cfg(), plan)
	e.checkConverged(t, out, 100)

	// Divergent epoch: epoch 2 wrote 1..60, epoch 3 from 61; the replica
	// kept epoch-2 records 61..70 that differ.
	e = newEnv(100, 60, 50)
	for l := uint64(61); l <= 70; l++ {
		e.r.wal[l] = 2000 + l
	}
	e.r.durable, e.r.epoch = 70, 2
	v := e.p.view()
	v.Terms = []engine.Term{{Epoch: 2, First: 1}, {Epoch: 3, First: 61}}
	plan, err := engine.PlanRecovery(v, e.r.report(), engine.Unknown)
	if err != nil || plan.Kind != engine.Truncate || plan.TruncateTo != 60 || plan.Target != 100 {
		t.Fatalf("plan %v, %v", plan, err)
	}
	out = e.run(t, e.cfg(), plan)
	e.checkConverged(t, out, 100)
	if pins, rel, _, _ := e.f.counts(); pins != 1 || rel != 1 {
		t.Fatalf("pins %d releases %d", pins, rel)
	}
}

func TestTruncationUnsafeEscalatesToRebuild(t *testing.T) {
	e := newEnv(100, 100, 90)
	for l := uint64(101); l <= 110; l++ {
		e.r.wal[l] = 3000 + l
	}
	e.r.durable = 110
	e.p.snaps[80] = true
	plan := e.plan(t, engine.Unknown)
	if plan.Kind != engine.Truncate {
		t.Fatalf("plan %v", plan)
	}
	e.r.flush() // after planning, the replica flushes past the point
	out := e.run(t, e.cfg(), plan)
	wantOutcome(t, out, engine.OutcomeNeedsRebuild, "truncation unsafe")
	st, _ := engine.Unknown.Start()
	st, _ = st.Finish(out)
	plan = e.plan(t, st)
	if plan.Kind != engine.Rebuild || plan.Source != engine.Snapshot || plan.BaseLSN != 80 {
		t.Fatalf("replan %v", plan)
	}
	out = e.run(t, e.cfg(), plan)
	e.checkConverged(t, out, 100)
}

func TestRebuildSources(t *testing.T) {
	for _, snap := range []bool{false, true} {
		t.Run(fmt.Sprintf("snapshot=%v", snap), func(t *testing.T) {
			e := newEnv(100, 5, 5)
			e.p.recycle(50)
			if snap {
				e.p.snaps[60] = true
			}
			e.p.write(20) // committed 120, checkpoint 120
			e.p.mu.Lock()
			e.p.checkpoint = 110 // the full base is older than committed
			e.p.mu.Unlock()
			plan := e.plan(t, engine.Unknown)
			wantSrc := map[bool]engine.Source{false: engine.Full, true: engine.Snapshot}[snap]
			if plan.Kind != engine.Rebuild || plan.Source != wantSrc {
				t.Fatalf("plan %v", plan)
			}
			var heldAtTransfer int
			cfg := e.cfg()
			cfg.OnStep = func(s Step) error {
				if s.Phase == PhaseTransfer && s.Batch == 1 {
					pins, rel, _, _ := e.f.counts()
					heldAtTransfer = pins - rel
				}
				return nil
			}
			out := e.run(t, cfg, plan)
			e.checkConverged(t, out, 120)
			// Full: a WAL hold from the tail, the base, then the narrowed
			// hold from the base (the wide one released before the
			// transfer). Snapshot: the hold after the base, and the base.
			wantPins := map[bool]int{false: 3, true: 2}[snap]
			if pins, rel, _, _ := e.f.counts(); pins != wantPins || rel != wantPins || heldAtTransfer != 2 {
				t.Fatalf("pins %d releases %d (want %d), held during transfer %d (want 2)", pins, rel, wantPins, heldAtTransfer)
			}
		})
	}
}

// TestRebuildBoundBaseFailsClosed: the primary's history changes after
// planning; the executor never uses another base.
func TestRebuildBoundBaseFailsClosed(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(e *env)
		reason string
		names  string
	}{
		{"snapshot deleted, newer one exists", func(e *env) { delete(e.p.snaps, 60); e.p.snaps[80] = true }, "pin base snapshot 60", "60"},
		{"primary offers another snapshot", func(e *env) { e.f.offerLSN = 80; e.p.snaps[80] = true }, "refusing another base", "snapshot 60"},
		{"tail after the base recycled", func(e *env) { e.p.recycle(70) }, "retention lost", "from 61"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(100, 5, 5)
			e.p.recycle(50)
			e.p.snaps[60] = true
			plan := e.plan(t, engine.Unknown)
			if plan.Source != engine.Snapshot || plan.BaseLSN != 60 {
				t.Fatalf("plan %v", plan)
			}
			tc.mutate(e)
			out := e.run(t, e.cfg(), plan)
			wantOutcome(t, out, engine.OutcomeNeedsRebuild, tc.reason)
			if e.f.transferred != 0 {
				t.Fatalf("%d base bytes transferred from a base the plan did not bind", e.f.transferred)
			}
			if !strings.Contains(out.Reason, tc.names) {
				t.Fatalf("reason %q does not name the bound base", out.Reason)
			}
		})
	}
}

func TestSecondRebuildAfterInterrupted(t *testing.T) {
	e := newEnv(100, 5, 5)
	e.p.recycle(50)
	plan := e.plan(t, engine.Unknown)
	cfg := e.cfg()
	cfg.OnStep = func(s Step) error {
		if s.Phase == PhaseTransfer && s.Batch == 3 {
			return errors.New("power cut")
		}
		return nil
	}
	out := e.run(t, cfg, plan)
	wantOutcome(t, out, engine.OutcomeAborted, "power cut")
	rep := e.r.report()
	if !rep.Untrusted {
		t.Fatal("interrupted rebuild left the replica trusted")
	}
	// The half-rebuilt replica reports durable 0; even with a report that
	// looks caught up it must rebuild, because it is untrusted.
	e.r.durable, e.r.checkpoint = 100, 100
	plan = e.plan(t, engine.Aborted)
	if plan.Kind != engine.Rebuild || !strings.Contains(plan.Reason, "untrusted") {
		t.Fatalf("replan %v", plan)
	}
	out = e.run(t, e.cfg(), plan)
	e.checkConverged(t, out, 100)
}

func TestBaseVerificationFailureEscalates(t *testing.T) {
	e := newEnv(100, 5, 5)
	e.p.recycle(50)
	plan := e.plan(t, engine.Unknown)
	cfg := e.cfg()
	cfg.OnStep = func(s Step) error {
		if s.Phase == PhaseTransfer && s.Batch == 2 {
			e.r.mu.Lock()
			e.r.extent[999] = 1 // corrupt the copy
			e.r.mu.Unlock()
		}
		return nil
	}
	out := e.run(t, cfg, plan)
	wantOutcome(t, out, engine.OutcomeNeedsRebuild, "verification failed")
	if !e.r.report().Untrusted {
		t.Fatal("replica trusted after a failed verification")
	}
}

// TestRF3TwoReplicasRecovering: two replicas of one volume recover at once
// through two independent slots; cancelling one leaves the other alone.
func TestRF3TwoReplicasRecovering(t *testing.T) {
	p := newPrimary(3, 200)
	p.recycle(40)
	p.snaps[50] = true
	slots := engine.NewSlots()
	log := engine.NewLog(1000, nil, nil)
	r1 := replicaAt(p, 60, 60) // catch-up
	r2 := replicaAt(p, 10, 10) // rebuild from snapshot 50
	f1, f2 := newFakeIO(p, r1, slots), newFakeIO(p, r2, slots)
	id1, id2 := engine.ReplicaID{Volume: "vol1", Server: "srv2"}, engine.ReplicaID{Volume: "vol1", Server: "srv3"}

	runBoth := func(cancelSecond bool) (engine.Outcome, engine.Outcome) {
		var wg sync.WaitGroup
		var o1, o2 engine.Outcome
		start := func(id engine.ReplicaID, r *replica, f *fakeIO, out *engine.Outcome, onStep func(Step) error) {
			plan, err := engine.PlanRecovery(p.view(), r.report(), engine.Unknown)
			if err != nil {
				t.Error(err)
				return
			}
			tok, err := slots.Acquire(id, plan.Epoch, "ep-"+id.Server)
			if err != nil {
				t.Error(err)
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				*out = New(slots, Config{BatchRecords: 7, BatchBytes: 48, Log: log, OnStep: onStep}).Run(context.Background(), tok, plan, f.io())
			}()
		}
		var hook func(Step) error
		if cancelSecond {
			hook = func(s Step) error {
				if s.Batch == 2 {
					slots.Observe(id2, 4, "ep-"+id2.Server)
				}
				return nil
			}
		}
		start(id1, r1, f1, &o1, nil)
		start(id2, r2, f2, &o2, hook)
		wg.Wait()
		return o1, o2
	}
	o1, o2 := runBoth(true)
	if o1.Kind != engine.OutcomeInSync || o1.Achieved != 200 || !maps.Equal(r1.image(), p.imageAt(200)) {
		t.Fatalf("replica 1: %v", o1)
	}
	wantOutcome(t, o2, engine.OutcomeAborted, "epoch 4")
	if !r2.report().Untrusted {
		t.Fatal("cancelled rebuild left replica 2 trusted")
	}
	// Replica 2 retries under the new epoch and converges.
	p.bump(4)
	_, o2 = runBoth(false)
	if o2.Kind != engine.OutcomeInSync || o2.Achieved != 200 || !maps.Equal(r2.image(), p.imageAt(200)) {
		t.Fatalf("replica 2 retry: %v", o2)
	}
	for _, f := range []*fakeIO{f1, f2} {
		if err := f.releasedOnce(); err != nil {
			t.Fatal(err)
		}
		if _, _, _, refused := f.counts(); refused != 0 {
			t.Fatalf("%d stale side effects attempted", refused)
		}
	}
	if len(log.Events(id1)) == 0 || len(log.Events(id2)) == 0 {
		t.Fatal("recovery log missing a replica")
	}
}

// TestCancelReachesIOInFlight: an epoch bump while a transfer call is
// blocked cancels that call's context; the attempt aborts with the cause.
func TestCancelReachesIOInFlight(t *testing.T) {
	e := newEnv(100, 10, 10)
	plan := e.plan(t, engine.Unknown)
	e.f.blockCall, e.f.blocked = 2, make(chan struct{})
	go func() {
		<-e.f.blocked
		e.slots.Observe(e.id, 9, "10.0.0.2:7000")
	}()
	out := e.run(t, e.cfg(), plan)
	wantOutcome(t, out, engine.OutcomeAborted, "epoch 9")
	if !strings.Contains(out.Reason, "cancelled") || out.Achieved != 20 {
		t.Fatalf("outcome %v", out)
	}
}

// TestFullBaseBelowHoldEscalates: a full base older than the WAL hold the
// plan bound would leave a gap; the executor refuses it.
func TestFullBaseBelowHoldEscalates(t *testing.T) {
	e := newEnv(100, 5, 5)
	e.p.recycle(50)
	plan := e.plan(t, engine.Unknown)
	if plan.Source != engine.Full || plan.From != 49 {
		t.Fatalf("plan %v", plan)
	}
	e.p.mu.Lock()
	e.p.checkpoint = 30 // a misbehaving primary
	e.p.mu.Unlock()
	out := e.run(t, e.cfg(), plan)
	wantOutcome(t, out, engine.OutcomeNeedsRebuild, "below the WAL hold (49, ∞)")
	if e.f.transferred != 0 {
		t.Fatal("transferred a base that leaves a gap")
	}
}

func TestMalformedPlansAndMissingIOAbort(t *testing.T) {
	cases := []struct {
		name   string
		plan   engine.Plan
		io     func(f *fakeIO) IO
		reason string
	}{
		{"no catch-up I/O", engine.Plan{Kind: engine.CatchUp, Epoch: 3, From: 10, Target: 100}, func(f *fakeIO) IO { return IO{Rebuild: f, Truncate: f} }, "no catch-up I/O"},
		{"no rebuild I/O", engine.Plan{Kind: engine.Rebuild, Source: engine.Full, Epoch: 3, Target: 100}, func(f *fakeIO) IO { return IO{CatchUp: f} }, "no rebuild I/O"},
		{"no truncate I/O", engine.Plan{Kind: engine.Truncate, Epoch: 3, TruncateTo: 5, From: 5, Target: 100}, func(f *fakeIO) IO { return IO{CatchUp: f} }, "no truncate I/O"},
		{"truncate without catch-up I/O", engine.Plan{Kind: engine.Truncate, Epoch: 3, TruncateTo: 5, From: 5, Target: 100}, func(f *fakeIO) IO { return IO{Truncate: f} }, "no catch-up I/O"},
		{"truncate with from elsewhere", engine.Plan{Kind: engine.Truncate, Epoch: 3, TruncateTo: 5, From: 7, Target: 100}, (*fakeIO).io, "malformed plan"},
		{"rebuild without source", engine.Plan{Kind: engine.Rebuild, Epoch: 3, Target: 100}, (*fakeIO).io, "malformed plan"},
		{"snapshot beyond target", engine.Plan{Kind: engine.Rebuild, Source: engine.Snapshot, BaseLSN: 101, From: 101, Epoch: 3, Target: 100}, (*fakeIO).io, "malformed plan"},
		{"unknown kind", engine.Plan{Kind: 42, Epoch: 3}, (*fakeIO).io, "unknown plan kind"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(100, 10, 10)
			tok, err := e.slots.Acquire(e.id, 3, "a")
			if err != nil {
				t.Fatal(err)
			}
			e.tok = tok
			out := New(e.slots, e.cfg()).Run(context.Background(), tok, tc.plan, tc.io(e.f))
			e.checkReleased(t)
			wantOutcome(t, out, engine.OutcomeAborted, tc.reason)
			if _, _, side, _ := e.f.counts(); side != 0 {
				t.Fatalf("%d side effects for a plan that cannot run", side)
			}
		})
	}
}

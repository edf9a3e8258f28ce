package executor

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"testing"

	"github.com/weedblock/weedblock/engine"
)

// TestModelRandomRecoveries is the model test: random histories (epoch
// changes with a divergent replica, recycled WAL, snapshots trusted or
// not, half-flushed replicas), random faults during the first attempts
// (I/O errors, epoch bumps, endpoint changes, revoked holds, replica
// flushes, writes racing the attempt), and the caller's loop: plan from
// the state the outcomes led to, run, repeat. Every scenario must end
// in-sync with the replica holding exactly the primary's image (the LSN
// oracle), every pin released once and no side effect with a stale token.
func TestModelRandomRecoveries(t *testing.T) {
	scenarios := 300
	if testing.Short() {
		scenarios = 60
	}
	for seed := 0; seed < scenarios; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { modelScenario(t, uint64(seed)) })
	}
}

func modelScenario(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	n := func(lo, hi int) int { return lo + rng.IntN(hi-lo+1) }

	// Epoch 1: k records, all on the replica, plus m of its own that the
	// next primary never saw.
	k := n(0, 80)
	p := newPrimary(1, k)
	d := uint64(n(0, k))
	diverge := rng.IntN(3) == 0
	if diverge {
		d = uint64(k)
	}
	r := replicaAt(p, d, uint64(n(0, int(d))))
	if diverge {
		for m := n(1, 8); m > 0; m-- {
			r.durable++
			r.wal[r.durable] = 5000 + r.durable
		}
		if rng.IntN(3) == 0 {
			r.flush()
		}
	}
	// Epoch 2: more writes, retention, snapshots.
	p.bump(2)
	p.write(n(0, 150))
	if rng.IntN(4) == 0 {
		// The newest records are not committed yet, and the replica may
		// already hold some of them.
		p.mu.Lock()
		p.committed -= min(p.committed, uint64(n(0, 10)))
		p.mu.Unlock()
		if !diverge && rng.IntN(2) == 0 {
			r = replicaAt(p, p.view().Head, uint64(n(0, int(p.view().Head))))
		}
	}
	head := p.view().Head
	if rng.IntN(2) == 0 && head > 0 {
		p.recycle(uint64(n(1, int(head)+1)))
	}
	for i := n(0, 2); i > 0 && head > 0; i-- {
		p.snaps[uint64(n(0, int(head)))] = rng.IntN(4) != 0
	}
	if rng.IntN(5) == 0 {
		r.untrusted = true
	}
	p.vouch = rng.IntN(2) == 0

	slots := engine.NewSlots()
	id := engine.ReplicaID{Volume: "vol", Server: "s2"}
	endpoint := "10.0.0.2:7000"
	log := engine.NewLog(64, nil, nil)
	state := engine.Unknown
	var trail []string
	for attempt := 1; ; attempt++ {
		if attempt > 14 {
			t.Fatalf("no convergence after %d attempts:\n%v", attempt-1, trail)
		}
		faulty := attempt <= 5
		plan, err := engine.PlanRecovery(p.view(), r.report(), state)
		if err != nil {
			t.Fatalf("plan: %v (view %+v, report %+v)", err, p.view(), r.report())
		}
		f := newFakeIO(p, r, slots)
		if faulty && rng.IntN(6) == 0 {
			f.streamErr = func(call int) error {
				if call == 2 {
					return errors.New("injected link error")
				}
				return nil
			}
		}
		tok, err := slots.Acquire(id, plan.Epoch, endpoint)
		if err != nil {
			t.Fatalf("acquire: %v", err)
		}
		cfg := Config{BatchRecords: uint64(n(1, 40)), BatchBytes: int64(16 * n(1, 20)), Log: log,
			StallBatches: 3, ChaseBatches: 6, Chase: rng.IntN(3) == 0, HandoffLag: uint64(n(0, 5))}
		cfg.OnStep = func(s Step) error {
			if !faulty || rng.IntN(12) != 0 {
				if cfg.Chase && rng.IntN(3) == 0 {
					p.write(1)
				}
				return nil
			}
			switch rng.IntN(6) {
			case 0:
				return errors.New("injected step fault")
			case 1:
				e := p.view().Epoch + 1
				p.bump(e)
				slots.Observe(id, e, endpoint)
			case 2:
				endpoint = fmt.Sprintf("10.0.0.%d:7000", n(3, 250))
				slots.Observe(id, p.view().Epoch, endpoint)
			case 3:
				v := p.view()
				if v.Head > 0 {
					p.recycle(uint64(n(int(v.Tail), int(v.Head)+1)))
				}
			case 4:
				r.flush()
			case 5:
				p.write(n(1, 20))
			}
			return nil
		}
		out := New(slots, cfg).Run(context.Background(), tok, plan, f.io())
		trail = append(trail, fmt.Sprintf("%d: %v → %v", attempt, plan, out))
		if err := f.releasedOnce(); err != nil {
			t.Fatalf("%v\n%v", err, trail)
		}
		if _, _, _, refused := f.counts(); refused != 0 {
			t.Fatalf("%d side effects with a stale token\n%v", refused, trail)
		}
		if _, ok := slots.Live(id); ok {
			t.Fatalf("slot live after Run\n%v", trail)
		}
		if state, err = state.Start(); err != nil {
			t.Fatal(err)
		}
		if state, err = state.Finish(out); err != nil {
			t.Fatal(err)
		}
		if out.Kind == engine.OutcomeInSync {
			if out.Achieved < plan.Target {
				t.Fatalf("in-sync at %d below target %d\n%v", out.Achieved, plan.Target, trail)
			}
			if got, want := r.image(), p.imageAt(out.Achieved); !maps.Equal(got, want) {
				t.Fatalf("replica differs from primary at %d\n got %v\nwant %v\n%v", out.Achieved, got, want, trail)
			}
			if rep := r.report(); rep.Untrusted || rep.Durable != out.Achieved {
				t.Fatalf("in-sync replica reports %+v\n%v", rep, trail)
			}
			if !faulty {
				return
			}
			// Keep going while faults are on: the next plan must be a
			// zero gap or a catch-up of what was written meanwhile. A
			// primary that does not report its durable LSN needs
			// replication to commit what the replica holds first (a
			// full base may be beyond committed).
			if !p.vouch {
				p.commitAll()
			}
			next, err := engine.PlanRecovery(p.view(), r.report(), state)
			if err != nil || next.Kind == engine.Rebuild || next.Kind == engine.Truncate {
				t.Fatalf("after in-sync at %d: %v, %v\n%v", out.Achieved, next, err, trail)
			}
			if next.Kind == engine.ZeroGap {
				return
			}
		}
	}
}

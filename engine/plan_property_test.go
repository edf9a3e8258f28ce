package engine

import (
	"errors"
	"math/rand/v2"
	"testing"
)

// TestPlanRecoveryInvariants checks the planner's promises over many
// random valid inputs: no error, a reason always, and each kind only when
// its preconditions hold.
func TestPlanRecoveryInvariants(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	u := func(hi uint64) uint64 { return rng.Uint64N(hi + 1) }
	for i := 0; i < 50000; i++ {
		v := PrimaryView{Epoch: 1 + u(4)}
		v.Head = u(200)
		v.Committed = u(v.Head)
		if rng.IntN(2) == 0 {
			v.Durable = v.Committed + u(v.Head-v.Committed)
		}
		v.Tail = 1 + u(v.Head)
		if rng.IntN(2) == 0 {
			first := uint64(1)
			for e := uint64(1); e <= v.Epoch; e++ {
				if rng.IntN(2) == 0 || e == v.Epoch {
					v.Terms = append(v.Terms, Term{Epoch: e, First: first})
					first += u(60)
				}
			}
		}
		if rng.IntN(2) == 0 {
			v.Base = &BaseSnapshot{LSN: u(v.Head), Trusted: rng.IntN(3) != 0}
		}
		r := ReplicaReport{Durable: u(260), Epoch: u(v.Epoch), Untrusted: rng.IntN(8) == 0}
		r.Checkpoint = u(r.Durable)
		prior := State(rng.IntN(5))

		p, err := PlanRecovery(v, r, prior)
		if err != nil {
			t.Fatalf("valid input refused: %v\nview %+v\nreport %+v", err, v, r)
		}
		checkPlan(t, v, r, prior, p)
	}
}

// TestPlanRecoveryExactHistories: two copies share a random history up to
// LSN c, then each goes on with epochs of its own (a deposed primary's
// writes on the replica); each side's history may be known only from some
// LSN on (bounded). With the replica's history in the report, no plan ever
// keeps a replica record beyond c (catch-up / zero gap only when the whole
// replica is the shared prefix, truncation to at most c); and when both
// histories are fully known and the replica is a retained prefix of the
// primary, it is caught up rather than rebuilt.
func TestPlanRecoveryExactHistories(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 5))
	u := func(hi uint64) uint64 { return rng.Uint64N(hi + 1) }
	// epochs returns n epochs ascending from e (steps of 0..2 scaled by k).
	run := func(n, e, k uint64) []uint64 {
		out := make([]uint64, n)
		for i := range out {
			if rng.IntN(8) == 0 {
				e += k * (1 + u(1))
			}
			out[i] = e
		}
		return out
	}
	toTerms := func(es []uint64, from uint64) []Term {
		ts := []Term{}
		for i, e := range es {
			lsn := uint64(i + 1)
			if lsn < from {
				continue
			}
			if len(ts) == 0 || ts[len(ts)-1].Epoch != e {
				ts = append(ts, Term{Epoch: e, First: lsn})
			}
		}
		return ts
	}
	for i := 0; i < 20000; i++ {
		c := u(80)
		common := run(c, 1, 1)
		last := uint64(1)
		if c > 0 {
			last = common[c-1]
		}
		// The primary's own epochs are even, the replica's odd, beyond
		// the shared part: they never agree there.
		pe := append(append([]uint64(nil), common...), run(u(60), 2*last+2, 2)...)
		re := append(append([]uint64(nil), common...), run(u(60), 2*last+1, 2)...)
		v := PrimaryView{Epoch: 4*last + 300}
		v.Head = uint64(len(pe))
		v.Committed = u(v.Head)
		if rng.IntN(2) == 0 {
			v.Durable = v.Committed + u(v.Head-v.Committed)
		}
		v.Tail = 1 + u(v.Head)
		pFrom, rFrom := uint64(1), uint64(1)
		if rng.IntN(3) == 0 {
			pFrom = 1 + u(v.Head)
		}
		if rng.IntN(3) == 0 {
			rFrom = 1 + u(uint64(len(re)))
		}
		v.Terms = toTerms(pe, pFrom)
		if len(v.Terms) == 0 {
			v.Terms = []Term{{Epoch: v.Epoch, First: v.Head + 1}}
		}
		r := ReplicaReport{Durable: uint64(len(re)), Terms: toTerms(re, rFrom)}
		r.Checkpoint = u(r.Durable)
		if r.Durable > 0 {
			r.Epoch = re[r.Durable-1]
		}
		p, err := PlanRecovery(v, r, Unknown)
		if err != nil {
			t.Fatalf("valid input refused: %v\nview %+v\nreport %+v", err, v, r)
		}
		checkPlan(t, v, r, Unknown, p)
		fail := func(why string) { t.Fatalf("%s (shared %d): plan %+v\nview %+v\nreport %+v", why, c, p, v, r) }
		switch p.Kind {
		case ZeroGap, CatchUp:
			if r.Durable > c {
				fail("kept diverged records")
			}
		case Truncate:
			if p.TruncateTo > c {
				fail("truncated to a diverged point")
			}
		}
		if pFrom == 1 && rFrom == 1 && r.Durable <= c && r.Durable < v.Committed && r.Durable+1 >= v.Tail && p.Kind != CatchUp {
			fail("a retained prefix of the primary not caught up")
		}
	}
}

// checkPlan fails t unless p keeps the planner's promises for (v, r, prior).
func checkPlan(t *testing.T, v PrimaryView, r ReplicaReport, prior State, p Plan) {
	t.Helper()
	fail := func(why string) { t.Fatalf("%s: plan %+v\nview %+v\nreport %+v prior %v", why, p, v, r, prior) }
	if p.Reason == "" || p.Epoch != v.Epoch || p.Target != v.Committed {
		fail("reason, epoch or target")
	}
	if (r.Untrusted || prior == NeedsRebuild) && p.Kind != Rebuild {
		fail("untrusted or escalated replica not rebuilt")
	}
	agree := min(r.Durable, v.lastOfEpoch(r.Epoch))
	if r.Terms != nil {
		agree = v.agreeExact(r.Terms, r.Durable)
	}
	switch p.Kind {
	case ZeroGap:
		if r.Durable < v.Committed || agree != r.Durable || (r.Durable > v.Committed && r.Durable > v.Durable) {
			fail("zero gap with missing or unvouched records")
		}
	case CatchUp:
		if p.From != r.Durable || p.From >= p.Target || p.From+1 < v.Tail || agree != r.Durable {
			fail("catch-up precondition")
		}
	case Truncate:
		if p.TruncateTo >= r.Durable || r.Checkpoint > p.TruncateTo || p.TruncateTo > agree || p.From != p.TruncateTo {
			fail("truncate precondition")
		}
		if p.TruncateTo < p.Target && p.TruncateTo+1 < v.Tail {
			fail("truncate + catch-up with records not retained")
		}
	case Rebuild:
		switch p.Source {
		case Snapshot:
			b := v.Base
			if b == nil || !b.Trusted || b.LSN != p.BaseLSN || p.BaseLSN > v.Committed || p.BaseLSN+1 < v.Tail || p.From != p.BaseLSN {
				fail("snapshot source precondition")
			}
		case Full:
			if p.From+1 != v.Tail {
				fail("full rebuild must hold the WAL from the tail")
			}
		default:
			fail("rebuild without a source")
		}
	default:
		fail("unknown kind")
	}
}

// FuzzPlanRecovery: any input either is refused with an error or gets a
// plan that keeps the invariants; nothing panics.
func FuzzPlanRecovery(f *testing.F) {
	f.Add(uint64(5), uint64(100), uint64(0), uint64(110), uint64(50), uint64(49), uint64(40), uint64(5), false, uint64(0), false, 0)
	f.Add(uint64(5), uint64(100), uint64(105), uint64(110), uint64(50), uint64(106), uint64(101), uint64(5), false, uint64(60), true, 0)
	f.Add(uint64(2), uint64(10), uint64(0), uint64(10), uint64(11), uint64(9), uint64(9), uint64(1), true, uint64(10), true, 3)
	f.Fuzz(func(t *testing.T, epoch, committed, durable, head, tail, rDurable, rCheckpoint, rEpoch uint64, untrusted bool, baseLSN uint64, baseTrusted bool, prior int) {
		v := PrimaryView{Epoch: epoch, Committed: committed, Durable: durable, Head: head, Tail: tail,
			Base: &BaseSnapshot{LSN: baseLSN, Trusted: baseTrusted}}
		if epoch > 1 {
			v.Terms = []Term{{Epoch: 1, First: 1}, {Epoch: epoch, First: committed/2 + 1}}
		}
		r := ReplicaReport{Durable: rDurable, Checkpoint: rCheckpoint, Epoch: rEpoch, Untrusted: untrusted}
		st := State(((prior % 5) + 5) % 5)
		p, err := PlanRecovery(v, r, st)
		if err != nil {
			if !errors.Is(err, ErrInvalidInput) && !errors.Is(err, ErrReplicaEpochNewer) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		checkPlan(t, v, r, st, p)
	})
}

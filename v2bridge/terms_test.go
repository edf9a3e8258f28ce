package v2bridge

import (
	"context"
	"math/rand"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/engine"
	"github.com/weedblock/weedblock/executor"
)

// TestCheckpointedReplicaCaughtUp: a replica whose records all left its WAL
// (checkpointed) still reports the exact epoch of its last record and its
// history, so after an epoch change within the planned history it is
// caught up, not rebuilt (before the term history it was rebuilt: its
// epoch was unknown and the view named two epochs).
func TestCheckpointedReplicaCaughtUp(t *testing.T) {
	svc, addr := startService(t)
	p := primaryVol(t, 1, volOpts{manual: true})
	r := newReplicaVol(t, "r.vol", 1, volOpts{manual: true})
	svc.Register("vol1", r)
	rng := rand.New(rand.NewSource(5))
	writeRandom(t, p, rng, 10, 0, 512)
	rc := newRecovery(t, engine.NewSlots(), p, "r", addr, PeerOptions{})
	wantInSync(t, rc.recover(engine.Unknown, engine.CatchUp, executor.Config{}), 10)
	// Same primary, new epoch: records 11..15 carry epoch 2.
	p.Fence()
	if err := p.Unfence(2, blockvol.RolePrimary, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := r.Unfence(2, blockvol.RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	writeRandom(t, p, rng, 5, 0, 512)
	wantInSync(t, rc.recover(engine.InSync, engine.CatchUp, executor.Config{}), 15)
	writeRandom(t, p, rng, 3, 0, 512)
	if err := r.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if st := r.Status(); st.Tail != 16 || st.Durable != 15 {
		t.Fatalf("replica %+v: its WAL should hold nothing", st)
	}
	tok, rep, v := rc.report() // the view from the primary's own history
	want := []engine.Term{{Epoch: 1, First: 1}, {Epoch: 2, First: 11}}
	if rep.Epoch != 2 || !reflect.DeepEqual(rep.Terms, want) {
		t.Fatalf("report %+v, want epoch 2 and terms %v", rep, want)
	}
	if !reflect.DeepEqual(v.Terms, want) {
		t.Fatalf("view terms %v, want %v", v.Terms, want)
	}
	// A hello that does not ask for the history (an older primary) gets
	// an answer without it, which an older decoder accepts.
	old, err := rc.peer.call(context.Background(), tok, &request{Op: opHello})
	if err != nil || old.HasTerms || old.Terms != nil || old.Epoch != 2 || old.EpochUnknown {
		t.Fatalf("hello without helloTerms: %+v, %v", old, err)
	}
	plan, err := engine.PlanRecovery(v, rep, engine.InSync)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Kind != engine.CatchUp || plan.From != 15 {
		t.Fatalf("planned %v, want catch-up from 15", plan)
	}
	wantInSync(t, rc.run(tok, plan, executor.Config{}), 18)
	sameDevice(t, p, r)
}

// TestDivergedCheckpointedCopyNeverKept: an old primary's copy holds
// records 11..13 of epoch 1 that the new primary (epoch 2 from 11) never
// had, all checkpointed. With no terms given by the caller (the primary's
// own history), the plan sees the divergence at 10 and, the checkpoint
// being beyond it, rebuilds; never a catch-up that would keep 11..13. The
// rebuild gives the replica the primary's history with the base.
func TestDivergedCheckpointedCopyNeverKept(t *testing.T) {
	p2, r, rc := failover(t, true)
	if err := p2.Checkpoint(); err != nil { // the base is at 15: the history comes only with it
		t.Fatal(err)
	}
	tok, rep, v := rc.report()
	if rep.Epoch != 1 || rep.Durable != 13 || rep.Checkpoint != 13 || !reflect.DeepEqual(rep.Terms, []engine.Term{{Epoch: 1, First: 1}}) {
		t.Fatalf("report %+v", rep)
	}
	plan, err := engine.PlanRecovery(v, rep, engine.Unknown)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Kind != engine.Rebuild || !strings.Contains(plan.Reason, "(10, 13] of epoch 1 diverge") {
		t.Fatalf("planned %v, want a rebuild for the divergence after 10", plan)
	}
	wantInSync(t, rc.run(tok, plan, executor.Config{}), 15)
	sameDevice(t, p2, r)
	want := []blockvol.Term{{Epoch: 1, First: 1}, {Epoch: 2, First: 11}}
	if got := r.Terms(); !reflect.DeepEqual(got, want) {
		t.Fatalf("replica terms after the rebuild %v, want %v", got, want)
	}
	if e, ok := r.TermAt(13); !ok || e != 2 {
		t.Fatalf("TermAt(13) = %d, %v after the rebuild", e, ok)
	}
	// The next plan is exact at once: nothing to do.
	_, plan = rc.plan(engine.InSync)
	if plan.Kind != engine.ZeroGap {
		t.Fatalf("after the rebuild: %v", plan)
	}
}

// TestDivergedCopyTruncated: the same divergence with the old primary's
// extra records still above its checkpoint is truncated at the fork (from
// the primary's own history, no terms given), and the dropped writes are
// gone.
func TestDivergedCopyTruncated(t *testing.T) {
	p2, r, rc := failover(t, false)
	tok, plan := rc.plan(engine.Unknown)
	if plan.Kind != engine.Truncate || plan.TruncateTo != 10 {
		t.Fatalf("planned %v, want truncate to 10", plan)
	}
	wantInSync(t, rc.run(tok, plan, executor.Config{}), 15)
	sameDevice(t, p2, r)
	if got, want := r.Terms(), []blockvol.Term{{Epoch: 1, First: 1}, {Epoch: 2, First: 11}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("replica terms %v, want %v", got, want)
	}
}

// TestVerifyCarriesTerms: a rebuild's verify carries the primary's term
// history up to the base; malformed terms fail the verify without
// installing anything; the good one installs the history with the base.
func TestVerifyCarriesTerms(t *testing.T) {
	svc, addr := startService(t)
	prim := primaryVol(t, 1, volOpts{})
	rep := newReplicaVol(t, "r.vol", 2, volOpts{})
	svc.Register("vol1", rep)
	rng := rand.New(rand.NewSource(13))
	writeRandom(t, prim, rng, 20, 0, testSize/bs)
	prim.Fence()
	if err := prim.Unfence(2, blockvol.RolePrimary, time.Time{}); err != nil {
		t.Fatal(err)
	}
	writeRandom(t, prim, rng, 10, 0, testSize/bs)
	if err := prim.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	slots := engine.NewSlots()
	tok, _ := slots.Acquire(engine.ReplicaID{Volume: "vol1", Server: "s2"}, 2, addr)
	defer slots.Release(tok)
	p := NewPeer(slots, prim, PeerOptions{Name: "vol1", Addr: addr})
	defer p.Close()
	if err := p.MarkUntrusted(tok); err != nil {
		t.Fatal(err)
	}
	base, err := p.PinBase(tok, engine.Full, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer base.Pin.Release()
	for off := int64(0); off < base.Size; {
		n, err := p.TransferBase(context.Background(), tok, base, off, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		off += n
	}
	for name, bad := range map[string][]byte{
		"unordered": appendTerms(nil, []blockvol.Term{{Epoch: 1, First: 9}, {Epoch: 2, First: 3}}),
		"truncated": appendTerms(nil, []blockvol.Term{{Epoch: 1, First: 1}})[:10],
	} {
		p.mu.Lock()
		req := &request{Op: opVerify, A: base.LSN, C: uint64(base.Size), Data: bad}
		p.waitAheadLocked()
		req.Sum = p.baseDig.sum()
		_, err := p.callLocked(context.Background(), tok, req)
		p.mu.Unlock()
		if err == nil {
			t.Fatalf("%s: verify with malformed terms accepted", name)
		}
		if st := rep.Status(); !st.Untrusted || st.Checkpoint == base.LSN && base.LSN != 0 {
			t.Fatalf("%s: base installed after a refused verify: %+v", name, st)
		}
	}
	if err := p.VerifyBase(tok, base); err != nil {
		t.Fatal(err)
	}
	var want []blockvol.Term
	for _, tm := range prim.Terms() {
		if tm.First <= base.LSN {
			want = append(want, tm)
		}
	}
	if len(want) != 2 || !reflect.DeepEqual(rep.Terms(), want) {
		t.Fatalf("replica terms %v, primary's up to base %d: %v", rep.Terms(), base.LSN, want)
	}
}

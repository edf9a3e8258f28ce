package v2bridge

import (
	"context"
	"errors"
	"math/rand"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/engine"
	"github.com/weedblock/weedblock/executor"
	"github.com/weedblock/weedblock/replication"
)

func TestCatchUpAfterShortOutage(t *testing.T) {
	svc, addr := startService(t)
	prim := primaryVol(t, 1, volOpts{manual: true})
	rep := newReplicaVol(t, "r.vol", 1, volOpts{})
	if err := svc.Register("vol1", rep); err != nil {
		t.Fatal(err)
	}
	rc := newRecovery(t, engine.NewSlots(), prim, "s2", addr, PeerOptions{})
	rng := rand.New(rand.NewSource(1))
	writeRandom(t, prim, rng, 100, 0, testSize/bs)
	out := rc.recover(engine.Unknown, engine.CatchUp, executor.Config{BatchRecords: 16})
	wantInSync(t, out, prim.Status().Durable)
	sameDevice(t, prim, rep)

	// The outage: the replica misses writes that the WAL still holds.
	writeRandom(t, prim, rng, 40, 0, testSize/bs)
	tok, plan := rc.plan(engine.InSync)
	if plan.Kind != engine.CatchUp || plan.From != out.Achieved {
		t.Fatalf("planned %v, want catch-up from %d", plan, out.Achieved)
	}
	out = rc.run(tok, plan, executor.Config{BatchRecords: 7})
	wantInSync(t, out, prim.Status().Durable)
	if st := rep.Status(); st.Durable != prim.Status().Durable || st.Untrusted {
		t.Fatalf("replica %+v, primary durable %d", st, prim.Status().Durable)
	}
	sameDevice(t, prim, rep)
}

func TestRetentionLostEscalatesToRebuild(t *testing.T) {
	svc, addr := startService(t)
	prim := primaryVol(t, 1, volOpts{wal: 256 << 10, manual: true})
	rep := newReplicaVol(t, "r.vol", 1, volOpts{})
	svc.Register("vol1", rep)
	rc := newRecovery(t, engine.NewSlots(), prim, "s2", addr, PeerOptions{HoldBudget: 64 << 10})
	rng := rand.New(rand.NewSource(2))
	writeRandom(t, prim, rng, 10, 0, 64)
	wantInSync(t, rc.recover(engine.Unknown, engine.CatchUp, executor.Config{}), 10)
	writeRandom(t, prim, rng, 10, 0, 64)
	// While the catch-up runs, the primary takes far more than its WAL
	// holds: the hold is revoked (a lagging replica never wedges it).
	cfg := executor.Config{BatchRecords: 2, OnStep: func(s executor.Step) error {
		if s.Batch == 2 {
			writeRandom(t, prim, rng, 200, 64, testSize/bs)
		}
		return nil
	}}
	out := rc.recover(engine.InSync, engine.CatchUp, cfg)
	if out.Kind != engine.OutcomeNeedsRebuild {
		t.Fatalf("outcome %v, want needs-rebuild", out)
	}
	if st := prim.Status(); st.Tail <= out.Achieved+1 {
		t.Fatalf("primary tail %d still holds %d", st.Tail, out.Achieved+1)
	}
	out = rc.recover(engine.NeedsRebuild, engine.Rebuild, executor.Config{})
	wantInSync(t, out, prim.Status().Durable)
	if rep.Status().Untrusted {
		t.Fatal("replica still untrusted after the rebuild")
	}
	sameDevice(t, prim, rep)
}

// failover builds: old primary p1 (epoch 1) wrote 1..13; replica r got all
// of them, p2 only 1..10; p2 becomes primary of epoch 2 and writes 11..15.
// r is ahead of the committed point with records p2 never had.
func failover(t *testing.T, checkpointR bool) (p2, r *blockvol.Volume, rc *recovery) {
	svc, addr := startService(t)
	p1 := primaryVol(t, 1, volOpts{manual: true})
	r = newReplicaVol(t, "r.vol", 1, volOpts{manual: true})
	p2 = newReplicaVol(t, "p2.vol", 1, volOpts{manual: true})
	svc.Register("vol1", r)
	svc2, addr2 := startService(t)
	svc2.Register("vol1", p2)
	slots := engine.NewSlots()
	toR := newRecovery(t, slots, p1, "r", addr, PeerOptions{})
	toP2 := newRecovery(t, slots, p1, "p2", addr2, PeerOptions{})
	rng := rand.New(rand.NewSource(3))
	writeRandom(t, p1, rng, 10, 0, 512)
	wantInSync(t, toR.recover(engine.Unknown, engine.CatchUp, executor.Config{}), 10)
	wantInSync(t, toP2.recover(engine.Unknown, engine.CatchUp, executor.Config{}), 10)
	writeRandom(t, p1, rng, 3, 900, 1000) // only r gets these
	wantInSync(t, toR.recover(engine.InSync, engine.CatchUp, executor.Config{}), 13)
	if checkpointR {
		if err := r.Checkpoint(); err != nil {
			t.Fatal(err)
		}
	}
	p1.Fence()
	svc2.Unregister("vol1")
	if err := p2.Unfence(2, blockvol.RolePrimary, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := r.Unfence(2, blockvol.RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	writeRandom(t, p2, rng, 5, 0, 512)
	if st := p2.Status(); st.Head != 15 {
		t.Fatalf("p2 head %d", st.Head)
	}
	return p2, r, newRecovery(t, engine.NewSlots(), p2, "r", addr, PeerOptions{})
}

func TestReplicaAheadIsTruncated(t *testing.T) {
	p2, r, rc := failover(t, false)
	terms := []engine.Term{{Epoch: 1, First: 1}, {Epoch: 2, First: 11}}
	tok, plan := rc.plan(engine.Unknown, terms...)
	if plan.Kind != engine.Truncate || plan.TruncateTo != 10 || plan.Target != 15 {
		t.Fatalf("planned %v, want truncate to 10 then catch up to 15", plan)
	}
	gen := r.Status().Generation
	wantInSync(t, rc.run(tok, plan, executor.Config{}), 15)
	st := r.Status()
	if st.Generation <= gen {
		t.Fatalf("generation %d after truncation, was %d", st.Generation, gen)
	}
	if st.Head != 15 || st.Durable != 15 || st.Fenced || st.Role != blockvol.RoleReplica {
		t.Fatalf("replica after truncation: %+v", st)
	}
	// The writes only the old primary had (blocks 900..999) are gone.
	sameDevice(t, p2, r)
	// And stay gone after a restart.
	path := r.Path()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r2, err := blockvol.Open(path, blockvol.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	sameDevice(t, p2, r2)
}

func TestTruncationUnsafeEscalatesToRebuild(t *testing.T) {
	p2, r, rc := failover(t, false)
	terms := []engine.Term{{Epoch: 1, First: 1}, {Epoch: 2, First: 11}}
	tok, plan := rc.plan(engine.Unknown, terms...)
	if plan.Kind != engine.Truncate || plan.TruncateTo != 10 {
		t.Fatalf("planned %v, want truncate to 10", plan)
	}
	// Between the report and the truncation the replica's flusher moved
	// 11..13 into its extent: the truncation is refused, and escalates.
	if err := r.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	out := rc.run(tok, plan, executor.Config{})
	if out.Kind != engine.OutcomeNeedsRebuild {
		t.Fatalf("outcome %v, want needs-rebuild", out)
	}
	if st := r.Status(); st.Head != 13 || st.Fenced {
		t.Fatalf("an unsafe truncation changed the replica: %+v", st)
	}
	// Its last record left the WAL: the report still knows its epoch (the
	// term history), and the plan sees the divergence with the checkpoint
	// beyond it: a rebuild.
	tok3, rep, v3 := rc.report(terms...)
	if rep.Epoch != 1 || rep.Durable != 13 || rep.Checkpoint != 13 || len(rep.Terms) != 1 {
		t.Fatalf("report %+v", rep)
	}
	if p3, err := engine.PlanRecovery(v3, rep, engine.Unknown); err != nil || p3.Kind != engine.Rebuild {
		t.Fatalf("plan %v, %v; want a rebuild", p3, err)
	}
	rc.slots.Release(tok3)
	// The I/O refuses on its own too.
	tok2, err := rc.slots.Acquire(rc.id, 2, rc.addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.peer.Truncate(tok2, 10); !errors.Is(err, executor.ErrTruncationUnsafe) {
		t.Fatalf("truncate below checkpoint: %v", err)
	}
	rc.slots.Release(tok2)
	out = rc.recover(engine.NeedsRebuild, engine.Rebuild, executor.Config{}, terms...)
	wantInSync(t, out, 15)
	sameDevice(t, p2, r)
}

func TestEpochBumpCancelsAndReleases(t *testing.T) {
	for _, kind := range []engine.Kind{engine.CatchUp, engine.Rebuild} {
		t.Run(kind.String(), func(t *testing.T) {
			svc, addr := startService(t)
			prim := primaryVol(t, 1, volOpts{manual: true})
			rep := newReplicaVol(t, "r.vol", 1, volOpts{})
			svc.Register("vol1", rep)
			rc := newRecovery(t, engine.NewSlots(), prim, "s2", addr, PeerOptions{})
			writeRandom(t, prim, rand.New(rand.NewSource(4)), 50, 0, testSize/bs)
			prior := engine.Unknown
			if kind == engine.Rebuild {
				prior = engine.NeedsRebuild
			}
			var tok engine.Token
			var bumped bool
			cfg := executor.Config{BatchRecords: 4, BatchBytes: 256 << 10, OnStep: func(s executor.Step) error {
				if s.Batch == 3 {
					// The master moves to epoch 2: the live attempt is cancelled.
					if _, err := rc.slots.Acquire(rc.id, 2, rc.addr); err != nil {
						return err
					}
					bumped = true
				}
				return nil
			}}
			tok, plan := rc.plan(prior)
			if plan.Kind != kind {
				t.Fatalf("planned %v", plan)
			}
			out := rc.run(tok, plan, cfg)
			if !bumped || out.Kind != engine.OutcomeAborted {
				t.Fatalf("outcome %v (bumped %v), want aborted", out, bumped)
			}
			// The stale token is refused by the I/O itself.
			if _, err := rc.peer.StreamWAL(context.Background(), tok, 0, 1); !errors.Is(err, engine.ErrStaleToken) {
				t.Fatalf("stream with a cancelled token: %v", err)
			}
			if kind == engine.CatchUp && rep.Status().Head >= prim.Status().Head {
				t.Fatal("the catch-up finished despite the cancel")
			}
		})
	}
}

func TestStaleTrafficRefused(t *testing.T) {
	svc, addr := startService(t)
	prim := primaryVol(t, 3, volOpts{manual: true})
	rep := newReplicaVol(t, "r.vol", 3, volOpts{})
	svc.Register("vol1", rep)
	writeRandom(t, prim, rand.New(rand.NewSource(5)), 5, 0, 64)
	id := engine.ReplicaID{Volume: "vol1", Server: "s2"}

	// An old primary (epoch 2) is refused, and nothing is applied.
	old := engine.NewSlots()
	tok, _ := old.Acquire(id, 2, addr)
	p := NewPeer(old, prim, PeerOptions{Name: "vol1", Addr: addr})
	defer p.Close()
	if _, err := p.Report(context.Background(), tok); !errors.Is(err, replication.ErrStaleEpoch) {
		t.Fatalf("report at epoch 2: %v", err)
	}
	if _, err := p.StreamWAL(context.Background(), tok, 0, 5); !errors.Is(err, replication.ErrStaleEpoch) {
		t.Fatalf("stream at epoch 2: %v", err)
	}
	if err := p.MarkUntrusted(tok); !errors.Is(err, replication.ErrStaleEpoch) {
		t.Fatalf("begin rebuild at epoch 2: %v", err)
	}
	// An epoch the master has not assigned to the replica yet is refused.
	ahead, _ := old.Acquire(engine.ReplicaID{Volume: "vol1", Server: "s3"}, 4, addr)
	if err := p.Truncate(ahead, 0); !errors.Is(err, replication.ErrEpochAhead) {
		t.Fatalf("truncate at epoch 4: %v", err)
	}
	if st := rep.Status(); st.Head != 0 || st.Untrusted || st.Fenced {
		t.Fatalf("refused traffic changed the replica: %+v", st)
	}

	// The replica refuses an attempt older than one it has seen.
	cur := engine.NewSlots()
	t1, _ := cur.Acquire(id, 3, addr)
	cur.Release(t1)
	t2, _ := cur.Acquire(id, 3, addr)
	pc := NewPeer(cur, prim, PeerOptions{Name: "vol1", Addr: addr})
	defer pc.Close()
	if _, err := pc.StreamWAL(context.Background(), t2, 0, 2); err != nil {
		t.Fatal(err)
	}
	other := engine.NewSlots() // e.g. a restarted primary process
	t3, _ := other.Acquire(id, 3, addr)
	if t3.Attempt >= t2.Attempt {
		t.Fatalf("attempts %d, %d", t3.Attempt, t2.Attempt)
	}
	po := NewPeer(other, prim, PeerOptions{Name: "vol1", Addr: addr})
	defer po.Close()
	if _, err := po.StreamWAL(context.Background(), t3, 2, 5); !errors.Is(err, engine.ErrStaleToken) {
		t.Fatalf("stream from an older attempt: %v", err)
	}
	if st := rep.Status(); st.Head != 2 {
		t.Fatalf("replica head %d, want 2", st.Head)
	}
	// A stale local token never reaches the wire.
	if _, err := pc.StreamWAL(context.Background(), t1, 0, 5); !errors.Is(err, engine.ErrStaleToken) {
		t.Fatalf("stream with a released token: %v", err)
	}
}

// writer writes to v until stopped.
type writer struct {
	stop chan struct{}
	done chan error
}

func startWriter(v *blockvol.Volume, seed int64) *writer {
	w := &writer{stop: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		rng := rand.New(rand.NewSource(seed))
		p := make([]byte, 4*bs)
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				w.done <- v.Flush()
				return
			default:
			}
			n := int64(1 + rng.Intn(4))
			rng.Read(p[:n*bs])
			if err := v.WriteAt(p[:n*bs], rng.Int63n(testSize/bs-n)*bs, false); err != nil {
				w.done <- err
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	return w
}

func (w *writer) finish(t testing.TB) {
	t.Helper()
	close(w.stop)
	if err := <-w.done; err != nil {
		t.Fatal(err)
	}
}

func TestRebuildWithConcurrentWrites(t *testing.T) {
	svc, addr := startService(t)
	prim := primaryVol(t, 1, volOpts{wal: 8 << 20})
	rep := newReplicaVol(t, "r.vol", 1, volOpts{})
	svc.Register("vol1", rep)
	rc := newRecovery(t, engine.NewSlots(), prim, "s2", addr, PeerOptions{})
	writeRandom(t, prim, rand.New(rand.NewSource(6)), 300, 0, testSize/bs)
	w := startWriter(prim, 7)
	tok, plan := rc.plan(engine.NeedsRebuild)
	if plan.Kind != engine.Rebuild {
		t.Fatalf("planned %v", plan)
	}
	// Keep what comes after the target for the catch-up that follows (in
	// production the steady-state cursor's hold does this).
	after, err := prim.Hold(plan.Target+1, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer after.Release()
	rc.keepHolds = 1
	out := rc.run(tok, plan, executor.Config{BatchBytes: 128 << 10})
	w.finish(t)
	wantInSync(t, out, plan.Target)
	if st := rep.Status(); st.Untrusted || st.Durable < out.Achieved {
		t.Fatalf("replica after rebuild: %+v, achieved %d", st, out.Achieved)
	}
	if prim.Status().Head <= plan.Target {
		t.Fatal("no write raced with the rebuild")
	}
	// The writes after the rebuild's target follow by catch-up.
	tok, plan = rc.plan(engine.InSync)
	if plan.Kind != engine.CatchUp && plan.Kind != engine.ZeroGap {
		t.Fatalf("after the rebuild planned %v", plan)
	}
	wantInSync(t, rc.run(tok, plan, executor.Config{}), prim.Status().Durable)
	sameDevice(t, prim, rep)
}

func TestSecondRebuildAfterInterrupted(t *testing.T) {
	svc, addr := startService(t)
	prim := primaryVol(t, 1, volOpts{})
	rep := newReplicaVol(t, "r.vol", 1, volOpts{})
	svc.Register("vol1", rep)
	rc := newRecovery(t, engine.NewSlots(), prim, "s2", addr, PeerOptions{})
	writeRandom(t, prim, rand.New(rand.NewSource(8)), 200, 0, testSize/bs)
	cfg := executor.Config{BatchBytes: 256 << 10, OnStep: func(s executor.Step) error {
		if s.Phase == executor.PhaseTransfer && s.Bytes >= 1<<20 {
			return errors.New("injected: the link went down")
		}
		return nil
	}}
	out := rc.recover(engine.NeedsRebuild, engine.Rebuild, cfg)
	if out.Kind != engine.OutcomeAborted {
		t.Fatalf("outcome %v, want aborted", out)
	}
	if !rep.Status().Untrusted {
		t.Fatal("an interrupted rebuild left the replica trusted")
	}
	// The replica server restarts: the flag is durable.
	svc.Unregister("vol1")
	path := rep.Path()
	if err := rep.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := blockvol.Open(path, blockvol.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer rep.Close()
	if !rep.Status().Untrusted {
		t.Fatal("the untrusted flag did not survive a restart")
	}
	if err := rep.Unfence(1, blockvol.RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	svc.Register("vol1", rep)
	// The replica says it is untrusted: the planner rebuilds it again.
	writeRandom(t, prim, rand.New(rand.NewSource(13)), 50, 0, testSize/bs)
	out = rc.recover(engine.Aborted, engine.Rebuild, executor.Config{})
	wantInSync(t, out, prim.Status().Durable)
	if rep.Status().Untrusted {
		t.Fatal("replica still untrusted")
	}
	sameDevice(t, prim, rep)
}

func TestWipedReplicaRebuilt(t *testing.T) {
	svc, addr := startService(t)
	prim := primaryVol(t, 1, volOpts{wal: 256 << 10})
	rep := newReplicaVol(t, "r.vol", 1, volOpts{})
	svc.Register("vol1", rep)
	rc := newRecovery(t, engine.NewSlots(), prim, "s2", addr, PeerOptions{})
	rng := rand.New(rand.NewSource(9))
	writeRandom(t, prim, rng, 20, 0, testSize/bs)
	tok, plan := rc.plan(engine.Unknown)
	wantInSync(t, rc.run(tok, plan, executor.Config{}), prim.Status().Durable)
	sameDevice(t, prim, rep)

	// The disk is replaced: a new, empty volume file at the same path.
	path := rep.Path()
	svc.Unregister("vol1")
	if err := rep.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	fresh, err := blockvol.Create(path, testSize, blockvol.Options{WALSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	if err := fresh.Unfence(1, blockvol.RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	svc.Register("vol1", fresh)
	writeRandom(t, prim, rng, 100, 0, testSize/bs)
	if err := prim.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	out := rc.recover(engine.Unknown, engine.Rebuild, executor.Config{})
	wantInSync(t, out, prim.Status().Durable)
	sameDevice(t, prim, fresh)
}

func TestRF3TwoReplicasRecoverAtOnce(t *testing.T) {
	svc, addr := startService(t)
	prim := primaryVol(t, 1, volOpts{wal: 8 << 20})
	r1 := newReplicaVol(t, "r1.vol", 1, volOpts{})
	r2 := newReplicaVol(t, "r2.vol", 1, volOpts{})
	svc2, addr2 := startService(t)
	svc.Register("vol1", r1)
	svc2.Register("vol1", r2)
	slots := engine.NewSlots()
	rc1 := newRecovery(t, slots, prim, "s2", addr, PeerOptions{})
	rc2 := newRecovery(t, slots, prim, "s3", addr2, PeerOptions{})
	writeRandom(t, prim, rand.New(rand.NewSource(10)), 300, 0, testSize/bs)
	w := startWriter(prim, 11)
	tok1, plan1 := rc1.plan(engine.NeedsRebuild)
	tok2, plan2 := rc2.plan(engine.NeedsRebuild)
	var wg sync.WaitGroup
	var out1, out2 engine.Outcome
	wg.Add(2)
	go func() { defer wg.Done(); out1 = rc1.run(tok1, plan1, executor.Config{BatchBytes: 256 << 10}) }()
	go func() { defer wg.Done(); out2 = rc2.run(tok2, plan2, executor.Config{BatchBytes: 512 << 10}) }()
	wg.Wait()
	w.finish(t)
	wantInSync(t, out1, plan1.Target)
	wantInSync(t, out2, plan2.Target)
	for _, rc := range []*recovery{rc1, rc2} {
		tok, plan := rc.plan(engine.InSync)
		wantInSync(t, rc.run(tok, plan, executor.Config{}), prim.Status().Durable)
	}
	sameDevice(t, prim, r1)
	sameDevice(t, prim, r2)
}

func TestSnapshotBaseUnavailable(t *testing.T) {
	prim := primaryVol(t, 1, volOpts{})
	slots := engine.NewSlots()
	tok, _ := slots.Acquire(engine.ReplicaID{Volume: "vol1", Server: "s2"}, 1, "x")
	p := NewPeer(slots, prim, PeerOptions{Name: "vol1", Addr: "127.0.0.1:1"})
	defer p.Close()
	if _, err := p.PinBase(tok, engine.Snapshot, 5); !errors.Is(err, executor.ErrBaseUnavailable) {
		t.Fatalf("snapshot base: %v", err)
	}
}

func TestBaseMismatchRefused(t *testing.T) {
	svc, addr := startService(t)
	prim := primaryVol(t, 1, volOpts{})
	rep := newReplicaVol(t, "r.vol", 1, volOpts{})
	svc.Register("vol1", rep)
	writeRandom(t, prim, rand.New(rand.NewSource(12)), 50, 0, testSize/bs)
	slots := engine.NewSlots()
	tok, _ := slots.Acquire(engine.ReplicaID{Volume: "vol1", Server: "s2"}, 1, addr)
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
	// Chunks must follow each other.
	if _, err := p.TransferBase(context.Background(), tok, base, 8192, 4096); err == nil {
		t.Fatal("a chunk out of order was sent")
	}
	for off := int64(0); off < base.Size; {
		n, err := p.TransferBase(context.Background(), tok, base, off, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		off += n
	}
	p.mu.Lock()
	p.waitAheadLocked()
	p.baseDig.h.Write([]byte{1}) // the digest no longer matches what was sent
	p.mu.Unlock()
	if err := p.VerifyBase(tok, base); !errors.Is(err, executor.ErrBaseMismatch) {
		t.Fatalf("verify with a wrong digest: %v", err)
	}
	if st := rep.Status(); !st.Untrusted || st.Head != 0 {
		t.Fatalf("replica after a refused base: %+v", st)
	}
	// Committing without a verified base is refused.
	if err := p.Commit(tok, base.LSN); err == nil {
		t.Fatal("commit of an unverified base accepted")
	}
	if !rep.Status().Untrusted {
		t.Fatal("replica trusted without a verified base")
	}
}

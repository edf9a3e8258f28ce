package v2bridge

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/engine"
	"github.com/weedblock/weedblock/executor"
)

// snapModel is the LSN oracle of the snapshot tests: every write of the
// one writer with the LSN it got (the primary's head after it), so the
// device at any LSN can be rebuilt.
type snapModel struct {
	mu     sync.Mutex
	writes []snapWrite
}

type snapWrite struct {
	lsn  uint64
	off  int64
	data []byte
}

// write does one write of 1-4 blocks (one WAL record) and records it.
func (m *snapModel) write(v *blockvol.Volume, rng *rand.Rand) error {
	n := int64(1 + rng.Intn(4))
	p := make([]byte, n*bs)
	rng.Read(p)
	off := rng.Int63n(testSize/bs-n) * bs
	if err := v.WriteAt(p, off, false); err != nil {
		return err
	}
	m.mu.Lock()
	m.writes = append(m.writes, snapWrite{lsn: v.Status().Head, off: off, data: p})
	m.mu.Unlock()
	return nil
}

func (m *snapModel) at(lsn uint64) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	img := make([]byte, testSize)
	for _, w := range m.writes {
		if w.lsn <= lsn {
			copy(img[w.off:], w.data)
		}
	}
	return img
}

// modelWriter writes to v through m until stopped.
type modelWriter struct {
	stop chan struct{}
	done chan error
}

func startModelWriter(v *blockvol.Volume, m *snapModel, seed int64) *modelWriter {
	w := &modelWriter{stop: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		rng := rand.New(rand.NewSource(seed))
		for {
			select {
			case <-w.stop:
				w.done <- v.Flush()
				return
			default:
			}
			if err := m.write(v, rng); err != nil {
				w.done <- err
				return
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	return w
}

func (w *modelWriter) finish(t testing.TB) {
	t.Helper()
	close(w.stop)
	if err := <-w.done; err != nil {
		t.Fatal(err)
	}
}

func deviceImage(t testing.TB, v *blockvol.Volume) []byte {
	t.Helper()
	img := make([]byte, v.Size())
	if err := v.ReadAt(img, 0); err != nil {
		t.Fatal(err)
	}
	return img
}

func sameBytes(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: differs at byte %d (block %d)", what, i, i/bs)
		}
	}
}

// snapshotImagePath finds the image file that holds info.
func snapshotImagePath(t testing.TB, v *blockvol.Volume, info blockvol.SnapshotInfo) string {
	t.Helper()
	for i := 0; i < 2; i++ {
		path := fmt.Sprintf("%s.snap.%d", v.Path(), i)
		b, err := os.ReadFile(path)
		if err == nil && sha256.Sum256(b) == info.SHA256 {
			return path
		}
	}
	t.Fatalf("no image file of %s holds snapshot %d", v.Path(), info.LSN)
	return ""
}

func corruptFile(t testing.TB, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{0xde, 0xad, 0xbe, 0xef}, off); err != nil {
		t.Fatal(err)
	}
}

// TestSnapshotTailRebuildWithConcurrentWrites: a rebuild planned from the
// primary's base snapshot ships the snapshot image and the WAL after it
// while a writer keeps writing; the replica is then exactly the LSN
// oracle's device at its head, and after the catch-up equal to the
// primary.
func TestSnapshotTailRebuildWithConcurrentWrites(t *testing.T) {
	svc, addr := startService(t)
	prim := primaryVol(t, 1, volOpts{wal: 32 << 20})
	rep := newReplicaVol(t, "r.vol", 1, volOpts{})
	svc.Register("vol1", rep)
	rc := newRecovery(t, engine.NewSlots(), prim, "s2", addr, PeerOptions{})
	m := &snapModel{}
	rng := rand.New(rand.NewSource(21))
	for i := 0; i < 300; i++ {
		if err := m.write(prim, rng); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := prim.CreateSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100; i++ { // the tail after the snapshot
		if err := m.write(prim, rng); err != nil {
			t.Fatal(err)
		}
	}
	if err := prim.Flush(); err != nil {
		t.Fatal(err)
	}
	w := startModelWriter(prim, m, 22)
	tok, plan := rc.plan(engine.NeedsRebuild)
	if plan.Kind != engine.Rebuild || plan.Source != engine.Snapshot || plan.BaseLSN != snap.LSN || plan.Target <= snap.LSN {
		w.finish(t)
		t.Fatalf("planned %v, snapshot at %d", plan, snap.LSN)
	}
	after, err := prim.Hold(plan.Target+1, 0)
	if err != nil {
		w.finish(t)
		t.Fatal(err)
	}
	defer after.Release()
	rc.keepHolds = 2 // that one and the snapshot's own
	out := rc.run(tok, plan, executor.Config{BatchBytes: 256 << 10})
	w.finish(t)
	wantInSync(t, out, plan.Target)
	st := rep.Status()
	if st.Untrusted || st.Durable < out.Achieved {
		t.Fatalf("replica after the snapshot rebuild: %+v, achieved %d", st, out.Achieved)
	}
	// The snapshot image was exact: no replay beyond the executor's target
	// was needed, and the replica is the oracle's device at its head.
	if st.Head != out.Achieved {
		t.Fatalf("replica head %d, achieved %d", st.Head, out.Achieved)
	}
	sameBytes(t, fmt.Sprintf("replica at %d", st.Head), deviceImage(t, rep), m.at(st.Head))
	verified := false
	for _, e := range rc.log.Events(rc.id) {
		if e.Attempt == tok.Attempt && strings.Contains(e.Detail, fmt.Sprintf("base snapshot %d verified", snap.LSN)) {
			verified = true
		}
	}
	if !verified {
		t.Fatalf("no event says snapshot %d was the base: %v", snap.LSN, rc.log.Events(rc.id))
	}
	if prim.Status().Head <= plan.Target {
		t.Fatal("no write raced with the rebuild")
	}
	tok, plan = rc.plan(engine.InSync)
	if plan.Kind != engine.CatchUp && plan.Kind != engine.ZeroGap {
		t.Fatalf("after the rebuild planned %v", plan)
	}
	wantInSync(t, rc.run(tok, plan, executor.Config{}), prim.Status().Durable)
	sameDevice(t, prim, rep)
	sameBytes(t, "primary", deviceImage(t, prim), m.at(prim.Status().Head))
}

// TestSnapshotDriftRejected: a snapshot replaced after planning is not the
// base the plan bound: the attempt escalates, nothing is trusted on the
// replica and every pin is released; the next plan uses the new snapshot.
func TestSnapshotDriftRejected(t *testing.T) {
	svc, addr := startService(t)
	prim := primaryVol(t, 1, volOpts{wal: 8 << 20})
	rep := newReplicaVol(t, "r.vol", 1, volOpts{})
	svc.Register("vol1", rep)
	rc := newRecovery(t, engine.NewSlots(), prim, "s2", addr, PeerOptions{})
	rng := rand.New(rand.NewSource(23))
	writeRandom(t, prim, rng, 100, 0, testSize/bs)
	first, err := prim.CreateSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	rc.keepHolds = 1 // the snapshot's own
	writeRandom(t, prim, rng, 50, 0, testSize/bs)
	tok, plan := rc.plan(engine.NeedsRebuild)
	if plan.Source != engine.Snapshot || plan.BaseLSN != first.LSN {
		t.Fatalf("planned %v, snapshot at %d", plan, first.LSN)
	}
	writeRandom(t, prim, rng, 50, 0, testSize/bs)
	second, err := prim.CreateSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	if second.LSN == first.LSN {
		t.Fatal("the replacement snapshot has the same LSN")
	}
	out := rc.run(tok, plan, executor.Config{})
	if out.Kind != engine.OutcomeNeedsRebuild || !strings.Contains(out.Reason, "changed since planning") {
		t.Fatalf("outcome with a drifted snapshot: %v", out)
	}
	if st := rep.Status(); !st.Untrusted || st.Head != 0 {
		t.Fatalf("replica after a refused snapshot base: %+v", st)
	}
	// PinBase itself: the typed error, which the executor escalates on.
	tok2, err := rc.slots.Acquire(rc.id, 1, addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rc.peer.PinBase(tok2, engine.Snapshot, first.LSN); !errors.Is(err, ErrSnapshotDrifted) || !errors.Is(err, executor.ErrBaseUnavailable) {
		t.Fatalf("pin of a replaced snapshot: %v", err)
	}
	rc.slots.Release(tok2)
	// Deleted after planning: the same.
	tok, plan = rc.plan(engine.NeedsRebuild)
	if plan.Source != engine.Snapshot || plan.BaseLSN != second.LSN {
		t.Fatalf("replanned %v, snapshot at %d", plan, second.LSN)
	}
	if err := prim.DeleteSnapshot(); err != nil {
		t.Fatal(err)
	}
	rc.keepHolds = 0
	if out := rc.run(tok, plan, executor.Config{}); out.Kind != engine.OutcomeNeedsRebuild {
		t.Fatalf("outcome with a deleted snapshot: %v", out)
	}
	if !rep.Status().Untrusted {
		t.Fatal("replica trusted after a refused base")
	}
	// A new snapshot: the replan uses it and the rebuild completes.
	third, err := prim.CreateSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	rc.keepHolds = 1
	tok, plan = rc.plan(engine.NeedsRebuild)
	if plan.Source != engine.Snapshot || plan.BaseLSN != third.LSN {
		t.Fatalf("replanned %v, snapshot at %d", plan, third.LSN)
	}
	wantInSync(t, rc.run(tok, plan, executor.Config{}), plan.Target)
	sameDevice(t, prim, rep)
}

// TestSnapshotCorruptRejected: a snapshot image that no longer hashes to
// its manifest is never installed — damaged before the pin or under it,
// the bytes sent hash differently from the manifest: the primary marks the
// snapshot untrusted and fails the verification, the replica stays
// untrusted, and the next plan rebuilds from the full extent. A snapshot
// whose manifest is untrusted is refused at the pin.
func TestSnapshotCorruptRejected(t *testing.T) {
	svc, addr := startService(t)
	prim := primaryVol(t, 1, volOpts{wal: 8 << 20})
	rep := newReplicaVol(t, "r.vol", 1, volOpts{})
	svc.Register("vol1", rep)
	rc := newRecovery(t, engine.NewSlots(), prim, "s2", addr, PeerOptions{})
	rng := rand.New(rand.NewSource(24))
	writeRandom(t, prim, rng, 200, 0, testSize/bs)
	snap, err := prim.CreateSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	rc.keepHolds = 1 // the snapshot's own
	writeRandom(t, prim, rng, 20, 0, testSize/bs)

	// Corrupt before the pin.
	img := snapshotImagePath(t, prim, snap)
	corruptFile(t, img, 3*bs+100)
	tok, plan := rc.plan(engine.NeedsRebuild)
	if plan.Source != engine.Snapshot {
		t.Fatalf("planned %v", plan)
	}
	out := rc.run(tok, plan, executor.Config{})
	if out.Kind != engine.OutcomeNeedsRebuild || !strings.Contains(out.Reason, "verification failed") {
		t.Fatalf("outcome with a corrupt snapshot: %v", out)
	}
	if st := rep.Status(); !st.Untrusted || st.Head != 0 {
		t.Fatalf("replica after a corrupt snapshot: %+v", st)
	}
	if info, ok := prim.Snapshot(); !ok || info.Trusted {
		t.Fatalf("corrupt snapshot still trusted: %+v", info)
	}
	// Untrusted now: refused at the pin.
	tok2, err := rc.slots.Acquire(rc.id, 1, addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rc.peer.PinBase(tok2, engine.Snapshot, snap.LSN); !errors.Is(err, ErrSnapshotUntrusted) || !errors.Is(err, executor.ErrBaseUnavailable) {
		t.Fatalf("pin of an untrusted snapshot: %v", err)
	}
	rc.slots.Release(tok2)
	tok, plan = rc.plan(engine.NeedsRebuild)
	if plan.Kind != engine.Rebuild || plan.Source != engine.Full {
		t.Fatalf("with an untrusted snapshot planned %v", plan)
	}
	wantInSync(t, rc.run(tok, plan, executor.Config{}), plan.Target)
	sameDevice(t, prim, rep)

	// Corrupt under the pin, after the first batch was sent.
	snap, err = prim.CreateSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	writeRandom(t, prim, rng, 20, 0, testSize/bs)
	img = snapshotImagePath(t, prim, snap)
	tok, plan = rc.plan(engine.NeedsRebuild)
	if plan.Source != engine.Snapshot || plan.BaseLSN != snap.LSN {
		t.Fatalf("planned %v", plan)
	}
	corrupted := false
	cfg := executor.Config{BatchBytes: 512 << 10, OnStep: func(s executor.Step) error {
		if s.Phase == executor.PhaseTransfer && s.Bytes > 0 && !corrupted {
			corrupted = true
			corruptFile(t, img, testSize-bs)
		}
		return nil
	}}
	out = rc.run(tok, plan, cfg)
	if !corrupted || out.Kind != engine.OutcomeNeedsRebuild || !strings.Contains(out.Reason, "verification failed") {
		t.Fatalf("outcome with a snapshot changed under the pin (corrupted %v): %v", corrupted, out)
	}
	if st := rep.Status(); !st.Untrusted {
		t.Fatalf("replica after a base that hashed differently: %+v", st)
	}
	if info, ok := prim.Snapshot(); !ok || info.Trusted {
		t.Fatalf("snapshot changed under the pin still trusted: %+v", info)
	}
}

// TestSnapshotTwoReplicasAtOnce: two replicas rebuild from the same
// snapshot at the same time (RF=3); both end equal to the primary.
func TestSnapshotTwoReplicasAtOnce(t *testing.T) {
	svc, addr := startService(t)
	svc2, addr2 := startService(t)
	prim := primaryVol(t, 1, volOpts{wal: 8 << 20})
	r1 := newReplicaVol(t, "r1.vol", 1, volOpts{})
	r2 := newReplicaVol(t, "r2.vol", 1, volOpts{})
	svc.Register("vol1", r1)
	svc2.Register("vol1", r2)
	slots := engine.NewSlots()
	rc1 := newRecovery(t, slots, prim, "s2", addr, PeerOptions{})
	rc2 := newRecovery(t, slots, prim, "s3", addr2, PeerOptions{})
	rng := rand.New(rand.NewSource(25))
	writeRandom(t, prim, rng, 200, 0, testSize/bs)
	snap, err := prim.CreateSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	rc1.keepHolds, rc2.keepHolds = 1, 1 // the snapshot's own
	writeRandom(t, prim, rng, 50, 0, testSize/bs)
	tok1, plan1 := rc1.plan(engine.NeedsRebuild)
	tok2, plan2 := rc2.plan(engine.NeedsRebuild)
	for _, p := range []engine.Plan{plan1, plan2} {
		if p.Source != engine.Snapshot || p.BaseLSN != snap.LSN {
			t.Fatalf("planned %v", p)
		}
	}
	var wg sync.WaitGroup
	var out1, out2 engine.Outcome
	wg.Add(2)
	go func() { defer wg.Done(); out1 = rc1.run(tok1, plan1, executor.Config{BatchBytes: 256 << 10}) }()
	go func() { defer wg.Done(); out2 = rc2.run(tok2, plan2, executor.Config{BatchBytes: 1 << 20}) }()
	wg.Wait()
	wantInSync(t, out1, plan1.Target)
	wantInSync(t, out2, plan2.Target)
	sameDevice(t, prim, r1)
	sameDevice(t, prim, r2)
	// The image is not held open after the rebuilds: a new snapshot can
	// take either slot.
	for i := 0; i < 2; i++ {
		if _, err := prim.CreateSnapshot(); err != nil {
			t.Fatal(err)
		}
	}
}

// BenchmarkSnapshotRebuild: a rebuild from the primary's base snapshot of
// a fully written 128 MiB volume plus a 4 MiB WAL tail after it (MB/s of
// volume size), beside a plain file copy (benchRecovery, bench_test.go).
// At 256 MiB it measured the same MB/s as BenchmarkRebuild's full base.
func BenchmarkSnapshotRebuild(b *testing.B) {
	const size = 4 * benchBytes // 128 MiB: fixed costs (the tail, the commit) stay small
	prim := primaryVol(b, 1, volOpts{size: size, wal: 32 << 20})
	fillVolume(b, prim, 5)
	if _, err := prim.CreateSnapshot(); err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewSource(6))
	p := make([]byte, 64<<10)
	for i := 0; i < 64; i++ {
		rng.Read(p)
		if err := prim.WriteAt(p, rng.Int63n(size/int64(len(p)))*int64(len(p)), false); err != nil {
			b.Fatal(err)
		}
	}
	if err := prim.Flush(); err != nil {
		b.Fatal(err)
	}
	if _, ok := prim.SnapshotBase(); !ok {
		b.Fatal("the snapshot is no rebuild base")
	}
	benchRecovery(b, engine.Rebuild, prim, size, 0)
	if _, ok := prim.SnapshotBase(); !ok {
		b.Fatal("the snapshot stopped being a base during the benchmark: the figure is a full rebuild's")
	}
}

package v2bridge

import (
	"bytes"
	"context"
	"math/rand"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/engine"
	"github.com/weedblock/weedblock/executor"
)

const (
	testSize = 4 << 20
	bs       = 4096
)

// startService serves recovery on a loopback listener until the test ends.
func startService(t testing.TB) (*Service, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewService()
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return s, l.Addr().String()
}

type volOpts struct {
	size   int64
	wal    int64
	manual bool
}

func createVol(t testing.TB, name string, o volOpts) *blockvol.Volume {
	t.Helper()
	if o.size == 0 {
		o.size = testSize
	}
	if o.wal == 0 {
		o.wal = 4 << 20
	}
	v, err := blockvol.Create(filepath.Join(t.TempDir(), name), o.size, blockvol.Options{WALSize: o.wal, ManualFlush: o.manual, FlushInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

func primaryVol(t testing.TB, epoch uint64, o volOpts) *blockvol.Volume {
	t.Helper()
	v := createVol(t, "primary.vol", o)
	if err := v.Unfence(epoch, blockvol.RolePrimary, time.Time{}); err != nil {
		t.Fatal(err)
	}
	return v
}

func newReplicaVol(t testing.TB, name string, epoch uint64, o volOpts) *blockvol.Volume {
	t.Helper()
	v := createVol(t, name, o)
	if err := v.Unfence(epoch, blockvol.RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	return v
}

// writeRandom appends n random writes (some trims and zeroes) of 1-4 blocks
// in blocks [lo, hi) and flushes.
func writeRandom(t testing.TB, v *blockvol.Volume, rng *rand.Rand, n int, lo, hi int64) {
	t.Helper()
	for i := 0; i < n; i++ {
		blocks := int64(1 + rng.Intn(4))
		lba := lo + rng.Int63n(hi-lo-blocks+1)
		var err error
		switch k := rng.Intn(10); {
		case k == 0:
			err = v.Trim(lba*bs, blocks*bs)
		case k == 1:
			err = v.WriteZeroes(lba*bs, blocks*bs, false)
		default:
			p := make([]byte, blocks*bs)
			rng.Read(p)
			err = v.WriteAt(p, lba*bs, false)
		}
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
}

// sameDevice compares two volumes byte for byte.
func sameDevice(t testing.TB, a, b *blockvol.Volume) {
	t.Helper()
	if a.Size() != b.Size() {
		t.Fatalf("sizes %d and %d", a.Size(), b.Size())
	}
	pa, pb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); off < a.Size(); off += int64(len(pa)) {
		if err := a.ReadAt(pa, off); err != nil {
			t.Fatal(err)
		}
		if err := b.ReadAt(pb, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(pa, pb) {
			for i := range pa {
				if pa[i] != pb[i] {
					t.Fatalf("devices differ at byte %d (block %d)", off+int64(i), (off+int64(i))/bs)
				}
			}
		}
	}
}

// recovery is one replica of a primary, with its peer.
type recovery struct {
	t     testing.TB
	slots *engine.Slots
	log   *engine.Log
	id    engine.ReplicaID
	addr  string
	peer  *Peer
	prim  *blockvol.Volume
	// keepHolds: holds the test itself keeps on the primary
	keepHolds int
}

func newRecovery(t testing.TB, slots *engine.Slots, prim *blockvol.Volume, server, addr string, o PeerOptions) *recovery {
	o.Name, o.Addr = "vol1", addr
	p := NewPeer(slots, prim, o)
	t.Cleanup(func() { p.Close() })
	return &recovery{t: t, slots: slots, log: engine.NewLog(1000, nil, nil), id: engine.ReplicaID{Volume: "vol1", Server: server}, addr: addr, peer: p, prim: prim}
}

// plan acquires a token, asks the replica for its report and plans.
func (r *recovery) plan(prior engine.State, terms ...engine.Term) (engine.Token, engine.Plan) {
	r.t.Helper()
	tok, rep, v := r.report(terms...)
	plan, err := engine.PlanRecovery(v, rep, prior)
	if err != nil {
		r.t.Fatalf("plan for %+v with %+v: %v", v, rep, err)
	}
	return tok, plan
}

// report acquires a token, takes the primary's view and the replica's
// report.
func (r *recovery) report(terms ...engine.Term) (engine.Token, engine.ReplicaReport, engine.PrimaryView) {
	r.t.Helper()
	tok, err := r.slots.Acquire(r.id, r.prim.Status().Epoch, r.addr)
	if err != nil {
		r.t.Fatal(err)
	}
	v, err := r.peer.View(tok, terms)
	if err != nil {
		r.t.Fatal(err)
	}
	rep, err := r.peer.Report(context.Background(), tok)
	if err != nil {
		r.t.Fatal(err)
	}
	return tok, rep, v
}

func (r *recovery) run(tok engine.Token, plan engine.Plan, cfg executor.Config) engine.Outcome {
	r.t.Helper()
	cfg.Log = r.log
	out := executor.New(r.slots, cfg).Run(context.Background(), tok, plan, r.peer.IO())
	// The planning hold goes with the token (released in a goroutine of
	// its context).
	for i := 0; r.prim.Status().Holds != r.keepHolds; i++ {
		if i == 200 {
			r.t.Fatalf("%d WAL holds left on the primary after %v", r.prim.Status().Holds, out)
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.peer.mu.Lock()
	pinned := r.peer.baseDig != nil
	r.peer.mu.Unlock()
	if pinned {
		r.t.Fatalf("base still pinned after %v", out)
	}
	if n, d := r.peer.pins.Load(), r.peer.doubles.Load(); n != 0 || d != 0 {
		r.t.Fatalf("after %v: %d pins unreleased, %d released twice", out, n, d)
	}
	// Every pin was released exactly once.
	pins, rel := 0, 0
	for _, e := range r.log.Events(r.id) {
		if e.Attempt != tok.Attempt {
			continue
		}
		switch e.Kind {
		case engine.EventPinned:
			pins++
		case engine.EventReleased:
			rel++
		}
	}
	if rel != pins+1 { // every pin, then the slot
		r.t.Fatalf("attempt %d: %d pins, %d releases", tok.Attempt, pins, rel)
	}
	return out
}

// recover plans and runs until the outcome, expecting kind.
func (r *recovery) recover(prior engine.State, want engine.Kind, cfg executor.Config, terms ...engine.Term) engine.Outcome {
	r.t.Helper()
	tok, plan := r.plan(prior, terms...)
	if plan.Kind != want {
		r.t.Fatalf("planned %v, want %v", plan, want)
	}
	return r.run(tok, plan, cfg)
}

func wantInSync(t testing.TB, out engine.Outcome, atLeast uint64) {
	t.Helper()
	if out.Kind != engine.OutcomeInSync || out.Achieved < atLeast {
		t.Fatalf("outcome %v, want in sync at ≥ %d", out, atLeast)
	}
}

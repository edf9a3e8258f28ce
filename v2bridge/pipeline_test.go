package v2bridge

import (
	"context"
	"crypto/sha256"
	"math/rand"
	"testing"

	"github.com/weedblock/weedblock/engine"
)

// TestBaseReadAheadGuessedWrong transfers a base in batches whose sizes
// change from call to call, so the batch the Peer reads ahead is often not
// the one asked for next: the replica must accept the base and end up
// equal to the primary, and for a snapshot base the image digest the
// primary checks against the manifest must be over exactly the bytes sent
// (the image, hashed here apart).
func TestBaseReadAheadGuessedWrong(t *testing.T) {
	for _, src := range []engine.Source{engine.Full, engine.Snapshot} {
		t.Run(src.String(), func(t *testing.T) {
			svc, addr := startService(t)
			prim := primaryVol(t, 1, volOpts{})
			rep := newReplicaVol(t, "r.vol", 1, volOpts{})
			svc.Register("vol1", rep)
			rng := rand.New(rand.NewSource(31))
			writeRandom(t, prim, rng, 200, 0, testSize/bs)
			if err := prim.Flush(); err != nil {
				t.Fatal(err)
			}
			var lsn uint64
			if src == engine.Snapshot {
				snap, err := prim.CreateSnapshot()
				if err != nil {
					t.Fatal(err)
				}
				lsn = snap.LSN
			}
			img := make([]byte, prim.Size())
			if err := prim.ReadAt(img, 0); err != nil {
				t.Fatal(err)
			}
			want := sha256.Sum256(img)
			slots := engine.NewSlots()
			tok, _ := slots.Acquire(engine.ReplicaID{Volume: "vol1", Server: "s2"}, 1, addr)
			defer slots.Release(tok)
			p := NewPeer(slots, prim, PeerOptions{Name: "vol1", Addr: addr})
			defer p.Close()
			if err := p.MarkUntrusted(tok); err != nil {
				t.Fatal(err)
			}
			base, err := p.PinBase(tok, src, lsn)
			if err != nil {
				t.Fatal(err)
			}
			sizes := []int64{256 << 10, 256 << 10, 64 << 10, 768 << 10, bs + 100, 128 << 10}
			calls := 0
			for off := int64(0); off < base.Size; calls++ {
				n, err := p.TransferBase(context.Background(), tok, base, off, sizes[calls%len(sizes)])
				if err != nil {
					t.Fatal(err)
				}
				if n <= 0 {
					t.Fatalf("no progress at %d", off)
				}
				off += n
			}
			if calls < len(sizes) {
				t.Fatalf("only %d calls: the sizes were not all tried", calls)
			}
			if src == engine.Snapshot {
				p.mu.Lock()
				p.waitAheadLocked()
				var got [32]byte
				p.imgSum.Sum(got[:0])
				p.mu.Unlock()
				if got != want || got != base.SHA256 {
					t.Fatalf("image digest of the bytes sent %x, image %x, manifest %x", got, want, base.SHA256)
				}
			}
			if err := p.VerifyBase(tok, base); err != nil {
				t.Fatal(err)
			}
			if err := p.Commit(tok, base.LSN); err != nil {
				t.Fatal(err)
			}
			if err := base.Pin.Release(); err != nil {
				t.Fatal(err)
			}
			if rep.Status().Untrusted {
				t.Fatal("replica untrusted after commit")
			}
			sameDevice(t, prim, rep)
		})
	}
}

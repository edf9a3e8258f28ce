package blockvol_test

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/weedblock/weedblock/blockvol"
)

// TestSnapshotOpenedAsItIsPublished: a reader opening the snapshot at the
// moment CreateSnapshot publishes a new one (a rebuild starting while the
// volume server's snapshot loop replaces the base) opens it: it never finds
// the new image still held by its creator and never marks it untrusted.
func TestSnapshotOpenedAsItIsPublished(t *testing.T) {
	v, _ := newSnapVolume(t, 8<<20, 256<<10, false)
	p := make([]byte, snapBS)
	for i := range 16 {
		p[0] = byte(i + 1)
		if err := v.WriteAt(p, int64(i)*snapBS, false); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := v.CreateSnapshot(); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var opens atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			r, err := v.OpenSnapshotStreaming()
			if err != nil {
				select {
				case errc <- err:
				default:
				}
				return
			}
			opens.Add(1)
			r.Close()
		}
	}()
	for i := 0; i < 2000 && len(errc) == 0; i++ {
		if _, err := v.CreateSnapshot(); err != nil && !errors.Is(err, blockvol.ErrSnapshotBusy) {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("snapshot %d: %v", i, err)
		}
	}
	stop.Store(true)
	wg.Wait()
	select {
	case err := <-errc:
		t.Fatalf("open while snapshots are replaced (after %d opens): %v", opens.Load(), err)
	default:
	}
	if info, ok := v.Snapshot(); !ok || !info.Trusted {
		t.Fatalf("snapshot after the race: %+v", info)
	}
	if opens.Load() == 0 {
		t.Fatal("the reader never opened a snapshot")
	}
}

package blockvol

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestConcurrentNoStaleReads: writers take turns on a few LBAs (each write
// carries a per-LBA sequence number), the flusher runs in a tight loop
// on a small WAL that wraps constantly, and readers check that no read
// returns a version older than one whose write had already returned.
func TestConcurrentNoStaleReads(t *testing.T) {
	const (
		lbas    = 8
		writers = 8
		readers = 4
		perW    = 100
		bs      = 4096
	)
	v, _ := newTestVolume(t, 64*bs, 128<<10, Options{FlushInterval: time.Millisecond})
	var (
		lbaMu  [lbas]sync.Mutex
		seq    [lbas]uint64
		acked  [lbas]atomic.Uint64
		stop   atomic.Bool
		errs   = make(chan error, writers+readers+2)
		wg, rg sync.WaitGroup
	)
	encode := func(p []byte, lba int, s uint64) {
		for i := 0; i < len(p); i += 16 {
			binary.LittleEndian.PutUint64(p[i:], uint64(lba))
			binary.LittleEndian.PutUint64(p[i+8:], s)
		}
	}
	decode := func(p []byte, lba int) (uint64, error) {
		s := binary.LittleEndian.Uint64(p[8:])
		for i := 0; i < len(p); i += 16 {
			if binary.LittleEndian.Uint64(p[i:]) != uint64(lba) && s != 0 || binary.LittleEndian.Uint64(p[i+8:]) != s {
				return 0, fmt.Errorf("lba %d: torn or foreign block at byte %d", lba, i)
			}
		}
		return s, nil
	}
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			p := make([]byte, bs)
			for i := 0; i < perW; i++ {
				lba := (w + i) % lbas
				lbaMu[lba].Lock()
				seq[lba]++
				s := seq[lba]
				encode(p, lba, s)
				err := v.WriteAt(p, int64(lba)*bs, i%50 == 0)
				if err == nil {
					acked[lba].Store(s)
				}
				lbaMu[lba].Unlock()
				if err != nil {
					errs <- err
					return
				}
				if i%40 == 0 {
					if err := v.Flush(); err != nil {
						errs <- err
						return
					}
				}
			}
		}(w)
	}
	for r := 0; r < readers; r++ {
		rg.Add(1)
		go func(r int) {
			defer rg.Done()
			p := make([]byte, bs)
			for i := 0; !stop.Load(); i++ {
				lba := (r + i) % lbas
				floor := acked[lba].Load()
				if err := v.ReadAt(p, int64(lba)*bs); err != nil {
					errs <- err
					return
				}
				s, err := decode(p, lba)
				if err != nil {
					errs <- err
					return
				}
				if s < floor {
					errs <- fmt.Errorf("lba %d: read version %d after version %d was acknowledged", lba, s, floor)
					return
				}
			}
		}(r)
	}
	rg.Add(1)
	go func() { // checkpoint in a tight loop on top of the background flusher
		defer rg.Done()
		for !stop.Load() {
			if err := v.Checkpoint(); err != nil {
				errs <- err
				return
			}
		}
	}()
	wg.Wait()
	stop.Store(true)
	rg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for lba := 0; lba < lbas; lba++ {
		p := mustRead(t, v, int64(lba)*bs, bs)
		if s, err := decode(p, lba); err != nil || s != seq[lba] {
			t.Fatalf("lba %d final version %d err %v, want %d", lba, s, err, seq[lba])
		}
	}
	if st := v.Status(); !st.Healthy || st.Head != writers*perW {
		t.Fatalf("status %+v", st)
	}
}

// TestConcurrentFlushShareSync: concurrent Flush callers share fdatasyncs.
func TestConcurrentFlushShareSync(t *testing.T) {
	ffs := &failingFS{}
	v, _ := newTestVolume(t, 1<<20, 1<<20, Options{FS: ffs, ManualFlush: true})
	base := ffs.syncs.Load()
	// A slow disk: writers overlap a sync in flight even on one CPU, where
	// a fast fdatasync could finish before the next writer runs.
	ffs.delay.Store(int64(time.Millisecond))
	const n, rounds = 16, 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < rounds; i++ {
				if err := v.WriteAt(block(4096, byte(w)), int64(w)*4096, true); err != nil {
					errs <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	syncs := ffs.syncs.Load() - base
	if syncs >= n*rounds {
		t.Fatalf("%d FUA writes took %d fdatasyncs: no group commit", n*rounds, syncs)
	}
	t.Logf("%d FUA writes, %d fdatasyncs", n*rounds, syncs)
}

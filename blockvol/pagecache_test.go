package blockvol

import (
	"errors"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockdev"
)

// ioRange is one call of the file layer: [off, off+n).
type ioRange struct{ off, n int64 }

// cacheFS wraps OSFS and records the writes and the page cache advice the
// engine gives (CacheDropper, WritebackPacer); paceErr, once set, is what
// PaceWriteback returns.
type cacheFS struct {
	mu      sync.Mutex
	writes  []ioRange
	drops   []ioRange
	paces   []ioRange
	paceErr error
	// With paceErr set and these non-nil, PaceWriteback (having "seen"
	// the error) closes entered and waits for release before returning it.
	entered, release chan struct{}
}

type cacheFile struct {
	File
	fs *cacheFS
}

func (c *cacheFS) Create(path string) (File, error) {
	f, err := OSFS{}.Create(path)
	if err != nil {
		return nil, err
	}
	return &cacheFile{f, c}, nil
}

func (c *cacheFS) Open(path string) (File, error) {
	f, err := OSFS{}.Open(path)
	if err != nil {
		return nil, err
	}
	return &cacheFile{f, c}, nil
}

// cacheVolume creates a standalone volume with a manual flusher on a
// fresh cacheFS (bs 0: the default block size).
func cacheVolume(t *testing.T, size, walSize int64, bs int) (*cacheFS, *Volume) {
	t.Helper()
	cfs := &cacheFS{}
	v, err := Create(filepath.Join(t.TempDir(), "v"), size, Options{FS: cfs, BlockSize: bs, WALSize: walSize, Standalone: true, ManualFlush: true})
	if err != nil {
		t.Fatal(err)
	}
	return cfs, v
}

func (c *cacheFS) reset() {
	c.mu.Lock()
	c.writes, c.drops, c.paces = nil, nil, nil
	c.mu.Unlock()
}

func (f *cacheFile) WriteAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	f.fs.writes = append(f.fs.writes, ioRange{off, int64(len(p))})
	f.fs.mu.Unlock()
	return f.File.WriteAt(p, off)
}

func (f *cacheFile) DropCache(off, n int64) error {
	f.fs.mu.Lock()
	f.fs.drops = append(f.fs.drops, ioRange{off, n})
	f.fs.mu.Unlock()
	return f.File.(CacheDropper).DropCache(off, n)
}

func (f *cacheFile) PaceWriteback(off, n int64) error {
	f.fs.mu.Lock()
	f.fs.paces = append(f.fs.paces, ioRange{off, n})
	err, entered, release := f.fs.paceErr, f.fs.entered, f.fs.release
	f.fs.mu.Unlock()
	if err != nil {
		if entered != nil {
			close(entered)
			<-release
		}
		return err
	}
	return f.File.(WritebackPacer).PaceWriteback(off, n)
}

// TestExtentWrittenInPieces: the flusher writes a large record to the
// extent in pieces of one page (one block where blocks are larger), so the
// page cache never holds the extent in folios larger than that (a later
// small write would dirty a whole large folio).
func TestExtentWrittenInPieces(t *testing.T) {
	for _, bs := range []int{512, 4096, 16384} {
		cfs, v := cacheVolume(t, 4<<20, 4<<20, bs)
		p := block(512<<10, 7)
		if err := v.WriteAt(p, 64<<10, false); err != nil {
			t.Fatal(err)
		}
		cfs.reset()
		if err := v.Checkpoint(); err != nil {
			t.Fatal(err)
		}
		piece := int64(max(4096, bs))
		var total int64
		cfs.mu.Lock()
		for _, w := range cfs.writes {
			if w.off < v.extentOff {
				continue
			}
			if w.n > piece {
				t.Errorf("bs %d: extent write of %d bytes at %d, want at most %d", bs, w.n, w.off, piece)
			}
			total += w.n
		}
		cfs.mu.Unlock()
		if total != int64(len(p)) {
			t.Errorf("bs %d: %d extent bytes written, want %d", bs, total, len(p))
		}
		got := make([]byte, len(p))
		if err := v.ReadAt(got, 64<<10); err != nil {
			t.Fatal(err)
		}
		if string(got) != string(p) {
			t.Fatalf("bs %d: extent data differs after checkpoint", bs)
		}
		if err := v.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFlusherDropsFreedWAL: each flusher round drops the page cache of the
// WAL bytes it freed (whole pages, inside the WAL region, also across the
// wrap), and nothing else: in all, exactly the pages the tail moved past.
func TestFlusherDropsFreedWAL(t *testing.T) {
	cfs, v := cacheVolume(t, 1<<20, 128<<10, 0)
	defer v.Close()
	v.mu.Lock()
	startTail := v.tailAbs
	v.mu.Unlock()
	// 4 KiB writes (4160 bytes of WAL each), 5 per round: the tail passes
	// the end of the region several times.
	for i := 0; i < 120; i++ {
		if err := v.WriteAt(block(4096, byte(i)), int64(i%200)*4096, false); err != nil {
			t.Fatal(err)
		}
		if i%5 == 4 {
			if err := v.Checkpoint(); err != nil {
				t.Fatal(err)
			}
		}
	}
	v.mu.Lock()
	endTail := v.tailAbs
	v.mu.Unlock()
	if endTail-startTail < 3*v.walSize {
		t.Fatalf("tail moved %d bytes, want several passes of %d", endTail-startTail, v.walSize)
	}
	var dropped int64
	cfs.mu.Lock()
	for _, d := range cfs.drops {
		if d.off%4096 != 0 || d.n%4096 != 0 || d.n <= 0 {
			t.Errorf("drop [%d,+%d) is not whole pages", d.off, d.n)
		}
		if d.off < walOffset || d.off+d.n > walOffset+v.walSize {
			t.Errorf("drop [%d,+%d) outside the WAL [%d,+%d)", d.off, d.n, walOffset, v.walSize)
		}
		dropped += d.n
	}
	cfs.mu.Unlock()
	if want := alignDown(endTail, 4096) - alignDown(startTail, 4096); dropped != want {
		t.Fatalf("dropped %d bytes of WAL cache, the tail freed %d", dropped, want)
	}
	for i := 0; i < 60; i++ {
		// Only the last write to each block counts; all are distinct here.
		got := make([]byte, 4096)
		if err := v.ReadAt(got, int64(i%200)*4096); err != nil {
			t.Fatal(err)
		}
		if string(got) != string(block(4096, byte(i))) {
			t.Fatalf("block %d differs", i)
		}
	}
}

// TestFlusherPacesWriteback: a round of extent writes starts their
// write-back in steps of extentWritebackBytes (waiting for the step
// before), over the extent only; an error from it is fatal like a failed
// Sync (it may have consumed the file's write-back error report).
func TestFlusherPacesWriteback(t *testing.T) {
	cfs, v := cacheVolume(t, 8<<20, 8<<20, 0)
	defer v.Close()
	write := func(n int, seed byte) {
		t.Helper()
		for i := 0; i < n; i++ {
			if err := v.WriteAt(block(4096, seed+byte(i)), int64((i*37)%2048)*4096, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(512, 1) // 2 MiB of extent writes in one round
	cfs.reset()
	if err := v.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	cfs.mu.Lock()
	paces := append([]ioRange(nil), cfs.paces...)
	cfs.mu.Unlock()
	if want := int((2<<20)/extentWritebackBytes) - 1; len(paces) < want {
		t.Fatalf("%d write-back steps for 2 MiB of extent writes, want at least %d", len(paces), want)
	}
	for _, p := range paces {
		if p.off != v.extentOff || p.n != v.size {
			t.Fatalf("write-back step over [%d,+%d), want the extent [%d,+%d)", p.off, p.n, v.extentOff, v.size)
		}
	}

	write(512, 2)
	cfs.mu.Lock()
	cfs.paceErr = syscall.EIO
	cfs.mu.Unlock()
	if err := v.Checkpoint(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("checkpoint with failing write-back: %v", err)
	}
	if st := v.Status(); st.Healthy {
		t.Fatalf("volume healthy after a failed write-back: %+v", st)
	}
	if err := v.WriteAt(block(4096, 3), 0, false); !errors.Is(err, blockdev.ErrReadOnly) {
		t.Fatalf("write after failed write-back: %v", err)
	}
}

// TestPaceErrorFailsFlushes: a write-back error reported to the flusher's
// PaceWriteback is consumed there (an fdatasync of the same file would not
// report it again), so no FLUSH may be acknowledged from the moment the
// pacing step sees it: a FLUSH that runs meanwhile waits for the step and
// fails with it. (Without syncMu around the step, the FLUSH's own
// fdatasync succeeds and the write is acknowledged as durable.)
func TestPaceErrorFailsFlushes(t *testing.T) {
	cfs, v := cacheVolume(t, 8<<20, 8<<20, 0)
	defer v.Close()
	for i := 0; i < 200; i++ { // 800 KiB: one pacing step in the round
		if err := v.WriteAt(block(4096, byte(i)), int64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	defer releaseOnce() // before Close, which waits for the checkpoint
	cfs.mu.Lock()
	cfs.paceErr, cfs.entered, cfs.release = syscall.EIO, entered, release
	cfs.mu.Unlock()
	cpErr := make(chan error, 1)
	go func() { cpErr <- v.Checkpoint() }()
	<-entered
	// The flusher's step has seen the error. A write and a FLUSH now.
	if err := v.WriteAt(block(4096, 99), 300*4096, false); err != nil {
		t.Fatal(err)
	}
	flushErr := make(chan error, 1)
	go func() { flushErr <- v.Flush() }()
	select {
	case err := <-flushErr:
		t.Fatalf("flush returned %v while the failed write-back step was still running", err)
	case <-time.After(100 * time.Millisecond):
	}
	releaseOnce()
	if err := <-flushErr; err == nil {
		t.Fatal("flush acknowledged after the write-back error was consumed")
	}
	if err := <-cpErr; !errors.Is(err, syscall.EIO) {
		t.Fatalf("checkpoint: %v", err)
	}
	if st := v.Status(); st.Healthy {
		t.Fatalf("volume healthy after a failed write-back step: %+v", st)
	}
}

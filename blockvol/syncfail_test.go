package blockvol

import (
	"errors"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockdev"
)

// failingFS wraps OSFS; once armed, every Sync fails with EIO and counts.
type failingFS struct {
	fail  atomic.Bool
	syncs atomic.Int64
	after atomic.Int64 // Syncs attempted after the first failure
	delay atomic.Int64 // nanoseconds each Sync sleeps first (a slow disk)
}

type failingFile struct {
	File
	fs *failingFS
}

func (f *failingFS) Create(path string) (File, error) {
	g, err := OSFS{}.Create(path)
	if err != nil {
		return nil, err
	}
	return &failingFile{g, f}, nil
}

func (f *failingFS) Open(path string) (File, error) {
	g, err := OSFS{}.Open(path)
	if err != nil {
		return nil, err
	}
	return &failingFile{g, f}, nil
}

func (f *failingFile) Sync() error {
	f.fs.syncs.Add(1)
	if d := f.fs.delay.Load(); d > 0 {
		time.Sleep(time.Duration(d))
	}
	if f.fs.fail.Load() {
		f.fs.after.Add(1)
		return syscall.EIO
	}
	return f.File.Sync()
}

func TestSyncFailureMakesReadOnly(t *testing.T) {
	ffs := &failingFS{}
	path := filepath.Join(t.TempDir(), "v")
	v, err := Create(path, 1<<20, Options{FS: ffs, WALSize: 128 << 10, Standalone: true, ManualFlush: true})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := v.WriteAt(block(4096, 1), 0, true); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(block(4096, 2), 4096, false); err != nil {
		t.Fatal(err)
	}
	ffs.fail.Store(true)
	err = v.Flush()
	if err == nil || !errors.Is(err, syscall.EIO) && !errors.Is(err, ErrUnhealthy) {
		t.Fatalf("flush with failing sync: %v", err)
	}
	st := v.Status()
	if st.Healthy || st.Err == nil || st.Durable != 1 {
		t.Fatalf("status after sync failure: %+v", st)
	}
	// Never retried, never pretended: later flushes fail without syncing.
	ffs.fail.Store(false)
	n := ffs.syncs.Load()
	if err := v.Flush(); !errors.Is(err, ErrUnhealthy) || !errors.Is(err, blockdev.ErrReadOnly) {
		t.Fatalf("second flush: %v", err)
	}
	if err := v.WriteAt(block(4096, 3), 8192, false); !errors.Is(err, blockdev.ErrReadOnly) || !errors.Is(err, ErrUnhealthy) {
		t.Fatalf("write after failure: %v", err)
	}
	if err := v.Trim(0, 4096); !errors.Is(err, blockdev.ErrReadOnly) {
		t.Fatalf("trim after failure: %v", err)
	}
	if err := v.WriteAt(block(4096, 3), 8192, true); !errors.Is(err, blockdev.ErrReadOnly) {
		t.Fatalf("fua write after failure: %v", err)
	}
	if err := v.Checkpoint(); err == nil {
		t.Fatal("checkpoint after failure succeeded")
	}
	if got := ffs.syncs.Load(); got != n {
		t.Fatalf("%d more Sync calls after the failure", got-n)
	}
	// Reads still work and see acknowledged data.
	if got := mustRead(t, v, 4096, 4096); string(got) != string(block(4096, 2)) {
		t.Fatal("read after failure")
	}
	if v.Close() != nil && ffs.syncs.Load() != n {
		t.Fatal("Close synced a failed volume")
	}
}

func TestSyncFailureInFlusher(t *testing.T) {
	ffs := &failingFS{}
	path := filepath.Join(t.TempDir(), "v")
	v, err := Create(path, 1<<20, Options{FS: ffs, WALSize: 128 << 10, Standalone: true, ManualFlush: true})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := v.WriteAt(block(4096, 1), 0, true); err != nil {
		t.Fatal(err)
	}
	ffs.fail.Store(true)
	if err := v.Checkpoint(); err == nil {
		t.Fatal("checkpoint with failing sync succeeded")
	}
	if st := v.Status(); st.Healthy || st.Checkpoint != 0 {
		t.Fatalf("status: %+v", st)
	}
	if err := v.WriteAt(block(4096, 1), 0, false); !errors.Is(err, blockdev.ErrReadOnly) {
		t.Fatalf("write: %v", err)
	}
}

package blockvol

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/weedblock/weedblock/blockvol/faultfs"
)

// TestSyncSharedByFlush: any fdatasync of the volume file (the flusher's,
// say) makes the WAL records written before it durable, so a Flush that
// comes after it (or queued behind it) issues no fdatasync of its own.
func TestSyncSharedByFlush(t *testing.T) {
	ffs := &failingFS{}
	v, err := Create(filepath.Join(t.TempDir(), "v"), 1<<20, Options{FS: ffs, WALSize: 128 << 10, Standalone: true, ManualFlush: true})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	for i := 0; i < 3; i++ {
		if err := v.WriteAt(block(4096, byte(i+1)), int64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	st := v.Status()
	if st.Durable >= st.Head {
		t.Fatalf("durable %d already at head %d before any sync", st.Durable, st.Head)
	}
	before := ffs.syncs.Load()
	if err := v.syncFile(); err != nil { // as the flusher's extent sync does
		t.Fatal(err)
	}
	if got := ffs.syncs.Load() - before; got != 1 {
		t.Fatalf("syncFile: %d syncs", got)
	}
	if st := v.Status(); st.Durable != st.Head {
		t.Fatalf("after a sync: durable %d, head %d", st.Durable, st.Head)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := v.syncWAL(v.Status().Head); err != nil {
		t.Fatal(err)
	}
	if got := ffs.syncs.Load() - before; got != 1 {
		t.Fatalf("Flush and syncWAL of durable records synced again: %d syncs", got)
	}
	// A new write still needs its own sync.
	if err := v.WriteAt(block(4096, 9), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := ffs.syncs.Load() - before; got != 2 {
		t.Fatalf("Flush after a new write: %d syncs, want 2", got)
	}
	if st := v.Status(); st.Durable != st.Head {
		t.Fatalf("after Flush: durable %d, head %d", st.Durable, st.Head)
	}
}

// TestSharedSyncSurvivesCrash: writes made durable only by another
// caller's fdatasync (the flusher's), then acknowledged by a Flush that
// issued none, survive a crash that drops every unsynced write; a write
// after that sync, never flushed, is not reported durable.
func TestSharedSyncSurvivesCrash(t *testing.T) {
	fs := faultfs.New()
	opts := Options{FS: ffsAdapter{fs}, WALSize: 128 << 10, Standalone: true, ManualFlush: true}
	v, err := Create("v", 1<<20, opts)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := v.WriteAt(block(4096, byte(i+1)), int64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.syncFile(); err != nil { // as the flusher's extent sync does
		t.Fatal(err)
	}
	acked := v.Status().Head
	syncs := fs.SyncCount()
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	if fs.SyncCount() != syncs {
		t.Fatalf("Flush synced again (%d -> %d): it should rest on the earlier sync", syncs, fs.SyncCount())
	}
	if err := v.WriteAt(block(4096, 9), 3*4096, false); err != nil {
		t.Fatal(err)
	}
	if st := v.Status(); st.Durable != acked {
		t.Fatalf("durable %d after an unflushed write, want %d", st.Durable, acked)
	}
	fs.Crash(faultfs.CrashDropAll, 0)
	v.Close()
	v, err = Open("v", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if st := v.Status(); st.Head < acked {
		t.Fatalf("after the crash head %d, want at least the acknowledged %d", st.Head, acked)
	}
	got := make([]byte, 4096)
	for i := 0; i < 3; i++ {
		if err := v.ReadAt(got, int64(i)*4096); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, block(4096, byte(i+1))) {
			t.Fatalf("block %d lost after a crash although its Flush was acknowledged", i)
		}
	}
}

package blockvol

import (
	"path/filepath"
	"testing"
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

package blockvol_test

import (
	"testing"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/blockvol/faultfs"
	"github.com/weedblock/weedblock/blockvol/faultfs/oracle"
)

// TestCrashFlusherNeverTearsUnsyncedRecord: the flusher may copy a record
// into the extent only once the record is durable in the WAL. Otherwise a
// crash during the flusher's fdatasync can lose the WAL record and leave the
// extent block torn between the old and the new value, with nothing left to
// repair it.
func TestCrashFlusherNeverTearsUnsyncedRecord(t *testing.T) {
	const bs = 4096
	torn := 0
	for seed := uint64(0); seed < 64; seed++ {
		fs := faultfs.New()
		opts := blockvol.Options{FS: faultFS{fs}, WALSize: 64 << 10, FlushInterval: 1 << 40, Standalone: true}
		v, err := blockvol.Create(crashVolPath, 16*bs, opts)
		if err != nil {
			t.Fatal(err)
		}
		a, b := make([]byte, bs), make([]byte, bs)
		oracle.BlockContent(a, 3, 1)
		oracle.BlockContent(b, 3, 2)
		if err := v.WriteAt(a, 3*bs, true); err != nil {
			t.Fatal(err)
		}
		if err := v.Checkpoint(); err != nil {
			t.Fatal(err)
		}
		// b is acknowledged (write-back), not flushed. The next sync is
		// the flusher's: crash there.
		if err := v.WriteAt(b, 3*bs, false); err != nil {
			t.Fatal(err)
		}
		fs.CrashAtSync(fs.SyncCount()+1, faultfs.CrashRandom, seed)
		v.Checkpoint() // crashes
		v.Close()
		if fs.CrashCount() != 1 {
			t.Fatalf("seed %d: crash did not fire", seed)
		}
		v, err = blockvol.Open(crashVolPath, opts)
		if err != nil {
			t.Fatalf("seed %d: open: %v", seed, err)
		}
		p := make([]byte, bs)
		if err := v.ReadAt(p, 3*bs); err != nil {
			t.Fatal(err)
		}
		if seq, err := oracle.DecodeBlock(p, 3); err != nil {
			torn++
			t.Logf("seed %d: %v", seed, err)
		} else if seq != 1 && seq != 2 {
			t.Fatalf("seed %d: value %d", seed, seq)
		}
		v.Close()
	}
	if torn > 0 {
		t.Fatalf("%d of 64 crashes left a torn block", torn)
	}
}

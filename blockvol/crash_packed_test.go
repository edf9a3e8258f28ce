package blockvol_test

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/blockvol/faultfs"
)

// Batches are packed: a batch starts where the previous one ended, inside
// its last page. These tests crash a volume whose WAL ends that way.

func packedOpts(fs *faultfs.FS) blockvol.Options {
	return blockvol.Options{FS: faultFS{fs}, WALSize: 64 << 10, Standalone: true, ManualFlush: true}
}

func fill(b byte) []byte { return bytes.Repeat([]byte{b}, 4096) }

// packedVolume creates a volume on fs whose block 0 holds 4 KiB of b0.
func packedVolume(t *testing.T, fs *faultfs.FS, b0 byte) *blockvol.Volume {
	t.Helper()
	v, err := blockvol.Create(crashVolPath, 16*4096, packedOpts(fs))
	if err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(fill(b0), 0, false); err != nil {
		t.Fatal(err)
	}
	return v
}

// reopenPacked opens the volume on fs again.
func reopenPacked(t *testing.T, fs *faultfs.FS, what string) *blockvol.Volume {
	t.Helper()
	v, err := blockvol.Open(crashVolPath, packedOpts(fs))
	if err != nil {
		t.Fatalf("%s: reopen: %v", what, err)
	}
	return v
}

func readBlock(t *testing.T, v *blockvol.Volume, lba int64) []byte {
	t.Helper()
	p := make([]byte, 4096)
	if err := v.ReadAt(p, lba*4096); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestCrashPackedPageKeepsDurableRecords: a flushed record, then unflushed
// ones written into the rest of its page and beyond; a crash drops,
// applies or tears (by sector, in any order) the unflushed writes. The
// flushed record always survives, and the unflushed ones come back as a
// prefix of what was written, each block whole.
func TestCrashPackedPageKeepsDurableRecords(t *testing.T) {
	for seed := uint64(0); seed < uint64(crashSeeds(t, 200)); seed++ {
		fs := faultfs.New()
		v := packedVolume(t, fs, 0xa0)
		if err := v.Flush(); err != nil {
			t.Fatal(err)
		}
		// Unflushed: one batch each, the first inside the flushed page.
		for i := int64(1); i <= 3; i++ {
			if err := v.WriteAt(fill(0xa0+byte(i)), i*4096, false); err != nil {
				t.Fatal(err)
			}
		}
		fs.Crash(faultfs.CrashRandom, seed)
		v.Close()
		v = reopenPacked(t, fs, fmt.Sprintf("seed %d", seed))
		if got := readBlock(t, v, 0); !bytes.Equal(got, fill(0xa0)) {
			t.Fatalf("seed %d: the flushed block reads %#x..., want 0xa0", seed, got[0])
		}
		gap := false
		for i := int64(1); i <= 3; i++ {
			got := readBlock(t, v, i)
			switch {
			case bytes.Equal(got, fill(0xa0+byte(i))):
				if gap {
					t.Fatalf("seed %d: block %d came back after an earlier one was lost", seed, i)
				}
			case bytes.Equal(got, make([]byte, 4096)):
				gap = true
			default:
				t.Fatalf("seed %d: block %d is torn (%#x...)", seed, i, got[0])
			}
		}
		v.Close()
	}
}

// TestCleanReopenContinuesPackedLog: after a clean close the log is kept
// and goes on right after its last record, inside its last page; a record
// flushed after the reopen survives a crash (a recovery scanning from the
// tail must reach it across that point).
func TestCleanReopenContinuesPackedLog(t *testing.T) {
	fs := faultfs.New()
	v := packedVolume(t, fs, 0xb1)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	v = reopenPacked(t, fs, "after a clean close")
	if err := v.WriteAt(fill(0xb2), 4096, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	fs.Crash(faultfs.CrashDropAll, 1)
	v.Close()
	v = reopenPacked(t, fs, "after the crash")
	defer v.Close()
	if got := readBlock(t, v, 0); !bytes.Equal(got, fill(0xb1)) {
		t.Fatalf("block 0 reads %#x..., want 0xb1", got[0])
	}
	if got := readBlock(t, v, 1); !bytes.Equal(got, fill(0xb2)) {
		t.Fatalf("block 1, flushed after the reopen, reads %#x..., want 0xb2", got[0])
	}
}

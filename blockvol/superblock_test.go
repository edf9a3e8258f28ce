package blockvol

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func testSuperblock() superblock {
	return superblock{
		version: formatVersion, seq: 7, size: 1 << 30, blockSize: 4096,
		walOffset: walOffset, walSize: 1 << 20, extentOffset: extentOffsetFor(1<<20, 4096),
		checkpoint: 41, tailLSN: 40, tailPos: 4096 + 128, generation: 3, epoch: 9,
		role: RoleReplica, untrusted: true, config: []byte(`{"members":["a","b"],"durability":"sync"}`),
	}
}

func TestSuperblockRoundTrip(t *testing.T) {
	s := testSuperblock()
	buf := make([]byte, superblockSize)
	s.encode(buf)
	got, err := decodeSuperblock(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got.seq != s.seq || got.size != s.size || got.checkpoint != s.checkpoint || got.tailLSN != s.tailLSN ||
		got.tailPos != s.tailPos || got.generation != s.generation || got.epoch != s.epoch || got.role != s.role ||
		!got.untrusted || !bytes.Equal(got.config, s.config) || got.walSize != s.walSize || got.extentOffset != s.extentOffset {
		t.Fatalf("round trip: got %+v want %+v", got, s)
	}
	// Every single-bit flip anywhere in the block is detected.
	for i := 0; i < superblockSize; i += 97 {
		c := append([]byte(nil), buf...)
		c[i] ^= 0x10
		if _, err := decodeSuperblock(c); err == nil {
			t.Fatalf("flip at byte %d not detected", i)
		}
	}
}

func TestSuperblockPick(t *testing.T) {
	a, b := make([]byte, superblockSize), make([]byte, superblockSize)
	s := testSuperblock()
	s.seq, s.checkpoint = 10, 41
	s.encode(a)
	s.seq, s.checkpoint = 11, 50
	s.encode(b)

	got, slot, err := pickSuperblock(a, b)
	if err != nil || slot != 1 || got.checkpoint != 50 {
		t.Fatalf("highest seq: slot %d cp %d err %v", slot, got.checkpoint, err)
	}
	got, slot, err = pickSuperblock(b, a)
	if err != nil || slot != 0 || got.checkpoint != 50 {
		t.Fatalf("highest seq (swapped): slot %d cp %d err %v", slot, got.checkpoint, err)
	}
	// Newer copy torn: fall back to the older valid one.
	bt := append([]byte(nil), b...)
	bt[200] ^= 1
	got, slot, err = pickSuperblock(a, bt)
	if err != nil || slot != 0 || got.checkpoint != 41 {
		t.Fatalf("torn newer copy: slot %d cp %d err %v", slot, got.checkpoint, err)
	}
	// Both corrupt.
	at := append([]byte(nil), a...)
	at[4092] ^= 1
	if _, _, err := pickSuperblock(at, bt); !errors.Is(err, ErrSuperblockCorrupt) {
		t.Fatalf("both corrupt: %v", err)
	}
	// A newer copy of another version wins over an older valid copy: refuse.
	s.seq, s.version = 12, formatVersion+1
	s.encode(bt)
	var ve *VersionError
	if _, _, err := pickSuperblock(a, bt); !errors.Is(err, ErrUnsupportedVersion) || !errors.As(err, &ve) || ve.Got != formatVersion+1 {
		t.Fatalf("wrong version: %v", err)
	}
	// Garbage geometry with a valid CRC is rejected.
	s = testSuperblock()
	s.blockSize = 1000
	s.encode(bt)
	if _, err := decodeSuperblock(bt); !errors.Is(err, ErrBadSuperblock) {
		t.Fatalf("bad block size accepted: %v", err)
	}
}

func TestOpenSuperblockErrors(t *testing.T) {
	mk := func(t *testing.T) string {
		v, path := newTestVolume(t, 1<<20, 128<<10, Options{})
		if err := v.WriteAt(block(4096, 5), 0, true); err != nil {
			t.Fatal(err)
		}
		if err := v.Checkpoint(); err != nil { // persists a superblock update
			t.Fatal(err)
		}
		if err := v.Close(); err != nil {
			t.Fatal(err)
		}
		return path
	}
	corrupt := func(t *testing.T, path string, off int64) {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b := []byte{0}
		f.ReadAt(b, off)
		b[0] ^= 0xff
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("one copy corrupt", func(t *testing.T) {
		for _, slot := range []int64{0, 1} {
			path := mk(t)
			corrupt(t, path, slot*superblockSize+64)
			v, err := Open(path, Options{})
			if err != nil {
				t.Fatalf("slot %d corrupt: %v", slot, err)
			}
			if got := mustRead(t, v, 0, 4096); !bytes.Equal(got, block(4096, 5)) {
				t.Fatalf("slot %d corrupt: data lost", slot)
			}
			v.Close()
		}
	})
	t.Run("both corrupt", func(t *testing.T) {
		path := mk(t)
		corrupt(t, path, 64)
		corrupt(t, path, superblockSize+64)
		if _, err := Open(path, Options{}); !errors.Is(err, ErrSuperblockCorrupt) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("wrong version", func(t *testing.T) {
		path := mk(t)
		f, _ := os.OpenFile(path, os.O_RDWR, 0)
		buf := make([]byte, superblockSize)
		s := testSuperblock()
		s.version, s.seq = 99, 1000
		s.encode(buf)
		f.WriteAt(buf, 0)
		f.Close()
		if _, err := Open(path, Options{}); !errors.Is(err, ErrUnsupportedVersion) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("truncated", func(t *testing.T) {
		path := mk(t)
		if err := os.Truncate(path, 1<<19); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(path, Options{}); !errors.Is(err, ErrTruncated) {
			t.Fatalf("got %v", err)
		}
		if err := os.Truncate(path, 100); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(path, Options{}); !errors.Is(err, ErrTruncated) {
			t.Fatalf("tiny file: got %v", err)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		if _, err := Open(filepath.Join(t.TempDir(), "nope"), Options{}); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("got %v", err)
		}
	})
}

func TestSuperblockPersistsState(t *testing.T) {
	v, path := newTestVolume(t, 1<<20, 128<<10, Options{})
	if err := v.SetConfig([]byte("cfg-1")); err != nil {
		t.Fatal(err)
	}
	if err := v.SetUntrusted(true); err != nil {
		t.Fatal(err)
	}
	if err := v.Unfence(7, RolePrimary, timeZero); err != nil {
		t.Fatal(err)
	}
	if err := v.SetConfig(make([]byte, MaxConfigSize+1)); err == nil {
		t.Fatal("oversized config accepted")
	}
	v.Close()
	v2, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close()
	st := v2.Status()
	if string(v2.Config()) != "cfg-1" || !st.Untrusted || st.Epoch != 7 || st.Role != RolePrimary || !st.Fenced {
		t.Fatalf("persisted state lost: cfg %q status %+v", v2.Config(), st)
	}
}

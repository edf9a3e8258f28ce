package blockvol

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockdev"
)

// newTestVolume creates a standalone (unfenced primary) volume in a temp dir.
func newTestVolume(t testing.TB, size, walSize int64, opts Options) (*Volume, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vol.blk")
	opts.WALSize = walSize
	opts.Standalone = true
	v, err := Create(path, size, opts)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() { v.Close() })
	return v, path
}

func reopen(t testing.TB, v *Volume, path string, opts Options) *Volume {
	t.Helper()
	if err := v.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	opts.Standalone = true
	nv, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { nv.Close() })
	return nv
}

func block(bs int, seed byte) []byte {
	b := make([]byte, bs)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func mustRead(t testing.TB, v *Volume, off int64, n int) []byte {
	t.Helper()
	p := make([]byte, n)
	if err := v.ReadAt(p, off); err != nil {
		t.Fatalf("ReadAt(%d, %d): %v", n, off, err)
	}
	return p
}

func TestCreateWriteReadReopen(t *testing.T) {
	v, path := newTestVolume(t, 1<<20, 256<<10, Options{})
	if v.BlockSize() != 4096 || v.Size() != 1<<20 {
		t.Fatalf("geometry %d/%d", v.BlockSize(), v.Size())
	}
	if got := mustRead(t, v, 0, 8192); !bytes.Equal(got, make([]byte, 8192)) {
		t.Fatal("fresh volume does not read zeros")
	}
	a, b := block(4096, 1), block(8192, 2)
	if err := v.WriteAt(a, 4096, false); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(b, 12288, true); err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, v, 4096, 4096); !bytes.Equal(got, a) {
		t.Fatal("read back mismatch a")
	}
	if got := mustRead(t, v, 12288, 8192); !bytes.Equal(got, b) {
		t.Fatal("read back mismatch b")
	}
	st := v.Status()
	if st.Head != 2 || st.Durable != 2 || !st.Healthy || st.Fenced || st.Role != RolePrimary || st.Epoch != 1 {
		t.Fatalf("status %+v", st)
	}
	v = reopen(t, v, path, Options{})
	if got := mustRead(t, v, 4096, 4096); !bytes.Equal(got, a) {
		t.Fatal("after reopen: mismatch a")
	}
	if got := mustRead(t, v, 12288, 8192); !bytes.Equal(got, b) {
		t.Fatal("after reopen: mismatch b")
	}
	if st := v.Status(); st.Head != 2 {
		t.Fatalf("head after reopen %d", st.Head)
	}
	// New writes continue the LSN sequence.
	if err := v.WriteAt(a, 0, false); err != nil {
		t.Fatal(err)
	}
	if st := v.Status(); st.Head != 3 {
		t.Fatalf("head %d, want 3", st.Head)
	}
}

func TestBadInput(t *testing.T) {
	v, _ := newTestVolume(t, 64<<10, 128<<10, Options{})
	cases := []struct {
		name string
		err  error
		fn   func() error
	}{
		{"write past end", blockdev.ErrOutOfRange, func() error { return v.WriteAt(make([]byte, 4096), 64<<10, false) }},
		{"write straddles end", blockdev.ErrOutOfRange, func() error { return v.WriteAt(make([]byte, 8192), 60<<10, false) }},
		{"write unaligned off", blockdev.ErrUnaligned, func() error { return v.WriteAt(make([]byte, 4096), 100, false) }},
		{"write unaligned len", blockdev.ErrUnaligned, func() error { return v.WriteAt(make([]byte, 100), 0, false) }},
		{"negative off", blockdev.ErrOutOfRange, func() error { return v.WriteAt(make([]byte, 4096), -4096, false) }},
		{"read past end", blockdev.ErrOutOfRange, func() error { return v.ReadAt(make([]byte, 4096), 64<<10) }},
		{"read unaligned", blockdev.ErrUnaligned, func() error { return v.ReadAt(make([]byte, 4095), 0) }},
		{"trim past end", blockdev.ErrOutOfRange, func() error { return v.Trim(0, 128<<10) }},
		{"trim unaligned", blockdev.ErrUnaligned, func() error { return v.Trim(512, 4096) }},
		{"zeroes past end", blockdev.ErrOutOfRange, func() error { return v.WriteZeroes(64<<10, 4096, false) }},
	}
	for _, c := range cases {
		if err := c.fn(); !errors.Is(err, c.err) {
			t.Errorf("%s: err %v, want %v", c.name, err, c.err)
		}
	}
	if st := v.Status(); st.Head != 0 {
		t.Fatalf("bad input appended records: head %d", st.Head)
	}
	if got := mustRead(t, v, 0, 64<<10); !bytes.Equal(got, make([]byte, 64<<10)) {
		t.Fatal("bad input changed data")
	}
	if _, err := Create(filepath.Join(t.TempDir(), "x"), 1000, Options{}); err == nil {
		t.Fatal("size not a multiple of the block size accepted")
	}
	if _, err := Create(filepath.Join(t.TempDir(), "x"), 1<<20, Options{BlockSize: 1000}); err == nil {
		t.Fatal("block size 1000 accepted")
	}
	if _, err := Create(filepath.Join(t.TempDir(), "x"), 1<<20, Options{WALSize: 4096}); err == nil {
		t.Fatal("tiny WAL accepted")
	}
}

func TestTrimAndWriteZeroes(t *testing.T) {
	v, path := newTestVolume(t, 4<<20, 1<<20, Options{FlushInterval: time.Hour})
	bs := 4096
	all := make([]byte, 4<<20)
	for i := range all {
		all[i] = byte(i/bs + 1)
	}
	if err := v.WriteAt(all, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	// Overwrite a block in the WAL, then trim over it: WAL data shadowed.
	if err := v.WriteAt(block(bs, 9), 8*4096, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Trim(8*4096, 2*4096); err != nil { // small trim
		t.Fatal(err)
	}
	if err := v.WriteZeroes(100*4096, 600*4096, false); err != nil { // large range
		t.Fatal(err)
	}
	// A write after the large zero range wins inside it.
	if err := v.WriteAt(block(bs, 3), 200*4096, false); err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), all...)
	clear(want[8*4096 : 10*4096])
	clear(want[100*4096 : 700*4096])
	copy(want[200*4096:], block(bs, 3))
	check := func(stage string) {
		t.Helper()
		if got := mustRead(t, v, 0, len(all)); !bytes.Equal(got, want) {
			for i := 0; i < len(want); i += bs {
				if !bytes.Equal(got[i:i+bs], want[i:i+bs]) {
					t.Fatalf("%s: block %d differs", stage, i/bs)
				}
			}
		}
	}
	check("in WAL")
	if err := v.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if st := v.Status(); st.DirtyBlocks != 0 || st.Checkpoint != st.Head {
		t.Fatalf("after checkpoint: %+v", st)
	}
	check("in extent")
	v = reopen(t, v, path, Options{})
	check("after reopen")
}

func TestRandomAgainstModel(t *testing.T) {
	for _, c := range []struct{ bs, ops int }{{4096, 700}, {512, 400}, {8192, 400}} {
		t.Run(fmt.Sprintf("bs=%d", c.bs), func(t *testing.T) { randomAgainstModel(t, c.bs, c.ops) })
	}
}

func randomAgainstModel(t *testing.T, bs, ops int) {
	const size = 2 << 20
	v, path := newTestVolume(t, size, 256<<10, Options{FlushInterval: 5 * time.Millisecond, BlockSize: bs})
	model := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, uint64(bs)))
	nb := size / bs
	for i := 0; i < ops; i++ {
		lba := rng.IntN(nb)
		n := 1 + rng.IntN(min(16, nb-lba))
		off := int64(lba * bs)
		switch rng.IntN(10) {
		case 0:
			if err := v.Trim(off, int64(n*bs)); err != nil {
				t.Fatal(err)
			}
			clear(model[off : off+int64(n*bs)])
		case 1:
			if err := v.WriteZeroes(off, int64(n*bs), rng.IntN(2) == 0); err != nil {
				t.Fatal(err)
			}
			clear(model[off : off+int64(n*bs)])
		case 2:
			if err := v.Flush(); err != nil {
				t.Fatal(err)
			}
		default:
			p := make([]byte, n*bs)
			for j := range p {
				p[j] = byte(rng.Uint32())
			}
			if err := v.WriteAt(p, off, rng.IntN(8) == 0); err != nil {
				t.Fatal(err)
			}
			copy(model[off:], p)
		}
		if i%100 == 0 {
			if got := mustRead(t, v, 0, size); !bytes.Equal(got, model) {
				t.Fatalf("step %d: volume differs from model", i)
			}
		}
		if i == ops/2 {
			v = reopen(t, v, path, Options{FlushInterval: 5 * time.Millisecond})
		}
	}
	if got := mustRead(t, v, 0, size); !bytes.Equal(got, model) {
		t.Fatal("final: volume differs from model")
	}
	st := v.Status()
	if st.Generation != 1 || !st.Healthy {
		t.Fatalf("status %+v", st)
	}
	v = reopen(t, v, path, Options{})
	if got := mustRead(t, v, 0, size); !bytes.Equal(got, model) {
		t.Fatal("after final reopen: volume differs from model")
	}
}

func TestOpenTwiceRefused(t *testing.T) {
	v, path := newTestVolume(t, 1<<20, 128<<10, Options{})
	if _, err := Open(path, Options{}); !errors.Is(err, ErrInUse) {
		t.Fatalf("second open: %v", err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := v.WriteAt(make([]byte, 4096), 0, false); !errors.Is(err, blockdev.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
	if err := v.ReadAt(make([]byte, 4096), 0); !errors.Is(err, blockdev.ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
	if err := v.Flush(); !errors.Is(err, blockdev.ErrClosed) {
		t.Fatalf("flush after close: %v", err)
	}
	v2, err := Open(path, Options{})
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	v2.Close()
}

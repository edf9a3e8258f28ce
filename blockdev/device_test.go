package blockdev

import (
	"bytes"
	"errors"
	"testing"
)

func TestCheckRange(t *testing.T) {
	cases := []struct {
		off, n int64
		want   error
	}{
		{0, 4096, nil},
		{4096 * 3, 4096, nil},
		{0, 4096 * 4, nil},
		{0, 0, nil},
		{4096 * 4, 0, nil},
		{4096 * 4, 4096, ErrOutOfRange},
		{4096 * 3, 8192, ErrOutOfRange},
		{-4096, 4096, ErrOutOfRange},
		{1, 4096, ErrUnaligned},
		{0, 100, ErrUnaligned},
		{1 << 62, 1 << 62, ErrOutOfRange},
	}
	for _, c := range cases {
		if got := CheckRange(c.off, c.n, 4096*4, 4096); !errors.Is(got, c.want) {
			t.Errorf("CheckRange(%d,%d) = %v, want %v", c.off, c.n, got, c.want)
		}
	}
}

func TestMemRoundTrip(t *testing.T) {
	m, err := NewMem(1<<20, 4096)
	if err != nil {
		t.Fatal(err)
	}
	w := bytes.Repeat([]byte{0xab}, 8192)
	if err := m.WriteAt(w, 4096, true); err != nil {
		t.Fatal(err)
	}
	r := make([]byte, 8192)
	if err := m.ReadAt(r, 4096); err != nil || !bytes.Equal(r, w) {
		t.Fatalf("read back mismatch: %v", err)
	}
	if err := m.Trim(4096, 4096); err != nil {
		t.Fatal(err)
	}
	if err := m.ReadAt(r, 4096); err != nil || !bytes.Equal(r[:4096], make([]byte, 4096)) || !bytes.Equal(r[4096:], w[:4096]) {
		t.Fatalf("trim did not zero exactly one block: %v", err)
	}
	m.SetReadOnly(true)
	if err := m.WriteAt(w, 0, false); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write on read-only = %v", err)
	}
	if err := m.ReadAt(r, 1<<20); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("read past end = %v", err)
	}
}

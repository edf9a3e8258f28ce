package blockvol

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockdev"
)

func TestOpensFencedUntilUnfenced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v")
	v, err := Create(path, 1<<20, Options{WALSize: 128 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { v.Close() }()
	if st := v.Status(); !st.Fenced || st.Role != RoleNone || st.Epoch != 0 {
		t.Fatalf("fresh volume: %+v", st)
	}
	err = v.WriteAt(block(4096, 1), 0, false)
	if !errors.Is(err, blockdev.ErrReadOnly) || !errors.Is(err, ErrFenced) {
		t.Fatalf("write while fenced: %v", err)
	}
	if err := v.Trim(0, 4096); !errors.Is(err, ErrFenced) {
		t.Fatalf("trim while fenced: %v", err)
	}
	if err := v.WriteZeroes(0, 4096, true); !errors.Is(err, ErrFenced) {
		t.Fatalf("zeroes while fenced: %v", err)
	}
	mustRead(t, v, 0, 4096) // reads allowed
	if err := v.Flush(); err != nil {
		t.Fatalf("flush with nothing to flush: %v", err)
	}
	if err := v.Unfence(3, RolePrimary, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(block(4096, 1), 0, true); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(block(4096, 9), 4096, false); err != nil {
		t.Fatal(err)
	}
	v.Fence()
	if err := v.WriteAt(block(4096, 2), 0, false); !errors.Is(err, ErrFenced) || !errors.Is(err, blockdev.ErrReadOnly) {
		t.Fatalf("write after Fence: %v", err)
	}
	if err := v.Flush(); !errors.Is(err, ErrFenced) {
		t.Fatalf("flush of unsynced writes after Fence: %v", err)
	}
	if got := mustRead(t, v, 0, 4096); !bytes.Equal(got, block(4096, 1)) {
		t.Fatal("fenced write changed data")
	}
	// Stale epochs are refused, in memory and after reopen.
	if err := v.Unfence(2, RolePrimary, time.Time{}); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("stale unfence: %v", err)
	}
	if err := v.FenceEpoch(1); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("stale FenceEpoch: %v", err)
	}
	if err := v.FenceEpoch(5); err != nil {
		t.Fatal(err)
	}
	v.Close()
	v, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	st := v.Status()
	if !st.Fenced || st.Epoch != 5 || st.Role != RolePrimary {
		t.Fatalf("reopened: %+v", st)
	}
	if err := v.WriteAt(block(4096, 3), 0, false); !errors.Is(err, ErrFenced) {
		t.Fatalf("write after reopen: %v", err)
	}
	if err := v.Unfence(4, RolePrimary, time.Time{}); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("stale unfence after reopen: %v", err)
	}
	if err := v.Unfence(5, RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	// A replica takes no frontend writes.
	if err := v.WriteAt(block(4096, 3), 0, false); !errors.Is(err, blockdev.ErrReadOnly) || !errors.Is(err, ErrWrongRole) {
		t.Fatalf("frontend write on replica: %v", err)
	}
	if err := v.Unfence(5, RoleNone, time.Time{}); !errors.Is(err, ErrWrongRole) {
		t.Fatalf("unfence as none: %v", err)
	}
}

func TestLeaseExpiry(t *testing.T) {
	v, _ := newTestVolume(t, 1<<20, 128<<10, Options{})
	if err := v.Unfence(2, RolePrimary, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(block(4096, 1), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Unfence(2, RolePrimary, time.Now().Add(-time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(block(4096, 2), 0, false); !errors.Is(err, ErrFenced) || !errors.Is(err, blockdev.ErrReadOnly) {
		t.Fatalf("write after lease expiry: %v", err)
	}
	if err := v.Flush(); !errors.Is(err, ErrFenced) {
		t.Fatalf("flush after lease expiry with unflushed writes: %v", err)
	}
	// Renewal restores writes.
	if err := v.Unfence(2, RolePrimary, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(block(4096, 2), 0, true); err != nil {
		t.Fatal(err)
	}
}

func TestStandaloneOpen(t *testing.T) {
	v, path := newTestVolume(t, 1<<20, 128<<10, Options{})
	if st := v.Status(); st.Fenced || st.Role != RolePrimary || st.Epoch != 1 {
		t.Fatalf("standalone create: %+v", st)
	}
	if err := v.FenceEpoch(9); err != nil {
		t.Fatal(err)
	}
	v = reopen(t, v, path, Options{})
	if st := v.Status(); st.Fenced || st.Role != RolePrimary || st.Epoch != 9 {
		t.Fatalf("standalone reopen keeps the persisted epoch: %+v", st)
	}
}

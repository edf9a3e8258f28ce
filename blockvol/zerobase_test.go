package blockvol

import (
	"bytes"
	"testing"
	"time"
)

func TestZeroBase(t *testing.T) {
	const size = 1 << 20
	r, _ := newReplica(t, 1)
	// Old data everywhere, durable in the extent.
	r.Fence()
	if err := r.ZeroBase(0, 4096); err == nil {
		t.Fatal("ZeroBase before BeginRebuild accepted")
	}
	if err := r.BeginRebuild(); err != nil {
		t.Fatal(err)
	}
	old := bytes.Repeat([]byte{0x5a}, size)
	if err := r.WriteBase(old, 0); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][2]int64{{100, 4096}, {0, 100}, {size - 4096, 8192}, {-4096, 4096}} {
		if err := r.ZeroBase(bad[0], bad[1]); err == nil {
			t.Fatalf("ZeroBase(%d, %d) accepted", bad[0], bad[1])
		}
	}
	if err := r.ZeroBase(4096, 64<<10); err != nil {
		t.Fatal(err)
	}
	if err := r.ZeroBase(size-8192, 8192); err != nil {
		t.Fatal(err)
	}
	if err := r.InstallBase(0); err != nil {
		t.Fatal(err)
	}
	if err := r.Unfence(1, RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	got := mustRead(t, r, 0, size)
	for i, c := range got {
		zero := i >= 4096 && i < 4096+64<<10 || i >= size-8192
		if zero && c != 0 || !zero && c != 0x5a {
			t.Fatalf("byte %d is %#x after ZeroBase", i, c)
		}
	}
}

func TestIsZero(t *testing.T) {
	for n := 0; n < 40; n++ {
		b := make([]byte, n)
		if !isZero(b) {
			t.Fatalf("%d zero bytes not zero", n)
		}
		for i := 0; i < n; i++ {
			b[i] = 1
			if isZero(b) {
				t.Fatalf("byte %d of %d set, still zero", i, n)
			}
			b[i] = 0
		}
	}
}

func TestSyncBase(t *testing.T) {
	r, path := newReplica(t, 1)
	if err := r.SyncBase(); err == nil {
		t.Fatal("SyncBase outside a rebuild accepted")
	}
	r.Fence()
	if err := r.BeginRebuild(); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteBase(bytes.Repeat([]byte{3}, 64<<10), 0); err != nil {
		t.Fatal(err)
	}
	if err := r.SyncBase(); err != nil {
		t.Fatal(err)
	}
	// Synced, but not installed: a restart finds the volume untrusted.
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r2, err := Open(path, Options{ManualFlush: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if !r2.Status().Untrusted {
		t.Fatal("a synced, uninstalled base is trusted after a restart")
	}
}

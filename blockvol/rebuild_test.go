package blockvol

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

func TestRebuild(t *testing.T) {
	const size = 1 << 20
	p, _ := newTestVolume(t, size, 256<<10, noFlush)
	r, rpath := newReplica(t, 1)
	// The replica diverged: it has records the primary never committed.
	for l := uint64(1); l <= 3; l++ {
		if err := r.ApplyReplicated(Record{LSN: l, Epoch: 1, Kind: KindWrite, LBA: l, Blocks: 1, Data: block(4096, 200)}); err != nil {
			t.Fatal(err)
		}
	}
	// Primary history: data, a trim, more data.
	if err := p.WriteAt(bytes.Repeat([]byte{7}, 64*4096), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := p.Trim(8*4096, 8*4096); err != nil {
		t.Fatal(err)
	}
	if err := p.WriteAt(block(4096, 9), 100*4096, false); err != nil {
		t.Fatal(err)
	}
	base := p.Status().Head
	image := mustRead(t, p, 0, size)

	if err := r.BeginRebuild(); err == nil {
		t.Fatal("rebuild of an unfenced volume accepted")
	}
	h, err := r.Hold(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	r.Fence()
	if err := r.WriteBase(image[:4096], 0); err == nil {
		t.Fatal("WriteBase before BeginRebuild accepted")
	}
	if err := r.BeginRebuild(); err != nil {
		t.Fatal(err)
	}
	<-h.Revoked()
	if st := r.Status(); !st.Untrusted {
		t.Fatal("not untrusted during rebuild")
	}
	for off := 0; off < size; off += 64 << 10 {
		if err := r.WriteBase(image[off:off+64<<10], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Unfence(1, RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := r.ApplyReplicated(Record{LSN: base + 1, Epoch: 1, Kind: KindTrim, LBA: 0, Blocks: 1}); !errors.Is(err, ErrFenced) {
		t.Fatalf("apply before InstallBase: %v", err)
	}
	if err := r.InstallBase(base); err != nil {
		t.Fatal(err)
	}
	if st := r.Status(); st.Head != base || st.Checkpoint != base || !st.Untrusted {
		t.Fatalf("after install: %+v", st)
	}
	// The primary moved on; replay (base, head].
	if err := p.WriteAt(block(4096, 11), 8*4096, false); err != nil {
		t.Fatal(err)
	}
	if err := p.WriteZeroes(0, 4096, false); err != nil {
		t.Fatal(err)
	}
	if err := p.ScanWAL(base+1, r.ApplyReplicated); err != nil {
		t.Fatal(err)
	}
	if err := r.FinishRebuild(); err != nil {
		t.Fatal(err)
	}
	if st := r.Status(); st.Untrusted || st.Head != p.Status().Head || st.Checkpoint != st.Head {
		t.Fatalf("after finish: %+v", st)
	}
	if !bytes.Equal(mustRead(t, r, 0, size), mustRead(t, p, 0, size)) {
		t.Fatal("rebuilt replica differs from the primary")
	}
	r.Close()
	r2, err := Open(rpath, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if st := r2.Status(); st.Untrusted || st.Head != p.Status().Head {
		t.Fatalf("after reopen: %+v", st)
	}
	if !bytes.Equal(mustRead(t, r2, 0, size), mustRead(t, p, 0, size)) {
		t.Fatal("rebuilt replica differs after reopen")
	}
}

func TestRebuildInterruptedStaysUntrusted(t *testing.T) {
	r, rpath := newReplica(t, 1)
	r.Fence()
	if err := r.BeginRebuild(); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteBase(block(4096, 1), 0); err != nil {
		t.Fatal(err)
	}
	r.Close()
	r2, err := Open(rpath, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if !r2.Status().Untrusted {
		t.Fatal("interrupted rebuild not untrusted after reopen")
	}
}

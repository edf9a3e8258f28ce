package blockvol

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

func newReplica(t *testing.T, epoch uint64) (*Volume, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "replica")
	r, err := Create(path, 1<<20, Options{WALSize: 256 << 10, ManualFlush: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	if err := r.Unfence(epoch, RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	return r, path
}

func TestReplicaApplyAndScan(t *testing.T) {
	p, _ := newTestVolume(t, 1<<20, 256<<10, noFlush)
	r, rpath := newReplica(t, 1)
	if err := p.WriteAt(block(4096, 1), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := p.WriteAt(block(8192, 2), 8192, false); err != nil {
		t.Fatal(err)
	}
	if err := p.Trim(8192, 4096); err != nil {
		t.Fatal(err)
	}
	if err := p.WriteZeroes(0, 4096, false); err != nil {
		t.Fatal(err)
	}
	if err := p.WriteAt(block(4096, 5), 40960, false); err != nil {
		t.Fatal(err)
	}
	ship := func(from uint64) int {
		n := 0
		if err := p.ScanWAL(from, func(rec Record) error {
			n++
			return r.ApplyReplicated(rec)
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := ship(1); n != 5 {
		t.Fatalf("shipped %d records", n)
	}
	if err := r.Flush(); err != nil {
		t.Fatal(err)
	}
	if st := r.Status(); st.Head != 5 || st.Durable != 5 {
		t.Fatalf("replica status %+v", st)
	}
	same := func(stage string) {
		t.Helper()
		a, b := mustRead(t, p, 0, 1<<20), mustRead(t, r, 0, 1<<20)
		if !bytes.Equal(a, b) {
			t.Fatalf("%s: replica differs from primary", stage)
		}
	}
	same("after ship")
	// Re-shipping is idempotent.
	if n := ship(2); n != 4 {
		t.Fatalf("reshipped %d", n)
	}
	same("after reship")
	if r.Status().Head != 5 {
		t.Fatal("duplicates appended")
	}
	// A gap is refused, nothing appended.
	gap := Record{LSN: 7, Epoch: 1, Kind: KindWrite, LBA: 0, Blocks: 1, Data: block(4096, 9)}
	if err := r.ApplyReplicated(gap); !errors.Is(err, ErrLSNGap) {
		t.Fatalf("gap: %v", err)
	}
	// Same LSN from another epoch conflicts.
	conflict := Record{LSN: 5, Epoch: 2, Kind: KindWrite, LBA: 0, Blocks: 1, Data: block(4096, 9)}
	if err := r.ApplyReplicated(conflict); !errors.Is(err, ErrLSNConflict) {
		t.Fatalf("conflict: %v", err)
	}
	// Malformed records are refused.
	bad := []Record{
		{LSN: 6, Epoch: 1, Kind: KindWrite, LBA: 0, Blocks: 2, Data: block(4096, 1)},
		{LSN: 6, Epoch: 1, Kind: KindWrite, LBA: 256, Blocks: 1, Data: block(4096, 1)},
		{LSN: 6, Epoch: 1, Kind: 9, LBA: 0, Blocks: 1},
		{LSN: 6, Epoch: 1, Kind: KindTrim, LBA: 0, Blocks: 0},
	}
	for i, b := range bad {
		if err := r.ApplyReplicated(b); !errors.Is(err, ErrBadRecord) {
			t.Errorf("bad record %d: %v", i, err)
		}
	}
	// More primary writes continue the stream; LSNs survive a replica reopen.
	if err := p.WriteAt(block(4096, 6), 4096, false); err != nil {
		t.Fatal(err)
	}
	ship(6)
	if err := r.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	r2, err := Open(rpath, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if st := r2.Status(); st.Head != 6 || st.Epoch != 1 || st.Role != RoleReplica || !st.Fenced {
		t.Fatalf("replica after reopen: %+v", st)
	}
	if err := r2.ApplyReplicated(Record{LSN: 7, Epoch: 1, Kind: KindWrite, Blocks: 1, Data: block(4096, 7)}); !errors.Is(err, ErrFenced) {
		t.Fatalf("apply while fenced: %v", err)
	}
	r = r2
	if err := r.Unfence(1, RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	same("after replica reopen")
	// A primary refuses replicated records.
	if err := p.ApplyReplicated(Record{LSN: 7, Epoch: 1, Kind: KindTrim, Blocks: 1}); !errors.Is(err, ErrWrongRole) {
		t.Fatalf("apply on primary: %v", err)
	}
}

func TestScanStopsOnCallbackError(t *testing.T) {
	p, _ := newTestVolume(t, 1<<20, 256<<10, noFlush)
	for i := 0; i < 4; i++ {
		if err := p.WriteAt(block(4096, byte(i)), 0, false); err != nil {
			t.Fatal(err)
		}
	}
	boom := errors.New("boom")
	n := 0
	err := p.ScanWAL(1, func(Record) error {
		n++
		if n == 2 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) || n != 2 {
		t.Fatalf("err %v after %d records", err, n)
	}
	if st := p.Status(); st.Holds != 0 {
		t.Fatal("scan leaked its hold")
	}
}

func TestTruncateWAL(t *testing.T) {
	r, path := newReplica(t, 1)
	for lsn := uint64(1); lsn <= 6; lsn++ {
		rec := Record{LSN: lsn, Epoch: 1, Kind: KindWrite, LBA: lsn % 3, Blocks: 1, Data: block(4096, byte(lsn))}
		if err := r.ApplyReplicated(rec); err != nil {
			t.Fatal(err)
		}
		if lsn == 2 {
			if err := r.Checkpoint(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := r.TruncateWAL(4); err == nil {
		t.Fatal("truncate while unfenced accepted")
	}
	h, err := r.Hold(3, 0)
	if err != nil {
		t.Fatal(err)
	}
	r.Fence()
	if err := r.TruncateWAL(1); !errors.Is(err, ErrBelowCheckpoint) {
		t.Fatalf("below checkpoint: %v", err)
	}
	if err := r.TruncateWAL(4); err != nil {
		t.Fatal(err)
	}
	<-h.Revoked()
	// State as of LSN 4: lba 1 = lsn 4, lba 2 = lsn 2, lba 0 = lsn 3.
	want := map[int64]byte{0: 3, 1: 4, 2: 2}
	check := func(v *Volume, stage string) {
		t.Helper()
		for lba, seed := range want {
			if got := mustRead(t, v, lba*4096, 4096); !bytes.Equal(got, block(4096, seed)) {
				t.Fatalf("%s: lba %d wrong", stage, lba)
			}
		}
	}
	check(r, "after truncate")
	st := r.Status()
	if st.Head != 4 || st.Checkpoint != 4 || st.Generation != 2 || st.Tail != 5 {
		t.Fatalf("status %+v", st)
	}
	// The log continues at 5 (a different record than the dropped one).
	if err := r.Unfence(2, RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := r.ApplyReplicated(Record{LSN: 5, Epoch: 2, Kind: KindWrite, LBA: 2, Blocks: 1, Data: block(4096, 50)}); err != nil {
		t.Fatal(err)
	}
	want[2] = 50
	if err := r.Flush(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	r2, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	check(r2, "after reopen")
	if st := r2.Status(); st.Head != 5 {
		t.Fatalf("reopen head %d", st.Head)
	}
}

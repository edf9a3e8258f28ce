package blockvol

import (
	"bytes"
	"errors"
	"testing"
)

// ApplyReplicatedBatch applies like ApplyReplicated record by record:
// duplicates count as applied, a gap stops the batch after the records
// before it, and a WAL smaller than the batch still makes progress.
func TestApplyReplicatedBatch(t *testing.T) {
	p, _ := newTestVolume(t, 1<<20, 256<<10, noFlush)
	r, _ := newReplica(t, 1)
	for i := 0; i < 10; i++ {
		if err := p.WriteAt(block(4096, byte(i+1)), int64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	var recs []Record
	if err := p.ScanWAL(1, func(rec Record) error {
		rec.Data = append([]byte(nil), rec.Data...)
		recs = append(recs, rec)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n, err := r.ApplyReplicatedBatch(recs[:4]); n != 4 || err != nil {
		t.Fatalf("first batch: %d, %v", n, err)
	}
	// 3..4 are duplicates, 5..6 new, then a gap (8 without 7).
	batch := append(append([]Record{}, recs[2:6]...), recs[7])
	if n, err := r.ApplyReplicatedBatch(batch); n != 4 || !errors.Is(err, ErrLSNGap) {
		t.Fatalf("batch with a gap: %d, %v", n, err)
	}
	if st := r.Status(); st.Head != 6 {
		t.Fatalf("head %d after the gap, want 6", st.Head)
	}
	bad := recs[6]
	bad.Data = bad.Data[:100]
	if n, err := r.ApplyReplicatedBatch([]Record{bad}); n != 0 || !errors.Is(err, ErrBadRecord) {
		t.Fatalf("bad record: %d, %v", n, err)
	}
	if n, err := r.ApplyReplicatedBatch(recs[6:]); n != 4 || err != nil {
		t.Fatalf("rest: %d, %v", n, err)
	}
	if err := r.Flush(); err != nil {
		t.Fatal(err)
	}
	got, want := make([]byte, 40960), make([]byte, 40960)
	if err := r.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if err := p.ReadAt(want, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("replica differs from primary after batches")
	}

	// A batch larger than the whole WAL.
	p2, _ := newTestVolume(t, 1<<20, 256<<10, noFlush)
	r2, _ := newReplica(t, 1)
	var big []Record
	for i := 0; i < 100; i++ {
		if err := p2.WriteAt(block(4096, byte(i)), int64(i%200)*4096, false); err != nil {
			t.Fatal(err)
		}
		if err := p2.ScanWAL(uint64(i+1), func(rec Record) error {
			rec.Data = append([]byte(nil), rec.Data...)
			big = append(big, rec)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := p2.Checkpoint(); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := r2.ApplyReplicatedBatch(big); n != len(big) || err != nil {
		t.Fatalf("batch larger than the WAL: %d of %d, %v", n, len(big), err)
	}
}

// Hold.Scan reads under the caller's hold: from the hold's LSN on, never
// below it, and not after the hold is gone.
func TestHoldScan(t *testing.T) {
	p, _ := newTestVolume(t, 1<<20, 256<<10, noFlush)
	for i := 0; i < 5; i++ {
		if err := p.WriteAt(block(4096, byte(i+1)), int64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	h, err := p.Hold(2, 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	if err := h.Scan(3, func(r Record) error {
		if r.Kind != KindWrite || r.Data[0] != byte(r.LSN) {
			t.Fatalf("record %d: kind %v data %d", r.LSN, r.Kind, r.Data[0])
		}
		got = append(got, r.LSN)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0] != 3 || got[2] != 5 {
		t.Fatalf("scanned %v", got)
	}
	if h.LSN() != 2 {
		t.Fatalf("scan moved the hold to %d", h.LSN())
	}
	if err := h.Scan(1, func(Record) error { return nil }); !errors.Is(err, ErrNotRetained) {
		t.Fatalf("scan below the hold: %v", err)
	}
	h.Release()
	if err := h.Scan(2, func(Record) error { return nil }); err == nil {
		t.Fatal("scan under a released hold succeeded")
	}
}

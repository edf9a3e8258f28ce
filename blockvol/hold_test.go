package blockvol

import (
	"errors"
	"testing"
	"time"
)

func TestHoldRetainsWAL(t *testing.T) {
	v, _ := newTestVolume(t, 1<<20, 256<<10, noFlush)
	for i := 0; i < 5; i++ {
		if err := v.WriteAt(block(4096, byte(i)), int64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	h, err := v.Hold(2, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	st := v.Status()
	if st.Checkpoint != 5 || st.Tail != 2 || st.Holds != 1 {
		t.Fatalf("with hold: %+v", st)
	}
	// The held records are still readable by a scan.
	var got []uint64
	if err := v.ScanWAL(2, func(r Record) error {
		if r.Kind != KindWrite || string(r.Data) != string(block(4096, byte(r.LSN-1))) {
			t.Errorf("lsn %d: wrong record", r.LSN)
		}
		got = append(got, r.LSN)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || got[0] != 2 || got[3] != 5 {
		t.Fatalf("scanned %v", got)
	}
	if _, err := v.Hold(1, 0); !errors.Is(err, ErrNotRetained) {
		t.Fatalf("hold below tail: %v", err)
	}
	if err := v.ScanWAL(1, func(Record) error { return nil }); !errors.Is(err, ErrNotRetained) {
		t.Fatalf("scan below tail: %v", err)
	}
	if _, err := v.Hold(7, 0); err == nil {
		t.Fatal("hold beyond head+1 accepted")
	}
	// Advancing frees what it no longer needs.
	if err := h.Advance(4); err != nil {
		t.Fatal(err)
	}
	if err := v.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if st := v.Status(); st.Tail != 4 {
		t.Fatalf("after advance: tail %d", st.Tail)
	}
	h.Release()
	h.Release() // idempotent
	if err := v.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if st := v.Status(); st.Tail != 6 || st.Holds != 0 || st.WALUsed != 0 {
		t.Fatalf("after release: %+v", st)
	}
	if h.Err() != nil {
		t.Fatalf("released hold reports %v", h.Err())
	}
}

func TestHoldBudgetRevoked(t *testing.T) {
	v, _ := newTestVolume(t, 4<<20, 256<<10, Options{FlushInterval: time.Millisecond})
	h, err := v.Hold(1, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	// Write far more than the budget; the flusher keeps checkpointing.
	for i := 0; i < 200; i++ {
		if err := v.WriteAt(block(4096, byte(i)), int64(i%64)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-h.Revoked():
	case <-time.After(10 * time.Second):
		t.Fatalf("hold over budget never revoked: %+v", v.Status())
	}
	if !errors.Is(h.Err(), ErrHoldRevoked) {
		t.Fatalf("revoked hold error: %v", h.Err())
	}
	if err := h.Advance(10); !errors.Is(err, ErrHoldRevoked) {
		t.Fatalf("advance on revoked hold: %v", err)
	}
	h.Release()
}

func TestHoldNeverWedgesWriters(t *testing.T) {
	// No byte budget, manual flushing: the WAL fills up behind the hold,
	// and writers must still finish (the hold is revoked).
	v, _ := newTestVolume(t, 4<<20, 128<<10, noFlush)
	h, err := v.Hold(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		for i := 0; i < 100; i++ {
			if err := v.WriteAt(block(4096, byte(i)), int64(i)*4096, false); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("writers wedged behind a hold: %+v", v.Status())
	}
	select {
	case <-h.Revoked():
	default:
		t.Fatal("hold not revoked although the WAL filled up")
	}
	for i := 0; i < 100; i++ {
		if got := mustRead(t, v, int64(i)*4096, 4096); string(got) != string(block(4096, byte(i))) {
			t.Fatalf("block %d", i)
		}
	}
}

func TestScanRevokedWhenWALFull(t *testing.T) {
	v, _ := newTestVolume(t, 4<<20, 128<<10, noFlush)
	if err := v.WriteAt(block(4096, 1), 0, false); err != nil {
		t.Fatal(err)
	}
	// A scan consumer that stalls while writers fill the WAL loses its pin.
	err := v.ScanWAL(1, func(r Record) error {
		for i := 0; i < 60; i++ {
			if err := v.WriteAt(block(4096, byte(i)), int64(i)*4096, false); err != nil {
				return err
			}
		}
		return nil
	})
	if !errors.Is(err, ErrHoldRevoked) {
		t.Fatalf("scan over a full WAL: %v", err)
	}
}

// TestHoldAtTailAfterWrapPad: the hold pins the tail record, which sits
// just after a wrap pad the tail already covers; writers filling the WAL
// must still get the hold revoked instead of waiting forever.
func TestHoldAtTailAfterWrapPad(t *testing.T) {
	v, _ := newTestVolume(t, 4<<20, 128<<10, Options{FlushInterval: 2 * time.Millisecond})
	for i := 0; i < 15; i++ { // 15 one-block batches: 120 KiB
		if err := v.WriteAt(block(4096, byte(i)), int64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	st := v.Status()
	h, err := v.Hold(st.Tail, 0)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		// The first record needs a wrap pad; then fill the WAL.
		if err := v.WriteAt(make([]byte, 8192), 0, false); err != nil {
			done <- err
			return
		}
		for i := 0; i < 40; i++ {
			if err := v.WriteAt(make([]byte, 4096), int64(i)*4096, false); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("writers wedged behind a hold at the tail: %+v", v.Status())
	}
	if !errors.Is(h.Err(), ErrHoldRevoked) {
		t.Fatalf("hold: %v", h.Err())
	}
}

package blockvol

import (
	"bytes"
	"os"
	"testing"
	"time"
)

var noFlush = Options{ManualFlush: true}

// recPositions returns the WAL metadata of the records still held.
func recPositions(v *Volume) []recMeta {
	v.mu.Lock()
	defer v.mu.Unlock()
	var out []recMeta
	for i := 0; i < v.recs.len(); i++ {
		out = append(out, *v.recs.at(i))
	}
	return out
}

// rewriteHeader re-encodes (with a valid CRC) the header of record m in the
// closed volume file after mut changed it.
func rewriteHeader(t *testing.T, path string, walSize int64, m recMeta, mut func(*recordHeader)) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	off := walOffset + m.abs%walSize
	b := make([]byte, recordHeaderSize)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	h, err := decodeRecordHeader(b, 4096)
	if err != nil {
		t.Fatal(err)
	}
	mut(&h)
	h.encode(b)
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := []byte{0}
	f.ReadAt(b, off)
	b[0] ^= 0x5a
	f.WriteAt(b, off)
}

// threeWrites writes LSN 1..3 to blocks 0..2, closes, and returns the
// record positions.
func threeWrites(t *testing.T) (string, []recMeta) {
	v, path := newTestVolume(t, 1<<20, 256<<10, noFlush)
	for i := 0; i < 3; i++ {
		if err := v.WriteAt(block(4096, byte(i+1)), int64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	recs := recPositions(v)
	if len(recs) != 3 {
		t.Fatalf("%d records", len(recs))
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	return path, recs
}

func openCheck(t *testing.T, path string, wantHead uint64) *Volume {
	return openCheckN(t, path, wantHead, int(wantHead))
}

// openCheckN opens path and checks the head and that blocks 0..2 hold the
// original data for the first orig of them, zeros after.
func openCheckN(t *testing.T, path string, wantHead uint64, orig int) *Volume {
	t.Helper()
	v, err := Open(path, Options{Standalone: true, ManualFlush: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	if st := v.Status(); st.Head != wantHead || st.Durable != wantHead {
		t.Fatalf("recovered head %d durable %d, want %d", st.Head, st.Durable, wantHead)
	}
	for i := 0; i < 3; i++ {
		want := make([]byte, 4096)
		if i < orig {
			want = block(4096, byte(i+1))
		}
		if got := mustRead(t, v, int64(i)*4096, 4096); !bytes.Equal(got, want) {
			t.Fatalf("block %d after recovery to %d: wrong data", i, wantHead)
		}
	}
	return v
}

func TestRecoveryClean(t *testing.T) {
	path, _ := threeWrites(t)
	openCheck(t, path, 3)
}

func TestRecoveryTornTail(t *testing.T) {
	path, recs := threeWrites(t)
	flipByte(t, path, walOffset+recs[2].abs+recordHeaderSize+1000) // data of LSN 3
	v := openCheck(t, path, 2)
	// New writes continue at LSN 3 and survive another recovery (the torn
	// bytes are padded over, so the new batch is reachable).
	if err := v.WriteAt(block(4096, 44), 8*4096, true); err != nil {
		t.Fatal(err)
	}
	if st := v.Status(); st.Head != 3 {
		t.Fatalf("head %d", st.Head)
	}
	v.Close()
	v2 := openCheckN(t, path, 3, 2)
	if got := mustRead(t, v2, 8*4096, 4096); !bytes.Equal(got, block(4096, 44)) {
		t.Fatal("write after torn-tail recovery lost")
	}
}

func TestRecoveryTornHeader(t *testing.T) {
	path, recs := threeWrites(t)
	flipByte(t, path, walOffset+recs[1].abs+20) // header of LSN 2
	openCheck(t, path, 1)
}

func TestRecoveryLSNGapStops(t *testing.T) {
	path, recs := threeWrites(t)
	rewriteHeader(t, path, 256<<10, recs[1], func(h *recordHeader) { h.lsn = 5 })
	openCheck(t, path, 1)
}

func TestRecoveryGenerationMismatchStops(t *testing.T) {
	path, recs := threeWrites(t)
	rewriteHeader(t, path, 256<<10, recs[1], func(h *recordHeader) { h.gen++ })
	openCheck(t, path, 1)
}

func TestRecoveryStaleRecordAfterHead(t *testing.T) {
	// A record from the previous lap (lower LSN) right after the head must
	// end the log even though it is otherwise valid.
	path, recs := threeWrites(t)
	rewriteHeader(t, path, 256<<10, recs[2], func(h *recordHeader) { h.lsn = 1 })
	openCheck(t, path, 2)
}

func TestWrapAround(t *testing.T) {
	const wal = 128 << 10
	v, path := newTestVolume(t, 1<<20, wal, noFlush)
	model := make([]byte, 1<<20)
	write := func(lba, n int, seed byte) {
		t.Helper()
		p := make([]byte, n*4096)
		for i := range p {
			p[i] = seed + byte(i>>12)
		}
		if err := v.WriteAt(p, int64(lba)*4096, false); err != nil {
			t.Fatal(err)
		}
		copy(model[lba*4096:], p)
	}
	// 25 one-block records (4160 bytes each, packed), then checkpoint:
	// tail at 104,000.
	for i := 0; i < 25; i++ {
		write(i, 1, byte(i))
	}
	if err := v.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	// Two more to 112,320, then a five-block record (20,544 bytes) that
	// cannot fit before the end (131,072): a wrap pad, and the record at
	// the start of the WAL.
	write(40, 1, 100)
	write(41, 1, 101)
	write(50, 5, 102)
	write(60, 1, 103)
	v.mu.Lock()
	wrapped := v.writeAbs > wal && v.checkpoint < v.head
	v.mu.Unlock()
	if !wrapped {
		t.Fatal("test did not wrap the WAL with unflushed records")
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	check := func(v *Volume, stage string) {
		t.Helper()
		if got := mustRead(t, v, 0, len(model)); !bytes.Equal(got, model) {
			t.Fatalf("%s: data differs", stage)
		}
	}
	check(v, "before reopen")
	head := v.Status().Head
	v = reopen(t, v, path, noFlush)
	if st := v.Status(); st.Head != head || st.Checkpoint != 25 {
		t.Fatalf("after reopen: head %d (want %d) checkpoint %d", st.Head, head, st.Checkpoint)
	}
	check(v, "after reopen across the wrap")
	// Keep going through several laps with checkpoints and reopens.
	for lap := 0; lap < 5; lap++ {
		for i := 0; i < 9; i++ {
			write((lap*9+i)%200, 1+i%3, byte(lap*16+i))
		}
		if lap%2 == 0 {
			if err := v.Checkpoint(); err != nil {
				t.Fatal(err)
			}
		}
		v = reopen(t, v, path, noFlush)
		check(v, "lap")
	}
}

func TestCheckpointAndTail(t *testing.T) {
	v, path := newTestVolume(t, 1<<20, 256<<10, noFlush)
	for i := 0; i < 10; i++ {
		if err := v.WriteAt(block(4096, byte(i)), int64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	st := v.Status()
	if st.Checkpoint != 0 || st.Tail != 1 || st.DirtyBlocks != 10 || st.WALUsed == 0 {
		t.Fatalf("before checkpoint: %+v", st)
	}
	if err := v.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	st = v.Status()
	if st.Checkpoint != 10 || st.Tail != 11 || st.DirtyBlocks != 0 || st.WALUsed != 0 || st.Durable != 10 {
		t.Fatalf("after checkpoint: %+v", st)
	}
	v = reopen(t, v, path, noFlush)
	st = v.Status()
	if st.Checkpoint != 10 || st.Head != 10 || st.Tail != 11 {
		t.Fatalf("after reopen: %+v", st)
	}
	for i := 0; i < 10; i++ {
		if got := mustRead(t, v, int64(i)*4096, 4096); !bytes.Equal(got, block(4096, byte(i))) {
			t.Fatalf("block %d from extent wrong", i)
		}
	}
	// The background flusher checkpoints on its own.
	v = reopen(t, v, path, Options{FlushInterval: 2 * time.Millisecond})
	if err := v.WriteAt(block(4096, 77), 0, false); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for v.Status().Checkpoint < 11 {
		if time.Now().After(deadline) {
			t.Fatalf("flusher never checkpointed: %+v", v.Status())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

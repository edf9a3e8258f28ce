package scsi

import (
	"bytes"
	"testing"
)

// A released READ buffer is reused by a later READ, which must still
// return exactly its own blocks (the buffer is not zeroed, so stale bytes
// would show).
func TestReleaseDataInRecyclesReadBuffers(t *testing.T) {
	lu, _ := newTestLU(t, 1024, Options{})
	const blocks = 8
	seen := map[*byte]bool{}
	reused := 0
	for i := 0; i < 40; i++ {
		lba := uint32(i * blocks)
		data := fill(blocks*testBS, byte(i+1))
		mustGood(t, lu, nexusA, cdb10(opWrite10, 0, lba, blocks), data)
		r := run(lu, nexusA, cdb10(opRead10, 0, lba, blocks), nil)
		wantStatus(t, r, StatusGood)
		if !bytes.Equal(r.DataIn, data) {
			t.Fatalf("read %d returned other data (first byte %#x, want %#x)", i, r.DataIn[0], data[0])
		}
		if r.buf == nil {
			t.Fatalf("read %d: data-in is not a recycled buffer", i)
		}
		p := &(*r.buf)[:1][0]
		if seen[p] {
			reused++
		}
		seen[p] = true
		lu.ReleaseDataIn(r)
		if r.DataIn != nil || r.buf != nil {
			t.Fatalf("ReleaseDataIn left DataIn (%d bytes) or the buffer set", len(r.DataIn))
		}
		lu.ReleaseDataIn(r) // a second release is harmless
	}
	// sync.Pool may drop items (always possible, often under -race), but
	// not nearly all of 40.
	if reused == 0 {
		t.Fatal("no READ reused a released buffer")
	}
	// A shorter read takes a buffer of the same class: still exact.
	data := fill(testBS, 0xEE)
	mustGood(t, lu, nexusA, cdb10(opWrite10, 0, 900, 1), data)
	if got := mustGood(t, lu, nexusA, cdb10(opRead10, 0, 900, 1), nil); !bytes.Equal(got, data) {
		t.Fatal("one-block read returned other data")
	}
}

// Responses that do not come from the pool are left alone, and failed
// reads hand back no buffer.
func TestReleaseDataInIgnoresOtherResponses(t *testing.T) {
	lu, _ := newTestLU(t, 64, Options{})
	r := run(lu, nexusA, []byte{opInquiry, 0, 0, 0, 96, 0}, nil)
	wantStatus(t, r, StatusGood)
	n := len(r.DataIn)
	lu.ReleaseDataIn(r)
	if len(r.DataIn) != n || n == 0 {
		t.Fatalf("INQUIRY data changed by ReleaseDataIn: %d -> %d bytes", n, len(r.DataIn))
	}
	r = run(lu, nexusA, cdb10(opRead10, 0, 63, 2), nil)
	wantSense(t, r, SenseIllegalRequest, 0x21, 0x00)
	if r.buf != nil || r.DataIn != nil {
		t.Fatal("failed READ carries a data-in buffer")
	}
	lu.ReleaseDataIn(r)
	lu.ReleaseDataIn(nil)
}

func TestReadBufferClasses(t *testing.T) {
	var p readBuffers
	for _, c := range []struct{ n, class int }{
		{1, 0}, {4096, 0}, {4097, 1}, {8192, 1}, {65536, 4}, {1 << 26, 14}, {1<<26 + 1, -1},
	} {
		if got := readBufferClass(c.n); got != c.class {
			t.Errorf("readBufferClass(%d) = %d, want %d", c.n, got, c.class)
		}
	}
	b := p.get(65536)
	if len(*b) != 65536 || cap(*b) != 65536 {
		t.Fatalf("get(64 KiB): len %d cap %d", len(*b), cap(*b))
	}
	b = p.get(5000)
	if len(*b) != 5000 || cap(*b) != 8192 {
		t.Fatalf("get(5000): len %d cap %d", len(*b), cap(*b))
	}
	p.put(b)
	huge := p.get(1<<26 + 4096)
	if len(*huge) != 1<<26+4096 {
		t.Fatalf("get beyond the classes: len %d", len(*huge))
	}
	p.put(huge) // dropped, not pooled
	odd := make([]byte, 100, 3000)
	p.put(&odd) // not a class size: dropped
}

func TestQuick(t *testing.T) {
	lu, _ := newTestLU(t, 1024, Options{})
	for _, c := range []struct {
		name  string
		cmd   Command
		quick bool
	}{
		{"read10 64k", Command{CDB: cdb10(opRead10, 0, 0, 64<<10/testBS), Read: true}, true},
		{"read10 128k", Command{CDB: cdb10(opRead10, 0, 0, 128<<10/testBS), Read: true}, true},
		{"read10 128k+1 block", Command{CDB: cdb10(opRead10, 0, 0, 128<<10/testBS+1), Read: true}, false},
		{"read6 0 = 256 blocks", Command{CDB: cdb6(opRead6, 0, 0), Read: true}, 256*testBS <= 128<<10},
		{"read6 1 block", Command{CDB: cdb6(opRead6, 0, 1), Read: true}, true},
		{"read12", Command{CDB: cdb12(opRead12, 0, 0, 1), Read: true}, true},
		{"read16", Command{CDB: cdb16(opRead16, 0, 0, 2), Read: true}, true},
		{"read16 huge", Command{CDB: cdb16(opRead16, 0, 0, 0xFFFFFFFF), Read: true}, false},
		{"read10 short cdb", Command{CDB: []byte{opRead10, 0, 0}, Read: true}, false},
		{"write10", Command{CDB: cdb10(opWrite10, 0, 0, 1), Write: true}, false},
		{"inquiry", Command{CDB: []byte{opInquiry, 0, 0, 0, 36, 0}, Read: true}, false},
		{"empty", Command{}, false},
	} {
		if got := lu.Quick(&c.cmd); got != c.quick {
			t.Errorf("%s: Quick = %v, want %v", c.name, got, c.quick)
		}
	}
}

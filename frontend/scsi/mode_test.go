package scsi

import (
	"encoding/binary"
	"testing"
)

// pagesOf splits mode pages into code -> page bytes.
func pagesOf(t *testing.T, p []byte) map[byte][]byte {
	t.Helper()
	out := map[byte][]byte{}
	for len(p) > 0 {
		if len(p) < 2 || len(p) < 2+int(p[1]) {
			t.Fatalf("truncated mode page % x", p)
		}
		out[p[0]&0x3F] = p[:2+int(p[1])]
		p = p[2+int(p[1]):]
	}
	return out
}

func TestModeSense6(t *testing.T) {
	lu, _ := newTestLU(t, 1000, Options{})
	d := mustGood(t, lu, nexusA, []byte{opModeSense6, 0, 0x3F, 0, 255, 0}, nil)
	if int(d[0]) != len(d)-1 || d[2] != devSpecDPOFUA || d[3] != 8 {
		t.Fatalf("header % x (len %d)", d[:4], len(d))
	}
	if binary.BigEndian.Uint32(d[4:]) != 1000 || uint32(d[9])<<16|uint32(d[10])<<8|uint32(d[11]) != testBS {
		t.Fatalf("block descriptor % x", d[4:12])
	}
	pages := pagesOf(t, d[12:])
	if len(pages) != 3 {
		t.Fatalf("pages %v", pages)
	}
	if c := pages[pageCaching]; len(c) != 20 || c[2]&cachingWCE == 0 {
		t.Fatalf("caching page % x", c)
	}
	if c := pages[pageControl]; len(c) != 12 || c[2]&0x04 != 0 {
		t.Fatalf("control page % x (D_SENSE must be 0)", c)
	}
	if c := pages[pageInfoExcept]; len(c) != 12 {
		t.Fatalf("IE page % x", c)
	}
	// DBD, single page.
	d = mustGood(t, lu, nexusA, []byte{opModeSense6, 0x08, pageCaching, 0, 255, 0}, nil)
	if d[3] != 0 || len(d) != 4+20 || d[4] != pageCaching {
		t.Fatalf("DBD caching % x", d)
	}
	// Changeable values: only WCE.
	d = mustGood(t, lu, nexusA, []byte{opModeSense6, 0x08, 0x40 | pageCaching, 0, 255, 0}, nil)
	if d[6] != cachingWCE {
		t.Fatalf("changeable caching % x", d[4:])
	}
	// Truncation keeps the full mode data length.
	d = mustGood(t, lu, nexusA, []byte{opModeSense6, 0, 0x3F, 0, 4, 0}, nil)
	if len(d) != 4 || d[0] != 3+8+44 {
		t.Fatalf("truncated % x", d)
	}
	wantSense(t, run(lu, nexusA, []byte{opModeSense6, 0, 0x01, 0, 255, 0}, nil), SenseIllegalRequest, 0x24, 0x00)
	wantSense(t, run(lu, nexusA, []byte{opModeSense6, 0, pageCaching, 1, 255, 0}, nil), SenseIllegalRequest, 0x24, 0x00)
	mustGood(t, lu, nexusA, []byte{opModeSense6, 0, 0x3F, 0xFF, 255, 0}, nil)
}

func TestModeSense10LongLBA(t *testing.T) {
	lu, _ := newTestLU(t, 1000, Options{})
	d := mustGood(t, lu, nexusA, []byte{opModeSense10, 0x10, pageControl, 0, 0, 0, 0, 1, 0, 0}, nil)
	if int(binary.BigEndian.Uint16(d[0:]))+2 != len(d) || d[4]&1 != 1 || binary.BigEndian.Uint16(d[6:]) != 16 {
		t.Fatalf("header % x", d[:8])
	}
	if binary.BigEndian.Uint64(d[8:]) != 1000 || binary.BigEndian.Uint32(d[20:]) != testBS || d[24] != pageControl {
		t.Fatalf("long block descriptor % x", d[8:26])
	}
	d = mustGood(t, lu, nexusA, []byte{opModeSense10, 0, pageControl, 0, 0, 0, 0, 1, 0, 0}, nil)
	if binary.BigEndian.Uint16(d[6:]) != 8 || d[4] != 0 {
		t.Fatalf("short descriptor header % x", d[:8])
	}
}

func TestModeSelect(t *testing.T) {
	lu, mem := newTestLU(t, 100, Options{})
	mustGood(t, lu, nexusB, cdb10(opTestUnitReady, 0, 0, 0)[:6], nil) // B is known
	cur := mustGood(t, lu, nexusA, []byte{opModeSense6, 0x08, pageCaching, 0, 255, 0}, nil)
	page := append([]byte(nil), cur[4:]...)
	page[2] &^= cachingWCE
	param := append([]byte{0, 0, 0, 0}, page...)
	mustGood(t, lu, nexusA, []byte{opModeSelect6, 0x10, 0, 0, byte(len(param)), 0}, param)
	if lu.wce.Load() {
		t.Fatal("WCE still set")
	}
	_, fuas := mem.Counts()
	mustGood(t, lu, nexusA, cdb10(opWrite10, 0, 0, 1), fill(testBS, 1))
	if _, f := mem.Counts(); f != fuas+1 {
		t.Fatal("with WCE=0 writes must be written through")
	}
	// The other nexus is told.
	wantSense(t, run(lu, nexusB, cdb10(opRead10, 0, 0, 1), nil), SenseUnitAttention, 0x2A, 0x01)
	// A reset restores the default.
	lu.Reset(ResetLUN, nexusA)
	if !lu.wce.Load() {
		t.Fatal("reset did not restore WCE")
	}

	// Changing a non-changeable field is refused and nothing changes.
	ctl := mustGood(t, lu, nexusA, []byte{opModeSense6, 0x08, pageControl, 0, 255, 0}, nil)
	bad := append([]byte{0, 0, 0, 0}, ctl[4:]...)
	bad[4+2] |= 0x04 // D_SENSE
	wantSense(t, run(lu, nexusA, []byte{opModeSelect6, 0x10, 0, 0, byte(len(bad)), 0}, bad), SenseIllegalRequest, 0x26, 0x00)
	// Same page unchanged: accepted (MODE SELECT 10 with a block descriptor).
	same := make([]byte, 8+8)
	binary.BigEndian.PutUint16(same[6:], 8)
	same[8+6] = testBS >> 8
	same = append(same, ctl[4:]...)
	mustGood(t, lu, nexusA, []byte{opModeSelect10, 0x10, 0, 0, 0, 0, 0, 0, byte(len(same)), 0}, same)
	// Wrong block length in the descriptor.
	same[8+6] = 0x10
	wantSense(t, run(lu, nexusA, []byte{opModeSelect10, 0x10, 0, 0, 0, 0, 0, 0, byte(len(same)), 0}, same), SenseIllegalRequest, 0x26, 0x00)
	// Unknown page, bad page length, truncated list, SP.
	unknown := []byte{0, 0, 0, 0, 0x19, 2, 0, 0}
	wantSense(t, run(lu, nexusA, []byte{opModeSelect6, 0x10, 0, 0, 8, 0}, unknown), SenseIllegalRequest, 0x26, 0x00)
	badLen := append([]byte{0, 0, 0, 0}, page...)
	badLen[5] = 10
	wantSense(t, run(lu, nexusA, []byte{opModeSelect6, 0x10, 0, 0, byte(len(badLen)), 0}, badLen), SenseIllegalRequest, 0x26, 0x00)
	wantSense(t, run(lu, nexusA, []byte{opModeSelect6, 0x10, 0, 0, 10, 0}, param[:10]), SenseIllegalRequest, 0x1A, 0x00)
	wantSense(t, run(lu, nexusA, []byte{opModeSelect6, 0x10, 0, 0, 2, 0}, param[:2]), SenseIllegalRequest, 0x1A, 0x00)
	wantSense(t, run(lu, nexusA, []byte{opModeSelect6, 0x11, 0, 0, byte(len(param)), 0}, param), SenseIllegalRequest, 0x24, 0x00)
	mustGood(t, lu, nexusA, []byte{opModeSelect6, 0x10, 0, 0, 0, 0}, nil)
}

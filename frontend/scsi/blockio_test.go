package scsi

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func TestReadWriteAllSizes(t *testing.T) {
	lu, mem := newTestLU(t, 1024, Options{})
	cases := []struct {
		name  string
		write func(lba uint32, n int) []byte
		read  func(lba uint32, n int) []byte
	}{
		{"6", func(l uint32, n int) []byte { return cdb6(opWrite6, l, byte(n)) }, func(l uint32, n int) []byte { return cdb6(opRead6, l, byte(n)) }},
		{"10", func(l uint32, n int) []byte { return cdb10(opWrite10, 0, l, uint16(n)) }, func(l uint32, n int) []byte { return cdb10(opRead10, 0, l, uint16(n)) }},
		{"12", func(l uint32, n int) []byte { return cdb12(opWrite12, 0, l, uint32(n)) }, func(l uint32, n int) []byte { return cdb12(opRead12, 0, l, uint32(n)) }},
		{"16", func(l uint32, n int) []byte { return cdb16(opWrite16, 0, uint64(l), uint32(n)) }, func(l uint32, n int) []byte { return cdb16(opRead16, 0, uint64(l), uint32(n)) }},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			lba := uint32(10 + 10*i)
			data := fill(3*testBS, byte(0x40+i))
			mustGood(t, lu, nexusA, c.write(lba, 3), data)
			if got := readBack(t, mem, int64(lba), 3); !bytes.Equal(got, data) {
				t.Fatal("device does not hold the written data")
			}
			if got := mustGood(t, lu, nexusA, c.read(lba, 3), nil); !bytes.Equal(got, data) {
				t.Fatal("read returned other data")
			}
			// Beyond the end of the medium.
			wantSense(t, run(lu, nexusA, c.read(1023, 2), nil), SenseIllegalRequest, 0x21, 0x00)
			wantSense(t, run(lu, nexusA, c.write(1023, 2), fill(2*testBS, 1)), SenseIllegalRequest, 0x21, 0x00)
		})
	}
}

func TestReadWrite6ZeroLengthIs256(t *testing.T) {
	lu, mem := newTestLU(t, 1024, Options{})
	data := fill(256*testBS, 0x5A)
	mustGood(t, lu, nexusA, cdb6(opWrite6, 0, 0), data)
	if !bytes.Equal(readBack(t, mem, 0, 256), data) {
		t.Fatal("WRITE(6) with length 0 did not write 256 blocks")
	}
	if got := mustGood(t, lu, nexusA, cdb6(opRead6, 0, 0), nil); len(got) != 256*testBS {
		t.Fatalf("READ(6) length 0 returned %d bytes, want 256 blocks", len(got))
	}
	// 21-bit LBA beyond the end.
	wantSense(t, run(lu, nexusA, cdb6(opRead6, 1000, 0), nil), SenseIllegalRequest, 0x21, 0x00)
}

func TestReadWriteZeroBlocksAndFlags(t *testing.T) {
	lu, mem := newTestLU(t, 100, Options{})
	for _, op := range []byte{opRead10, opWrite10} {
		if got := mustGood(t, lu, nexusA, cdb10(op, 0, 5, 0), nil); len(got) != 0 {
			t.Fatalf("op %#x length 0 returned data", op)
		}
		// LBA past the end with zero length is still out of range.
		wantSense(t, run(lu, nexusA, cdb10(op, 0, 101, 0), nil), SenseIllegalRequest, 0x21, 0x00)
		// RDPROTECT/WRPROTECT are not supported.
		wantSense(t, run(lu, nexusA, cdb10(op, 0x20, 0, 1), fill(testBS, 0)), SenseIllegalRequest, 0x24, 0x00)
		// DPO and FUA are accepted.
		mustGood(t, lu, nexusA, cdb10(op, flagDPO|flagFUA, 0, 1), fill(testBS, 0))
	}
	// LBA + length wrapping around 2^64.
	wantSense(t, run(lu, nexusA, cdb16(opRead16, 0, ^uint64(0), 2), nil), SenseIllegalRequest, 0x21, 0x00)
	// FUA reaches the device.
	_, fuas := mem.Counts()
	mustGood(t, lu, nexusA, cdb16(opWrite16, flagFUA, 1, 1), fill(testBS, 1))
	if _, f := mem.Counts(); f != fuas+1 {
		t.Fatalf("FUA write not passed to the device (%d -> %d)", fuas, f)
	}
	// Less data than the transfer length (EDTL < SCSI TL): only the whole
	// blocks sent are written.
	mustGood(t, lu, nexusA, cdb10(opWrite10, 0, 7, 3), fill(testBS+200, 9))
	if !bytes.Equal(readBack(t, mem, 7, 1), fill(testBS, 9)) || !bytes.Equal(readBack(t, mem, 8, 2), make([]byte, 2*testBS)) {
		t.Fatal("short write: want exactly the first block written")
	}
	mustGood(t, lu, nexusA, cdb10(opWrite10, 0, 20, 1), nil)
	if !bytes.Equal(readBack(t, mem, 20, 1), make([]byte, testBS)) {
		t.Fatal("write without data changed the medium")
	}
	// More data than needed: only the transfer length is written.
	mustGood(t, lu, nexusA, cdb10(opWrite10, 0, 30, 1), fill(2*testBS, 9))
	if !bytes.Equal(readBack(t, mem, 31, 1), make([]byte, testBS)) {
		t.Fatal("write past the transfer length")
	}
	// Above the maximum transfer length.
	lu2, _ := newTestLU(t, 100, Options{MaxTransferBlocks: 8})
	wantSense(t, run(lu2, nexusA, cdb10(opRead10, 0, 0, 9), nil), SenseIllegalRequest, 0x24, 0x00)
}

func TestReadOnly(t *testing.T) {
	lu, _ := newTestLU(t, 100, Options{ReadOnly: true})
	writes := [][]byte{
		cdb10(opWrite10, 0, 0, 1), cdb16(opWrite16, 0, 0, 1), cdb6(opWrite6, 0, 1),
		cdb10(opWriteSame10, 0, 0, 1), cdb10(opWriteVerify10, 0, 0, 1),
	}
	for _, c := range writes {
		wantSense(t, run(lu, nexusA, c, fill(testBS, 1)), SenseDataProtect, 0x27, 0x00)
	}
	unmap := cdb10(opUnmap, 0, 0, 24)
	wantSense(t, run(lu, nexusA, unmap, unmapList([2]uint64{0, 1})), SenseDataProtect, 0x27, 0x00)
	caw := cdb16(opCompareAndWrite, 0, 0, 0)
	caw[13] = 1
	wantSense(t, run(lu, nexusA, caw, fill(2*testBS, 0)), SenseDataProtect, 0x27, 0x00)
	mustGood(t, lu, nexusA, cdb10(opRead10, 0, 0, 1), nil)
	// WP in the mode parameter header.
	ms := mustGood(t, lu, nexusA, []byte{opModeSense6, 0, 0x3F, 0, 255, 0}, nil)
	if ms[2]&0x80 == 0 {
		t.Fatal("WP not set in MODE SENSE header")
	}

	// A fenced device (ErrReadOnly from the device) reports the same.
	lu2, mem := newTestLU(t, 100, Options{})
	mem.SetReadOnly(true)
	wantSense(t, run(lu2, nexusA, cdb10(opWrite10, 0, 0, 1), fill(testBS, 1)), SenseDataProtect, 0x27, 0x00)
}

func TestVerify(t *testing.T) {
	lu, _ := newTestLU(t, 100, Options{})
	data := fill(2*testBS, 0x11)
	data[testBS+7] = 0x22
	mustGood(t, lu, nexusA, cdb10(opWrite10, 0, 4, 2), data)
	for _, mk := range []func(flags byte, lba, n uint32) []byte{
		func(f byte, l, n uint32) []byte { return cdb10(opVerify10, f, l, uint16(n)) },
		func(f byte, l, n uint32) []byte { return cdb12(opVerify12, f, l, n) },
		func(f byte, l, n uint32) []byte { return cdb16(opVerify16, f, uint64(l), n) },
	} {
		mustGood(t, lu, nexusA, mk(0, 4, 2), nil)               // BYTCHK 0: medium check only
		mustGood(t, lu, nexusA, mk(0, 4, 2), fill(2*testBS, 0)) // mismatching data ignored
		mustGood(t, lu, nexusA, mk(0x02, 4, 2), data)
		bad := append([]byte(nil), data...)
		bad[testBS+3] ^= 0xFF
		r := run(lu, nexusA, mk(0x02, 4, 2), bad)
		wantSense(t, r, SenseMiscompare, 0x1D, 0x00)
		if r.Sense[0]&0x80 == 0 || binary.BigEndian.Uint32(r.Sense[3:7]) != testBS+3 {
			t.Fatalf("miscompare information field % x, want offset %d", r.Sense[3:7], testBS+3)
		}
		// BYTCHK 11: one block compared against every block.
		mustGood(t, lu, nexusA, mk(0x06, 4, 1), data[:testBS])
		r = run(lu, nexusA, mk(0x06, 4, 2), data[:testBS])
		wantSense(t, r, SenseMiscompare, 0x1D, 0x00)
		if got := binary.BigEndian.Uint32(r.Sense[3:7]); got != testBS+7 {
			t.Fatalf("BYTCHK 11 miscompare at %d, want %d", got, testBS+7)
		}
		wantSense(t, run(lu, nexusA, mk(0x04, 4, 1), nil), SenseIllegalRequest, 0x24, 0x00)
		wantSense(t, run(lu, nexusA, mk(0x20, 4, 1), nil), SenseIllegalRequest, 0x24, 0x00)
		wantSense(t, run(lu, nexusA, mk(0, 99, 2), nil), SenseIllegalRequest, 0x21, 0x00)
		mustGood(t, lu, nexusA, mk(0x02, 4, 0), nil)
	}
}

func TestWriteAndVerify(t *testing.T) {
	lu, mem := newTestLU(t, 100, Options{})
	for i, c := range [][]byte{
		cdb10(opWriteVerify10, 0x02, 3, 2), cdb12(opWriteVerify12, 0x12, 3, 2), cdb16(opWriteVerify16, 0, 3, 2),
	} {
		data := fill(2*testBS, byte(i+1))
		mustGood(t, lu, nexusA, c, data)
		if !bytes.Equal(readBack(t, mem, 3, 2), data) {
			t.Fatalf("case %d: data not written", i)
		}
	}
	wantSense(t, run(lu, nexusA, cdb10(opWriteVerify10, 0, 99, 2), fill(2*testBS, 0)), SenseIllegalRequest, 0x21, 0x00)
	wantSense(t, run(lu, nexusA, cdb10(opWriteVerify10, 0x20, 0, 1), fill(testBS, 0)), SenseIllegalRequest, 0x24, 0x00)
}

func TestSyncCacheAndPrefetch(t *testing.T) {
	lu, mem := newTestLU(t, 100, Options{})
	before, _ := mem.Counts()
	mustGood(t, lu, nexusA, cdb10(opSyncCache10, 0, 0, 0), nil)
	mustGood(t, lu, nexusA, cdb16(opSyncCache16, 0x02, 10, 5), nil)
	if after, _ := mem.Counts(); after != before+2 {
		t.Fatalf("SYNCHRONIZE CACHE flushed %d times, want 2", after-before)
	}
	wantSense(t, run(lu, nexusA, cdb10(opSyncCache10, 0, 99, 2), nil), SenseIllegalRequest, 0x21, 0x00)
	mustGood(t, lu, nexusA, cdb10(opPrefetch10, 0, 0, 10), nil)
	mustGood(t, lu, nexusA, cdb16(opPrefetch16, 0, 99, 1), nil)
	wantSense(t, run(lu, nexusA, cdb16(opPrefetch16, 0, 99, 2), nil), SenseIllegalRequest, 0x21, 0x00)
}

func TestWriteSame(t *testing.T) {
	lu, mem := newTestLU(t, 200, Options{})
	pattern := fill(testBS, 0xA6)
	mustGood(t, lu, nexusA, cdb10(opWriteSame10, 0, 10, 5), pattern)
	if !bytes.Equal(readBack(t, mem, 10, 5), fill(5*testBS, 0xA6)) {
		t.Fatal("WRITE SAME(10) pattern not written")
	}
	mustGood(t, lu, nexusA, cdb16(opWriteSame16, 0, 12, 2), make([]byte, testBS))
	if !bytes.Equal(readBack(t, mem, 12, 2), make([]byte, 2*testBS)) {
		t.Fatal("zero WRITE SAME(16) not applied")
	}
	// UNMAP bit: blocks read back as zeros (LBPRZ), whatever the pattern.
	for _, p := range [][]byte{make([]byte, testBS), pattern} {
		mustGood(t, lu, nexusA, cdb10(opWriteSame10, 0, 20, 4), pattern)
		mustGood(t, lu, nexusA, cdb16(opWriteSame16, 0x08, 20, 4), p)
		if !bytes.Equal(readBack(t, mem, 20, 4), make([]byte, 4*testBS)) {
			t.Fatal("WRITE SAME with UNMAP did not deallocate")
		}
	}
	// NDOB: no data-out buffer, zeros.
	mustGood(t, lu, nexusA, cdb10(opWriteSame10, 0, 30, 2), pattern)
	mustGood(t, lu, nexusA, cdb16(opWriteSame16, 0x09, 30, 2), nil)
	if !bytes.Equal(readBack(t, mem, 30, 2), make([]byte, 2*testBS)) {
		t.Fatal("WRITE SAME(16) NDOB did not zero")
	}
	// Zero blocks: to the end of the medium.
	mustGood(t, lu, nexusA, cdb10(opWriteSame10, 0, 190, 0), pattern)
	if !bytes.Equal(readBack(t, mem, 190, 10), fill(10*testBS, 0xA6)) {
		t.Fatal("WRITE SAME with zero blocks did not write to the end")
	}
	wantSense(t, run(lu, nexusA, cdb10(opWriteSame10, 0, 200, 0), pattern), SenseIllegalRequest, 0x21, 0x00)
	wantSense(t, run(lu, nexusA, cdb16(opWriteSame16, 0, 199, 2), pattern), SenseIllegalRequest, 0x21, 0x00)
	// Data-out must be exactly one block.
	wantSense(t, run(lu, nexusA, cdb10(opWriteSame10, 0x08, 0, 1), pattern[:testBS/2]), SenseIllegalRequest, 0x0E, 0x03)
	wantSense(t, run(lu, nexusA, cdb10(opWriteSame10, 0x08, 0, 1), fill(2*testBS, 0)), SenseIllegalRequest, 0x24, 0x00)
	// ANCHOR, WRPROTECT, PBDATA/LBDATA, NDOB on the 10-byte form.
	for _, flags := range []byte{0x18, 0x20, 0x02, 0x04, 0x01} {
		wantSense(t, run(lu, nexusA, cdb10(opWriteSame10, flags, 0, 1), pattern), SenseIllegalRequest, 0x24, 0x00)
	}
	// Above the maximum WRITE SAME length.
	lu2, _ := newTestLU(t, 200, Options{MaxWriteSameBlocks: 16})
	wantSense(t, run(lu2, nexusA, cdb16(opWriteSame16, 0, 0, 17), pattern), SenseIllegalRequest, 0x24, 0x00)
	// "To the end" counts against it too.
	wantSense(t, run(lu2, nexusA, cdb16(opWriteSame16, 0, 100, 0), pattern), SenseIllegalRequest, 0x24, 0x00)
	mustGood(t, lu2, nexusA, cdb16(opWriteSame16, 0, 184, 0), pattern)
	// Large pattern write crossing the chunk size.
	lu3, mem3 := newTestLU(t, 5000, Options{})
	mustGood(t, lu3, nexusA, cdb16(opWriteSame16, 0, 1, 4500), pattern)
	if !bytes.Equal(readBack(t, mem3, 1, 4500), fill(4500*testBS, 0xA6)) {
		t.Fatal("large WRITE SAME wrong")
	}
}

// unmapList builds an UNMAP parameter list from (lba, count) pairs.
func unmapList(descs ...[2]uint64) []byte {
	p := make([]byte, 8+16*len(descs))
	binary.BigEndian.PutUint16(p[0:], uint16(len(p)-2))
	binary.BigEndian.PutUint16(p[2:], uint16(16*len(descs)))
	for i, d := range descs {
		binary.BigEndian.PutUint64(p[8+16*i:], d[0])
		binary.BigEndian.PutUint32(p[8+16*i+8:], uint32(d[1]))
	}
	return p
}

func TestUnmap(t *testing.T) {
	lu, mem := newTestLU(t, 100, Options{MaxUnmapBlocks: 50, MaxUnmapDescriptors: 4})
	mustGood(t, lu, nexusA, cdb10(opWrite10, 0, 0, 100), fill(100*testBS, 0x77))
	list := unmapList([2]uint64{2, 3}, [2]uint64{10, 1}, [2]uint64{20, 0})
	mustGood(t, lu, nexusA, cdb10(opUnmap, 0, 0, uint16(len(list))), list)
	if !bytes.Equal(readBack(t, mem, 2, 3), make([]byte, 3*testBS)) || !bytes.Equal(readBack(t, mem, 10, 1), make([]byte, testBS)) {
		t.Fatal("UNMAP did not deallocate")
	}
	if !bytes.Equal(readBack(t, mem, 5, 5), fill(5*testBS, 0x77)) {
		t.Fatal("UNMAP touched other blocks")
	}
	// Parameter list length 0, or zero blocks at the end: nothing to do.
	mustGood(t, lu, nexusA, cdb10(opUnmap, 0, 0, 0), nil)
	mustGood(t, lu, nexusA, cdb10(opUnmap, 0, 0, 24), unmapList([2]uint64{100, 0}))
	mustGood(t, lu, nexusA, cdb10(opUnmap, 0, 0, 8), unmapList())
	cases := []struct {
		name           string
		cdb            []byte
		data           []byte
		key, asc, ascq byte
	}{
		{"short list", cdb10(opUnmap, 0, 0, 6), make([]byte, 6), 5, 0x1A, 0},
		{"data shorter than list", cdb10(opUnmap, 0, 0, 24), make([]byte, 16), 5, 0x1A, 0},
		{"descriptor length past list", cdb10(opUnmap, 0, 0, 24), func() []byte { p := unmapList([2]uint64{0, 1}); p[3] = 32; return p }(), 5, 0x1A, 0},
		{"beyond end", cdb10(opUnmap, 0, 0, 24), unmapList([2]uint64{99, 2}), 5, 0x21, 0},
		{"too many descriptors", cdb10(opUnmap, 0, 0, 88), unmapList([2]uint64{0, 1}, [2]uint64{1, 1}, [2]uint64{2, 1}, [2]uint64{3, 1}, [2]uint64{4, 1}), 5, 0x26, 0},
		{"too many blocks", cdb10(opUnmap, 0, 0, 40), unmapList([2]uint64{0, 30}, [2]uint64{40, 30}), 5, 0x26, 0},
		{"anchor", cdb10(opUnmap, 1, 0, 24), unmapList([2]uint64{0, 1}), 5, 0x24, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mustGood(t, lu, nexusA, cdb10(opWrite10, 0, 0, 100), fill(100*testBS, 0x77))
			wantSense(t, run(lu, nexusA, c.cdb, c.data), c.key, c.asc, c.ascq)
			if !bytes.Equal(readBack(t, mem, 0, 100), fill(100*testBS, 0x77)) {
				t.Fatal("failed UNMAP changed the medium")
			}
		})
	}
}

func cawCDB(flags byte, lba uint64, n byte) []byte {
	c := cdb16(opCompareAndWrite, flags, lba, 0)
	c[10], c[11], c[12], c[13] = 0, 0, 0, n
	return c
}

func TestCompareAndWrite(t *testing.T) {
	lu, mem := newTestLU(t, 100, Options{})
	old := fill(2*testBS, 0x01)
	mustGood(t, lu, nexusA, cdb10(opWrite10, 0, 5, 2), old)
	next := fill(2*testBS, 0x02)
	mustGood(t, lu, nexusA, cawCDB(flagFUA, 5, 2), append(append([]byte(nil), old...), next...))
	if !bytes.Equal(readBack(t, mem, 5, 2), next) {
		t.Fatal("COMPARE AND WRITE did not write")
	}
	// Miscompare: nothing written, information = offset of first difference.
	cmp := append([]byte(nil), next...)
	cmp[testBS+17] = 0xEE
	r := run(lu, nexusA, cawCDB(0, 5, 2), append(cmp, fill(2*testBS, 0x03)...))
	wantSense(t, r, SenseMiscompare, 0x1D, 0x00)
	if r.Sense[0]&0x80 == 0 || binary.BigEndian.Uint32(r.Sense[3:7]) != testBS+17 {
		t.Fatalf("information % x, want %d", r.Sense[3:7], testBS+17)
	}
	if !bytes.Equal(readBack(t, mem, 5, 2), next) {
		t.Fatal("miscompare changed the medium")
	}
	wantSense(t, run(lu, nexusA, cawCDB(0, 99, 2), fill(4*testBS, 0)), SenseIllegalRequest, 0x21, 0x00)
	wantSense(t, run(lu, nexusA, cawCDB(0, 0, 1), fill(testBS, 0)), SenseIllegalRequest, 0x0E, 0x03)
	wantSense(t, run(lu, nexusA, cawCDB(0, 0, 1), fill(3*testBS, 0)), SenseIllegalRequest, 0x24, 0x00)
	wantSense(t, run(lu, nexusA, cawCDB(0x20, 0, 1), fill(2*testBS, 0)), SenseIllegalRequest, 0x24, 0x00)
	mustGood(t, lu, nexusA, cawCDB(0, 0, 0), nil)
	// 256 blocks do not fit the one-byte field: data with a zero count.
	wantSense(t, run(lu, nexusA, cawCDB(0, 0, 0), fill(512*testBS, 0)), SenseIllegalRequest, 0x24, 0x00)
}

func TestDataOutLength(t *testing.T) {
	lu, _ := newTestLU(t, 100, Options{})
	cases := []struct {
		cdb  []byte
		want uint32
		ok   bool
	}{
		{cdb6(opWrite6, 0, 0), 256 * testBS, true},
		{cdb10(opWrite10, 0, 0, 3), 3 * testBS, true},
		{cdb12(opWrite12, 0, 0, 2), 2 * testBS, true},
		{cdb16(opWrite16, 0, 0, 0xFFFFFFFF), 0xFFFFFFFF, true},
		{cdb10(opWriteVerify10, 0, 0, 1), testBS, true},
		{cdb10(opVerify10, 0, 0, 4), 0, true},
		{cdb10(opVerify10, 0x02, 0, 4), 4 * testBS, true},
		{cdb16(opVerify16, 0x06, 0, 4), testBS, true},
		{cdb10(opWriteSame10, 0, 0, 9), testBS, true},
		{cdb16(opWriteSame16, 0x01, 0, 9), 0, true},
		{cawCDB(0, 0, 3), 6 * testBS, true},
		{cdb10(opUnmap, 0, 0, 40), 40, true},
		{[]byte{opModeSelect6, 0x10, 0, 0, 28, 0}, 28, true},
		{[]byte{opPersistResOut, 0, 0, 0, 0, 0, 0, 0, 24, 0}, 24, true},
		{cdb10(opRead10, 0, 0, 1), 0, false},
		{[]byte{opWrite16, 0}, 0, false},
		{[]byte{0xC5}, 0, false},
		{nil, 0, false},
	}
	for _, c := range cases {
		n, ok := lu.DataOutLength(c.cdb)
		if n != c.want || ok != c.ok {
			t.Errorf("DataOutLength(% x) = %d, %v; want %d, %v", c.cdb, n, ok, c.want, c.ok)
		}
	}
}

func TestGetLBAStatus(t *testing.T) {
	lu, _ := newTestLU(t, 100, Options{})
	mustGood(t, lu, nexusA, cdb10(opWrite10, 0, 10, 5), fill(5*testBS, 0x33))
	c := cdb16(opServiceActionIn16, saGetLBAStatus, 8, 0)
	binary.BigEndian.PutUint32(c[10:], 1024)
	d := mustGood(t, lu, nexusA, c, nil)
	if n := binary.BigEndian.Uint32(d[0:]); int(n) != len(d)-4 || len(d) != 8+3*16 {
		t.Fatalf("parameter data length %d for %d bytes", n, len(d))
	}
	want := []struct {
		lba    uint64
		n      uint32
		status byte
	}{{8, 2, 1}, {10, 5, 0}, {15, 85, 1}}
	for i, w := range want {
		e := d[8+16*i:]
		if binary.BigEndian.Uint64(e) != w.lba || binary.BigEndian.Uint32(e[8:]) != w.n || e[12] != w.status {
			t.Fatalf("descriptor %d: % x, want %+v", i, e[:16], w)
		}
	}
	c = cdb16(opServiceActionIn16, saGetLBAStatus, 100, 0)
	binary.BigEndian.PutUint32(c[10:], 24)
	wantSense(t, run(lu, nexusA, c, nil), SenseIllegalRequest, 0x21, 0x00)
}

func TestReadCapacity(t *testing.T) {
	lu, _ := newTestLU(t, 1000, Options{PhysicalBlockExponent: 3})
	d := mustGood(t, lu, nexusA, cdb10(opReadCapacity10, 0, 0, 0), nil)
	if binary.BigEndian.Uint32(d[0:]) != 999 || binary.BigEndian.Uint32(d[4:]) != testBS {
		t.Fatalf("READ CAPACITY(10) % x", d)
	}
	wantSense(t, run(lu, nexusA, cdb10(opReadCapacity10, 0, 5, 0), nil), SenseIllegalRequest, 0x24, 0x00)
	c := cdb16(opServiceActionIn16, saReadCapacity16, 0, 32)
	d = mustGood(t, lu, nexusA, c, nil)
	if len(d) != 32 || binary.BigEndian.Uint64(d[0:]) != 999 || binary.BigEndian.Uint32(d[8:]) != testBS {
		t.Fatalf("READ CAPACITY(16) % x", d)
	}
	if d[12] != 0 || d[13] != 3 || d[14]&0xC0 != 0xC0 {
		t.Fatalf("READ CAPACITY(16) protection/exponent/LBPME/LBPRZ bytes % x", d[12:16])
	}
	c = cdb16(opServiceActionIn16, saReadCapacity16, 0, 12)
	if d = mustGood(t, lu, nexusA, c, nil); len(d) != 12 {
		t.Fatalf("allocation length 12 returned %d bytes", len(d))
	}
	wantSense(t, run(lu, nexusA, cdb16(opServiceActionIn16, 0x1F, 0, 32), nil), SenseIllegalRequest, 0x24, 0x00)
}

package blockvol

import "testing"

func TestIndexPacking(t *testing.T) {
	for _, abs := range []int64{0, 64, 4096, 1 << 40, (1 << 50) + 128} {
		if got := unpackAbs(packData(abs)); got != abs || isZeroLoc(packData(abs)) {
			t.Fatalf("data %d -> %d", abs, got)
		}
		if got := unpackAbs(packZero(abs)); got != abs || !isZeroLoc(packZero(abs)) {
			t.Fatalf("zero %d -> %d", abs, got)
		}
		if packData(abs) == packZero(abs) {
			t.Fatal("data and zero locations collide")
		}
	}
}

func TestIndexApplyRetire(t *testing.T) {
	v := &Volume{bs: 4096, index: make(map[uint64]uint64)}
	w1 := recMeta{lsn: 1, kind: KindWrite, abs: 0, lba: 10, blocks: 3, dataLen: 3 * 4096}
	w2 := recMeta{lsn: 2, kind: KindWrite, abs: w1.length(), lba: 11, blocks: 1, dataLen: 4096}
	small := recMeta{lsn: 3, kind: KindTrim, abs: w2.abs + w2.length(), lba: 12, blocks: 2}
	big := recMeta{lsn: 4, kind: KindZero, abs: small.abs + 64, lba: 0, blocks: smallZeroBlocks + 1}
	w3 := recMeta{lsn: 5, kind: KindWrite, abs: big.abs + 64, lba: 5, blocks: 1, dataLen: 4096}
	v.applyIndexLocked(&w1)
	v.applyIndexLocked(&w2)
	if got := v.index[11]; got != packData(w2.abs+recordHeaderSize) {
		t.Fatal("newer write does not win")
	}
	if got := v.index[12]; got != packData(w1.abs+recordHeaderSize+2*4096) {
		t.Fatal("block offset inside a record")
	}
	v.applyIndexLocked(&small)
	if !isZeroLoc(v.index[12]) || !isZeroLoc(v.index[13]) || isZeroLoc(v.index[10]) {
		t.Fatal("small trim not in the index")
	}
	v.applyIndexLocked(&big)
	if len(v.index) != 0 || len(v.zeros) != 1 {
		t.Fatalf("large zero range: %d entries, %d ranges", len(v.index), len(v.zeros))
	}
	for _, lba := range []uint64{10, 11, 12, 13} {
		if _, ok := v.index[lba]; ok {
			t.Fatalf("lba %d still indexed under a large zero range", lba)
		}
		if !v.inZeroRangeLocked(lba) {
			t.Fatalf("lba %d not covered", lba)
		}
	}
	v.applyIndexLocked(&w3)
	if _, ok := v.index[5]; !ok {
		t.Fatal("write after a large zero range not indexed")
	}
	// Retiring old records leaves newer entries alone.
	v.retireIndexLocked(&w1)
	v.retireIndexLocked(&w2)
	v.retireIndexLocked(&small)
	v.retireZerosLocked(4)
	if len(v.zeros) != 0 || v.inZeroRangeLocked(11) {
		t.Fatal("zero range not retired")
	}
	if _, ok := v.index[5]; !ok {
		t.Fatal("retiring older records dropped a newer entry")
	}
	v.retireIndexLocked(&w3)
	if len(v.index) != 0 {
		t.Fatalf("%d entries left", len(v.index))
	}
}

func TestRecQueue(t *testing.T) {
	var q recQueue
	for i := uint64(1); i <= 3000; i++ {
		q.push(recMeta{lsn: i})
	}
	if q.find(0) != nil || q.find(3001) != nil || q.find(1500).lsn != 1500 {
		t.Fatal("find")
	}
	q.popBefore(2000)
	if q.len() != 1001 || q.firstLSN() != 2000 || q.find(1999) != nil || q.find(2500).lsn != 2500 {
		t.Fatalf("after pop: len %d first %d", q.len(), q.firstLSN())
	}
	q.truncateAfter(2100)
	if q.len() != 101 || q.find(2101) != nil {
		t.Fatal("truncate")
	}
	q.popBefore(5000)
	if q.len() != 0 || q.firstLSN() != 0 {
		t.Fatal("empty")
	}
}

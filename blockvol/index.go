package blockvol

// The index maps each dirty LBA to where its newest version lives until the
// flusher has put that version in the extent. One map entry per dirty block:
// key = LBA, value = packed location (8+8 bytes of payload; Go's swiss-table
// map stays well under the 64 bytes per dirty block target).
//
// Value packing: bit 0 set means "reads as zeros" (a small trim or
// write-zeroes; the rest is the record's absolute WAL position / 64, which
// makes the value unique per record). Bit 0 clear: the rest is the
// absolute WAL position / 64 of this block's data.
//
// Large trims (more than smallZeroBlocks blocks) are not expanded into the
// map: they delete the covered entries and are kept as ranges in zeroRanges
// until flushed. Every map entry is newer than every range covering it,
// because a range deletes what it covers when it is added.

const smallZeroBlocks = 256

func packData(abs int64) uint64    { return uint64(abs/recordAlign) << 1 }
func packZero(recAbs int64) uint64 { return uint64(recAbs/recordAlign)<<1 | 1 }
func unpackAbs(v uint64) int64     { return int64(v>>1) * recordAlign }
func isZeroLoc(v uint64) bool      { return v&1 == 1 }

type zeroRange struct {
	lba, blocks uint64
	lsn         uint64
}

// recMeta is what the volume remembers about each WAL record between the
// tail and the head.
type recMeta struct {
	lsn     uint64
	epoch   uint64
	abs     int64 // absolute WAL position of the header
	lba     uint64
	blocks  uint32
	dataLen uint32
	kind    Kind
}

func (m *recMeta) length() int64 { return recordLen(int(m.dataLen)) }

// recQueue holds recMeta for LSNs first..first+len-1, contiguous.
type recQueue struct {
	items []recMeta
	off   int
}

func (q *recQueue) len() int { return len(q.items) - q.off }

func (q *recQueue) push(m recMeta) { q.items = append(q.items, m) }

func (q *recQueue) at(i int) *recMeta { return &q.items[q.off+i] }

// first returns the lowest LSN held, or 0 if empty.
func (q *recQueue) firstLSN() uint64 {
	if q.len() == 0 {
		return 0
	}
	return q.items[q.off].lsn
}

// find returns the meta for lsn, or nil.
func (q *recQueue) find(lsn uint64) *recMeta {
	n := q.len()
	if n == 0 {
		return nil
	}
	f := q.items[q.off].lsn
	if lsn < f || lsn-f >= uint64(n) {
		return nil
	}
	return &q.items[q.off+int(lsn-f)]
}

// popBefore drops every record with LSN < lsn.
func (q *recQueue) popBefore(lsn uint64) {
	for q.len() > 0 && q.items[q.off].lsn < lsn {
		q.off++
	}
	if q.off > 1024 && q.off > len(q.items)/2 {
		n := copy(q.items, q.items[q.off:])
		q.items = q.items[:n]
		q.off = 0
	}
	if q.len() == 0 {
		q.items = q.items[:0]
		q.off = 0
	}
}

// truncateAfter drops every record with LSN > lsn.
func (q *recQueue) truncateAfter(lsn uint64) {
	for q.len() > 0 && q.items[len(q.items)-1].lsn > lsn {
		q.items = q.items[:len(q.items)-1]
	}
}

func (q *recQueue) reset() { q.items, q.off = q.items[:0], 0 }

// applyIndexLocked makes the record visible to readers. Called in the same
// critical section that allocated its LSN (or during recovery).
func (v *Volume) applyIndexLocked(m *recMeta) {
	switch m.kind {
	case KindWrite:
		data := m.abs + recordHeaderSize
		for i := uint64(0); i < uint64(m.blocks); i++ {
			v.index[m.lba+i] = packData(data + int64(i)*int64(v.bs))
		}
	case KindTrim, KindZero:
		if m.blocks <= smallZeroBlocks {
			z := packZero(m.abs)
			for i := uint64(0); i < uint64(m.blocks); i++ {
				v.index[m.lba+i] = z
			}
			return
		}
		lo, hi := m.lba, m.lba+uint64(m.blocks)
		if uint64(len(v.index)) < uint64(m.blocks) {
			for lba := range v.index {
				if lba >= lo && lba < hi {
					delete(v.index, lba)
				}
			}
		} else {
			for lba := lo; lba < hi; lba++ {
				delete(v.index, lba)
			}
		}
		v.zeros = append(v.zeros, zeroRange{lba: lo, blocks: uint64(m.blocks), lsn: m.lsn})
	}
}

// retireIndexLocked forgets a record whose effects are now in the extent:
// entries still pointing at it are dropped (newer ones stay).
func (v *Volume) retireIndexLocked(m *recMeta) {
	switch m.kind {
	case KindWrite:
		data := m.abs + recordHeaderSize
		for i := uint64(0); i < uint64(m.blocks); i++ {
			if cur, ok := v.index[m.lba+i]; ok && cur == packData(data+int64(i)*int64(v.bs)) {
				delete(v.index, m.lba+i)
			}
		}
	case KindTrim, KindZero:
		if m.blocks <= smallZeroBlocks {
			z := packZero(m.abs)
			for i := uint64(0); i < uint64(m.blocks); i++ {
				if cur, ok := v.index[m.lba+i]; ok && cur == z {
					delete(v.index, m.lba+i)
				}
			}
		}
	}
}

// retireZerosLocked drops zero ranges whose record is at or below lsn.
func (v *Volume) retireZerosLocked(lsn uint64) {
	n := 0
	for _, z := range v.zeros {
		if z.lsn > lsn {
			v.zeros[n] = z
			n++
		}
	}
	v.zeros = v.zeros[:n]
}

// inZeroRangeLocked reports whether lba is covered by a pending large trim.
func (v *Volume) inZeroRangeLocked(lba uint64) bool {
	for i := len(v.zeros) - 1; i >= 0; i-- {
		z := &v.zeros[i]
		if lba >= z.lba && lba-z.lba < z.blocks {
			return true
		}
	}
	return false
}

package blockvol

import (
	"fmt"

	"github.com/golang/glog"
)

// walScanner reads records from the WAL region in order, starting at a
// known position and LSN, and stops at the first record that is not valid,
// not of this generation, or not exactly the next LSN.
type walScanner struct {
	v        *Volume
	gen      uint64
	abs      int64  // absolute position of the next header
	startAbs int64  // where the scan began (for the one-lap limit)
	next     uint64 // LSN expected next
	hdr      [recordHeaderSize]byte
	buf      []byte
	err      error // why the scan stopped
}

// next returns the next valid record (pads skipped) with its header
// position, or ok=false at the end of the log. The record's Data aliases
// the scanner's buffer.
func (s *walScanner) scan() (r Record, h recordHeader, abs int64, ok bool) {
	ws := s.v.walSize
	for {
		if s.abs-s.startAbs >= ws {
			s.err = fmt.Errorf("scanned a full WAL lap")
			return r, h, 0, false
		}
		phys := s.abs % ws
		if err := s.v.readFull(s.hdr[:], walOffset+phys); err != nil {
			s.err = err
			return r, h, 0, false
		}
		var err error
		h, err = decodeRecordHeader(s.hdr[:], s.v.bs)
		if err != nil {
			s.err = err
			return r, h, 0, false
		}
		if h.gen != s.gen {
			s.err = fmt.Errorf("%w: generation %d, want %d", ErrBadRecord, h.gen, s.gen)
			return r, h, 0, false
		}
		if h.lsn != s.next {
			s.err = fmt.Errorf("%w: lsn %d, want %d", ErrBadRecord, h.lsn, s.next)
			return r, h, 0, false
		}
		n := recordLen(int(h.dataLen))
		if phys+n > ws {
			s.err = fmt.Errorf("%w: record of %d bytes at %d crosses the end of the WAL", ErrBadRecord, n, phys)
			return r, h, 0, false
		}
		if h.kind == kindPad {
			s.abs += n
			continue
		}
		need := recordHeaderSize + int(h.dataLen)
		if cap(s.buf) < need {
			s.buf = make([]byte, need)
		}
		b := s.buf[:need]
		copy(b, s.hdr[:])
		if h.dataLen > 0 {
			if err := s.v.readFull(b[recordHeaderSize:], walOffset+phys+recordHeaderSize); err != nil {
				s.err = err
				return r, h, 0, false
			}
		}
		r, _, _, err = decodeRecord(b, s.v.bs)
		if err != nil {
			s.err = err
			return r, h, 0, false
		}
		abs = s.abs
		s.abs += n
		s.next++
		return r, h, abs, true
	}
}

// recover rebuilds the in-memory state from the superblock and the WAL:
// scan from the persisted tail, accept records while they are valid and
// contiguous, index those past the checkpoint. The head is the byte end
// of the last valid record.
func (v *Volume) recover() error {
	sb := v.sb
	v.checkpoint = sb.checkpoint
	v.tailLSN = sb.tailLSN
	v.tailAbs = int64(sb.tailPos)
	s := walScanner{v: v, gen: sb.generation, abs: v.tailAbs, startAbs: v.tailAbs, next: sb.tailLSN}
	lastEnd := v.tailAbs
	for {
		r, h, abs, ok := s.scan()
		if !ok {
			break
		}
		m := recMeta{lsn: r.LSN, epoch: r.Epoch, abs: abs, lba: r.LBA, blocks: r.Blocks, dataLen: h.dataLen, kind: r.Kind}
		if m.lba+uint64(m.blocks) > uint64(v.size/int64(v.bs)) {
			s.err = fmt.Errorf("%w: lsn %d reaches past the end of the volume", ErrBadRecord, m.lsn)
			break
		}
		v.recs.push(m)
		if m.lsn > v.checkpoint {
			v.applyIndexLocked(&m)
		}
		lastEnd = s.abs
	}
	head := s.next - 1
	glog.V(1).Infof("blockvol %s: recovered lsn %d..%d (checkpoint %d), stopped: %v", v.path, v.tailLSN, head, v.checkpoint, s.err)
	rewriteTail := false
	if head < v.checkpoint {
		// Records the superblock says were retained are gone. Everything
		// up to the checkpoint is in the extent; restart the log there.
		glog.Warningf("blockvol %s: WAL ends at lsn %d below checkpoint %d; restarting the log after the checkpoint", v.path, head, v.checkpoint)
		head = v.checkpoint
		v.recs.reset()
		clear(v.index)
		v.zeros = v.zeros[:0]
		rewriteTail = true
	}
	v.head, v.written, v.durable = head, head, head
	// Make the gap between the last record and the next 4 KiB boundary a
	// valid pad, so that the next batch (written at the boundary) is
	// reachable by the next recovery even if this block was torn.
	if lastEnd%4096 != 0 {
		blk := alignDown(lastEnd, 4096)
		phys := blk % v.walSize
		buf := make([]byte, 4096)
		if err := v.readFull(buf, walOffset+phys); err != nil {
			return fmt.Errorf("recover: %w", err)
		}
		in := lastEnd - blk
		clear(buf[in:])
		ph := recordHeader{kind: kindPad, lsn: head + 1, gen: v.gen, dataLen: uint32(4096 - in - recordHeaderSize)}
		ph.encode(buf[in:])
		if _, err := v.f.WriteAt(buf, walOffset+phys); err != nil {
			return fmt.Errorf("recover: write pad: %w", err)
		}
	}
	v.writeAbs = alignUp(lastEnd, 4096)
	v.writtenAbs = v.writeAbs
	if rewriteTail {
		v.tailLSN = head + 1
		v.tailAbs = v.writeAbs
	}
	if err := v.f.Sync(); err != nil {
		return fmt.Errorf("recover: fdatasync: %w", err)
	}
	if rewriteTail {
		if err := v.persistSuperblock(func(s *superblock) {
			s.tailLSN = v.tailLSN
			s.tailPos = uint64(v.tailAbs % v.walSize)
		}); err != nil {
			return fmt.Errorf("recover: %w", err)
		}
	}
	return nil
}

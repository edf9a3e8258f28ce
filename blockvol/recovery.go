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
	// ioErr: the scan stopped because the WAL could not be read. That is
	// not the end of the log: recovery must fail rather than cut it there
	// (TestRecoveryReadErrorLosesNothing).
	ioErr error
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
			s.err, s.ioErr = err, err
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
				s.err, s.ioErr = err, err
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
	if s.ioErr != nil {
		return fmt.Errorf("recover: reading the WAL at lsn %d: %w", s.next, s.ioErr)
	}
	head := s.next - 1
	v.terms = mergeTerms(sb.terms, sb.tailLSN, func(yield func(epoch, lsn uint64)) {
		for i := 0; i < v.recs.len(); i++ {
			m := v.recs.at(i)
			yield(m.epoch, m.lsn)
		}
	})
	glog.V(1).Infof("blockvol %s: recovered lsn %d..%d (checkpoint %d), stopped: %v", v.path, v.tailLSN, head, v.checkpoint, s.err)
	v.head, v.written, v.durable = head, head, head
	// A clean log goes on right after its last record: a later recovery
	// scans record by record from the tail, across this point.
	v.writeAbs = lastEnd
	v.writtenAbs = v.writeAbs

	if sb.clean && sb.cleanHead != head {
		glog.Errorf("blockvol %s: clean close at lsn %d but the log ends at %d: %v", v.path, sb.cleanHead, head, s.err)
	}
	if sb.clean && sb.cleanHead == head && head >= v.checkpoint {
		// Clean shutdown: the log ends exactly where Close left it, so no
		// record of this generation exists beyond the head. Keep the WAL
		// (retained records stay available to ScanWAL and holds).
		if err := v.persistSuperblock(func(s *superblock) { s.clean, s.cleanHead = false, 0 }); err != nil {
			return fmt.Errorf("recover: %w", err)
		}
		return nil
	}

	// After a crash the WAL beyond the head may still hold valid records
	// of this generation (a later batch survived while an earlier one was
	// lost). New records reusing those LSNs could chain into them at the
	// next recovery and bring discarded writes back. So: apply every
	// recovered record to the extent, make it durable, and restart the log
	// after the head with a new generation, which no old byte can match.
	if head < v.checkpoint {
		glog.Warningf("blockvol %s: WAL ends at lsn %d below checkpoint %d; restarting the log after the checkpoint", v.path, head, v.checkpoint)
		head = v.checkpoint
		v.head, v.written, v.durable = head, head, head
	} else if head > v.checkpoint {
		var todo []recMeta
		for lsn := v.checkpoint + 1; lsn <= head; lsn++ {
			m := v.recs.find(lsn)
			if m == nil {
				return fmt.Errorf("recover: lsn %d missing", lsn)
			}
			todo = append(todo, *m)
		}
		if err := v.applyToExtent(todo); err != nil {
			return fmt.Errorf("recover: %w", err)
		}
	}
	if err := v.f.Sync(); err != nil {
		return fmt.Errorf("recover: fdatasync: %w", err)
	}
	v.recs.reset()
	clear(v.index)
	v.zeros = v.zeros[:0]
	v.checkpoint = head
	// The new generation starts on a fresh page, away from whatever a
	// torn last batch left in the page the old log ends in.
	v.writeAbs = alignUp(v.writeAbs, 4096)
	v.writtenAbs = v.writeAbs
	v.tailLSN, v.tailAbs = head+1, v.writeAbs
	v.gen++
	if err := v.persistSuperblock(func(s *superblock) {
		s.checkpoint = head
		s.tailLSN = head + 1
		s.tailPos = uint64(v.writeAbs % v.walSize)
		s.generation = v.gen
		s.clean, s.cleanHead = false, 0
		s.terms = termsUpTo(v.terms, head)
	}); err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	return nil
}

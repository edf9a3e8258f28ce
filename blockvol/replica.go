package blockvol

import (
	"errors"
	"fmt"

	"github.com/weedblock/weedblock/blockdev"
)

// replicaWritableLocked says whether ApplyReplicated may append now.
func (v *Volume) replicaWritableLocked() error {
	switch {
	case v.closed:
		return fmt.Errorf("%s: %w", v.path, blockdev.ErrClosed)
	case v.failed != nil:
		return v.failedErrLocked()
	case v.fenced:
		return fmt.Errorf("%s: %w: %w", v.path, blockdev.ErrReadOnly, ErrFenced)
	case v.rebuilding:
		return fmt.Errorf("%s: %w: %w: rebuild in progress", v.path, blockdev.ErrReadOnly, ErrFenced)
	case v.role != RoleReplica:
		return fmt.Errorf("%s: apply replicated: %w: role %v", v.path, ErrWrongRole, v.role)
	}
	return nil
}

func (v *Volume) checkRecord(r *Record) error {
	switch r.Kind {
	case KindWrite:
		if uint64(len(r.Data)) != uint64(r.Blocks)*uint64(v.bs) {
			return fmt.Errorf("%w: lsn %d: %d blocks with %d data bytes", ErrBadRecord, r.LSN, r.Blocks, len(r.Data))
		}
		if recordLen(len(r.Data))+16384 > v.walSize/2 {
			return fmt.Errorf("%w: lsn %d: %d data bytes do not fit this WAL", ErrBadRecord, r.LSN, len(r.Data))
		}
	case KindTrim, KindZero:
		if len(r.Data) != 0 {
			return fmt.Errorf("%w: lsn %d: %v with data", ErrBadRecord, r.LSN, r.Kind)
		}
	default:
		return fmt.Errorf("%w: lsn %d: kind %v", ErrBadRecord, r.LSN, r.Kind)
	}
	if r.LSN == 0 || r.Blocks == 0 {
		return fmt.Errorf("%w: lsn %d, %d blocks", ErrBadRecord, r.LSN, r.Blocks)
	}
	if nb := uint64(v.size / int64(v.bs)); r.LBA >= nb || uint64(r.Blocks) > nb-r.LBA {
		return fmt.Errorf("%w: lsn %d: blocks %d+%d beyond the volume: %w", ErrBadRecord, r.LSN, r.LBA, r.Blocks, blockdev.ErrOutOfRange)
	}
	return nil
}

// ApplyReplicated appends a record shipped by the primary, keeping its LSN
// and epoch. Only head+1 is appended; a record at or below the head with
// the same epoch as the local copy is a duplicate and succeeds without
// effect; a different epoch fails with ErrLSNConflict; a gap fails with
// ErrLSNGap. The volume must be unfenced as RoleReplica. The record is
// written (not yet durable) when this returns; Flush makes it durable.
func (v *Volume) ApplyReplicated(r Record) error {
	if err := v.checkRecord(&r); err != nil {
		return fmt.Errorf("%s: apply replicated: %w", v.path, err)
	}
	var crc uint32
	if r.Kind == KindWrite {
		crc = crc32c(r.Data)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.beginOpLocked(); err != nil {
		return err
	}
	defer v.ops.Done()
	appended, err := v.applyLocked(&r, crc)
	if err != nil || !appended {
		return err
	}
	return v.waitWrittenLocked(r.LSN)
}

// ApplyReplicatedBatch applies rs in order exactly as ApplyReplicated
// applies each one, but waits once, after the last append, so the records
// share group-committed WAL batches. It stops at the first record that
// fails and returns how many records from the front of rs were applied
// (appended or duplicates) and are written, with that record's error.
// Record.Data must stay valid until it returns.
func (v *Volume) ApplyReplicatedBatch(rs []Record) (int, error) {
	crcs := make([]uint32, len(rs))
	var checkErr error
	for i := range rs {
		if err := v.checkRecord(&rs[i]); err != nil {
			checkErr = fmt.Errorf("%s: apply replicated: %w", v.path, err)
			rs = rs[:i]
			break
		}
		if rs[i].Kind == KindWrite {
			crcs[i] = crc32c(rs[i].Data)
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.beginOpLocked(); err != nil {
		return 0, err
	}
	defer v.ops.Done()
	var last uint64
	n := 0
	err := checkErr
	for i := range rs {
		appended, aerr := v.applyLocked(&rs[i], crcs[i])
		if aerr != nil {
			err = aerr
			break
		}
		if appended {
			last = rs[i].LSN
		}
		n++
	}
	if last > 0 {
		if werr := v.waitWrittenLocked(last); werr != nil {
			return 0, werr
		}
	}
	return n, err
}

// applyLocked appends one checked record (crc is its data CRC) if it is
// head+1; a duplicate of a local record returns (false, nil).
func (v *Volume) applyLocked(r *Record, crc uint32) (bool, error) {
	dup := func() (bool, error) {
		if r.LSN > v.head {
			return false, nil
		}
		if m := v.recs.find(r.LSN); m != nil && m.epoch != r.Epoch {
			return true, fmt.Errorf("%s: apply lsn %d epoch %d, local epoch %d: %w", v.path, r.LSN, r.Epoch, m.epoch, ErrLSNConflict)
		}
		return true, nil
	}
	if err := v.replicaWritableLocked(); err != nil {
		return false, err
	}
	if d, err := dup(); d {
		return false, err
	}
	if r.LSN != v.head+1 {
		return false, fmt.Errorf("%s: apply lsn %d after head %d: %w", v.path, r.LSN, v.head, ErrLSNGap)
	}
	newBatch, wrap, err := v.reserveLocked(recordLen(len(r.Data)), v.replicaWritableLocked)
	if err != nil {
		return false, err
	}
	// The head may have moved while we waited for room.
	if d, err := dup(); d {
		return false, err
	}
	if r.LSN != v.head+1 {
		return false, fmt.Errorf("%s: apply lsn %d after head %d: %w", v.path, r.LSN, v.head, ErrLSNGap)
	}
	h := recordHeader{kind: r.Kind, lsn: r.LSN, epoch: r.Epoch, lba: r.LBA, blocks: r.Blocks, dataLen: uint32(len(r.Data)), dataCRC: crc}
	v.appendLocked(&h, r.Data, newBatch, wrap)
	return true, nil
}

// ScanWAL calls fn for each record from fromLSN on, in LSN order, until it
// reaches the records written so far (it keeps following the head while
// the head moves). Record.Data is only valid during the call. fromLSN must
// still be in the WAL (ErrNotRetained otherwise). The scan pins what it
// has yet to read; if that pin is revoked (WAL full) it fails with
// ErrHoldRevoked. An error from fn ends the scan and is returned.
func (v *Volume) ScanWAL(fromLSN uint64, fn func(Record) error) error {
	if err := v.enter(); err != nil {
		return err
	}
	defer v.ops.Done()
	h, err := v.Hold(fromLSN, 0)
	if err != nil {
		return err
	}
	defer h.Release()
	return v.scanHeld(h, fromLSN, fn, true)
}

// Scan is ScanWAL under this hold: it calls fn for each record from
// fromLSN on (fromLSN at or above the hold's LSN), following the head,
// without taking a pin of its own and without moving the hold (the holder
// advances it). It fails with ErrHoldRevoked once the hold is revoked.
// Unlike ScanWAL it never waits for a flusher round to start.
func (h *Hold) Scan(fromLSN uint64, fn func(Record) error) error {
	v := h.v
	if err := v.enter(); err != nil {
		return err
	}
	defer v.ops.Done()
	v.mu.Lock()
	done, lsn := h.done, h.lsn
	v.mu.Unlock()
	if done {
		if err := h.Err(); err != nil {
			return err
		}
		return fmt.Errorf("%s: scan: hold released", v.path)
	}
	if fromLSN < lsn {
		return fmt.Errorf("%s: scan from %d below the hold at %d: %w", v.path, fromLSN, lsn, ErrNotRetained)
	}
	return v.scanHeld(h, fromLSN, fn, false)
}

// scanSpan bounds the WAL bytes scanHeld reads with one pread: records
// that lie back to back in the WAL are read together.
const scanSpan = 256 << 10

// scanHeld reads records from fromLSN on while h keeps them; advance moves
// h past each record once fn returns.
func (v *Volume) scanHeld(h *Hold, fromLSN uint64, fn func(Record) error, advance bool) error {
	bp, _ := v.scanBufs.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	defer v.scanBufs.Put(bp)
	buf := *bp
	defer func() {
		if cap(buf) > 2*scanSpan {
			buf = nil // one huge record: do not keep its buffer
		}
		*bp = buf
	}()
	var span []recMeta
	for lsn := fromLSN; ; {
		v.mu.Lock()
		if v.closed {
			v.mu.Unlock()
			return fmt.Errorf("%s: scan: %w", v.path, blockdev.ErrClosed)
		}
		if lsn > v.written {
			v.mu.Unlock()
			return nil
		}
		mp := v.recs.find(lsn)
		if mp == nil {
			v.mu.Unlock()
			if err := h.Err(); err != nil {
				return err
			}
			return fmt.Errorf("%s: scan lsn %d: %w", v.path, lsn, ErrNotRetained)
		}
		// Take the written records that follow lsn in the same pass of
		// the WAL region, up to scanSpan bytes (at least one record).
		first := *mp
		span = append(span[:0], first)
		end := first.abs + recordHeaderSize + int64(first.dataLen)
		for l := lsn + 1; l <= v.written; l++ {
			m := v.recs.find(l)
			if m == nil {
				break
			}
			e := m.abs + recordHeaderSize + int64(m.dataLen)
			if e-first.abs > scanSpan || first.abs%v.walSize+(e-first.abs) > v.walSize {
				break
			}
			span = append(span, *m)
			end = e
		}
		gen := v.gen
		v.mu.Unlock()
		n := int(end - first.abs)
		if cap(buf) < n {
			buf = make([]byte, max(n, scanSpan))
		}
		b := buf[:n]
		if err := v.readFull(b, walOffset+first.abs%v.walSize); err != nil {
			return fmt.Errorf("%s: scan lsn %d: %w", v.path, lsn, err)
		}
		if err := h.Err(); err != nil {
			return err
		}
		for i := range span {
			m := &span[i]
			off := m.abs - first.abs
			r, hdr, _, err := decodeRecord(b[off:off+recordHeaderSize+int64(m.dataLen)], v.bs)
			if err != nil {
				return fmt.Errorf("%s: scan lsn %d: %w", v.path, m.lsn, err)
			}
			if r.LSN != m.lsn || hdr.gen != gen {
				return fmt.Errorf("%s: scan lsn %d: found lsn %d generation %d: %w", v.path, m.lsn, r.LSN, hdr.gen, ErrBadRecord)
			}
			if err := fn(r); err != nil {
				return err
			}
			if advance {
				if err := h.Advance(m.lsn + 1); err != nil {
					return err
				}
			}
		}
		lsn = span[len(span)-1].lsn + 1
	}
}

// ErrBelowCheckpoint: a WAL truncation point is below the checkpoint, so
// the extent already holds effects that would have to be undone (the
// caller must rebuild instead).
var ErrBelowCheckpoint = errors.New("blockvol: truncation point below checkpoint")

// TruncateWAL drops every record after lsn, e.g. the uncommitted tail of a
// replica that is ahead of the committed point (DESIGN §6). Records
// (checkpoint, lsn] are applied to the extent; the log restarts after lsn
// with a new generation, so the dropped records can never come back. It
// requires checkpoint ≤ lsn ≤ head (ErrBelowCheckpoint otherwise) and a
// fenced volume (call Fence first, Unfence after). Holds are revoked.
func (v *Volume) TruncateWAL(lsn uint64) error {
	if err := v.enter(); err != nil {
		return err
	}
	defer v.ops.Done()
	v.flushMu.Lock()
	defer v.flushMu.Unlock()
	if err := v.lockFencedQuiet("truncate WAL"); err != nil {
		return err
	}
	if lsn < v.checkpoint || lsn > v.head {
		err := fmt.Errorf("%s: truncate WAL to %d, checkpoint %d head %d: %w", v.path, lsn, v.checkpoint, v.head, ErrBelowCheckpoint)
		if lsn > v.head {
			err = fmt.Errorf("%s: truncate WAL to %d beyond head %d", v.path, lsn, v.head)
		}
		v.mu.Unlock()
		return err
	}
	var todo []recMeta
	for l := v.checkpoint + 1; l <= lsn; l++ {
		m := v.recs.find(l)
		if m == nil {
			v.mu.Unlock()
			return fmt.Errorf("%s: truncate WAL: lsn %d missing", v.path, l)
		}
		todo = append(todo, *m)
	}
	needSync := v.durable < lsn
	writeAbs := alignUp(v.writeAbs, 4096)
	gen := v.gen + 1
	terms := termsUpTo(v.terms, lsn) // the dropped records' terms go with them
	v.mu.Unlock()

	if needSync {
		if err := v.syncFile(); err != nil {
			return err
		}
	}
	if err := v.applyToExtent(todo); err != nil {
		v.fail(err)
		return err
	}
	if err := v.syncFile(); err != nil {
		return err
	}
	if err := v.persistSuperblock(func(s *superblock) {
		s.checkpoint = lsn
		s.tailLSN = lsn + 1
		s.tailPos = uint64(writeAbs % v.walSize)
		s.generation = gen
		s.terms = terms
	}); err != nil {
		return err
	}
	v.tailMu.Lock()
	v.mu.Lock()
	v.terms = terms
	v.recs.reset()
	clear(v.index)
	v.zeros = v.zeros[:0]
	v.gen = gen
	v.head, v.written, v.durable, v.checkpoint = lsn, lsn, lsn, lsn
	v.writeAbs, v.writtenAbs = writeAbs, writeAbs
	v.tailLSN, v.tailAbs = lsn+1, writeAbs
	for h := range v.holds {
		v.revokeLocked(h, fmt.Errorf("%w: WAL truncated to %d", ErrHoldRevoked, lsn))
	}
	v.cond.Broadcast()
	v.mu.Unlock()
	v.tailMu.Unlock()
	return nil
}

package blockvol

import (
	"fmt"
	"time"

	"github.com/weedblock/weedblock/blockdev"
)

// A batch is a run of records written with one pwritev. It starts where
// the previous one ended (records are 64-byte aligned; a batch after a
// recovery, rebuild or truncation starts 4 KiB aligned), so a single 4 KiB
// write costs the WAL 4160 bytes rather than two pages: the next batch
// rewrites the last, partly filled page with the same bytes in front of
// its own. A disk writes sectors atomically, so that rewrite leaves the
// records already durable there intact whatever part of it lands
// (faultfs tears pending writes at sector granularity to check it). A
// batch never crosses the end of the region: a wrap batch holds only a
// pad that covers the rest of the region.
type batch struct {
	start   int64 // absolute WAL position, 64-byte aligned
	end     int64 // absolute position after the last record (or pad)
	iov     [][]byte
	hdrs    []byte // header arena, never reallocated
	nrec    int
	lastLSN uint64
	closed  bool
}

func (v *Volume) newBatchLocked(start int64) *batch {
	var b *batch
	if n := len(v.freeB); n > 0 {
		b = v.freeB[n-1]
		v.freeB = v.freeB[:n-1]
	} else {
		b = &batch{hdrs: make([]byte, 0, (maxBatchRecords+1)*recordHeaderSize)}
	}
	b.start, b.end, b.nrec, b.lastLSN, b.closed = start, start, 0, 0, false
	b.iov = b.iov[:0]
	b.hdrs = b.hdrs[:0]
	return b
}

func (v *Volume) recycleBatch(b *batch) {
	for i := range b.iov {
		b.iov[i] = nil // drop references to callers' buffers
	}
	b.iov = b.iov[:0]
	v.freeB = append(v.freeB, b)
}

// hdrSlot returns the next 64 bytes of the batch's header arena.
func (b *batch) hdrSlot() []byte {
	n := len(b.hdrs)
	b.hdrs = b.hdrs[:n+recordHeaderSize]
	return b.hdrs[n : n+recordHeaderSize]
}

// addPad appends a pad record covering [b.end, b.end+padLen). Only the
// part up to the next 4 KiB boundary is written.
func (v *Volume) addPadLocked(b *batch, padLen int64) {
	h := recordHeader{kind: kindPad, lsn: v.head + 1, gen: v.gen, dataLen: uint32(padLen - recordHeaderSize)}
	hb := b.hdrSlot()
	h.encode(hb)
	b.iov = append(b.iov, hb)
	if fill := alignUp(b.end+recordHeaderSize, 4096) - (b.end + recordHeaderSize); fill > 0 {
		b.iov = append(b.iov, v.zeroBuf[:fill])
	}
	b.end += padLen
}

// closeBatchLocked closes an open batch: later records go into a new one.
// The batch's write runs on to the end of its last page with zeros, which
// are not part of the log (the next batch starts at b.end, over them):
// that page is then whole in the page cache, so the next batch's write
// into it needs no read from disk first (a partial write into a page not
// in the cache makes the kernel read the rest, synchronously).
func (v *Volume) closeBatchLocked(b *batch) {
	if b.closed {
		return
	}
	b.closed = true
	if gap := alignUp(b.end, 4096) - b.end; gap > 0 {
		b.iov = append(b.iov, v.zeroBuf[:gap])
	}
	if v.writeAbs < b.end {
		v.writeAbs = b.end
	}
}

func (v *Volume) openBatchLocked() *batch {
	if n := len(v.pending); n > 0 && !v.pending[n-1].closed {
		return v.pending[n-1]
	}
	return nil
}

// placeLocked says where a record of recLen bytes would go: into the open
// batch, or into a new batch (after a wrap pad if it would cross the end
// of the region). needEnd is the 4 KiB aligned end that must be free.
func (v *Volume) placeLocked(recLen int64) (needEnd int64, newBatch, wrap bool) {
	if b := v.openBatchLocked(); b != nil && b.nrec < maxBatchRecords && b.end%v.walSize+recLen <= v.walSize && b.end%v.walSize != 0 {
		return alignUp(b.end+recLen, 4096), false, false
	}
	pos := v.writeAbs
	if pos%v.walSize+recLen > v.walSize {
		pos += v.walSize - pos%v.walSize
		wrap = true
	}
	return alignUp(pos+recLen, 4096), true, wrap
}

func (v *Volume) roomLocked(needEnd int64) bool {
	return needEnd <= alignDown(v.tailAbs, 4096)+v.walSize
}

// appendLocked adds one record to the WAL and the index. The caller has
// checked that it may write and that there is room (placeLocked/roomLocked).
// h.lsn must be v.head+1. data must stay valid until the record is written.
func (v *Volume) appendLocked(h *recordHeader, data []byte, newBatch, wrap bool) {
	recLen := recordLen(len(data))
	b := v.openBatchLocked()
	if newBatch {
		if b != nil {
			v.closeBatchLocked(b)
		}
		pos := v.writeAbs
		if wrap {
			wb := v.newBatchLocked(pos)
			v.addPadLocked(wb, v.walSize-pos%v.walSize)
			wb.closed = true
			v.pending = append(v.pending, wb)
			pos = wb.end
		}
		b = v.newBatchLocked(pos)
		v.pending = append(v.pending, b)
	}
	h.gen = v.gen
	hb := b.hdrSlot()
	h.encode(hb)
	b.iov = append(b.iov, hb)
	if len(data) > 0 {
		b.iov = append(b.iov, data)
	}
	m := recMeta{lsn: h.lsn, epoch: h.epoch, abs: b.end, lba: h.lba, blocks: h.blocks, dataLen: h.dataLen, kind: h.kind}
	b.end += recLen
	b.nrec++
	b.lastLSN = h.lsn
	v.writeAbs = b.end
	v.head = h.lsn
	if n := len(v.terms); n == 0 || v.terms[n-1].Epoch != h.epoch {
		v.terms = addTerm(v.terms, h.epoch, h.lsn)
	}
	v.recs.push(m)
	v.applyIndexLocked(&m)
	if v.writeAbs-v.tailAbs > v.walSize/2 {
		v.kickFlusher()
	}
}

// writePendingLocked writes every pending batch (closing the open one),
// with mu released during the I/O. Only one goroutine writes at a time.
func (v *Volume) writePendingLocked() {
	if v.writing || len(v.pending) == 0 {
		return
	}
	v.writing = true
	if b := v.openBatchLocked(); b != nil {
		v.closeBatchLocked(b)
	}
	bs := v.pending
	v.pending = v.spare[:0]
	v.mu.Unlock()
	var err error
	var last uint64
	var end int64
	for _, b := range bs {
		if _, err = v.f.WritevAt(b.iov, walOffset+b.start%v.walSize); err != nil {
			err = fmt.Errorf("write WAL %s at %d: %w", v.path, b.start%v.walSize, err)
			break
		}
		if b.lastLSN > last {
			last = b.lastLSN
		}
		end = b.end
	}
	v.mu.Lock()
	v.writing = false
	if err != nil {
		v.failLocked(err)
	} else {
		if last > v.written {
			v.written = last
		}
		if end > v.writtenAbs {
			v.writtenAbs = end
		}
	}
	for i, b := range bs {
		v.recycleBatch(b)
		bs[i] = nil
	}
	v.spare = bs[:0]
	v.cond.Broadcast()
}

// waitWrittenLocked returns once lsn is in the file, writing pending
// batches itself when nobody else is (group commit of the pwritev).
func (v *Volume) waitWrittenLocked(lsn uint64) error {
	for v.written < lsn {
		if v.failed != nil {
			return v.failedErrLocked()
		}
		if !v.writing && len(v.pending) > 0 {
			v.writePendingLocked()
			continue
		}
		v.cond.Wait()
	}
	return nil
}

// writableLocked says whether a frontend write may be appended now.
func (v *Volume) writableLocked() error {
	switch {
	case v.closed:
		return fmt.Errorf("%s: %w", v.path, blockdev.ErrClosed)
	case v.failed != nil:
		return v.failedErrLocked()
	case v.fenced:
		return fmt.Errorf("%s: %w: %w", v.path, blockdev.ErrReadOnly, ErrFenced)
	case v.rebuilding:
		return fmt.Errorf("%s: %w: %w: rebuild in progress", v.path, blockdev.ErrReadOnly, ErrFenced)
	case v.role != RolePrimary:
		return fmt.Errorf("%s: %w: %w: role %v", v.path, blockdev.ErrReadOnly, ErrWrongRole, v.role)
	case !v.leaseUntil.IsZero() && !time.Now().Before(v.leaseUntil):
		return fmt.Errorf("%s: %w: %w: lease expired at %v", v.path, blockdev.ErrReadOnly, ErrFenced, v.leaseUntil)
	}
	return nil
}

// reserveLocked waits until a record of recLen bytes fits, checking
// allowed() each time around. It returns the placement for appendLocked.
func (v *Volume) reserveLocked(recLen int64, allowed func() error) (newBatch, wrap bool, err error) {
	for {
		if err := allowed(); err != nil {
			return false, false, err
		}
		needEnd, nb, wr := v.placeLocked(recLen)
		if v.roomLocked(needEnd) {
			return nb, wr, nil
		}
		if !v.writing && len(v.pending) > 0 {
			// The flusher can only free what is written.
			v.writePendingLocked()
			continue
		}
		v.waitRoom++
		if needEnd > v.roomWant {
			v.roomWant = needEnd
		}
		v.kickFlusher()
		v.cond.Wait()
		v.waitRoom--
		if v.waitRoom == 0 {
			v.roomWant = 0
		}
	}
}

// appendRange appends records for [lba, lba+blocks) of one kind, splitting
// writes into records of at most recMax bytes, and returns the last LSN.
func (v *Volume) appendRange(kind Kind, lba uint64, blocks uint64, data []byte) (uint64, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.beginOpLocked(); err != nil {
		return 0, err
	}
	defer v.ops.Done()
	var last uint64
	for blocks > 0 {
		n := blocks
		var chunk []byte
		var crc uint32
		if kind == KindWrite {
			n = min(n, uint64(v.recMax/v.bs))
			chunk = data[:n*uint64(v.bs)]
			data = data[len(chunk):]
			v.mu.Unlock()
			crc = crc32c(chunk)
			v.mu.Lock()
		} else {
			n = min(n, 1<<31)
		}
		newBatch, wrap, err := v.reserveLocked(recordLen(len(chunk)), v.writableLocked)
		if err != nil {
			return 0, err
		}
		h := recordHeader{kind: kind, lsn: v.head + 1, epoch: v.epoch, lba: lba, blocks: uint32(n), dataLen: uint32(len(chunk)), dataCRC: crc}
		v.appendLocked(&h, chunk, newBatch, wrap)
		last = h.lsn
		lba += n
		blocks -= n
	}
	if err := v.waitWrittenLocked(last); err != nil {
		return 0, err
	}
	// A primary whose lease lapsed while the write was in flight must not
	// acknowledge it.
	if err := v.writableLocked(); err != nil && !v.closed {
		return 0, err
	}
	return last, nil
}

func (v *Volume) checkRange(op string, off, length int64) error {
	if err := blockdev.CheckRange(off, length, v.size, v.bs); err != nil {
		return fmt.Errorf("%s %s %d@%d: %w", v.path, op, length, off, err)
	}
	return nil
}

// WriteAt appends p at off to the WAL. It returns once the data is in the
// file (acknowledged, write-back); with fua it also waits for it to be
// durable, as Flush does.
func (v *Volume) WriteAt(p []byte, off int64, fua bool) error {
	if err := v.checkRange("write", off, int64(len(p))); err != nil {
		return err
	}
	if len(p) == 0 {
		if fua {
			return v.Flush()
		}
		return nil
	}
	last, err := v.appendRange(KindWrite, uint64(off/int64(v.bs)), uint64(len(p)/v.bs), p)
	if err != nil {
		return err
	}
	if fua {
		return v.flushTo(last)
	}
	return nil
}

// Trim discards [off, off+length): it reads as zeros at once, and the
// extent range is punched when flushed.
func (v *Volume) Trim(off, length int64) error {
	if err := v.checkRange("trim", off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	_, err := v.appendRange(KindTrim, uint64(off/int64(v.bs)), uint64(length/int64(v.bs)), nil)
	return err
}

// WriteZeroes sets [off, off+length) to zeros (punched in the extent when
// flushed). With fua it returns once durable.
func (v *Volume) WriteZeroes(off, length int64, fua bool) error {
	if err := v.checkRange("write zeroes", off, length); err != nil {
		return err
	}
	if length == 0 {
		if fua {
			return v.Flush()
		}
		return nil
	}
	last, err := v.appendRange(KindZero, uint64(off/int64(v.bs)), uint64(length/int64(v.bs)), nil)
	if err != nil {
		return err
	}
	if fua {
		return v.flushTo(last)
	}
	return nil
}

// Flush returns once every write acknowledged before the call is durable.
// Concurrent callers share one fdatasync.
func (v *Volume) Flush() error {
	v.mu.Lock()
	target := v.head
	v.mu.Unlock()
	return v.flushTo(target)
}

func (v *Volume) flushTo(target uint64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.beginOpLocked(); err != nil {
		return err
	}
	defer v.ops.Done()
	for {
		if v.failed != nil {
			return v.failedErrLocked()
		}
		if v.durable >= target {
			if v.role == RolePrimary && !v.leaseUntil.IsZero() && !time.Now().Before(v.leaseUntil) {
				return fmt.Errorf("%s: flush: %w: %w: lease expired", v.path, blockdev.ErrReadOnly, ErrFenced)
			}
			return nil
		}
		if v.fenced {
			// A fenced volume acknowledges no flush it has not already
			// made durable: it may no longer be the one that commits.
			return fmt.Errorf("%s: flush: %w: %w", v.path, blockdev.ErrReadOnly, ErrFenced)
		}
		if v.written < target && !v.writing && len(v.pending) > 0 {
			v.writePendingLocked()
			continue
		}
		if v.written > v.durable && !v.syncing {
			// Lead one fdatasync for everyone waiting; callers arriving
			// meanwhile wait and share the next one.
			v.syncing = true
			w := v.written
			v.mu.Unlock()
			err := v.syncWAL(w)
			v.mu.Lock()
			v.syncing = false
			if err == nil && w > v.durable {
				v.durable = w
			}
			v.cond.Broadcast()
			continue
		}
		v.cond.Wait()
	}
}

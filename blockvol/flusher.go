package blockvol

import (
	"fmt"
	"time"

	"github.com/golang/glog"
)

// flusherLoop runs until Close: it wakes on a kick, on its timer, and
// keeps going while writers wait for room.
func (v *Volume) flusherLoop() {
	defer close(v.done)
	t := time.NewTicker(v.interval)
	defer t.Stop()
	for {
		select {
		case <-v.stop:
			return
		case <-v.kick:
		case <-t.C:
		}
		if v.manual {
			v.mu.Lock()
			waiting := v.waitRoom > 0
			v.mu.Unlock()
			if !waiting {
				continue
			}
		}
		for i := 0; i < 1000; i++ {
			progressed, err := v.flushOnce()
			if err != nil || !progressed {
				break
			}
			select {
			case <-v.stop:
				return
			default:
			}
			v.mu.Lock()
			more := v.waitRoom > 0 || v.writeAbs-v.tailAbs > v.walSize/2
			v.mu.Unlock()
			if !more {
				break
			}
		}
	}
}

// Checkpoint runs flusher rounds until every record written so far is in
// the extent and the checkpoint is durable.
func (v *Volume) Checkpoint() error {
	if err := v.enter(); err != nil {
		return err
	}
	defer v.ops.Done()
	v.mu.Lock()
	for !v.writing && len(v.pending) > 0 {
		v.writePendingLocked()
	}
	if err := v.waitWrittenLocked(v.head); err != nil {
		v.mu.Unlock()
		return err
	}
	target := v.written
	v.mu.Unlock()
	for {
		if _, err := v.flushOnce(); err != nil {
			return err
		}
		v.mu.Lock()
		cp, failed := v.checkpoint, v.failed
		v.mu.Unlock()
		if failed != nil {
			return fmt.Errorf("%s: checkpoint: %w: %v", v.path, ErrUnhealthy, failed)
		}
		if cp >= target {
			return nil
		}
	}
}

// flushOnce copies records (checkpoint, written] (bounded) to the extent,
// fdatasyncs, persists the new checkpoint and tail, and only then lets
// writers reuse the freed WAL space. It reports whether anything moved.
func (v *Volume) flushOnce() (bool, error) {
	v.flushMu.Lock()
	defer v.flushMu.Unlock()

	v.mu.Lock()
	if v.failed != nil {
		v.mu.Unlock()
		return false, nil
	}
	// Copy only records that are durable in the WAL: if a crash hit the
	// extent's fdatasync below while a copied record was still unsynced,
	// the WAL could lose the record and leave its extent blocks torn
	// between old and new data, with nothing left to repair them
	// (TestCrashFlusherNeverTearsUnsyncedRecord). So make the WAL durable
	// first when it is not.
	if v.written > v.durable && v.written > v.checkpoint {
		wr := v.written
		v.mu.Unlock()
		if err := v.syncFile(); err != nil {
			return false, err
		}
		v.mu.Lock()
		if wr > v.durable && v.failed == nil {
			v.durable = wr
			v.cond.Broadcast()
		}
		if v.failed != nil {
			v.mu.Unlock()
			return false, nil
		}
	}
	cp := v.checkpoint
	w := v.durable
	var todo []recMeta
	var bytes int64
	for lsn := cp + 1; lsn <= w; lsn++ {
		m := v.recs.find(lsn)
		if m == nil {
			v.mu.Unlock()
			return false, fmt.Errorf("%s: flusher: lsn %d missing from the record list", v.path, lsn)
		}
		todo = append(todo, *m)
		bytes += m.length()
		if bytes >= flushRoundBytes {
			break
		}
	}
	v.mu.Unlock()

	newCP := cp
	if len(todo) > 0 {
		// A record may reach the extent only once it is durable in the
		// WAL: otherwise a crash could lose the record and leave its
		// extent blocks torn, with nothing left to repair them.
		v.mu.Lock()
		needSync := v.durable < todo[len(todo)-1].lsn
		v.mu.Unlock()
		if needSync {
			if err := v.syncFile(); err != nil {
				return false, err
			}
			v.mu.Lock()
			if w > v.durable && v.failed == nil {
				v.durable = w
				v.cond.Broadcast()
			}
			v.mu.Unlock()
		}
		if err := v.applyToExtent(todo); err != nil {
			v.fail(err)
			return false, err
		}
		if err := v.syncFile(); err != nil {
			return false, err
		}
		newCP = todo[len(todo)-1].lsn
	}

	// Choose the new tail: the oldest record still needed, by the
	// checkpoint or by a hold. Holds over budget, or blocking writers that
	// wait for room, are revoked.
	v.mu.Lock()
	natural, naturalLSN := v.writeAbs, v.head+1
	if m := v.recs.find(newCP + 1); m != nil {
		natural, naturalLSN = v.tailPosLocked(m), m.lsn
	} else if newCP+1 <= v.head {
		v.mu.Unlock()
		return false, fmt.Errorf("%s: flusher: lsn %d missing from the record list", v.path, newCP+1)
	} else if naturalLSN == v.tailLSN {
		natural = v.tailAbs
	}
	tailAbs, tailLSN := natural, naturalLSN
	oldTailAbs := v.tailAbs
	for h := range v.holds {
		if h.lsn >= naturalLSN {
			continue
		}
		m := v.recs.find(h.lsn)
		if m == nil {
			v.revokeLocked(h, fmt.Errorf("%w: lsn %d no longer in the WAL", ErrHoldRevoked, h.lsn))
			continue
		}
		pos := v.tailPosLocked(m)
		if h.budget > 0 && natural-pos > h.budget {
			v.revokeLocked(h, fmt.Errorf("%w: retains %d WAL bytes, budget %d", ErrHoldRevoked, natural-pos, h.budget))
			continue
		}
		if v.waitRoom > 0 && len(todo) == 0 && alignDown(pos, 4096)+v.walSize < v.roomWant {
			// Nothing left to flush and a writer still waits for room
			// this hold keeps: a dead replica must not wedge us.
			v.revokeLocked(h, fmt.Errorf("%w: WAL full, writers waiting", ErrHoldRevoked))
			continue
		}
		if pos < tailAbs {
			tailAbs, tailLSN = pos, m.lsn
		}
	}
	moved := newCP != cp || tailLSN != v.tailLSN
	// The terms of the records now in the extent go with the checkpoint
	// (the WAL, which carried their epochs, may be reused after it).
	var terms []Term
	if moved {
		terms = termsUpTo(v.terms, newCP)
	}
	v.mu.Unlock()
	if !moved {
		return false, nil
	}

	if err := v.persistSuperblock(func(s *superblock) {
		s.checkpoint = newCP
		s.tailLSN = tailLSN
		s.tailPos = uint64(tailAbs % v.walSize)
		s.terms = terms
	}); err != nil {
		return false, err
	}
	if tailLSN > v.tailLSN {
		v.dropFreedWAL(oldTailAbs, tailAbs)
	}

	v.tailMu.Lock()
	v.mu.Lock()
	for i := range todo {
		v.retireIndexLocked(&todo[i])
	}
	v.retireZerosLocked(newCP)
	v.checkpoint = newCP
	if tailLSN > v.tailLSN {
		v.tailLSN, v.tailAbs = tailLSN, tailAbs
		v.recs.popBefore(tailLSN)
	}
	v.cond.Broadcast()
	v.mu.Unlock()
	v.tailMu.Unlock()
	glog.V(2).Infof("blockvol %s: checkpoint %d tail %d", v.path, newCP, tailLSN)
	return true, nil
}

// extentWritebackBytes paces the flusher's extent writes: after this many
// bytes it waits for the write-back it started last time, then starts the
// write-back of these (WritebackPacer). The volume is one file, so an
// fdatasync (a FLUSH's) writes every dirty extent page and waits for every
// extent page under write-back: without pacing a FLUSH arriving during a
// round waits for up to flushRoundBytes of random extent blocks (measured:
// 8% of FLUSH fdatasyncs over 5 ms, 13 ms on average, most of the FLUSH
// latency). Paced, it waits for at most about two steps of them.
const extentWritebackBytes = 512 << 10

// paceWriteback runs one PaceWriteback step over [off, off+n) of the
// file (what names the caller in errors). It makes nothing durable, but
// it reports (and so consumes) a write-back error of the file, WAL pages
// included, that the next fdatasync would then not report: it runs under
// syncMu, like a sync, and an error fails the volume before any sync may
// run, so no FLUSH is acknowledged on an fdatasync that missed the error
// (TestPaceErrorFailsFlushes, TestBasePaceErrorFailsSyncs).
func (v *Volume) paceWriteback(p WritebackPacer, what string, off, n int64) error {
	v.syncMu.Lock()
	defer v.syncMu.Unlock()
	v.mu.Lock()
	failed := v.failed
	v.mu.Unlock()
	if failed != nil {
		return fmt.Errorf("%s: %s: %w: %v", v.path, what, ErrUnhealthy, failed)
	}
	if err := p.PaceWriteback(off, n); err != nil {
		err = fmt.Errorf("%s: %s %d@%d: %w", v.path, what, n, off, err)
		v.fail(err)
		return err
	}
	return nil
}

// extentReadSpan bounds the WAL bytes applyToExtent reads with one pread.
const extentReadSpan = 256 << 10

// applyToExtent writes the effects of records, in LSN order, into the
// extent. The WAL bytes of these records cannot be reused meanwhile: the
// tail only moves after this round persists.
func (v *Volume) applyToExtent(todo []recMeta) error {
	bs := int64(v.bs)
	// buf holds the WAL bytes [spanStart, spanEnd) (absolute positions):
	// the data of write records that lie close together in one pass of
	// the WAL region are read with one pread.
	buf := v.extentBuf
	defer func() {
		if cap(buf) <= 2*extentReadSpan {
			v.extentBuf = buf[:0] // keep it for the next round
		}
	}()
	var spanStart, spanEnd int64
	pacer, _ := v.f.(WritebackPacer)
	var dirty int64 // extent bytes written since write-back last started
	for i := range todo {
		if pacer != nil && dirty >= extentWritebackBytes {
			if err := v.paceWriteback(pacer, "flusher: extent write-back", v.extentOff, v.size); err != nil {
				return err
			}
			dirty = 0
		}
		m := &todo[i]
		off := v.extentOff + int64(m.lba)*bs
		v.snapSave(m.lba, uint64(m.blocks)) // a snapshot being taken keeps the old blocks
		switch m.kind {
		case KindWrite:
			start := m.abs + recordHeaderSize
			end := start + int64(m.dataLen)
			if start < spanStart || end > spanEnd {
				spanStart, spanEnd = start, end
				for j := i + 1; j < len(todo); j++ {
					mj := &todo[j]
					if mj.kind != KindWrite {
						continue
					}
					e := mj.abs + recordHeaderSize + int64(mj.dataLen)
					if e-spanStart > extentReadSpan || spanStart%v.walSize+(e-spanStart) > v.walSize {
						break
					}
					spanEnd = e
				}
				n := int(spanEnd - spanStart)
				if cap(buf) < n {
					buf = make([]byte, max(n, extentReadSpan))
				}
				buf = buf[:n]
				if err := v.readFull(buf, walOffset+spanStart%v.walSize); err != nil {
					return fmt.Errorf("flusher: read lsn %d: %w", m.lsn, err)
				}
			}
			b := buf[start-spanStart : end-spanStart]
			if err := v.writeExtent(b, off); err != nil {
				return fmt.Errorf("flusher: write extent for lsn %d: %w", m.lsn, err)
			}
			dirty += int64(len(b))
		case KindTrim, KindZero:
			if err := v.f.PunchHole(off, int64(m.blocks)*bs); err != nil {
				return fmt.Errorf("flusher: punch extent for lsn %d: %w", m.lsn, err)
			}
		}
	}
	return nil
}

// dropFreedWAL evicts the cached pages of the WAL bytes [from, to)
// (absolute positions) a flusher round has just freed, before writers may
// reuse them (the page holding `to` is still in use and stays). Writes of
// the next pass then create folios no larger than their own batches (see
// extentPiece): a batch that landed in the folios of an earlier pass (a
// 1 MiB write's, say) would dirty them whole, and the FLUSH's fdatasync
// would write all of them back. Only clean pages go, so it never changes
// what is durable; errors are ignored (it is advice).
func (v *Volume) dropFreedWAL(from, to int64) {
	d, ok := v.f.(CacheDropper)
	if !ok {
		return
	}
	from, to = alignDown(from, 4096), alignDown(to, 4096)
	for from < to {
		pos := from % v.walSize
		n := min(to-from, v.walSize-pos)
		if err := d.DropCache(walOffset+pos, n); err != nil {
			glog.V(1).Infof("blockvol %s: drop freed WAL cache: %v", v.path, err)
			return
		}
		from += n
	}
}

// extentPiece bounds the bytes of one extent write: a page, or one block
// where blocks are larger. Linux caches a file in folios as large as the
// write that created them (ext4 and xfs do since 6.x) and writes a dirty
// folio back whole: after a 1 MiB write the range sits in 1 MiB folios,
// and each later 4 KiB write into it costs fdatasync 1 MiB of writeback.
// Measured on a 256 MiB extent filled with 1 MiB writes: random 4 KiB
// writes with an fdatasync every 4000 wrote 65 KiB per write and cost
// 15.7 µs of CPU each; filled in 4 KiB pieces, 3 KiB and 5.5 µs. A block
// device's extent takes random writes of any size, so its folios are kept
// small; a large record costs one pwrite per page instead of one in all.
const extentPiece = 4096

// writeExtent writes b at off in pieces of at most max(extentPiece,
// block size) bytes.
func (v *Volume) writeExtent(b []byte, off int64) error {
	piece := max(extentPiece, v.bs)
	for len(b) > 0 {
		n := min(len(b), piece)
		if _, err := v.f.WriteAt(b[:n], off); err != nil {
			return err
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

// tailPosLocked is where the tail is when record m is the oldest one kept:
// the current tail position if m is the current tail record (which may
// sit just after a pad the tail already covers), else m's own position.
func (v *Volume) tailPosLocked(m *recMeta) int64 {
	if m.lsn == v.tailLSN {
		return v.tailAbs
	}
	return m.abs
}

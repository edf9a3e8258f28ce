package blockvol

import (
	"encoding/binary"
	"fmt"

	"github.com/golang/glog"

	"github.com/weedblock/weedblock/blockdev"
)

// Rebuild installs a base image from another member (DESIGN §6):
//
//	BeginRebuild()          durably untrusted; the WAL is dropped
//	WriteBase(p, off) ...   base blocks straight into the extent
//	InstallBase(baseLSN)    extent durable; the log restarts after baseLSN
//	ApplyReplicated(...)    replay (baseLSN, target] as usual
//	FinishRebuild()         checkpoint, then clear the untrusted flag
//
// A crash anywhere before FinishRebuild returns leaves the volume marked
// untrusted (Status.Untrusted), to be rebuilt again and never promoted.

// BeginRebuild starts a rebuild on a fenced volume: it durably marks the
// volume untrusted and drops every WAL record (new generation). Holds are
// revoked.
func (v *Volume) BeginRebuild() error {
	if err := v.enter(); err != nil {
		return err
	}
	defer v.ops.Done()
	// A base snapshot of the history being replaced must never be
	// shipped again: delete it durably first.
	v.mu.Lock()
	fenced := v.fenced
	v.mu.Unlock()
	if fenced {
		if err := v.DeleteSnapshot(); err != nil {
			return fmt.Errorf("%s: begin rebuild: %w", v.path, err)
		}
	}
	v.flushMu.Lock()
	defer v.flushMu.Unlock()
	if err := v.lockFencedQuiet("begin rebuild"); err != nil {
		return err
	}
	head := v.head
	writeAbs := alignUp(v.writeAbs, 4096)
	gen := v.gen + 1
	v.mu.Unlock()
	if err := v.persistSuperblock(func(s *superblock) {
		s.untrusted = true
		s.checkpoint = head
		s.tailLSN = head + 1
		s.tailPos = uint64(writeAbs % v.walSize)
		s.generation = gen
		s.terms = nil // the extent is being replaced: no epoch is known
	}); err != nil {
		return err
	}
	v.resetLog(head, writeAbs, gen, nil, "rebuild started")
	v.mu.Lock()
	v.rebuilding = true
	v.mu.Unlock()
	return nil
}

// resetLog empties the in-memory log: head = checkpoint = lsn, the next
// record goes to writeAbs with generation gen; terms is the new history.
func (v *Volume) resetLog(lsn uint64, writeAbs int64, gen uint64, terms []Term, why string) {
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
		v.revokeLocked(h, fmt.Errorf("%w: %s", ErrHoldRevoked, why))
	}
	v.cond.Broadcast()
	v.mu.Unlock()
	v.tailMu.Unlock()
}

// WriteBase writes base data straight into the extent (between
// BeginRebuild and InstallBase). All-zero blocks are punched.
func (v *Volume) WriteBase(p []byte, off int64) error {
	if err := v.beginBaseOp("write base", off, int64(len(p))); err != nil {
		return err
	}
	defer v.ops.Done()
	bs := v.bs
	for i := 0; i < len(p); {
		// Runs of zero blocks become holes, other runs one pwrite.
		zero := isZero(p[i : i+bs])
		j := i + bs
		for j < len(p) && isZero(p[j:j+bs]) == zero {
			j += bs
		}
		var err error
		if zero {
			err = v.f.PunchHole(v.extentOff+off+int64(i), int64(j-i))
		} else {
			_, err = v.f.WriteAt(p[i:j], v.extentOff+off+int64(i))
		}
		if err != nil {
			err = fmt.Errorf("%s: write base at %d: %w", v.path, off+int64(i), err)
			v.fail(err)
			return err
		}
		i = j
	}
	return nil
}

// ZeroBase makes n bytes of the extent at off read as zeros (a hole),
// between BeginRebuild and InstallBase: a zero range of the base, without
// its bytes.
func (v *Volume) ZeroBase(off, n int64) error {
	if err := v.beginBaseOp("zero base", off, n); err != nil {
		return err
	}
	defer v.ops.Done()
	if n == 0 {
		return nil
	}
	if err := v.f.PunchHole(v.extentOff+off, n); err != nil {
		err = fmt.Errorf("%s: zero base %d@%d: %w", v.path, n, off, err)
		v.fail(err)
		return err
	}
	return nil
}

// SyncBase makes the base written so far durable ahead of InstallBase
// (which syncs again, so calling it is never needed for correctness): a
// rebuild may call it while the transfer goes on, so that the disk writes
// overlap the transfer and InstallBase has little left to write. Only
// between BeginRebuild and InstallBase.
func (v *Volume) SyncBase() error {
	if err := v.beginBaseOp("sync base", 0, 0); err != nil {
		return err
	}
	defer v.ops.Done()
	return v.syncFile()
}

// StartBaseWriteback starts writing the base written at [off, off+n) back
// to the disk (between BeginRebuild and InstallBase), without waiting for
// it: a hint that keeps the dirty part of a base small, so that its disk
// writes overlap the transfer. It makes nothing durable (InstallBase
// syncs). A no-op on a File that is no WritebackPacer; an error (a failed
// write-back, which the next sync may then not report) fails the volume.
func (v *Volume) StartBaseWriteback(off, n int64) error {
	return v.baseWriteback("start base write-back", off, n, false)
}

// DropBase waits for the write-back of the base at [off, off+n) started by
// StartBaseWriteback (and starts it for whatever is still dirty there),
// then drops those pages from the page cache: the image of a rebuild
// streams through a few MiB of memory instead of filling the cache. It
// makes nothing durable (InstallBase syncs). A no-op on a File that is
// neither a WritebackPacer nor a CacheDropper; an error of the wait fails
// the volume (one of the drop is only logged).
func (v *Volume) DropBase(off, n int64) error {
	return v.baseWriteback("drop base", off, n, true)
}

func (v *Volume) baseWriteback(op string, off, n int64, drop bool) error {
	if err := v.beginBaseOp(op, off, n); err != nil {
		return err
	}
	defer v.ops.Done()
	if n == 0 {
		return nil
	}
	if p, ok := v.f.(WritebackPacer); ok {
		if err := v.paceWriteback(p, op, v.extentOff+off, n); err != nil {
			return err
		}
	}
	if d, ok := v.f.(CacheDropper); ok && drop {
		// Advice: its failure loses nothing.
		if err := d.DropCache(v.extentOff+off, n); err != nil {
			glog.V(1).Infof("blockvol %s: %s %d@%d: %v", v.path, op, n, off, err)
		}
	}
	return nil
}

// beginBaseOp checks a base write of length bytes at off and enters it (the
// caller calls v.ops.Done()).
func (v *Volume) beginBaseOp(op string, off, length int64) error {
	if err := v.checkRange(op, off, length); err != nil {
		return err
	}
	v.mu.Lock()
	if err := v.beginOpLocked(); err != nil {
		v.mu.Unlock()
		return err
	}
	rebuilding, failed := v.rebuilding, v.failed
	v.mu.Unlock()
	if failed != nil {
		v.ops.Done()
		return fmt.Errorf("%s: %s: %w: %w", v.path, op, blockdev.ErrReadOnly, ErrUnhealthy)
	}
	if !rebuilding {
		v.ops.Done()
		return fmt.Errorf("%s: %s: no rebuild in progress", v.path, op)
	}
	return nil
}

// isZero reports whether b is all zero bytes, eight at a time.
func isZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// InstallBase makes the base durable and restarts the log after baseLSN
// (head = checkpoint = durable = baseLSN, new generation). The volume
// stays untrusted until FinishRebuild. The epochs of the base's records
// are unknown (an empty term history); InstallBaseTerms gives them.
func (v *Volume) InstallBase(baseLSN uint64) error {
	return v.InstallBaseTerms(baseLSN, nil)
}

// InstallBaseTerms is InstallBase with the term history of the member the
// base came from: its terms whose First is ≤ baseLSN become this volume's
// history, persisted with the base. terms must be ascending by First (≥ 1),
// without two neighbours of the same epoch; more than MaxTerms keep the
// newest.
func (v *Volume) InstallBaseTerms(baseLSN uint64, terms []Term) error {
	if err := checkTermOrder(terms, ^uint64(0)); err != nil {
		return fmt.Errorf("%s: install base at %d: bad terms: %w", v.path, baseLSN, err)
	}
	terms = termsUpTo(terms, baseLSN)
	if len(terms) > MaxTerms {
		terms = terms[len(terms)-MaxTerms:]
	}
	if err := v.enter(); err != nil {
		return err
	}
	defer v.ops.Done()
	v.flushMu.Lock()
	defer v.flushMu.Unlock()
	v.mu.Lock()
	rebuilding := v.rebuilding
	writeAbs := alignUp(v.writeAbs, 4096)
	gen := v.gen + 1
	v.mu.Unlock()
	if !rebuilding {
		return fmt.Errorf("%s: install base: no rebuild in progress", v.path)
	}
	if err := v.syncFile(); err != nil {
		return err
	}
	if err := v.persistSuperblock(func(s *superblock) {
		s.untrusted = true
		s.checkpoint = baseLSN
		s.tailLSN = baseLSN + 1
		s.tailPos = uint64(writeAbs % v.walSize)
		s.generation = gen
		s.terms = terms
	}); err != nil {
		return err
	}
	v.resetLog(baseLSN, writeAbs, gen, terms, "base installed")
	v.mu.Lock()
	v.rebuilding = false
	v.mu.Unlock()
	return nil
}

// FinishRebuild checkpoints everything replayed since InstallBase and then
// clears the untrusted flag.
func (v *Volume) FinishRebuild() error {
	v.mu.Lock()
	rebuilding := v.rebuilding
	v.mu.Unlock()
	if rebuilding {
		return fmt.Errorf("%s: finish rebuild: base not installed", v.path)
	}
	if err := v.Checkpoint(); err != nil {
		return err
	}
	return v.SetUntrusted(false)
}

// lockFencedQuiet takes v.mu for an operation (op, for errors) that rewrites
// the log of a fenced volume: it fails if the volume is unhealthy or not
// fenced, and waits until every appended record is written. On success v.mu
// is held; on error it is not.
func (v *Volume) lockFencedQuiet(op string) error {
	v.mu.Lock()
	if v.failed != nil {
		err := v.failedErrLocked()
		v.mu.Unlock()
		return err
	}
	if !v.fenced {
		v.mu.Unlock()
		return fmt.Errorf("%s: %s: volume must be fenced", v.path, op)
	}
	if err := v.waitWrittenLocked(v.head); err != nil {
		v.mu.Unlock()
		return err
	}
	return nil
}

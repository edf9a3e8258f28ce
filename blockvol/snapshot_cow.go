package blockvol

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	iofs "io/fs"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang/glog"
)

// Taking a snapshot without stopping the flusher: copy-on-write.
//
// At the moment CreateSnapshot starts (under flushMu, so no flusher round
// is half done) the extent is exactly the volume at its checkpoint L. From
// then on, before the flusher (or anything else that applies records)
// changes extent blocks the copier has not reached yet, snapSave copies
// their current content — their content at L — into the image and marks
// them saved; the copier then takes saved blocks from the image and every
// other block from the extent. Both sides work under snapCOW.mu, one chunk
// or one record at a time. Writers and the flusher never wait for the
// copy, so a snapshot never stalls a volume whose WAL fills up.

// snapCOW is the state of one image being written.
type snapCOW struct {
	on     atomic.Bool // fast path for snapSave: active
	mu     sync.Mutex
	active bool
	img    File
	cursor int64    // volume bytes below it are done by the copier
	saved  []uint64 // bitmap: blocks ≥ cursor already in the image
	buf    []byte
	zero   []byte // read-only zeros, for allZero
	saves  int64  // blocks saved by copy-on-write (tests, logs)
	err    error  // a copy-on-write failure: the snapshot fails
}

func (c *snapCOW) isSaved(b int64) bool { return c.saved[b>>6]&(1<<(b&63)) != 0 }
func (c *snapCOW) mark(b int64)         { c.saved[b>>6] |= 1 << (b & 63) }

// anySavedLocked reports whether a block of [from, to) is saved.
func (c *snapCOW) anySavedLocked(from, to int64) bool {
	for b := from; b < to; b++ {
		if c.isSaved(b) {
			return true
		}
	}
	return false
}

// snapSave is called before blocks [lba, lba+blocks) of the extent change:
// while a snapshot is being written, blocks the copier has not reached and
// that are not saved yet get their current content copied into the image.
// A failure fails the snapshot, never the volume.
func (v *Volume) snapSave(lba uint64, blocks uint64) {
	c := &v.snap.cow
	if !c.on.Load() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.active || c.err != nil {
		return
	}
	bs := int64(v.bs)
	first, end := int64(lba), int64(lba+blocks)
	if cb := c.cursor / bs; first < cb {
		first = cb
	}
	const maxRun = snapCopyChunk
	for b := first; b < end; {
		if c.isSaved(b) {
			b++
			continue
		}
		e := b + 1
		for e < end && !c.isSaved(e) && (e-b)*bs < maxRun {
			e++
		}
		n := (e - b) * bs
		if int64(cap(c.buf)) < n {
			c.buf = make([]byte, n)
		}
		p := c.buf[:n]
		if err := v.readFull(p, v.extentOff+b*bs); err != nil {
			c.err = fmt.Errorf("copy-on-write of blocks [%d, %d): %w", b, e, err)
			return
		}
		if err := writeNonZero(c.img, p, b*bs, bs, c.zero); err != nil {
			c.err = fmt.Errorf("copy-on-write of blocks [%d, %d): %w", b, e, err)
			return
		}
		for x := b; x < e; x++ {
			c.mark(x)
		}
		c.saves += e - b
		b = e
	}
}

// allZero reports whether b holds only zero bytes, comparing it with
// zero (all zeros, any length > 0) by memcmp.
func allZero(b, zero []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zero))
		if !bytes.Equal(b[:n], zero[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// writeNonZero writes the runs of p (at off) that are not all-zero blocks
// of bs bytes; zero blocks are left as they are (holes in a fresh image).
func writeNonZero(f File, p []byte, off, bs int64, zeros []byte) error {
	n := int64(len(p))
	for j := int64(0); j < n; {
		k := min(j+bs, n)
		zero := allZero(p[j:k], zeros)
		e := k
		for e < n && allZero(p[e:min(e+bs, n)], zeros) == zero {
			e = min(e+bs, n)
		}
		if !zero {
			if _, err := f.WriteAt(p[j:e], off+j); err != nil {
				return fmt.Errorf("write image at %d: %w", off+j, err)
			}
		}
		j = e
	}
	return nil
}

// CreateSnapshot replaces the base snapshot with an exact image of the
// volume at its checkpoint L (it checkpoints first). The extent is copied
// into the image slot the current manifest does not name — sparse: holes
// stay holes — while writes and the flusher go on (copy-on-write keeps
// the blocks they change at their L content); the image is hashed and
// fsynced, then the manifest naming it is written and fsynced. The
// previous snapshot stays valid until then. The new snapshot holds the WAL
// after L (within half the WAL) so it is a rebuild base.
func (v *Volume) CreateSnapshot() (SnapshotInfo, error) {
	if err := v.enter(); err != nil {
		return SnapshotInfo{}, err
	}
	defer v.ops.Done()
	s := &v.snap
	deletes := s.deletes.Load()
	s.createMu.Lock()
	defer s.createMu.Unlock()
	s.mu.Lock()
	v.loadSnapLocked()
	failed := s.failedErr()
	target := 0
	if s.cur.present && s.corrupt == nil {
		target = 1 - int(s.cur.image)
	}
	busy := s.readers[target] > 0
	nextSeq := s.cur.seq + 1
	if s.corrupt != nil {
		nextSeq = 1 // no slot is valid: any sequence number wins
	}
	nextSlot := 0
	if s.curSlot >= 0 {
		nextSlot = 1 - s.curSlot
	}
	s.mu.Unlock()
	if failed != nil {
		return SnapshotInfo{}, fmt.Errorf("%s: create snapshot: an earlier manifest write failed: %w", v.path, failed)
	}
	if busy {
		return SnapshotInfo{}, fmt.Errorf("%s: create snapshot: image slot %d: %w", v.path, target, ErrSnapshotBusy)
	}
	untrusted := v.untrusted.Load() // sbMu may be held across an fsync
	if untrusted {
		return SnapshotInfo{}, fmt.Errorf("%s: create snapshot: the volume is untrusted (being rebuilt): %w", v.path, ErrSnapshotAborted)
	}
	if err := v.Checkpoint(); err != nil {
		return SnapshotInfo{}, fmt.Errorf("%s: create snapshot: %w", v.path, err)
	}
	f, err := v.openImage(target)
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("%s: create snapshot: %w", v.path, err)
	}
	imageOpen := true
	closeImage := func() {
		if imageOpen {
			imageOpen = false
			f.Close()
		}
	}
	defer closeImage()
	path := v.imagePath(target)
	// Empty it first so every old block becomes a hole.
	if err := f.Truncate(0); err != nil {
		return SnapshotInfo{}, fmt.Errorf("%s: create snapshot: truncate %s: %w", v.path, path, err)
	}
	if err := f.Truncate(v.size); err != nil {
		return SnapshotInfo{}, fmt.Errorf("%s: create snapshot: truncate %s: %w", v.path, path, err)
	}

	// Start copy-on-write with no flusher round in progress: the extent is
	// exactly the volume at the checkpoint L.
	c := &s.cow
	v.flushMu.Lock()
	v.mu.Lock()
	m := manifest{
		seq: nextSeq, present: true, lsn: v.checkpoint, size: uint64(v.size), blockSize: uint32(v.bs),
		image: uint32(target), generation: v.gen, epoch: v.epoch, created: time.Now().UnixNano(),
	}
	rebuilding, vfailed := v.rebuilding, v.failed
	v.mu.Unlock()
	if rebuilding || vfailed != nil {
		v.flushMu.Unlock()
		return SnapshotInfo{}, fmt.Errorf("%s: create snapshot: volume is being rebuilt or failed: %w", v.path, ErrSnapshotAborted)
	}
	// Hold the WAL after L (no round in progress: the tail is ≤ L+1), so
	// the snapshot is a rebuild base at once. Writes may outgrow the hold
	// later; the snapshot then stays valid but is no base (Retained).
	hold := v.holdFlushLocked(m.lsn+1, v.snapHoldBudget())
	kept := false
	defer func() {
		if !kept {
			hold.Release()
		}
	}()
	c.mu.Lock()
	c.active, c.img, c.cursor, c.err, c.saves = true, f, 0, nil, 0
	c.zero = make([]byte, 64<<10)
	c.saved = make([]uint64, (v.size/int64(v.bs)+63)/64)
	c.on.Store(true)
	c.mu.Unlock()
	v.flushMu.Unlock()

	sum, err := v.copyImage(f, deletes)
	saves, cowErr := v.stopCOW()
	if err == nil && cowErr != nil {
		err = fmt.Errorf("%w: %w", ErrSnapshotAborted, cowErr)
	}
	if err == nil {
		if serr := f.Sync(); serr != nil {
			err = fmt.Errorf("fsync %s: %w", path, serr)
		}
	}
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("%s: create snapshot at %d: %w", v.path, m.lsn, err)
	}
	m.sum = sum
	// Let go of the image before the manifest names it: a reader opening
	// it at once (its open takes the file's lock) must not find it still
	// held here, which would mark the new snapshot untrusted.
	closeImage()

	if err := v.commitManifest(&m, nextSlot); err != nil {
		return SnapshotInfo{}, err
	}
	kept = true
	s.mu.Lock()
	old, oldImage := s.hold, -1
	if s.cur.present && s.readers[1-target] == 0 {
		oldImage = 1 - target // the previous snapshot's, unread: free it
	}
	s.cur, s.curSlot, s.corrupt, s.bad, s.hold = m, nextSlot, nil, nil, hold
	info, _ := v.infoLocked()
	s.mu.Unlock()
	if old != nil {
		old.Release()
	}
	if oldImage >= 0 {
		v.emptyImages(oldImage)
	}
	glog.V(1).Infof("blockvol %s: base snapshot at %d (slot %d, seq %d, %d blocks copied on write)", v.path, m.lsn, target, m.seq, saves)
	return info, nil
}

// holdFlushLocked registers a hold from lsn like Hold, for a caller that
// holds flushMu and knows lsn is retained (tail ≤ lsn ≤ head+1).
func (v *Volume) holdFlushLocked(lsn uint64, budget int64) *Hold {
	v.mu.Lock()
	defer v.mu.Unlock()
	h := &Hold{v: v, lsn: lsn, budget: budget, revoked: make(chan struct{})}
	v.holds[h] = struct{}{}
	return h
}

// stopCOW ends copy-on-write; after it returns nobody writes the image.
func (v *Volume) stopCOW() (saves int64, err error) {
	c := &v.snap.cow
	c.mu.Lock()
	defer c.mu.Unlock()
	c.on.Store(false)
	saves, err = c.saves, c.err
	c.active, c.img, c.saved, c.buf, c.zero, c.err = false, nil, nil, nil, nil, nil
	return saves, err
}

// openImage opens (creating if needed) image slot i for writing.
func (v *Volume) openImage(i int) (File, error) {
	f, err := v.snap.fs.Open(v.imagePath(i))
	if errors.Is(err, iofs.ErrNotExist) {
		f, err = v.snap.fs.Create(v.imagePath(i))
	}
	if err != nil {
		return nil, fmt.Errorf("open image %s: %w", v.imagePath(i), err)
	}
	return f, nil
}

// copyImage copies the extent into img chunk by chunk (blocks saved by
// copy-on-write come from img itself) and returns the image's SHA-256.
func (v *Volume) copyImage(img File, deletes int64) ([32]byte, error) {
	var sum [32]byte
	c := &v.snap.cow
	h := sha256.New()
	buf := make([]byte, snapCopyChunk)
	zero := make([]byte, snapCopyChunk)
	seeker, _ := v.f.(dataSeeker)
	bs := int64(v.bs)
	for off := int64(0); off < v.size; {
		if err := v.snapshotGoOn(off, deletes); err != nil {
			return sum, err
		}
		end := min(off+snapCopyChunk, v.size)
		c.mu.Lock()
		if seeker != nil {
			hole, next, err := v.holeAt(seeker, off, end)
			if err != nil {
				seeker = nil // no SEEK_DATA here: read everything
				c.mu.Unlock()
				continue
			}
			if hole && !c.anySavedLocked(off/bs, next/bs) {
				// Holes now that were holes at L (a block punched since
				// L would have been saved).
				h.Write(zero[:next-off])
				c.cursor = next
				c.mu.Unlock()
				off = next
				continue
			}
			if !hole {
				end = next
			}
		}
		p := buf[:end-off]
		err := v.copyChunkLocked(img, p, off)
		if err == nil {
			h.Write(p)
			c.cursor = end
		}
		c.mu.Unlock()
		if err != nil {
			return sum, err
		}
		off = end
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// holeAt looks at [off, end): hole reports whether it starts with a hole,
// next is where that hole (or that data) ends, in whole blocks, ≤ end.
func (v *Volume) holeAt(sk dataSeeker, off, end int64) (hole bool, next int64, err error) {
	bs := int64(v.bs)
	data, ok, err := sk.seekData(v.extentOff + off)
	if err != nil {
		return false, 0, err
	}
	if !ok || data-v.extentOff >= end {
		return true, end, nil
	}
	// File system blocks may be smaller than ours: whole volume blocks.
	if d := (data - v.extentOff) / bs * bs; d > off {
		return true, d, nil
	}
	hl, err := sk.seekHole(v.extentOff + off)
	if err != nil {
		return false, 0, err
	}
	if he := alignUp(hl-v.extentOff, bs); he > off && he < end {
		return false, he, nil
	}
	return false, end, nil
}

// copyChunkLocked fills p with the image bytes at off — the extent's, or
// the image's own for blocks saved by copy-on-write — and writes the
// extent's non-zero blocks into img. Callers hold snapCOW.mu.
func (v *Volume) copyChunkLocked(img File, p []byte, off int64) error {
	c := &v.snap.cow
	bs := int64(v.bs)
	if err := v.readFull(p, v.extentOff+off); err != nil {
		return fmt.Errorf("read extent: %w", err)
	}
	n := int64(len(p))
	for j := int64(0); j < n; {
		b := (off + j) / bs
		k := min(j+bs, n)
		if !c.isSaved(b) {
			// A run of unsaved blocks: the extent's bytes go to the image.
			e := k
			for e < n && !c.isSaved((off+e)/bs) {
				e = min(e+bs, n)
			}
			if err := writeNonZero(img, p[j:e], off+j, bs, c.zero); err != nil {
				return err
			}
			j = e
			continue
		}
		e := k
		for e < n && c.isSaved((off+e)/bs) {
			e = min(e+bs, n)
		}
		got, err := img.ReadAt(p[j:e], off+j)
		if got != int(e-j) {
			return fmt.Errorf("read saved blocks back from the image at %d: %d of %d bytes: %v", off+j, got, e-j, err)
		}
		j = e
	}
	return nil
}

// snapshotGoOn says whether the copy may continue: not once the volume
// closes or fails, nor once DeleteSnapshot was called (BeginRebuild calls
// it and must not wait for a whole copy).
func (v *Volume) snapshotGoOn(off int64, deletes int64) error {
	v.mu.Lock()
	closed, failed, hook := v.closed, v.failed, v.snap.copyHook
	v.mu.Unlock()
	switch {
	case v.snap.deletes.Load() != deletes:
		return fmt.Errorf("%w: the snapshot is being deleted", ErrSnapshotAborted)
	case closed:
		return fmt.Errorf("%w: volume closing", ErrSnapshotAborted)
	case failed != nil:
		return fmt.Errorf("%w: volume failed: %v", ErrSnapshotAborted, failed)
	}
	if hook != nil {
		hook(off)
	}
	return nil
}

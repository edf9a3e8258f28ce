package blockvol

import (
	"fmt"
	"io"
)

// Where a block is read from, per block of one read chunk.
const (
	srcExtent = ^uint64(0)
	srcZero   = ^uint64(0) - 1
	readChunk = 64 // blocks looked up per critical section
)

// ReadAt fills p with the data at off: the newest WAL version of each
// block if it has one, zeros for trimmed or never-written blocks, the
// extent otherwise.
func (v *Volume) ReadAt(p []byte, off int64) error {
	if err := v.checkRange("read", off, int64(len(p))); err != nil {
		return err
	}
	if err := v.enter(); err != nil {
		return err
	}
	defer v.ops.Done()
	bs := int64(v.bs)
	lba := uint64(off / bs)
	for len(p) > 0 {
		n := min(len(p)/v.bs, readChunk)
		if err := v.readChunk(p[:n*v.bs], lba); err != nil {
			return fmt.Errorf("%s read %d@%d: %w", v.path, len(p), off, err)
		}
		p = p[n*v.bs:]
		lba += uint64(n)
	}
	return nil
}

func (v *Volume) readChunk(p []byte, lba uint64) error {
	var src [readChunk]uint64
	n := len(p) / v.bs
	// Holding tailMu shared keeps the WAL bytes we were pointed at from
	// being reused until we have read them.
	v.tailMu.RLock()
	defer v.tailMu.RUnlock()
	v.mu.Lock()
lookup:
	for i := 0; i < n; i++ {
		loc, ok := v.index[lba+uint64(i)]
		switch {
		case ok && isZeroLoc(loc):
			src[i] = srcZero
		case ok:
			abs := unpackAbs(loc)
			if abs >= v.writtenAbs {
				// Appended but not yet in the file: wait for its writer.
				if v.failed != nil {
					v.mu.Unlock()
					return v.failed
				}
				if !v.writing && len(v.pending) > 0 {
					v.writePendingLocked()
				} else {
					v.cond.Wait()
				}
				goto lookup
			}
			src[i] = uint64(walOffset + abs%v.walSize)
		case len(v.zeros) > 0 && v.inZeroRangeLocked(lba+uint64(i)):
			src[i] = srcZero
		default:
			src[i] = srcExtent
		}
	}
	v.mu.Unlock()
	bs := int64(v.bs)
	// Coalesce runs of blocks that are contiguous on disk.
	for i := 0; i < n; {
		j := i + 1
		switch src[i] {
		case srcZero:
			for j < n && src[j] == srcZero {
				j++
			}
			clear(p[int64(i)*bs : int64(j)*bs])
			i = j
			continue
		case srcExtent:
			for j < n && src[j] == srcExtent {
				j++
			}
			if err := v.readFull(p[int64(i)*bs:int64(j)*bs], v.extentOff+int64(lba+uint64(i))*bs); err != nil {
				return err
			}
		default:
			for j < n && src[j] != srcZero && src[j] != srcExtent && src[j] == src[j-1]+uint64(bs) {
				j++
			}
			if err := v.readFull(p[int64(i)*bs:int64(j)*bs], int64(src[i])); err != nil {
				return err
			}
		}
		i = j
	}
	return nil
}

func (v *Volume) readFull(p []byte, off int64) error {
	n, err := v.f.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read %d bytes at %d: %w", len(p), off, err)
}

package blockvol

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// OSFS is the production FS: plain files on the local file system.
type OSFS struct{}

// ErrInUse: another process (or another Volume in this one) has the file
// open; a volume file has one writer.
var ErrInUse = errors.New("blockvol: volume file is in use")

// Create makes a new file (failing if it exists) and fsyncs its directory
// so the name survives a crash. Files are locked (flock) while open.
func (OSFS) Create(path string) (File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, err
	}
	if err := lockFile(f); err != nil {
		f.Close()
		return nil, err
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		f.Close()
		return nil, err
	}
	return newOSFile(f), nil
}

// Open opens an existing file for reading and writing.
func (OSFS) Open(path string) (File, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	if err := lockFile(f); err != nil {
		f.Close()
		return nil, err
	}
	return newOSFile(f), nil
}

// lockFile takes an exclusive, non-blocking flock; it is released when the
// file is closed (also when the process dies).
func lockFile(f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("%s: %w", f.Name(), ErrInUse)
		}
		if err != nil {
			return fmt.Errorf("flock %s: %w", f.Name(), err)
		}
		return nil
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}

// osFile is a File over an *os.File.
type osFile struct {
	f  *os.File
	fd int
}

func newOSFile(f *os.File) *osFile { return &osFile{f: f, fd: int(f.Fd())} }

func (o *osFile) ReadAt(p []byte, off int64) (int, error)  { return o.f.ReadAt(p, off) }
func (o *osFile) WriteAt(p []byte, off int64) (int, error) { return o.f.WriteAt(p, off) }

// iovMax is Linux's IOV_MAX: the most buffers one pwritev takes.
const iovMax = 1024

// WritevAt writes bufs back to back at off with pwritev, continuing after
// short writes.
func (o *osFile) WritevAt(bufs [][]byte, off int64) (int, error) {
	total := 0
	for len(bufs) > 0 {
		// Drop empty buffers: they confuse the short-write accounting.
		if len(bufs[0]) == 0 {
			bufs = bufs[1:]
			continue
		}
		chunk := bufs
		if len(chunk) > iovMax {
			chunk = chunk[:iovMax]
		}
		n, err := unix.Pwritev(o.fd, chunk, off)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return total, &os.PathError{Op: "pwritev", Path: o.f.Name(), Err: err}
		}
		if n == 0 {
			return total, &os.PathError{Op: "pwritev", Path: o.f.Name(), Err: errors.New("wrote 0 bytes")}
		}
		total += n
		off += int64(n)
		// Advance past what was written; the remainder may start mid-buffer.
		rest := bufs
		for n > 0 {
			if n >= len(rest[0]) {
				n -= len(rest[0])
				rest = rest[1:]
				continue
			}
			// Copy the slice header list only when a partial buffer must be
			// trimmed, so the caller's slice is never modified.
			tmp := make([][]byte, len(rest))
			copy(tmp, rest)
			tmp[0] = tmp[0][n:]
			rest = tmp
			n = 0
		}
		bufs = rest
	}
	return total, nil
}

// Sync is fdatasync.
func (o *osFile) Sync() error {
	for {
		err := unix.Fdatasync(o.fd)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "fdatasync", Path: o.f.Name(), Err: err}
		}
		return nil
	}
}

// PunchHole deallocates the range with fallocate(PUNCH_HOLE|KEEP_SIZE).
// File systems without hole punching get the range overwritten with zeros.
func (o *osFile) PunchHole(off, length int64) error {
	if length <= 0 {
		return nil
	}
	err := unix.Fallocate(o.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) {
		return &os.PathError{Op: "fallocate punch", Path: o.f.Name(), Err: err}
	}
	zero := make([]byte, min(length, 1<<20))
	for length > 0 {
		n := min(length, int64(len(zero)))
		if _, err := o.f.WriteAt(zero[:n], off); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

// DropCache is posix_fadvise(DONTNEED): clean pages of the range leave the
// page cache (dirty ones are only queued for writeback).
func (o *osFile) DropCache(off, length int64) error {
	if length <= 0 {
		return nil
	}
	if err := unix.Fadvise(o.fd, off, length, unix.FADV_DONTNEED); err != nil {
		return &os.PathError{Op: "fadvise dontneed", Path: o.f.Name(), Err: err}
	}
	return nil
}

// PaceWriteback is sync_file_range(WAIT_BEFORE|WRITE).
func (o *osFile) PaceWriteback(off, length int64) error {
	if length <= 0 {
		return nil
	}
	for {
		err := unix.SyncFileRange(o.fd, off, length, unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "sync_file_range", Path: o.f.Name(), Err: err}
		}
		return nil
	}
}

func (o *osFile) Truncate(size int64) error { return o.f.Truncate(size) }

func (o *osFile) Size() (int64, error) {
	st, err := o.f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

func (o *osFile) Close() error { return o.f.Close() }

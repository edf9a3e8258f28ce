package faultfs

import (
	"io"
	iofs "io/fs"
	"syscall"
)

// File is an open handle on a faultfs file. It satisfies blockvol.File.
type File struct {
	fs     *FS
	node   *node
	boot   uint64
	closed bool
	// syncErr is a failed writeback of this file, seen by another handle,
	// still to be reported by this handle's next Sync (Linux reports a
	// writeback error once to every file description open when it happened).
	syncErr error
}

func (f *File) pathErr(op string, err error) error {
	return &iofs.PathError{Op: op, Path: f.node.path, Err: err}
}

// usableLocked reports why the handle cannot be used, if it cannot.
func (f *File) usableLocked(op string) error {
	if f.closed {
		return f.pathErr(op, iofs.ErrClosed)
	}
	if f.boot != f.fs.boot {
		return f.pathErr(op, ErrCrashed)
	}
	return nil
}

// ReadAt reads the latest state (synced or not), like a read through the
// page cache. Like os.File.ReadAt it returns io.EOF when it reads fewer than
// len(p) bytes because the file ends.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.usableLocked("read"); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, f.pathErr("read", syscall.EINVAL)
	}
	fs := f.fs
	fs.reads++
	if rf := fs.readFault; rf != nil && fs.reads >= rf.from && (rf.count == 0 || fs.reads < rf.from+rf.count) {
		return 0, f.pathErr("read", rf.err)
	}
	n := f.node.current.readAt(p, off)
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt stores p at off. The write is visible to reads at once and
// durable only after a later successful Sync.
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	return f.write("write", [][]byte{p}, off)
}

// WritevAt writes bufs back to back from off as one operation.
func (f *File) WritevAt(bufs [][]byte, off int64) (int, error) {
	return f.write("writev", bufs, off)
}

func (f *File) write(name string, bufs [][]byte, off int64) (int, error) {
	fs := f.fs
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if err := f.usableLocked(name); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, f.pathErr(name, syscall.EINVAL)
	}
	fs.writes++
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	data := make([]byte, 0, total)
	for _, b := range bufs {
		data = append(data, b...)
	}
	var fault error
	if wf := fs.writeFault; wf != nil && fs.writes >= wf.from && (wf.count == 0 || fs.writes < wf.from+wf.count) {
		fault = f.pathErr(name, wf.err)
		if !wf.short {
			return 0, fault
		}
		// Keep a sector-aligned (in file offsets) prefix of about half.
		keep := int64(total / 2)
		keep = (off+keep)/SectorSize*SectorSize - off
		if keep < 0 {
			keep = 0
		}
		data = data[:keep]
	}
	if len(data) > 0 {
		o := &op{kind: opWrite, off: off, data: data}
		o.apply(f.node.current)
		f.node.pending = append(f.node.pending, o)
	}
	if fault != nil {
		return len(data), fault
	}
	return total, nil
}

// PunchHole makes [off, off+length) read as zeros without changing the size.
func (f *File) PunchHole(off, length int64) error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.usableLocked("punch"); err != nil {
		return err
	}
	if off < 0 || length <= 0 {
		return f.pathErr("punch", syscall.EINVAL)
	}
	o := &op{kind: opPunch, off: off, length: length}
	o.apply(f.node.current)
	f.node.pending = append(f.node.pending, o)
	return nil
}

// Truncate sets the size.
func (f *File) Truncate(size int64) error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.usableLocked("truncate"); err != nil {
		return err
	}
	if size < 0 {
		return f.pathErr("truncate", syscall.EINVAL)
	}
	o := &op{kind: opTruncate, off: size}
	o.apply(f.node.current)
	f.node.pending = append(f.node.pending, o)
	return nil
}

// Size is the current size (synced or not).
func (f *File) Size() (int64, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.usableLocked("stat"); err != nil {
		return 0, err
	}
	return f.node.current.size, nil
}

// Sync makes every completed operation on the file durable, unless it is the
// Sync armed by CrashAtSync (the file system crashes, ErrCrashed) or one
// armed by FailSync (see there for what a failure means).
func (f *File) Sync() error {
	fs := f.fs
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if err := f.usableLocked("sync"); err != nil {
		return err
	}
	fs.syncs++
	n := f.node
	if fs.crashAt != 0 && fs.syncs == fs.crashAt {
		fs.crashLocked(fs.crashAtMode, fs.crashAtSeed)
		return f.pathErr("sync", ErrCrashed)
	}
	if err, ok := fs.failSync[fs.syncs]; ok {
		delete(fs.failSync, fs.syncs)
		n.failed = true
		for h := range n.handles {
			if h != f && h.syncErr == nil {
				h.syncErr = err
			}
		}
		f.syncErr = nil
		return f.pathErr("sync", err)
	}
	if f.syncErr != nil {
		err := f.syncErr
		f.syncErr = nil
		return f.pathErr("sync", err)
	}
	if n.failed {
		if fs.stickySync {
			return f.pathErr("sync", syscall.EIO)
		}
		// Linux: the error was already reported; the data the kernel gave
		// up on stays in limbo and this Sync makes nothing durable.
		return nil
	}
	for _, o := range n.pending {
		o.apply(n.durable)
	}
	n.pending = nil
	return nil
}

// Close releases the handle. It is idempotent, and it succeeds on a handle
// killed by a crash (the process that held it is gone anyway).
func (f *File) Close() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	if f.boot == f.fs.boot {
		delete(f.node.handles, f)
	}
	return nil
}

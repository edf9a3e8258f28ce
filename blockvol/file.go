package blockvol

// File is the storage one volume lives on. The engine does all its I/O
// through it so that tests can substitute a file layer that really loses
// unsynced writes (see package faultfs). The production implementation wraps
// an *os.File.
//
// Durability contract: a write (WriteAt, WritevAt, PunchHole, Truncate) is
// guaranteed to survive a crash only once a later Sync has returned nil.
// Before that, after a crash, any subset of it may be present, in any order,
// torn at sector (512 byte) granularity.
type File interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// WritevAt writes bufs back to back starting at off, as one pwritev.
	WritevAt(bufs [][]byte, off int64) (int, error)
	// Sync makes every completed write durable (fdatasync). An error is
	// fatal for the volume: it must never be retried and treated as success.
	Sync() error
	// PunchHole deallocates [off, off+length) without changing the size;
	// the range reads as zeros afterwards.
	PunchHole(off, length int64) error
	// Truncate sets the file size.
	Truncate(size int64) error
	// Size is the current size in bytes.
	Size() (int64, error)
	Close() error
}

// CacheDropper is an optional File method for a File read through a cache
// (the page cache of an osFile). DropCache evicts the clean cached pages of
// [off, off+length). It is advice: it never changes the file's content or
// what is durable, and a File that caches nothing need not implement it.
type CacheDropper interface {
	DropCache(off, length int64) error
}

// WritebackPacer is an optional File method for a File written through a
// cache. PaceWriteback waits for the write-back already under way in [off,
// off+length) to finish, then starts write-back of what is dirty there now,
// without waiting for it. It makes nothing durable (only Sync does), but a
// write-back error it waits on is reported to it and may not be reported
// again to the next Sync: the caller treats any error as a failed Sync.
type WritebackPacer interface {
	PaceWriteback(off, length int64) error
}

// FS creates and opens Files.
type FS interface {
	// Create makes a new file at path (failing if it exists) and makes its
	// directory entry durable before returning.
	Create(path string) (File, error)
	// Open opens an existing file for reading and writing.
	Open(path string) (File, error)
}

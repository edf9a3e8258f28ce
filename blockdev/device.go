package blockdev

import "errors"

// Device is a virtual disk addressed in bytes. Offsets and lengths passed to
// every method must be multiples of BlockSize and lie inside [0, Size());
// implementations return ErrUnaligned or ErrOutOfRange otherwise and change
// nothing.
//
// All methods are safe for concurrent use. Writes are acknowledged once they
// are ordered (write-back cache semantics): they are guaranteed to survive a
// crash only after a later Flush returns nil, or when written with fua=true.
type Device interface {
	// BlockSize is the logical block size in bytes (a power of two ≥ 512).
	BlockSize() int
	// Size is the capacity in bytes, a multiple of BlockSize.
	Size() int64

	// ReadAt fills p with the data at off. Never-written or trimmed blocks
	// read as zeros.
	ReadAt(p []byte, off int64) error
	// WriteAt stores p at off. With fua it returns only once the data is
	// committed (as after a Flush).
	WriteAt(p []byte, off int64, fua bool) error
	// Trim discards [off, off+length); the range reads as zeros afterwards.
	Trim(off, length int64) error
	// WriteZeroes sets [off, off+length) to zeros. With fua it returns only
	// once committed.
	WriteZeroes(off, length int64, fua bool) error
	// Flush returns once every write acknowledged before the call is
	// committed.
	Flush() error
}

// Errors a frontend maps to protocol errors. Implementations wrap them with
// context; callers test with errors.Is.
var (
	// ErrOutOfRange: the request reaches past the end of the device.
	ErrOutOfRange = errors.New("blockdev: request beyond end of device")
	// ErrUnaligned: offset or length not a multiple of the block size.
	ErrUnaligned = errors.New("blockdev: request not aligned to block size")
	// ErrReadOnly: the device refuses writes for now: it is fenced (no valid
	// lease or epoch), or it went read-only after a fatal I/O error.
	ErrReadOnly = errors.New("blockdev: device is read-only")
	// ErrClosed: the device was closed.
	ErrClosed = errors.New("blockdev: device is closed")
)

// CheckRange validates a request of length bytes at off against a device of
// size bytes and block size bs. It returns nil, ErrUnaligned or ErrOutOfRange.
func CheckRange(off, length int64, size int64, bs int) error {
	b := int64(bs)
	if off < 0 || length < 0 {
		return ErrOutOfRange
	}
	if off%b != 0 || length%b != 0 {
		return ErrUnaligned
	}
	if off > size || length > size-off {
		return ErrOutOfRange
	}
	return nil
}

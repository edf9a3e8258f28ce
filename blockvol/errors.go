package blockvol

import (
	"errors"
	"fmt"
)

// Errors callers branch on. Write refusals also wrap blockdev.ErrReadOnly,
// range errors wrap blockdev.ErrOutOfRange / ErrUnaligned, and use after
// Close wraps blockdev.ErrClosed.
var (
	// ErrFenced: the volume has no right to accept writes (it opened
	// fenced, Fence was called, or its lease expired).
	ErrFenced = errors.New("blockvol: volume is fenced")
	// ErrStaleEpoch: an epoch lower than the persisted one was presented.
	ErrStaleEpoch = errors.New("blockvol: stale epoch")
	// ErrUnhealthy: an fsync or write failed earlier; the volume is
	// read-only until reopened.
	ErrUnhealthy = errors.New("blockvol: volume failed an I/O and is read-only")
	// ErrLSNGap: a replicated record does not continue the local log.
	ErrLSNGap = errors.New("blockvol: replicated record leaves an LSN gap")
	// ErrLSNConflict: a replicated record reuses a local LSN with a
	// different epoch.
	ErrLSNConflict = errors.New("blockvol: replicated record conflicts with local log")
	// ErrNotRetained: the requested LSN is no longer in the WAL.
	ErrNotRetained = errors.New("blockvol: LSN no longer retained in the WAL")
	// ErrHoldRevoked: a retention hold exceeded its budget (or blocked
	// writers) and was dropped; the holder needs a rebuild.
	ErrHoldRevoked = errors.New("blockvol: retention hold revoked")
	// ErrWrongRole: the operation needs another role (e.g. ApplyReplicated
	// on a primary).
	ErrWrongRole = errors.New("blockvol: operation not allowed in this role")

	// ErrSuperblockCorrupt: neither superblock copy is valid.
	ErrSuperblockCorrupt = errors.New("blockvol: both superblock copies are corrupt")
	// ErrTruncated: the file is shorter than its superblock says.
	ErrTruncated = errors.New("blockvol: volume file is truncated")
	// ErrUnsupportedVersion: the superblock has a format version this code
	// does not read. Returned wrapped in a *VersionError.
	ErrUnsupportedVersion = errors.New("blockvol: unsupported format version")
	// ErrBadRecord: a WAL record failed validation.
	ErrBadRecord = errors.New("blockvol: bad WAL record")
	// ErrBadSuperblock: a single superblock copy failed validation.
	ErrBadSuperblock = errors.New("blockvol: bad superblock")
)

// VersionError reports a superblock written by another format version.
type VersionError struct {
	Got, Want uint32
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("blockvol: superblock format version %d, this build reads %d", e.Got, e.Want)
}

// Unwrap lets errors.Is(err, ErrUnsupportedVersion) work.
func (e *VersionError) Unwrap() error { return ErrUnsupportedVersion }

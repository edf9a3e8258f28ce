package executor

import (
	"context"
	"errors"

	"github.com/weedblock/weedblock/engine"
)

// Errors the I/O returns so the executor can branch on them.
var (
	// ErrRetentionLost: WAL records the attempt needs are gone (the hold
	// was revoked or never possible). The attempt escalates to a rebuild.
	ErrRetentionLost = errors.New("executor: WAL retention lost")
	// ErrTruncationUnsafe: the replica's extent already holds effects
	// beyond the truncation point. The attempt escalates to a rebuild.
	ErrTruncationUnsafe = errors.New("executor: truncation unsafe")
	// ErrBaseUnavailable: the base the plan bound (source and LSN) can no
	// longer be pinned. The attempt escalates; the caller replans.
	ErrBaseUnavailable = errors.New("executor: bound base unavailable")
	// ErrBaseMismatch: the transferred base failed verification (size or
	// SHA-256 from the manifest).
	ErrBaseMismatch = errors.New("executor: base verification failed")
)

// Pin is something the attempt holds on the primary until Release. The
// executor calls Release exactly once per pin.
type Pin interface {
	Release() error
}

// WALPin holds WAL records readable on the primary. Revoked reports that
// the primary dropped the hold (out of WAL space); the records may be gone.
type WALPin interface {
	Pin
	Revoked() bool
}

// Progress is what one transfer call achieved.
type Progress struct {
	Achieved uint64 // highest LSN the replica now holds durably, in order
	Bytes    int64  // bytes moved by this call
}

// WALSource ships WAL records to the replica.
type WALSource interface {
	// PinWAL holds the primary's records (after, ∞) readable until the pin
	// is released; ErrRetentionLost when record after+1 is already gone.
	PinWAL(tok engine.Token, after uint64) (WALPin, error)
	// StreamWAL ships records (after, upTo] (idempotently: a record the
	// replica already holds is accepted again) and returns how far the
	// replica got, which may be short of upTo.
	StreamWAL(ctx context.Context, tok engine.Token, after, upTo uint64) (Progress, error)
}

// CatchUpIO is the I/O of a catch-up.
type CatchUpIO interface {
	WALSource
	// Frontier is the primary's committed LSN now (used when chasing).
	Frontier() uint64
}

// Base is a pinned base image for a rebuild.
type Base struct {
	Source engine.Source
	LSN    uint64 // every record ≤ LSN is in the image, none beyond
	Size   int64
	SHA256 [32]byte
	Pin    Pin
}

// RebuildIO is the I/O of a rebuild (full or snapshot, one contract).
type RebuildIO interface {
	WALSource
	// MarkUntrusted durably flags the replica as mid-rebuild.
	MarkUntrusted(tok engine.Token) error
	// PinBase pins the base: for engine.Snapshot exactly the snapshot at
	// lsn (ErrBaseUnavailable otherwise); for engine.Full the primary's
	// current extent, whose LSN is fixed by the pin.
	PinBase(tok engine.Token, src engine.Source, lsn uint64) (Base, error)
	// TransferBase sends up to max bytes of the base from offset and
	// returns how many it sent.
	TransferBase(ctx context.Context, tok engine.Token, b Base, offset, max int64) (int64, error)
	// VerifyBase checks the replica's copy against the manifest (size,
	// SHA-256); ErrBaseMismatch when it differs.
	VerifyBase(tok engine.Token, b Base) error
	// Commit makes the replica trusted at achieved (one fsynced update of
	// checkpoint/durable that also clears the untrusted flag).
	Commit(tok engine.Token, achieved uint64) error
}

// TruncateIO drops a replica's records beyond a point.
type TruncateIO interface {
	// Truncate drops the replica's records (to, ∞); ErrTruncationUnsafe
	// when its extent already holds effects beyond to.
	Truncate(tok engine.Token, to uint64) error
}

// IO bundles the I/O a plan may need; a plan whose I/O is nil aborts.
type IO struct {
	CatchUp  CatchUpIO
	Rebuild  RebuildIO
	Truncate TruncateIO
}

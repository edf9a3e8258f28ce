package v2bridge

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/engine"
	"github.com/weedblock/weedblock/executor"
)

// Snapshot rebuilds (engine.Snapshot): the base is the primary volume's
// blockvol base snapshot, an exact image at its LSN L with a SHA-256 in its
// manifest. PinBase opens exactly the snapshot the plan bound (L), checking
// its manifest; the executor holds the WAL after L; TransferBase reads the
// image instead of the live extent, over the same wire as a full base; the
// primary checks the bytes it read against the manifest's SHA-256 and the
// replica checks what it received against the base's digest (baseDigest).
// Unlike a full base the image is exact, so Commit has no fuzzy head to
// replay to.

// Errors of snapshot bases. Both wrap executor.ErrBaseUnavailable: the
// executor escalates (NeedsRebuild) and the caller replans.
var (
	// ErrSnapshotDrifted: the primary's snapshot is not the one the plan
	// bound (it was replaced or deleted after planning).
	ErrSnapshotDrifted = fmt.Errorf("v2bridge: base snapshot changed since planning: %w", executor.ErrBaseUnavailable)
	// ErrSnapshotUntrusted: the snapshot failed verification (manifest or
	// image) and is never shipped.
	ErrSnapshotUntrusted = fmt.Errorf("v2bridge: base snapshot untrusted: %w", executor.ErrBaseUnavailable)
)

// snapshotBase is the primary's base snapshot for a PrimaryView, nil when
// it has none.
func (p *Peer) snapshotBase() *engine.BaseSnapshot {
	info, ok := p.vol.Snapshot()
	if !ok {
		return nil
	}
	return &engine.BaseSnapshot{LSN: info.LSN, Trusted: info.Trusted}
}

// snapPin is a pinned snapshot base: the open, verified image. Release
// closes it and ends the transfer state like a full base's pin.
type snapPin struct {
	base *basePin
	r    *blockvol.SnapshotReader
	once sync.Once
}

func (s *snapPin) Release() error {
	var err error
	// The background stage of a transfer may still read the image.
	s.base.p.mu.Lock()
	s.base.p.waitAheadLocked()
	s.base.p.mu.Unlock()
	s.once.Do(func() { err = s.r.Close() })
	if rerr := s.base.Release(); err == nil {
		err = rerr
	}
	return err
}

// pinSnapshot pins exactly the snapshot at lsn: it opens the primary's
// snapshot (manifest and image size checked; the image's SHA-256 is checked
// as it is sent, by checkImageLocked before VerifyBase, which saves a read
// of the whole image) and fails closed when it is missing, untrusted or at
// another LSN.
func (p *Peer) pinSnapshot(lsn uint64) (executor.Base, error) {
	r, err := p.vol.OpenSnapshotStreaming()
	if err != nil {
		if errors.Is(err, blockvol.ErrNoSnapshot) {
			return executor.Base{}, fmt.Errorf("snapshot base at %d: %w (none now): %v", lsn, ErrSnapshotDrifted, err)
		}
		if errors.Is(err, blockvol.ErrSnapshotUntrusted) {
			return executor.Base{}, fmt.Errorf("snapshot base at %d: %w: %v", lsn, ErrSnapshotUntrusted, err)
		}
		return executor.Base{}, fmt.Errorf("v2bridge: snapshot base at %d: %w: %v", lsn, executor.ErrBaseUnavailable, err)
	}
	info := r.Info()
	if info.LSN != lsn {
		r.Close()
		return executor.Base{}, fmt.Errorf("snapshot base: planned at %d, the primary's is at %d: %w", lsn, info.LSN, ErrSnapshotDrifted)
	}
	if info.Size != p.vol.Size() {
		r.Close()
		return executor.Base{}, fmt.Errorf("snapshot base at %d: %d bytes for a %d byte volume: %w", lsn, info.Size, p.vol.Size(), ErrSnapshotUntrusted)
	}
	p.mu.Lock()
	// readHead 0: the image is exact, Commit replays nothing beyond.
	p.baseLSN, p.baseNext, p.readHead = lsn, 0, 0
	p.baseDig, p.imgSum = newBaseDigest(lsn, uint64(info.Size)), sha256.New()
	p.mu.Unlock()
	p.pins.Add(1)
	return executor.Base{
		Source: engine.Snapshot, LSN: lsn, Size: info.Size, SHA256: info.SHA256,
		Pin: &snapPin{base: &basePin{p: p}, r: r},
	}, nil
}

// readBase reads base bytes at off: from the pinned snapshot image for a
// snapshot base, from the live extent for a full one.
func (p *Peer) readBase(b executor.Base, buf []byte, off int64) error {
	if b.Source != engine.Snapshot {
		return p.vol.ReadAt(buf, off)
	}
	sp, ok := b.Pin.(*snapPin)
	if !ok || sp.r == nil {
		return fmt.Errorf("snapshot base %d is not pinned here: %w", b.LSN, executor.ErrBaseUnavailable)
	}
	n, err := sp.r.ReadAt(buf, off)
	if n != len(buf) {
		return fmt.Errorf("snapshot base %d: read %d of %d bytes at %d: %v", b.LSN, n, len(buf), off, err)
	}
	return nil
}

// checkImageLocked checks, for a snapshot base, that the image bytes sent
// (imgSum) hash to the manifest's SHA-256: an image changed under the pin
// is marked untrusted on the primary and executor.ErrBaseMismatch is
// returned (VerifyBase then sends nothing, so the replica never installs
// it). A full base has no digest before it is read: nil. Callers hold p.mu
// and waited for the background stage.
func (p *Peer) checkImageLocked(b executor.Base) error {
	if b.Source != engine.Snapshot {
		return nil
	}
	var sent [32]byte
	if p.imgSum == nil {
		return fmt.Errorf("v2bridge: snapshot base %d: no image digest: %w", b.LSN, executor.ErrBaseUnavailable)
	}
	p.imgSum.Sum(sent[:0])
	if sent != b.SHA256 {
		err := fmt.Errorf("image read hashes to %x, manifest %x", sent, b.SHA256)
		if sp, ok := b.Pin.(*snapPin); ok {
			p.vol.MarkSnapshotBad(sp.r.Info().Seq, err)
		}
		return fmt.Errorf("v2bridge: snapshot base %d: %w: %v", b.LSN, executor.ErrBaseMismatch, err)
	}
	return nil
}

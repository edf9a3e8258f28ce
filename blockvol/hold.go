package blockvol

import (
	"fmt"
	"sync"
)

// Hold keeps WAL records from an LSN on readable (for a lagging replica or
// a recovery pin). It is revoked when the WAL bytes it retains exceed its
// budget, or when it alone stops writers that wait for room: a dead
// replica never wedges the volume. The holder learns it from Revoked().
type Hold struct {
	v       *Volume
	lsn     uint64 // guarded by v.mu
	budget  int64
	revoked chan struct{}
	once    sync.Once
	err     error // set before revoked is closed
	done    bool  // released or revoked; guarded by v.mu
}

// Hold pins the WAL from fromLSN on. budget is the most WAL bytes it may
// retain beyond what the checkpoint needs (0: no byte limit; it is still
// revoked if it blocks writers). fromLSN must still be in the WAL and at
// most head+1.
func (v *Volume) Hold(fromLSN uint64, budget int64) (*Hold, error) {
	if err := v.enter(); err != nil {
		return nil, err
	}
	defer v.ops.Done()
	// flushMu: the flusher cannot be between choosing a tail and freeing
	// it while the hold is checked and registered.
	v.flushMu.Lock()
	defer v.flushMu.Unlock()
	v.mu.Lock()
	defer v.mu.Unlock()
	if fromLSN < v.tailLSN {
		return nil, fmt.Errorf("%s: hold from %d: %w (tail %d)", v.path, fromLSN, ErrNotRetained, v.tailLSN)
	}
	if fromLSN > v.head+1 {
		return nil, fmt.Errorf("%s: hold from %d beyond head %d", v.path, fromLSN, v.head)
	}
	h := &Hold{v: v, lsn: fromLSN, budget: budget, revoked: make(chan struct{})}
	v.holds[h] = struct{}{}
	return h, nil
}

// Revoked is closed when the volume drops the hold.
func (h *Hold) Revoked() <-chan struct{} { return h.revoked }

// Err says why the hold was revoked (nil while it is held).
func (h *Hold) Err() error {
	select {
	case <-h.revoked:
		return h.err
	default:
		return nil
	}
}

// LSN is the lowest LSN the hold keeps.
func (h *Hold) LSN() uint64 {
	h.v.mu.Lock()
	defer h.v.mu.Unlock()
	return h.lsn
}

// Advance lets go of records below lsn (a replica acknowledged them).
// It never moves the hold backwards.
func (h *Hold) Advance(lsn uint64) error {
	h.v.mu.Lock()
	defer h.v.mu.Unlock()
	if h.done {
		if err := h.Err(); err != nil {
			return err
		}
		return fmt.Errorf("%s: hold released", h.v.path)
	}
	if lsn > h.lsn {
		h.lsn = lsn
		// Wake the flusher only when WAL room is short (it also runs on
		// its timer): a replica's hold advances on every ack, and a
		// flusher round per advance costs fsyncs that writers' flushes
		// then queue behind.
		if v := h.v; v.waitRoom > 0 || v.writeAbs-v.tailAbs > v.walSize/2 {
			v.kickFlusher()
		}
	}
	return nil
}

// Release drops the hold. Idempotent; safe after revocation.
func (h *Hold) Release() {
	h.v.mu.Lock()
	defer h.v.mu.Unlock()
	if !h.done {
		h.done = true
		delete(h.v.holds, h)
		h.v.kickFlusher()
	}
}

func (v *Volume) revokeLocked(h *Hold, err error) {
	if h.done {
		return
	}
	h.done = true
	delete(v.holds, h)
	h.once.Do(func() {
		h.err = err
		close(h.revoked)
	})
	v.cond.Broadcast()
}

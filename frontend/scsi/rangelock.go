package scsi

import "sync"

// rangeLock serializes COMPARE AND WRITE against other writes to the same
// blocks without serializing unrelated I/O: ordinary writes take their
// range shared (they may overlap each other, as on any disk), COMPARE AND
// WRITE takes its range exclusively.
type rangeLock struct {
	mu   sync.Mutex
	cond *sync.Cond
	held map[uint64]lockedRange
	next uint64
}

type lockedRange struct {
	start, end uint64 // [start, end)
	excl       bool
}

func (l *rangeLock) init() {
	l.cond = sync.NewCond(&l.mu)
	l.held = make(map[uint64]lockedRange)
}

func (l *rangeLock) blocked(r lockedRange) bool {
	for _, h := range l.held {
		if h.start < r.end && r.start < h.end && (h.excl || r.excl) {
			return true
		}
	}
	return false
}

// lock takes [lba, lba+n) and returns the function that releases it.
func (l *rangeLock) lock(lba, n uint64, excl bool) (release func()) {
	r := lockedRange{start: lba, end: lba + n, excl: excl}
	l.mu.Lock()
	for l.blocked(r) {
		l.cond.Wait()
	}
	id := l.next
	l.next++
	l.held[id] = r
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		delete(l.held, id)
		l.mu.Unlock()
		l.cond.Broadcast()
	}
}

package nbd

import "sync"

// byteBudget bounds the payload bytes a connection holds in flight. The
// connection's reader acquires before it reads or allocates a payload;
// workers release once the reply is written.
type byteBudget struct {
	mu    sync.Mutex
	cond  sync.Cond
	avail int64
}

func newByteBudget(n int64) *byteBudget {
	b := &byteBudget{avail: n}
	b.cond.L = &b.mu
	return b
}

// acquire takes n bytes (n ≤ the budget's size), waiting while fewer are
// available. Only the connection's reader calls it; workers always finish
// and release, so the wait ends.
func (b *byteBudget) acquire(n int64) {
	b.mu.Lock()
	for b.avail < n {
		b.cond.Wait()
	}
	b.avail -= n
	b.mu.Unlock()
}

func (b *byteBudget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.avail += n
	b.mu.Unlock()
	b.cond.Broadcast()
}

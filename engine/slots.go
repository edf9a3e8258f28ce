package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Errors returned by Slots.
var (
	// ErrStaleToken: the token's attempt is no longer live (cancelled,
	// superseded or released). Every side effect carrying it must fail.
	ErrStaleToken = errors.New("engine: stale attempt token")
	// ErrBusy: a live attempt already exists for the replica at this epoch
	// and endpoint.
	ErrBusy = errors.New("engine: recovery attempt already live")
	// ErrStaleEpoch: the acquire names an epoch older than one already seen
	// for the replica.
	ErrStaleEpoch = errors.New("engine: epoch older than the replica's")
	// ErrCancelled is the cause of a token's context when Slots cancels it.
	ErrCancelled = errors.New("engine: attempt cancelled")
)

// ReplicaID names a replica by volume and server ID, never by an address.
type ReplicaID struct {
	Volume string
	Server string
}

func (id ReplicaID) String() string { return id.Volume + "@" + id.Server }

// Token identifies one attempt. Copies are equal; a token is live from
// Acquire until it is cancelled or released.
type Token struct {
	Replica  ReplicaID
	Epoch    uint64
	Endpoint string
	Attempt  uint64
	a        *attempt
}

// Context is done once the attempt is cancelled or released; its cause says
// why. The zero Token's context is already done.
func (t Token) Context() context.Context {
	if t.a == nil {
		ctx, cancel := context.WithCancelCause(context.Background())
		cancel(ErrStaleToken)
		return ctx
	}
	return t.a.ctx
}

func (t Token) String() string {
	return fmt.Sprintf("%s epoch %d attempt %d via %s", t.Replica, t.Epoch, t.Attempt, t.Endpoint)
}

type attempt struct {
	ctx      context.Context
	cancel   context.CancelCauseFunc
	live     bool // not cancelled, not released
	released bool
}

// Slots keeps at most one live recovery attempt per replica. Safe for
// concurrent use.
type Slots struct {
	mu     sync.Mutex
	live   map[ReplicaID]*attempt
	tokens map[ReplicaID]Token
	epochs map[ReplicaID]uint64
	next   uint64
}

// NewSlots returns empty slots.
func NewSlots() *Slots {
	return &Slots{live: map[ReplicaID]*attempt{}, tokens: map[ReplicaID]Token{}, epochs: map[ReplicaID]uint64{}}
}

// Acquire starts an attempt for id. A live attempt with the same epoch and
// endpoint makes it fail with ErrBusy; a newer epoch or another endpoint
// cancels the live attempt first (its context fires, its token goes stale).
// An epoch older than one seen for id fails with ErrStaleEpoch.
func (s *Slots) Acquire(id ReplicaID, epoch uint64, endpoint string) (Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seen := s.epochs[id]; epoch < seen {
		return Token{}, fmt.Errorf("acquire %s: %w (%d < %d)", id, ErrStaleEpoch, epoch, seen)
	}
	if a := s.live[id]; a != nil {
		old := s.tokens[id]
		if old.Epoch == epoch && old.Endpoint == endpoint {
			return Token{}, fmt.Errorf("acquire %s: %w (%s)", id, ErrBusy, old)
		}
		s.cancelLocked(id, fmt.Errorf("%w: superseded by epoch %d via %s", ErrCancelled, epoch, endpoint))
	}
	s.epochs[id] = epoch
	s.next++
	ctx, cancel := context.WithCancelCause(context.Background())
	a := &attempt{ctx: ctx, cancel: cancel, live: true}
	t := Token{Replica: id, Epoch: epoch, Endpoint: endpoint, Attempt: s.next, a: a}
	s.live[id], s.tokens[id] = a, t
	return t, nil
}

// Observe reports the replica's current epoch and endpoint (from the
// master). A live attempt with an older epoch or another endpoint is
// cancelled. It reports whether it cancelled one.
func (s *Slots) Observe(id ReplicaID, epoch uint64, endpoint string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if epoch > s.epochs[id] {
		s.epochs[id] = epoch
	}
	t, ok := s.tokens[id]
	if !ok || epoch < t.Epoch || (epoch == t.Epoch && t.Endpoint == endpoint) {
		return false
	}
	s.cancelLocked(id, fmt.Errorf("%w: replica now at epoch %d via %s", ErrCancelled, epoch, endpoint))
	return true
}

// Cancel cancels the live attempt of id, if any, with reason.
func (s *Slots) Cancel(id ReplicaID, reason string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.live[id] == nil {
		return false
	}
	s.cancelLocked(id, fmt.Errorf("%w: %s", ErrCancelled, reason))
	return true
}

func (s *Slots) cancelLocked(id ReplicaID, cause error) {
	a := s.live[id]
	a.live = false
	a.cancel(cause)
	delete(s.live, id)
	delete(s.tokens, id)
}

// Check returns nil while t is live, an error wrapping ErrStaleToken
// otherwise. Every side effect of an attempt calls it first.
func (s *Slots) Check(t Token) error {
	if t.a == nil {
		return fmt.Errorf("%w: zero token", ErrStaleToken)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !t.a.live {
		return fmt.Errorf("%s: %w: %v", t, ErrStaleToken, context.Cause(t.a.ctx))
	}
	return nil
}

// Release ends the attempt of t. It succeeds exactly once per token, also
// for a token already cancelled (its owner is done with it); later calls
// fail with ErrStaleToken.
func (s *Slots) Release(t Token) error {
	if t.a == nil {
		return fmt.Errorf("release: %w: zero token", ErrStaleToken)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if t.a.released {
		return fmt.Errorf("release %s: %w: already released", t, ErrStaleToken)
	}
	t.a.released = true
	if t.a.live {
		s.cancelLocked(t.Replica, fmt.Errorf("%w: released", ErrStaleToken))
	}
	return nil
}

// Live returns the live token for id, if any.
func (s *Slots) Live(id ReplicaID) (Token, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tokens[id]
	return t, ok
}

// Forget cancels id's live attempt, if any, and drops everything kept for
// id (the replica left the volume). Its epoch floor is forgotten too.
func (s *Slots) Forget(id ReplicaID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.live[id] != nil {
		s.cancelLocked(id, fmt.Errorf("%w: replica removed", ErrCancelled))
	}
	delete(s.epochs, id)
}

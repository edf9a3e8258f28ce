package engine

import (
	"fmt"
	"sync"
)

// Tracker keeps each replica's state for a primary. States change only
// through Begin (an attempt starts) and Finish (its outcome arrives), so
// they always derive from outcomes. Safe for concurrent use.
type Tracker struct {
	mu     sync.Mutex
	states map[ReplicaID]State
	last   map[ReplicaID]Outcome
}

// NewTracker returns a tracker where every replica is Unknown.
func NewTracker() *Tracker {
	return &Tracker{states: map[ReplicaID]State{}, last: map[ReplicaID]Outcome{}}
}

// Begin moves id to Recovering; it fails while an attempt is recorded as
// running.
func (t *Tracker) Begin(id ReplicaID) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, err := t.states[id].Start()
	if err != nil {
		return fmt.Errorf("replica %s: %w", id, err)
	}
	t.states[id] = s
	return nil
}

// Finish applies an attempt's outcome and returns the new state.
func (t *Tracker) Finish(id ReplicaID, o Outcome) (State, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, err := t.states[id].Finish(o)
	if err != nil {
		return s, fmt.Errorf("replica %s: %w", id, err)
	}
	t.states[id], t.last[id] = s, o
	return s, nil
}

// State is id's current state (Unknown if never seen).
func (t *Tracker) State(id ReplicaID) State {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.states[id]
}

// Last is id's most recent outcome, if any.
func (t *Tracker) Last(id ReplicaID) (Outcome, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	o, ok := t.last[id]
	return o, ok
}

// Forget drops id (the replica left the volume).
func (t *Tracker) Forget(id ReplicaID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.states, id)
	delete(t.last, id)
}

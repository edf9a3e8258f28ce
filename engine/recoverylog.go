package engine

import (
	"sync"
	"time"
)

// EventKind names a step in an attempt's life.
type EventKind string

// Event kinds, in the order an attempt usually records them.
const (
	EventPlanned   EventKind = "planned"   // a plan was chosen (Detail: the plan)
	EventPinned    EventKind = "pinned"    // a WAL hold or base was pinned (LSN: its position)
	EventStep      EventKind = "step"      // a batch was transferred (LSN: achieved, Bytes: total)
	EventEscalated EventKind = "escalated" // the attempt asks for a rebuild (Detail: why)
	EventReleased  EventKind = "released"  // a pin or the slot was released
	EventDone      EventKind = "done"      // the attempt ended (Detail: the outcome)
)

// Event is one entry of the recovery log.
type Event struct {
	Seq     uint64 // per log, increasing
	Time    time.Time
	Replica ReplicaID
	Epoch   uint64
	Attempt uint64
	Kind    EventKind
	LSN     uint64
	Bytes   int64
	Detail  string
}

// Log is an in-memory recovery log: the last PerReplica events of each
// replica, plus an optional sink that sees every event (for glog or
// metrics). Safe for concurrent use; the sink is called without the lock
// held, in Record's goroutine.
type Log struct {
	mu   sync.Mutex
	per  int
	now  func() time.Time
	sink func(Event)
	seq  uint64
	byID map[ReplicaID][]Event
}

// NewLog keeps perReplica events per replica (at least 1). now stamps
// events (nil leaves Time zero, for deterministic tests); sink may be nil.
func NewLog(perReplica int, now func() time.Time, sink func(Event)) *Log {
	if perReplica < 1 {
		perReplica = 1
	}
	return &Log{per: perReplica, now: now, sink: sink, byID: map[ReplicaID][]Event{}}
}

// Record appends e (Seq and, with a clock, Time are filled in).
func (l *Log) Record(e Event) {
	if l == nil {
		return
	}
	l.mu.Lock()
	l.seq++
	e.Seq = l.seq
	if l.now != nil {
		e.Time = l.now()
	}
	evs := l.byID[e.Replica]
	if len(evs) == l.per {
		copy(evs, evs[1:])
		evs = evs[:len(evs)-1]
	}
	l.byID[e.Replica] = append(evs, e)
	sink := l.sink
	l.mu.Unlock()
	if sink != nil {
		sink(e)
	}
}

// Events returns a copy of id's retained events, oldest first.
func (l *Log) Events(id ReplicaID) []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Event(nil), l.byID[id]...)
}

// Forget drops id's events (the replica left the volume).
func (l *Log) Forget(id ReplicaID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.byID, id)
}

package engine

import (
	"errors"
	"fmt"
)

// ErrTransition is returned when a state change is not allowed (an outcome
// without a running attempt, or a second attempt while one runs).
var ErrTransition = errors.New("engine: state transition not allowed")

// State is a replica's recovery state. It changes only when an attempt
// starts and when an attempt's outcome arrives.
type State int

// Replica states.
const (
	Unknown      State = iota // never recovered by this primary
	Recovering                // an attempt is running
	InSync                    // the last attempt reached its target
	NeedsRebuild              // the last attempt escalated: only a rebuild will do
	Aborted                   // the last attempt stopped (cancel, budget, error); replan
)

func (s State) String() string {
	switch s {
	case Unknown:
		return "unknown"
	case Recovering:
		return "recovering"
	case InSync:
		return "in-sync"
	case NeedsRebuild:
		return "needs-rebuild"
	case Aborted:
		return "aborted"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// OutcomeKind says how an attempt ended.
type OutcomeKind int

// Outcome kinds.
const (
	OutcomeInSync       OutcomeKind = iota + 1 // the replica holds (.., Achieved] and is trusted
	OutcomeNeedsRebuild                        // escalate: replan, which will rebuild
	OutcomeAborted                             // stopped; nothing wrong with the replica's data is implied
)

func (k OutcomeKind) String() string {
	switch k {
	case OutcomeInSync:
		return "in-sync"
	case OutcomeNeedsRebuild:
		return "needs-rebuild"
	case OutcomeAborted:
		return "aborted"
	}
	return fmt.Sprintf("outcome(%d)", int(k))
}

// Outcome is the result of one attempt.
type Outcome struct {
	Kind     OutcomeKind
	Achieved uint64 // highest LSN the replica is known to hold in order
	Reason   string
}

func (o Outcome) String() string {
	return fmt.Sprintf("%s at %d: %s", o.Kind, o.Achieved, o.Reason)
}

// InSyncAt is the outcome of an attempt that reached achieved.
func InSyncAt(achieved uint64) Outcome {
	return Outcome{Kind: OutcomeInSync, Achieved: achieved, Reason: "target reached"}
}

// NeedsRebuildBecause is the outcome of an escalated attempt.
func NeedsRebuildBecause(achieved uint64, reason string) Outcome {
	return Outcome{Kind: OutcomeNeedsRebuild, Achieved: achieved, Reason: reason}
}

// AbortedBecause is the outcome of a stopped attempt.
func AbortedBecause(achieved uint64, reason string) Outcome {
	return Outcome{Kind: OutcomeAborted, Achieved: achieved, Reason: reason}
}

// Start is the state once an attempt begins.
func (s State) Start() (State, error) {
	if s == Recovering {
		return s, fmt.Errorf("%w: attempt started while %s", ErrTransition, s)
	}
	return Recovering, nil
}

// Finish is the state an outcome leads to; only a running attempt has one.
func (s State) Finish(o Outcome) (State, error) {
	if s != Recovering {
		return s, fmt.Errorf("%w: outcome %s while %s", ErrTransition, o.Kind, s)
	}
	switch o.Kind {
	case OutcomeInSync:
		return InSync, nil
	case OutcomeNeedsRebuild:
		return NeedsRebuild, nil
	case OutcomeAborted:
		return Aborted, nil
	}
	return s, fmt.Errorf("%w: unknown outcome %d", ErrTransition, int(o.Kind))
}

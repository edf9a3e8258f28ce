package engine

import (
	"errors"
	"testing"
)

func TestTracker(t *testing.T) {
	tr := NewTracker()
	a, b := ReplicaID{"v", "a"}, ReplicaID{"v", "b"}
	if tr.State(a) != Unknown {
		t.Fatal("new replica not unknown")
	}
	if _, err := tr.Finish(a, InSyncAt(3)); !errors.Is(err, ErrTransition) {
		t.Fatalf("outcome without attempt: %v", err)
	}
	if err := tr.Begin(a); err != nil {
		t.Fatal(err)
	}
	if err := tr.Begin(a); !errors.Is(err, ErrTransition) {
		t.Fatalf("second begin: %v", err)
	}
	if err := tr.Begin(b); err != nil {
		t.Fatalf("other replica: %v", err)
	}
	if s, err := tr.Finish(a, NeedsRebuildBecause(2, "tail chasing")); err != nil || s != NeedsRebuild {
		t.Fatalf("finish: %v %v", s, err)
	}
	if o, ok := tr.Last(a); !ok || o.Reason != "tail chasing" {
		t.Fatalf("last %v %v", o, ok)
	}
	if tr.State(b) != Recovering {
		t.Fatalf("b state %v", tr.State(b))
	}
	if s, _ := tr.Finish(b, AbortedBecause(0, "cancelled")); s != Aborted {
		t.Fatalf("b %v", s)
	}
	tr.Forget(a)
	if _, ok := tr.Last(a); ok || tr.State(a) != Unknown {
		t.Fatal("forget kept state")
	}
}

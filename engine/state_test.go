package engine

import (
	"errors"
	"testing"
)

func TestStateMachine(t *testing.T) {
	all := []State{Unknown, Recovering, InSync, NeedsRebuild, Aborted}
	outcomes := map[OutcomeKind]State{OutcomeInSync: InSync, OutcomeNeedsRebuild: NeedsRebuild, OutcomeAborted: Aborted}
	for _, s := range all {
		got, err := s.Start()
		if s == Recovering {
			if !errors.Is(err, ErrTransition) || got != Recovering {
				t.Fatalf("start while recovering: %v, %v", got, err)
			}
		} else if err != nil || got != Recovering {
			t.Fatalf("start from %v: %v, %v", s, got, err)
		}
		for k, want := range outcomes {
			got, err := s.Finish(Outcome{Kind: k})
			if s != Recovering {
				if !errors.Is(err, ErrTransition) || got != s {
					t.Fatalf("%v finish %v: %v, %v (want refusal, state kept)", s, k, got, err)
				}
				continue
			}
			if err != nil || got != want {
				t.Fatalf("recovering finish %v: %v, %v, want %v", k, got, err, want)
			}
		}
	}
	if _, err := Recovering.Finish(Outcome{Kind: 99}); !errors.Is(err, ErrTransition) {
		t.Fatalf("unknown outcome accepted: %v", err)
	}
	// A full life: unknown → recovering → needs-rebuild → recovering → in-sync.
	s := Unknown
	for _, o := range []Outcome{NeedsRebuildBecause(5, "tail chasing"), InSyncAt(9)} {
		var err error
		if s, err = s.Start(); err != nil {
			t.Fatal(err)
		}
		if s, err = s.Finish(o); err != nil {
			t.Fatal(err)
		}
	}
	if s != InSync {
		t.Fatalf("final state %v", s)
	}
}

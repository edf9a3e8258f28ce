package engine

import (
	"errors"
	"strings"
	"testing"
)

func TestPlanRecovery(t *testing.T) {
	base := func(lsn uint64, trusted bool) *BaseSnapshot { return &BaseSnapshot{LSN: lsn, Trusted: trusted} }
	// Epoch 5, committed 100, head 110, WAL retained from 50.
	view := PrimaryView{Epoch: 5, Committed: 100, Head: 110, Tail: 50}
	with := func(f func(*PrimaryView)) PrimaryView { v := view; f(&v); return v }
	terms := with(func(v *PrimaryView) { v.Terms = []Term{{Epoch: 3, First: 1}, {Epoch: 5, First: 81}} })

	cases := []struct {
		name   string
		view   PrimaryView
		rep    ReplicaReport
		prior  State
		want   Plan   // Reason is checked by substring below
		reason string // substring of Reason
		err    error
	}{
		{name: "equal is zero gap", view: view, rep: ReplicaReport{Durable: 100, Checkpoint: 90, Epoch: 5},
			want: Plan{Kind: ZeroGap, From: 100, Target: 100}, reason: "equals committed"},
		{name: "equal after flush (checkpoint = committed)", view: view, rep: ReplicaReport{Durable: 100, Checkpoint: 100, Epoch: 5},
			want: Plan{Kind: ZeroGap, From: 100, Target: 100}},
		{name: "catch-up one behind", view: view, rep: ReplicaReport{Durable: 99, Checkpoint: 99, Epoch: 5},
			want: Plan{Kind: CatchUp, From: 99, Target: 100}},
		{name: "catch-up exactly at tail", view: view, rep: ReplicaReport{Durable: 49, Checkpoint: 40, Epoch: 5},
			want: Plan{Kind: CatchUp, From: 49, Target: 100}, reason: "retained from 50"},
		{name: "one below tail rebuilds (no base: full)", view: view, rep: ReplicaReport{Durable: 48, Epoch: 5},
			want: Plan{Kind: Rebuild, Source: Full, Target: 100}, reason: "record 49 no longer retained"},
		{name: "fresh replica, whole WAL retained", view: with(func(v *PrimaryView) { v.Tail = 1 }), rep: ReplicaReport{Epoch: 5},
			want: Plan{Kind: CatchUp, From: 0, Target: 100}},
		{name: "fresh replica, WAL recycled", view: view, rep: ReplicaReport{Epoch: 5},
			want: Plan{Kind: Rebuild, Source: Full, Target: 100}},
		{name: "ahead of committed, checkpoint below: truncate", view: view, rep: ReplicaReport{Durable: 105, Checkpoint: 95, Epoch: 5},
			want: Plan{Kind: Truncate, TruncateTo: 100, From: 100, Target: 100}, reason: "beyond committed"},
		{name: "ahead of committed, checkpoint exactly committed: truncate", view: view, rep: ReplicaReport{Durable: 105, Checkpoint: 100, Epoch: 5},
			want: Plan{Kind: Truncate, TruncateTo: 100, From: 100, Target: 100}},
		{name: "ahead of committed, checkpoint one beyond: rebuild", view: view, rep: ReplicaReport{Durable: 105, Checkpoint: 101, Epoch: 5},
			want: Plan{Kind: Rebuild, Source: Full, Target: 100}, reason: "truncation unsafe"},
		{name: "beyond head, checkpoint below committed: truncate", view: view, rep: ReplicaReport{Durable: 120, Checkpoint: 60, Epoch: 5},
			want: Plan{Kind: Truncate, TruncateTo: 100, From: 100, Target: 100}},
		{name: "beyond head, checkpoint beyond head: rebuild from snapshot", view: with(func(v *PrimaryView) { v.Base = base(70, true) }),
			rep:  ReplicaReport{Durable: 120, Checkpoint: 115, Epoch: 5},
			want: Plan{Kind: Rebuild, Source: Snapshot, BaseLSN: 70, From: 70, Target: 100}, reason: "snapshot 70"},
		{name: "untrusted replica rebuilds even at zero gap", view: view, rep: ReplicaReport{Durable: 100, Checkpoint: 100, Epoch: 5, Untrusted: true},
			want: Plan{Kind: Rebuild, Source: Full, Target: 100}, reason: "untrusted"},
		{name: "prior needs-rebuild forces rebuild", view: view, rep: ReplicaReport{Durable: 90, Checkpoint: 90, Epoch: 5}, prior: NeedsRebuild,
			want: Plan{Kind: Rebuild, Source: Full, Target: 100}, reason: "escalated"},
		{name: "prior aborted replans normally", view: view, rep: ReplicaReport{Durable: 90, Checkpoint: 90, Epoch: 5}, prior: Aborted,
			want: Plan{Kind: CatchUp, From: 90, Target: 100}},
		{name: "replica epoch newer refuses", view: view, rep: ReplicaReport{Durable: 100, Epoch: 6}, err: ErrReplicaEpochNewer},
		// base snapshot boundaries (replica below tail forces a rebuild)
		{name: "trusted base retained", view: with(func(v *PrimaryView) { v.Base = base(60, true) }), rep: ReplicaReport{Durable: 10, Epoch: 5},
			want: Plan{Kind: Rebuild, Source: Snapshot, BaseLSN: 60, From: 60, Target: 100}},
		{name: "trusted base exactly at tail-1", view: with(func(v *PrimaryView) { v.Base = base(49, true) }), rep: ReplicaReport{Durable: 10, Epoch: 5},
			want: Plan{Kind: Rebuild, Source: Snapshot, BaseLSN: 49, From: 49, Target: 100}},
		{name: "trusted base with unretained tail", view: with(func(v *PrimaryView) { v.Base = base(48, true) }), rep: ReplicaReport{Durable: 10, Epoch: 5},
			want: Plan{Kind: Rebuild, Source: Full, Target: 100}, reason: "wal from 49 not retained"},
		{name: "untrusted base", view: with(func(v *PrimaryView) { v.Base = base(60, false) }), rep: ReplicaReport{Durable: 10, Epoch: 5},
			want: Plan{Kind: Rebuild, Source: Full, Target: 100}, reason: "snapshot 60 untrusted"},
		{name: "base at committed", view: with(func(v *PrimaryView) { v.Base = base(100, true) }), rep: ReplicaReport{Durable: 10, Epoch: 5},
			want: Plan{Kind: Rebuild, Source: Snapshot, BaseLSN: 100, From: 100, Target: 100}},
		{name: "base beyond committed", view: with(func(v *PrimaryView) { v.Base = base(101, true) }), rep: ReplicaReport{Durable: 10, Epoch: 5},
			want: Plan{Kind: Rebuild, Source: Full, Target: 100}, reason: "beyond committed"},
		// empty WAL (everything flushed, nothing held)
		{name: "empty WAL, equal", view: PrimaryView{Epoch: 5, Committed: 100, Head: 100, Tail: 101}, rep: ReplicaReport{Durable: 100, Epoch: 5},
			want: Plan{Kind: ZeroGap, From: 100, Target: 100}},
		{name: "empty WAL, one behind", view: PrimaryView{Epoch: 5, Committed: 100, Head: 100, Tail: 101}, rep: ReplicaReport{Durable: 99, Epoch: 5},
			want: Plan{Kind: Rebuild, Source: Full, Target: 100}},
		// divergent history: epoch 3 wrote 1..80, epoch 5 from 81
		{name: "old-epoch records beyond the fork: truncate + catch-up", view: terms, rep: ReplicaReport{Durable: 85, Checkpoint: 70, Epoch: 3},
			want: Plan{Kind: Truncate, TruncateTo: 80, From: 80, Target: 100}, reason: "(80, 85] of epoch 3 diverge"},
		{name: "old-epoch records beyond the fork, checkpoint past fork: rebuild", view: terms, rep: ReplicaReport{Durable: 85, Checkpoint: 81, Epoch: 3},
			want: Plan{Kind: Rebuild, Source: Full, Target: 100}, reason: "truncation unsafe"},
		{name: "epoch between terms uses the earlier term", view: terms, rep: ReplicaReport{Durable: 85, Checkpoint: 80, Epoch: 4},
			want: Plan{Kind: Truncate, TruncateTo: 80, From: 80, Target: 100}},
		{name: "old-epoch replica before the fork catches up", view: terms, rep: ReplicaReport{Durable: 75, Checkpoint: 75, Epoch: 3},
			want: Plan{Kind: CatchUp, From: 75, Target: 100}},
		{name: "fork below tail: rebuild", view: with(func(v *PrimaryView) { v.Terms = terms.Terms; v.Tail = 90 }), rep: ReplicaReport{Durable: 85, Checkpoint: 70, Epoch: 3},
			want: Plan{Kind: Rebuild, Source: Full, Target: 100}, reason: "no longer retained"},
		{name: "no terms, older epoch: nothing trusted to match", view: with(func(v *PrimaryView) { v.Tail = 1 }), rep: ReplicaReport{Durable: 90, Checkpoint: 0, Epoch: 4},
			want: Plan{Kind: Truncate, TruncateTo: 0, From: 0, Target: 100}},
		// exact matching with the replica's own history (ReplicaReport.Terms)
		{name: "exact: same history, last record long checkpointed: catch-up", view: terms, rep: ReplicaReport{Durable: 90, Checkpoint: 90, Epoch: 5, Terms: []Term{{3, 1}, {5, 81}}},
			want: Plan{Kind: CatchUp, From: 90, Target: 100}},
		{name: "exact: replica history known only near its durable: enough", view: terms, rep: ReplicaReport{Durable: 90, Checkpoint: 90, Epoch: 5, Terms: []Term{{5, 60}}},
			want: Plan{Kind: CatchUp, From: 90, Target: 100}},
		{name: "exact: old-epoch records beyond the fork: truncate at the fork", view: terms, rep: ReplicaReport{Durable: 85, Checkpoint: 70, Epoch: 3, Terms: []Term{{3, 1}}},
			want: Plan{Kind: Truncate, TruncateTo: 80, From: 80, Target: 100}, reason: "(80, 85] of epoch 3 diverge"},
		{name: "exact: a deposed epoch the primary never had diverges where it began", view: terms, rep: ReplicaReport{Durable: 85, Checkpoint: 70, Epoch: 4, Terms: []Term{{3, 1}, {4, 78}}},
			want: Plan{Kind: Truncate, TruncateTo: 77, From: 77, Target: 100}, reason: "(77, 85] of epoch 4 diverge"},
		{name: "exact: same LSN, newer epoch on the replica: diverged", view: terms, rep: ReplicaReport{Durable: 79, Checkpoint: 60, Epoch: 4, Terms: []Term{{3, 1}, {4, 79}}},
			want: Plan{Kind: Truncate, TruncateTo: 78, From: 78, Target: 100}, reason: "diverge"},
		{name: "exact: diverged copy checkpointed past the fork: rebuild", view: terms, rep: ReplicaReport{Durable: 85, Checkpoint: 85, Epoch: 4, Terms: []Term{{3, 1}, {4, 78}}},
			want: Plan{Kind: Rebuild, Source: Full, Target: 100}, reason: "truncation unsafe"},
		{name: "exact: replica history unknown: rebuild, never kept", view: terms, rep: ReplicaReport{Durable: 90, Checkpoint: 90, Epoch: 5, Terms: []Term{}},
			want: Plan{Kind: Rebuild, Source: Full, Target: 100}, reason: "diverge"},
		{name: "exact: replica history unknown, nothing in its extent: truncate to 0", view: with(func(v *PrimaryView) { v.Terms = terms.Terms; v.Tail = 1 }), rep: ReplicaReport{Durable: 90, Epoch: 5, Terms: []Term{}},
			want: Plan{Kind: Truncate, TruncateTo: 0, From: 0, Target: 100}},
		{name: "exact: primary history unknown at the replica's durable: rebuild", view: with(func(v *PrimaryView) { v.Terms = []Term{{5, 95}} }), rep: ReplicaReport{Durable: 90, Checkpoint: 90, Epoch: 5, Terms: []Term{{5, 1}}},
			want: Plan{Kind: Rebuild, Source: Full, Target: 100}, reason: "diverge"},
		{name: "exact: no primary terms means all of its epoch", view: view, rep: ReplicaReport{Durable: 90, Checkpoint: 90, Epoch: 5, Terms: []Term{{5, 1}}},
			want: Plan{Kind: CatchUp, From: 90, Target: 100}},
		{name: "exact: replica beyond the primary's head matches up to it, kept to committed", view: view, rep: ReplicaReport{Durable: 120, Checkpoint: 100, Epoch: 5, Terms: []Term{{5, 1}}},
			want: Plan{Kind: Truncate, TruncateTo: 100, From: 100, Target: 100}, reason: "beyond committed"},
		{name: "exact: empty replica", view: with(func(v *PrimaryView) { v.Tail = 1 }), rep: ReplicaReport{Epoch: 5, Terms: []Term{}},
			want: Plan{Kind: CatchUp, From: 0, Target: 100}},
		{name: "exact: replica terms not ascending", view: view, rep: ReplicaReport{Durable: 90, Epoch: 5, Terms: []Term{{3, 10}, {5, 10}}}, err: ErrInvalidInput},
		{name: "exact: replica term at lsn 0", view: view, rep: ReplicaReport{Durable: 90, Epoch: 5, Terms: []Term{{5, 0}}}, err: ErrInvalidInput},
		// the primary vouches for its durable records beyond committed
		{name: "ahead of committed within primary durable: zero gap", view: with(func(v *PrimaryView) { v.Durable = 108 }), rep: ReplicaReport{Durable: 105, Checkpoint: 104, Epoch: 5},
			want: Plan{Kind: ZeroGap, From: 105, Target: 100}, reason: "own durable history"},
		{name: "ahead of committed exactly at primary durable: zero gap", view: with(func(v *PrimaryView) { v.Durable = 105 }), rep: ReplicaReport{Durable: 105, Checkpoint: 105, Epoch: 5},
			want: Plan{Kind: ZeroGap, From: 105, Target: 100}},
		{name: "one beyond primary durable: truncate to it", view: with(func(v *PrimaryView) { v.Durable = 105 }), rep: ReplicaReport{Durable: 106, Checkpoint: 105, Epoch: 5},
			want: Plan{Kind: Truncate, TruncateTo: 105, From: 105, Target: 100}, reason: "beyond the primary's durable 105"},
		{name: "one beyond primary durable, checkpoint too: rebuild", view: with(func(v *PrimaryView) { v.Durable = 105 }), rep: ReplicaReport{Durable: 106, Checkpoint: 106, Epoch: 5},
			want: Plan{Kind: Rebuild, Source: Full, Target: 100}, reason: "truncation unsafe"},
		{name: "primary durable does not vouch for another epoch", view: with(func(v *PrimaryView) { v.Durable = 110; v.Terms = terms.Terms }), rep: ReplicaReport{Durable: 85, Checkpoint: 70, Epoch: 3},
			want: Plan{Kind: Truncate, TruncateTo: 80, From: 80, Target: 100}, reason: "diverge"},
		{name: "primary durable equal to committed: spec rule", view: with(func(v *PrimaryView) { v.Durable = 100 }), rep: ReplicaReport{Durable: 101, Checkpoint: 100, Epoch: 5},
			want: Plan{Kind: Truncate, TruncateTo: 100, From: 100, Target: 100}},
		{name: "primary durable below committed", view: with(func(v *PrimaryView) { v.Durable = 99 }), rep: ReplicaReport{Epoch: 5}, err: ErrInvalidInput},
		{name: "primary durable beyond head", view: with(func(v *PrimaryView) { v.Durable = 111 }), rep: ReplicaReport{Epoch: 5}, err: ErrInvalidInput},
		// invalid input
		{name: "committed beyond head", view: PrimaryView{Epoch: 1, Committed: 11, Head: 10, Tail: 1}, rep: ReplicaReport{Epoch: 1}, err: ErrInvalidInput},
		{name: "tail zero", view: PrimaryView{Epoch: 1, Committed: 10, Head: 10}, rep: ReplicaReport{Epoch: 1}, err: ErrInvalidInput},
		{name: "tail beyond head+1", view: PrimaryView{Epoch: 1, Committed: 10, Head: 10, Tail: 12}, rep: ReplicaReport{Epoch: 1}, err: ErrInvalidInput},
		{name: "checkpoint beyond durable", view: view, rep: ReplicaReport{Durable: 10, Checkpoint: 11, Epoch: 5}, err: ErrInvalidInput},
		{name: "terms beyond epoch", view: with(func(v *PrimaryView) { v.Terms = []Term{{Epoch: 6, First: 1}} }), rep: ReplicaReport{Epoch: 5}, err: ErrInvalidInput},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PlanRecovery(tc.view, tc.rep, tc.prior)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err = %v, want %v (plan %v)", err, tc.err, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error %v", err)
			}
			if got.Reason == "" {
				t.Fatalf("plan %v has no reason", got)
			}
			if tc.reason != "" && !strings.Contains(got.Reason, tc.reason) {
				t.Fatalf("reason %q lacks %q", got.Reason, tc.reason)
			}
			want := tc.want
			want.Epoch, want.Reason = tc.view.Epoch, got.Reason
			if want.Kind == Rebuild && want.Source == Full {
				want.From = tc.view.Tail - 1
			}
			if got != want {
				t.Fatalf("plan\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

// TestPlanRecoveryCatchUpRange checks, for every replica position, that a
// catch-up is planned exactly when its first missing record is retained.
func TestPlanRecoveryCatchUpRange(t *testing.T) {
	v := PrimaryView{Epoch: 2, Committed: 40, Head: 45, Tail: 20}
	for d := uint64(0); d <= 50; d++ {
		p, err := PlanRecovery(v, ReplicaReport{Durable: d, Checkpoint: min(d, 30), Epoch: 2}, Unknown)
		if err != nil {
			t.Fatal(err)
		}
		var want Kind
		switch {
		case d > 40:
			want = Truncate
		case d == 40:
			want = ZeroGap
		case d+1 >= 20:
			want = CatchUp
		default:
			want = Rebuild
		}
		if p.Kind != want {
			t.Fatalf("durable %d: %v, want %v", d, p, want)
		}
		if p.Kind == CatchUp && (p.From != d || p.Target != 40) {
			t.Fatalf("durable %d: bad interval %v", d, p)
		}
	}
}

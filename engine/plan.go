package engine

import (
	"errors"
	"fmt"
)

// ErrReplicaEpochNewer is returned by Plan when the replica has seen an
// epoch newer than the primary's: this primary is stale and must not drive
// a recovery.
var ErrReplicaEpochNewer = errors.New("engine: replica epoch newer than primary's")

// ErrInvalidInput is returned by Plan when the view or the report is
// inconsistent (for example committed beyond head).
var ErrInvalidInput = errors.New("engine: invalid planner input")

// Term marks where an epoch's records begin in the primary's WAL history:
// records First, First+1, ... carry Epoch until the next Term's First.
type Term struct {
	Epoch uint64
	First uint64
}

// BaseSnapshot is a base image the primary can ship for a snapshot rebuild.
type BaseSnapshot struct {
	LSN     uint64 // every record ≤ LSN is in the image, none beyond
	Trusted bool   // false while the snapshot itself is incomplete or unverified
}

// PrimaryView is what the primary knows about its own history at planning
// time.
type PrimaryView struct {
	Epoch     uint64
	Committed uint64
	// Durable is the primary's own fsynced LSN (Committed ≤ Durable ≤
	// Head); its records up to Durable are never rewritten, so a replica
	// holding records of the same epochs up to there keeps them even when
	// they are beyond Committed. 0 means unknown: it counts as Committed,
	// and a replica's records beyond Committed are always dropped.
	Durable uint64
	Head    uint64
	// Tail is the lowest LSN still readable from the WAL; Head+1 when no
	// record is retained.
	Tail uint64
	// Terms lists, ascending by First, the LSN at which each epoch's
	// records begin. Empty means every record carries Epoch. Without
	// the replica's history (ReplicaReport.Terms nil), a replica's records
	// are taken to match the primary's up to the last LSN the primary
	// wrote under an epoch ≤ the replica's epoch. With it, LSNs below the
	// first Term's First have an unknown epoch (the history is bounded).
	Terms []Term
	// Base is the newest base snapshot, nil when there is none.
	Base *BaseSnapshot
}

// ReplicaReport is what a (re)joining replica says about itself.
type ReplicaReport struct {
	Durable    uint64 // highest LSN fsynced in its WAL
	Checkpoint uint64 // highest LSN whose effects are all in its extent
	// Epoch is the epoch of the replica's last durable record (the newest
	// epoch it has seen when it holds no record).
	Epoch uint64
	// Untrusted is set while a rebuild is in progress or was interrupted:
	// the extent is a mix and only a completed rebuild clears it.
	Untrusted bool
	// Terms, when not nil, is the replica's own term history, ascending
	// by First; the epochs of LSNs below the first Term's First are
	// unknown (an empty, non-nil history knows none). The planner then
	// matches the two histories exactly, by the log-matching rule (two
	// copies holding a record of the same LSN and epoch hold the same
	// records up to it): the replica agrees with the primary up to the
	// highest LSN ≤ its Durable at which both know the epoch and it is the
	// same; an unknown epoch never matches, so what cannot be proved equal
	// is truncated or rebuilt. Nil: only Epoch is known, and the older
	// rule of PrimaryView.Terms applies.
	Terms []Term
}

// Kind is what a plan does.
type Kind int

// Plan kinds.
const (
	ZeroGap  Kind = iota + 1 // nothing to do
	CatchUp                  // ship WAL records (From, Target]
	Truncate                 // drop the replica's records beyond TruncateTo, then catch up (From, Target]
	Rebuild                  // ship a base, then the WAL (base, Target]
)

func (k Kind) String() string {
	switch k {
	case ZeroGap:
		return "zero-gap"
	case CatchUp:
		return "catch-up"
	case Truncate:
		return "truncate"
	case Rebuild:
		return "rebuild"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Source is where a rebuild's base comes from.
type Source int

// Rebuild sources.
const (
	NoSource Source = iota
	Full            // the primary's current extent; its LSN is fixed when pinned
	Snapshot        // the base snapshot at Plan.BaseLSN, and no other
)

func (s Source) String() string {
	switch s {
	case NoSource:
		return "none"
	case Full:
		return "full"
	case Snapshot:
		return "snapshot"
	}
	return fmt.Sprintf("source(%d)", int(s))
}

// Plan is a recovery decision. Every field is bound at planning time; an
// executor uses these values or fails closed, never re-deriving others.
type Plan struct {
	Kind  Kind
	Epoch uint64 // the primary's epoch when planned
	// From is the replica's last LSN known to match the primary (after a
	// truncation: TruncateTo; for a snapshot rebuild: BaseLSN; for a full
	// rebuild: the primary's Tail-1, where the WAL hold starts).
	// Catch-up ships (From, Target]. A ZeroGap
	// (or a Truncate) may leave From beyond Target when the replica holds
	// the primary's own durable records beyond committed.
	From       uint64
	Target     uint64 // the primary's committed LSN when planned
	TruncateTo uint64 // Truncate only
	Source     Source // Rebuild only
	BaseLSN    uint64 // Rebuild from Snapshot only
	Reason     string
}

func (p Plan) String() string {
	switch p.Kind {
	case CatchUp:
		return fmt.Sprintf("catch-up (%d, %d]: %s", p.From, p.Target, p.Reason)
	case Truncate:
		return fmt.Sprintf("truncate to %d, catch-up (%d, %d]: %s", p.TruncateTo, p.From, p.Target, p.Reason)
	case Rebuild:
		if p.Source == Snapshot {
			return fmt.Sprintf("rebuild from snapshot %d, wal (%d, %d]: %s", p.BaseLSN, p.BaseLSN, p.Target, p.Reason)
		}
		return fmt.Sprintf("rebuild full to %d: %s", p.Target, p.Reason)
	}
	return fmt.Sprintf("%s at %d: %s", p.Kind, p.From, p.Reason)
}

// PlanRecovery decides how to bring a replica to the primary's committed
// LSN. prior is the replica's current state: NeedsRebuild forces a rebuild
// (a catch-up already failed to converge). The returned plan records why.
func PlanRecovery(v PrimaryView, r ReplicaReport, prior State) (Plan, error) {
	if err := v.validate(); err != nil {
		return Plan{}, err
	}
	if r.Checkpoint > r.Durable {
		return Plan{}, fmt.Errorf("%w: replica checkpoint %d beyond its durable %d", ErrInvalidInput, r.Checkpoint, r.Durable)
	}
	if r.Epoch > v.Epoch {
		return Plan{}, fmt.Errorf("%w: replica %d, primary %d", ErrReplicaEpochNewer, r.Epoch, v.Epoch)
	}
	for i, t := range r.Terms {
		if t.First == 0 || (i > 0 && t.First <= r.Terms[i-1].First) {
			return Plan{}, fmt.Errorf("%w: replica terms not ascending from lsn 1: %v", ErrInvalidInput, r.Terms)
		}
	}
	p := Plan{Epoch: v.Epoch, Target: v.Committed}
	if r.Untrusted {
		return v.rebuild(p, "replica untrusted (rebuild interrupted)"), nil
	}
	if prior == NeedsRebuild {
		return v.rebuild(p, "replica needs rebuild (earlier attempt escalated)"), nil
	}
	var agree uint64
	if r.Terms != nil {
		agree = v.agreeExact(r.Terms, r.Durable)
	} else {
		agree = min(r.Durable, v.lastOfEpoch(r.Epoch))
	}
	keep := min(agree, max(v.Committed, v.Durable))
	if r.Durable > keep {
		why := fmt.Sprintf("replica durable %d beyond committed %d", r.Durable, v.Committed)
		if v.Durable > v.Committed {
			why = fmt.Sprintf("replica durable %d beyond the primary's durable %d", r.Durable, v.Durable)
		}
		if agree < r.Durable && agree <= keep {
			why = fmt.Sprintf("replica records (%d, %d] of epoch %d diverge from the primary's", agree, r.Durable, r.Epoch)
		}
		if r.Checkpoint > keep {
			return v.rebuild(p, fmt.Sprintf("%s and its checkpoint %d is beyond %d: truncation unsafe", why, r.Checkpoint, keep)), nil
		}
		if keep < v.Committed && keep+1 < v.Tail {
			return v.rebuild(p, fmt.Sprintf("%s; after truncation to %d the records from %d are no longer retained (tail %d)", why, keep, keep+1, v.Tail)), nil
		}
		p.Kind, p.TruncateTo, p.From, p.Reason = Truncate, keep, keep, why
		return p, nil
	}
	if r.Durable == v.Committed {
		p.Kind, p.From, p.Reason = ZeroGap, r.Durable, "replica durable equals committed"
		return p, nil
	}
	if r.Durable > v.Committed {
		p.Kind, p.From = ZeroGap, r.Durable
		p.Reason = fmt.Sprintf("replica holds (%d, %d] of the primary's own durable history (epoch %d): nothing to ship or drop", v.Committed, r.Durable, r.Epoch)
		return p, nil
	}
	if r.Durable+1 < v.Tail {
		return v.rebuild(p, fmt.Sprintf("replica durable %d: record %d no longer retained (tail %d)", r.Durable, r.Durable+1, v.Tail)), nil
	}
	p.Kind, p.From = CatchUp, r.Durable
	p.Reason = fmt.Sprintf("replica durable %d behind committed %d, records retained from %d", r.Durable, v.Committed, v.Tail)
	return p, nil
}

func (v PrimaryView) validate() error {
	switch {
	case v.Committed > v.Head:
		return fmt.Errorf("%w: committed %d beyond head %d", ErrInvalidInput, v.Committed, v.Head)
	case v.Durable != 0 && (v.Durable < v.Committed || v.Durable > v.Head):
		return fmt.Errorf("%w: durable %d outside [committed %d, head %d]", ErrInvalidInput, v.Durable, v.Committed, v.Head)
	case v.Tail == 0:
		return fmt.Errorf("%w: tail 0 (LSNs are 1-based)", ErrInvalidInput)
	case v.Tail > v.Head+1:
		return fmt.Errorf("%w: tail %d beyond head+1 %d", ErrInvalidInput, v.Tail, v.Head+1)
	}
	for i, t := range v.Terms {
		if t.Epoch > v.Epoch || (i > 0 && (t.First < v.Terms[i-1].First || t.Epoch <= v.Terms[i-1].Epoch)) {
			return fmt.Errorf("%w: terms not ascending or beyond epoch %d: %v", ErrInvalidInput, v.Epoch, v.Terms)
		}
	}
	return nil
}

// agreeExact is the highest LSN ≤ min(d, Head) at which the primary's
// history and the replica's (rt) both know the epoch and it is the same,
// or 0. Matching LSNs form a prefix (log matching), so the walk goes down
// from the top, one run of equal epochs on both sides at a time, and
// stops at the first match or the first unknown.
func (v PrimaryView) agreeExact(rt []Term, d uint64) uint64 {
	x := min(d, v.Head)
	for x > 0 {
		pe, pf, pok := v.termAt(x)
		re, rf, rok := termIn(rt, x)
		if !pok || !rok {
			return 0
		}
		if pe == re {
			return x
		}
		x = max(pf, rf) - 1
	}
	return 0
}

// termAt is the primary's epoch at lsn x ≥ 1 and the first LSN of its run.
func (v PrimaryView) termAt(x uint64) (epoch, first uint64, ok bool) {
	if len(v.Terms) == 0 {
		return v.Epoch, 1, true
	}
	return termIn(v.Terms, x)
}

// termIn finds the term of ts (ascending by First) that holds lsn x.
func termIn(ts []Term, x uint64) (epoch, first uint64, ok bool) {
	for i := len(ts) - 1; i >= 0; i-- {
		if ts[i].First <= x {
			return ts[i].Epoch, ts[i].First, true
		}
	}
	return 0, 0, false
}

// lastOfEpoch is the highest LSN the primary wrote under an epoch ≤ e.
func (v PrimaryView) lastOfEpoch(e uint64) uint64 {
	if len(v.Terms) == 0 {
		if e >= v.Epoch {
			return v.Head
		}
		return 0
	}
	for _, t := range v.Terms {
		if t.Epoch > e {
			return t.First - 1
		}
	}
	return v.Head
}

// rebuild picks the source: a trusted base snapshot at or below committed
// whose WAL tail (LSN, committed] is still retained, otherwise a full base.
// A full base's From is Tail-1: the executor holds the WAL from there
// before pinning the base, whose LSN (the primary's checkpoint) can then
// be no lower, so the records after the base stay readable.
func (v PrimaryView) rebuild(p Plan, why string) Plan {
	p.Kind, p.Reason, p.From = Rebuild, why, v.Tail-1
	b := v.Base
	switch {
	case b == nil:
		p.Source, p.Reason = Full, why+"; full base (no snapshot)"
	case !b.Trusted:
		p.Source, p.Reason = Full, fmt.Sprintf("%s; full base (snapshot %d untrusted)", why, b.LSN)
	case b.LSN > v.Committed:
		p.Source, p.Reason = Full, fmt.Sprintf("%s; full base (snapshot %d beyond committed %d)", why, b.LSN, v.Committed)
	case b.LSN+1 < v.Tail:
		p.Source, p.Reason = Full, fmt.Sprintf("%s; full base (snapshot %d: wal from %d not retained, tail %d)", why, b.LSN, b.LSN+1, v.Tail)
	default:
		p.Source, p.BaseLSN, p.From = Snapshot, b.LSN, b.LSN
		p.Reason = fmt.Sprintf("%s; snapshot %d + wal (%d, %d]", why, b.LSN, b.LSN, v.Committed)
	}
	return p
}

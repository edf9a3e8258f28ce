package blockvol

import (
	"fmt"
	"sort"
)

// Term marks where one epoch's records begin: records First, First+1, ...
// carry Epoch until the next Term's First (the last Term runs to the head).
type Term struct {
	Epoch uint64
	First uint64
}

// MaxTerms bounds the term history a volume keeps (in memory and in the
// superblock). When a new epoch's first record would exceed it, the oldest
// term is dropped: the epochs of records below the oldest kept First are
// then unknown (TermAt answers ok=false), never guessed.
const MaxTerms = 48

// The term history (DESIGN §6; the Raft log-matching rule for recovery
// plans). A record's epoch is in its WAL header; the history keeps it
// after the flusher lets the record go:
//
//   - in memory, v.terms describes every record up to the head; a record
//     whose epoch differs from the last term's starts a new term
//     (appendLocked, for frontend writes and ApplyReplicated alike);
//   - on disk, the superblock holds the terms whose First is ≤ its
//     checkpoint, written in the same superblock update that moves the
//     checkpoint past them (flusher, TruncateWAL, recovery, InstallBase).
//     Records after the checkpoint carry their epoch in the WAL, which
//     recovery reads back. So a term is durable no later than its first
//     record, and after a crash the history is exactly that of the records
//     that survived: never an epoch for a record that was lost.
//
// Old (format version 1) superblocks open with an empty history; the
// records still in the WAL then give the terms from the tail on.

// addTerm appends (epoch, lsn) to terms when lsn starts a new epoch, keeping
// at most MaxTerms. It never changes the elements of terms in place (the
// persisted superblock may share them): dropping the oldest makes a copy.
func addTerm(terms []Term, epoch, lsn uint64) []Term {
	if n := len(terms); n > 0 && terms[n-1].Epoch == epoch {
		return terms
	}
	if len(terms) >= MaxTerms {
		terms = append(make([]Term, 0, MaxTerms), terms[len(terms)-MaxTerms+1:]...)
	}
	return append(terms, Term{Epoch: epoch, First: lsn})
}

// termsUpTo returns a copy of the terms whose First is ≤ lsn.
func termsUpTo(terms []Term, lsn uint64) []Term {
	n := sort.Search(len(terms), func(i int) bool { return terms[i].First > lsn })
	if n == 0 {
		return nil
	}
	return append([]Term(nil), terms[:n]...)
}

// termAt is the epoch of record lsn by terms, for lsn ≤ head; ok is false
// when lsn is 0, beyond head or below the oldest term.
func termAt(terms []Term, lsn, head uint64) (uint64, bool) {
	if lsn == 0 || lsn > head {
		return 0, false
	}
	n := sort.Search(len(terms), func(i int) bool { return terms[i].First > lsn })
	if n == 0 {
		return 0, false
	}
	return terms[n-1].Epoch, true
}

// checkTerms validates a history: at most MaxTerms, First ascending and
// ≥ 1, no two neighbours of the same epoch, and (limit > 0) First ≤ limit.
func checkTerms(terms []Term, limit uint64) error {
	if len(terms) > MaxTerms {
		return fmt.Errorf("%d terms, at most %d", len(terms), MaxTerms)
	}
	return checkTermOrder(terms, limit)
}

// checkTermOrder is checkTerms without the length bound.
func checkTermOrder(terms []Term, limit uint64) error {
	for i, t := range terms {
		switch {
		case t.First == 0:
			return fmt.Errorf("term %d: first lsn 0", i)
		case i > 0 && t.First <= terms[i-1].First:
			return fmt.Errorf("term %d: first lsn %d not above %d", i, t.First, terms[i-1].First)
		case i > 0 && t.Epoch == terms[i-1].Epoch:
			return fmt.Errorf("term %d: epoch %d repeated", i, t.Epoch)
		case t.First > limit:
			return fmt.Errorf("term %d: first lsn %d beyond %d", i, t.First, limit)
		}
	}
	return nil
}

// mergeTerms is the history after recovery: the persisted terms (which
// cover LSNs ≤ the checkpoint) below walFirst, then the terms of the
// recovered WAL records (LSN walFirst on, epochs in order). The WAL is
// authoritative where both speak.
func mergeTerms(persisted []Term, walFirst uint64, recEpochs func(yield func(epoch, lsn uint64))) []Term {
	var out []Term
	if walFirst > 0 {
		out = termsUpTo(persisted, walFirst-1)
	} else {
		out = append(out, persisted...)
	}
	if recEpochs != nil {
		recEpochs(func(epoch, lsn uint64) { out = addTerm(out, epoch, lsn) })
	}
	return out
}

// Terms returns the volume's term history, ascending by First: the epoch
// of every record from the oldest term's First up to the head. Records
// below it have an unknown epoch. The last term may describe records that
// are written but not yet durable.
func (v *Volume) Terms() []Term {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]Term(nil), v.terms...)
}

// TermAt returns the epoch of record lsn; ok is false when it is not known
// (lsn 0, beyond the head, or older than the history kept).
func (v *Volume) TermAt(lsn uint64) (epoch uint64, ok bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return termAt(v.terms, lsn, v.head)
}

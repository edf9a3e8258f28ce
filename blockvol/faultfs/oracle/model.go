package oracle

import (
	"fmt"
	"strings"
)

type histEntry struct {
	seq   uint64 // 0: zeros (trim, write-zeroes, never written)
	acked bool   // the call returned nil; otherwise its outcome is unknown
	clock uint64 // Model.clock when the call returned and was recorded
}

type Model struct {
	bs      int
	nblocks int
	seq     uint64 // last value handed out
	hist    [][]histEntry
	commit  []int  // index in hist of the committed value
	clock   uint64 // counts Record calls
	stats   Stats
}

// Stats counts what crashes did to blocks that had values beyond their
// committed one: a crash test that never loses (or never keeps) unflushed
// data is not testing much.
type Stats struct {
	// Checked is how many block reads after a crash were checked.
	Checked int
	// Lost: the block showed an older value than its newest acknowledged
	// one (allowed: it was not flushed).
	Lost int
	// Kept: the block had unflushed values and showed the newest.
	Kept int
}

func NewModel(bs, nblocks int) *Model {
	o := &Model{bs: bs, nblocks: nblocks, hist: make([][]histEntry, nblocks), commit: make([]int, nblocks)}
	for i := range o.hist {
		o.hist[i] = []histEntry{{seq: 0, acked: true}}
	}
	return o
}

// NextSeq hands out the value for a new write.
func (o *Model) NextSeq() uint64 {
	o.seq++
	return o.seq
}

// Record notes that blocks [lba, lba+n) were given value seq (0 = zeros) by
// a call that returned err; durable says the call's success means committed
// (FUA).
func (o *Model) Record(lba, n int, seq uint64, err error, durable bool) {
	o.clock++
	for b := lba; b < lba+n; b++ {
		o.hist[b] = append(o.hist[b], histEntry{seq: seq, acked: err == nil, clock: o.clock})
		if err == nil && durable {
			o.commit[b] = len(o.hist[b]) - 1
		}
	}
}

// Flushed notes a Flush that returned nil: every acknowledged value is
// committed.
func (o *Model) Flushed() {
	for b := range o.hist {
		o.commit[b] = o.lastAcked(b)
	}
}

func (o *Model) lastAcked(b int) int {
	h := o.hist[b]
	for i := len(h) - 1; i > o.commit[b]; i-- {
		if h[i].acked {
			return i
		}
	}
	return o.commit[b]
}

func (o *Model) Describe(b int) string {
	var sb strings.Builder
	for i, e := range o.hist[b] {
		if i > 0 {
			sb.WriteString(" ")
		}
		mark := ""
		if i == o.commit[b] {
			mark = "*"
		}
		if !e.acked {
			mark += "?"
		}
		fmt.Fprintf(&sb, "%s%d", mark, e.seq)
	}
	return sb.String()
}

// CheckLive checks a read of block b while the Device has not crashed since
// the values were written: the newest acknowledged value or a later one of
// unknown outcome. Seeing a later one pins it.
func (o *Model) CheckLive(b int, seq uint64) error {
	from := o.lastAcked(b)
	for i := from; i < len(o.hist[b]); i++ {
		if o.hist[b][i].seq == seq {
			return nil
		}
	}
	return fmt.Errorf("lba %d: read value %d, want newest acknowledged %d (history, *=committed ?=unknown: %s)",
		b, seq, o.hist[b][from].seq, o.Describe(b))
}

// CheckRecovered checks a read of block b right after a crash and reopen:
// the committed value or any later one. The value seen becomes the only
// allowed one.
func (o *Model) CheckRecovered(b int, seq uint64) error {
	o.stats.Checked++
	newest := o.lastAcked(b)
	for i := o.commit[b]; i < len(o.hist[b]); i++ {
		if o.hist[b][i].seq == seq {
			if i < newest {
				o.stats.Lost++
			} else if newest > o.commit[b] {
				o.stats.Kept++
			}
			o.hist[b] = []histEntry{{seq: seq, acked: true}}
			o.commit[b] = 0
			return nil
		}
	}
	return fmt.Errorf("lba %d after crash: read value %d, allowed are the committed value and later ones (history, *=committed ?=unknown: %s)",
		b, seq, o.Describe(b))
}

// Unsettled reports whether block b was given a value by a call that failed
// after its newest acknowledged value: what it holds is not known.
func (o *Model) Unsettled(b int) bool {
	h := o.hist[b]
	return !h[len(h)-1].acked
}

// Clock is the model's logical time: every call recorded so far returned
// before anything that starts after Clock is read.
func (o *Model) Clock() uint64 { return o.clock }

// FlushedAt notes a Flush that returned nil and was called when the model's
// Clock was c: every call acknowledged and recorded by then is committed,
// whoever made it (with concurrent writers, this checks that a Flush covers
// the other writers' acknowledged writes, not just its caller's).
func (o *Model) FlushedAt(c uint64) {
	for b := range o.hist {
		h := o.hist[b]
		for i := len(h) - 1; i > o.commit[b]; i-- {
			if h[i].acked && h[i].clock <= c {
				o.commit[b] = i
				break
			}
		}
	}
}

// Stats returns the crash statistics so far.
func (o *Model) Stats() Stats { return o.stats }

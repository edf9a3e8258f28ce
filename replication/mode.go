package replication

import "fmt"

// Mode is a volume's durability mode: which members must hold a write
// durably before a FLUSH (or FUA write) is acknowledged.
type Mode uint8

const (
	// ModeSync: the primary and every member of the current epoch.
	ModeSync Mode = 1
	// ModeQuorum: a majority of primary + members, the primary included
	// (it always flushes locally first). Needs RF ≥ 3.
	ModeQuorum Mode = 2
	// ModeAsync: the primary alone; replicas trail.
	ModeAsync Mode = 3
)

func (m Mode) String() string {
	switch m {
	case ModeSync:
		return "sync"
	case ModeQuorum:
		return "quorum"
	case ModeAsync:
		return "async"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// ParseMode reads "sync", "quorum" or "async".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "sync":
		return ModeSync, nil
	case "quorum":
		return ModeQuorum, nil
	case "async":
		return ModeAsync, nil
	}
	return 0, fmt.Errorf("replication: unknown durability mode %q (want sync, quorum or async)", s)
}

// committedLSN is the highest LSN durable on the set mode requires, given
// the primary's durable LSN and each member's.
func committedLSN(mode Mode, primary uint64, members []uint64) uint64 {
	switch mode {
	case ModeAsync:
		return primary
	case ModeQuorum:
		all := append([]uint64{primary}, members...)
		// Sort descending (tiny slices: insertion sort).
		for i := 1; i < len(all); i++ {
			for j := i; j > 0 && all[j] > all[j-1]; j-- {
				all[j], all[j-1] = all[j-1], all[j]
			}
		}
		need := len(all)/2 + 1
		c := all[need-1]
		if c > primary {
			c = primary
		}
		return c
	default:
		c := primary
		for _, d := range members {
			if d < c {
				c = d
			}
		}
		return c
	}
}

package replication

import (
	"fmt"

	"github.com/weedblock/weedblock/blockvol"
)

// The head-epoch check (log matching, DESIGN §6): at each hello the
// replica says the epoch of its record at its head (from its durable term
// history, so also for records its flusher let go). Epochs never decrease
// along a log and one epoch has one primary, so a replica whose head record
// carries another epoch than the primary's record at the same LSN holds
// records the primary never had: it is not streamed to (needs rebuild).
// Equal epochs are no proof on their own (a primary restarted in the same
// epoch may have lost and rewritten LSNs), so the takeover check still
// applies then, as it does when either side does not know the epoch.

// headEpochDiffers reports (with the reason) whether the primary's term
// history positively shows that its record at lsn has another epoch than
// replicaEpoch: its TermAt(lsn) is known and different, or lsn is older
// than its oldest kept term, whose epoch (an upper bound for every record
// before it) is below replicaEpoch. lsn must be ≤ the primary's head.
func headEpochDiffers(vol *blockvol.Volume, lsn, replicaEpoch uint64) (bool, string) {
	if lsn == 0 {
		return false, ""
	}
	if e, ok := vol.TermAt(lsn); ok {
		if e != replicaEpoch {
			return true, fmt.Sprintf("the replica's record %d is of epoch %d, the primary's of epoch %d", lsn, replicaEpoch, e)
		}
		return false, ""
	}
	ts := vol.Terms()
	if len(ts) > 0 && lsn < ts[0].First && ts[0].Epoch < replicaEpoch {
		return true, fmt.Sprintf("the replica's record %d is of epoch %d, the primary's records before %d are of epoch %d or older", lsn, replicaEpoch, ts[0].First, ts[0].Epoch)
	}
	return false, ""
}

// checkHead runs at each successful hello of member id, after the
// replica's head was found not beyond the primary's: the head-epoch check
// when the replica said its head epoch, then the takeover check.
func (p *Primary) checkHead(id string, cn *Conn) error {
	rh := cn.ReplicaHead()
	if re, ok := cn.ReplicaHeadEpoch(); ok {
		if differs, why := headEpochDiffers(p.vol, rh, re); differs {
			return fmt.Errorf("%w: diverged: %s", errNeedsRebuild, why)
		}
	}
	return p.checkTakeover(id, rh)
}

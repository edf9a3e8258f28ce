package replication

import (
	"testing"
	"time"
)

// TestNotifyWakesLingeringCursorOnlyForABatch checks the trigger rule of
// shipping coalescing: a cursor that is not lingering is woken by every
// append; a lingering one only once shipBatchBytes have gathered since
// its last pass.
func TestNotifyWakesLingeringCursorOnlyForABatch(t *testing.T) {
	r := &replica{wake: make(chan struct{}, 1)}
	p := &Primary{}
	l := []*replica{r}
	p.shipList.Store(&l)
	woken := func() bool {
		select {
		case <-r.wake:
			return true
		default:
			return false
		}
	}

	p.Notify(4096)
	if !woken() {
		t.Fatal("an append did not wake a cursor that is not lingering")
	}
	r.pending.Store(0)
	r.lingering.Store(true)
	for sent := 0; sent+4096 < shipBatchBytes; sent += 4096 {
		p.Notify(4096)
		if woken() {
			t.Fatalf("a lingering cursor was woken after %d bytes (batch %d)", sent+4096, shipBatchBytes)
		}
	}
	p.Notify(4096)
	if !woken() {
		t.Fatalf("a lingering cursor was not woken once %d bytes gathered", r.pending.Load())
	}
}

// TestLingeringShipsEveryRecord: small writes that never fill a batch and
// are never flushed still reach an async replica (the linger ends, or the
// idle tick ships), in order and complete.
func TestLingeringShipsEveryRecord(t *testing.T) {
	c := newCluster(t, clusterOpts{rf: 2, mode: ModeAsync})
	for i := 0; i < 40; i++ {
		p := make([]byte, 4096)
		p[0], p[1] = byte(i), 0xa5
		if err := c.dev.WriteAt(p, int64(i%16)*4096, false); err != nil {
			t.Fatal(err)
		}
		if i%7 == 0 {
			// A gap: the cursor goes idle and lingers on the next write.
			waitFor(t, 10*time.Second, "replica applied the writes so far", func() bool {
				return c.node("r1").vol.Status().Head >= c.pvol.Status().Head
			})
		}
	}
	c.waitCaughtUp(t, "r1")
	sameDevice(t, c.pvol, c.node("r1").vol, "r1")
}

package blockvolume

import (
	"context"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// newSnapCluster is newRecCluster (RF=2, vs1 primary, vs2 second copy)
// with both servers taking base snapshots every interval.
func newSnapCluster(t *testing.T, interval time.Duration) *recCluster {
	t.Helper()
	rc := &recCluster{t: t, f: startFakeMaster(t), rng: rand.New(rand.NewSource(2)), rf: 2}
	rc.f.setRespond(rc.respond)
	server := func(id string) func(*Options) {
		return func(o *Options) {
			withMasters(rc.f.addr)(o)
			o.ServerID = id
			o.ISCSIAddr = ""
			o.SnapshotInterval = interval
		}
	}
	rc.p = startManager(t, "", server("vs1"))
	rc.c = startManager(t, "", server("vs2"))
	return rc
}

// snaps is how many base snapshots m took of the volume with outcome.
func snaps(m *Manager, outcome string) float64 {
	return testutil.ToFloat64(m.metrics.snapTaken.WithLabelValues(recVol, outcome))
}

// primaryReport is the primary's VolumeReport of recVol.
func (rc *recCluster) primaryReport() *blockpb.VolumeReport {
	return rc.p.lookup(recVol).report(rc.p.ServerID(), 0)
}

// TestSnapshotLoopTakesSnapshots: with an interval, the primary of an RF=2
// volume takes base snapshots again and again; the report, /block/status
// and the metrics show the latest one; the other copy takes none.
func TestSnapshotLoopTakesSnapshots(t *testing.T) {
	rc := newSnapCluster(t, 100*time.Millisecond)
	rc.degrade(20, 8)
	eventually(t, 10*time.Second, "three snapshots taken", func() bool { return snaps(rc.p, snapTaken) >= 3 })
	r := rc.primaryReport()
	st := rc.p.lookup(recVol).vol.Status()
	if r.GetSnapshotLsn() == 0 || r.GetSnapshotLsn() > st.Checkpoint || !r.GetSnapshotTrusted() || !r.GetSnapshotBase() {
		t.Fatalf("primary's snapshot in its report: lsn %d trusted %v base %v (checkpoint %d)",
			r.GetSnapshotLsn(), r.GetSnapshotTrusted(), r.GetSnapshotBase(), st.Checkpoint)
	}
	if lsn := testutil.ToFloat64(rc.p.metrics.snapLSN.WithLabelValues(recVol)); lsn == 0 || uint64(lsn) > st.Checkpoint {
		t.Fatalf("snapshot lsn metric %v (checkpoint %d)", lsn, st.Checkpoint)
	}
	if n := snaps(rc.p, snapFailed); n != 0 {
		t.Fatalf("failed snapshots: %v", n)
	}
	doc := statusJSON(t, rc.p)
	if !strings.Contains(doc, `"snapshot_trusted": true`) || !strings.Contains(doc, `"snapshot_base": true`) {
		t.Fatalf("/block/status without the snapshot:\n%s", doc)
	}
	for _, f := range blockvol.SnapshotFiles(rc.p.lookup(recVol).vol.Path()) {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("snapshot file: %v", err)
		}
	}
	// The second copy is not primary: no snapshot there.
	if _, ok := rc.c.lookup(recVol).vol.Snapshot(); ok || snaps(rc.c, snapTaken) != 0 {
		t.Fatal("the non-primary copy has a snapshot")
	}
	// New writes: later snapshots follow the checkpoint.
	before := r.GetSnapshotLsn()
	rc.write(8)
	eventually(t, 10*time.Second, "a later snapshot", func() bool { return rc.primaryReport().GetSnapshotLsn() > before })
}

// TestSnapshotRebuildsCopyBehindWAL: a copy whose next record left the
// primary's WAL is rebuilt from the primary's base snapshot plus the WAL
// after it (the plan in VolumeReport.recoveries says so) and ends equal.
func TestSnapshotRebuildsCopyBehindWAL(t *testing.T) {
	rc := newSnapCluster(t, 200*time.Millisecond)
	rc.degrade(20, 400) // 400 writes of 8 KiB batches through a 1 MiB WAL
	pv := rc.p.lookup(recVol)
	eventually(t, 10*time.Second, "a snapshot at the last checkpoint that is a base", func() bool {
		info, base := pv.vol.SnapshotBase()
		return base && info.LSN == pv.vol.Status().Head
	})
	if d := rc.c.lookup(recVol).vol.Status().Durable; d+1 >= pv.vol.Status().Tail {
		t.Fatalf("the copy (durable %d) is not behind the primary's WAL (tail %d)", d, pv.vol.Status().Tail)
	}
	rc.setTargets(rc.target(2, false, 0))
	rec := rc.waitCaughtUp(2) // also: same data on both copies
	if rec.GetRebuilds() != 1 || !strings.Contains(rec.GetPlan(), "rebuild from snapshot") {
		t.Fatalf("copy behind the WAL recovered by %v", rec)
	}
	if n := testutil.ToFloat64(rc.p.metrics.recFinished.WithLabelValues("rebuild", "in-sync")); n != 1 {
		t.Fatalf("rebuilds finished in sync: %v", n)
	}
	// The rebuilt copy took no snapshot of its own, and follows.
	if _, ok := rc.c.lookup(recVol).vol.Snapshot(); ok {
		t.Fatal("the rebuilt copy has a snapshot")
	}
	rc.write(5)
	eventually(t, 10*time.Second, "live stream carries new writes", func() bool {
		return rc.c.lookup(recVol).vol.Status().Durable == pv.vol.Status().Durable
	})
	rc.sameData()
}

// TestSnapshotForNewCatchUpTarget: with a long interval, a primary whose
// snapshot stopped being a base (writes outgrew its WAL hold) takes a new
// one as soon as a copy to recover appears, not an interval later.
func TestSnapshotForNewCatchUpTarget(t *testing.T) {
	rc := newSnapCluster(t, time.Hour)
	rc.degrade(20, 8)
	pv := rc.p.lookup(recVol)
	eventually(t, 10*time.Second, "the first snapshot", func() bool { return snaps(rc.p, snapTaken) >= 1 })
	rc.write(400)
	if n := snaps(rc.p, snapTaken); n != 1 {
		t.Fatalf("snapshots before any target: %v (want the first one only)", n)
	}
	if _, base := pv.vol.SnapshotBase(); base {
		t.Fatal("the first snapshot is still a base after 400 writes through a 1 MiB WAL")
	}
	rc.setTargets(rc.target(2, false, 0))
	eventually(t, 10*time.Second, "a snapshot for the new target", func() bool { return snaps(rc.p, snapTaken) == 2 })
	rc.waitCaughtUp(2)
	if _, base := pv.vol.SnapshotBase(); !base {
		t.Fatal("the snapshot taken for the target is no base")
	}
	// The same target again is not new: no more snapshots.
	time.Sleep(snapPollMax + 200*time.Millisecond) // more than a pass
	if n := snaps(rc.p, snapTaken); n != 2 {
		t.Fatalf("snapshots with the same target: %v", n)
	}
}

// TestSnapshotDeletedWithVolume: deleting a volume removes its snapshot
// files and its snapshot metrics.
func TestSnapshotDeletedWithVolume(t *testing.T) {
	rc := newSnapCluster(t, 100*time.Millisecond)
	rc.degrade(10, 4)
	eventually(t, 10*time.Second, "a snapshot", func() bool { return snaps(rc.p, snapTaken) >= 1 })
	path := rc.p.lookup(recVol).vol.Path()
	rc.setConfig(nil)
	_, err := rc.p.GRPCService().DeleteVolume(context.Background(), &blockpb.DeleteLocalVolumeRequest{Name: recVol, Force: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range append([]string{path}, blockvol.SnapshotFiles(path)...) {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Fatalf("%s after delete: %v", f, err)
		}
	}
	// The loop keeps running without the volume and recreates nothing.
	time.Sleep(300 * time.Millisecond)
	for _, f := range blockvol.SnapshotFiles(path) {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Fatalf("%s reappeared: %v", f, err)
		}
	}
	if n := testutil.CollectAndCount(rc.p.metrics.snapLSN); n != 0 {
		t.Fatalf("snapshot lsn series after delete: %d", n)
	}
}

// TestSnapshotDroppedWhenDemoted: a primary that becomes a replica deletes
// its snapshot; the new primary takes its own.
func TestSnapshotDroppedWhenDemoted(t *testing.T) {
	rc := newSnapCluster(t, 100*time.Millisecond)
	cfg1 := rc.config(1, rc.p, rc.c)
	rc.allocate(rc.p, cfg1, false)
	rc.allocate(rc.c, cfg1, false)
	rc.setConfig(cfg1)
	rc.write(10)
	eventually(t, 10*time.Second, "a snapshot on vs1", func() bool { return snaps(rc.p, snapTaken) >= 1 })
	rc.setConfig(rc.config(2, rc.c, rc.p)) // vs2 primary, vs1 replica
	eventually(t, 10*time.Second, "vs1's snapshot deleted", func() bool {
		_, ok := rc.p.lookup(recVol).vol.Snapshot()
		return !ok
	})
	eventually(t, 10*time.Second, "a snapshot on vs2", func() bool {
		_, base := rc.c.lookup(recVol).vol.SnapshotBase()
		return base
	})
	if r := rc.p.lookup(recVol).report(rc.p.ServerID(), 0); r.GetSnapshotLsn() != 0 || r.GetSnapshotTrusted() {
		t.Fatalf("demoted copy reports a snapshot: %v", r)
	}
}

// TestSnapshotCloseStopsLoop: Close stops the loop (nothing is taken
// afterwards) and returns promptly; a restart with the interval 0 deletes
// the snapshot left behind.
func TestSnapshotCloseStopsLoop(t *testing.T) {
	rc := newSnapCluster(t, 50*time.Millisecond)
	rc.degrade(10, 4)
	eventually(t, 10*time.Second, "snapshots", func() bool { return snaps(rc.p, snapTaken) >= 2 })
	path := rc.p.lookup(recVol).vol.Path()
	done := make(chan error, 1)
	go func() { done <- rc.p.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close hangs with the snapshot loop running")
	}
	n := snaps(rc.p, snapTaken) + snaps(rc.p, snapFailed) + snaps(rc.p, snapAborted)
	time.Sleep(300 * time.Millisecond)
	if m := snaps(rc.p, snapTaken) + snaps(rc.p, snapFailed) + snaps(rc.p, snapAborted); m != n {
		t.Fatalf("snapshot attempts after Close: %v, then %v", n, m)
	}
	if n := snaps(rc.p, snapFailed); n != 0 {
		t.Fatalf("failed snapshots: %v", n)
	}

	// The snapshot survives the close; a restart with snapshots off
	// deletes it.
	vol, err := blockvol.Open(path, blockvol.Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, ok := vol.Snapshot()
	if err := vol.Close(); err != nil || !ok {
		t.Fatalf("after Close: snapshot %v, close %v", ok, err)
	}
	m := startManager(t, filepath.Dir(path), nil)
	if _, ok := m.lookup(recVol).vol.Snapshot(); ok {
		t.Fatal("snapshot kept at a start with snapshots off")
	}
	if _, err := New(Options{Dir: t.TempDir(), SnapshotInterval: -time.Second}); err == nil {
		t.Fatal("a negative snapshot interval is accepted")
	}
}

// TestSnapshotSkipsRF1: a primary of an RF=1 volume (no other copy to
// rebuild) takes no snapshot.
func TestSnapshotSkipsRF1(t *testing.T) {
	rc := newSnapCluster(t, 50*time.Millisecond)
	rc.rf = 1
	cfg := rc.config(1, rc.p)
	rc.allocate(rc.p, cfg, false)
	rc.setConfig(cfg)
	rc.write(5) // the primary serves
	time.Sleep(300 * time.Millisecond)
	if _, ok := rc.p.lookup(recVol).vol.Snapshot(); ok || snaps(rc.p, snapTaken)+snaps(rc.p, snapFailed) != 0 {
		t.Fatal("an RF=1 primary took a snapshot")
	}
}

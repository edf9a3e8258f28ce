package blockvolume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/golang/glog"

	"github.com/weedblock/weedblock/blockdev"
	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// Snapshot outcomes (label outcome of weedblock_volume_snapshots_total).
const (
	snapTaken   = "taken"
	snapFailed  = "failed"
	snapAborted = "aborted" // the volume closed, was deleted or is being rebuilt
)

// snapPollMax bounds how long the snapshot loop sleeps between passes: a
// pass also deletes the snapshots of volumes that stopped being primary
// and notices new catch-up targets.
const snapPollMax = time.Second

// snapshotter is the goroutine that keeps a base snapshot of every volume
// this server serves as primary (Options.SnapshotInterval): one pass every
// poll period, one volume at a time. It owns the maps below (only its
// goroutine touches them) and never takes Manager.opMu, so Close can wait
// for it while holding opMu.
type snapshotter struct {
	m        *Manager
	interval time.Duration
	poll     time.Duration
	// last: when the last attempt on each volume ended.
	last map[*volume]time.Time
	// failing: a failure of this volume was logged and no snapshot has
	// worked since (failures are logged once).
	failing map[*volume]bool
	// delFailing: the same for deleting a demoted volume's snapshot.
	delFailing map[*volume]bool
	// seen: the copies each volume was recovering at the last pass.
	seen map[*volume]map[string]bool
}

func newSnapshotter(m *Manager, interval time.Duration) *snapshotter {
	return &snapshotter{
		m: m, interval: interval, poll: min(interval, snapPollMax),
		last:       map[*volume]time.Time{},
		failing:    map[*volume]bool{},
		delFailing: map[*volume]bool{},
		seen:       map[*volume]map[string]bool{},
	}
}

// run makes passes until ctx ends.
func (s *snapshotter) run(ctx context.Context) {
	t := time.NewTicker(s.poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.pass(ctx)
	}
}

// pass visits every volume once and forgets volumes that are gone.
func (s *snapshotter) pass(ctx context.Context) {
	vols := s.m.snapshot()
	here := make(map[*volume]bool, len(vols))
	for _, v := range vols {
		if ctx.Err() != nil {
			return
		}
		here[v] = true
		s.visit(ctx, v)
	}
	for v := range s.last {
		if !here[v] {
			delete(s.last, v)
		}
	}
	for v := range s.seen {
		if !here[v] {
			delete(s.seen, v)
		}
	}
	for v := range s.failing {
		if !here[v] {
			delete(s.failing, v)
		}
	}
	for v := range s.delFailing {
		if !here[v] {
			delete(s.delFailing, v)
		}
	}
}

// visit deletes the snapshot of a volume whose stored config of its
// current epoch says this server is not its primary, and snapshots a
// serving primary when it is due: interval after its last attempt (or
// after its snapshot was taken, while that is still a rebuild base), and
// at once when a new catch-up target appears while it has no usable base.
func (s *snapshotter) visit(ctx context.Context, v *volume) {
	role, cfg, st := s.m.currentRole(v)
	if role != blockpb.Role_ROLE_PRIMARY {
		delete(s.seen, v)
		if cfg != nil && cfg.GetEpoch() == st.Epoch {
			s.dropDemoted(ctx, v)
		}
		return
	}
	// Serving: unfenced as primary within its lease, which only an
	// assignment of this epoch in this process grants (a confirmed
	// primary); healthy and trusted.
	if !writable(st, time.Now()) || st.Untrusted {
		return
	}
	if v.rfSeen.Load() == 1 {
		return // no other copy to rebuild from it
	}
	ids := v.recoveringIDs()
	fresh, running := false, false
	for id, r := range ids {
		if !s.seen[v][id] {
			fresh = true
		}
		running = running || r
	}
	s.seen[v] = make(map[string]bool, len(ids))
	for id := range ids {
		s.seen[v][id] = true
	}
	info, base := v.vol.SnapshotBase()
	ref := s.last[v]
	if base && info.Created.After(ref) {
		ref = info.Created
	}
	// While a recovery attempt runs, the base it may have planned with is
	// not replaced (it would find it gone, or still reading it, the slot
	// busy): the snapshot is taken once the attempt has ended.
	due := (ref.IsZero() || time.Since(ref) >= s.interval) && !running
	if fresh && !base {
		due = true
		glog.Infof("blockvolume: %s: a copy to recover and no snapshot to rebuild it from: taking one now", v.name)
	}
	if due {
		s.take(ctx, v)
	}
}

// take creates v's base snapshot and accounts for the outcome.
func (s *snapshotter) take(ctx context.Context, v *volume) {
	start := time.Now()
	info, err := v.vol.CreateSnapshot()
	s.last[v] = time.Now()
	mt := s.m.metrics
	switch {
	case err == nil:
		mt.snapTaken.WithLabelValues(v.name, snapTaken).Inc()
		mt.snapLSN.WithLabelValues(v.name).Set(float64(info.LSN))
		if s.failing[v] {
			delete(s.failing, v)
			glog.Infof("blockvolume: %s: base snapshot at lsn %d taken again (%v)", v.name, info.LSN, time.Since(start).Round(time.Millisecond))
		} else {
			glog.V(1).Infof("blockvolume: %s: base snapshot at lsn %d (%v)", v.name, info.LSN, time.Since(start).Round(time.Millisecond))
		}
	case s.quiet(ctx, v, err):
		mt.snapTaken.WithLabelValues(v.name, snapAborted).Inc()
		glog.V(1).Infof("blockvolume: %s: base snapshot: %v", v.name, err)
	default:
		mt.snapTaken.WithLabelValues(v.name, snapFailed).Inc()
		if !s.failing[v] {
			s.failing[v] = true
			glog.Warningf("blockvolume: %s: base snapshot failed (retried every %v, logged once): %v", v.name, s.interval, err)
		} else {
			glog.V(1).Infof("blockvolume: %s: base snapshot failed again: %v", v.name, err)
		}
	}
}

// quiet reports whether err only means the volume is going away or being
// rebuilt, or a rebuild still reads the image slot a new snapshot would
// overwrite (nothing to tell an operator; tried again an interval later).
func (s *snapshotter) quiet(ctx context.Context, v *volume, err error) bool {
	return ctx.Err() != nil || s.m.lookup(v.name) != v ||
		errors.Is(err, blockvol.ErrSnapshotAborted) || errors.Is(err, blockvol.ErrSnapshotBusy) ||
		errors.Is(err, blockdev.ErrClosed)
}

// dropDemoted deletes the snapshot of a volume this server is no longer
// primary of: it is only a rebuild base on a primary (a copy being
// rebuilt loses it anyway), and it costs up to the volume's size on disk.
func (s *snapshotter) dropDemoted(ctx context.Context, v *volume) {
	if _, ok := v.vol.Snapshot(); !ok {
		return
	}
	err := v.vol.DeleteSnapshot()
	switch {
	case err == nil:
		delete(s.delFailing, v)
		s.m.metrics.snapLSN.DeleteLabelValues(v.name)
		glog.Infof("blockvolume: %s: deleted the base snapshot (this server is no longer the primary)", v.name)
	case s.quiet(ctx, v, err):
	case !s.delFailing[v]:
		s.delFailing[v] = true
		glog.Warningf("blockvolume: %s: delete the base snapshot of a copy that is no longer primary: %v", v.name, err)
	}
}

// recoveringIDs lists the copies v is recovering now (live recoveries),
// each with whether an attempt is running.
func (v *volume) recoveringIDs() map[string]bool {
	v.replMu.Lock()
	recs := make(map[string]*recovery, len(v.recs))
	for id, rc := range v.recs {
		recs[id] = rc
	}
	v.replMu.Unlock()
	ids := make(map[string]bool, len(recs))
	for id, rc := range recs {
		rc.mu.Lock()
		ids[id] = rc.prog.running
		rc.mu.Unlock()
	}
	return ids
}

// dropSnapshotAtOpen deletes the snapshot of a volume just opened when
// snapshots are off (SnapshotInterval 0): turning them off gives their
// disk space back at the next start.
func (m *Manager) dropSnapshotAtOpen(v *volume) {
	if m.opts.SnapshotInterval > 0 {
		return
	}
	if _, ok := v.vol.Snapshot(); !ok {
		return
	}
	if err := v.vol.DeleteSnapshot(); err != nil {
		glog.Warningf("blockvolume: %s: delete the base snapshot (snapshots are off): %v", v.name, err)
		return
	}
	glog.Infof("blockvolume: %s: deleted its base snapshot (-block.snapshotInterval is 0)", v.name)
}

// removeFiles removes a volume file and its snapshot files (missing files
// are fine).
func removeFiles(path string) error {
	var errs []error
	for _, p := range append([]string{path}, blockvol.SnapshotFiles(path)...) {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// snapshotReport fills r's snapshot fields from vol.
func snapshotReport(r *blockpb.VolumeReport, vol *blockvol.Volume) {
	info, base := vol.SnapshotBase()
	r.SnapshotLsn, r.SnapshotTrusted, r.SnapshotBase = info.LSN, info.Trusted, base
}

// setRF records the replication factor of the latest spec (opMu).
func (v *volume) setRF(rf uint32) {
	v.rf = rf
	v.rfSeen.Store(rf)
}

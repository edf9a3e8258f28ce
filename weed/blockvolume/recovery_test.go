package blockvolume

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/weedblock/weedblock/engine"
	"github.com/weedblock/weedblock/executor"
	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

const (
	recVol  = "rv"
	recSize = 4 << 20
)

// recCluster is a fake master driving a primary (vs1) and a second copy
// (vs2) of volume recVol (RF=2) in process over loopback: it assigns the
// config it holds to both, lists the catch-up targets it holds to the
// primary and records ReportCaughtUp (it never changes the epoch itself).
type recCluster struct {
	t       *testing.T
	f       *fakeMaster
	p, c, d *Manager // d: a third copy (RF=3 clusters only)
	rf      uint32

	mu      sync.Mutex
	cfg     *blockpb.EpochConfig
	targets []*blockpb.CatchUpTarget
	rng     *rand.Rand
}

func newRecCluster(t *testing.T) *recCluster { return newRecClusterRF(t, 2) }

func newRecClusterRF(t *testing.T, rf uint32) *recCluster {
	t.Helper()
	rc := &recCluster{t: t, f: startFakeMaster(t), rng: rand.New(rand.NewSource(1)), rf: rf}
	rc.f.setRespond(rc.respond)
	server := func(id string) func(*Options) {
		return func(o *Options) {
			withMasters(rc.f.addr)(o)
			o.ServerID = id
			o.ISCSIAddr = ""
		}
	}
	rc.p = startManager(t, "", server("vs1"))
	rc.c = startManager(t, "", server("vs2"))
	if rf > 2 {
		rc.d = startManager(t, "", server("vs3"))
	}
	return rc
}

// recWAL is the volumes' WAL size: a single-block write takes an 8 KiB
// batch, the degraded primary's rejoin hold keeps half the WAL.
const recWAL = 1 << 20

// recoveryHolds counts v's WAL holds other than the rejoin hold, which the
// flusher may revoke at any time (over its budget) while a test runs.
func recoveryHolds(m *Manager, v *volume) int {
	held := func() int {
		m.opMu.Lock()
		h := v.rejoin
		m.opMu.Unlock()
		if h != nil && h.Err() == nil {
			return 1
		}
		return 0
	}
	for {
		before := held()
		n := v.vol.Status().Holds
		if held() == before {
			return n - before
		}
	}
}

func (rc *recCluster) spec() *blockpb.VolumeSpec {
	sp := spec(recVol, recSize)
	sp.ReplicationFactor = rc.rf
	sp.WalSizeBytes = recWAL
	return sp
}

func (rc *recCluster) respond(hb *blockpb.BlockHeartbeat) (*blockpb.BlockHeartbeatResponse, error) {
	resp := &blockpb.BlockHeartbeatResponse{HeartbeatSeq: hb.GetSeq(), LeaseMs: 2000}
	rc.mu.Lock()
	cfg, targets := rc.cfg, rc.targets
	rc.mu.Unlock()
	if cfg == nil {
		return resp, nil
	}
	id := hb.GetServer().GetServerId()
	role := roleIn(cfg, id)
	for _, r := range hb.GetVolumes() {
		if r.GetName() != recVol {
			continue
		}
		if r.GetEpoch() < cfg.GetEpoch() || (role != blockpb.Role_ROLE_NONE && r.GetRole() != role) ||
			(role == blockpb.Role_ROLE_PRIMARY && r.GetFenced()) {
			resp.Assignments = append(resp.Assignments, &blockpb.Assignment{Spec: rc.spec(), Config: cfg, Role: role})
		}
		if role == blockpb.Role_ROLE_PRIMARY && r.GetEpoch() == cfg.GetEpoch() {
			resp.CatchUp = targets
		}
	}
	return resp, nil
}

// config makes an epoch whose first manager is primary.
func (rc *recCluster) config(epoch uint64, ms ...*Manager) *blockpb.EpochConfig {
	cfg := &blockpb.EpochConfig{Epoch: epoch, PrimaryServerId: ms[0].ServerID(), Durability: blockpb.Durability_DURABILITY_SYNC}
	for i, m := range ms {
		role := blockpb.Role_ROLE_REPLICA
		if i == 0 {
			role = blockpb.Role_ROLE_PRIMARY
		}
		cfg.Members = append(cfg.Members, &blockpb.Member{Server: m.Endpoints(), Role: role})
	}
	return cfg
}

func (rc *recCluster) setConfig(cfg *blockpb.EpochConfig, targets ...*blockpb.CatchUpTarget) {
	rc.mu.Lock()
	rc.cfg, rc.targets = cfg, targets
	rc.mu.Unlock()
}

func (rc *recCluster) setTargets(targets ...*blockpb.CatchUpTarget) {
	rc.mu.Lock()
	rc.targets = targets
	rc.mu.Unlock()
}

// target names the second copy a catch-up target at epoch.
func (rc *recCluster) target(epoch uint64, rebuild bool, seq uint64) *blockpb.CatchUpTarget {
	return rc.targetOf(rc.c, epoch, rebuild, seq)
}

func (rc *recCluster) targetOf(m *Manager, epoch uint64, rebuild bool, seq uint64) *blockpb.CatchUpTarget {
	return &blockpb.CatchUpTarget{Name: recVol, Epoch: epoch, Server: m.Endpoints(), Rebuild: rebuild, RepairSeq: seq}
}

func (rc *recCluster) allocate(m *Manager, cfg *blockpb.EpochConfig, recoveryCopy bool) *blockpb.VolumeReport {
	rc.t.Helper()
	resp, err := m.GRPCService().AllocateVolume(context.Background(), &blockpb.AllocateVolumeRequest{Spec: rc.spec(), Config: cfg, RecoveryCopy: recoveryCopy})
	if err != nil {
		rc.t.Fatalf("allocate on %s: %v", m.ServerID(), err)
	}
	return resp.GetVolume()
}

// waitEpoch waits until m's copy is at epoch.
func (rc *recCluster) waitEpoch(m *Manager, epoch uint64) {
	rc.t.Helper()
	eventually(rc.t, 10*time.Second, "epoch reached", func() bool {
		v := m.lookup(recVol)
		return v != nil && v.vol.Status().Epoch == epoch
	})
}

// write writes n random 4 KiB blocks through the primary's frontend
// device (its replication when it has members), then flushes.
func (rc *recCluster) write(n int) {
	rc.t.Helper()
	dev := rc.p.lookup(recVol).dev
	p := make([]byte, 4096)
	eventually(rc.t, 10*time.Second, "primary writable", func() bool { return dev.WriteAt(p, 0, false) == nil })
	for i := 0; i < n; i++ {
		rc.rng.Read(p)
		if err := dev.WriteAt(p, rc.rng.Int63n(recSize/4096)*4096, false); err != nil {
			rc.t.Fatalf("write %d: %v", i, err)
		}
		if i%8 == 7 {
			// Members keep up (a small WAL fills fast).
			if err := dev.Flush(); err != nil {
				rc.t.Fatalf("flush: %v", err)
			}
		}
	}
	if err := dev.Flush(); err != nil {
		rc.t.Fatalf("flush: %v", err)
	}
}

// sameData compares both copies' whole devices.
func (rc *recCluster) sameData() { rc.t.Helper(); rc.sameDataOf(rc.c) }

func (rc *recCluster) sameDataOf(m *Manager) {
	rc.t.Helper()
	a := rc.p.lookup(recVol)
	b := m.lookup(recVol)
	pa, pb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); off < recSize; off += int64(len(pa)) {
		if err := a.vol.ReadAt(pa, off); err != nil {
			rc.t.Fatal(err)
		}
		if err := b.vol.ReadAt(pb, off); err != nil {
			rc.t.Fatal(err)
		}
		if !bytes.Equal(pa, pb) {
			for i := range pa {
				if pa[i] != pb[i] {
					rc.t.Fatalf("copies differ at byte %d", off+int64(i))
				}
			}
		}
	}
}

// recovery is the primary's report of its recovery of vs2 (nil: none).
func (rc *recCluster) recovery() *blockpb.RecoveryProgress { return rc.recoveryOf(rc.c) }

func (rc *recCluster) recoveryOf(m *Manager) *blockpb.RecoveryProgress {
	for _, r := range rc.p.lookup(recVol).report(rc.p.ServerID(), 0).GetRecoveries() {
		if r.GetServerId() == m.ServerID() {
			return r
		}
	}
	return nil
}

// waitCaughtUp waits until the primary reported vs2 caught up at epoch,
// then checks that both copies hold the same data.
func (rc *recCluster) waitCaughtUp(epoch uint64) *blockpb.RecoveryProgress {
	rc.t.Helper()
	return rc.waitCaughtUpOf(rc.c, epoch)
}

func (rc *recCluster) waitCaughtUpOf(m *Manager, epoch uint64) *blockpb.RecoveryProgress {
	rc.t.Helper()
	eventually(rc.t, 20*time.Second, m.ServerID()+" reported caught up", func() bool {
		return rc.f.caughtUp(recVol, m.ServerID(), epoch)
	})
	rec := rc.recoveryOf(m)
	if rec == nil || rec.GetPhase() != phaseFollow || rec.GetLastOutcome() != "in-sync" {
		rc.t.Fatalf("recovery of %s after catching up: %v", m.ServerID(), rec)
	}
	if st := m.lookup(recVol).vol.Status(); st.Untrusted {
		rc.t.Fatalf("caught-up copy %s still untrusted", m.ServerID())
	}
	rc.sameDataOf(m)
	return rec
}

// degrade sets up epoch 1 with both copies members, writes n1 blocks
// (replicated), then epoch 2 with the primary alone (as after
// RemoveMember), and writes n2 more that the second copy lacks.
func (rc *recCluster) degrade(n1, n2 int) {
	rc.t.Helper()
	cfg1 := rc.config(1, rc.p, rc.c)
	rc.allocate(rc.p, cfg1, false)
	rc.allocate(rc.c, cfg1, false)
	rc.setConfig(cfg1)
	rc.write(n1)
	rc.setConfig(rc.config(2, rc.p))
	rc.waitEpoch(rc.p, 2)
	rc.waitEpoch(rc.c, 2)
	rc.write(n2)
}

// TestRecoveryShortOutageCatchesUp: a copy that missed a few writes still
// in the primary's WAL is caught up (not rebuilt), follows the live
// stream, is reported caught up, and holds the primary's data.
func TestRecoveryShortOutageCatchesUp(t *testing.T) {
	rc := newRecCluster(t)
	rc.degrade(20, 8)
	rc.setTargets(rc.target(2, false, 0))
	rec := rc.waitCaughtUp(2)
	if rec.GetCatchUps() != 1 || rec.GetRebuilds() != 0 || !strings.HasPrefix(rec.GetPlan(), "catch-up") {
		t.Fatalf("short outage recovered by %v", rec)
	}
	mt := rc.p.metrics
	if n := testutil.ToFloat64(mt.recFinished.WithLabelValues("catch-up", "in-sync")); n != 1 {
		t.Fatalf("catch-ups finished in sync: %v", n)
	}
	if n := testutil.ToFloat64(mt.recStarted.WithLabelValues("rebuild")); n != 0 {
		t.Fatalf("rebuilds started: %v", n)
	}
	if n := testutil.ToFloat64(mt.recBytes.WithLabelValues("catch-up")); n < 8*4096 {
		t.Fatalf("catch-up bytes %v for 8 missed blocks", n)
	}
	if n := testutil.ToFloat64(mt.recActive); n != 0 {
		t.Fatalf("active recoveries after the catch-up: %v", n)
	}
	if n := testutil.CollectAndCount(mt.recDuration); n != 1 {
		t.Fatalf("duration series: %d", n)
	}
	// Writes after the hand-off reach the copy through the live stream.
	rc.write(5)
	eventually(t, 10*time.Second, "live stream carries new writes", func() bool {
		return rc.c.lookup(recVol).vol.Status().Durable == rc.p.lookup(recVol).vol.Status().Durable
	})
	rc.sameData()
}

// TestRecoveryBehindWALIsRebuilt: a copy whose next record left the
// primary's WAL (far more written than the WAL holds) is rebuilt, then
// follows the live stream and is reported caught up.
func TestRecoveryBehindWALIsRebuilt(t *testing.T) {
	rc := newRecCluster(t)
	rc.degrade(20, 400) // 400 writes of 8 KiB batches through a 1 MiB WAL
	rc.setTargets(rc.target(2, false, 0))
	rec := rc.waitCaughtUp(2)
	if rec.GetRebuilds() != 1 || !strings.Contains(rec.GetPlan(), "no longer retained") {
		t.Fatalf("copy behind the WAL recovered by %v", rec)
	}
	if n := testutil.ToFloat64(rc.p.metrics.recFinished.WithLabelValues("rebuild", "in-sync")); n != 1 {
		t.Fatalf("rebuilds finished in sync: %v", n)
	}
	if n := testutil.ToFloat64(rc.p.metrics.recBytes.WithLabelValues("rebuild")); n < recSize/2 {
		t.Fatalf("rebuild bytes %v", n)
	}
}

// TestRecoveryForcedRebuildAndRepairSeq: CatchUpTarget.rebuild forces a
// rebuild where a catch-up would do; a new repair_seq cancels and plans
// again (without rebuild: the cheapest plan; with: another rebuild).
func TestRecoveryForcedRebuildAndRepairSeq(t *testing.T) {
	rc := newRecCluster(t)
	rc.degrade(20, 8)
	rc.setTargets(rc.target(2, true, 1))
	rec := rc.waitCaughtUp(2)
	if rec.GetRebuilds() != 1 || rec.GetCatchUps() != 0 || !rec.GetForcedRebuild() || !strings.Contains(rec.GetPlan(), "operator asked") {
		t.Fatalf("forced rebuild: %v", rec)
	}
	first := rec.GetAttempt()
	rc.setTargets(rc.target(2, false, 2))
	eventually(t, 10*time.Second, "repair 2 planned again without a rebuild", func() bool {
		r := rc.recovery()
		return r.GetAttempt() > first && r.GetCatchUps() == 1 && r.GetPhase() == phaseFollow
	})
	if r := rc.recovery(); r.GetRebuilds() != 1 {
		t.Fatalf("repair without rebuild rebuilt: %v", r)
	}
	rc.setTargets(rc.target(2, true, 3))
	eventually(t, 10*time.Second, "repair 3 rebuilt again", func() bool {
		r := rc.recovery()
		return r.GetRebuilds() == 2 && r.GetPhase() == phaseFollow
	})
	rc.write(3)
	eventually(t, 10*time.Second, "copy follows after the second rebuild", func() bool {
		return rc.c.lookup(recVol).vol.Status().Durable == rc.p.lookup(recVol).vol.Status().Durable
	})
	rc.sameData()
}

// TestRecoveryCopyIsRebuilt: a copy allocated with recovery_copy (a lost
// copy coming back) is empty and untrusted, serves nothing, and is
// rebuilt by the primary to its data.
func TestRecoveryCopyIsRebuilt(t *testing.T) {
	rc := newRecCluster(t)
	cfg := rc.config(3, rc.p)
	rc.allocate(rc.p, cfg, false)
	rc.setConfig(cfg)
	rc.write(50)
	r := rc.allocate(rc.c, cfg, true)
	if !r.GetUntrusted() || r.GetRole() != blockpb.Role_ROLE_NONE {
		t.Fatalf("recovery copy: %v", r)
	}
	if err := rc.c.lookup(recVol).dev.ReadAt(make([]byte, 4096), 0); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("read from the untrusted copy: %v", err)
	}
	rc.setTargets(rc.target(3, false, 0))
	rec := rc.waitCaughtUp(3)
	if rec.GetRebuilds() != 1 || !strings.Contains(rec.GetPlan(), "untrusted") {
		t.Fatalf("recovery copy recovered by %v", rec)
	}
	if r := rc.c.lookup(recVol).report(rc.c.ServerID(), 0); r.GetUntrusted() || r.GetRecovery() != nil {
		t.Fatalf("rebuilt copy still reports a rebuild: %v", r)
	}
}

// TestRecoveryEpochChangeCancelsRebuild: a rebuild in progress shows its
// progress (VolumeReport.recoveries and /block/status on the primary, a
// rebuild phase on the untrusted copy); an epoch change stops it: the
// attempt is cancelled, its pins and slot released, its goroutine gone;
// the copy stays untrusted; a new rebuild at the new epoch completes.
func TestRecoveryEpochChangeCancelsRebuild(t *testing.T) {
	rc := newRecCluster(t)
	cfg := rc.config(2, rc.p)
	rc.allocate(rc.p, cfg, false)
	rc.setConfig(cfg)
	rc.write(200)
	rc.allocate(rc.c, cfg, true)
	pv := rc.p.lookup(recVol)
	holds := recoveryHolds(rc.p, pv)
	inTransfer := make(chan struct{})
	var once sync.Once
	hook := func(ctx context.Context, s executor.Step) error {
		if s.Phase == executor.PhaseTransfer && s.Batch >= 3 {
			once.Do(func() { close(inTransfer) })
			<-ctx.Done() // until the recovery is stopped
			return ctx.Err()
		}
		return nil
	}
	h := (func(context.Context, executor.Step) error)(hook)
	rc.p.stepHook.Store(&h)
	rc.setTargets(rc.target(2, false, 0))
	select {
	case <-inTransfer:
	case <-time.After(20 * time.Second):
		t.Fatal("rebuild never reached its transfer")
	}
	// Progress on the primary.
	rec := rc.recovery()
	if rec.GetPhase() != phaseRebuild || rec.GetBytesTotal() != recSize || rec.GetBytesDone() == 0 || rec.GetBytesDone() >= recSize ||
		rec.GetAttempt() == 0 || rec.GetStartedUnixMs() == 0 || !strings.HasPrefix(rec.GetPlan(), "rebuild") || rec.GetLastOutcome() != "" {
		t.Fatalf("progress during the rebuild: %v", rec)
	}
	if recoveryHolds(rc.p, pv) <= holds {
		t.Fatalf("no pins held during the rebuild")
	}
	doc := statusJSON(t, rc.p)
	if !strings.Contains(doc, `"recoveries"`) || !strings.Contains(doc, `"phase": "rebuild"`) || !strings.Contains(doc, `"server_id": "vs2"`) {
		t.Fatalf("/block/status during a rebuild:\n%s", doc)
	}
	// The copy describes itself.
	if r := rc.c.lookup(recVol).report(rc.c.ServerID(), 0); !r.GetUntrusted() || r.GetRecovery().GetPhase() != phaseRebuild {
		t.Fatalf("copy during its rebuild: %v", r)
	}
	pv.replMu.Lock()
	live := pv.recs["vs2"]
	pv.replMu.Unlock()
	if live == nil {
		t.Fatal("no live recovery")
	}

	// A new epoch (the target not listed in it yet) stops the attempt.
	rc.setConfig(rc.config(3, rc.p))
	select {
	case <-live.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the recovery goroutine did not end after the epoch change")
	}
	var busy bool
	var nowHolds int
	if !waitUntil(10*time.Second, func() bool {
		_, busy = rc.p.slots.Live(engine.ReplicaID{Volume: recVol, Server: "vs2"})
		nowHolds = recoveryHolds(rc.p, pv)
		return !busy && nowHolds == holds
	}) {
		t.Fatalf("after the stopped recovery: slot busy %v, %d holds (want %d)", busy, nowHolds, holds)
	}
	if r := rc.recovery(); r.GetPhase() != phaseDone {
		t.Fatalf("stopped recovery reported as %v", r)
	}
	if !rc.c.lookup(recVol).vol.Status().Untrusted {
		t.Fatal("a half-done rebuild left the copy trusted")
	}

	// At the new epoch a second rebuild completes.
	rc.p.stepHook.Store(nil)
	rc.waitEpoch(rc.c, 3)
	rc.setTargets(rc.target(3, false, 0))
	rec = rc.waitCaughtUp(3)
	if rec.GetRebuilds() != 1 {
		t.Fatalf("second rebuild: %v", rec)
	}
}

// statusJSON is GET /block/status from m.
func statusJSON(t *testing.T, m *Manager) string {
	t.Helper()
	w := httptest.NewRecorder()
	m.HTTPHandler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, StatusPath, nil))
	if w.Code != http.StatusOK {
		t.Fatalf("status: %d %s", w.Code, w.Body)
	}
	var doc StatusReport
	if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	return w.Body.String()
}

// TestRecoveryCloseWaits: closing the primary's Manager in the middle of a
// rebuild cancels it and waits for its goroutine; the copy stays
// untrusted.
func TestRecoveryCloseWaits(t *testing.T) {
	rc := newRecCluster(t)
	cfg := rc.config(2, rc.p)
	rc.allocate(rc.p, cfg, false)
	rc.setConfig(cfg)
	rc.write(100)
	rc.allocate(rc.c, cfg, true)
	inTransfer := make(chan struct{})
	var once sync.Once
	h := func(ctx context.Context, s executor.Step) error {
		if s.Phase == executor.PhaseTransfer && s.Batch >= 2 {
			once.Do(func() { close(inTransfer) })
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	}
	rc.p.stepHook.Store(&h)
	rc.setTargets(rc.target(2, false, 0))
	select {
	case <-inTransfer:
	case <-time.After(20 * time.Second):
		t.Fatal("rebuild never reached its transfer")
	}
	pv := rc.p.lookup(recVol)
	pv.replMu.Lock()
	live := pv.recs["vs2"]
	pv.replMu.Unlock()
	done := make(chan error, 1)
	go func() { done <- rc.p.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close hangs with a recovery in progress")
	}
	select {
	case <-live.done:
	default:
		t.Fatal("Close returned before the recovery goroutine ended")
	}
	if !rc.c.lookup(recVol).vol.Status().Untrusted {
		t.Fatal("an interrupted rebuild left the copy trusted")
	}
}

// TestRecoveryTwoCopiesAtOnce: RF=3, both other copies fall out of the
// epoch; the primary recovers them at the same time, one by a forced
// rebuild and one by a catch-up, while it keeps taking writes; both end
// with its data.
func TestRecoveryTwoCopiesAtOnce(t *testing.T) {
	rc := newRecClusterRF(t, 3)
	cfg1 := rc.config(1, rc.p, rc.c, rc.d)
	for _, m := range []*Manager{rc.p, rc.c, rc.d} {
		rc.allocate(m, cfg1, false)
	}
	rc.setConfig(cfg1)
	rc.write(30)
	rc.setConfig(rc.config(2, rc.p))
	for _, m := range []*Manager{rc.p, rc.c, rc.d} {
		rc.waitEpoch(m, 2)
	}
	rc.write(8)
	rc.setTargets(rc.targetOf(rc.c, 2, true, 1), rc.targetOf(rc.d, 2, false, 0))
	rc.write(6) // while they recover
	c := rc.waitCaughtUpOf(rc.c, 2)
	d := rc.waitCaughtUpOf(rc.d, 2)
	if c.GetRebuilds() != 1 || d.GetCatchUps() != 1 || d.GetRebuilds() != 0 {
		t.Fatalf("recoveries: %v / %v", c, d)
	}
	rc.write(5)
	for _, m := range []*Manager{rc.c, rc.d} {
		eventually(t, 10*time.Second, "live stream to "+m.ServerID(), func() bool {
			return m.lookup(recVol).vol.Status().Durable == rc.p.lookup(recVol).vol.Status().Durable
		})
		rc.sameDataOf(m)
	}
}

// TestStoppedPrimaryKeepsShippedCopies: the copies a Primary streamed to
// stay known as shipped to when it stops (an epoch change, a lost lease)
// before any heartbeat noted them, so that a recovery of one of them
// after the takeover is not taken for divergence (a needless rebuild).
func TestStoppedPrimaryKeepsShippedCopies(t *testing.T) {
	rc := newRecCluster(t)
	cfg1 := rc.config(1, rc.p, rc.c)
	rc.allocate(rc.p, cfg1, false)
	rc.allocate(rc.c, cfg1, false)
	rc.setConfig(cfg1)
	rc.write(20)
	m := rc.p
	m.opMu.Lock()
	defer m.opMu.Unlock()
	v := m.lookup(recVol)
	if !v.takeover || v.primary() == nil {
		t.Fatalf("primary: takeover %v, replication running %v", v.takeover, v.primary() != nil)
	}
	v.shipped = map[string]bool{} // as if no heartbeat came since the hello
	m.stopPrimaryLocked(v)
	if !v.shipped[rc.c.ServerID()] {
		t.Fatalf("after the stop, shipped to %v; want %s", v.shipped, rc.c.ServerID())
	}
}

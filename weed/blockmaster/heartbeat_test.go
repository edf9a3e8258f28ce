package blockmaster

import (
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

func primaryReport(name string, epoch uint64, fenced bool) *blockpb.VolumeReport {
	return &blockpb.VolumeReport{Name: name, Epoch: epoch, Role: blockpb.Role_ROLE_PRIMARY, Fenced: fenced, Healthy: true}
}

func TestAssignmentsResentUntilAcknowledged(t *testing.T) {
	h := newHarness(t, nil)
	_, hb := h.server("a", "r1", 100*gib)
	if _, err := h.create(spec("v", 1<<20, 1)); err != nil {
		t.Fatal(err)
	}
	check := func(what string, resp *blockpb.BlockHeartbeatResponse, want bool) {
		t.Helper()
		if !want {
			if len(resp.Assignments) != 0 {
				t.Fatalf("%s: unexpected assignments %v", what, resp.Assignments)
			}
			return
		}
		if len(resp.Assignments) != 1 {
			t.Fatalf("%s: %d assignments, want 1", what, len(resp.Assignments))
		}
		a := resp.Assignments[0]
		if a.Spec.Name != "v" || a.Config.Epoch != 1 || a.Role != blockpb.Role_ROLE_PRIMARY || a.Config.PrimaryServerId != "a" {
			t.Fatalf("%s: assignment %v", what, a)
		}
	}
	check("no report yet", hb.beat(), true)
	check("still no report", hb.beat(), true)
	check("allocated, fenced", hb.beat(primaryReport("v", 1, true)), true)
	resp := hb.beat(primaryReport("v", 1, false))
	check("serving epoch 1", resp, false)
	if resp.LeaseMs != 3000 {
		t.Fatalf("lease_ms %d, want 3000", resp.LeaseMs)
	}
	check("still serving", hb.beat(primaryReport("v", 1, false)), false)
	check("wrong role", hb.beat(&blockpb.VolumeReport{Name: "v", Epoch: 1, Role: blockpb.Role_ROLE_REPLICA}), true)
	check("restarted, fenced", hb.beat(primaryReport("v", 1, true)), true)
	check("serving again", hb.beat(primaryReport("v", 1, false)), false)
	info, err := h.lookup("v")
	if err != nil || info.State != StateOK || info.Reports[0].Epoch != 1 || !info.Alive[0] {
		t.Fatalf("lookup: %v %v", info, err)
	}
	if info.LeaseExpiresUnixMs == 0 {
		t.Fatal("no lease expiry in the volume info")
	}
	// An unhealthy primary is not re-assigned: that would not help.
	sick := primaryReport("v", 1, true)
	sick.Healthy = false
	sick.HealthMessage = "fsync failed"
	check("unhealthy, fenced", hb.beat(sick), false)
	if info, _ := h.lookup("v"); info.State != StateUnhealthy {
		t.Fatalf("unhealthy primary: state %q", info.State)
	}
}

func TestAssignmentsForReplicasAndNonMembers(t *testing.T) {
	h := newHarness(t, nil)
	_, hbA := h.server("a", "r1", 100*gib)
	_, hbB := h.server("b", "r2", 50*gib)
	_, hbC := h.server("c", "r3", 10*gib)
	if _, err := h.create(spec("v", 1<<20, 2)); err != nil {
		t.Fatal(err)
	}
	if r := hbA.beat(); len(r.Assignments) != 1 || r.Assignments[0].Role != blockpb.Role_ROLE_PRIMARY {
		t.Fatalf("a: %v", r.Assignments)
	}
	r := hbB.beat(&blockpb.VolumeReport{Name: "v", Epoch: 1, Role: blockpb.Role_ROLE_REPLICA, Fenced: true})
	if len(r.Assignments) != 0 {
		t.Fatalf("acknowledged replica re-assigned: %v", r.Assignments)
	}
	if r := hbB.beat(); len(r.Assignments) != 1 || r.Assignments[0].Role != blockpb.Role_ROLE_REPLICA {
		t.Fatalf("b without report: %v", r.Assignments)
	}
	// c holds a copy of this incarnation without being a member: fence it.
	r = hbC.beat(&blockpb.VolumeReport{Name: "v", Epoch: 1, Role: blockpb.Role_ROLE_PRIMARY})
	if len(r.Assignments) != 1 || r.Assignments[0].Role != blockpb.Role_ROLE_NONE || len(r.Deletes) != 0 {
		t.Fatalf("non-member: assignments %v deletes %v", r.Assignments, r.Deletes)
	}
	if r := hbC.beat(&blockpb.VolumeReport{Name: "v", Epoch: 1, Role: blockpb.Role_ROLE_NONE, Fenced: true}); len(r.Assignments) != 0 {
		t.Fatalf("fenced non-member re-assigned: %v", r.Assignments)
	}
	if r := hbC.beat(); len(r.Assignments) != 0 {
		t.Fatalf("non-member without a copy assigned: %v", r.Assignments)
	}
	// Leases renew only volumes a server is primary of.
	if got := h.m.LeaseExpiry("v"); got.IsZero() {
		t.Fatal("no lease recorded for the primary")
	}
}

// Deletes go out only for copies of volumes this registry deleted (at or
// below the tombstone's epoch); names it never had are orphans, left alone.
func TestDeletesOnlyDeletedVolumes(t *testing.T) {
	h := newHarness(t, nil)
	f, hb := h.server("a", "r1", 100*gib)
	resp := hb.beat(&blockpb.VolumeReport{Name: "ghost", Epoch: 4}, &blockpb.VolumeReport{Name: "other", Epoch: 1})
	if len(resp.Deletes) != 0 {
		t.Fatalf("never-known volumes deleted: %v", resp.Deletes)
	}
	if got, _ := metricValue(gather(t, h.m)["weedblock_master_orphan_volumes"], "", ""); got != 2 {
		t.Fatalf("orphans %v, want 2", got)
	}
	// Reports with names no volume can have are ignored.
	resp = hb.beat(&blockpb.VolumeReport{Name: ""}, &blockpb.VolumeReport{Name: "../etc"}, &blockpb.VolumeReport{Name: "ghost", Epoch: 4})
	if len(resp.Deletes) != 0 || len(resp.Assignments) != 0 {
		t.Fatalf("bad names: deletes %v assignments %v", resp.Deletes, resp.Assignments)
	}
	if got, _ := metricValue(gather(t, h.m)["weedblock_master_orphan_volumes"], "", ""); got != 1 {
		t.Fatalf("orphans %v, want 1", got)
	}
	if _, err := h.create(spec("gone", 1<<20, 1)); err != nil {
		t.Fatal(err)
	}
	if err := h.del("gone", true); err != nil {
		t.Fatal(err)
	}
	resp = hb.beat(&blockpb.VolumeReport{Name: "gone", Epoch: 1}, &blockpb.VolumeReport{Name: "ghost", Epoch: 4})
	if strings.Join(resp.Deletes, ",") != "gone" {
		t.Fatalf("deletes %v, want gone", resp.Deletes)
	}
	if got, _ := metricValue(gather(t, h.m)["weedblock_master_orphan_volumes"], "", ""); got != 1 {
		t.Fatalf("orphans %v, want 1", got)
	}
	// A copy newer than the deletion is not this registry's to delete.
	if resp = hb.beat(&blockpb.VolumeReport{Name: "gone", Epoch: 2}); len(resp.Deletes) != 0 {
		t.Fatalf("copy above the tombstone deleted: %v", resp.Deletes)
	}
	// The tombstone survives a restart.
	h.stop()
	h.start()
	hb = h.connect(f, "dc1", "r1", 100*gib)
	if resp = hb.beat(&blockpb.VolumeReport{Name: "gone", Epoch: 1}); strings.Join(resp.Deletes, ",") != "gone" {
		t.Fatalf("after restart: deletes %v, want gone", resp.Deletes)
	}
	// While a create is allocating, the new volume is known: never deleted.
	release := make(chan struct{})
	var once sync.Once
	f.onAlloc = func(*blockpb.AllocateVolumeRequest) { <-release }
	defer once.Do(func() { close(release) })
	errc := make(chan error, 1)
	go func() { _, err := h.create(spec("v", 1<<20, 1)); errc <- err }()
	eventually(t, "create pending", func() bool {
		h.m.mu.Lock()
		defer h.m.mu.Unlock()
		return h.m.pending["v"] != ""
	})
	resp = hb.beat(primaryReport("v", 1, true))
	if len(resp.Deletes) != 0 || len(resp.Assignments) != 0 {
		t.Fatalf("during create: deletes %v assignments %v", resp.Deletes, resp.Assignments)
	}
	once.Do(func() { close(release) })
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	resp = hb.beat(primaryReport("v", 1, false))
	if len(resp.Deletes) != 0 {
		t.Fatalf("known volume deleted: %v", resp.Deletes)
	}
}

func TestHeartbeatWithoutServerID(t *testing.T) {
	h := newHarness(t, nil)
	f := h.volume("a")
	hb := h.connect(f, "dc1", "r1", gib)
	hb.ep.ServerId = ""
	_, err := hb.tryBeat()
	wantCode(t, err, codes.InvalidArgument, "without server id")
}

// The lease arithmetic: the volume server counts from when it sent the
// heartbeat, the master from after it sent the answer, plus the margin. With
// a clock that moves on every reading, the master's view must end at least
// Margin after the volume server's, on every grant.
func TestLeaseMasterViewOutlastsVolumeView(t *testing.T) {
	h := newHarness(t, nil)
	h.clock.step = time.Millisecond
	_, hb := h.server("a", "r1", 100*gib)
	if _, err := h.create(spec("v", 1<<20, 1)); err != nil {
		t.Fatal(err)
	}
	var prev time.Time
	for i := 0; i < 30; i++ {
		resp := hb.beat(primaryReport("v", 1, false))
		volUntil := hb.leaseUntil(resp)
		masterUntil := h.m.LeaseExpiry("v")
		if masterUntil.Sub(volUntil) < h.opts.Margin {
			t.Fatalf("beat %d: master's lease view %v ends less than the margin %v after the primary's %v",
				i, masterUntil, h.opts.Margin, volUntil)
		}
		// And not absurdly later: it is this grant, not an old one.
		if d := masterUntil.Sub(volUntil); d > h.opts.Margin+time.Second {
			t.Fatalf("beat %d: master's view %v after the primary's", i, d)
		}
		if masterUntil.Before(prev) {
			t.Fatalf("beat %d: master's lease view went back from %v to %v", i, prev, masterUntil)
		}
		prev = masterUntil
		h.clock.Advance(h.opts.Pulse / 2)
	}
	// A lease the master no longer renews runs out in its view too.
	h.clock.Advance(h.opts.Lease + h.opts.Margin)
	if !h.clock.Now().After(h.m.LeaseExpiry("v")) {
		t.Fatal("lease view did not run out")
	}
}

func TestSilentStreamIsNotAlive(t *testing.T) {
	h := newHarness(t, nil)
	_, hb := h.server("a", "r1", 100*gib)
	if _, err := h.create(spec("v", 1<<20, 1)); err != nil {
		t.Fatal(err)
	}
	hb.beat(primaryReport("v", 1, false))
	if info, _ := h.lookup("v"); !info.Alive[0] || info.State != StateOK {
		t.Fatalf("before silence: alive=%v state=%s", info.Alive, info.State)
	}
	h.clock.Advance(silentPulses*h.opts.Pulse + time.Millisecond)
	info, err := h.lookup("v")
	if err != nil || info.Alive[0] || info.State != StateUnavailable {
		t.Fatalf("after silence: alive=%v state=%s err=%v", info.GetAlive(), info.GetState(), err)
	}
	// Placement ignores it.
	_, err = h.create(spec("w", 1<<20, 1))
	wantCode(t, err, codes.FailedPrecondition, "0 alive")
	// And the master ends the silent stream.
	_, err = hb.stream.Recv()
	wantCode(t, err, codes.Unavailable, "no heartbeat for")
}

func TestStreamEndIsNotAlive(t *testing.T) {
	h := newHarness(t, nil)
	f, hb := h.server("a", "r1", 100*gib)
	if _, err := h.create(spec("v", 1<<20, 1)); err != nil {
		t.Fatal(err)
	}
	hb2 := h.connect(f, "dc1", "r1", 100*gib) // a reconnect takes over
	hb2.beat(primaryReport("v", 1, false))
	hb.close() // the old stream ending must not mark it dead
	if _, err := hb.stream.Recv(); err == nil {
		t.Fatal("old stream still open")
	}
	time.Sleep(50 * time.Millisecond)
	if info, _ := h.lookup("v"); !info.Alive[0] {
		t.Fatal("old stream's end marked the server dead")
	}
	hb2.close()
	eventually(t, "server not alive", func() bool {
		info, err := h.lookup("v")
		return err == nil && !info.Alive[0] && info.State == StateUnavailable
	})
}

func TestServerLeftAndJoined(t *testing.T) {
	h := newHarness(t, nil)
	_, hb := h.server("a", "r1", 100*gib)
	if _, err := h.create(spec("v", 1<<20, 1)); err != nil {
		t.Fatal(err)
	}
	hb.beat(primaryReport("v", 1, false))
	h.m.ServerLeft("a")
	if info, _ := h.lookup("v"); info.Alive[0] {
		t.Fatal("alive after ServerLeft")
	}
	_, err := h.create(spec("w", 1<<20, 1))
	wantCode(t, err, codes.FailedPrecondition)
	h.m.ServerJoined("a")
	if info, _ := h.lookup("v"); !info.Alive[0] || info.State != StateOK {
		t.Fatal("not alive after ServerJoined")
	}
}

type fakeTopology struct {
	mu      sync.Mutex
	servers []TopologyServer
}

func (f *fakeTopology) Servers() []TopologyServer {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]TopologyServer(nil), f.servers...)
}

func TestPlacementUsesTopology(t *testing.T) {
	topo := &fakeTopology{servers: []TopologyServer{
		{ID: "a", DataCenter: "dc1", Rack: "r1", FreeBytes: 10 * gib, Alive: true},
		{ID: "b", DataCenter: "dc1", Rack: "r2", FreeBytes: 500 * gib, Alive: true},
		{ID: "c", DataCenter: "dc1", Rack: "r3", FreeBytes: 900 * gib, Alive: false},
	}}
	h := newHarness(t, func(o *Options) { o.Topology = topo })
	// Block heartbeats with no rack and no free bytes: the topology fills in.
	for _, id := range []string{"a", "b", "c", "d"} {
		f := h.volume(id)
		hb := h.connect(f, "", "", 0)
		hb.beat()
	}
	info, err := h.create(spec("v", 1<<20, 1))
	if err != nil {
		t.Fatal(err)
	}
	if p := info.Config.PrimaryServerId; p != "b" {
		t.Fatalf("placed on %s, want b (c is dead upstream, d unknown upstream)", p)
	}
	if _, err := h.create(spec("w", 1<<20, 3)); err == nil {
		t.Fatal("rf=3 placed with two usable servers")
	} else {
		wantCode(t, err, codes.FailedPrecondition, "2 alive (a, b)")
	}
	_, err = h.create(spec("x", 20*gib, 2))
	wantCode(t, err, codes.ResourceExhausted, "1 of 2 alive servers have it (b)")
}

// While a delete is in flight the volume is neither assigned nor deleted
// through the heartbeat, and its primary's lease is still accounted for.
func TestHeartbeatDuringDelete(t *testing.T) {
	h := newHarness(t, nil)
	h.clock.step = time.Millisecond
	f, hb := h.server("a", "r1", 100*gib)
	if _, err := h.create(spec("v", 1<<20, 1)); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	f.onDelete = func(*blockpb.DeleteLocalVolumeRequest) { <-release }
	errc := make(chan error, 1)
	go func() { errc <- h.del("v", false) }()
	eventually(t, "delete pending", func() bool {
		h.m.mu.Lock()
		defer h.m.mu.Unlock()
		return h.m.pending["v"] == stateDeleting
	})
	if info, err := h.lookup("v"); err != nil || info.State != StateDeleting {
		t.Fatalf("lookup during delete: %v %v", info.GetState(), err)
	}
	before := h.m.LeaseExpiry("v")
	resp := hb.beat() // no report: would normally be re-assigned
	if len(resp.Assignments) != 0 || len(resp.Deletes) != 0 {
		t.Fatalf("during delete: assignments %v deletes %v", resp.Assignments, resp.Deletes)
	}
	if !h.m.LeaseExpiry("v").After(before) {
		t.Fatal("lease view not advanced during delete")
	}
	close(release)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// After a restart the master cannot know what leases its previous run
// granted: its view of every volume's lease lasts at least Lease + Margin
// from its start.
func TestLeaseViewAfterRestart(t *testing.T) {
	h := newHarness(t, nil)
	_, hb := h.server("a", "r1", 100*gib)
	if _, err := h.create(spec("v", 1<<20, 1)); err != nil {
		t.Fatal(err)
	}
	hb.beat(primaryReport("v", 1, false)) // a lease granted just before the stop
	granted := h.m.LeaseExpiry("v")
	h.stop()
	h.clock.Advance(time.Second)
	h.start()
	restart := h.clock.Now()
	got := h.m.LeaseExpiry("v")
	if want := restart.Add(h.opts.Lease + h.opts.Margin); got.Before(want) || got.Before(granted) {
		t.Fatalf("after restart the lease view ends %v, want >= %v (and >= the last grant %v)", got, want, granted)
	}
	if !h.m.LeaseExpiry("nosuch").IsZero() {
		t.Fatal("lease view for an unknown volume")
	}
}

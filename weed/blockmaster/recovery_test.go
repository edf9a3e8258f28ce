package blockmaster

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

func (c *cluster) repair(replica string, rebuild bool) (*blockpb.RepairVolumeResponse, error) {
	return c.h.client.RepairVolume(context.Background(), &blockpb.RepairVolumeRequest{Name: "v", ReplicaServerId: replica, Rebuild: rebuild})
}

func (c *cluster) caughtUp(epoch uint64, id, caller string) (*blockpb.ReportCaughtUpResponse, error) {
	return c.h.client.ReportCaughtUp(context.Background(), &blockpb.ReportCaughtUpRequest{Name: "v", Epoch: epoch, ServerId: id, CallerServerId: caller})
}

func targetFor(resp *blockpb.BlockHeartbeatResponse, id string) *blockpb.CatchUpTarget {
	for _, t := range resp.GetCatchUp() {
		if t.GetServer().GetServerId() == id {
			return t
		}
	}
	return nil
}

func (c *cluster) record() *volumeRecord {
	c.h.m.mu.Lock()
	defer c.h.m.mu.Unlock()
	return c.h.m.reg.get("v").clone()
}

func TestRepairVolumeValidation(t *testing.T) {
	c := newCluster(t, 3, blockpb.Durability_DURABILITY_SYNC, "a", "b", "c", "d")
	ctx := context.Background()
	_, err := c.h.client.RepairVolume(ctx, &blockpb.RepairVolumeRequest{Name: "nope"})
	wantCode(t, err, codes.NotFound, `"nope" not found`)
	_, err = c.h.client.RepairVolume(ctx, &blockpb.RepairVolumeRequest{Name: "Bad_Name"})
	wantCode(t, err, codes.InvalidArgument)
	_, err = c.repair("zz", false)
	wantCode(t, err, codes.InvalidArgument, "unknown replica", "zz")
	_, err = c.repair("d", true) // alive, not a member, no copy
	wantCode(t, err, codes.InvalidArgument, "holds no copy")
	for _, rebuild := range []bool{false, true} {
		_, err = c.repair("a", rebuild)
		wantCode(t, err, codes.FailedPrecondition, "primary", "promote first")
	}
	// Members without -rebuild are in sync and left alone: no new epoch.
	r, err := c.repair("", false)
	if err != nil || len(r.Repairing) != 0 || strings.Join(r.InSync, ",") != "b,c" || r.Volume.Config.Epoch != 1 {
		t.Fatalf("repair of in-sync members: %v %v", r, err)
	}
	if got := c.record().repairs; len(got) != 0 {
		t.Fatalf("in-sync repair recorded %v", got)
	}
	// No live primary: nothing to copy from.
	c.kill("a")
	_, err = c.repair("b", true)
	wantCode(t, err, codes.FailedPrecondition, "no live primary", "a is not alive")
	if got := c.info().Config.Epoch; got != 1 {
		t.Fatalf("refused repair made epoch %d", got)
	}
	// Followers refuse.
	c.h.leader.Store(false)
	_, err = c.repair("b", false)
	wantCode(t, err, codes.FailedPrecondition, "not leader")
}

// block.repair -rebuild of a member: it leaves the epoch (persisted), the
// primary gets it as a catch-up target with the forced rebuild flag and a
// repair sequence that grows with every repair, across a master restart;
// ReportCaughtUp makes it a member again and clears the flag (not the
// sequence).
func TestRepairRebuildMemberUntilCaughtUp(t *testing.T) {
	c := newCluster(t, 2, blockpb.Durability_DURABILITY_SYNC, "a", "b")
	c.set("a", 1, primary, 10)
	c.set("b", 1, replica, 10)
	c.beatAll()
	r, err := c.repair("b", true)
	if err != nil {
		t.Fatal(err)
	}
	cfg := r.Volume.Config
	if strings.Join(r.Repairing, ",") != "b" || len(r.InSync) != 0 || cfg.Epoch != 2 || roleOf(cfg, "b") != none ||
		roleOf(cfg, "a") != primary || !strings.Contains(cfg.Reason, "repair: rebuild requested") {
		t.Fatalf("repair -rebuild b: %v", r)
	}
	c.set("a", 2, primary, 10)
	tg := targetFor(c.beat("a"), "b")
	if tg == nil || !tg.Rebuild || tg.RepairSeq != 1 || tg.Epoch != 2 {
		t.Fatalf("catch-up target after repair: %v", tg)
	}
	// Again, without -rebuild: the sequence grows, the flag stays.
	if r, err := c.repair("", false); err != nil || strings.Join(r.Repairing, ",") != "b" || r.Volume.Config.Epoch != 2 {
		t.Fatalf("second repair: %v %v", r, err)
	}
	if tg := targetFor(c.beat("a"), "b"); tg == nil || !tg.Rebuild || tg.RepairSeq != 2 {
		t.Fatalf("target after the second repair: %v", tg)
	}
	// Both survive a master restart.
	c.h.stop()
	reg, err := loadRegistry(filepath.Join(c.h.dir, "block"))
	if err != nil {
		t.Fatal(err)
	}
	if mk := reg.get("v").repairs["b"]; !mk.Rebuild || mk.Seq != 2 {
		t.Fatalf("persisted repair mark %+v", mk)
	}
	c.h.start()
	c.reconnect("a", "r-a")
	c.reconnect("b", "r-b")
	c.set("b", 2, none, 10)
	c.beat("b")
	if tg := targetFor(c.beat("a"), "b"); tg == nil || !tg.Rebuild || tg.RepairSeq != 2 {
		t.Fatalf("target after a master restart: %v", tg)
	}
	// Rebuilt and following: the primary reports it caught up.
	rc, err := c.caughtUp(2, "b", "a")
	if err != nil || rc.Config.Epoch != 3 || roleOf(rc.Config, "b") != replica {
		t.Fatalf("ReportCaughtUp: %v %v", rc, err)
	}
	if mk := c.record().repairs["b"]; mk.Rebuild || mk.Seq != 2 {
		t.Fatalf("after rejoining: %+v, want the flag cleared and seq kept", mk)
	}
	c.set("a", 3, primary, 10)
	c.set("b", 3, replica, 10)
	if resp := c.beat("a"); len(resp.CatchUp) != 0 {
		t.Fatalf("targets on a full volume: %v", resp.CatchUp)
	}
	g := gather(t, c.h.m)
	if v, _ := metricValue(g["weedblock_master_repairs_requested_total"], "", ""); v != 0 {
		// The restarted master counts its own requests only.
		t.Fatalf("repairs after restart %v", v)
	}
	if _, err := c.repair("b", false); err != nil {
		t.Fatal(err)
	}
	g = gather(t, c.h.m)
	if v, _ := metricValue(g["weedblock_master_repairs_requested_total"], "", ""); v != 0 {
		t.Fatalf("a member in sync counted as repaired: %v", v)
	}
}

// A named non-member copy is repaired without a new epoch; the forced
// flag goes out on the next heartbeat answer.
func TestRepairNonMemberCopy(t *testing.T) {
	c := newCluster(t, 3, blockpb.Durability_DURABILITY_SYNC, "a", "b", "c", "d")
	ctx := context.Background()
	if _, err := c.h.client.RemoveMember(ctx, &blockpb.RemoveMemberRequest{Name: "v", Epoch: 1, ServerId: "c", CallerServerId: "a"}); err != nil {
		t.Fatal(err)
	}
	c.set("a", 2, primary, 10)
	c.set("b", 2, replica, 10)
	c.set("c", 1, replica, 4) // still at its old epoch
	c.beatAll()
	if tg := targetFor(c.beat("a"), "c"); tg == nil || tg.Rebuild || tg.RepairSeq != 0 {
		t.Fatalf("plain catch-up target: %v", tg)
	}
	r, err := c.repair("c", true)
	if err != nil || r.Volume.Config.Epoch != 2 || strings.Join(r.Repairing, ",") != "c" {
		t.Fatalf("repair of a non-member: %v %v", r, err)
	}
	if tg := targetFor(c.beat("a"), "c"); tg == nil || !tg.Rebuild || tg.RepairSeq != 1 {
		t.Fatalf("target after repair: %v", tg)
	}
	// Without a replica: the member b is in sync, c is repaired again.
	r, err = c.repair("", false)
	if err != nil || strings.Join(r.Repairing, ",") != "c" || strings.Join(r.InSync, ",") != "b" {
		t.Fatalf("repair all: %v %v", r, err)
	}
	g := gather(t, c.h.m)
	if v, _ := metricValue(g["weedblock_master_repairs_requested_total"], "", ""); v != 2 {
		t.Fatalf("repairs requested %v, want 2", v)
	}
}

// rf=1 has nothing to repair from but itself.
func TestRepairWithoutOtherCopy(t *testing.T) {
	c := newCluster(t, 1, blockpb.Durability_DURABILITY_SYNC, "a")
	_, err := c.repair("", true)
	wantCode(t, err, codes.FailedPrecondition, "no copy other than the primary")
}

// A replica whose file is gone (its server heartbeats without the volume)
// leaves the epoch ("copy lost"), gets an empty recovery copy, is a
// catch-up target once it reports the copy, and a member again after
// ReportCaughtUp. A server that never held the volume gets nothing.
func TestLostCopyIsRecreatedAndRejoins(t *testing.T) {
	c := newCluster(t, 2, blockpb.Durability_DURABILITY_SYNC, "a", "b", "c")
	c.set("a", 1, primary, 10)
	c.set("b", 1, replica, 10)
	c.beatAll()
	delete(c.rep, "b") // the file is deleted: b lists no volume
	c.pass(foPulse)    // two heartbeats: not yet lost
	if info := c.info(); info.Config.Epoch != 1 {
		t.Fatalf("dropped after %v: %v", foPulse, info.Config)
	}
	c.pass(2 * foPulse)
	info := c.info()
	if info.Config.Epoch != 2 || roleOf(info.Config, "b") != none || !strings.HasPrefix(info.Config.Reason, "copy lost: b reports no copy") {
		t.Fatalf("after b lost its copy: %v", info.Config)
	}
	fb := c.h.vols["b"]
	// The fake still lists its create-time allocation (it keeps no files);
	// the recovery allocation replaces it.
	eventually(t, "recovery copy on b", func() bool {
		fb.mu.Lock()
		defer fb.mu.Unlock()
		return fb.allocated["v"].GetRecoveryCopy()
	})
	fb.mu.Lock()
	alloc := fb.allocated["v"]
	fb.mu.Unlock()
	if !alloc.GetRecoveryCopy() || alloc.GetConfig().GetEpoch() != 2 || alloc.GetSpec().GetName() != "v" || alloc.GetSpec().GetSizeBytes() != 1<<20 {
		t.Fatalf("recovery allocation: %v", alloc)
	}
	if c.h.vols["c"].hasVolume("v") {
		t.Fatal("a server that never held the volume got a copy")
	}
	// b creates the copy: empty and untrusted, not a member.
	c.rep["b"] = &blockpb.VolumeReport{Name: "v", Epoch: 2, Role: none, Healthy: true, Untrusted: true}
	c.set("a", 2, primary, 10)
	c.beat("b")
	if tg := targetFor(c.beat("a"), "b"); tg == nil || tg.Epoch != 2 {
		t.Fatalf("recovery copy is not a catch-up target: %v", c.beat("a").CatchUp)
	}
	c.pass(3 * foPulse) // a non-member's untrusted copy is left to the primary
	if info := c.info(); info.Config.Epoch != 2 {
		t.Fatalf("epoch moved while b rebuilds: %v", info.Config)
	}
	fb.mu.Lock()
	n := len(fb.allocated)
	fb.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d allocations on b", n)
	}
	_, err := c.caughtUp(2, "b", "a")
	wantCode(t, err, codes.FailedPrecondition, "untrusted")
	c.set("b", 2, none, 10) // rebuilt: trusted
	c.beat("b")
	r, err := c.caughtUp(2, "b", "a")
	if err != nil || r.Config.Epoch != 3 || roleOf(r.Config, "b") != replica {
		t.Fatalf("ReportCaughtUp after the rebuild: %v %v", r, err)
	}
	g := gather(t, c.h.m)
	for _, w := range []struct {
		metric, label, value string
		v                    float64
	}{
		{"weedblock_master_copies_lost_total", "reason", "lost", 1},
		{"weedblock_master_copies_lost_total", "reason", "untrusted", 0},
		{"weedblock_master_recovery_copies_total", "", "", 1},
	} {
		if got, ok := metricValue(g[w.metric], w.label, w.value); !ok || got != w.v {
			t.Fatalf("%s{%s} = %v (%v), want %v", w.metric, w.value, got, ok, w.v)
		}
	}
}

// A replica reporting an untrusted copy leaves the epoch ("copy untrusted")
// and stays a catch-up target (no new copy is made for it).
func TestUntrustedReplicaLeavesEpoch(t *testing.T) {
	c := newCluster(t, 3, blockpb.Durability_DURABILITY_SYNC, "a", "b", "c")
	c.set("a", 1, primary, 10)
	c.set("b", 1, replica, 10)
	c.rep["c"] = &blockpb.VolumeReport{Name: "v", Epoch: 1, Role: replica, Healthy: true, Untrusted: true}
	c.pass(foPulse / 2)
	info := c.info()
	if info.Config.Epoch != 2 || roleOf(info.Config, "c") != none || roleOf(info.Config, "b") != replica ||
		!strings.HasPrefix(info.Config.Reason, "copy untrusted: c") {
		t.Fatalf("after c reported untrusted: %v", info.Config)
	}
	c.set("a", 2, primary, 10)
	if tg := targetFor(c.beat("a"), "c"); tg == nil {
		t.Fatal("untrusted copy is not a catch-up target")
	}
	if c.h.vols["c"].hasVolume("v") != true {
		t.Fatal("c's original allocation vanished")
	}
	g := gather(t, c.h.m)
	if got, _ := metricValue(g["weedblock_master_copies_lost_total"], "reason", "untrusted"); got != 1 {
		t.Fatalf("copies lost (untrusted) %v", got)
	}
}

// A primary reporting an untrusted copy is replaced like a lost primary,
// once its lease has run out; the untrusted copy is never promoted, and an
// untrusted replica is not a candidate either.
func TestUntrustedPrimaryReplacedNeverPromoted(t *testing.T) {
	c := newCluster(t, 3, blockpb.Durability_DURABILITY_SYNC, "a", "b", "c")
	c.pass(4 * time.Second) // past the start floor
	c.set("a", 1, primary, 30)
	c.set("b", 1, replica, 20)
	c.set("c", 1, replica, 25)
	c.beatAll()
	leaseEnd := c.h.m.LeaseExpiry("v")
	c.rep["a"] = &blockpb.VolumeReport{Name: "v", Epoch: 1, Role: primary, DurableLsn: 30, Healthy: true, Untrusted: true}
	for c.h.clock.Now().Add(foPulse / 2).Before(leaseEnd) {
		c.pass(foPulse / 2)
		if info := c.info(); info.Config.Epoch != 1 {
			t.Fatalf("replaced before the lease ran out: %v", info.Config)
		}
	}
	if c.h.m.LeaseExpiry("v").After(leaseEnd) {
		t.Fatal("an untrusted primary's lease was renewed")
	}
	c.pass(foPulse)
	info := c.info()
	if info.Config.Epoch != 2 || info.Config.PrimaryServerId != "c" || roleOf(info.Config, "a") != none ||
		!strings.Contains(info.Config.Reason, "copy untrusted on primary a") {
		t.Fatalf("after the untrusted primary: %v", info.Config)
	}
	if info.Failovers != 1 {
		t.Fatalf("failovers %d", info.Failovers)
	}
	// The untrusted old primary is a catch-up target of the new one.
	c.set("c", 2, primary, 25)
	if tg := targetFor(c.beat("c"), "a"); tg == nil {
		t.Fatal("old untrusted primary is not a catch-up target")
	}

	// rf=2: the primary's copy is gone and the only replica is untrusted:
	// nobody is promoted.
	d := newCluster(t, 2, blockpb.Durability_DURABILITY_SYNC, "a", "b")
	d.pass(4 * time.Second)
	delete(d.rep, "a")
	d.pass(5 * foPulse / 2) // a's copy counts as lost; its lease runs on
	if info := d.info(); info.Config.Epoch != 1 {
		t.Fatalf("changed before the lease ran out: %v", info.Config)
	}
	d.rep["b"] = &blockpb.VolumeReport{Name: "v", Epoch: 1, Role: replica, Healthy: true, Untrusted: true, DurableLsn: 99}
	d.pass(6 * time.Second)
	info = d.info()
	if info.Config.Epoch != 1 || info.State != StateUnavailable || !strings.Contains(info.FailoverBlocked, "b is untrusted") {
		t.Fatalf("untrusted replica promoted, or no reason: %v state %q blocked %q", info.Config, info.State, info.FailoverBlocked)
	}
	for _, force := range []bool{false, true} {
		_, err := d.h.client.PromoteVolume(context.Background(), &blockpb.PromoteVolumeRequest{Name: "v", ToServerId: "b", Force: force})
		wantCode(t, err, codes.FailedPrecondition, "untrusted")
	}
}

// A primary whose file is gone is replaced (after its lease) and gets a
// recovery copy of the new epoch, to be rebuilt by the new primary.
func TestLostPrimaryCopyFailsOverAndIsRecreated(t *testing.T) {
	c := newCluster(t, 2, blockpb.Durability_DURABILITY_SYNC, "a", "b")
	c.pass(4 * time.Second)
	c.set("a", 1, primary, 10)
	c.set("b", 1, replica, 10)
	c.beatAll()
	delete(c.rep, "a")
	c.pass(8 * time.Second)
	info := c.info()
	if info.Config.Epoch != 2 || info.Config.PrimaryServerId != "b" || len(info.Config.Members) != 1 ||
		!strings.Contains(info.Config.Reason, "copy lost on primary a") {
		t.Fatalf("after the primary lost its copy: %v", info.Config)
	}
	fa := c.h.vols["a"]
	eventually(t, "recovery copy on a", func() bool {
		fa.mu.Lock()
		defer fa.mu.Unlock()
		return fa.allocated["v"].GetRecoveryCopy()
	})
	fa.mu.Lock()
	cfg := fa.allocated["v"].GetConfig()
	fa.mu.Unlock()
	if cfg.GetEpoch() != 2 || cfg.GetPrimaryServerId() != "b" {
		t.Fatalf("recovery copy config %v", cfg)
	}
	g := gather(t, c.h.m)
	if got, _ := metricValue(g["weedblock_master_copies_lost_total"], "reason", "lost"); got != 1 {
		t.Fatalf("copies lost %v", got)
	}
}

// VolumeInfo carries the primary's recoveries; the state says recovering
// while one runs.
func TestRecoveriesInVolumeInfo(t *testing.T) {
	c := newCluster(t, 2, blockpb.Durability_DURABILITY_SYNC, "a", "b", "c")
	ctx := context.Background()
	if _, err := c.h.client.RemoveMember(ctx, &blockpb.RemoveMemberRequest{Name: "v", Epoch: 1, ServerId: "b", CallerServerId: "a"}); err != nil {
		t.Fatal(err)
	}
	c.set("a", 2, primary, 100)
	c.rep["a"].Recoveries = []*blockpb.RecoveryProgress{{ServerId: "b", Phase: "rebuild", Plan: "rebuild: full (outage beyond retention)",
		BytesDone: 1 << 20, BytesTotal: 4 << 20, EtaMs: 3000, Attempt: 1, TargetLsn: 100}}
	c.set("b", 1, none, 0)
	c.beatAll()
	info := c.info()
	if info.State != StateRecovering || len(info.Recoveries) != 1 || info.Recoveries[0].BytesTotal != 4<<20 || info.Recoveries[0].ServerId != "b" {
		t.Fatalf("info: state %q recoveries %v", info.State, info.Recoveries)
	}
	g := gather(t, c.h.m)
	if got, _ := metricValue(g["weedblock_master_volume_recoveries_running"], "volume", "v"); got != 1 {
		t.Fatalf("recoveries running %v", got)
	}
	if got, _ := metricValue(g["weedblock_master_volumes"], "state", StateRecovering); got != 1 {
		t.Fatalf("volumes recovering %v", got)
	}
	c.rep["a"].Recoveries[0].Phase = "done"
	c.rep["a"].Recoveries[0].LastOutcome = "in-sync"
	c.beatAll()
	if info := c.info(); info.State == StateRecovering || len(info.Recoveries) != 1 || info.Recoveries[0].LastOutcome != "in-sync" {
		t.Fatalf("after the recovery: state %q %v", info.State, info.Recoveries)
	}
}

// Homes survive a reload and a registry written before they existed gets
// them from its config and history.
func TestRegistryHomesAndRepairs(t *testing.T) {
	dir := t.TempDir()
	r := mustLoad(t, dir)
	rec := testRecord("v", 3)
	if err := r.add(rec); err != nil {
		t.Fatal(err)
	}
	next := &blockpb.EpochConfig{Epoch: 4, PrimaryServerId: "s9", Members: []*blockpb.Member{{Server: &blockpb.ServerEndpoints{ServerId: "s9"}, Role: primary}}}
	if err := r.update("v", next, false, func(v *volumeRecord) {
		v.repairs = map[string]repairMark{"s1": {Rebuild: true, Seq: 3}}
	}); err != nil {
		t.Fatal(err)
	}
	want := append(append([]string{}, rec.homes...), "s9")
	r2 := mustLoad(t, dir)
	got := r2.get("v")
	if strings.Join(got.homes, ",") != strings.Join(want, ",") || got.repairs["s1"] != (repairMark{Rebuild: true, Seq: 3}) {
		t.Fatalf("reloaded homes %v repairs %v, want homes %v", got.homes, got.repairs, want)
	}
	if _, ok := r2.homesOf("s9")["v"]; !ok {
		t.Fatal("home index misses s9")
	}
	// A repair-only update keeps the epoch.
	if err := r2.update("v", nil, false, func(v *volumeRecord) { v.repairs["s1"] = repairMark{Seq: 4} }); err != nil {
		t.Fatal(err)
	}
	if r3 := mustLoad(t, dir); r3.get("v").config.Epoch != 4 || r3.get("v").repairs["s1"].Seq != 4 || len(r3.get("v").history) != 1 {
		t.Fatalf("repair-only update: %v", r3.get("v"))
	}
	// Old format: no homes field.
	old := newRegistry(dir)
	old.volumes["w"] = &volumeRecord{spec: &blockpb.VolumeSpec{Name: "w"}, firstEpoch: 1,
		config:  &blockpb.EpochConfig{Epoch: 2, PrimaryServerId: "x", Members: []*blockpb.Member{{Server: &blockpb.ServerEndpoints{ServerId: "x"}}}},
		history: []*blockpb.EpochConfig{{Epoch: 1, Members: []*blockpb.Member{{Server: &blockpb.ServerEndpoints{ServerId: "y"}}}}}}
	data, err := old.encode()
	if err != nil {
		t.Fatal(err)
	}
	loaded := newRegistry(dir)
	if err := loaded.decode(data); err != nil {
		t.Fatal(err)
	}
	if h := loaded.get("w").homes; strings.Join(h, ",") != "x,y" {
		t.Fatalf("homes from config and history: %v", h)
	}
}

// rf=3 with both replicas' files gone at once: one epoch drops both, both
// get a recovery copy, and each rejoins on its own ReportCaughtUp.
func TestTwoLostCopiesAtOnce(t *testing.T) {
	c := newCluster(t, 3, blockpb.Durability_DURABILITY_QUORUM, "a", "b", "c", "d")
	c.set("a", 1, primary, 10)
	c.set("b", 1, replica, 10)
	c.set("c", 1, replica, 10)
	c.beatAll()
	delete(c.rep, "b")
	delete(c.rep, "c")
	c.pass(5 * foPulse / 2)
	info := c.info()
	if info.Config.Epoch != 2 || len(info.Config.Members) != 1 || !strings.Contains(info.Config.Reason, "copy lost: b") ||
		!strings.Contains(info.Config.Reason, "copy lost: c") {
		t.Fatalf("after losing b and c: %v", info.Config)
	}
	for _, id := range []string{"b", "c"} {
		f := c.h.vols[id]
		eventually(t, "recovery copy on "+id, func() bool {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.allocated["v"].GetRecoveryCopy()
		})
	}
	if c.h.vols["d"].hasVolume("v") {
		t.Fatal("d was never a home of v and got a copy")
	}
	c.set("a", 2, primary, 10)
	c.set("b", 2, none, 10)
	c.set("c", 2, none, 10)
	c.beatAll()
	resp := c.beat("a")
	if targetFor(resp, "b") == nil || targetFor(resp, "c") == nil || targetFor(resp, "d") != nil {
		t.Fatalf("targets %v", resp.CatchUp)
	}
	if _, err := c.caughtUp(2, "c", "a"); err != nil {
		t.Fatal(err)
	}
	r, err := c.caughtUp(3, "b", "a")
	if err != nil || r.Config.Epoch != 4 || len(r.Config.Members) != 3 {
		t.Fatalf("both back: %v %v", r, err)
	}
	g := gather(t, c.h.m)
	if v, _ := metricValue(g["weedblock_master_copies_lost_total"], "reason", "lost"); v != 2 {
		t.Fatalf("copies lost %v", v)
	}
}

package blockmaster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/weedblock/weedblock/weed/blockvolume"
	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// realVolumeServer is a weed/blockvolume Manager behind its own gRPC server
// on 127.0.0.1, heartbeating to the harness's master.
type realVolumeServer struct {
	id  string
	dir string
	mgr *blockvolume.Manager
	srv *grpc.Server

	stopped bool
}

func startRealVolumeServer(t *testing.T, id, rack string, masterAddr string, pulse time.Duration) *realVolumeServer {
	t.Helper()
	return startRealVolumeServerIn(t, t.TempDir(), id, rack, masterAddr, pulse)
}

// startRealVolumeServerIn is startRealVolumeServer on an existing
// directory (a restart of a server).
func startRealVolumeServerIn(t *testing.T, dir, id, rack string, masterAddr string, pulse time.Duration) *realVolumeServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := blockvolume.New(blockvolume.Options{
		Dir:       dir,
		ServerID:  id,
		Endpoints: &blockpb.ServerEndpoints{GrpcAddress: l.Addr().String(), HttpAddress: "127.0.0.1:1", DataCenter: "dc1", Rack: rack},
		NBDAddr:   "127.0.0.1:0",
		ISCSIAddr: "127.0.0.1:0",
		ReplAddr:  "127.0.0.1:0",
		Masters:   func() []string { return []string{masterAddr} },
		Dial: func(ctx context.Context, addr string) (*grpc.ClientConn, error) {
			return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		},
		Pulse:      pulse,
		MaxBackoff: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	blockpb.RegisterBlockVolumeServer(srv, mgr.GRPCService())
	go srv.Serve(l)
	if err := mgr.Start(); err != nil {
		t.Fatal(err)
	}
	v := &realVolumeServer{id: id, dir: dir, mgr: mgr, srv: srv}
	t.Cleanup(v.stop)
	return v
}

// stop closes the server (idempotent).
func (v *realVolumeServer) stop() {
	if v.stopped {
		return
	}
	v.stopped = true
	if err := v.mgr.Close(); err != nil {
		panic(fmt.Sprintf("close %s: %v", v.id, err))
	}
	v.srv.Stop()
}

func (v *realVolumeServer) status(t *testing.T, name string) *blockpb.VolumeReport {
	t.Helper()
	resp, err := v.mgr.GRPCService().VolumeStatus(context.Background(), &blockpb.LocalVolumeStatusRequest{Name: name})
	if err != nil || len(resp.Volumes) != 1 {
		t.Fatalf("status of %s on %s: %v %v", name, v.id, resp, err)
	}
	return resp.Volumes[0]
}

func (v *realVolumeServer) hasFile(name string) bool {
	_, err := os.Stat(filepath.Join(v.dir, name+".blk"))
	return !errors.Is(err, os.ErrNotExist)
}

// The contract with the real volume side: create allocates the file, the
// heartbeat assignment unfences the primary with a lease, the master's view
// of that lease always ends after the primary's, delete removes the file, a
// leftover file is deleted through the heartbeat, and once the master is
// gone the primary stops accepting writes before the master's view of its
// lease ends.
func TestWithRealVolumeServers(t *testing.T) {
	const pulse = 100 * time.Millisecond
	h := newHarness(t, func(o *Options) {
		o.Clock = nil // real time: the volume side uses it
		o.Pulse = pulse
		o.Lease = 1500 * time.Millisecond
		o.Margin = 200 * time.Millisecond
		o.DialVolume = nil
		o.DialConn = func(ctx context.Context, addr string) (*grpc.ClientConn, error) {
			return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		}
	})
	a := startRealVolumeServer(t, "vs1", "r1", h.addr, pulse)
	b := startRealVolumeServer(t, "vs2", "r2", h.addr, pulse)
	eventually(t, "both volume servers alive", func() bool {
		h.m.mu.Lock()
		defer h.m.mu.Unlock()
		return len(h.m.candidatesLocked(time.Now())) == 2
	})

	info, err := h.create(&blockpb.VolumeSpec{Name: "db1", SizeBytes: 4 << 20, WalSizeBytes: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	primary, other := a, b
	if info.Config.PrimaryServerId == "vs2" {
		primary, other = b, a
	}
	if !primary.hasFile("db1") || other.hasFile("db1") {
		t.Fatalf("file on primary %v, on the other %v", primary.hasFile("db1"), other.hasFile("db1"))
	}
	eventually(t, "db1 ok", func() bool {
		info, err := h.lookup("db1")
		return err == nil && info.State == StateOK
	})
	info, _ = h.lookup("db1")
	rep := info.Reports[0]
	if rep.Epoch != 1 || rep.Role != blockpb.Role_ROLE_PRIMARY || rep.Fenced || rep.LeaseRemainingMs <= 0 || rep.LeaseRemainingMs > 1500 {
		t.Fatalf("primary report %v", rep)
	}

	// The master's view of the lease outlasts the primary's, sampled live.
	for i := 0; i < 10; i++ {
		r := primary.status(t, "db1")
		after := time.Now()
		if r.Fenced {
			t.Fatalf("sample %d: primary fenced while the master is up", i)
		}
		volUntil := after.Add(time.Duration(r.LeaseRemainingMs+1) * time.Millisecond)
		if exp := h.m.LeaseExpiry("db1"); exp.Before(volUntil) {
			t.Fatalf("sample %d: master's lease view %v ends before the primary's (~%v)", i, exp, volUntil)
		}
		time.Sleep(pulse / 3)
	}

	// Delete removes the file on the primary.
	if err := h.del("db1", false); err != nil {
		t.Fatal(err)
	}
	if primary.hasFile("db1") {
		t.Fatal("db1 file still on the primary after delete")
	}
	_, err = h.lookup("db1")
	wantCode(t, err, codes.NotFound)

	// A stale copy of the deleted volume (as if its server had been down
	// during the delete) is deleted through the heartbeat; a volume the
	// registry never had is left alone.
	for _, name := range []string{"db1", "stray"} {
		if _, err := other.mgr.GRPCService().AllocateVolume(context.Background(), &blockpb.AllocateVolumeRequest{
			Spec:   &blockpb.VolumeSpec{Name: name, SizeBytes: 1 << 20, BlockSize: 4096, WalSizeBytes: 256 << 10, ReplicationFactor: 1, Durability: blockpb.Durability_DURABILITY_SYNC},
			Config: &blockpb.EpochConfig{Epoch: 1, PrimaryServerId: other.id, Members: []*blockpb.Member{{Server: &blockpb.ServerEndpoints{ServerId: other.id}, Role: blockpb.Role_ROLE_PRIMARY}}},
		}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "stale db1 deleted", func() bool { return !other.hasFile("db1") })
	time.Sleep(3 * pulse)
	if !other.hasFile("stray") {
		t.Fatal("a volume the registry never had was deleted")
	}

	// Master gone: the primary must refuse writes no later than the
	// master's view of its lease says.
	if _, err := h.create(&blockpb.VolumeSpec{Name: "db2", SizeBytes: 4 << 20, WalSizeBytes: 256 << 10}); err != nil {
		t.Fatal(err)
	}
	info, _ = h.lookup("db2")
	p2 := a
	if info.Config.PrimaryServerId == "vs2" {
		p2 = b
	}
	eventually(t, "db2 ok", func() bool {
		info, err := h.lookup("db2")
		return err == nil && info.State == StateOK
	})
	m := h.m
	h.stop()
	exp := m.LeaseExpiry("db2")
	if exp.IsZero() {
		t.Fatal("no lease recorded for db2")
	}
	time.Sleep(time.Until(exp))
	if r := p2.status(t, "db2"); !r.Fenced || r.LeaseRemainingMs > 0 {
		t.Fatalf("primary still writable after the master's lease view ended: %v", r)
	}
}

// With real volume servers: a replica whose volume file is deleted while
// it is down comes back with no copy; the master leaves it out of the
// epoch, has an empty copy made on it (recovery copy, or the volume
// server's own for an assignment), the primary rebuilds it and the master
// makes it a member again through ReportCaughtUp.
func TestRealLostCopyIsRebuilt(t *testing.T) {
	const pulse = 100 * time.Millisecond
	h := newHarness(t, func(o *Options) {
		o.Clock = nil
		o.Pulse = pulse
		o.Lease = 1500 * time.Millisecond
		o.Margin = 200 * time.Millisecond
		o.DialVolume = nil
		o.DialConn = func(ctx context.Context, addr string) (*grpc.ClientConn, error) {
			return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		}
	})
	servers := map[string]*realVolumeServer{
		"vs1": startRealVolumeServer(t, "vs1", "r1", h.addr, pulse),
		"vs2": startRealVolumeServer(t, "vs2", "r2", h.addr, pulse),
	}
	eventually(t, "both volume servers alive", func() bool {
		h.m.mu.Lock()
		defer h.m.mu.Unlock()
		return len(h.m.candidatesLocked(time.Now())) == 2
	})
	info, err := h.create(&blockpb.VolumeSpec{Name: "db1", SizeBytes: 4 << 20, WalSizeBytes: 256 << 10, ReplicationFactor: 2})
	if err != nil {
		t.Fatal(err)
	}
	primaryID := info.Config.PrimaryServerId
	replicaID := "vs1"
	if primaryID == "vs1" {
		replicaID = "vs2"
	}
	waitState := func(what string, ok func(*blockpb.VolumeInfo) bool) *blockpb.VolumeInfo {
		t.Helper()
		var last *blockpb.VolumeInfo
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			if info, err := h.lookup("db1"); err == nil {
				last = info
				if ok(info) {
					return info
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("timed out waiting for %s; last: %v", what, last)
		return nil
	}
	waitState("db1 ok with both members", func(i *blockpb.VolumeInfo) bool {
		return i.State == StateOK && len(i.Config.Members) == 2
	})
	start := info.Config.Epoch

	rs := servers[replicaID]
	rs.stop()
	if err := os.Remove(filepath.Join(rs.dir, "db1.blk")); err != nil {
		t.Fatal(err)
	}
	servers[replicaID] = startRealVolumeServerIn(t, rs.dir, replicaID, "r-"+replicaID, h.addr, pulse)
	final := waitState("the wiped replica rebuilt and a member again", func(i *blockpb.VolumeInfo) bool {
		return i.Config.Epoch > start+1 && roleOf(i.Config, replicaID) == replica && i.State == StateOK
	})
	var left, back bool
	for _, e := range append(final.History, final.Config) {
		if e.Epoch > start && roleOf(e, replicaID) == none {
			left = true
		}
		if left && strings.Contains(e.Reason, "member "+replicaID+" caught up") {
			back = true
		}
	}
	if !left || !back {
		t.Fatalf("history does not show %s leaving and rejoining: %v", replicaID, final.History)
	}
	rep := servers[replicaID].status(t, "db1")
	if rep.Untrusted || !rep.Healthy || rep.Role != replica || rep.Epoch != final.Config.Epoch {
		t.Fatalf("rebuilt replica reports %v", rep)
	}
	if final.Config.PrimaryServerId != primaryID {
		t.Fatalf("primary moved to %s", final.Config.PrimaryServerId)
	}

	// Again, but the primary removed the replica while it was down: it
	// comes back as a non-member without a copy, and only the master's
	// recovery copy brings it back.
	rs = servers[replicaID]
	rs.stop()
	ctx := context.Background()
	if _, err := h.client.RemoveMember(ctx, &blockpb.RemoveMemberRequest{Name: "db1", Epoch: final.Config.Epoch,
		ServerId: replicaID, CallerServerId: primaryID, Reason: "stopped answering"}); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(rs.dir, "db1.blk")); err != nil {
		t.Fatal(err)
	}
	second := final.Config.Epoch
	servers[replicaID] = startRealVolumeServerIn(t, rs.dir, replicaID, "r-"+replicaID, h.addr, pulse)
	final = waitState("the wiped non-member rebuilt and a member again", func(i *blockpb.VolumeInfo) bool {
		return i.Config.Epoch > second+1 && roleOf(i.Config, replicaID) == replica && i.State == StateOK
	})
	if rep := servers[replicaID].status(t, "db1"); rep.Untrusted || !rep.Healthy || rep.Role != replica {
		t.Fatalf("rebuilt replica reports %v", rep)
	}
	g := gather(t, h.m)
	if v, _ := metricValue(g["weedblock_master_recovery_copies_total"], "", ""); v != 1 {
		t.Fatalf("recovery copies %v, want 1", v)
	}

	// block.repair -rebuild of the member in sync: it leaves the epoch, is
	// rebuilt in full and rejoins; the forced flag is cleared.
	third := final.Config.Epoch
	rr, err := h.client.RepairVolume(ctx, &blockpb.RepairVolumeRequest{Name: "db1", ReplicaServerId: replicaID, Rebuild: true})
	if err != nil || len(rr.Repairing) != 1 || rr.Volume.Config.Epoch != third+1 {
		t.Fatalf("RepairVolume: %v %v", rr, err)
	}
	final = waitState("the repaired replica rebuilt and a member again", func(i *blockpb.VolumeInfo) bool {
		return i.Config.Epoch > third+1 && roleOf(i.Config, replicaID) == replica && i.State == StateOK
	})
	var forced *blockpb.RecoveryProgress
	for _, r := range final.Recoveries {
		if r.ServerId == replicaID {
			forced = r
		}
	}
	if forced == nil || forced.Rebuilds == 0 || forced.LastOutcome != "in-sync" {
		t.Fatalf("primary's recovery of %s after the forced rebuild: %v", replicaID, final.Recoveries)
	}
	h.m.mu.Lock()
	mk := h.m.reg.get("db1").repairs[replicaID]
	h.m.mu.Unlock()
	if mk.Rebuild || mk.Seq != 1 {
		t.Fatalf("repair mark after rejoining: %+v", mk)
	}
	t.Logf("epochs: %v", func() (out []string) {
		for _, e := range append(final.History, final.Config) {
			out = append(out, fmt.Sprintf("%d %s", e.Epoch, e.Reason))
		}
		return
	}())
}

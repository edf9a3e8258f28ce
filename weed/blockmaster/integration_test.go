package blockmaster

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
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
}

func startRealVolumeServer(t *testing.T, id, rack string, masterAddr string, pulse time.Duration) *realVolumeServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
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
	t.Cleanup(func() {
		if err := mgr.Close(); err != nil {
			t.Errorf("close %s: %v", id, err)
		}
		srv.Stop()
	})
	return v
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

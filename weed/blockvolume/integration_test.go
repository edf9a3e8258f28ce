package blockvolume

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/weedblock/weedblock/weed/blockmaster"
	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

func grpcServe(t *testing.T, register func(*grpc.Server)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	register(s)
	done := make(chan struct{})
	go func() { defer close(done); s.Serve(l) }()
	t.Cleanup(func() { s.Stop(); <-done })
	return l.Addr().String()
}

func dialInsecure(ctx context.Context, addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

func startRealMaster(t *testing.T, mdir string) (*blockmaster.Master, string) {
	t.Helper()
	bm, err := blockmaster.New(blockmaster.Options{
		Dir:      mdir,
		DialConn: dialInsecure,
		Pulse:    50 * time.Millisecond,
		Lease:    600 * time.Millisecond,
		Margin:   100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bm.Close() })
	return bm, grpcServe(t, func(s *grpc.Server) { bm.Register(s) })
}

// startVolumeServer runs a Manager whose BlockVolume service is on its
// own gRPC server (its advertised gRPC address).
func startVolumeServer(t *testing.T, dir, masterAddr string) *Manager {
	t.Helper()
	// The manager must know its gRPC address before Start, and the gRPC
	// server needs the manager's service: listen first.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := startManager(t, dir, func(o *Options) {
		withMasters(masterAddr)(o)
		o.Endpoints = &blockpb.ServerEndpoints{ServerId: testServerID, GrpcAddress: l.Addr().String(), Rack: "r1"}
	})
	s := grpc.NewServer()
	m.Register(s)
	done := make(chan struct{})
	go func() { defer close(done); s.Serve(l) }()
	t.Cleanup(func() { s.Stop(); <-done })
	return m
}

// TestWithRealMaster: create through the real blockmaster, the volume
// server allocates it and becomes a writable primary through the
// heartbeat; delete is refused while attached, forced delete removes the
// file; a restarted volume server is re-confirmed by the master.
func TestWithRealMaster(t *testing.T) {
	mdir, bdir := t.TempDir(), t.TempDir()
	_, mAddr := startRealMaster(t, mdir)
	cc, err := dialInsecure(context.Background(), mAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := blockpb.NewBlockMasterClient(cc)
	m := startVolumeServer(t, bdir, mAddr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var info *blockpb.VolumeInfo
	eventually(t, 10*time.Second, "create succeeds once the server heartbeats", func() bool {
		resp, err := client.CreateVolume(ctx, &blockpb.CreateVolumeRequest{Spec: spec("real", 1<<20)})
		if err != nil {
			return false
		}
		info = resp.GetVolume()
		return true
	})
	if info.GetConfig().GetPrimaryServerId() != testServerID || info.GetConfig().GetEpoch() != 1 {
		t.Fatalf("created volume info: %v", info)
	}
	path := filepath.Join(bdir, "real"+FileExt)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("volume file: %v", err)
	}
	c := dialNBD(t, m.Endpoints().GetNbdAddress(), "real")
	pat := bytes.Repeat([]byte{0xee}, 4096)
	eventually(t, 10*time.Second, "primary writable", func() bool { return c.write(0, pat) == 0 })
	eventually(t, 10*time.Second, "master sees state ok with the session", func() bool {
		resp, err := client.LookupVolume(ctx, &blockpb.LookupVolumeRequest{Name: "real"})
		if err != nil || len(resp.GetVolume().GetReports()) == 0 {
			return false
		}
		r := resp.GetVolume().GetReports()[0]
		return resp.GetVolume().GetState() == blockmaster.StateOK && r.GetAttachedSessions() == 1 && !r.GetFenced()
	})

	_, err = client.DeleteVolume(ctx, &blockpb.DeleteVolumeRequest{Name: "real"})
	wantCode(t, err, codes.FailedPrecondition, "master delete while attached")
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("refused delete removed the file: %v", err)
	}

	// Restart the volume server: the volume comes back fenced, the master
	// re-confirms it, it is writable again and holds the data.
	c.nc.Close()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	m = startVolumeServer(t, bdir, mAddr)
	c = dialNBD(t, m.Endpoints().GetNbdAddress(), "real")
	if e, data := c.read(0, 4096); e != 0 || !bytes.Equal(data, pat) {
		t.Fatalf("data after restart: errno %d", e)
	}
	eventually(t, 10*time.Second, "writable after restart", func() bool { return c.write(4096, pat) == 0 })

	if _, err := client.DeleteVolume(ctx, &blockpb.DeleteVolumeRequest{Name: "real", Force: true}); err != nil {
		t.Fatalf("forced delete: %v", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("file after forced delete: %v", err)
	}
	_, err = client.LookupVolume(ctx, &blockpb.LookupVolumeRequest{Name: "real"})
	wantCode(t, err, codes.NotFound, "lookup after delete")
}

// TestOrphanStaysFencedWithRealMaster: a volume file the registry has no
// record of (created behind the master's back) gets lease grants with the
// server's other volumes but no assignment, so it never becomes writable.
func TestOrphanStaysFencedWithRealMaster(t *testing.T) {
	bdir := t.TempDir()
	_, mAddr := startRealMaster(t, t.TempDir())
	m := startVolumeServer(t, bdir, mAddr)
	allocate(t, m, "stray", 1<<20, epochConfig(1, testServerID))
	c := dialNBD(t, m.Endpoints().GetNbdAddress(), "stray")
	eventually(t, 10*time.Second, "lease grants arriving", func() bool { return m.Heartbeat().Connected })
	time.Sleep(300 * time.Millisecond) // several pulses of 50 ms
	if e := c.write(0, make([]byte, 4096)); e != nbdEPERM {
		t.Fatalf("write to an orphan: errno %d, want EPERM", e)
	}
}

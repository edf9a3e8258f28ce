package blockmaster

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

func TestCreateValidation(t *testing.T) {
	h := newHarness(t, nil)
	h.server("s1", "r1", 100*gib)
	if _, err := h.create(spec("dup", 1<<20, 1)); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("a", 64)
	cases := []struct {
		name string
		spec *blockpb.VolumeSpec
		code codes.Code
		msg  string
	}{
		{"nil spec", nil, codes.InvalidArgument, "missing volume spec"},
		{"empty name", spec("", 1<<20, 1), codes.InvalidArgument, `bad volume name ""`},
		{"upper case", spec("Vol", 1<<20, 1), codes.InvalidArgument, `bad volume name "Vol"`},
		{"leading dash", spec("-vol", 1<<20, 1), codes.InvalidArgument, "bad volume name"},
		{"leading dot", spec(".vol", 1<<20, 1), codes.InvalidArgument, "bad volume name"},
		{"slash", spec("a/b", 1<<20, 1), codes.InvalidArgument, "bad volume name"},
		{"underscore", spec("a_b", 1<<20, 1), codes.InvalidArgument, "'_' cannot be part of an iSCSI name"},
		{"64 chars", spec(long, 1<<20, 1), codes.InvalidArgument, "bad volume name"},
		{"zero size", spec("v", 0, 1), codes.InvalidArgument, "size must be > 0"},
		{"unaligned size", spec("v", 4097, 1), codes.InvalidArgument, "size 4097 is not a multiple of the block size 4096"},
		{"unaligned for 8k", &blockpb.VolumeSpec{Name: "v", SizeBytes: 4096, BlockSize: 8192}, codes.InvalidArgument, "not a multiple of the block size 8192"},
		{"huge", spec("v", 1<<51, 1), codes.InvalidArgument, "above the limit"},
		{"block size not pow2", &blockpb.VolumeSpec{Name: "v", SizeBytes: 1 << 20, BlockSize: 1000}, codes.InvalidArgument, "bad block size 1000"},
		{"block size small", &blockpb.VolumeSpec{Name: "v", SizeBytes: 1 << 20, BlockSize: 256}, codes.InvalidArgument, "bad block size 256"},
		{"block size large", &blockpb.VolumeSpec{Name: "v", SizeBytes: 1 << 20, BlockSize: 1 << 17}, codes.InvalidArgument, "bad block size"},
		{"wal unaligned", &blockpb.VolumeSpec{Name: "v", SizeBytes: 1 << 20, WalSizeBytes: 100000}, codes.InvalidArgument, "bad WAL size 100000"},
		{"wal small", &blockpb.VolumeSpec{Name: "v", SizeBytes: 1 << 20, WalSizeBytes: 4096}, codes.InvalidArgument, "bad WAL size 4096"},
		{"rf 4", spec("v", 1<<20, 4), codes.InvalidArgument, "bad replication factor 4"},
		{"quorum rf 2", &blockpb.VolumeSpec{Name: "v", SizeBytes: 1 << 20, ReplicationFactor: 2, Durability: blockpb.Durability_DURABILITY_QUORUM}, codes.InvalidArgument, "quorum needs rf >= 3, got rf=2"},
		{"quorum rf default", &blockpb.VolumeSpec{Name: "v", SizeBytes: 1 << 20, Durability: blockpb.Durability_DURABILITY_QUORUM}, codes.InvalidArgument, "quorum needs rf >= 3, got rf=1"},
		{"unknown durability", &blockpb.VolumeSpec{Name: "v", SizeBytes: 1 << 20, Durability: 42}, codes.InvalidArgument, "unknown durability 42"},
		{"duplicate", spec("dup", 1<<20, 1), codes.AlreadyExists, `volume "dup" already exists`},
		{"rf 2 one server", spec("v", 1<<20, 2), codes.FailedPrecondition, "not enough block servers: rf=2 needs 2, 1 alive (s1)"},
		{"quorum rf 3 one server", &blockpb.VolumeSpec{Name: "v", SizeBytes: 1 << 20, ReplicationFactor: 3, Durability: blockpb.Durability_DURABILITY_QUORUM}, codes.FailedPrecondition, "rf=3 needs 3"},
		{"no space", spec("v", 200*gib, 1), codes.ResourceExhausted, "not enough space"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.create(tc.spec)
			wantCode(t, err, tc.code, tc.msg)
		})
	}
	resp, err := h.client.ListVolumes(context.Background(), &blockpb.ListVolumesRequest{})
	if err != nil || len(resp.Volumes) != 1 || resp.Volumes[0].Spec.Name != "dup" {
		t.Fatalf("after refused creates the registry holds %v (%v)", resp.GetVolumes(), err)
	}
	if n := len(h.vols["s1"].allocated); n != 1 {
		t.Fatalf("refused creates allocated: %d volumes on s1", n)
	}
}

func TestLookupDeleteValidation(t *testing.T) {
	h := newHarness(t, nil)
	_, err := h.lookup("nosuch")
	wantCode(t, err, codes.NotFound, `volume "nosuch" not found`)
	_, err = h.lookup("BAD")
	wantCode(t, err, codes.InvalidArgument, `bad volume name "BAD"`)
	wantCode(t, h.del("nosuch", false), codes.NotFound, `volume "nosuch" not found`)
	wantCode(t, h.del("", true), codes.InvalidArgument, "bad volume name")
	resp, err := h.client.ListVolumes(context.Background(), &blockpb.ListVolumesRequest{})
	if err != nil || len(resp.Volumes) != 0 {
		t.Fatalf("empty list: %v %v", resp, err)
	}
}

func TestCreateAllocatesAfterPersisting(t *testing.T) {
	h := newHarness(t, nil)
	f, _ := h.server("s1", "r1", 100*gib)
	var mu sync.Mutex
	var onDisk *registry
	f.onAlloc = func(req *blockpb.AllocateVolumeRequest) {
		mu.Lock()
		defer mu.Unlock()
		// What a crash at this instant would leave: the registry file.
		data, err := os.ReadFile(filepath.Join(h.dir, "block", registryFile))
		if err != nil {
			t.Errorf("registry not on disk when AllocateVolume arrived: %v", err)
			return
		}
		onDisk = newRegistry("")
		if err := onDisk.decode(data); err != nil {
			t.Errorf("decode: %v", err)
		}
	}
	info, err := h.create(&blockpb.VolumeSpec{Name: "db1", SizeBytes: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	rec := onDisk.get("db1")
	mu.Unlock()
	if rec == nil || rec.config.Epoch != 1 {
		t.Fatalf("registry on disk at allocation: %+v", rec)
	}
	req := f.allocated["db1"]
	if req == nil {
		t.Fatal("not allocated on s1")
	}
	s := req.Spec
	if s.BlockSize != 4096 || s.WalSizeBytes != DefaultWALSize || s.ReplicationFactor != 1 || s.Durability != blockpb.Durability_DURABILITY_SYNC {
		t.Fatalf("defaults not filled: %v", s)
	}
	c := req.Config
	if c.Epoch != 1 || c.PrimaryServerId != "s1" || len(c.Members) != 1 || c.Members[0].Role != blockpb.Role_ROLE_PRIMARY || c.Members[0].Server.GrpcAddress != f.addr || c.Reason != "create" {
		t.Fatalf("allocated config %v", c)
	}
	if info.Config.Epoch != 1 || info.IscsiIqn != "iqn.2026-11.io.weedblock:db1" || info.IscsiPortal != "127.0.0.1:3260" {
		t.Fatalf("info %v", info)
	}
	// The NBD listener is 0.0.0.0: the URI uses the server's gRPC host.
	if info.NbdUri != "nbd://127.0.0.1:10809/db1" {
		t.Fatalf("nbd uri %q", info.NbdUri)
	}
	if len(info.Alive) != 1 || !info.Alive[0] || info.State != StateAssigning {
		t.Fatalf("fresh volume alive=%v state=%q", info.Alive, info.State)
	}
}

func TestCreateRF3DistinctRacks(t *testing.T) {
	h := newHarness(t, nil)
	h.server("a", "r1", 100*gib)
	h.server("b", "r1", 90*gib)
	h.server("c", "r2", 10*gib)
	h.server("d", "r3", 5*gib)
	info, err := h.create(&blockpb.VolumeSpec{Name: "q", SizeBytes: 1 << 30, ReplicationFactor: 3, Durability: blockpb.Durability_DURABILITY_QUORUM})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(memberIDs(info.Config), ","); got != "a,c,d" {
		t.Fatalf("members %s, want a,c,d", got)
	}
	for _, id := range []string{"a", "c", "d"} {
		r := h.vols[id].allocated["q"]
		if r == nil {
			t.Fatalf("not allocated on %s", id)
		}
		if want := roleOf(info.Config, id); r.Config.Members[0].Server.ServerId != "a" || want == blockpb.Role_ROLE_NONE {
			t.Fatalf("config on %s: %v", id, r.Config)
		}
	}
	if h.vols["b"].hasVolume("q") {
		t.Fatal("allocated on b")
	}
}

func TestCreateRollsBackOnAllocateFailure(t *testing.T) {
	h := newHarness(t, nil)
	a, _ := h.server("a", "r1", 100*gib)
	b, _ := h.server("b", "r2", 50*gib)
	b.allocErr = status.Error(codes.ResourceExhausted, "disk full")
	_, err := h.create(spec("v", 1<<20, 2))
	wantCode(t, err, codes.ResourceExhausted, "allocate on b: disk full")
	if a.hasVolume("v") {
		t.Fatal("a keeps its copy after the rollback")
	}
	if d := a.deleteCalls(); len(d) != 1 || d[0].Name != "v" || !d[0].Force || d[0].Epoch != 1 {
		t.Fatalf("rollback deletes on a: %v", d)
	}
	_, err = h.lookup("v")
	wantCode(t, err, codes.NotFound)
	h.stop()
	h.start()
	_, err = h.lookup("v")
	wantCode(t, err, codes.NotFound)
	// The name is usable again, above the failed epoch.
	b.allocErr = nil
	h.connect(a, "dc1", "r1", 100*gib).beat()
	h.connect(b, "dc1", "r2", 50*gib).beat()
	info, err := h.create(spec("v", 1<<20, 2))
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.Epoch != 2 {
		t.Fatalf("re-created after rollback at epoch %d, want 2", info.Config.Epoch)
	}
}

func TestCreateConcurrentSameName(t *testing.T) {
	h := newHarness(t, nil)
	f, _ := h.server("a", "r1", 100*gib)
	release := make(chan struct{})
	f.onAlloc = func(*blockpb.AllocateVolumeRequest) { <-release }
	errc := make(chan error, 1)
	go func() {
		_, err := h.create(spec("v", 1<<20, 1))
		errc <- err
	}()
	eventually(t, "first create pending", func() bool {
		h.m.mu.Lock()
		defer h.m.mu.Unlock()
		return h.m.pending["v"] == stateCreating
	})
	_, err := h.create(spec("v", 1<<20, 1))
	wantCode(t, err, codes.AlreadyExists)
	info, err := h.lookup("v")
	if err != nil || info.State != StateCreating {
		t.Fatalf("lookup during create: %v %v", info.GetState(), err)
	}
	wantCode(t, h.del("v", true), codes.FailedPrecondition, "is creating")
	close(release)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func TestDelete(t *testing.T) {
	h := newHarness(t, nil)
	f, hb := h.server("a", "r1", 100*gib)
	if _, err := h.create(spec("v", 1<<20, 1)); err != nil {
		t.Fatal(err)
	}
	hb.beat(&blockpb.VolumeReport{Name: "v", Epoch: 1, Role: blockpb.Role_ROLE_PRIMARY, AttachedSessions: 2})
	wantCode(t, h.del("v", false), codes.FailedPrecondition, `volume "v" has 2 attached sessions on a`)
	if !f.hasVolume("v") || len(f.deleteCalls()) != 0 {
		t.Fatal("refused delete reached the server")
	}
	// The server refuses too (a session attached meanwhile): nothing dropped.
	f.deleteErr = status.Error(codes.FailedPrecondition, "attached")
	hb.beat(&blockpb.VolumeReport{Name: "v", Epoch: 1, Role: blockpb.Role_ROLE_PRIMARY})
	wantCode(t, h.del("v", false), codes.FailedPrecondition, "delete \"v\" on a: attached")
	if _, err := h.lookup("v"); err != nil {
		t.Fatalf("volume gone after a refused delete: %v", err)
	}
	f.deleteErr = nil
	hb.beat(&blockpb.VolumeReport{Name: "v", Epoch: 1, Role: blockpb.Role_ROLE_PRIMARY, AttachedSessions: 1})
	if err := h.del("v", true); err != nil {
		t.Fatal(err)
	}
	if d := f.deleteCalls(); len(d) != 1 || !d[0].Force || d[0].Epoch != 1 {
		t.Fatalf("server deletes %v", d)
	}
	_, err := h.lookup("v")
	wantCode(t, err, codes.NotFound)
	// Until the server stops reporting it, each heartbeat says delete.
	if resp := hb.beat(&blockpb.VolumeReport{Name: "v", Epoch: 1}); strings.Join(resp.Deletes, ",") != "v" {
		t.Fatalf("deletes %v", resp.Deletes)
	}
	h.stop()
	h.start()
	_, err = h.lookup("v")
	wantCode(t, err, codes.NotFound)
}

// A member that is down when the volume is deleted gets the delete through
// its heartbeat later; a new volume of the same name goes elsewhere, above
// the old epoch, and the old copy is recognised as stale.
func TestDeleteWhileServerDown(t *testing.T) {
	h := newHarness(t, nil)
	a, hbA := h.server("a", "r1", 100*gib)
	_, hbB := h.server("b", "r2", 50*gib)
	if _, err := h.create(spec("v", 1<<20, 1)); err != nil {
		t.Fatal(err)
	}
	hbA.beat(&blockpb.VolumeReport{Name: "v", Epoch: 1, Role: blockpb.Role_ROLE_PRIMARY})
	a.srv.Stop() // a's block service is gone (its heartbeat stream too, below)
	hbA.close()
	if err := h.del("v", false); err != nil {
		t.Fatalf("delete with the member down: %v", err)
	}
	hbB.beat()
	info, err := h.create(spec("v", 1<<20, 1))
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.PrimaryServerId != "b" || info.Config.Epoch != 2 {
		t.Fatalf("re-created on %s at epoch %d, want b at 2", info.Config.PrimaryServerId, info.Config.Epoch)
	}
	// a comes back still holding the epoch-1 copy: it is told to delete it
	// and gets no assignment.
	hbA2 := h.connect(a, "dc1", "r1", 100*gib)
	resp := hbA2.beat(&blockpb.VolumeReport{Name: "v", Epoch: 1, Role: blockpb.Role_ROLE_PRIMARY})
	if strings.Join(resp.Deletes, ",") != "v" || len(resp.Assignments) != 0 {
		t.Fatalf("returning server: deletes %v assignments %v", resp.Deletes, resp.Assignments)
	}
	// A server still holding a copy is not chosen for that name.
	h.m.mu.Lock()
	holds := h.m.holdsCopyLocked("a", "v")
	h.m.mu.Unlock()
	if !holds {
		t.Fatal("a's stale copy not tracked")
	}
}

func TestEpochsSurviveMasterRestart(t *testing.T) {
	h := newHarness(t, nil)
	h.server("a", "r1", 100*gib)
	if _, err := h.create(spec("v", 1<<20, 1)); err != nil {
		t.Fatal(err)
	}
	// Raise the epoch (as a failover would) and restart.
	h.m.mu.Lock()
	next := proto.Clone(h.m.reg.get("v").config).(*blockpb.EpochConfig)
	next.Epoch = 5
	err := h.m.reg.setConfig("v", next)
	h.m.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	h.stop()
	h.start()
	info, err := h.lookup("v")
	if err != nil || info.Config.Epoch != 5 || len(info.History) != 1 || info.History[0].Epoch != 1 {
		t.Fatalf("after restart: %v %v", info, err)
	}
	h.connect(h.vols["a"], "dc1", "r1", 100*gib).beat()
	if err := h.del("v", true); err != nil {
		t.Fatal(err)
	}
	h.stop()
	h.start()
	h.connect(h.vols["a"], "dc1", "r1", 100*gib).beat()
	info, err = h.create(spec("v", 1<<20, 1))
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.Epoch != 6 {
		t.Fatalf("re-created at epoch %d, want 6", info.Config.Epoch)
	}
}

func TestNotLeader(t *testing.T) {
	h := newHarness(t, nil)
	_, hb := h.server("a", "r1", 100*gib)
	if _, err := h.create(spec("v", 1<<20, 1)); err != nil {
		t.Fatal(err)
	}
	h.leader.Store(false)
	ctx := context.Background()
	_, err := h.create(spec("w", 1<<20, 1))
	wantCode(t, err, codes.FailedPrecondition, "not leader; leader is m2:9333")
	_, err = h.lookup("v")
	wantCode(t, err, codes.FailedPrecondition, "not leader; leader is m2:9333")
	_, err = h.client.ListVolumes(ctx, &blockpb.ListVolumesRequest{})
	wantCode(t, err, codes.FailedPrecondition, "not leader; leader is m2:9333")
	wantCode(t, h.del("v", true), codes.FailedPrecondition, "not leader; leader is m2:9333")

	// A heartbeat is answered with the leader, no lease, nothing to do, and
	// the stream ends.
	resp := hb.beat(&blockpb.VolumeReport{Name: "ghost", Epoch: 1})
	if resp.Leader != "m2:9333" || resp.LeaseMs != 0 || len(resp.Deletes) != 0 || len(resp.Assignments) != 0 {
		t.Fatalf("follower answer %v", resp)
	}
	_, err = hb.stream.Recv()
	wantCode(t, err, codes.FailedPrecondition, "not leader")
	if !h.vols["a"].hasVolume("v") || len(h.vols["a"].deleteCalls()) != 0 {
		t.Fatal("follower touched the volume")
	}

	h.leader.Store(true)
	if _, err := h.lookup("v"); err != nil {
		t.Fatalf("leader again: %v", err)
	}
}

func TestCloseEndsStreams(t *testing.T) {
	h := newHarness(t, nil)
	_, hb := h.server("a", "r1", 100*gib)
	done := make(chan error, 1)
	go func() { done <- h.m.Close() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return with a stream open")
	}
	_, err := hb.stream.Recv()
	wantCode(t, err, codes.Unavailable, "shutting down")
	if err := h.m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_, err = h.lookup("v")
	wantCode(t, err, codes.Unavailable, "shutting down")
	st, err := h.client.Heartbeat(context.Background())
	if err == nil {
		_, err = st.Recv()
	}
	wantCode(t, err, codes.Unavailable)
}

func TestNewOptions(t *testing.T) {
	dial := (&harness{}).dial
	if _, err := New(Options{DialVolume: dial}); err == nil {
		t.Fatal("New without Dir")
	}
	if _, err := New(Options{Dir: t.TempDir()}); err == nil {
		t.Fatal("New without DialVolume")
	}
	if _, err := New(Options{Dir: t.TempDir(), DialVolume: dial, Pulse: time.Second, Lease: time.Second}); err == nil {
		t.Fatal("New with lease <= pulse")
	}
	m, err := New(Options{Dir: t.TempDir(), DialVolume: dial})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.opts.Pulse != DefaultPulse || m.opts.Lease != DefaultLease || m.opts.Margin != DefaultMargin {
		t.Fatalf("defaults %v %v %v", m.opts.Pulse, m.opts.Lease, m.opts.Margin)
	}
}

// DialConn: the master dials per call and closes the connection; Register
// and TopologyFunc plug into a launcher.
func TestDialConnAndTopologyFunc(t *testing.T) {
	var mu sync.Mutex
	var conns []*grpc.ClientConn
	topo := TopologyFunc(func() []TopologyServer {
		return []TopologyServer{{ID: "a", Rack: "r1", FreeBytes: 10 * gib, Alive: true}}
	})
	h := newHarness(t, func(o *Options) {
		o.DialVolume = nil
		o.Topology = topo
		o.DialConn = func(ctx context.Context, addr string) (*grpc.ClientConn, error) {
			cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err == nil {
				mu.Lock()
				conns = append(conns, cc)
				mu.Unlock()
			}
			return cc, err
		}
	})
	f, _ := h.server("a", "", 0)
	if _, err := h.create(spec("v", 1<<20, 1)); err != nil {
		t.Fatal(err)
	}
	if !f.hasVolume("v") {
		t.Fatal("not allocated")
	}
	if err := h.del("v", false); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(conns) != 2 {
		t.Fatalf("%d connections dialed, want 2", len(conns))
	}
	for i, cc := range conns {
		if st := cc.GetState(); st != connectivity.Shutdown {
			t.Fatalf("connection %d left %v", i, st)
		}
	}
	srv := grpc.NewServer()
	h.m.Register(srv)
	if _, ok := srv.GetServiceInfo()["weedblock.BlockMaster"]; !ok {
		t.Fatalf("Register: services %v", srv.GetServiceInfo())
	}
}

func TestNotLeaderNoLeaderKnown(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.Leader = func() string { return "" } })
	_, hb := h.server("a", "r1", gib)
	h.leader.Store(false)
	_, err := h.lookup("v")
	wantCode(t, err, codes.FailedPrecondition, "not leader; no leader known")
	resp := hb.beat()
	if resp.Leader != "" || resp.LeaseMs != 0 {
		t.Fatalf("follower answer %v", resp)
	}
	_, err = hb.stream.Recv()
	wantCode(t, err, codes.FailedPrecondition, "not leader; no leader known")
}

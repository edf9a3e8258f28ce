package blockshell

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// fakeMaster is a BlockMaster served over real gRPC on loopback: it keeps
// volumes in a map, or answers every RPC with err when set.
type fakeMaster struct {
	blockpb.UnimplementedBlockMasterServer
	mu      sync.Mutex
	addr    string
	err     error
	vols    map[string]*blockpb.VolumeInfo
	creates []*blockpb.VolumeSpec
	deletes []*blockpb.DeleteVolumeRequest
	repairs []*blockpb.RepairVolumeRequest
}

func (f *fakeMaster) CreateVolume(_ context.Context, r *blockpb.CreateVolumeRequest) (*blockpb.CreateVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	f.creates = append(f.creates, r.GetSpec())
	if _, ok := f.vols[r.GetSpec().GetName()]; ok {
		return nil, status.Errorf(codes.AlreadyExists, "volume %q already exists", r.GetSpec().GetName())
	}
	info := sampleInfo(r.GetSpec().GetName())
	info.Spec = r.GetSpec()
	f.vols[r.GetSpec().GetName()] = info
	return &blockpb.CreateVolumeResponse{Volume: info}, nil
}

func (f *fakeMaster) DeleteVolume(_ context.Context, r *blockpb.DeleteVolumeRequest) (*blockpb.DeleteVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	f.deletes = append(f.deletes, r)
	if _, ok := f.vols[r.GetName()]; !ok {
		return nil, status.Errorf(codes.NotFound, "volume %q not found", r.GetName())
	}
	delete(f.vols, r.GetName())
	return &blockpb.DeleteVolumeResponse{}, nil
}

func (f *fakeMaster) LookupVolume(_ context.Context, r *blockpb.LookupVolumeRequest) (*blockpb.LookupVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	info, ok := f.vols[r.GetName()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "volume %q not found", r.GetName())
	}
	return &blockpb.LookupVolumeResponse{Volume: info}, nil
}

func (f *fakeMaster) ListVolumes(context.Context, *blockpb.ListVolumesRequest) (*blockpb.ListVolumesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	resp := &blockpb.ListVolumesResponse{}
	for _, n := range []string{"alpha", "beta", "db1", "v1"} {
		if v, ok := f.vols[n]; ok {
			resp.Volumes = append(resp.Volumes, v)
		}
	}
	return resp, nil
}

func (f *fakeMaster) PromoteVolume(_ context.Context, r *blockpb.PromoteVolumeRequest) (*blockpb.PromoteVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	info, ok := f.vols[r.GetName()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "volume %q not found", r.GetName())
	}
	if !strings.HasPrefix(r.GetToServerId(), "10.0.0.") {
		return nil, status.Errorf(codes.NotFound, "unknown server %q", r.GetToServerId())
	}
	info = proto.Clone(info).(*blockpb.VolumeInfo)
	info.History = append(info.History, info.Config)
	info.Config = &blockpb.EpochConfig{Epoch: info.Config.GetEpoch() + 1, PrimaryServerId: r.GetToServerId(),
		Reason: "promote", MayHaveLostWrites: r.GetForce(), Members: info.Config.GetMembers()}
	info.Failovers++
	if r.GetForce() {
		info.LossyEpoch = info.Config.Epoch
		info.Warning = "forced promote: writes the old primary had not replicated may be lost"
	}
	f.vols[r.GetName()] = info
	return &blockpb.PromoteVolumeResponse{Volume: info}, nil
}

func (f *fakeMaster) RepairVolume(_ context.Context, r *blockpb.RepairVolumeRequest) (*blockpb.RepairVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	f.repairs = append(f.repairs, proto.Clone(r).(*blockpb.RepairVolumeRequest))
	info, ok := f.vols[r.GetName()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "volume %q not found", r.GetName())
	}
	primary := info.GetConfig().GetPrimaryServerId()
	switch id := r.GetReplicaServerId(); {
	case id == primary:
		return nil, status.Errorf(codes.FailedPrecondition, "%q is the primary of %q: promote first (block.promote -name=%s -to=ANOTHER_MEMBER), then repair it", id, r.GetName(), r.GetName())
	case id != "" && !strings.HasPrefix(id, "10.0.0."):
		return nil, status.Errorf(codes.InvalidArgument, "unknown replica %q: not a member of %q and no server of that id reports a copy", id, r.GetName())
	}
	resp := &blockpb.RepairVolumeResponse{}
	for _, mem := range info.GetConfig().GetMembers() {
		id := mem.GetServer().GetServerId()
		if id == primary || (r.GetReplicaServerId() != "" && id != r.GetReplicaServerId()) {
			continue
		}
		if r.GetRebuild() {
			resp.Repairing = append(resp.Repairing, id)
		} else {
			resp.InSync = append(resp.InSync, id)
		}
	}
	info = proto.Clone(info).(*blockpb.VolumeInfo)
	if len(resp.Repairing) > 0 {
		info.History = append(info.History, info.Config)
		cfg := proto.Clone(info.Config).(*blockpb.EpochConfig)
		cfg.Epoch++
		cfg.Reason = "repair: rebuild requested (" + strings.Join(resp.Repairing, ", ") + ")"
		cfg.Members = cfg.Members[:1]
		info.Config = cfg
		info.State = "recovering"
		info.Recoveries = []*blockpb.RecoveryProgress{{ServerId: resp.Repairing[0], Phase: "rebuild", Plan: "rebuild: full (forced by block.repair)",
			BytesDone: 64 << 20, BytesTotal: 256 << 20, EtaMs: 12_000, TargetLsn: 1234, AchievedLsn: 0, Attempt: 1, ForcedRebuild: true}}
	}
	f.vols[r.GetName()] = info
	resp.Volume = info
	return resp, nil
}

// startFake serves a fakeMaster on 127.0.0.1 until the test ends.
func startFake(t *testing.T) *fakeMaster {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeMaster{addr: l.Addr().String(), vols: map[string]*blockpb.VolumeInfo{}}
	s := grpc.NewServer()
	blockpb.RegisterBlockMasterServer(s, f)
	done := make(chan struct{})
	go func() { defer close(done); s.Serve(l) }()
	t.Cleanup(func() { s.Stop(); <-done })
	return f
}

// envFor is an Env whose shell is connected to master (a gRPC address);
// calls counts the addresses dialled.
func envFor(t *testing.T, master string, calls *[]string) Env {
	return Env{
		Master: func(context.Context) (string, error) { return master, nil },
		Call: func(ctx context.Context, addr string, fn func(blockpb.BlockMasterClient) error) error {
			if calls != nil {
				*calls = append(*calls, addr)
			}
			cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return err
			}
			defer cc.Close()
			return fn(blockpb.NewBlockMasterClient(cc))
		},
		Now: func() time.Time { return time.UnixMilli(1_800_000_000_000) },
	}
}

// sampleInfo is a volume as a master reports it: rf=2 with LSNs, a lease
// and attach addresses.
func sampleInfo(name string) *blockpb.VolumeInfo {
	srv := func(id, rack string) *blockpb.ServerEndpoints {
		return &blockpb.ServerEndpoints{ServerId: id, DataCenter: "dc1", Rack: rack}
	}
	return &blockpb.VolumeInfo{
		Spec: &blockpb.VolumeSpec{Name: name, SizeBytes: 256 << 20, BlockSize: 4096, WalSizeBytes: 64 << 20,
			ReplicationFactor: 2, Durability: blockpb.Durability_DURABILITY_SYNC},
		Config: &blockpb.EpochConfig{Epoch: 7, PrimaryServerId: "10.0.0.1:8080", Reason: "failover",
			Members: []*blockpb.Member{
				{Server: srv("10.0.0.1:8080", "r1"), Role: blockpb.Role_ROLE_PRIMARY},
				{Server: srv("10.0.0.2:8080", "r2"), Role: blockpb.Role_ROLE_REPLICA},
			}},
		History: []*blockpb.EpochConfig{{Epoch: 6, PrimaryServerId: "10.0.0.2:8080", Reason: "create"}},
		Reports: []*blockpb.VolumeReport{
			{Name: name, Epoch: 7, Role: blockpb.Role_ROLE_PRIMARY, HeadLsn: 1234, DurableLsn: 1200, CheckpointLsn: 1100,
				TailLsn: 900, WalUsedBytes: 3 << 20, Healthy: true, LeaseRemainingMs: 2500, AttachedSessions: 2, SizeBytes: 256 << 20},
			{Name: name},
		},
		Alive:               []bool{true, false},
		MemberLag:           []*blockpb.ReplicaState{{}, {ServerId: "10.0.0.2:8080", State: "catching-up", LagLsn: 34, LagBytes: 136 << 10}},
		Failovers:           1,
		LastFailoverPauseMs: 4200,
		LeaseExpiresUnixMs:  1_800_000_003_000,
		CreatedUnixMs:       1_700_000_000_000,
		NbdUri:              "nbd://10.0.0.1:10809/" + name,
		IscsiPortal:         "10.0.0.1:3260",
		IscsiIqn:            "iqn.2026-11.io.weedblock:" + name,
		State:               "degraded",
	}
}

func TestRunCreateStatusListDelete(t *testing.T) {
	f := startFake(t)
	env := envFor(t, f.addr, nil)
	ctx := context.Background()
	var out bytes.Buffer

	if err := Run(ctx, env, "block.create", []string{"-name=db1", "-size=256MiB", "-rf=2"}, &out); err != nil {
		t.Fatalf("create: %v", err)
	}
	if len(f.creates) != 1 || f.creates[0].GetSizeBytes() != 256<<20 || f.creates[0].GetReplicationFactor() != 2 {
		t.Fatalf("master got %v", f.creates)
	}
	if err := containsAll(out.String(), "created block volume db1: 256 MiB, rf=2, durability sync, epoch 7, primary 10.0.0.1:8080",
		"nbd://10.0.0.1:10809/db1", "iqn.2026-11.io.weedblock:db1"); err != nil {
		t.Fatalf("create output: %v\n%s", err, out.String())
	}

	out.Reset()
	err := Run(ctx, env, "block.create", []string{"-name=db1", "-size=256MiB"}, &out)
	var e *Error
	if !errors.As(err, &e) || e.Code != codes.AlreadyExists || out.Len() != 0 ||
		!strings.Contains(err.Error(), "block.create db1: already exists") || !strings.Contains(err.Error(), "block.status -name=db1") {
		t.Fatalf("duplicate: %v (output %q)", err, out.String())
	}

	out.Reset()
	if err := Run(ctx, env, "block.status", []string{"db1"}, &out); err != nil {
		t.Fatalf("status: %v", err)
	}
	if err := containsAll(out.String(), "block volume db1", "epoch:       7 (failover), primary 10.0.0.1:8080",
		"lease:       valid for 3s more", "state:       degraded", "1234", "1200", "1100", " 900 ", "3 MiB", "TAIL",
		"catching-up, lag 34 LSNs (136 KiB)", "failovers:   1 (last one: 4.2s without a serving primary)",
		"10.0.0.1:8080 (dc1/r1)", "primary", "replica", "not reported yet", " 2.5s ",
		"sudo nbd-client -N db1 10.0.0.1 10809 /dev/nbd0",
		"iscsiadm -m node -T iqn.2026-11.io.weedblock:db1 -p 10.0.0.1:3260 --login",
		"qemu-img info iscsi://10.0.0.1:3260/iqn.2026-11.io.weedblock:db1/0"); err != nil {
		t.Fatalf("status output: %v\n%s", err, out.String())
	}

	out.Reset()
	if err := Run(ctx, env, "block.status", []string{"-name=db1", "-json"}, &out); err != nil {
		t.Fatal(err)
	}
	var v VolumeView
	if err := json.Unmarshal(out.Bytes(), &v); err != nil {
		t.Fatalf("status -json: %v\n%s", err, out.String())
	}
	if v.Name != "db1" || v.Epoch != 7 || len(v.Replicas) != 2 || v.Replicas[0].HeadLSN != 1234 ||
		v.Replicas[0].Role != "primary" || !v.Replicas[0].Alive || v.Replicas[1].Alive || v.Replicas[1].Reported ||
		v.Attach.ISCSIIQN != "iqn.2026-11.io.weedblock:db1" || len(v.Attach.Examples) != 4 ||
		len(v.History) != 2 || v.History[0].Epoch != 6 || v.History[1].Epoch != 7 || v.Replicas[0].AttachedSessions != 2 {
		t.Fatalf("status -json decoded: %+v", v)
	}

	Run(ctx, env, "block.create", []string{"-name=alpha", "-size=1G", "-durability=async"}, &bytes.Buffer{})
	out.Reset()
	if err := Run(ctx, env, "block.list", nil, &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "NAME") || !strings.HasPrefix(lines[1], "alpha") ||
		!strings.Contains(lines[1], "1 GiB") || !strings.Contains(lines[1], "async") ||
		!strings.HasPrefix(lines[2], "db1") || !strings.Contains(lines[2], "256 MiB") || lines[3] != "2 block volume(s)" {
		t.Fatalf("list:\n%s", out.String())
	}
	out.Reset()
	if err := Run(ctx, env, "block.list", []string{"-json"}, &out); err != nil {
		t.Fatal(err)
	}
	var list struct{ Volumes []VolumeView }
	if err := json.Unmarshal(out.Bytes(), &list); err != nil || len(list.Volumes) != 2 || list.Volumes[0].Durability != "async" {
		t.Fatalf("list -json: %v %+v", err, list)
	}

	out.Reset()
	if err := Run(ctx, env, "block.delete", []string{"-name=db1", "-force"}, &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != "deleted block volume db1\n" || len(f.deletes) != 1 || !f.deletes[0].GetForce() {
		t.Fatalf("delete: %q %v", out.String(), f.deletes)
	}
	err = Run(ctx, env, "block.delete", []string{"-name=db1"}, &bytes.Buffer{})
	if !errors.As(err, &e) || e.Code != codes.NotFound || !strings.Contains(err.Error(), "block.delete db1: no such block volume") {
		t.Fatalf("delete again: %v", err)
	}
	err = Run(ctx, env, "block.status", []string{"-name=db1"}, &bytes.Buffer{})
	if !errors.As(err, &e) || e.Code != codes.NotFound || !strings.Contains(err.Error(), "block.list shows") {
		t.Fatalf("status of a deleted volume: %v", err)
	}
}

func TestRunEmptyList(t *testing.T) {
	f := startFake(t)
	var out bytes.Buffer
	if err := Run(context.Background(), envFor(t, f.addr, nil), "block.list", nil, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "no block volumes") {
		t.Fatalf("empty list: %q", out.String())
	}
	out.Reset()
	Run(context.Background(), envFor(t, f.addr, nil), "block.list", []string{"-json"}, &out)
	if strings.TrimSpace(out.String()) != `{
  "volumes": []
}` {
		t.Fatalf("empty list -json: %q", out.String())
	}
}

func TestRunUsageErrorsSendNothing(t *testing.T) {
	calls := []string{}
	env := envFor(t, "127.0.0.1:1", &calls)
	for _, c := range []struct {
		cmd  string
		args []string
	}{
		{"block.create", []string{"-name=x", "-size=nope"}},
		{"block.create", []string{"-name=BAD", "-size=1G"}},
		{"block.status", nil},
		{"block.delete", []string{"-name=a_b"}},
		{"block.list", []string{"-bogus"}},
		{"block.frob", nil},
	} {
		err := Run(context.Background(), env, c.cmd, c.args, &bytes.Buffer{})
		if !errors.Is(err, ErrUsage) {
			t.Errorf("%s %q: %v, want a usage error", c.cmd, c.args, err)
		}
	}
	if len(calls) != 0 {
		t.Fatalf("usage errors reached the master: %v", calls)
	}
}

func TestRunMapsMasterErrors(t *testing.T) {
	f := startFake(t)
	env := envFor(t, f.addr, nil)
	cases := []struct {
		err  error
		code codes.Code
		want []string
	}{
		{status.Error(codes.FailedPrecondition, "not enough block servers: rf=3 needs 3, 2 alive (a, b)"), codes.FailedPrecondition,
			[]string{"not enough block servers", "2 alive", "start more volume servers with -block.dir, or lower -rf"}},
		{status.Error(codes.ResourceExhausted, "not enough space: rf=1 needs 1 servers with 1099511627776 bytes free"), codes.ResourceExhausted,
			[]string{"not enough space", "free space under -block.dir"}},
		{status.Error(codes.InvalidArgument, "size 4097 is not a multiple of the block size 4096"), codes.InvalidArgument,
			[]string{"invalid request: size 4097"}},
		{status.Error(codes.FailedPrecondition, `volume "v" has 1 attached sessions on s1; detach first or use force`), codes.FailedPrecondition,
			[]string{"volume is attached", "use -force"}},
		{status.Error(codes.FailedPrecondition, "not leader; leader is "), codes.FailedPrecondition,
			[]string{"master " + f.addr + " is not the leader", "run weed shell against the leader"}},
		{status.Error(codes.Unimplemented, "unknown service weedblock.BlockMaster"), codes.Unimplemented,
			[]string{"has no block service", "weedblock's weed master"}},
		{status.Error(codes.Unavailable, "block master is shutting down"), codes.Unavailable,
			[]string{"master " + f.addr + " is unavailable", "shutting down"}},
		{status.Error(codes.Internal, "disk on fire"), codes.Internal, []string{"failed (Internal): disk on fire"}},
	}
	for _, tc := range cases {
		f.mu.Lock()
		f.err = tc.err
		f.mu.Unlock()
		var out bytes.Buffer
		err := Run(context.Background(), env, "block.create", []string{"-name=v", "-size=1G"}, &out)
		var e *Error
		if !errors.As(err, &e) || e.Code != tc.code || out.Len() != 0 {
			t.Errorf("%v: got %v (output %q)", tc.err, err, out.String())
			continue
		}
		if err := containsAll(err.Error(), tc.want...); err != nil {
			t.Errorf("%v: message %q: %v", tc.err, e.Error(), err)
		}
	}
}

func TestRunFollowsLeaderRedirectOnce(t *testing.T) {
	leader := startFake(t)
	follower := startFake(t)
	follower.err = status.Errorf(codes.FailedPrecondition, "not leader; leader is %s", leader.addr)
	var calls []string
	var out bytes.Buffer
	if err := Run(context.Background(), envFor(t, follower.addr, &calls), "block.create", []string{"-name=v1", "-size=8MiB"}, &out); err != nil {
		t.Fatalf("create through a follower: %v", err)
	}
	if len(calls) != 2 || calls[0] != follower.addr || calls[1] != leader.addr || len(leader.creates) != 1 {
		t.Fatalf("calls %v, leader creates %d", calls, len(leader.creates))
	}
	// Two followers pointing at each other: one hop, then a clear error.
	other := startFake(t)
	other.err = status.Errorf(codes.FailedPrecondition, "not leader; leader is %s", follower.addr)
	follower.err = status.Errorf(codes.FailedPrecondition, "not leader; leader is %s", other.addr)
	calls = nil
	err := Run(context.Background(), envFor(t, follower.addr, &calls), "block.list", nil, &out)
	var e *Error
	if !errors.As(err, &e) || !strings.Contains(err.Error(), "is not the leader") || len(calls) != 2 {
		t.Fatalf("redirect loop: %v after %v", err, calls)
	}
}

func TestRunUnreachableMasterTimesOut(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	env := envFor(t, addr, nil)
	start := time.Now()
	err = Run(context.Background(), env, "block.list", []string{"-timeout=2s"}, &bytes.Buffer{})
	var e *Error
	if !errors.As(err, &e) || (e.Code != codes.Unavailable && e.Code != codes.DeadlineExceeded) ||
		!strings.Contains(err.Error(), addr) {
		t.Fatalf("unreachable master: %v", err)
	}
	if time.Since(start) > 30*time.Second {
		t.Fatalf("took %v", time.Since(start))
	}
	env.Master = func(context.Context) (string, error) { return "", nil }
	if err := Run(context.Background(), env, "block.list", nil, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "not connected") {
		t.Fatalf("no master: %v", err)
	}
}

func TestViewOfMinimalInfo(t *testing.T) {
	// A volume just created: no reports, no lease, no listeners.
	info := &blockpb.VolumeInfo{
		Spec:            &blockpb.VolumeSpec{Name: "v", SizeBytes: 4096, BlockSize: 4096, ReplicationFactor: 1, Durability: blockpb.Durability_DURABILITY_ASYNC},
		Config:          &blockpb.EpochConfig{Epoch: 1, PrimaryServerId: "s1", Members: []*blockpb.Member{{Server: &blockpb.ServerEndpoints{ServerId: "s1"}, Role: blockpb.Role_ROLE_PRIMARY}}},
		State:           "assigning",
		FailoverBlocked: "no member of epoch 1 is alive",
	}
	v := NewVolumeView(info)
	var out bytes.Buffer
	if err := WriteStatus(&out, v, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := containsAll(out.String(), "none granted yet", "not reported yet", "no NBD or iSCSI listener", "async: a failover may lose",
		"failover:    blocked: no member of epoch 1 is alive"); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if len(v.Attach.Examples) != 0 || len(v.Replicas) != 1 || v.Replicas[0].Reported {
		t.Fatalf("view: %+v", v)
	}
	// An expired lease says so.
	if s := leaseText(1000, time.UnixMilli(3500)); !strings.Contains(s, "expired 2.5s ago") {
		t.Fatalf("expired lease: %q", s)
	}
}

func TestRunPromote(t *testing.T) {
	f := startFake(t)
	env := envFor(t, f.addr, nil)
	ctx := context.Background()
	if err := Run(ctx, env, "block.create", []string{"-name=db1", "-size=8MiB", "-rf=2"}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := Run(ctx, env, "block.promote", []string{"-name=db1", "-to=10.0.0.2:8080"}, &out); err != nil {
		t.Fatalf("promote: %v", err)
	}
	if err := containsAll(out.String(), "promoted 10.0.0.2:8080 to primary of db1 in epoch 8", "epoch:       8 (promote)"); err != nil {
		t.Fatalf("promote output: %v\n%s", err, out.String())
	}
	if strings.Contains(out.String(), "WARNING") {
		t.Fatalf("a checked promote warns:\n%s", out.String())
	}
	out.Reset()
	if err := Run(ctx, env, "block.promote", []string{"-name=db1", "-to=10.0.0.1:8080", "-force", "-json"}, &out); err != nil {
		t.Fatal(err)
	}
	var v VolumeView
	if err := json.Unmarshal(out.Bytes(), &v); err != nil {
		t.Fatal(err)
	}
	if v.Epoch != 9 || v.Primary != "10.0.0.1:8080" || v.LossyEpoch != 9 || v.Warning == "" || v.Failovers != 3 ||
		!v.History[len(v.History)-1].MayHaveLostWrites || v.History[len(v.History)-2].MayHaveLostWrites {
		t.Fatalf("forced promote -json: %+v", v)
	}
	out.Reset()
	Run(ctx, env, "block.status", []string{"db1"}, &out)
	if !strings.Contains(out.String(), "WARNING:     forced promote") {
		t.Fatalf("status after a forced promote does not warn:\n%s", out.String())
	}

	err := Run(ctx, env, "block.promote", []string{"-name=db1", "-to=nowhere:1"}, &bytes.Buffer{})
	var e *Error
	if !errors.As(err, &e) || e.Code != codes.NotFound || !containsOK(err.Error(), "block.promote db1: unknown server", "nowhere:1", "block.status -name=db1 lists") {
		t.Fatalf("unknown server: %v", err)
	}
	for _, args := range [][]string{{"-name=db1"}, {"-to=x"}, {"-name=db1", "-to=x", "y"}} {
		if err := Run(ctx, env, "block.promote", args, &bytes.Buffer{}); !errors.Is(err, ErrUsage) {
			t.Errorf("block.promote %q: %v, want a usage error", args, err)
		}
	}
}

func containsOK(s string, subs ...string) bool { return containsAll(s, subs...) == nil }

func TestRunRepair(t *testing.T) {
	f := startFake(t)
	env := envFor(t, f.addr, nil)
	ctx := context.Background()
	if err := Run(ctx, env, "block.create", []string{"-name=db1", "-size=256MiB", "-rf=2"}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	// Members in sync are left alone without -rebuild.
	var out bytes.Buffer
	if err := Run(ctx, env, "block.repair", []string{"-name=db1"}, &out); err != nil {
		t.Fatalf("repair: %v", err)
	}
	if err := containsAll(out.String(), "nothing to repair on db1: 10.0.0.2:8080 in sync with the primary 10.0.0.1:8080", "-rebuild",
		"block volume db1"); err != nil {
		t.Fatalf("repair output: %v\n%s", err, out.String())
	}
	if len(f.repairs) != 1 || f.repairs[0].GetReplicaServerId() != "" || f.repairs[0].GetRebuild() {
		t.Fatalf("master got %v", f.repairs)
	}
	// -rebuild of one replica: the master drops it from the epoch, the
	// primary rebuilds it; status shows the recovery.
	out.Reset()
	if err := Run(ctx, env, "block.repair", []string{"-name=db1", "-replica=10.0.0.2:8080", "-rebuild"}, &out); err != nil {
		t.Fatalf("repair -rebuild: %v", err)
	}
	if r := f.repairs[1]; r.GetReplicaServerId() != "10.0.0.2:8080" || !r.GetRebuild() || r.GetName() != "db1" {
		t.Fatalf("master got %v", r)
	}
	if err := containsAll(out.String(), "repair of db1 on 10.0.0.2:8080 requested: it will be rebuilt in full by the primary",
		"block.status -name=db1", "state:       recovering", "epoch:       8 (repair: rebuild requested (10.0.0.2:8080))",
		"recoveries (by the primary):", "rebuild (forced rebuild)", "64 MiB of 256 MiB (25%)", " 12s ", "0/1234", "(running)",
		"rebuild: full (forced by block.repair)"); err != nil {
		t.Fatalf("repair -rebuild output: %v\n%s", err, out.String())
	}
	out.Reset()
	if err := Run(ctx, env, "block.status", []string{"-name=db1", "-json"}, &out); err != nil {
		t.Fatal(err)
	}
	var v VolumeView
	if err := json.Unmarshal(out.Bytes(), &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Recoveries) != 1 || !v.Recoveries[0].Running || v.Recoveries[0].ServerID != "10.0.0.2:8080" || v.Recoveries[0].BytesTotal != 256<<20 ||
		v.Recoveries[0].EtaMs != 12_000 || !v.Recoveries[0].ForcedRebuild || v.State != "recovering" {
		t.Fatalf("status -json recoveries: %+v", v)
	}
	out.Reset()
	if err := Run(ctx, env, "block.repair", []string{"-name=db1", "-rebuild", "-json"}, &out); err != nil {
		t.Fatal(err)
	}
	var rv RepairView
	if err := json.Unmarshal(out.Bytes(), &rv); err != nil || !rv.Rebuild || rv.Volume.Name != "db1" || rv.InSync == nil || rv.Repairing == nil {
		t.Fatalf("repair -json: %v %+v\n%s", err, rv, out.String())
	}

	// Errors the master gives, rewritten.
	err := Run(ctx, env, "block.repair", []string{"-name=db1", "-replica=10.0.0.1:8080"}, &bytes.Buffer{})
	var e *Error
	if !errors.As(err, &e) || e.Code != codes.FailedPrecondition ||
		!containsOK(err.Error(), "block.repair db1: cannot repair the primary", "promote first", "block.promote -name=db1 -to=ANOTHER_MEMBER") {
		t.Fatalf("repair of the primary: %v", err)
	}
	err = Run(ctx, env, "block.repair", []string{"-name=db1", "-replica=elsewhere:1"}, &bytes.Buffer{})
	if !errors.As(err, &e) || e.Code != codes.InvalidArgument || !containsOK(err.Error(), "block.repair db1: unknown replica", "elsewhere:1", "block.status -name=db1 lists") {
		t.Fatalf("unknown replica: %v", err)
	}
	err = Run(ctx, env, "block.repair", []string{"-name=nope"}, &bytes.Buffer{})
	if !errors.As(err, &e) || e.Code != codes.NotFound || !containsOK(err.Error(), "block.repair nope: no such block volume") {
		t.Fatalf("unknown volume: %v", err)
	}
	f.mu.Lock()
	f.err = status.Error(codes.FailedPrecondition, `volume "db1" has no live primary (a is not alive) to copy from; wait for the failover or block.promote a member`)
	f.mu.Unlock()
	var sink bytes.Buffer
	err = Run(ctx, env, "block.repair", []string{"-name=db1"}, &sink)
	if !errors.As(err, &e) || sink.Len() != 0 || !containsOK(err.Error(), "block.repair db1: no live primary", "a repair copies from the primary") {
		t.Fatalf("no live primary: %v (output %q)", err, sink.String())
	}
}

func TestStatusShowsFinishedRecovery(t *testing.T) {
	info := sampleInfo("db1")
	info.Recoveries = []*blockpb.RecoveryProgress{{ServerId: "10.0.0.3:8080", Phase: "done", Plan: "catch-up from 900 to 1200",
		BytesDone: 3 << 20, BytesTotal: 3 << 20, TargetLsn: 1200, AchievedLsn: 1200, Attempt: 2, LastOutcome: "in-sync", CatchUps: 2, Rebuilds: 1}}
	var out bytes.Buffer
	if err := WriteStatus(&out, NewVolumeView(info), time.UnixMilli(1_800_000_000_000)); err != nil {
		t.Fatal(err)
	}
	if err := containsAll(out.String(), "10.0.0.3:8080", "done", "3 MiB of 3 MiB (100%)", "1200/1200", "in-sync [2 catch-ups, 1 rebuilds done]",
		"catch-up from 900 to 1200"); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if v := NewVolumeView(info); v.Recoveries[0].Running {
		t.Fatal("a finished recovery shows as running")
	}
	// No recoveries: no section.
	out.Reset()
	WriteStatus(&out, NewVolumeView(sampleInfo("db1")), time.Now())
	if strings.Contains(out.String(), "recoveries") {
		t.Fatalf("empty recoveries printed:\n%s", out.String())
	}
}

package blockmaster

import (
	"context"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// fakeClock is a Clock the test moves by hand. With step > 0 every Now
// advances it by step, so successive readings are strictly increasing.
type fakeClock struct {
	mu   sync.Mutex
	t    time.Time
	step time.Duration
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_800_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(c.step)
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// fakeVolume is an in-process BlockVolume service on 127.0.0.1 that records
// what the master asked of it.
type fakeVolume struct {
	blockpb.UnimplementedBlockVolumeServer
	id   string
	addr string
	srv  *grpc.Server

	mu        sync.Mutex
	allocated map[string]*blockpb.AllocateVolumeRequest
	deletes   []*blockpb.DeleteLocalVolumeRequest
	allocErr  error
	deleteErr error
	onAlloc   func(*blockpb.AllocateVolumeRequest)
	onDelete  func(*blockpb.DeleteLocalVolumeRequest)
}

func (f *fakeVolume) AllocateVolume(ctx context.Context, req *blockpb.AllocateVolumeRequest) (*blockpb.AllocateVolumeResponse, error) {
	f.mu.Lock()
	hook, err := f.onAlloc, f.allocErr
	f.mu.Unlock()
	if hook != nil {
		hook(req)
	}
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.allocated[req.GetSpec().GetName()] = proto.Clone(req).(*blockpb.AllocateVolumeRequest)
	return &blockpb.AllocateVolumeResponse{Volume: &blockpb.VolumeReport{Name: req.GetSpec().GetName(), Epoch: req.GetConfig().GetEpoch(), Fenced: true}}, nil
}

func (f *fakeVolume) DeleteVolume(ctx context.Context, req *blockpb.DeleteLocalVolumeRequest) (*blockpb.DeleteLocalVolumeResponse, error) {
	f.mu.Lock()
	hook := f.onDelete
	f.mu.Unlock()
	if hook != nil {
		hook(req)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.deleteErr != nil {
		return nil, f.deleteErr
	}
	f.deletes = append(f.deletes, proto.Clone(req).(*blockpb.DeleteLocalVolumeRequest))
	if _, ok := f.allocated[req.GetName()]; !ok {
		return nil, status.Errorf(codes.NotFound, "no volume %q", req.GetName())
	}
	delete(f.allocated, req.GetName())
	return &blockpb.DeleteLocalVolumeResponse{}, nil
}

func (f *fakeVolume) hasVolume(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.allocated[name] != nil
}

func (f *fakeVolume) deleteCalls() []*blockpb.DeleteLocalVolumeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*blockpb.DeleteLocalVolumeRequest(nil), f.deletes...)
}

// harness runs a Master behind a real gRPC server on 127.0.0.1 and any
// number of fake volume servers.
type harness struct {
	t      *testing.T
	dir    string
	clock  *fakeClock
	leader atomic.Bool
	opts   Options

	m      *Master
	srv    *grpc.Server
	addr   string
	conn   *grpc.ClientConn
	client blockpb.BlockMasterClient

	dialMu sync.Mutex
	conns  map[string]*grpc.ClientConn
	vols   map[string]*fakeVolume
}

const testPulse = 20 * time.Millisecond

func newHarness(t *testing.T, tweak func(*Options)) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), clock: newFakeClock(), conns: map[string]*grpc.ClientConn{}, vols: map[string]*fakeVolume{}}
	h.leader.Store(true)
	h.opts = Options{
		Dir:        h.dir,
		IsLeader:   h.leader.Load,
		Leader:     func() string { return "m2:9333" },
		DialVolume: h.dial,
		Pulse:      testPulse,
		Lease:      3 * time.Second,
		Margin:     500 * time.Millisecond,
		RPCTimeout: 5 * time.Second,
		Clock:      h.clock,
	}
	if tweak != nil {
		tweak(&h.opts)
	}
	h.start()
	t.Cleanup(func() {
		h.stop()
		for _, v := range h.vols {
			v.srv.Stop()
		}
	})
	return h
}

func (h *harness) start() {
	h.t.Helper()
	m, err := New(h.opts)
	if err != nil {
		h.t.Fatalf("New: %v", err)
	}
	h.m = m
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		h.t.Fatal(err)
	}
	h.srv = grpc.NewServer()
	blockpb.RegisterBlockMasterServer(h.srv, m)
	go h.srv.Serve(l)
	h.addr = l.Addr().String()
	h.conn, err = grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		h.t.Fatal(err)
	}
	h.client = blockpb.NewBlockMasterClient(h.conn)
}

// stop closes the master (ending streams), its gRPC server and the dialed
// connections, leaving the fake volume servers up; restart with start() on
// the same dir.
func (h *harness) stop() {
	if h.m == nil {
		return
	}
	h.m.Close()
	h.srv.Stop()
	h.conn.Close()
	h.m = nil
	h.dialMu.Lock()
	defer h.dialMu.Unlock()
	for a, c := range h.conns {
		c.Close()
		delete(h.conns, a)
	}
}

func (h *harness) dial(ctx context.Context, addr string) (blockpb.BlockVolumeClient, error) {
	h.dialMu.Lock()
	defer h.dialMu.Unlock()
	c := h.conns[addr]
	if c == nil {
		var err error
		c, err = grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, err
		}
		h.conns[addr] = c
	}
	return blockpb.NewBlockVolumeClient(c), nil
}

// volume starts a fake volume server's BlockVolume service.
func (h *harness) volume(id string) *fakeVolume {
	h.t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		h.t.Fatal(err)
	}
	f := &fakeVolume{id: id, addr: l.Addr().String(), allocated: map[string]*blockpb.AllocateVolumeRequest{}}
	f.srv = grpc.NewServer()
	blockpb.RegisterBlockVolumeServer(f.srv, f)
	go f.srv.Serve(l)
	h.vols[id] = f
	return f
}

// hbClient is a fake volume server's heartbeat stream, driven by the test.
type hbClient struct {
	t      *testing.T
	clock  Clock
	ep     *blockpb.ServerEndpoints
	free   uint64
	stream grpc.BidiStreamingClient[blockpb.BlockHeartbeat, blockpb.BlockHeartbeatResponse]
	cancel context.CancelFunc
	seq    uint64
	sent   map[uint64]time.Time
}

func (h *harness) connect(f *fakeVolume, dc, rack string, free uint64) *hbClient {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	st, err := h.client.Heartbeat(ctx)
	if err != nil {
		cancel()
		h.t.Fatalf("Heartbeat: %v", err)
	}
	c := &hbClient{t: h.t, clock: h.clock, stream: st, cancel: cancel, free: free, sent: map[uint64]time.Time{},
		ep: &blockpb.ServerEndpoints{
			ServerId: f.id, GrpcAddress: f.addr, HttpAddress: "127.0.0.1:1",
			NbdAddress: "0.0.0.0:10809", IscsiAddress: "127.0.0.1:3260", ReplAddress: "127.0.0.1:4000",
			DataCenter: dc, Rack: rack,
		}}
	h.t.Cleanup(cancel)
	return c
}

// beat sends one heartbeat and returns the answer (fatal on error).
func (c *hbClient) beat(reports ...*blockpb.VolumeReport) *blockpb.BlockHeartbeatResponse {
	c.t.Helper()
	resp, err := c.tryBeat(reports...)
	if err != nil {
		c.t.Fatalf("heartbeat %d: %v", c.seq, err)
	}
	return resp
}

func (c *hbClient) tryBeat(reports ...*blockpb.VolumeReport) (*blockpb.BlockHeartbeatResponse, error) {
	c.seq++
	c.sent[c.seq] = c.clock.Now()
	if err := c.stream.Send(&blockpb.BlockHeartbeat{Server: c.ep, Seq: c.seq, Volumes: reports, FreeBytes: c.free}); err != nil {
		return nil, err
	}
	resp, err := c.stream.Recv()
	if err != nil {
		return nil, err
	}
	if resp.GetHeartbeatSeq() != c.seq {
		c.t.Fatalf("answer to seq %d carries heartbeat_seq %d", c.seq, resp.GetHeartbeatSeq())
	}
	return resp, nil
}

// leaseUntil is the volume server's view of a lease granted by resp.
func (c *hbClient) leaseUntil(resp *blockpb.BlockHeartbeatResponse) time.Time {
	return c.sent[resp.GetHeartbeatSeq()].Add(time.Duration(resp.GetLeaseMs()) * time.Millisecond)
}

func (c *hbClient) close() {
	c.stream.CloseSend()
}

const gib = uint64(1) << 30

// server starts a fake volume server and connects its heartbeat (one beat
// sent, so it is alive).
func (h *harness) server(id, rack string, free uint64) (*fakeVolume, *hbClient) {
	h.t.Helper()
	f := h.volume(id)
	c := h.connect(f, "dc1", rack, free)
	c.beat()
	return f, c
}

func (h *harness) create(spec *blockpb.VolumeSpec) (*blockpb.VolumeInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := h.client.CreateVolume(ctx, &blockpb.CreateVolumeRequest{Spec: spec})
	return resp.GetVolume(), err
}

func (h *harness) lookup(name string) (*blockpb.VolumeInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := h.client.LookupVolume(ctx, &blockpb.LookupVolumeRequest{Name: name})
	return resp.GetVolume(), err
}

func (h *harness) del(name string, force bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := h.client.DeleteVolume(ctx, &blockpb.DeleteVolumeRequest{Name: name, Force: force})
	return err
}

func spec(name string, size uint64, rf uint32) *blockpb.VolumeSpec {
	return &blockpb.VolumeSpec{Name: name, SizeBytes: size, ReplicationFactor: rf}
}

// wantCode fails unless err is a status with code and a message containing
// every fragment.
func wantCode(t *testing.T, err error, code codes.Code, fragments ...string) {
	t.Helper()
	st := status.Convert(err)
	if err == nil || st.Code() != code {
		t.Fatalf("got %v, want code %v", err, code)
	}
	for _, f := range fragments {
		if !strings.Contains(st.Message(), f) {
			t.Fatalf("message %q lacks %q", st.Message(), f)
		}
	}
}

// eventually polls cond for up to 5 seconds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

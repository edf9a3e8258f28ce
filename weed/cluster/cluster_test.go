package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/seaweedfs/seaweedfs/weed/pb/master_pb"
	"github.com/seaweedfs/seaweedfs/weed/stats"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// freePort returns a loopback TCP port that was free a moment ago. It is
// picked below Linux's ephemeral range (32768 and up), so an outgoing
// connection of a busy machine cannot take it between this check and a
// child's bind ("address already in use").
func freePort(t *testing.T) int {
	t.Helper()
	return freePortSet(t, []int{0})
}

// freePortSet returns a base port p below the ephemeral range such that
// p+o is free on loopback for every offset o: for servers that derive
// more ports from one flag (a volume server's next HTTP ports, gRPC at
// +10000).
func freePortSet(t *testing.T, offsets []int) int {
	t.Helper()
	hi := 0
	for _, o := range offsets {
		hi = max(hi, o)
	}
	for tries := 0; tries < 10000; tries++ {
		p := 12000 + rand.IntN(32768-12000-hi)
		if portsFree(p, offsets) {
			return p
		}
	}
	t.Fatalf("no free port set with offsets %v below 32768", offsets)
	return 0
}

// portsFree reports whether p+o can be bound on loopback for every o.
func portsFree(p int, offsets []int) bool {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for _, o := range offsets {
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+o)))
		if err != nil {
			return false
		}
		ls = append(ls, l)
	}
	return true
}

// fakeBlockMaster records what the launcher feeds the block master.
type fakeBlockMaster struct {
	blockpb.UnimplementedBlockMasterServer
	env MasterPluginEnv

	mu     sync.Mutex
	joined []ServerInfo
	left   []string
	closed int
}

func (f *fakeBlockMaster) Register(s grpc.ServiceRegistrar) { blockpb.RegisterBlockMasterServer(s, f) }
func (f *fakeBlockMaster) HTTPHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "block master %s leader=%v", r.URL.Path, f.env.IsLeader())
	})
}
func (f *fakeBlockMaster) Collectors() []prometheus.Collector {
	return []prometheus.Collector{prometheus.NewGauge(prometheus.GaugeOpts{Name: "weedblock_cluster_test_master"})}
}
func (f *fakeBlockMaster) ServerJoined(s ServerInfo) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.joined = append(f.joined, s)
}
func (f *fakeBlockMaster) ServerLeft(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.left = append(f.left, id)
}
func (f *fakeBlockMaster) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed++
}
func (f *fakeBlockMaster) ListVolumes(context.Context, *blockpb.ListVolumesRequest) (*blockpb.ListVolumesResponse, error) {
	return &blockpb.ListVolumesResponse{Volumes: []*blockpb.VolumeInfo{{State: "fake"}}}, nil
}

func (f *fakeBlockMaster) events() ([]ServerInfo, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]ServerInfo(nil), f.joined...), append([]string(nil), f.left...)
}

// fakeBlockVolume records what the launcher feeds the block volume side.
type fakeBlockVolume struct {
	blockpb.UnimplementedBlockVolumeServer
	env     VolumePluginEnv
	mu      sync.Mutex
	started int
	closed  int
}

func (f *fakeBlockVolume) Register(s grpc.ServiceRegistrar) { blockpb.RegisterBlockVolumeServer(s, f) }
func (f *fakeBlockVolume) HTTPHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "block volume %s", f.env.ServerID)
	})
}
func (f *fakeBlockVolume) Collectors() []prometheus.Collector { return nil }
func (f *fakeBlockVolume) Start() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.started++
	return nil
}
func (f *fakeBlockVolume) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed++
}
func (f *fakeBlockVolume) VolumeStatus(context.Context, *blockpb.LocalVolumeStatusRequest) (*blockpb.LocalVolumeStatusResponse, error) {
	return &blockpb.LocalVolumeStatusResponse{Volumes: []*blockpb.VolumeReport{{Name: f.env.ServerID}}}, nil
}

func testMasterConfig(t *testing.T) MasterConfig {
	return MasterConfig{
		IP: "127.0.0.1", BindIP: "127.0.0.1",
		Port: freePort(t), GrpcPort: freePort(t),
		MetaDir:                    t.TempDir(),
		Peers:                      "none",
		VolumeSizeLimitMB:          64,
		FileSizeLimitMB:            256,
		MaxParallelVacuumPerServer: 1,
		VacuumIntervalSeconds:      840,
		GarbageThreshold:           0.3,
		MetricsIntervalSec:         15,
		ResumeState:                true,
		HeartbeatInterval:          300 * time.Millisecond,
		ElectionTimeout:            10 * time.Second,
		Telemetry:                  false,
	}
}

func testVolumeConfig(t *testing.T, master *Master, rack string) VolumeConfig {
	return VolumeConfig{
		IP: "127.0.0.1", BindIP: "127.0.0.1",
		Port: freePort(t), GrpcPort: freePort(t),
		Masters:                 fmt.Sprintf("127.0.0.1:%d.%d", mustPort(t, master.HTTPAddr), mustPort(t, master.GRPCAddr)),
		Rack:                    rack,
		Index:                   "memory",
		ReadMode:                "proxy",
		FileSizeLimitMB:         256,
		InflightUploadTimeout:   time.Minute,
		InflightDownloadTimeout: time.Minute,
		HasSlowRead:             true,
		ReadBufferSizeMB:        4,
		FsyncMinBatchBytes:      1 << 20,
		FsyncMinBatchRequests:   128,
		FsyncBatchWait:          500 * time.Microsecond,
		Dirs:                    t.TempDir(),
		Max:                     "8",
		MinFreeSpacePercent:     "1",
		IdleTimeoutSeconds:      30,
	}
}

func mustPort(t *testing.T, hostport string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if _, err := fmt.Sscan(p, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// eventually retries f every 100ms until it returns nil or d passes.
func eventually(t *testing.T, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestClusterInProcess starts our master and volume launchers in this
// process (upstream's master cannot be torn down, so one master serves all
// subtests) and checks that SeaweedFS works as usual through them and that
// the block hooks are wired.
func TestClusterInProcess(t *testing.T) {
	fbm := &fakeBlockMaster{}
	mc := testMasterConfig(t)
	mc.HeartbeatSilence = 6 * time.Second // volume servers pulse every 5 s
	mc.Block = func(env MasterPluginEnv) (MasterPlugin, error) { fbm.env = env; return fbm, nil }
	m, err := StartMaster(mc)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	eventually(t, 20*time.Second, func() error {
		if !fbm.env.IsLeader() {
			return fmt.Errorf("master not leader yet")
		}
		return nil
	})
	if got, want := fbm.env.Leader(), m.GRPCAddr; got != want {
		t.Errorf("Leader() = %q, want %q", got, want)
	}

	fbv := &fakeBlockVolume{}
	vc := testVolumeConfig(t, m, "rack1")
	vc.BlockDir = t.TempDir()
	vc.BlockNBD = "127.0.0.1:0"
	vc.Block = func(env VolumePluginEnv) (VolumePlugin, error) { fbv.env = env; return fbv, nil }
	v, err := StartVolume(vc)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop()

	t.Run("upload and read a file", func(t *testing.T) { uploadAndRead(t, m.HTTPAddr) })

	t.Run("block metrics on upstream's registry", func(t *testing.T) {
		mfs, err := stats.Gather.Gather()
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, mf := range mfs {
			found = found || mf.GetName() == "weedblock_cluster_test_master"
		}
		if !found {
			t.Fatal("block master collector not registered on stats.Gather")
		}
	})

	t.Run("volume server joined the block master and the topology", func(t *testing.T) {
		eventually(t, 10*time.Second, func() error {
			joined, _ := fbm.events()
			if len(joined) != 1 {
				return fmt.Errorf("joined %v", joined)
			}
			j := joined[0]
			if j.ID != v.ID || j.GrpcAddress != v.GRPCAddr || j.Rack != "rack1" || j.Address != v.HTTPAddr {
				return fmt.Errorf("joined %+v, volume id %s grpc %s http %s", j, v.ID, v.GRPCAddr, v.HTTPAddr)
			}
			return nil
		})
		topo := fbm.env.Topology()
		if len(topo) != 1 || topo[0].ID != v.ID || topo[0].Rack != "rack1" || topo[0].GrpcAddress != v.GRPCAddr {
			t.Fatalf("topology %+v", topo)
		}
		if topo[0].FreeSlots <= 0 {
			t.Errorf("topology free slots %d", topo[0].FreeSlots)
		}
	})

	t.Run("block routes and services share the ports", func(t *testing.T) {
		code, body := httpGet(t, "http://"+m.HTTPAddr+"/block/volumes")
		if code != http.StatusOK || body != "block master /block/volumes leader=true" {
			t.Fatalf("master /block/: %d %q", code, body)
		}
		code, body = httpGet(t, "http://"+v.HTTPAddr+"/block/status")
		if code != http.StatusOK || body != "block volume "+v.ID {
			t.Fatalf("volume /block/: %d %q", code, body)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cc, err := grpc.NewClient(m.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		lr, err := blockpb.NewBlockMasterClient(cc).ListVolumes(ctx, &blockpb.ListVolumesRequest{})
		if err != nil || len(lr.Volumes) != 1 || lr.Volumes[0].State != "fake" {
			t.Fatalf("BlockMaster.ListVolumes on the master port: %v %v", lr, err)
		}
		vcc, err := fbm.env.DialVolume(ctx, v.GRPCAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer vcc.Close()
		sr, err := blockpb.NewBlockVolumeClient(vcc).VolumeStatus(ctx, &blockpb.LocalVolumeStatusRequest{})
		if err != nil || len(sr.Volumes) != 1 || sr.Volumes[0].Name != v.ID {
			t.Fatalf("BlockVolume.VolumeStatus on the volume port: %v %v", sr, err)
		}
		if fbv.env.Dir != vc.BlockDir || fbv.env.ServerID != v.ID || fbv.env.GrpcAddr != v.GRPCAddr || fbv.env.Rack != "rack1" {
			t.Errorf("volume plugin env %+v", fbv.env)
		}
		if ms := fbv.env.Masters(); len(ms) != 1 || ms[0] != m.GRPCAddr {
			t.Errorf("volume plugin Masters() = %v, want [%s]", ms, m.GRPCAddr)
		}
		if fbv.started != 1 {
			t.Errorf("volume plugin started %d times", fbv.started)
		}
	})

	t.Run("silent heartbeat stream counts as gone", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cc, err := grpc.NewClient(m.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		st, err := master_pb.NewSeaweedClient(cc).SendHeartbeat(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ghost := freePort(t)
		if err := st.Send(&master_pb.Heartbeat{Ip: "127.0.0.1", Port: uint32(ghost), Rack: "rack9",
			MaxVolumeCounts: map[string]uint32{"": 2}}); err != nil {
			t.Fatal(err)
		}
		ghostID := fmt.Sprintf("127.0.0.1:%d", ghost)
		start := time.Now()
		// The stream stays open but silent: the wrapper must end it.
		if _, err := st.Recv(); err != nil {
			t.Fatalf("first response: %v", err)
		}
		for {
			if _, err := st.Recv(); err != nil {
				break
			}
		}
		if d := time.Since(start); d > 12*time.Second {
			t.Errorf("silent stream ended after %v, silence is %v", d, mc.HeartbeatSilence)
		}
		eventually(t, 5*time.Second, func() error {
			joined, left := fbm.events()
			sawJoin := false
			for _, j := range joined {
				sawJoin = sawJoin || j.ID == ghostID
			}
			for _, l := range left {
				if l == ghostID && sawJoin {
					return nil
				}
			}
			return fmt.Errorf("ghost %s: joined %v left %v", ghostID, joined, left)
		})
		for _, s := range fbm.env.Topology() {
			if s.ID == ghostID {
				t.Fatalf("ghost still in topology after its stream failed")
			}
		}
		if n := m.watch.streamCount(v.ID); n != 1 {
			t.Errorf("real volume server streams = %d, want 1 (it heartbeats every pulse)", n)
		}
	})

	t.Run("stopping the volume server leaves", func(t *testing.T) {
		v.Stop()
		v.Stop() // idempotent
		if fbv.closed != 1 {
			t.Errorf("volume plugin closed %d times", fbv.closed)
		}
		eventually(t, 10*time.Second, func() error {
			_, left := fbm.events()
			for _, l := range left {
				if l == v.ID {
					return nil
				}
			}
			return fmt.Errorf("left %v", left)
		})
	})
}

// uploadAndRead stores a file through SeaweedFS (assign on the master,
// POST to the volume server) and reads it back directly and through the
// master's redirect.
func uploadAndRead(t *testing.T, masterHTTP string) {
	t.Helper()
	var assign struct {
		Fid, URL, Error string
	}
	eventually(t, 30*time.Second, func() error {
		resp, err := http.Post("http://"+masterHTTP+"/dir/assign", "", nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		assign.Fid, assign.Error = "", ""
		if err := json.NewDecoder(resp.Body).Decode(&assign); err != nil {
			return err
		}
		if assign.Fid == "" {
			return fmt.Errorf("assign: %q", assign.Error)
		}
		return nil
	})
	payload := []byte("hello from weedblock's launchers " + assign.Fid)
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	fw, _ := mw.CreateFormFile("file", "hello.txt")
	fw.Write(payload)
	mw.Close()
	resp, err := http.Post("http://"+assign.URL+"/"+assign.Fid, mw.FormDataContentType(), &body)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("upload: status %d", resp.StatusCode)
	}
	code, got := httpGet(t, "http://"+assign.URL+"/"+assign.Fid)
	if code != http.StatusOK || got != string(payload) {
		t.Fatalf("read back: %d %q", code, got)
	}
	code, got = httpGet(t, "http://"+masterHTTP+"/"+assign.Fid)
	if code != http.StatusOK || got != string(payload) {
		t.Fatalf("read via master: %d %q", code, got)
	}
}

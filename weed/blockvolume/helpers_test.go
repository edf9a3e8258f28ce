package blockvolume

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/weedblock/weedblock/frontend/iscsi"
	"github.com/weedblock/weedblock/frontend/scsi"
	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

const testServerID = "vs1"

// startManager runs a Manager on a temp dir (or dir) with NBD and iSCSI on
// loopback; it is closed when the test ends.
func startManager(t *testing.T, dir string, tweak func(*Options)) *Manager {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	opts := Options{
		Dir:       dir,
		ServerID:  testServerID,
		Endpoints: &blockpb.ServerEndpoints{GrpcAddress: "127.0.0.1:1", Rack: "r1"},
		NBDAddr:   "127.0.0.1:0",
		ISCSIAddr: "127.0.0.1:0",
		ReplAddr:  "127.0.0.1:0",
		Pulse:     50 * time.Millisecond,
	}
	if tweak != nil {
		tweak(&opts)
	}
	m, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return m
}

// withMasters points the manager's heartbeat at addrs.
func withMasters(addrs ...string) func(*Options) {
	return func(o *Options) {
		o.Masters = func() []string { return addrs }
		o.Dial = func(ctx context.Context, addr string) (*grpc.ClientConn, error) {
			return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		}
		o.MaxBackoff = 200 * time.Millisecond
	}
}

func spec(name string, size uint64) *blockpb.VolumeSpec {
	return &blockpb.VolumeSpec{Name: name, SizeBytes: size, BlockSize: 4096, WalSizeBytes: 256 << 10, ReplicationFactor: 1, Durability: blockpb.Durability_DURABILITY_SYNC}
}

// epochConfig makes a config where primary is primary and the only member.
func epochConfig(epoch uint64, primary string) *blockpb.EpochConfig {
	return &blockpb.EpochConfig{
		Epoch:           epoch,
		PrimaryServerId: primary,
		Members:         []*blockpb.Member{{Server: &blockpb.ServerEndpoints{ServerId: primary}, Role: blockpb.Role_ROLE_PRIMARY}},
		Durability:      blockpb.Durability_DURABILITY_SYNC,
		Reason:          "test",
	}
}

func allocate(t *testing.T, m *Manager, name string, size uint64, cfg *blockpb.EpochConfig) *blockpb.VolumeReport {
	t.Helper()
	resp, err := m.GRPCService().AllocateVolume(context.Background(), &blockpb.AllocateVolumeRequest{Spec: spec(name, size), Config: cfg})
	if err != nil {
		t.Fatalf("AllocateVolume %s: %v", name, err)
	}
	return resp.GetVolume()
}

func wantCode(t *testing.T, err error, code codes.Code, what string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: got %v, want code %v", what, err, code)
	}
}

// eventually polls cond every 10 ms for up to d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !waitUntil(d, cond) {
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

// waitUntil polls cond every 10 ms for up to d and says whether it held.
func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// --- a minimal NBD client (fixed newstyle, NBD_OPT_EXPORT_NAME) ---

type nbdClient struct {
	t      *testing.T
	nc     net.Conn
	br     *bufio.Reader
	size   uint64
	handle uint64
}

// nbdErrno values the tests look for.
const (
	nbdEPERM = 1
	nbdEIO   = 5
)

func dialNBD(t *testing.T, addr, name string) *nbdClient {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	c := &nbdClient{t: t, nc: nc, br: bufio.NewReader(nc)}
	var hello [18]byte
	if _, err := io.ReadFull(c.br, hello[:]); err != nil {
		t.Fatalf("nbd greeting: %v", err)
	}
	if binary.BigEndian.Uint64(hello[:]) != 0x4e42444d41474943 {
		t.Fatalf("nbd greeting magic %x", hello[:8])
	}
	msg := binary.BigEndian.AppendUint32(nil, 1|2) // fixed newstyle, no zeroes
	msg = binary.BigEndian.AppendUint64(msg, 0x49484156454F5054)
	msg = binary.BigEndian.AppendUint32(msg, 1) // NBD_OPT_EXPORT_NAME
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(name)))
	msg = append(msg, name...)
	if _, err := nc.Write(msg); err != nil {
		t.Fatal(err)
	}
	var info [10]byte
	if _, err := io.ReadFull(c.br, info[:]); err != nil {
		t.Fatalf("nbd export %q: %v", name, err)
	}
	c.size = binary.BigEndian.Uint64(info[:])
	return c
}

// request sends one command and returns the reply's errno (and data for
// a successful read).
func (c *nbdClient) request(typ uint16, off uint64, length uint32, payload []byte) (uint32, []byte) {
	c.t.Helper()
	c.handle++
	msg := binary.BigEndian.AppendUint32(nil, 0x25609513)
	msg = binary.BigEndian.AppendUint16(msg, 0)
	msg = binary.BigEndian.AppendUint16(msg, typ)
	msg = binary.BigEndian.AppendUint64(msg, c.handle)
	msg = binary.BigEndian.AppendUint64(msg, off)
	msg = binary.BigEndian.AppendUint32(msg, length)
	msg = append(msg, payload...)
	if _, err := c.nc.Write(msg); err != nil {
		c.t.Fatalf("nbd send: %v", err)
	}
	var rep [16]byte
	if _, err := io.ReadFull(c.br, rep[:]); err != nil {
		c.t.Fatalf("nbd reply: %v", err)
	}
	if binary.BigEndian.Uint32(rep[:]) != 0x67446698 || binary.BigEndian.Uint64(rep[8:]) != c.handle {
		c.t.Fatalf("nbd reply header %x", rep)
	}
	errno := binary.BigEndian.Uint32(rep[4:])
	if typ == 0 && errno == 0 {
		data := make([]byte, length)
		if _, err := io.ReadFull(c.br, data); err != nil {
			c.t.Fatalf("nbd read data: %v", err)
		}
		return 0, data
	}
	return errno, nil
}

func (c *nbdClient) write(off uint64, p []byte) uint32 {
	e, _ := c.request(1, off, uint32(len(p)), p)
	return e
}

func (c *nbdClient) read(off uint64, n uint32) (uint32, []byte) { return c.request(0, off, n, nil) }

func (c *nbdClient) flush() uint32 { e, _ := c.request(3, 0, 0, nil); return e }

// --- real clients ---

func requireTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s is required for this test (install it): %v", name, err)
	}
}

func iscsiURI(m *Manager, name string) string {
	return fmt.Sprintf("iscsi://%s/%s/0", m.Endpoints().GetIscsiAddress(), iscsi.IQN(name))
}

// qemuWrite writes a 4 KiB pattern at off over iSCSI with qemu-io and
// returns its combined output and whether the write succeeded.
func qemuWrite(t *testing.T, uri string, off int) (string, bool) {
	t.Helper()
	requireTool(t, "qemu-io")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x5a %d 4k", off), uri).CombinedOutput()
	s := string(out)
	ok := err == nil && strings.Contains(s, "wrote 4096/4096 bytes") && !strings.Contains(s, "failed")
	return s, ok
}

// --- a fake BlockMaster ---

type fakeMaster struct {
	blockpb.UnimplementedBlockMasterServer
	t    *testing.T
	addr string
	srv  *grpc.Server

	mu      sync.Mutex
	respond func(hb *blockpb.BlockHeartbeat) (*blockpb.BlockHeartbeatResponse, error)
	delay   time.Duration
	got     []*blockpb.BlockHeartbeat
	streams int
	gotAt   map[uint64]time.Time // receive time per seq
	caught  []*blockpb.ReportCaughtUpRequest
}

// ReportCaughtUp records the call (the fake master changes no epoch).
func (f *fakeMaster) ReportCaughtUp(ctx context.Context, req *blockpb.ReportCaughtUpRequest) (*blockpb.ReportCaughtUpResponse, error) {
	f.mu.Lock()
	f.caught = append(f.caught, req)
	f.mu.Unlock()
	return &blockpb.ReportCaughtUpResponse{}, nil
}

// caughtUp reports whether ReportCaughtUp named server id of volume name
// at epoch.
func (f *fakeMaster) caughtUp(name, id string, epoch uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.caught {
		if r.GetName() == name && r.GetServerId() == id && r.GetEpoch() == epoch {
			return true
		}
	}
	return false
}

func startFakeMaster(t *testing.T) *fakeMaster {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeMaster{t: t, addr: l.Addr().String(), srv: grpc.NewServer(), gotAt: map[uint64]time.Time{}}
	blockpb.RegisterBlockMasterServer(f.srv, f)
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.srv.Serve(l)
	}()
	t.Cleanup(func() {
		f.srv.Stop()
		<-done
	})
	return f
}

func (f *fakeMaster) setRespond(fn func(hb *blockpb.BlockHeartbeat) (*blockpb.BlockHeartbeatResponse, error)) {
	f.mu.Lock()
	f.respond = fn
	f.mu.Unlock()
}

// grant answers every heartbeat with a lease of leaseMs and nothing else.
// confirm answers like the real master: a lease of leaseMs, and an
// assignment (epoch as reported, this server primary) for every volume
// that reports itself a fenced primary.
func confirm(leaseMs int64) func(hb *blockpb.BlockHeartbeat) (*blockpb.BlockHeartbeatResponse, error) {
	return func(hb *blockpb.BlockHeartbeat) (*blockpb.BlockHeartbeatResponse, error) {
		resp := &blockpb.BlockHeartbeatResponse{HeartbeatSeq: hb.GetSeq(), LeaseMs: leaseMs}
		for _, r := range hb.GetVolumes() {
			if r.GetRole() == blockpb.Role_ROLE_PRIMARY && r.GetFenced() {
				resp.Assignments = append(resp.Assignments, &blockpb.Assignment{
					Spec:   spec(r.GetName(), r.GetSizeBytes()),
					Config: epochConfig(r.GetEpoch(), hb.GetServer().GetServerId()),
					Role:   blockpb.Role_ROLE_PRIMARY,
				})
			}
		}
		return resp, nil
	}
}

func grant(leaseMs int64) func(hb *blockpb.BlockHeartbeat) (*blockpb.BlockHeartbeatResponse, error) {
	return func(hb *blockpb.BlockHeartbeat) (*blockpb.BlockHeartbeatResponse, error) {
		return &blockpb.BlockHeartbeatResponse{HeartbeatSeq: hb.GetSeq(), LeaseMs: leaseMs}, nil
	}
}

func (f *fakeMaster) Heartbeat(stream blockpb.BlockMaster_HeartbeatServer) error {
	f.mu.Lock()
	f.streams++
	f.mu.Unlock()
	for {
		hb, err := stream.Recv()
		if err != nil {
			return nil
		}
		f.mu.Lock()
		f.got = append(f.got, hb)
		f.gotAt[hb.GetSeq()] = time.Now()
		fn, delay := f.respond, f.delay
		f.mu.Unlock()
		if fn == nil {
			continue
		}
		resp, err := fn(hb)
		if err != nil {
			return err
		}
		if resp == nil {
			continue
		}
		if delay > 0 {
			time.Sleep(delay)
		}
		if err := stream.Send(resp); err != nil {
			return nil
		}
	}
}

func (f *fakeMaster) streamCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.streams
}

func (f *fakeMaster) heartbeats() []*blockpb.BlockHeartbeat {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*blockpb.BlockHeartbeat(nil), f.got...)
}

func (f *fakeMaster) lastReport(name string) *blockpb.VolumeReport {
	hbs := f.heartbeats()
	for i := len(hbs) - 1; i >= 0; i-- {
		for _, r := range hbs[i].GetVolumes() {
			if r.GetName() == name {
				return r
			}
		}
	}
	return nil
}

// scsiWrite sends WRITE(10) of one 4 KiB block at LBA 0 to the volume's
// logical unit (the one its iSCSI target serves), skipping the unit
// attention a new nexus may get first.
func scsiWrite(m *Manager, name string) *scsi.Response {
	v := m.lookup(name)
	cdb := []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0}
	var resp *scsi.Response
	for range 3 {
		resp = v.lu.Execute(&scsi.Command{Nexus: scsi.Nexus{InitiatorPort: "i", TargetPort: "t", RelativeTargetPortID: 1}, CDB: cdb, DataOut: make([]byte, 4096), Write: true})
		if resp.Status != scsi.StatusCheckCondition || len(resp.Sense) < 14 || resp.Sense[2]&0xf != 0x6 {
			break
		}
	}
	return resp
}

// writeProtected: CHECK CONDITION, DATA PROTECT, ASC 27h (WRITE PROTECTED).
func writeProtected(r *scsi.Response) bool {
	return r.Status == scsi.StatusCheckCondition && len(r.Sense) >= 14 && r.Sense[2]&0xf == 0x7 && r.Sense[12] == 0x27
}

// nbdcopyWrite copies a 64 KiB pattern file onto the start of the export
// with the real nbdcopy; it returns nbdcopy's output and success.
func nbdcopyWrite(t *testing.T, addr, name string) (string, bool) {
	t.Helper()
	requireTool(t, "nbdcopy")
	src := filepath.Join(t.TempDir(), "src.img")
	if err := os.WriteFile(src, bytes.Repeat([]byte{0x3c}, 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nbdcopy", src, fmt.Sprintf("nbd://%s/%s", addr, name)).CombinedOutput()
	return string(out), err == nil
}

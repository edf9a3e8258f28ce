package blockvolume

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// volumeServer is one in-process volume server: a Manager whose
// BlockVolume service is on its own gRPC server.
type volumeServer struct {
	id, dir string
	mAddr   string
	m       *Manager
	srv     *grpc.Server
	done    chan struct{}
	stopped bool
}

func startNamedVolumeServer(t *testing.T, id, rack, dir, masterAddr string, tweak ...func(*Options)) *volumeServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{
		Dir:       dir,
		ServerID:  id,
		Endpoints: &blockpb.ServerEndpoints{GrpcAddress: l.Addr().String(), HttpAddress: "127.0.0.1:1", DataCenter: "dc1", Rack: rack},
		NBDAddr:   "127.0.0.1:0",
		ReplAddr:  "127.0.0.1:0",
		Pulse:     50 * time.Millisecond,
	}
	withMasters(masterAddr)(&opts)
	for _, f := range tweak {
		f(&opts)
	}
	m, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	vs := &volumeServer{id: id, dir: dir, mAddr: masterAddr, m: m, srv: grpc.NewServer(), done: make(chan struct{})}
	m.Register(vs.srv)
	go func() { defer close(vs.done); vs.srv.Serve(l) }()
	if err := m.Start(); err != nil {
		vs.srv.Stop()
		t.Fatal(err)
	}
	t.Cleanup(vs.stop)
	return vs
}

// stop ends the server without telling the master (its heartbeats stop).
func (vs *volumeServer) stop() {
	if vs.stopped {
		return
	}
	vs.stopped = true
	vs.m.Close()
	vs.srv.Stop()
	<-vs.done
}

// readLocal reads name's data straight from the server's volume.
func (vs *volumeServer) readLocal(t *testing.T, name string, off int64, n int) []byte {
	t.Helper()
	v := vs.m.lookup(name)
	if v == nil {
		t.Fatalf("%s has no volume %s", vs.id, name)
	}
	p := make([]byte, n)
	if err := v.vol.ReadAt(p, off); err != nil {
		t.Fatalf("%s: read %s: %v", vs.id, name, err)
	}
	return p
}

func lookupInfo(t *testing.T, c blockpb.BlockMasterClient, name string) *blockpb.VolumeInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.LookupVolume(ctx, &blockpb.LookupVolumeRequest{Name: name})
	if err != nil {
		return nil
	}
	return resp.GetVolume()
}

func isMember(cfg *blockpb.EpochConfig, id string) bool {
	for _, mb := range cfg.GetMembers() {
		if mb.GetServer().GetServerId() == id {
			return true
		}
	}
	return false
}

// TestReplicatedFailoverWithRealMaster: an RF=2 sync volume through the
// real blockmaster: a flushed write is on the replica; the primary's
// server dies without a word to the master, the master promotes the
// replica after the lease, writes to the new primary work and the old data
// is there; the old primary comes back fenced (EPERM), is caught up by
// the new primary, re-added as a replica, and then receives new writes.
func TestReplicatedFailoverWithRealMaster(t *testing.T) {
	_, mAddr := startRealMaster(t, t.TempDir())
	cc, err := dialInsecure(context.Background(), mAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := blockpb.NewBlockMasterClient(cc)
	dirs := map[string]string{"vs-a": t.TempDir(), "vs-b": t.TempDir()}
	servers := map[string]*volumeServer{
		"vs-a": startNamedVolumeServer(t, "vs-a", "r1", dirs["vs-a"], mAddr),
		"vs-b": startNamedVolumeServer(t, "vs-b", "r2", dirs["vs-b"], mAddr),
	}
	sp := spec("ha", 4<<20)
	sp.ReplicationFactor = 2
	var info *blockpb.VolumeInfo
	eventually(t, 10*time.Second, "rf=2 create succeeds once both servers heartbeat", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := client.CreateVolume(ctx, &blockpb.CreateVolumeRequest{Spec: sp})
		if err != nil {
			return false
		}
		info = resp.GetVolume()
		return true
	})
	if len(info.GetConfig().GetMembers()) != 2 {
		t.Fatalf("created config: %v", info.GetConfig())
	}
	pid := info.GetConfig().GetPrimaryServerId()
	rid := "vs-a"
	if pid == rid {
		rid = "vs-b"
	}
	prim, repl := servers[pid], servers[rid]

	// 1. A flushed write is on the replica.
	c := dialNBD(t, prim.m.Endpoints().GetNbdAddress(), "ha")
	patA := bytes.Repeat([]byte{0xa1}, 8192)
	eventually(t, 10*time.Second, "primary writable", func() bool { return c.write(0, patA) == 0 })
	if e := c.flush(); e != 0 {
		t.Fatalf("flush on the primary: errno %d", e)
	}
	if got := repl.readLocal(t, "ha", 0, len(patA)); !bytes.Equal(got, patA) {
		t.Fatalf("replica lacks the flushed write")
	}
	eventually(t, 10*time.Second, "primary reports its replica in sync", func() bool {
		rs := prim.m.lookup("ha").replicaStates()
		return len(rs) == 1 && rs[0].GetServerId() == rid && rs[0].GetState() == "in-sync"
	})
	// The replica refuses frontend writes.
	rc := dialNBD(t, repl.m.Endpoints().GetNbdAddress(), "ha")
	if e := rc.write(0, patA); e != nbdEPERM {
		t.Fatalf("write to the replica: errno %d, want EPERM", e)
	}
	rc.nc.Close()

	// 2. The primary's server dies; the master promotes the replica.
	c.nc.Close()
	prim.stop()
	eventually(t, 15*time.Second, "master promotes the replica", func() bool {
		in := lookupInfo(t, client, "ha")
		return in != nil && in.GetConfig().GetPrimaryServerId() == rid && in.GetConfig().GetEpoch() > info.GetConfig().GetEpoch()
	})
	nc := dialNBD(t, repl.m.Endpoints().GetNbdAddress(), "ha")
	patB := bytes.Repeat([]byte{0xb2}, 8192)
	eventually(t, 10*time.Second, "new primary writable", func() bool { return nc.write(8192, patB) == 0 })
	eventually(t, 30*time.Second, "flush on the new primary", func() bool { return nc.flush() == 0 })
	if e, data := nc.read(0, uint32(len(patA))); e != 0 || !bytes.Equal(data, patA) {
		t.Fatalf("new primary lost the write flushed before the failover (errno %d)", e)
	}

	// 3. The old primary returns: fenced, then caught up and re-added.
	old := startNamedVolumeServer(t, pid, map[string]string{"vs-a": "r1", "vs-b": "r2"}[pid], dirs[pid], mAddr)
	oc := dialNBD(t, old.m.Endpoints().GetNbdAddress(), "ha")
	if e := oc.write(0, patB); e != nbdEPERM {
		t.Fatalf("write to the returning old primary: errno %d, want EPERM", e)
	}

	eventually(t, 20*time.Second, "old primary caught up and re-added as a replica", func() bool {
		in := lookupInfo(t, client, "ha")
		return in != nil && in.GetConfig().GetPrimaryServerId() == rid && isMember(in.GetConfig(), pid)
	})
	for i := 0; i < 20; i++ {
		if e := oc.write(0, patB); e != nbdEPERM {
			t.Fatalf("write to the re-added replica: errno %d, want EPERM", e)
		}
	}
	oc.nc.Close()
	patC := bytes.Repeat([]byte{0xc3}, 4096)
	eventually(t, 10*time.Second, "write after the re-add", func() bool { return nc.write(16384, patC) == 0 })
	eventually(t, 30*time.Second, "flush after the re-add", func() bool { return nc.flush() == 0 })
	eventually(t, 10*time.Second, "re-added replica holds every write", func() bool {
		return bytes.Equal(old.readLocal(t, "ha", 0, 8192), patA) &&
			bytes.Equal(old.readLocal(t, "ha", 8192, 8192), patB) &&
			bytes.Equal(old.readLocal(t, "ha", 16384, 4096), patC)
	})
	nc.nc.Close()
}

// startPair creates an RF=2 sync volume name on two fresh servers and
// returns the master client, the primary and the replica.
func startPair(t *testing.T, name string) (blockpb.BlockMasterClient, *blockpb.VolumeInfo, *volumeServer, *volumeServer) {
	t.Helper()
	_, mAddr := startRealMaster(t, t.TempDir())
	cc, err := dialInsecure(context.Background(), mAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	client := blockpb.NewBlockMasterClient(cc)
	servers := map[string]*volumeServer{
		"vs-a": startNamedVolumeServer(t, "vs-a", "r1", t.TempDir(), mAddr),
		"vs-b": startNamedVolumeServer(t, "vs-b", "r2", t.TempDir(), mAddr),
	}
	sp := spec(name, 4<<20)
	sp.ReplicationFactor = 2
	var info *blockpb.VolumeInfo
	eventually(t, 10*time.Second, "rf=2 create", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := client.CreateVolume(ctx, &blockpb.CreateVolumeRequest{Spec: sp})
		if err != nil {
			return false
		}
		info = resp.GetVolume()
		return true
	})
	pid := info.GetConfig().GetPrimaryServerId()
	rid := "vs-a"
	if pid == rid {
		rid = "vs-b"
	}
	return client, info, servers[pid], servers[rid]
}

// TestPromoteSwapsRolesWithRealMaster: an operator promote of the live
// replica makes the old primary a replica (fenced, its Primary stopped,
// following the new primary) and the replica a primary shipping to it.
func TestPromoteSwapsRolesWithRealMaster(t *testing.T) {
	client, info, prim, repl := startPair(t, "sw")
	c := dialNBD(t, prim.m.Endpoints().GetNbdAddress(), "sw")
	patA := bytes.Repeat([]byte{0x5a}, 4096)
	eventually(t, 10*time.Second, "primary writable", func() bool { return c.write(0, patA) == 0 })
	if e := c.flush(); e != 0 {
		t.Fatalf("flush: errno %d", e)
	}
	// The master must have heard the replica lately (a loaded machine can
	// make it miss a 50 ms pulse): retry a refused promote for a while.
	var perr error
	eventually(t, 10*time.Second, "promote accepted", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, perr = client.PromoteVolume(ctx, &blockpb.PromoteVolumeRequest{Name: "sw", ToServerId: repl.id})
		if perr != nil {
			t.Logf("promote: %v", perr)
		}
		return perr == nil
	})
	// Wait for the old primary to learn the new epoch without writing to
	// it: a write it still took as the old epoch's primary would be a
	// record the new primary never had (diverged), and that copy is
	// rightly removed and rebuilt; not what this test is about.
	eventually(t, 10*time.Second, "old primary learns the promote", func() bool {
		st := prim.m.lookup("sw").vol.Status()
		return st.Epoch > info.GetConfig().GetEpoch()
	})
	if e := c.write(4096, patA); e != nbdEPERM {
		t.Fatalf("write on the demoted primary: errno %d, want EPERM", e)
	}
	nc := dialNBD(t, repl.m.Endpoints().GetNbdAddress(), "sw")
	patB := bytes.Repeat([]byte{0x6b}, 4096)
	eventually(t, 10*time.Second, "new primary writable", func() bool { return nc.write(4096, patB) == 0 })
	if e := nc.flush(); e != 0 {
		t.Fatalf("flush on the new primary: errno %d", e)
	}
	in := lookupInfo(t, client, "sw")
	if in.GetConfig().GetPrimaryServerId() != repl.id || !isMember(in.GetConfig(), prim.id) || in.GetConfig().GetEpoch() <= info.GetConfig().GetEpoch() {
		t.Fatalf("after the promote: %v", in.GetConfig())
	}
	// Sync mode: the flush returned, so the old primary holds the write.
	if got := prim.readLocal(t, "sw", 4096, 4096); !bytes.Equal(got, patB) {
		t.Fatalf("old primary (now replica) lacks the write flushed on the new primary")
	}
	if prim.m.lookup("sw").primary() != nil {
		t.Fatalf("old primary still runs a replication Primary")
	}
	c.nc.Close()
	nc.nc.Close()
}

// TestPromoteUnderWritesEndsWhole: a client keeps writing to the old
// primary while an operator promotes the replica. Writes the old primary
// still took without the new primary seeing them are never flushed, so
// they may go; whatever it took, the old primary ends as an in-sync member
// of the new epoch holding exactly the new primary's data (a copy that
// diverged is truncated or rebuilt, never served as it is).
func TestPromoteUnderWritesEndsWhole(t *testing.T) {
	const name, blocks = "pw", 64
	client, info, prim, repl := startPair(t, name)
	c := dialNBD(t, prim.m.Endpoints().GetNbdAddress(), name)
	eventually(t, 10*time.Second, "primary writable", func() bool { return c.write(0, bytes.Repeat([]byte{1}, 4096)) == 0 })
	if e := c.flush(); e != 0 {
		t.Fatalf("flush: errno %d", e)
	}
	eventually(t, 10*time.Second, "promote accepted", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := client.PromoteVolume(ctx, &blockpb.PromoteVolumeRequest{Name: name, ToServerId: repl.id})
		return err == nil
	})
	taken := 0
	for i := 0; ; i++ {
		e := c.write(uint64(1+i%(blocks-1))*4096, bytes.Repeat([]byte{byte(0x40 + i%64)}, 4096))
		if e == nbdEPERM {
			break
		}
		if e != 0 {
			t.Fatalf("write %d on the old primary: errno %d", i, e)
		}
		taken++
		if i > 100000 {
			t.Fatal("the old primary never refused writes after the promote")
		}
	}
	t.Logf("the old primary took %d writes after the promote was accepted", taken)
	c.nc.Close()

	nc := dialNBD(t, repl.m.Endpoints().GetNbdAddress(), name)
	defer nc.nc.Close()
	patB := bytes.Repeat([]byte{0xbb}, 4096)
	eventually(t, 10*time.Second, "new primary writable", func() bool { return nc.write(4096, patB) == 0 })
	if e := nc.flush(); e != 0 {
		t.Fatalf("flush on the new primary: errno %d", e)
	}
	eventually(t, 30*time.Second, "the old primary back in sync as a member", func() bool {
		in := lookupInfo(t, client, name)
		if in == nil || in.GetConfig().GetPrimaryServerId() != repl.id || !isMember(in.GetConfig(), prim.id) ||
			in.GetConfig().GetEpoch() <= info.GetConfig().GetEpoch() {
			return false
		}
		// The new primary itself must be in that epoch: until then it
		// ships to the old one only as a catch-up, which a FLUSH does not
		// wait for.
		v := repl.m.lookup(name)
		if v == nil || v.vol.Status().Epoch != in.GetConfig().GetEpoch() {
			return false
		}
		rs := v.replicaStates()
		return len(rs) == 1 && rs[0].GetServerId() == prim.id && rs[0].GetState() == "in-sync"
	})
	// A flushed write reaches both (sync mode), then the copies are equal.
	patC := bytes.Repeat([]byte{0xcc}, 4096)
	if e := nc.write(2*4096, patC); e != 0 {
		t.Fatalf("write on the new primary: errno %d", e)
	}
	if e := nc.flush(); e != 0 {
		t.Fatalf("flush on the new primary: errno %d", e)
	}
	want := repl.readLocal(t, name, 0, blocks*4096)
	if !bytes.Equal(want[4096:2*4096], patB) || !bytes.Equal(want[2*4096:3*4096], patC) {
		t.Fatal("the new primary lost its own flushed writes")
	}
	if got := prim.readLocal(t, name, 0, blocks*4096); !bytes.Equal(got, want) {
		for b := 0; b < blocks; b++ {
			if !bytes.Equal(got[b*4096:(b+1)*4096], want[b*4096:(b+1)*4096]) {
				t.Fatalf("block %d differs: old primary %#x, new primary %#x", b, got[b*4096], want[b*4096])
			}
		}
	}
}

// TestLostReplicaIsRemovedWithRealMaster: when the replica's server dies,
// a FLUSH on the primary waits for it, the primary asks the master to
// remove it, and the FLUSH completes in the epoch without it.
func TestLostReplicaIsRemovedWithRealMaster(t *testing.T) {
	client, info, prim, repl := startPair(t, "lr")
	c := dialNBD(t, prim.m.Endpoints().GetNbdAddress(), "lr")
	pat := bytes.Repeat([]byte{0x77}, 4096)
	eventually(t, 10*time.Second, "primary writable", func() bool { return c.write(0, pat) == 0 })
	if e := c.flush(); e != 0 {
		t.Fatalf("flush: errno %d", e)
	}
	repl.stop()
	if e := c.write(4096, pat); e != 0 {
		t.Fatalf("write after the replica died: errno %d", e)
	}
	start := time.Now()
	if e := c.flush(); e != 0 {
		t.Fatalf("flush after the replica died: errno %d", e)
	}
	t.Logf("flush with a dead replica took %v", time.Since(start).Round(time.Millisecond))
	in := lookupInfo(t, client, "lr")
	if isMember(in.GetConfig(), repl.id) || in.GetConfig().GetEpoch() <= info.GetConfig().GetEpoch() {
		t.Fatalf("dead replica still a member: %v", in.GetConfig())
	}
	if why := in.GetConfig().GetReason(); !strings.Contains(why, "stopped answering") {
		t.Fatalf("the master's reason for the removal %q does not say the replica stopped answering", why)
	}
	c.nc.Close()

	// The removed copy returns without a replication listener, so it
	// cannot be caught up: it stays outside the epoch, refusing writes
	// (EPERM) and reads (EIO).
	back := startNamedVolumeServer(t, repl.id, "r9", repl.dir, repl.mAddr, func(o *Options) { o.ReplAddr = "" })
	bc := dialNBD(t, back.m.Endpoints().GetNbdAddress(), "lr")
	eventually(t, 10*time.Second, "the removed copy learns it is not a member", func() bool {
		r := back.m.lookup("lr")
		return r != nil && r.vol.Status().Epoch == in.GetConfig().GetEpoch()
	})
	if e, _ := bc.read(0, 4096); e != nbdEIO {
		t.Fatalf("read from a removed copy: errno %d, want EIO", e)
	}
	if e := bc.write(0, pat); e != nbdEPERM {
		t.Fatalf("write to a removed copy: errno %d, want EPERM", e)
	}
	if got := prim.readLocal(t, "lr", 4096, 4096); !bytes.Equal(got, pat) {
		t.Fatalf("primary lost its write")
	}
	bc.nc.Close()
}

// TestDivergedOldPrimaryIsRebuilt: the old primary comes back holding
// records the new primary never had (written after its last shipped
// record): it never serves them — writes EPERM, and it is not re-added as
// it is — the new primary rebuilds it, and only then is it caught up and
// re-added, holding exactly the new primary's data.
func TestDivergedOldPrimaryIsRebuilt(t *testing.T) {
	t.Run("head beyond the new primary's", func(t *testing.T) { testDiverged(t, 16, 0, false) })
	// The old primary's extra records have LSNs the new primary reused for
	// its own writes: the head where it took over, or the epochs of the
	// records (the term histories), tell them apart.
	t.Run("head within the new primary's", func(t *testing.T) { testDiverged(t, 2, 8, false) })
	// The new primary restarts before the old one returns (no takeover
	// state in its process) and the old primary's extra records were
	// checkpointed (their epochs are only in its term history): the term
	// histories alone find the divergence.
	t.Run("new primary restarted, extra records checkpointed", func(t *testing.T) { testDiverged(t, 2, 8, true) })
}

func testDiverged(t *testing.T, ghosts, later int, restart bool) {
	client, info, prim, repl := startPair(t, "dv")
	c := dialNBD(t, prim.m.Endpoints().GetNbdAddress(), "dv")
	pat := bytes.Repeat([]byte{0x31}, 4096)
	eventually(t, 10*time.Second, "primary writable", func() bool { return c.write(0, pat) == 0 })
	if e := c.flush(); e != 0 {
		t.Fatalf("flush: errno %d", e)
	}
	c.nc.Close()
	prim.stop()

	// Behind everyone's back, the old primary's file gains records the
	// replica never saw (as if written just before a crash).
	path := filepath.Join(prim.dir, "dv"+FileExt)
	vol, err := blockvol.Open(path, blockvol.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := vol.Unfence(info.GetConfig().GetEpoch(), blockvol.RolePrimary, time.Time{}); err != nil {
		t.Fatal(err)
	}
	ghost := bytes.Repeat([]byte{0xee}, 4096)
	for i := int64(0); i < int64(ghosts); i++ {
		if err := vol.WriteAt(ghost, 4096*(i+1), false); err != nil {
			t.Fatal(err)
		}
	}
	if err := vol.Flush(); err != nil {
		t.Fatal(err)
	}
	if restart {
		if err := vol.Checkpoint(); err != nil {
			t.Fatal(err)
		}
		if st := vol.Status(); st.Tail != st.Head+1 {
			t.Fatalf("old primary's WAL still holds records: %+v", st)
		}
	}
	if err := vol.Close(); err != nil {
		t.Fatal(err)
	}

	eventually(t, 15*time.Second, "master promotes the replica", func() bool {
		in := lookupInfo(t, client, "dv")
		return in != nil && in.GetConfig().GetPrimaryServerId() == repl.id
	})
	nc := dialNBD(t, repl.m.Endpoints().GetNbdAddress(), "dv")
	eventually(t, 10*time.Second, "new primary writable", func() bool { return nc.write(0, pat) == 0 })
	if restart {
		// A restart: no takeover state in the new process. Its flusher
		// then leaves the later writes in the WAL, so that a catch-up of
		// the old primary from its head would be possible (and would keep
		// its extra records) if the divergence went unseen.
		if e := nc.flush(); e != 0 {
			t.Fatalf("flush on the new primary: errno %d", e)
		}
		nc.nc.Close()
		repl.stop()
		repl = startNamedVolumeServer(t, repl.id, "r2", repl.dir, repl.mAddr, func(o *Options) { o.FlushInterval = time.Hour })
		nc = dialNBD(t, repl.m.Endpoints().GetNbdAddress(), "dv")
		eventually(t, 15*time.Second, "restarted new primary writable", func() bool { return nc.write(0, pat) == 0 })
	}
	for i := 0; i < later; i++ {
		if e := nc.write(uint64(4096*(64+i)), pat); e != 0 {
			t.Fatalf("write %d on the new primary: errno %d", i, e)
		}
	}
	if e := nc.flush(); e != 0 {
		t.Fatalf("flush on the new primary: errno %d", e)
	}

	old := startNamedVolumeServer(t, prim.id, "r1", prim.dir, prim.mAddr)
	oc := dialNBD(t, old.m.Endpoints().GetNbdAddress(), "dv")
	if e := oc.write(0, pat); e != nbdEPERM {
		t.Fatalf("write to the diverged old primary: errno %d, want EPERM", e)
	}
	// From the moment the old primary knows the new epoch until it is a
	// member again, no read it serves shows its extra records: it refuses
	// them (EIO) while outside the epoch and being rebuilt.
	eventually(t, 15*time.Second, "the old primary learns the new epoch", func() bool {
		v := old.m.lookup("dv")
		return v != nil && v.vol.Status().Epoch > info.GetConfig().GetEpoch()
	})
	reads, refused := 0, 0
	eventually(t, 20*time.Second, "the old primary rebuilt, caught up and re-added", func() bool {
		for off := uint64(4096); off <= uint64(4096*ghosts); off += 4096 {
			e, data := oc.read(off, 4096)
			reads++
			switch {
			case e == nbdEIO:
				refused++
			case e != 0:
				t.Fatalf("read from the old primary: errno %d", e)
			case bytes.Equal(data, ghost):
				t.Fatalf("the old primary served one of its diverged writes at %d", off)
			}
		}
		in := lookupInfo(t, client, "dv")
		return in != nil && in.GetConfig().GetPrimaryServerId() == repl.id && isMember(in.GetConfig(), prim.id)
	})
	t.Logf("%d reads from the old primary during its recovery, %d refused", reads, refused)
	if refused == 0 {
		t.Fatal("no read was refused while the old primary was outside the epoch")
	}
	var rec *blockpb.RecoveryProgress
	for _, r := range repl.m.lookup("dv").recoveryReports() {
		if r.GetServerId() == prim.id {
			rec = r
		}
	}
	// The last plan may be a later zero-gap (a new attempt after the
	// rebuild); a rebuild was done, for divergence when it is the last.
	if rec == nil || rec.GetRebuilds() < 1 || (strings.HasPrefix(rec.GetPlan(), "rebuild") && !strings.Contains(rec.GetPlan(), "diverge")) {
		t.Fatalf("recovery of the diverged copy: %v", rec)
	}
	if e := oc.write(0, pat); e != nbdEPERM {
		t.Fatalf("write to the re-added replica: errno %d, want EPERM", e)
	}
	if e, data := nc.read(4096, 4096); e != 0 || bytes.Equal(data, ghost) {
		t.Fatalf("new primary read: errno %d, ghost data %v", e, bytes.Equal(data, ghost))
	}
	// The rebuilt copy holds exactly the primary's data: no ghost left.
	eventually(t, 10*time.Second, "rebuilt copy equals the primary", func() bool {
		return bytes.Equal(old.readLocal(t, "dv", 0, 4<<20), repl.readLocal(t, "dv", 0, 4<<20))
	})
	oc.nc.Close()
	nc.nc.Close()
}

// TestWipedReplicaIsRebuiltWithRealMaster: the replica's server restarts
// with its volume file deleted. The copy it gets back is empty and
// untrusted (never served, never made a member as it is); the primary
// rebuilds it and the master re-adds it; both copies then hold the same
// data, writes made while it was away included.
func TestWipedReplicaIsRebuiltWithRealMaster(t *testing.T) {
	client, _, prim, repl := startPair(t, "wp")
	c := dialNBD(t, prim.m.Endpoints().GetNbdAddress(), "wp")
	patA := bytes.Repeat([]byte{0xa7}, 64<<10)
	eventually(t, 10*time.Second, "primary writable", func() bool { return c.write(0, patA) == 0 })
	if e := c.flush(); e != 0 {
		t.Fatalf("flush: errno %d", e)
	}
	repl.stop()
	if err := os.Remove(filepath.Join(repl.dir, "wp"+FileExt)); err != nil {
		t.Fatal(err)
	}
	back := startNamedVolumeServer(t, repl.id, "r2", repl.dir, repl.mAddr)
	patB := bytes.Repeat([]byte{0xb8}, 32<<10)
	eventually(t, 30*time.Second, "write and flush while the wiped copy returns", func() bool {
		return c.write(128<<10, patB) == 0 && c.flush() == 0
	})
	eventually(t, 30*time.Second, "the wiped copy rebuilt and re-added", func() bool {
		in := lookupInfo(t, client, "wp")
		v := back.m.lookup("wp")
		return in != nil && isMember(in.GetConfig(), repl.id) && v != nil && !v.vol.Status().Untrusted
	})
	var rec *blockpb.RecoveryProgress
	for _, r := range prim.m.lookup("wp").recoveryReports() {
		if r.GetServerId() == repl.id {
			rec = r
		}
	}
	if rec == nil || rec.GetRebuilds() < 1 {
		t.Fatalf("recovery of the wiped copy: %v", rec)
	}
	patC := bytes.Repeat([]byte{0xc9}, 16<<10)
	if e := c.write(256<<10, patC); e != 0 {
		t.Fatalf("write after the re-add: errno %d", e)
	}
	eventually(t, 30*time.Second, "flush after the re-add", func() bool { return c.flush() == 0 })
	eventually(t, 10*time.Second, "rebuilt copy equals the primary", func() bool {
		return bytes.Equal(back.readLocal(t, "wp", 0, 4<<20), prim.readLocal(t, "wp", 0, 4<<20))
	})
	if !bytes.Equal(back.readLocal(t, "wp", 0, len(patA)), patA) || !bytes.Equal(back.readLocal(t, "wp", 256<<10, len(patC)), patC) {
		t.Fatal("rebuilt copy lacks the writes")
	}
	c.nc.Close()
}

package replication

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockdev"
	"github.com/weedblock/weedblock/blockvol"
)

func TestReplicasEqualPrimary(t *testing.T) {
	for _, tc := range []struct {
		name string
		rf   int
		mode Mode
	}{
		{"RF2-sync", 2, ModeSync},
		{"RF3-sync", 3, ModeSync},
		{"RF3-quorum", 3, ModeQuorum},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, clusterOpts{rf: tc.rf, mode: tc.mode})
			ops := 300
			if testing.Short() {
				ops = 100
			}
			randomLoad(t, c.dev, 8, ops, 16, 1)
			if err := c.dev.Flush(); err != nil {
				t.Fatal(err)
			}
			st := c.dev.Status()
			if st.Committed < st.Head {
				t.Fatalf("after flush committed %d < head %d", st.Committed, st.Head)
			}
			for _, n := range c.nodes {
				c.waitCaughtUp(t, n.id)
				if rs := n.vol.Status(); rs.Head != st.Head {
					t.Fatalf("%s head %d, primary head %d", n.id, rs.Head, st.Head)
				}
				sameDevice(t, c.pvol, n.vol, n.id)
				if s := c.replicaStats(n.id); s.State != StateInSync || s.LagLSNs != 0 || s.LastAck.IsZero() {
					t.Fatalf("%s stats %+v", n.id, s)
				}
			}
		})
	}
}

func TestStaleEpochRefused(t *testing.T) {
	dir := t.TempDir()
	n := newReplicaNode(t, dir, "r1", 1<<20, 1<<20, 2)
	defer n.close(t)
	ctx := context.Background()
	addr := n.proxy.Addr()
	if _, err := Dial(ctx, addr, volName, 1, DialOptions{}); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("hello at epoch 1 to a replica at 2: %v", err)
	}
	if _, err := Dial(ctx, addr, volName, 3, DialOptions{}); !errors.Is(err, ErrEpochAhead) {
		t.Fatalf("hello at epoch 3 to a replica at 2: %v", err)
	}
	if _, err := Dial(ctx, addr, "nope", 2, DialOptions{}); !errors.Is(err, ErrUnknownVolume) {
		t.Fatalf("hello for an unknown volume: %v", err)
	}
	data := make([]byte, 4096)
	data[0] = 1
	rec := blockvol.Record{LSN: 1, Epoch: 2, Kind: blockvol.KindWrite, LBA: 0, Blocks: 1, Data: data}

	// Accepted at epoch 2, then the master moves the replica to epoch 3:
	// the old primary's record and barrier are both refused.
	wc, err := Dial(ctx, addr, volName, 2, DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer wc.Close()
	bc, err := Dial(ctx, addr, volName, 2, DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer bc.Close()
	if err := wc.Send(rec); err != nil {
		t.Fatal(err)
	}
	if err := wc.Barrier(1); err != nil {
		t.Fatal(err)
	}
	if err := wc.WaitDurable(ctx, 1); err != nil {
		t.Fatalf("record at the replica's epoch: %v", err)
	}
	if err := n.vol.Unfence(3, blockvol.RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	rec.LSN = 2
	if err := wc.Send(rec); err != nil {
		t.Fatal(err)
	}
	wc.Flush()
	if err := wc.WaitDurable(ctx, 2); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("record at a stale epoch: %v", err)
	}
	if err := bc.Barrier(1); err != nil {
		t.Fatal(err)
	}
	if err := bc.WaitDurable(ctx, 1); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("barrier at a stale epoch: %v", err)
	}
	if h := n.vol.Status().Head; h != 1 {
		t.Fatalf("replica head %d after a refused record, want 1", h)
	}
	n.vol.Fence()
	if _, err := Dial(ctx, addr, volName, 3, DialOptions{}); !errors.Is(err, ErrNotReplica) {
		t.Fatalf("hello to a fenced replica: %v", err)
	}
}

func TestServerRefusesGarbage(t *testing.T) {
	n := newReplicaNode(t, t.TempDir(), "r1", 1<<20, 1<<20, 1)
	defer n.close(t)
	c, err := net.Dial("tcp", n.proxy.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	fr := newFrameReader(c)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	typ, p, err := fr.next()
	if err != nil || typ != typeError {
		t.Fatalf("answer to garbage: %v %v", typ, err)
	}
	if m, err := decodeError(p); err != nil || m.Code != codeProtocol {
		t.Fatalf("error frame %+v %v", m, err)
	}
	if _, _, err := fr.next(); err == nil {
		t.Fatal("connection stayed open after garbage")
	}
	// The server still works.
	cn, err := Dial(context.Background(), n.proxy.Addr(), volName, 1, DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cn.Close()
	if err := n.srv.Register(volName, n.vol); err == nil {
		t.Fatal("registered a name twice")
	}
	n.srv.Unregister(volName)
	if _, err := Dial(context.Background(), n.proxy.Addr(), volName, 1, DialOptions{}); !errors.Is(err, ErrUnknownVolume) {
		t.Fatalf("after unregister: %v", err)
	}
}

// moveEpoch makes the cluster's primary and the listed nodes enter epoch
// (as the volume servers would on the master's assignment) and tells the
// primary its new members.
func (c *cluster) moveEpoch(t *testing.T, epoch uint64, keep ...string) {
	t.Helper()
	if err := c.pvol.Unfence(epoch, blockvol.RolePrimary, time.Time{}); err != nil {
		t.Fatal(err)
	}
	var ms []Member
	for _, id := range keep {
		n := c.node(id)
		if err := n.vol.Unfence(epoch, blockvol.RoleReplica, time.Time{}); err != nil {
			t.Fatal(err)
		}
		ms = append(ms, Member{ServerID: id, Addr: n.proxy.Addr()})
	}
	if err := c.p.SetMembers(epoch, ms); err != nil {
		t.Fatal(err)
	}
}

func flushAsync(dev blockdev.Device) chan error {
	ch := make(chan error, 1)
	go func() { ch <- dev.Flush() }()
	return ch
}

func write(t *testing.T, dev blockdev.Device, lba int64, b byte) {
	t.Helper()
	p := make([]byte, dev.BlockSize())
	for i := range p {
		p[i] = b
	}
	if err := dev.WriteAt(p, lba*int64(dev.BlockSize()), false); err != nil {
		t.Fatal(err)
	}
}

func TestSyncFlushWaitsForMemberRemoval(t *testing.T) {
	c := newCluster(t, clusterOpts{rf: 3, mode: ModeSync})
	write(t, c.dev, 0, 1)
	if err := c.dev.Flush(); err != nil {
		t.Fatal(err)
	}
	c.node("r2").proxy.SetBlackhole(true)
	write(t, c.dev, 1, 2)
	done := flushAsync(c.dev)
	select {
	case id := <-c.removed:
		if id != "r2" {
			t.Fatalf("RemoveMember(%s), want r2", id)
		}
		if why := <-c.reasons; !strings.Contains(why, "stopped answering") {
			t.Fatalf("RemoveMember reason %q, want it to say the member stopped answering", why)
		}
	case err := <-done:
		t.Fatalf("sync flush returned %v while a member was blackholed and still in the epoch", err)
	case <-time.After(20 * time.Second):
		t.Fatal("RemoveMember was not called for the blackholed member")
	}
	select {
	case err := <-done:
		t.Fatalf("sync flush returned %v before the new epoch arrived", err)
	default:
	}
	c.moveEpoch(t, 2, "r1")
	if err := <-done; err != nil {
		t.Fatalf("flush after the member was removed: %v", err)
	}
	if s := c.replicaStats("r2"); s.State != StateRemoved {
		t.Fatalf("removed member state %v", s.State)
	}
	write(t, c.dev, 2, 3)
	if err := c.dev.Flush(); err != nil {
		t.Fatal(err)
	}
	c.waitCaughtUp(t, "r1")
	sameDevice(t, c.pvol, c.node("r1").vol, "r1")
}

// TestSilentMemberRemovedAcrossEpochs: new epochs arriving more often than
// the member timeout (other members leaving and coming back) do not
// restart a silent member's timeout; it is still reported for removal,
// and the waiting sync FLUSH completes once an epoch without it comes.
func TestSilentMemberRemovedAcrossEpochs(t *testing.T) {
	c := newCluster(t, clusterOpts{rf: 3, mode: ModeSync})
	write(t, c.dev, 0, 1)
	if err := c.dev.Flush(); err != nil {
		t.Fatal(err)
	}
	c.node("r2").proxy.SetBlackhole(true)
	write(t, c.dev, 1, 2)
	done := flushAsync(c.dev)
	epoch := uint64(1)
	tick := time.NewTicker(150 * time.Millisecond) // < MemberTimeout (500 ms)
	defer tick.Stop()
	deadline := time.After(10 * time.Second)
	for removed := false; !removed; {
		select {
		case id := <-c.removed:
			if id != "r2" {
				t.Fatalf("RemoveMember(%s), want r2", id)
			}
			removed = true
		case err := <-done:
			t.Fatalf("sync flush returned %v while a member was blackholed and still in the epoch", err)
		case <-tick.C:
			epoch++
			c.moveEpoch(t, epoch, "r1", "r2")
		case <-deadline:
			t.Fatalf("RemoveMember was not called for the blackholed member across %d epochs", epoch)
		}
	}
	c.moveEpoch(t, epoch+1, "r1")
	if err := <-done; err != nil {
		t.Fatalf("flush after the member was removed: %v", err)
	}
}

func TestSyncFlushBoundedWait(t *testing.T) {
	c := newCluster(t, clusterOpts{rf: 2, mode: ModeSync, tune: func(o *PrimaryOptions) { o.CommitTimeout = 700 * time.Millisecond }})
	write(t, c.dev, 0, 1)
	if err := c.dev.Flush(); err != nil {
		t.Fatal(err)
	}
	c.node("r1").proxy.SetBlackhole(true)
	write(t, c.dev, 1, 2)
	if err := c.dev.Flush(); !errors.Is(err, ErrCommitTimeout) {
		t.Fatalf("sync flush with a silent member and no new epoch: %v", err)
	}
	if err := c.dev.WriteAt(make([]byte, 4096), 0, true); !errors.Is(err, ErrCommitTimeout) {
		t.Fatalf("sync FUA write with a silent member: %v", err)
	}
}

func TestQuorum(t *testing.T) {
	c := newCluster(t, clusterOpts{rf: 3, mode: ModeQuorum, tune: func(o *PrimaryOptions) { o.CommitTimeout = time.Second }})
	randomLoad(t, c.dev, 4, 50, 8, 2)
	c.node("r2").proxy.SetBlackhole(true)
	randomLoad(t, c.dev, 4, 50, 8, 3)
	if err := c.dev.Flush(); err != nil {
		t.Fatalf("quorum flush with one of three members gone: %v", err)
	}
	c.node("r1").proxy.SetBlackhole(true)
	write(t, c.dev, 5, 5)
	if err := c.dev.Flush(); !errors.Is(err, ErrCommitTimeout) {
		t.Fatalf("quorum flush with two of three members gone: %v", err)
	}
	if _, err := NewPrimary(c.pvol, PrimaryOptions{Name: "x", Mode: ModeQuorum, Epoch: 1, Members: c.members()[:1]}); err == nil {
		t.Fatal("quorum accepted RF=2")
	}
	// The master drops both silent members: the primary alone commits.
	c.moveEpoch(t, 2)
	write(t, c.dev, 6, 6)
	if err := c.dev.Flush(); err != nil {
		t.Fatalf("quorum flush after the silent members were removed: %v", err)
	}
}

func TestAsyncNeverBlocks(t *testing.T) {
	c := newCluster(t, clusterOpts{rf: 2, mode: ModeAsync, tune: func(o *PrimaryOptions) { o.CommitTimeout = time.Hour }})
	write(t, c.dev, 0, 1)
	c.node("r1").proxy.SetBlackhole(true)
	done := make(chan error, 1)
	go func() {
		var err error
		for i := 0; i < 200 && err == nil; i++ {
			p := make([]byte, 4096)
			p[0] = byte(i)
			if err = c.dev.WriteAt(p, int64(i%64)*4096, i%10 == 0); err == nil && i%5 == 0 {
				err = c.dev.Flush()
			}
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("async writes and flushes blocked on a blackholed replica")
	}
	if st := c.dev.Status(); st.Committed != st.Durable {
		t.Fatalf("async committed %d, primary durable %d", st.Committed, st.Durable)
	}
	c.node("r1").proxy.SetBlackhole(false)
	c.waitCaughtUp(t, "r1")
	sameDevice(t, c.pvol, c.node("r1").vol, "r1")
}

func TestDeadReplicaDoesNotWedgeWAL(t *testing.T) {
	const walSize = 256 << 10
	c := newCluster(t, clusterOpts{rf: 2, mode: ModeAsync, size: 2 << 20, walSize: walSize,
		tune: func(o *PrimaryOptions) { o.MaxInFlightBytes = 64 << 10 }})
	write(t, c.dev, 0, 1)
	if err := c.dev.Flush(); err != nil {
		t.Fatal(err)
	}
	c.waitCaughtUp(t, "r1")
	c.node("r1").proxy.SetBlackhole(true)
	p := make([]byte, 16<<10)
	for i := 0; i < 8*walSize/len(p); i++ {
		p[0] = byte(i)
		if err := c.dev.WriteAt(p, int64(i%100)*int64(len(p)), false); err != nil {
			t.Fatalf("write %d with a dead replica: %v", i, err)
		}
	}
	if err := c.dev.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "r1 needs-rebuild", func() bool { return c.replicaStats("r1").State == StateNeedsRebuild })
	select {
	case id := <-c.removed:
		if id != "r1" {
			t.Fatalf("RemoveMember(%s)", id)
		}
		if why := <-c.reasons; !strings.Contains(why, "needs a rebuild") {
			t.Fatalf("RemoveMember reason %q, want it to say the member needs a rebuild", why)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("RemoveMember not called for a replica needing a rebuild")
	}
	// Streaming stopped: the replica stays behind even when it answers again.
	c.node("r1").proxy.SetBlackhole(false)
	if st := c.replicaStats("r1"); st.State != StateNeedsRebuild || st.LagLSNs == 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestReplicaBehindTailNeedsRebuild(t *testing.T) {
	const walSize = 256 << 10
	c := newCluster(t, clusterOpts{rf: 2, mode: ModeAsync, size: 2 << 20, walSize: walSize})
	// Keep the replica unreachable from the start: no hold is ever taken.
	c.node("r1").proxy.SetDrop(true)
	c.node("r1").proxy.Cut()
	p := make([]byte, 16<<10)
	for i := 0; i < 4*walSize/len(p); i++ {
		if err := c.dev.WriteAt(p, int64(i%100)*int64(len(p)), false); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.pvol.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	c.node("r1").proxy.SetDrop(false)
	waitFor(t, 20*time.Second, "r1 needs-rebuild", func() bool { return c.replicaStats("r1").State == StateNeedsRebuild })
}

func TestReconnectAfterCut(t *testing.T) {
	c := newCluster(t, clusterOpts{rf: 3, mode: ModeSync})
	stop := make(chan struct{})
	cutter := make(chan int)
	go func() {
		cuts := 0
		defer func() { cutter <- cuts }()
		for {
			select {
			case <-stop:
				return
			case <-time.After(30 * time.Millisecond):
			}
			c.nodes[cuts%2].proxy.Cut()
			cuts++
		}
	}()
	randomLoad(t, c.dev, 4, 150, 8, 4)
	close(stop)
	cuts := <-cutter
	if cuts == 0 {
		t.Fatal("no cut happened during the load")
	}
	if err := c.dev.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.nodes {
		c.waitCaughtUp(t, n.id)
		sameDevice(t, c.pvol, n.vol, n.id)
		if h, ph := n.vol.Status().Head, c.pvol.Status().Head; h != ph {
			t.Fatalf("%s head %d, primary %d", n.id, h, ph)
		}
	}
	t.Logf("%d cuts", cuts)
}

func TestFencedPrimaryStopsShipping(t *testing.T) {
	c := newCluster(t, clusterOpts{rf: 2, mode: ModeSync})
	write(t, c.dev, 0, 1)
	if err := c.dev.Flush(); err != nil {
		t.Fatal(err)
	}
	c.waitCaughtUp(t, "r1")
	before := c.node("r1").vol.Status().Head
	// A write appended just before the fence must not reach the replica
	// once the primary is fenced... but it was appended while unfenced, so
	// only check that nothing new is accepted and flush fails.
	c.pvol.Fence()
	if err := c.dev.WriteAt(make([]byte, 4096), 0, false); !errors.Is(err, blockdev.ErrReadOnly) {
		t.Fatalf("write on a fenced primary: %v", err)
	}
	if err := c.dev.Flush(); err == nil {
		t.Fatal("flush on a fenced primary succeeded")
	}
	waitFor(t, 10*time.Second, "cursor to stop", func() bool { return c.replicaStats("r1").State == StateConnecting })
	if h := c.node("r1").vol.Status().Head; h != before {
		t.Fatalf("replica head moved from %d to %d after the primary was fenced", before, h)
	}
	// A lapsed lease also stops it.
	if err := c.pvol.Unfence(1, blockvol.RolePrimary, time.Now().Add(200*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	write(t, c.dev, 1, 2)
	if err := c.dev.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(250 * time.Millisecond)
	if err := c.dev.Flush(); err == nil {
		t.Fatal("flush after the lease lapsed succeeded")
	}
}

func TestSetMembersStaleEpoch(t *testing.T) {
	c := newCluster(t, clusterOpts{rf: 2, mode: ModeSync})
	c.moveEpoch(t, 3, "r1")
	if err := c.p.SetMembers(2, c.members()); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("older epoch: %v", err)
	}
	write(t, c.dev, 0, 9)
	if err := c.dev.Flush(); err != nil {
		t.Fatal(err)
	}
	if c.p.Epoch() != 3 || c.node("r1").vol.Status().Head != c.pvol.Status().Head {
		t.Fatal("not replicating at epoch 3")
	}
}

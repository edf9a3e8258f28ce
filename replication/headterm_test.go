package replication

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol"
)

func TestHelloHeadEpochEncoding(t *testing.T) {
	for _, want := range []bool{false, true} {
		m := helloMsg{Epoch: 9, Volume: "db1", WantHeadEpoch: want}
		p := encodeHello(m)
		if n := 10 + len("db1"); (want && len(p) != n+1) || (!want && len(p) != n) {
			t.Fatalf("hello want=%v: %d bytes", want, len(p))
		}
		got, err := decodeHello(p)
		if err != nil || got != m {
			t.Fatalf("hello want=%v: decoded %+v, %v", want, got, err)
		}
	}
	plain := encodeHello(helloMsg{Epoch: 9, Volume: "db1"})
	for _, bad := range [][]byte{
		append(append([]byte(nil), plain...), 0),    // flags without the bit
		append(append([]byte(nil), plain...), 2),    // unknown flag
		append(append([]byte(nil), plain...), 1, 1), // two trailing bytes
		plain[:len(plain)-1],
	} {
		if m, err := decodeHello(bad); !errors.Is(err, ErrBadFrame) {
			t.Fatalf("hello %x: decoded %+v, %v; want ErrBadFrame", bad, m, err)
		}
	}

	cases := []helloOKMsg{
		{Epoch: 3, Head: 10, Durable: 9},
		{Epoch: 3, Head: 10, Durable: 9, extended: true},
		{Epoch: 3, Head: 10, Durable: 9, HeadEpoch: 2, HeadEpochKnown: true, extended: true},
	}
	for _, m := range cases {
		p := encodeHelloOK(m)
		if (m.extended && len(p) != helloOKExtended) || (!m.extended && len(p) != helloOKBase) {
			t.Fatalf("hello-ok %+v: %d bytes", m, len(p))
		}
		got, err := decodeHelloOK(p)
		if err != nil || got != m {
			t.Fatalf("hello-ok %+v: decoded %+v, %v", m, got, err)
		}
	}
	// An older replica's answer (three LSNs) decodes as unknown.
	if got, err := decodeHelloOK(encodeU64s(3, 10, 9)); err != nil || got.HeadEpochKnown || got.HeadEpoch != 0 || got.Head != 10 {
		t.Fatalf("old hello-ok: %+v, %v", got, err)
	}
	ext := encodeHelloOK(cases[2])
	badFlags := append([]byte(nil), ext...)
	badFlags[32] = 3
	unknownWithEpoch := append([]byte(nil), ext...)
	unknownWithEpoch[32] = 0
	for _, bad := range [][]byte{
		ext[:helloOKBase+1],
		ext[:helloOKExtended-1],
		append(append([]byte(nil), ext...), 0),
		badFlags,
		unknownWithEpoch,
		nil,
	} {
		if m, err := decodeHelloOK(bad); !errors.Is(err, ErrBadFrame) {
			t.Fatalf("hello-ok %x: decoded %+v, %v; want ErrBadFrame", bad, m, err)
		}
	}
}

// oldReplica is a replica server of the previous wire version: it
// refuses a hello with a trailing byte and answers a plain one with a
// hello-ok of three LSNs. It counts the hellos it refused.
func oldReplica(t *testing.T, head uint64) (addr string, refused chan struct{}) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused = make(chan struct{}, 4)
	done := make(chan struct{})
	t.Cleanup(func() { l.Close(); <-done })
	go func() {
		defer close(done)
		for i := 0; i < 4; i++ {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			typ, p, err := newFrameReader(c).next()
			if err != nil || typ != typeHello || len(p) < 10 {
				c.Close()
				continue
			}
			if n := int(binary.BigEndian.Uint16(p[8:])); len(p) != 10+n {
				writeFrame(c, typeError, encodeError(errorMsg{codeProtocol, "bad hello"}))
				c.Close()
				refused <- struct{}{}
				continue
			}
			writeFrame(c, typeHelloOK, encodeU64s(binary.BigEndian.Uint64(p), head, head))
			// Keep it open until the test closes the client side.
			var b [1]byte
			c.Read(b[:])
			c.Close()
		}
	}()
	return l.Addr().String(), refused
}

// TestDialOldReplica: a replica that refuses the head-epoch hello is
// greeted again without it; its head epoch is unknown.
func TestDialOldReplica(t *testing.T) {
	addr, refused := oldReplica(t, 42)
	cn, err := Dial(context.Background(), addr, volName, 5, DialOptions{HelloTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cn.Close()
	select {
	case <-refused:
	default:
		t.Fatal("the first hello did not ask for the head epoch")
	}
	if cn.ReplicaHead() != 42 || cn.ReplicaDurable() != 42 {
		t.Fatalf("head %d durable %d, want 42", cn.ReplicaHead(), cn.ReplicaDurable())
	}
	if e, ok := cn.ReplicaHeadEpoch(); ok || e != 0 {
		t.Fatalf("head epoch %d, %v from an old replica; want unknown", e, ok)
	}
}

// TestDialHeadEpoch: a replica answers the epoch of its head record from
// its term history, also after the record left its WAL.
func TestDialHeadEpoch(t *testing.T) {
	dir := t.TempDir()
	n := newReplicaNode(t, dir, "r1", 4<<20, 8<<20, 3)
	t.Cleanup(func() { n.close(t) })
	dial := func() *Conn {
		t.Helper()
		cn, err := Dial(context.Background(), n.addr, volName, 3, DialOptions{HelloTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return cn
	}
	cn := dial()
	if e, ok := cn.ReplicaHeadEpoch(); ok {
		t.Fatalf("empty replica: head epoch %d known", e)
	}
	cn.Close()
	blk := bytes.Repeat([]byte{1}, 4096)
	for i, e := range []uint64{1, 1, 2} {
		if err := n.vol.ApplyReplicated(blockvol.Record{LSN: uint64(i + 1), Epoch: e, Kind: blockvol.KindWrite, LBA: uint64(i), Blocks: 1, Data: blk}); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.vol.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	cn = dial()
	defer cn.Close()
	if e, ok := cn.ReplicaHeadEpoch(); !ok || e != 2 || cn.ReplicaHead() != 3 {
		t.Fatalf("head %d epoch %d, %v; want 3 at epoch 2", cn.ReplicaHead(), e, ok)
	}
}

// TestHeadEpochDivergedMemberNeedsRebuild: the new primary restarted
// since it took over (no takeover information); a member holds the old
// primary's records at epoch 1 beyond the new primary's epoch-1 history,
// checkpointed (only its term history knows their epoch). The hello's head
// epoch (1) differs from the primary's record at that LSN (2): the member
// needs a rebuild, gets nothing, and is reported for removal; the
// matching member is caught up and follows.
func TestHeadEpochDivergedMemberNeedsRebuild(t *testing.T) {
	c, ghost := takeoverCluster(t, func(pv *blockvol.Volume) *Takeover { return nil })
	waitFor(t, 10*time.Second, "r1 needs-rebuild", func() bool { return c.replicaStats("r1").State == StateNeedsRebuild })
	select {
	case id := <-c.removed:
		if id != "r1" {
			t.Fatalf("asked to remove %s, want r1", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("r1 was not reported for removal")
	}
	c.waitCaughtUp(t, "r2")
	write(t, c.dev, 300, 0x77)
	if err := c.dev.Flush(); err != nil {
		t.Fatal(err)
	}
	c.waitCaughtUp(t, "r2")
	sameDevice(t, c.pvol, c.node("r2").vol, "r2")
	r1 := c.node("r1").vol
	if h := r1.Status().Head; h != 7 {
		t.Fatalf("r1 head %d, want 7 (nothing appended)", h)
	}
	got := make([]byte, 4096)
	if err := r1.ReadAt(got, 200*4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatal("r1 received the new primary's write at lba 200")
	}
	if err := r1.ReadAt(got, 100*4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, ghost) {
		t.Fatal("r1's own record at lba 100 changed")
	}
	if s := c.replicaStats("r1"); s.State != StateNeedsRebuild || s.Err == "" {
		t.Fatalf("r1 stats %+v", s)
	}
}

// noTerms is a replica target that does not know its records' epochs (as
// an older build): its hello answer says "unknown".
type noTerms struct{ v *blockvol.Volume }

func (n noTerms) ApplyReplicatedBatch(rs []blockvol.Record) (int, error) {
	return n.v.ApplyReplicatedBatch(rs)
}
func (n noTerms) Flush() error            { return n.v.Flush() }
func (n noTerms) Status() blockvol.Status { return n.v.Status() }

// TestHeadEpochUnknownKeepsTakeoverCheck: the diverged member's head
// epoch is unknown, so the check falls back to the takeover head: with
// it, the member still needs a rebuild.
func TestHeadEpochUnknownKeepsTakeoverCheck(t *testing.T) {
	c, _ := takeoverCluster(t, func(pv *blockvol.Volume) *Takeover {
		return &Takeover{Head: pv.Status().Head}
	}, func(c *cluster) {
		n := c.node("r1")
		n.srv.Unregister(volName)
		if err := n.srv.Register(volName, noTerms{n.vol}); err != nil {
			t.Fatal(err)
		}
	})
	waitFor(t, 10*time.Second, "r1 needs-rebuild", func() bool { return c.replicaStats("r1").State == StateNeedsRebuild })
	if s := c.replicaStats("r1"); !bytes.Contains([]byte(s.Err), []byte("took over")) {
		t.Fatalf("r1 needs a rebuild for another reason than the takeover head: %q", s.Err)
	}
	c.waitCaughtUp(t, "r2")
	if h := c.node("r1").vol.Status().Head; h != 7 {
		t.Fatalf("r1 head %d, want 7 (nothing appended)", h)
	}
}

// TestHeadEpochUnknownMatchingStreams: a member whose head epoch is
// unknown and that holds only the primary's records is streamed to as
// before.
func TestHeadEpochUnknownMatchingStreams(t *testing.T) {
	c := newCluster(t, clusterOpts{rf: 2, mode: ModeSync})
	for i := 0; i < 5; i++ {
		write(t, c.dev, int64(i), byte(0x10+i))
	}
	if err := c.dev.Flush(); err != nil {
		t.Fatal(err)
	}
	c.waitCaughtUp(t, "r1")
	n := c.node("r1")
	n.srv.Unregister(volName)
	if err := n.srv.Register(volName, noTerms{n.vol}); err != nil {
		t.Fatal(err)
	}
	n.proxy.Cut()
	for i := 5; i < 10; i++ {
		write(t, c.dev, int64(i), byte(0x10+i))
	}
	if err := c.dev.Flush(); err != nil {
		t.Fatal(err)
	}
	c.waitCaughtUp(t, "r1")
	sameDevice(t, c.pvol, n.vol, "r1")
	if s := c.replicaStats("r1"); s.State != StateInSync {
		t.Fatalf("r1 stats %+v", s)
	}
}

// TestHeadEpochDiffersBelowHistory: where the primary's history no longer
// reaches (more epochs than MaxTerms), a replica epoch above the oldest
// kept term's is still a positive difference; one at or below it is
// unknown (no verdict).
func TestHeadEpochDiffersBelowHistory(t *testing.T) {
	n := blockvol.MaxTerms + 4
	v, err := blockvol.Create(filepath.Join(t.TempDir(), "p.blk"), 4<<20, blockvol.Options{WALSize: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := v.Unfence(uint64(n), blockvol.RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	blk := make([]byte, 4096)
	for i := 1; i <= n; i++ {
		if err := v.ApplyReplicated(blockvol.Record{LSN: uint64(i), Epoch: uint64(i), Kind: blockvol.KindWrite, LBA: 1, Blocks: 1, Data: blk}); err != nil {
			t.Fatal(err)
		}
	}
	oldest := v.Terms()[0]
	if oldest.First <= 1 {
		t.Fatalf("history not trimmed: oldest term %+v", oldest)
	}
	for _, tc := range []struct {
		lsn, epoch uint64
		differs    bool
	}{
		{0, 7, false},
		{uint64(n), uint64(n), false},
		{uint64(n), uint64(n - 1), true},
		{10, 10, false},
		{10, 11, true},
		{1, oldest.Epoch + 1, true},
		{1, oldest.Epoch, false},
		{1, 1, false},
	} {
		if got, why := headEpochDiffers(v, tc.lsn, tc.epoch); got != tc.differs {
			t.Errorf("lsn %d epoch %d: differs %v (%s), want %v", tc.lsn, tc.epoch, got, why, tc.differs)
		}
	}
}

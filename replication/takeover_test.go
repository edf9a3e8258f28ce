package replication

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol"
)

// takeoverCluster builds an RF=3 history at epoch 1: the future primary
// and both replicas share LSNs 1..4; r1 also holds ghost records 5..7 at
// epoch 1 that the future primary never had (the old primary shipped them
// to r1 only), and r2 has 1..4. Then everyone moves to epoch 2 with
// the future primary as primary, and r1 is kept unreachable until the
// primary has written past r1's head (so the ghost LSNs are reused).
// Each prepare runs just before the primary starts.
func takeoverCluster(t *testing.T, takeover func(pv *blockvol.Volume) *Takeover, prepare ...func(*cluster)) (*cluster, []byte) {
	dir := t.TempDir()
	const size, walSize = 4 << 20, 8 << 20
	pv, err := blockvol.Create(filepath.Join(dir, "primary.blk"), size, blockvol.Options{WALSize: walSize})
	if err != nil {
		t.Fatal(err)
	}
	// The future primary is a replica of the old primary at epoch 1.
	if err := pv.Unfence(1, blockvol.RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, pvol: pv, removed: make(chan string, 16)}
	for _, id := range []string{"r1", "r2"} {
		c.nodes = append(c.nodes, newReplicaNode(t, dir, id, size, walSize, 1))
	}
	r1, r2 := c.node("r1").vol, c.node("r2").vol
	for i := uint64(1); i <= 4; i++ {
		blk := bytes.Repeat([]byte{byte(i)}, 4096)
		for _, v := range []*blockvol.Volume{pv, r1, r2} {
			rec := blockvol.Record{LSN: i, Epoch: 1, Kind: blockvol.KindWrite, LBA: i, Blocks: 1, Data: blk}
			if err := v.ApplyReplicated(rec); err != nil {
				t.Fatal(err)
			}
		}
	}
	ghost := bytes.Repeat([]byte{0xee}, 4096)
	for i := uint64(0); i < 3; i++ {
		rec := blockvol.Record{LSN: 5 + i, Epoch: 1, Kind: blockvol.KindWrite, LBA: 100 + i, Blocks: 1, Data: ghost}
		if err := r1.ApplyReplicated(rec); err != nil {
			t.Fatal(err)
		}
	}
	// The ghosts leave r1's WAL: nothing local tells their epoch any more.
	if err := r1.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	for _, v := range []*blockvol.Volume{pv, r2} {
		if err := v.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if h := r1.Status().Head; h != 7 {
		t.Fatalf("r1 head %d, want 7", h)
	}
	if err := pv.Unfence(2, blockvol.RolePrimary, time.Time{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.nodes {
		if err := n.vol.Unfence(2, blockvol.RoleReplica, time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	c.node("r1").proxy.SetDrop(true)
	c.node("r1").proxy.Cut()
	for _, f := range prepare {
		f(c)
	}
	c.p, err = NewPrimary(pv, PrimaryOptions{
		Name: volName, Mode: ModeQuorum, Epoch: 2, Members: c.members(),
		RemoveMember:  func(id, _ string) error { c.removed <- id; return nil },
		CommitTimeout: 30 * time.Second,
		MemberTimeout: 500 * time.Millisecond,
		Takeover:      takeover(pv),
	})
	if err != nil {
		t.Fatal(err)
	}
	c.dev = NewVolume(pv, c.p)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("primary stats at failure: %+v", c.p.Stats())
		}
		c.close(t)
	})
	// The new primary's own records reuse LSNs 5..12.
	for i := 0; i < 8; i++ {
		write(t, c.dev, int64(200+i), 0x5a)
	}
	if err := c.dev.Flush(); err != nil {
		t.Fatal(err)
	}
	c.node("r1").proxy.SetDrop(false)
	return c, ghost
}

// TestTakeoverDivergedMemberNeedsRebuild: a member of the new epoch that
// holds records beyond the new primary's takeover head (RF=3: the third
// copy got the old primary's last records, the new primary did not) is
// never appended to and is reported needs-rebuild; a member at the
// takeover head is caught up and streams.
func TestTakeoverDivergedMemberNeedsRebuild(t *testing.T) {
	c, ghost := takeoverCluster(t, func(pv *blockvol.Volume) *Takeover {
		return &Takeover{Head: pv.Status().Head}
	})
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
	sameDevice(t, c.pvol, c.node("r2").vol, "r2")
	if s := c.replicaStats("r2"); s.State != StateInSync {
		t.Fatalf("r2 stats %+v", s)
	}
	// More writes: r2 follows, r1 still gets nothing.
	write(t, c.dev, 300, 0x77)
	if err := c.dev.Flush(); err != nil {
		t.Fatal(err)
	}
	c.waitCaughtUp(t, "r2")
	r1 := c.node("r1").vol
	if h := r1.Status().Head; h != 7 {
		t.Fatalf("r1 head %d after the takeover, want 7 (nothing appended)", h)
	}
	got := make([]byte, 4096)
	if err := r1.ReadAt(got, 200*4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatalf("r1 received the new primary's write at lba 200")
	}
	if err := r1.ReadAt(got, 100*4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, ghost) {
		t.Fatalf("r1's own record at lba 100 changed")
	}
	if s := c.replicaStats("r1"); s.State != StateNeedsRebuild || s.Err == "" {
		t.Fatalf("r1 stats %+v", s)
	}
	// Only the member that passed the checks counts as shipped to, and
	// stays so when it is cut off.
	c.node("r2").proxy.SetDrop(true)
	c.node("r2").proxy.Cut()
	if got := c.p.ShippedTo(); len(got) != 1 || got[0] != "r2" {
		t.Fatalf("shipped to %v, want [r2]", got)
	}
}

// TestReplicaAheadOfPrimaryNeedsRebuild: without takeover information, a
// member whose head is beyond the primary's head at hello needs a rebuild.
func TestReplicaAheadOfPrimaryNeedsRebuild(t *testing.T) {
	dir := t.TempDir()
	const size, walSize = 4 << 20, 8 << 20
	pv := newPrimaryVolume(t, dir, size, walSize)
	var err error
	n := newReplicaNode(t, dir, "r1", size, walSize, 1)
	ghost := bytes.Repeat([]byte{0xee}, 4096)
	for i := uint64(1); i <= 3; i++ {
		if err := n.vol.ApplyReplicated(blockvol.Record{LSN: i, Epoch: 1, Kind: blockvol.KindWrite, LBA: i, Blocks: 1, Data: ghost}); err != nil {
			t.Fatal(err)
		}
	}
	c := &cluster{t: t, pvol: pv, removed: make(chan string, 16), nodes: []*node{n}}
	c.p, err = NewPrimary(pv, PrimaryOptions{
		Name: volName, Mode: ModeAsync, Epoch: 1, Members: c.members(),
		RemoveMember:  func(id, _ string) error { c.removed <- id; return nil },
		MemberTimeout: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	c.dev = NewVolume(pv, c.p)
	t.Cleanup(func() { c.close(t) })
	waitFor(t, 10*time.Second, "r1 needs-rebuild", func() bool { return c.replicaStats("r1").State == StateNeedsRebuild })
	for i := 0; i < 6; i++ {
		write(t, c.dev, int64(10+i), 0x5a)
	}
	time.Sleep(200 * time.Millisecond)
	if h := n.vol.Status().Head; h != 3 {
		t.Fatalf("r1 head %d, want 3 (nothing appended)", h)
	}
}

// TestAheadMemberNeverCountsForCommit: a member refused at hello (its
// durable LSN is beyond the primary's head: records of another history)
// is never counted durable by what it reported: a sync FLUSH waits for
// it (it needs a rebuild) instead of committing on its word.
func TestAheadMemberNeverCountsForCommit(t *testing.T) {
	dir := t.TempDir()
	const size, walSize = 4 << 20, 8 << 20
	pv := newPrimaryVolume(t, dir, size, walSize)
	var err error
	n := newReplicaNode(t, dir, "r1", size, walSize, 1)
	ghost := bytes.Repeat([]byte{0xee}, 4096)
	for i := uint64(1); i <= 5; i++ {
		if err := n.vol.ApplyReplicated(blockvol.Record{LSN: i, Epoch: 1, Kind: blockvol.KindWrite, LBA: i, Blocks: 1, Data: ghost}); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.vol.Flush(); err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, pvol: pv, removed: make(chan string, 16), nodes: []*node{n}}
	c.p, err = NewPrimary(pv, PrimaryOptions{
		Name: volName, Mode: ModeSync, Epoch: 1, Members: c.members(),
		RemoveMember:  func(id, _ string) error { c.removed <- id; return nil },
		MemberTimeout: 500 * time.Millisecond,
		CommitTimeout: 400 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	c.dev = NewVolume(pv, c.p)
	t.Cleanup(func() { c.close(t) })
	waitFor(t, 10*time.Second, "r1 needs-rebuild", func() bool { return c.replicaStats("r1").State == StateNeedsRebuild })
	write(t, c.dev, 7, 0x5a)
	write(t, c.dev, 8, 0x5a)
	if err := c.dev.Flush(); !errors.Is(err, ErrCommitTimeout) {
		t.Fatalf("sync flush with a member that needs a rebuild: %v, want ErrCommitTimeout", err)
	}
	if s := c.replicaStats("r1"); s.Durable != 0 || s.Applied != 0 {
		t.Fatalf("r1 stats %+v: counted the position it reported at a refused hello", s)
	}
	if c := c.p.Committed(); c != 0 {
		t.Fatalf("committed %d with a member that holds none of the primary's records", c)
	}
}

// TestTakeoverMemberReaddedAfterRecovery: a member of the takeover epoch
// that left before its first hello (unreachable, then removed) and was
// brought to the primary's history by another path (here a catch-up
// Primary, as the volume server's recovery does) is re-added by
// SetMembers holding the primary's own records beyond the takeover head:
// it streams, it is not sent to a rebuild again (which would remove and
// re-add it forever).
func TestTakeoverMemberReaddedAfterRecovery(t *testing.T) {
	dir := t.TempDir()
	const size, walSize = 4 << 20, 8 << 20
	pv := newPrimaryVolume(t, dir, size, walSize)
	var err error
	// The WAL stays for the copy that left (the volume server's rejoin
	// hold does this).
	rejoin, err := pv.Hold(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rejoin.Release()
	n := newReplicaNode(t, dir, "r1", size, walSize, 1)
	c := &cluster{t: t, pvol: pv, removed: make(chan string, 16), nodes: []*node{n}}
	n.proxy.SetDrop(true)
	c.p, err = NewPrimary(pv, PrimaryOptions{
		Name: volName, Mode: ModeAsync, Epoch: 1, Members: c.members(),
		RemoveMember:  func(id, _ string) error { c.removed <- id; return nil },
		MemberTimeout: 500 * time.Millisecond,
		Takeover:      &Takeover{Head: 0},
	})
	if err != nil {
		t.Fatal(err)
	}
	c.dev = NewVolume(pv, c.p)
	t.Cleanup(func() { c.close(t) })
	for i := 0; i < 5; i++ {
		write(t, c.dev, int64(10+i), 0x5a)
	}
	// r1 leaves the epoch without ever having answered.
	if err := c.p.SetMembers(1, nil); err != nil {
		t.Fatal(err)
	}
	n.proxy.SetDrop(false)
	n.proxy.Cut()
	// A catch-up brings it to the primary's history (records 1..5, all
	// beyond the takeover head 0).
	follow, err := NewPrimary(pv, PrimaryOptions{
		Name: volName, Mode: ModeAsync, Epoch: 1, Members: c.members(),
		RemoveMember: func(string, string) error { return nil },
		Takeover:     &Takeover{Head: 0},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.dev.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "r1 caught up by the catch-up", func() bool {
		st := follow.Stats()
		return len(st.Replicas) == 1 && st.Replicas[0].State == StateInSync && n.vol.Status().Head == pv.Status().Head
	})
	if err := follow.Close(); err != nil {
		t.Fatal(err)
	}
	// Re-added: it streams the next writes.
	if err := c.p.SetMembers(1, c.members()); err != nil {
		t.Fatal(err)
	}
	write(t, c.dev, 20, 0x6b)
	waitFor(t, 10*time.Second, "r1 streams after the re-add", func() bool {
		return n.vol.Status().Head == pv.Status().Head || c.replicaStats("r1").State == StateNeedsRebuild
	})
	if s := c.replicaStats("r1"); s.State == StateNeedsRebuild {
		t.Fatalf("re-added member sent to a rebuild: %+v", s)
	}
	sameDevice(t, pv, n.vol, "r1")
}

// newPrimaryVolume creates dir's primary.blk, primary of epoch 1.
func newPrimaryVolume(t *testing.T, dir string, size, walSize int64) *blockvol.Volume {
	t.Helper()
	pv, err := blockvol.Create(filepath.Join(dir, "primary.blk"), size, blockvol.Options{WALSize: walSize})
	if err != nil {
		t.Fatal(err)
	}
	if err := pv.Unfence(1, blockvol.RolePrimary, time.Time{}); err != nil {
		t.Fatal(err)
	}
	return pv
}

package replication

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"net"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/replication/faultproxy"
)

const volName = "vol1"

// node is one replica's volume server: a volume, a replication server on
// loopback and a fault proxy in front of it.
type node struct {
	id    string
	addr  string // the server's own address
	vol   *blockvol.Volume
	srv   *Server
	proxy *faultproxy.Proxy
	done  chan error
}

type cluster struct {
	t       *testing.T
	direct  bool
	pvol    *blockvol.Volume
	p       *Primary
	dev     *Volume
	nodes   []*node
	removed chan string
	reasons chan string // RemoveMember's reasons, dropped when full
}

type clusterOpts struct {
	rf      int
	mode    Mode
	size    int64
	walSize int64
	direct  bool // members are dialed directly, not through the proxies
	tune    func(*PrimaryOptions)
}

func (c *cluster) members() []Member {
	var ms []Member
	for _, n := range c.nodes {
		addr := n.proxy.Addr()
		if c.direct {
			addr = n.addr
		}
		ms = append(ms, Member{ServerID: n.id, Addr: addr})
	}
	return ms
}

func newReplicaNode(t testing.TB, dir, id string, size, walSize int64, epoch uint64) *node {
	t.Helper()
	// Goroutines started here (the volume's flusher, the server and its
	// connections) carry side=replica in profiles.
	defer pprof.SetGoroutineLabels(context.Background())
	pprof.SetGoroutineLabels(pprof.WithLabels(context.Background(), pprof.Labels("side", "replica")))
	v, err := blockvol.Create(filepath.Join(dir, id+".blk"), size, blockvol.Options{WALSize: walSize})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Unfence(epoch, blockvol.RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := &node{id: id, addr: l.Addr().String(), vol: v, srv: NewServer(), done: make(chan error, 1)}
	if err := n.srv.Register(volName, v); err != nil {
		t.Fatal(err)
	}
	go func() { n.done <- n.srv.Serve(l) }()
	if n.proxy, err = faultproxy.New(l.Addr().String()); err != nil {
		t.Fatal(err)
	}
	return n
}

func (n *node) close(t testing.TB) {
	n.proxy.Close()
	n.srv.Close()
	n.srv.Close()
	if err := <-n.done; err != nil {
		t.Errorf("%s: serve: %v", n.id, err)
	}
	if err := n.vol.Close(); err != nil {
		t.Errorf("%s: close: %v", n.id, err)
	}
}

func newCluster(t testing.TB, o clusterOpts) *cluster {
	t.Helper()
	if o.size == 0 {
		o.size = 4 << 20
	}
	if o.walSize == 0 {
		o.walSize = 8 << 20
	}
	dir := t.TempDir()
	// The primary's goroutines (flusher, cursors) carry side=primary in
	// profiles; so does whatever the caller runs (the writers).
	pprof.SetGoroutineLabels(pprof.WithLabels(context.Background(), pprof.Labels("side", "primary")))
	pv, err := blockvol.Create(filepath.Join(dir, "primary.blk"), o.size, blockvol.Options{WALSize: o.walSize})
	if err != nil {
		t.Fatal(err)
	}
	if err := pv.Unfence(1, blockvol.RolePrimary, time.Time{}); err != nil {
		t.Fatal(err)
	}
	c := &cluster{pvol: pv, removed: make(chan string, 16), reasons: make(chan string, 16), direct: o.direct}
	if tt, ok := t.(*testing.T); ok {
		c.t = tt
	}
	for i := 1; i < o.rf; i++ {
		c.nodes = append(c.nodes, newReplicaNode(t, dir, fmt.Sprintf("r%d", i), o.size, o.walSize, 1))
	}
	po := PrimaryOptions{
		Name: volName, Mode: o.mode, Epoch: 1, Members: c.members(),
		RemoveMember: func(id, why string) error {
			select {
			case c.reasons <- why:
			default:
			}
			c.removed <- id
			return nil
		},
		CommitTimeout: 30 * time.Second,
		MemberTimeout: 500 * time.Millisecond,
	}
	if o.tune != nil {
		o.tune(&po)
	}
	pprof.SetGoroutineLabels(pprof.WithLabels(context.Background(), pprof.Labels("side", "primary")))
	if c.p, err = NewPrimary(pv, po); err != nil {
		t.Fatal(err)
	}
	c.dev = NewVolume(pv, c.p)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("primary stats at failure: %+v", c.p.Stats())
		}
		c.close(t)
	})
	return c
}

func (c *cluster) close(t testing.TB) {
	c.p.Close()
	c.p.Close()
	for _, n := range c.nodes {
		n.close(t)
	}
	if err := c.pvol.Close(); err != nil {
		t.Errorf("primary close: %v", err)
	}
}

// node returns the node with id.
func (c *cluster) node(id string) *node {
	for _, n := range c.nodes {
		if n.id == id {
			return n
		}
	}
	c.t.Fatalf("no node %s", id)
	return nil
}

// randomLoad runs writers goroutines of random writes, trims and zeroes,
// each flushing every flushEvery operations. It fails the test on any error.
func randomLoad(t testing.TB, dev *Volume, writers, ops, flushEvery int, seed int64) {
	t.Helper()
	bs := int64(dev.BlockSize())
	nb := dev.Size() / bs
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(seed + int64(w)))
			buf := make([]byte, 8*bs)
			for i := 0; i < ops; i++ {
				blocks := int64(1 + rng.Intn(8))
				lba := rng.Int63n(nb - blocks + 1)
				var err error
				switch k := rng.Intn(20); {
				case k == 0:
					err = dev.Trim(lba*bs, blocks*bs)
				case k == 1:
					err = dev.WriteZeroes(lba*bs, blocks*bs, rng.Intn(4) == 0)
				default:
					p := buf[:blocks*bs]
					rng.Read(p)
					err = dev.WriteAt(p, lba*bs, rng.Intn(16) == 0)
				}
				if err == nil && flushEvery > 0 && i%flushEvery == flushEvery-1 {
					err = dev.Flush()
				}
				if err != nil {
					errs <- fmt.Errorf("writer %d op %d: %w", w, i, err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// waitFor polls cond until it holds or fails the test after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// replicaStats returns the stats of member id.
func (c *cluster) replicaStats(id string) ReplicaStats {
	for _, r := range c.p.Stats().Replicas {
		if r.ServerID == id {
			return r
		}
	}
	return ReplicaStats{}
}

// waitCaughtUp waits until replica id reported durable the primary's head.
func (c *cluster) waitCaughtUp(t testing.TB, id string) {
	t.Helper()
	head := c.pvol.Status().Head
	waitFor(t, 20*time.Second, id+" durable at primary head", func() bool {
		return c.node(id).vol.Status().Durable >= head && c.replicaStats(id).Durable >= head
	})
}

// sameDevice compares two volumes byte for byte.
func sameDevice(t testing.TB, a, b *blockvol.Volume, what string) {
	t.Helper()
	if a.Size() != b.Size() {
		t.Fatalf("%s: sizes %d and %d", what, a.Size(), b.Size())
	}
	const chunk = 1 << 20
	pa, pb := make([]byte, chunk), make([]byte, chunk)
	for off := int64(0); off < a.Size(); off += chunk {
		n := int64(chunk)
		if a.Size()-off < n {
			n = a.Size() - off
		}
		if err := a.ReadAt(pa[:n], off); err != nil {
			t.Fatal(err)
		}
		if err := b.ReadAt(pb[:n], off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(pa[:n], pb[:n]) {
			for i := int64(0); i < n; i++ {
				if pa[i] != pb[i] {
					t.Fatalf("%s: first difference at byte %d", what, off+i)
				}
			}
		}
	}
}

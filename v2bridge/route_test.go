package v2bridge

import (
	"context"
	"errors"
	"io"
	"math/rand"
	"net"
	"testing"
	"time"

	"github.com/weedblock/weedblock/engine"
	"github.com/weedblock/weedblock/executor"
	"github.com/weedblock/weedblock/replication"
)

// startRouted serves recovery the way a volume server does: through the
// replication listener, routed by Preface.
func startRouted(t testing.TB) (*replication.Server, *Service, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, svc := replication.NewServer(), NewService()
	if err := srv.Route(Preface, svc); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		svc.Close()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return srv, svc, l.Addr().String()
}

func TestRoutedCatchUpAndRebuild(t *testing.T) {
	srv, svc, addr := startRouted(t)
	prim := primaryVol(t, 1, volOpts{manual: true})
	rep := newReplicaVol(t, "r.vol", 1, volOpts{})
	if err := svc.Register("vol1", rep); err != nil {
		t.Fatal(err)
	}
	if err := srv.Register("vol1", rep); err != nil {
		t.Fatal(err)
	}
	rc := newRecovery(t, engine.NewSlots(), prim, "s2", addr, PeerOptions{})
	rng := rand.New(rand.NewSource(21))
	writeRandom(t, prim, rng, 100, 0, testSize/bs)
	out := rc.recover(engine.Unknown, engine.CatchUp, executor.Config{BatchRecords: 16})
	wantInSync(t, out, prim.Status().Durable)
	sameDevice(t, prim, rep)

	// The data plane on the same port meanwhile: a hello to the replica.
	cn, err := replication.Dial(context.Background(), addr, "vol1", 1, replication.DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cn.ReplicaDurable() != out.Achieved {
		t.Fatalf("hello says durable %d, catch-up achieved %d", cn.ReplicaDurable(), out.Achieved)
	}
	cn.Close()

	// A rebuild through the same route, with writes racing it.
	writeRandom(t, prim, rng, 200, 0, testSize/bs)
	if err := prim.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	w := startWriter(prim, 22)
	out = rc.recover(engine.NeedsRebuild, engine.Rebuild, executor.Config{BatchBytes: 512 << 10})
	w.finish(t)
	wantInSync(t, out, 1)
	if st := rep.Status(); st.Untrusted {
		t.Fatalf("replica after a routed rebuild: %+v", st)
	}
	tok, plan := rc.plan(engine.InSync)
	wantInSync(t, rc.run(tok, plan, executor.Config{}), prim.Status().Durable)
	sameDevice(t, prim, rep)
}

func TestRoutedCloseWaits(t *testing.T) {
	srv, svc, addr := startRouted(t)
	prim := primaryVol(t, 1, volOpts{})
	rep := newReplicaVol(t, "r.vol", 1, volOpts{})
	svc.Register("vol1", rep)
	slots := engine.NewSlots()
	tok, err := slots.Acquire(engine.ReplicaID{Volume: "vol1", Server: "s2"}, 1, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slots.Release(tok)
	p := NewPeer(slots, prim, PeerOptions{Name: "vol1", Addr: addr, Timeout: 5 * time.Second})
	defer p.Close()
	if _, err := p.Report(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	// The Service closes the routed connection it serves and waits for it;
	// the replication server keeps running.
	done := make(chan struct{})
	go func() { svc.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Service.Close did not return with a routed connection open")
	}
	if _, err := p.Report(context.Background(), tok); err == nil {
		t.Fatal("a closed Service answered")
	}
	// A new connection to the closed Service is closed at once.
	if _, err := p.Report(context.Background(), tok); err == nil {
		t.Fatal("a closed Service answered a new connection")
	}
	a, b := net.Pipe()
	defer a.Close()
	svc.ServeConn(b) // returns at once
	if _, err := a.Write([]byte{1}); err == nil {
		t.Fatal("ServeConn on a closed Service left the connection open")
	}
	srv.Close()
}

func TestServeRefusesBadPreface(t *testing.T) {
	svc, addr := startService(t)
	rep := newReplicaVol(t, "r.vol", 1, volOpts{})
	svc.Register("vol1", rep)
	for _, garbage := range []string{"WBRECV02", "\x01\x00\x00\x00\x00\x00\x00\x00", "WB"} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte(garbage))
		c.(*net.TCPConn).CloseWrite()
		n, err := io.Copy(io.Discard, c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() || n != 0 {
			t.Fatalf("%q: %d bytes answered, %v", garbage, n, err)
		}
		c.Close()
	}
	// A Peer (which sends the preface) is served.
	slots := engine.NewSlots()
	tok, _ := slots.Acquire(engine.ReplicaID{Volume: "vol1", Server: "s2"}, 1, addr)
	defer slots.Release(tok)
	p := NewPeer(slots, primaryVol(t, 1, volOpts{}), PeerOptions{Name: "vol1", Addr: addr})
	defer p.Close()
	if _, err := p.Report(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
}

package replication

import (
	"bufio"
	"net"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		acc <- c
	}()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-acc
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// TestTryBarrierFrame: a barrier sent by TryBarrier is the same frame as
// one sent by Barrier, and TryBarrier refuses (writing nothing) while
// records are buffered.
func TestTryBarrierFrame(t *testing.T) {
	c, s := tcpPair(t)
	cn := &Conn{c: c, epoch: 7, bw: bufio.NewWriter(c), changed: make(chan struct{}), done: make(chan struct{})}
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	cn.raw = raw
	if !cn.TryBarrier(42) {
		t.Fatal("TryBarrier on an idle connection did not send")
	}
	if err := cn.Barrier(43); err != nil {
		t.Fatal(err)
	}
	// Something buffered: TryBarrier must not send (it would overtake it).
	if err := writeFrame(cn.bw, typeAck, encodeAck(1)); err != nil {
		t.Fatal(err)
	}
	if cn.TryBarrier(44) {
		t.Fatal("TryBarrier sent while a frame was buffered")
	}
	if err := cn.Flush(); err != nil {
		t.Fatal(err)
	}
	fr := newFrameReader(s)
	for _, want := range []uint64{42, 43} {
		ty, p, err := fr.next()
		if err != nil {
			t.Fatal(err)
		}
		if ty != typeBarrier {
			t.Fatalf("got %v, want barrier", ty)
		}
		m, err := decodeBarrier(p)
		if err != nil {
			t.Fatal(err)
		}
		if m.Epoch != 7 || m.LSN != want {
			t.Fatalf("barrier %+v, want epoch 7 lsn %d", m, want)
		}
	}
	if ty, _, err := fr.next(); err != nil || ty != typeAck {
		t.Fatalf("after the barriers: %v %v, want the buffered ack", ty, err)
	}
	// Without a raw socket (a wrapped conn) it never sends.
	cn.raw = nil
	if cn.TryBarrier(45) {
		t.Fatal("TryBarrier sent without a raw socket")
	}
}

// TestQuorumFlushesPastFullSocket: with one of three members blackholed
// until its socket is full, every quorum flush still commits (within a
// short CommitTimeout): a flush that ships records or barriers itself
// never waits on that member's connection. The other replica stays equal.
func TestQuorumFlushesPastFullSocket(t *testing.T) {
	c := newCluster(t, clusterOpts{rf: 3, mode: ModeQuorum, size: 16 << 20, walSize: 32 << 20,
		tune: func(o *PrimaryOptions) { o.CommitTimeout = 2 * time.Second; o.MemberTimeout = time.Minute }})
	c.node("r2").proxy.SetBlackhole(true)
	p := make([]byte, 256<<10)
	for i := 0; i < 24; i++ { // 6 MiB: more than the blackholed socket takes
		for j := range p {
			p[j] = byte(i + j)
		}
		if err := c.dev.WriteAt(p, int64(i%16)*int64(len(p)), false); err != nil {
			t.Fatal(err)
		}
		if i%4 == 3 {
			if err := c.dev.Flush(); err != nil {
				t.Fatalf("quorum flush %d with r2 blackholed: %v", i/4, err)
			}
		}
	}
	c.waitCaughtUp(t, "r1")
	c.p.Close()
	sameDevice(t, c.pvol, c.node("r1").vol, "r1")
}

package replication

import (
	"bufio"
	"net"
	"testing"
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

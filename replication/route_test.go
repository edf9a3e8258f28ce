package replication

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol"
)

const testPreface = "WBTEST01"

// echoHandler echoes what it reads until the connection ends, then waits
// a little before saying it returned (so Close must really wait for it).
type echoHandler struct {
	served, returned atomic.Int64
}

func (h *echoHandler) ServeConn(c net.Conn) {
	h.served.Add(1)
	io.Copy(c, c)
	time.Sleep(50 * time.Millisecond)
	h.returned.Add(1)
}

// routedNode is a replica node whose server also routes testPreface.
func routedNode(t *testing.T) (*node, *echoHandler) {
	t.Helper()
	n := newReplicaNode(t, t.TempDir(), "r1", 1<<20, 1<<20, 1)
	h := &echoHandler{}
	if err := n.srv.Route(testPreface, h); err != nil {
		t.Fatal(err)
	}
	return n, h
}

func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRouteSharesTheListener(t *testing.T) {
	n, h := routedNode(t)
	defer n.close(t)
	// A routed connection and a data-plane connection side by side.
	rc := dialRaw(t, n.addr)
	if _, err := rc.Write([]byte(testPreface + "ping")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(rc, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo %q, %v", got, err)
	}
	ctx := context.Background()
	cn, err := Dial(ctx, n.addr, volName, 1, DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer cn.Close()
	data := make([]byte, 4096)
	data[0] = 1
	rec := blockvol.Record{LSN: 1, Epoch: 1, Kind: blockvol.KindWrite, Blocks: 1, Data: data}
	if err := cn.Send(rec); err != nil {
		t.Fatal(err)
	}
	if err := cn.Barrier(1); err != nil {
		t.Fatal(err)
	}
	if err := cn.WaitDurable(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if st := n.vol.Status(); st.Durable != 1 {
		t.Fatalf("replica durable %d", st.Durable)
	}
	// The routed connection was not disturbed, and stays past the preface
	// deadline's reach (it was cleared).
	if _, err := rc.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(rc, got); err != nil || string(got) != "pong" {
		t.Fatalf("echo %q, %v", got, err)
	}
	if h.served.Load() != 1 {
		t.Fatalf("handler served %d connections", h.served.Load())
	}
}

func TestRouteGarbageIsClosed(t *testing.T) {
	n, h := routedNode(t)
	defer n.close(t)
	for _, garbage := range []string{
		"WBTEST02",               // unknown preface of the right length
		"GET / HTTP/1.1\r\n\r\n", // a stray client
		"WBT",                    // a short preface, then the end
		"\x00\xff\xfe\xfd\xfc\xfb\xfa\xf9",
	} {
		c := dialRaw(t, n.addr)
		if _, err := c.Write([]byte(garbage)); err != nil {
			t.Fatal(err)
		}
		if len(garbage) < len(testPreface) {
			c.(*net.TCPConn).CloseWrite()
		}
		// Closed: an end of stream, or a reset when the server left some
		// of the garbage unread; never a timeout.
		var buf bytes.Buffer
		var ne net.Error
		if _, err := io.Copy(&buf, c); errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("%q: %v (the server did not close the connection)", garbage, err)
		}
		if buf.Len() != 0 {
			t.Fatalf("%q was answered %q", garbage, buf.Bytes())
		}
	}
	if h.served.Load() != 0 {
		t.Fatalf("garbage reached the handler %d times", h.served.Load())
	}
	// The server still works for both kinds of traffic.
	cn, err := Dial(context.Background(), n.addr, volName, 1, DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cn.Close()
	rc := dialRaw(t, n.addr)
	rc.Write([]byte(testPreface + "x"))
	got := make([]byte, 1)
	if _, err := io.ReadFull(rc, got); err != nil || got[0] != 'x' {
		t.Fatalf("echo %q, %v", got, err)
	}
}

func TestRouteRefusesBadPrefaces(t *testing.T) {
	s := NewServer()
	defer s.Close()
	h := &echoHandler{}
	if err := s.Route(testPreface, h); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		preface string
		h       ConnHandler
	}{
		{"", h},
		{"\x01BTEST01", h}, // starts with a frame type (hello)
		{"\x07BTEST01", h}, // (error)
		{"WBTEST1", h},     // another length
		{testPreface, h},   // routed twice
		{"WBTEST02", nil},  // no handler
		{string(make([]byte, 65)), h},
	} {
		if err := s.Route(c.preface, c.h); err == nil {
			t.Fatalf("route %q accepted", c.preface)
		}
	}
	if err := s.Route("WBTEST02", h); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := s.Route("WBTEST03", h); err == nil {
		t.Fatal("route on a closed server accepted")
	}
}

func TestRouteCloseWaitsForHandlers(t *testing.T) {
	n, h := routedNode(t)
	var conns []net.Conn
	for i := 0; i < 3; i++ {
		c := dialRaw(t, n.addr)
		c.Write([]byte(testPreface + "a"))
		got := make([]byte, 1)
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// A connection that said nothing yet is closed too.
	dialRaw(t, n.addr)
	done := make(chan struct{})
	go func() {
		n.srv.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return with routed connections open")
	}
	if s, r := h.served.Load(), h.returned.Load(); s != 3 || r != 3 {
		t.Fatalf("Close returned with %d of %d handlers still running", s-r, s)
	}
	for _, c := range conns {
		var ne net.Error
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("routed connection still open after Close: %v", err)
		}
	}
	n.close(t)
}

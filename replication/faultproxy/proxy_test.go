package faultproxy

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// echoServer echoes every connection until closed.
func echoServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); io.Copy(c, c); c.Close() }()
		}
	}()
	return l.Addr().String()
}

func roundTrip(c net.Conn, msg []byte, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return io.ErrUnexpectedEOF
	}
	return nil
}

func TestProxyFaults(t *testing.T) {
	p, err := New(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(c, []byte("hello"), 5*time.Second); err != nil {
		t.Fatalf("plain: %v", err)
	}
	p.SetDelay(20 * time.Millisecond)
	if err := roundTrip(c, []byte("slow"), 5*time.Second); err != nil {
		t.Fatalf("delayed: %v", err)
	}
	p.SetDelay(0)
	p.SetBlackhole(true)
	if err := roundTrip(c, []byte("lost"), 200*time.Millisecond); err == nil {
		t.Fatal("blackholed round trip succeeded")
	}
	p.SetBlackhole(false)
	p.Cut()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 16)); err == nil {
		// The held "lost" bytes may arrive first; the next read must fail.
		if _, err := c.Read(make([]byte, 16)); err == nil {
			t.Fatal("connection survived a cut")
		}
	}
	p.SetDrop(true)
	d, err := net.Dial("tcp", p.Addr())
	if err == nil {
		d.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := d.Read(make([]byte, 1)); err == nil {
			t.Fatal("dropped connection delivered data")
		}
		d.Close()
	}
	p.SetDrop(false)
	e, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := roundTrip(e, []byte("again"), 5*time.Second); err != nil {
		t.Fatalf("after faults: %v", err)
	}
	p.Close()
	p.Close()
}

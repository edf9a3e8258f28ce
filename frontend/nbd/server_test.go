package nbd

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockdev"
)

// startServer runs a server on 127.0.0.1:0 and stops it when the test ends,
// checking that Serve returns ErrServerClosed.
func startServer(t testing.TB, opts Options) (*Server, string) {
	t.Helper()
	s := NewServer(opts)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		select {
		case err := <-served:
			if !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after Close")
		}
	})
	return s, l.Addr().String()
}

func newMem(t testing.TB, size int64, bs int) *blockdev.Mem {
	t.Helper()
	m, err := blockdev.NewMem(size, bs)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

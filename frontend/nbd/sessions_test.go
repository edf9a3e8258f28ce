package nbd

import (
	"testing"
	"time"
)

// TestSessionsCountsBoundConnections: a connection counts for its export
// once bound, not while negotiating, and stops counting when it closes.
func TestSessionsCountsBoundConnections(t *testing.T) {
	s, addr := startServer(t, Options{})
	if err := s.AddExport("a", "", newMem(t, 1<<20, 512)); err != nil {
		t.Fatal(err)
	}
	if err := s.AddExport("b", "", newMem(t, 1<<20, 512)); err != nil {
		t.Fatal(err)
	}
	if n := s.Sessions("a"); n != 0 {
		t.Fatalf("Sessions(a) = %d before any client", n)
	}
	neg := dialOpts(t, addr) // negotiating, bound to nothing
	c1 := dialExport(t, addr, "a", false)
	c2 := dialExport(t, addr, "a", true)
	dialExport(t, addr, "b", false)
	waitSessions(t, s, "a", 2)
	waitSessions(t, s, "b", 1)
	if n := s.Sessions("nope"); n != 0 {
		t.Fatalf("Sessions(nope) = %d", n)
	}
	c1.nc.Close()
	waitSessions(t, s, "a", 1)
	c2.nc.Close()
	neg.nc.Close()
	waitSessions(t, s, "a", 0)
	waitSessions(t, s, "b", 1)
}

func waitSessions(t *testing.T, s *Server, name string, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := s.Sessions(name)
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Sessions(%q) = %d, want %d", name, n, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

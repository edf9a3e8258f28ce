package iscsi

import (
	"testing"
	"time"
)

// TestSessionsCountsNormalSessions: a logged-in session counts for its
// target until it logs out; other targets and unknown names count zero.
func TestSessionsCountsNormalSessions(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	if n := ts.srv.Sessions(ts.name); n != 0 {
		t.Fatalf("Sessions before login = %d", n)
	}
	in := dialInit(t, ts.addr)
	in.login(ts.name, defaultOpKeys())
	waitTargetSessions(t, ts.srv, ts.name, 1)
	if n := ts.srv.Sessions(IQN("other")); n != 0 {
		t.Fatalf("Sessions(other) = %d", n)
	}
	in.logout(0)
	waitTargetSessions(t, ts.srv, ts.name, 0)
}

func waitTargetSessions(t *testing.T, s *Server, name string, want int) {
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

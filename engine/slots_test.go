package engine

import (
	"context"
	"errors"
	"sync"
	"testing"
)

func done(ctx context.Context) bool {
	select {
	case <-ctx.Done():
		return true
	default:
		return false
	}
}

func TestSlotsOneLivePerReplica(t *testing.T) {
	s := NewSlots()
	a := ReplicaID{"v1", "s2"}
	b := ReplicaID{"v1", "s3"}
	ta, err := s.Acquire(a, 4, "10.0.0.2:1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Acquire(a, 4, "10.0.0.2:1"); !errors.Is(err, ErrBusy) {
		t.Fatalf("second acquire: %v, want ErrBusy", err)
	}
	tb, err := s.Acquire(b, 4, "10.0.0.2:1") // same address, other server: independent
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Check(ta); err != nil {
		t.Fatal(err)
	}
	if err := s.Check(tb); err != nil {
		t.Fatal(err)
	}
	if done(ta.Context()) || done(tb.Context()) {
		t.Fatal("live token's context done")
	}
	if err := s.Release(ta); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(ta); !errors.Is(err, ErrStaleToken) {
		t.Fatalf("second release: %v", err)
	}
	if err := s.Check(ta); !errors.Is(err, ErrStaleToken) {
		t.Fatalf("check after release: %v", err)
	}
	if !done(ta.Context()) {
		t.Fatal("released token's context not done")
	}
	if err := s.Check(tb); err != nil {
		t.Fatalf("other replica affected: %v", err)
	}
	ta2, err := s.Acquire(a, 4, "10.0.0.2:1")
	if err != nil {
		t.Fatalf("acquire after release: %v", err)
	}
	if ta2.Attempt == ta.Attempt {
		t.Fatal("attempt number reused")
	}
}

func TestSlotsCancelOnEpochAndEndpoint(t *testing.T) {
	id := ReplicaID{"v1", "s2"}
	cases := []struct {
		name   string
		change func(s *Slots) (Token, error)
		cancel bool
	}{
		{"acquire with newer epoch", func(s *Slots) (Token, error) { return s.Acquire(id, 8, "a:1") }, true},
		{"acquire with new endpoint", func(s *Slots) (Token, error) { return s.Acquire(id, 7, "b:1") }, true},
		{"observe newer epoch", func(s *Slots) (Token, error) { s.Observe(id, 8, "a:1"); return Token{}, nil }, true},
		{"observe new endpoint", func(s *Slots) (Token, error) { s.Observe(id, 7, "b:1"); return Token{}, nil }, true},
		{"observe same", func(s *Slots) (Token, error) { s.Observe(id, 7, "a:1"); return Token{}, nil }, false},
		{"observe older epoch", func(s *Slots) (Token, error) { s.Observe(id, 6, "b:1"); return Token{}, nil }, false},
		{"explicit cancel", func(s *Slots) (Token, error) { s.Cancel(id, "operator"); return Token{}, nil }, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := NewSlots()
			old, err := s.Acquire(id, 7, "a:1")
			if err != nil {
				t.Fatal(err)
			}
			nt, err := tc.change(s)
			if err != nil {
				t.Fatal(err)
			}
			if done(old.Context()) != tc.cancel {
				t.Fatalf("old context done = %v, want %v", done(old.Context()), tc.cancel)
			}
			err = s.Check(old)
			if !tc.cancel {
				if err != nil {
					t.Fatalf("old token stale: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrStaleToken) {
				t.Fatalf("old token check: %v", err)
			}
			if cause := context.Cause(old.Context()); !errors.Is(cause, ErrCancelled) {
				t.Fatalf("cause %v", cause)
			}
			// The cancelled owner still releases exactly once.
			if err := s.Release(old); err != nil {
				t.Fatalf("release cancelled: %v", err)
			}
			if err := s.Release(old); !errors.Is(err, ErrStaleToken) {
				t.Fatalf("double release: %v", err)
			}
			if nt.a != nil {
				if err := s.Check(nt); err != nil {
					t.Fatalf("new token: %v (releasing the old one must not touch it)", err)
				}
			}
		})
	}
}

func TestSlotsStaleEpochRefused(t *testing.T) {
	s := NewSlots()
	id := ReplicaID{"v", "s"}
	tk, err := s.Acquire(id, 5, "a")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Release(tk); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Acquire(id, 4, "a"); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("older epoch: %v", err)
	}
	s.Observe(id, 9, "a")
	if _, err := s.Acquire(id, 8, "a"); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("epoch older than observed: %v", err)
	}
	if err := s.Check(Token{}); !errors.Is(err, ErrStaleToken) {
		t.Fatalf("zero token: %v", err)
	}
	if err := s.Release(Token{}); !errors.Is(err, ErrStaleToken) {
		t.Fatalf("zero token release: %v", err)
	}
	if !done(Token{}.Context()) {
		t.Fatal("zero token context live")
	}
}

func TestSlotsConcurrentAcquire(t *testing.T) {
	s := NewSlots()
	id := ReplicaID{"v", "s"}
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Acquire(id, 1, "a"); err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			} else if !errors.Is(err, ErrBusy) {
				t.Errorf("acquire: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d live attempts, want 1", wins)
	}
}

func TestSlotsForget(t *testing.T) {
	s := NewSlots()
	id := ReplicaID{"v", "s"}
	tk, err := s.Acquire(id, 5, "a")
	if err != nil {
		t.Fatal(err)
	}
	s.Forget(id)
	if !done(tk.Context()) || !errors.Is(s.Check(tk), ErrStaleToken) {
		t.Fatal("forget left the attempt live")
	}
	if _, ok := s.Live(id); ok {
		t.Fatal("live after forget")
	}
	if _, err := s.Acquire(id, 1, "a"); err != nil {
		t.Fatalf("epoch floor kept after forget: %v", err)
	}
	if err := s.Release(tk); err != nil {
		t.Fatalf("owner release after forget: %v", err)
	}
}

package engine

import "testing"

// BenchmarkPlanRecovery measures one planning decision (a divergent
// replica against a primary with an epoch history and a snapshot).
func BenchmarkPlanRecovery(b *testing.B) {
	v := PrimaryView{Epoch: 9, Committed: 1 << 20, Durable: 1<<20 + 10, Head: 1<<20 + 40, Tail: 1 << 19,
		Terms: []Term{{1, 1}, {3, 1000}, {5, 50000}, {9, 900000}}, Base: &BaseSnapshot{LSN: 600000, Trusted: true}}
	r := ReplicaReport{Durable: 950000, Checkpoint: 800000, Epoch: 5}
	for b.Loop() {
		if _, err := PlanRecovery(v, r, Unknown); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSlotsAcquireRelease measures the slot bookkeeping of one
// attempt (acquire, two token checks, release).
func BenchmarkSlotsAcquireRelease(b *testing.B) {
	s := NewSlots()
	id := ReplicaID{Volume: "v", Server: "s"}
	for b.Loop() {
		tok, err := s.Acquire(id, 1, "a")
		if err != nil {
			b.Fatal(err)
		}
		_ = s.Check(tok)
		_ = s.Check(tok)
		if err := s.Release(tok); err != nil {
			b.Fatal(err)
		}
	}
}

package executor

import (
	"context"
	"testing"

	"github.com/weedblock/weedblock/engine"
)

// nullIO ships records instantly, so the benchmark measures the
// executor's own per-batch cost (gate, hook, bookkeeping, log).
type nullIO struct{}

type nullPin struct{}

func (nullPin) Release() error { return nil }
func (nullPin) Revoked() bool  { return false }

func (nullIO) PinWAL(engine.Token, uint64) (WALPin, error) { return nullPin{}, nil }
func (nullIO) StreamWAL(_ context.Context, _ engine.Token, _, upTo uint64) (Progress, error) {
	return Progress{Achieved: upTo, Bytes: 4096}, nil
}
func (nullIO) Frontier() uint64 { return 0 }

// BenchmarkCatchUpBatchOverhead runs catch-ups of 1000 batches over an
// I/O that costs nothing and reports the executor's cost per batch.
func BenchmarkCatchUpBatchOverhead(b *testing.B) {
	slots := engine.NewSlots()
	log := engine.NewLog(256, nil, nil)
	ex := New(slots, Config{BatchRecords: 1, Log: log})
	id := engine.ReplicaID{Volume: "v", Server: "s"}
	const batches = 1000
	plan := engine.Plan{Kind: engine.CatchUp, Epoch: 1, From: 0, Target: batches, Reason: "bench"}
	for b.Loop() {
		tok, err := slots.Acquire(id, 1, "a")
		if err != nil {
			b.Fatal(err)
		}
		if out := ex.Run(context.Background(), tok, plan, IO{CatchUp: nullIO{}}); out.Kind != engine.OutcomeInSync {
			b.Fatal(out)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batches), "ns/batch")
}

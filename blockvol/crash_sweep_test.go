package blockvol_test

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol/faultfs"
	"github.com/weedblock/weedblock/blockvol/faultfs/oracle"
)

// TestCrashOracleConfigSweep runs the oracle over engine geometries and
// workload shapes the other tests do not: a flusher that only runs when the
// WAL fills, a roomy WAL with an eager flusher, blocks larger than a page,
// write-heavy workloads that keep writers waiting for WAL space, and
// trim-heavy ones. Each combination also gets a crash at every sync point of
// a short workload.
func TestCrashOracleConfigSweep(t *testing.T) {
	type geometry struct {
		bs, nblocks int
		wal         int64
		interval    time.Duration
	}
	geometries := []geometry{
		{4096, 64, 64 << 10, time.Hour},
		{4096, 64, 1 << 20, time.Millisecond},
		{8192, 32, 128 << 10, 3 * time.Millisecond},
		{512, 256, 64 << 10, time.Hour},
	}
	mixes := []struct {
		name string
		mix  oracle.Mix
	}{
		{"write-heavy", oracle.Mix{Write: 30, WriteFUA: 1, Flush: 1, Read: 4, Crash: 1, MaxBlocks: 16}},
		{"trim-heavy", oracle.Mix{Write: 10, Trim: 8, Zero: 4, ZeroFUA: 2, Flush: 3, Read: 6, Reopen: 1, Crash: 1, MaxBlocks: 8, HotBlocks: 6}},
		{"fua-heavy", oracle.Mix{Write: 4, WriteFUA: 10, ZeroFUA: 2, Read: 4, Crash: 1, MaxBlocks: 4, HotBlocks: 4}},
	}
	// The default run covers every geometry and every mix, and a crash at
	// every sync point for one mix per geometry; WEEDBLOCK_CRASH_SEEDS runs
	// every combination with that many seeds.
	_, extended := os.LookupEnv("WEEDBLOCK_CRASH_SEEDS")
	seeds, ops := crashSeeds(t, 1), 100
	if extended {
		ops = 300
	}
	var total oracle.Stats
	for gi, g := range geometries {
		for mi, mx := range mixes {
			name, mix := mx.name, mx.mix
			tgt := engineTarget(g.bs, g.nblocks, g.wal, g.interval)
			tgt.Name = fmt.Sprintf("%s interval=%v %s", tgt.Name, g.interval, name)
			for seed := uint64(1); seed <= uint64(seeds); seed++ {
				r := oracle.NewRunner(t, tgt, faultfs.New(), g.nblocks)
				r.Run(oracle.Generate(seed, ops, g.nblocks, mix))
				r.Finish(faultfs.CrashRandom, seed)
				s := r.Stats()
				total.Checked += s.Checked
				total.Lost += s.Lost
				total.Kept += s.Kept
			}
			if extended || mi == gi%len(mixes) {
				m := mix
				m.Crash = 0
				oracle.CrashAtEverySync(t, tgt, g.nblocks, oracle.Generate(99, 30, g.nblocks, m), 1)
			}
		}
	}
	if total.Lost == 0 || total.Kept == 0 {
		t.Fatalf("crashes never lost or never kept unflushed data: %+v", total)
	}
	t.Logf("blocks checked after crashes: %+v", total)
}

package blockvol_test

// Crash-consistency tests of the engine: the volume runs on faultfs, which
// really loses unsynced writes at a crash (drops, tears at 512-byte sectors,
// reorders them), and every read is checked against the per-block oracle of
// package oracle. Nothing here saves state "just before the crash": the only
// truth is what the volume acknowledged.
//
// Set WEEDBLOCK_CRASH_SEEDS=n for more seeds (the default run is sized to
// stay well under a minute with -race).

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/blockvol/faultfs"
	"github.com/weedblock/weedblock/blockvol/faultfs/oracle"
)

// faultFS adapts *faultfs.FS (whose methods return *faultfs.File) to
// blockvol.FS. faultfs cannot import blockvol, so the adapter lives here.
type faultFS struct{ fs *faultfs.FS }

func (a faultFS) Create(path string) (blockvol.File, error) {
	f, err := a.fs.Create(path)
	if err != nil {
		return nil, err
	}
	return f, nil
}

func (a faultFS) Open(path string) (blockvol.File, error) {
	f, err := a.fs.Open(path)
	if err != nil {
		return nil, err
	}
	return f, nil
}

var (
	_ blockvol.FS   = faultFS{}
	_ blockvol.File = (*faultfs.File)(nil)
)

const crashVolPath = "vol"

// engineTarget runs a standalone Volume of nblocks blocks of bs bytes with a
// walSize-byte WAL on faultfs.
func engineTarget(bs, nblocks int, walSize int64, interval time.Duration) oracle.Target {
	opts := func(fs *faultfs.FS) blockvol.Options {
		return blockvol.Options{FS: faultFS{fs}, BlockSize: bs, WALSize: walSize, FlushInterval: interval, Standalone: true}
	}
	return oracle.Target{
		Name: fmt.Sprintf("blockvol(bs=%d blocks=%d wal=%d)", bs, nblocks, walSize),
		Create: func(fs *faultfs.FS) (oracle.Device, error) {
			v, err := blockvol.Create(crashVolPath, int64(bs*nblocks), opts(fs))
			if err != nil {
				return nil, err
			}
			return v, nil
		},
		Open: func(fs *faultfs.FS) (oracle.Device, error) {
			v, err := blockvol.Open(crashVolPath, opts(fs))
			if err != nil {
				return nil, err
			}
			return v, nil
		},
		Unhealthy: func(d oracle.Device) bool { return !d.(*blockvol.Volume).Status().Healthy },
	}
}

// crashSeeds is how many seeds a test runs: def by default, more with
// WEEDBLOCK_CRASH_SEEDS.
func crashSeeds(t *testing.T, def int) int {
	if s := os.Getenv("WEEDBLOCK_CRASH_SEEDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("WEEDBLOCK_CRASH_SEEDS=%q: want a positive integer", s)
		}
		return n
	}
	if testing.Short() {
		return max(1, def/2)
	}
	return def
}

const (
	crashBlocks = 64
	crashWAL    = 64 << 10 // the minimum: wraps every few requests
)

// TestCrashOracleRandomWorkload: random writes, FUA writes, trims, zeroes,
// flushes, reads, clean reopens and crashes (random drop/tear/reorder,
// drop-all, keep-all) against the oracle, on a WAL small enough to wrap
// constantly.
func TestCrashOracleRandomWorkload(t *testing.T) {
	n := crashSeeds(t, 8)
	var total oracle.Stats
	for _, bs := range []int{4096, 512} {
		tgt := engineTarget(bs, crashBlocks, crashWAL, 2*time.Millisecond)
		for seed := uint64(1); seed <= uint64(n); seed++ {
			r := oracle.NewRunner(t, tgt, faultfs.New(), crashBlocks)
			r.Run(oracle.Generate(seed, 300, crashBlocks, oracle.DefaultMix()))
			r.Finish(faultfs.CrashRandom, seed)
			s := r.Stats()
			total.Checked += s.Checked
			total.Lost += s.Lost
			total.Kept += s.Kept
		}
	}
	// The crashes must really have cost unflushed data sometimes and kept
	// it other times, or this test checks nothing.
	if total.Lost == 0 || total.Kept == 0 {
		t.Fatalf("crashes never lost or never kept unflushed data: %+v", total)
	}
	t.Logf("blocks checked after crashes: %+v", total)
}

// TestCrashAtEverySyncPoint runs a fixed workload once per Sync it causes,
// turning that Sync into a crash, then recovers, finishes the workload on
// the recovered volume and crashes once more at the end.
func TestCrashAtEverySyncPoint(t *testing.T) {
	mix := oracle.DefaultMix()
	mix.Crash, mix.Reopen = 0, 1
	ops := oracle.Generate(11, 45, crashBlocks, mix)
	oracle.CrashAtEverySync(t, engineTarget(4096, crashBlocks, crashWAL, 5*time.Millisecond), crashBlocks, ops, crashSeeds(t, 2))
}

// TestCrashDuringRecovery crashes again at each of the first syncs of the
// recovery that follows a crash.
func TestCrashDuringRecovery(t *testing.T) {
	mix := oracle.DefaultMix()
	mix.Crash = 0
	tgt := engineTarget(4096, crashBlocks, crashWAL, 2*time.Millisecond)
	fired := 0
	for seed := uint64(1); seed <= uint64(crashSeeds(t, 4)); seed++ {
		r := oracle.NewRunner(t, tgt, faultfs.New(), crashBlocks)
		for k := 1; k <= 6; k++ {
			r.Run(oracle.Generate(seed*100+uint64(k), 40, crashBlocks, mix))
			if r.CrashRecovery(faultfs.CrashRandom, seed*10+uint64(k), k) {
				fired++
			}
		}
		r.Finish(faultfs.CrashRandom, seed)
	}
	if fired == 0 {
		t.Fatal("no crash fired inside a recovery")
	}
	t.Logf("%d crashes inside recovery", fired)
}

// TestSyncFailureMakesVolumeReadOnly fails each Sync of a workload in turn
// (mostly with Linux semantics: the error is reported once, later syncs of
// the file succeed without making anything durable; every third one with
// every later sync failing too): the volume must report itself
// unhealthy, refuse writes with blockdev.ErrReadOnly, keep serving reads, and
// after a crash and reopen have lost nothing it acknowledged as flushed.
func TestSyncFailureMakesVolumeReadOnly(t *testing.T) {
	mix := oracle.DefaultMix()
	mix.Crash, mix.Reopen = 0, 0
	ops := oracle.Generate(5, 60, crashBlocks, mix)
	tgt := engineTarget(4096, crashBlocks, crashWAL, 5*time.Millisecond)
	n := oracle.CountSyncs(t, tgt, crashBlocks, ops)
	reached := 0
	for failAt := 1; failAt <= n; failAt++ {
		mode := faultfs.CrashDropAll
		if failAt%2 == 0 {
			mode = faultfs.CrashRandom
		}
		f := oracle.Fault{SyncAt: failAt, Sticky: failAt%3 == 0}
		if oracle.FaultRun(t, tgt, crashBlocks, ops, f, mode, uint64(failAt), true) {
			reached++
		}
	}
	if reached < n/2 {
		t.Fatalf("only %d of %d sync failure points were reached", reached, n)
	}
	t.Logf("%d sync points, %d failures injected", n, reached)
}

// TestWriteFailureMakesVolumeReadOnly fails writes of the file layer
// (ENOSPC, some short) at points spread over a workload: the volume must go
// read-only and unhealthy, and after a crash and reopen have lost nothing it
// acknowledged as flushed.
func TestWriteFailureMakesVolumeReadOnly(t *testing.T) {
	mix := oracle.DefaultMix()
	mix.Crash, mix.Reopen = 0, 0
	ops := oracle.Generate(6, 60, crashBlocks, mix)
	tgt := engineTarget(4096, crashBlocks, crashWAL, 5*time.Millisecond)
	reached := 0
	for at := 1; at <= 80; at += 3 {
		f := oracle.Fault{WriteAt: at, WriteCount: at % 3, Short: at%2 == 0}
		mode := faultfs.CrashRandom
		if at%4 == 1 {
			mode = faultfs.CrashDropAll
		}
		if oracle.FaultRun(t, tgt, crashBlocks, ops, f, mode, uint64(at), true) {
			reached++
		}
	}
	if reached < 10 {
		t.Fatalf("only %d write failure points were reached", reached)
	}
	t.Logf("%d write failures injected", reached)
}

// TestCrashConcurrentWriters: several writers on their own block ranges,
// with their own flushes and FUA writes sharing group commits and a
// constantly wrapping WAL, while a crash fires at a random upcoming sync.
// After each crash every block is checked.
func TestCrashConcurrentWriters(t *testing.T) {
	tgt := engineTarget(4096, crashBlocks, crashWAL, 2*time.Millisecond)
	fired := 0
	for seed := uint64(1); seed <= uint64(crashSeeds(t, 4)); seed++ {
		fired += oracle.Concurrent(t, tgt, crashBlocks, 4, 8, 80, seed)
	}
	if fired == 0 {
		t.Fatal("no armed crash fired during the concurrent rounds")
	}
	t.Logf("%d rounds ended in a crash at a sync point", fired)
}

// heldVolume is a Volume with a retention hold taken at open, as a primary
// with a lagging replica has: the WAL tail cannot pass the hold, so
// recovery scans records the checkpoint already covers, and the hold is
// revoked when it blocks writers.
type heldVolume struct {
	*blockvol.Volume
	h *blockvol.Hold
}

func (hv heldVolume) Close() error {
	hv.h.Release()
	return hv.Volume.Close()
}

func holdTarget(budget int64) oracle.Target {
	base := engineTarget(4096, crashBlocks, 128<<10, 2*time.Millisecond)
	hold := func(d oracle.Device, err error) (oracle.Device, error) {
		if err != nil {
			return nil, err
		}
		v := d.(*blockvol.Volume)
		st := v.Status()
		h, err := v.Hold(max(st.Tail, 1), budget)
		if err != nil {
			v.Close()
			return nil, fmt.Errorf("hold from %d (head %d): %w", st.Tail, st.Head, err)
		}
		return heldVolume{v, h}, nil
	}
	return oracle.Target{
		Name:   fmt.Sprintf("%s with a hold (budget %d)", base.Name, budget),
		Create: func(fs *faultfs.FS) (oracle.Device, error) { return hold(base.Create(fs)) },
		Open:   func(fs *faultfs.FS) (oracle.Device, error) { return hold(base.Open(fs)) },
		Unhealthy: func(d oracle.Device) bool {
			return !d.(heldVolume).Volume.Status().Healthy
		},
	}
}

// TestCrashOracleWithRetentionHold runs the random workload with a
// retention hold pinning the WAL (with and without a byte budget).
func TestCrashOracleWithRetentionHold(t *testing.T) {
	for _, budget := range []int64{0, 48 << 10} {
		tgt := holdTarget(budget)
		for seed := uint64(1); seed <= uint64(crashSeeds(t, 4)); seed++ {
			r := oracle.NewRunner(t, tgt, faultfs.New(), crashBlocks)
			r.Run(oracle.Generate(seed, 300, crashBlocks, oracle.DefaultMix()))
			r.Finish(faultfs.CrashRandom, seed)
		}
	}
}

// TestReadFailureLosesNothing fails reads of the file layer (EIO) at points
// spread over a workload — frontend reads, the flusher reading the WAL:
// reads must return an error or the right data, never wrong data, and
// after a crash and reopen nothing acknowledged as flushed may be missing.
func TestReadFailureLosesNothing(t *testing.T) {
	mix := oracle.DefaultMix()
	mix.Crash, mix.Reopen = 0, 0
	ops := oracle.Generate(8, 80, crashBlocks, mix)
	tgt := engineTarget(4096, crashBlocks, crashWAL, 5*time.Millisecond)
	reached := 0
	for at := 1; at <= 120; at += 4 {
		f := oracle.Fault{ReadAt: at, ReadCount: 1 + at%3}
		mode := faultfs.CrashRandom
		if at%3 == 0 {
			mode = faultfs.CrashDropAll
		}
		if oracle.FaultRun(t, tgt, crashBlocks, ops, f, mode, uint64(at), true) {
			reached++
		}
	}
	if reached < 10 {
		t.Fatalf("only %d read failure points were reached", reached)
	}
	t.Logf("%d read failures injected", reached)
}

package oracle

// Tests of the Model harness itself, against toy devices written here: a
// simple correct one (data in place, Flush = Sync, read-only after a failed
// Sync) must pass everything, and deliberately broken ones must be caught.
// This is what shows the engine tests can fail.

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/weedblock/weedblock/blockdev"
	"github.com/weedblock/weedblock/blockvol/faultfs"
)

// toyBug selects a deliberate defect of the toy Device.
type toyBug int

const (
	toyCorrect     toyBug = iota
	toyLyingFlush         // Flush returns nil without syncing
	toyRetryFsync         // on a failed Sync, syncs again and reports success
	toyFUAIgnored         // FUA writes are not synced
	toyStaleRead          // reads of a block return the value before the newest write
	toyTrimForgets        // Trim does nothing
	toyResurrect          // every second open brings back every write ever made
)

func (b toyBug) String() string {
	return [...]string{"correct", "lying-flush", "retry-fsync", "fua-ignored", "stale-read", "trim-forgets", "resurrect"}[b]
}

const toyBS = 512

// toyDev stores block i at file offset i*512. Sectors are the Device's
// blocks, so the file layer never tears a block.
type toyDev struct {
	mu      sync.Mutex
	f       *faultfs.File
	nblocks int
	bug     toyBug
	ro      bool
	prev    map[int64][]byte // toyStaleRead: content before the newest write
	ghost   *faultfs.File    // toyResurrect: every write ever made
}

var _ blockdev.Device = (*toyDev)(nil)

func toyTarget(bug toyBug, nblocks int) Target {
	opens := 0
	return Target{
		Name: "toy-" + bug.String(),
		Create: func(fs *faultfs.FS) (Device, error) {
			f, err := fs.Create("toy")
			if err != nil {
				return nil, err
			}
			if err := f.Truncate(int64(nblocks) * toyBS); err != nil {
				return nil, err
			}
			if err := f.Sync(); err != nil {
				return nil, err
			}
			d := &toyDev{f: f, nblocks: nblocks, bug: bug, prev: map[int64][]byte{}}
			if bug == toyResurrect {
				if d.ghost, err = fs.Create("ghost"); err != nil {
					return nil, err
				}
			}
			return d, nil
		},
		Open: func(fs *faultfs.FS) (Device, error) {
			f, err := fs.Open("toy")
			if err != nil {
				return nil, err
			}
			if sz, err := f.Size(); err != nil || sz != int64(nblocks)*toyBS {
				return nil, fmt.Errorf("toy: size %d: %v", sz, err)
			}
			opens++
			if bug == toyResurrect && opens%2 == 0 {
				if err := replayGhost(fs, f, nblocks); err != nil {
					return nil, err
				}
			}
			// Like a real recovery, make what was found durable.
			if err := f.Sync(); err != nil {
				return nil, err
			}
			d := &toyDev{f: f, nblocks: nblocks, bug: bug, prev: map[int64][]byte{}}
			if bug == toyResurrect {
				if d.ghost, err = fs.Open("ghost"); err != nil {
					return nil, err
				}
			}
			return d, nil
		},
	}
}

// replayGhost copies every non-zero block of the ghost file over f: the
// resurrection bug.
func replayGhost(fs *faultfs.FS, f *faultfs.File, nblocks int) error {
	g, err := fs.Open("ghost")
	if err != nil {
		return err
	}
	defer g.Close()
	p := make([]byte, toyBS)
	for b := 0; b < nblocks; b++ {
		n, _ := g.ReadAt(p, int64(b*toyBS))
		if n < toyBS || string(p) == string(make([]byte, toyBS)) {
			continue
		}
		if _, err := f.WriteAt(p, int64(b*toyBS)); err != nil {
			return err
		}
	}
	return nil
}

func (d *toyDev) BlockSize() int { return toyBS }
func (d *toyDev) Size() int64    { return int64(d.nblocks) * toyBS }

func (d *toyDev) check(off, n int64) error {
	return blockdev.CheckRange(off, n, d.Size(), toyBS)
}

func (d *toyDev) sync() error {
	err := d.f.Sync()
	if err != nil && d.bug == toyRetryFsync {
		err = d.f.Sync()
	}
	if err != nil {
		d.ro = true
	}
	return err
}

func (d *toyDev) ReadAt(p []byte, off int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(off, int64(len(p))); err != nil {
		return err
	}
	if _, err := d.f.ReadAt(p, off); err != nil {
		return err
	}
	if d.bug == toyStaleRead {
		for i := int64(0); i < int64(len(p)); i += toyBS {
			if old, ok := d.prev[off+i]; ok {
				copy(p[i:i+toyBS], old)
			}
		}
	}
	return nil
}

func (d *toyDev) WriteAt(p []byte, off int64, fua bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(off, int64(len(p))); err != nil {
		return err
	}
	if d.ro {
		return fmt.Errorf("toy Write: %w", blockdev.ErrReadOnly)
	}
	if d.bug == toyStaleRead {
		for i := int64(0); i < int64(len(p)); i += toyBS {
			old := make([]byte, toyBS)
			d.f.ReadAt(old, off+i)
			d.prev[off+i] = old
		}
	}
	if _, err := d.f.WriteAt(p, off); err != nil {
		d.ro = true
		return err
	}
	if d.bug == toyResurrect && d.ghost != nil {
		// A durable copy of every write, on the side.
		if _, err := d.ghost.WriteAt(p, off); err != nil {
			return err
		}
		if err := d.ghost.Sync(); err != nil {
			return err
		}
	}
	if fua && d.bug != toyFUAIgnored {
		return d.sync()
	}
	return nil
}

func (d *toyDev) punch(off, n int64, fua bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(off, n); err != nil {
		return err
	}
	if d.ro {
		return fmt.Errorf("toy punch: %w", blockdev.ErrReadOnly)
	}
	for i := int64(0); i < n; i += toyBS {
		delete(d.prev, off+i)
	}
	if err := d.f.PunchHole(off, n); err != nil {
		return err
	}
	if fua {
		return d.sync()
	}
	return nil
}

func (d *toyDev) Trim(off, n int64) error {
	if d.bug == toyTrimForgets {
		return d.check(off, n)
	}
	return d.punch(off, n, false)
}

func (d *toyDev) WriteZeroes(off, n int64, fua bool) error { return d.punch(off, n, fua) }

func (d *toyDev) Flush() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ro {
		return fmt.Errorf("toy Flush: %w", blockdev.ErrReadOnly)
	}
	if d.bug == toyLyingFlush {
		return nil
	}
	return d.sync()
}

func (d *toyDev) Close() error {
	if d.ghost != nil {
		d.ghost.Close()
	}
	return d.f.Close()
}

// catchTB stands in for *testing.T inside a harness Run that is expected to
// fail: Fatalf records the message and ends the goroutine.
type catchTB struct {
	testing.TB
	mu  sync.Mutex
	msg string
}

func (c *catchTB) Helper() {}
func (c *catchTB) Fatalf(format string, args ...any) {
	c.mu.Lock()
	c.msg = fmt.Sprintf(format, args...)
	c.mu.Unlock()
	runtime.Goexit()
}
func (c *catchTB) Fatal(args ...any)                 { c.Fatalf("%s", fmt.Sprint(args...)) }
func (c *catchTB) Errorf(format string, args ...any) { c.Fatalf(format, args...) }
func (c *catchTB) Logf(string, ...any)               {}

// expectCaught runs f with a catchTB and returns the failure message, or
// fails t if f passed.
func expectCaught(t *testing.T, what string, f func(tb testing.TB)) string {
	t.Helper()
	c := &catchTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(c)
	}()
	<-done
	if c.msg == "" {
		t.Fatalf("%s: the harness did not catch the defect", what)
	}
	return c.msg
}

const toyBlocks = 32

func TestOracleToyCorrectPasses(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		tgt := toyTarget(toyCorrect, toyBlocks)
		r := NewRunner(t, tgt, faultfs.New(), toyBlocks)
		r.Run(Generate(seed, 300, toyBlocks, DefaultMix()))
		r.Finish(faultfs.CrashRandom, seed)
	}
}

func TestOracleToyCorrectCrashAtEverySync(t *testing.T) {
	mix := DefaultMix()
	mix.Crash, mix.Reopen = 0, 1
	CrashAtEverySync(t, toyTarget(toyCorrect, toyBlocks), toyBlocks, Generate(7, 120, toyBlocks, mix), 2)
}

func TestOracleToyCrashDuringRecovery(t *testing.T) {
	fired := 0
	for seed := uint64(1); seed <= 10; seed++ {
		r := NewRunner(t, toyTarget(toyCorrect, toyBlocks), faultfs.New(), toyBlocks)
		mix := DefaultMix()
		mix.Crash = 0
		r.Run(Generate(seed, 100, toyBlocks, mix))
		for k := 1; k <= 2; k++ {
			if r.CrashRecovery(faultfs.CrashRandom, seed*10+uint64(k), k) {
				fired++
			}
			r.Run(Generate(seed+100, 30, toyBlocks, mix))
		}
		r.Finish(faultfs.CrashRandom, seed)
	}
	if fired == 0 {
		t.Fatal("no crash fired during recovery")
	}
}

func TestOracleToyCorrectWriteFailure(t *testing.T) {
	ops := Generate(4, 80, toyBlocks, DefaultMix())
	tgt := toyTarget(toyCorrect, toyBlocks)
	reached := 0
	for at := 1; at <= 40; at += 3 {
		for _, short := range []bool{false, true} {
			f := Fault{WriteAt: at, WriteCount: 1 + at%3, Short: short}
			if FaultRun(t, tgt, toyBlocks, ops, f, faultfs.CrashRandom, uint64(at), true) {
				reached++
			}
		}
	}
	if reached == 0 {
		t.Fatal("no write failure reached")
	}
}

func TestOracleToyConcurrent(t *testing.T) {
	fired := Concurrent(t, toyTarget(toyCorrect, toyBlocks), toyBlocks, 4, 10, 60, 1)
	if fired == 0 {
		t.Fatal("no armed crash fired during the concurrent rounds")
	}
	// A device whose flush lies is caught under concurrency too.
	expectCaught(t, "concurrent lying flush", func(tb testing.TB) {
		for seed := uint64(1); seed <= 5; seed++ {
			Concurrent(tb, toyTarget(toyLyingFlush, toyBlocks), toyBlocks, 4, 10, 60, seed)
		}
	})
}

func TestOracleToyCorrectSyncFailure(t *testing.T) {
	ops := Generate(3, 80, toyBlocks, DefaultMix())
	tgt := toyTarget(toyCorrect, toyBlocks)
	n := CountSyncs(t, tgt, toyBlocks, ops)
	reached := 0
	for failAt := 1; failAt <= n; failAt++ {
		for _, mode := range []faultfs.CrashMode{faultfs.CrashDropAll, faultfs.CrashRandom, faultfs.CrashKeepAll} {
			if SyncFailure(t, tgt, toyBlocks, ops, failAt, mode, uint64(failAt), true) {
				reached++
			}
		}
	}
	// The count includes the syncs of clean reopens, which SyncFailure
	// leaves out.
	if reached < n {
		t.Fatalf("only %d of %d failure points reached", reached/3, n)
	}
}

// TestOracleCatchesBrokenDevices: each defect of the toy Device must make the
// harness fail, with a message that names the problem.
func TestOracleCatchesBrokenDevices(t *testing.T) {
	cases := []struct {
		name string
		bug  toyBug
		want string // substring of the failure
		run  func(tb testing.TB, tgt Target)
	}{
		{"lyingflush", toyLyingFlush, "after crash", func(tb testing.TB, tgt Target) {
			mix := DefaultMix()
			mix.Crash = 8
			for seed := uint64(1); seed <= 20; seed++ {
				r := NewRunner(tb, tgt, faultfs.New(), toyBlocks)
				r.Run(Generate(seed, 200, toyBlocks, mix))
				r.Finish(faultfs.CrashDropAll, seed)
			}
		}},
		{"fuaignored", toyFUAIgnored, "after crash", func(tb testing.TB, tgt Target) {
			mix := Mix{WriteFUA: 10, Read: 2, Crash: 2, MaxBlocks: 4}
			for seed := uint64(1); seed <= 20; seed++ {
				r := NewRunner(tb, tgt, faultfs.New(), toyBlocks)
				r.Run(Generate(seed, 100, toyBlocks, mix))
				r.Finish(faultfs.CrashDropAll, seed)
			}
		}},
		{"staleread", toyStaleRead, "want newest acknowledged", func(tb testing.TB, tgt Target) {
			r := NewRunner(tb, tgt, faultfs.New(), toyBlocks)
			r.Run(Generate(1, 200, toyBlocks, DefaultMix()))
		}},
		{"trimforgets", toyTrimForgets, "want newest acknowledged", func(tb testing.TB, tgt Target) {
			mix := Mix{Write: 5, Trim: 5, Read: 5, MaxBlocks: 2, HotBlocks: 2}
			r := NewRunner(tb, tgt, faultfs.New(), toyBlocks)
			r.Run(Generate(1, 200, toyBlocks, mix))
		}},
		{"retryfsync", toyRetryFsync, "want an error wrapping blockdev.ErrReadOnly", func(tb testing.TB, tgt Target) {
			ops := Generate(3, 80, toyBlocks, DefaultMix())
			for failAt := 2; failAt <= 6; failAt++ {
				SyncFailure(tb, tgt, toyBlocks, ops, failAt, faultfs.CrashDropAll, 1, true)
			}
		}},
		{"retryfsync-crashcheck", toyRetryFsync, "after crash", func(tb testing.TB, tgt Target) {
			// Without the read-only check, the crash check alone sees
			// the Flushed data the retried fsync pretended to save.
			ops := Generate(3, 80, toyBlocks, DefaultMix())
			for failAt := 2; failAt <= 6; failAt++ {
				SyncFailure(tb, tgt, toyBlocks, ops, failAt, faultfs.CrashDropAll, 1, false)
			}
		}},
		{"resurrect", toyResurrect, "after crash", func(tb testing.TB, tgt Target) {
			// Crash-only workloads: the second open after a crash
			// brings back writes the first recovery had lost.
			mix := workloadMix4Resurrect()
			for seed := uint64(1); seed <= 20; seed++ {
				r := NewRunner(tb, tgt, faultfs.New(), toyBlocks)
				r.Run(Generate(seed, 200, toyBlocks, mix))
				r.Finish(faultfs.CrashDropAll, seed)
			}
		}},
		{"inplace4k", toyCorrect, "torn or corrupt", func(tb testing.TB, tgt Target) {
			// A 4 KiB-block Device that writes in place tears blocks at
			// a Crash: the 512-byte-block toy viewed as 4 KiB blocks.
			r := NewRunner(tb, tgt, faultfs.New(), toyBlocks)
			or8 := NewModel(8*toyBS, toyBlocks/8)
			r.or, r.bs = or8, 8*toyBS
			r.Run(Generate(1, 100, toyBlocks/8, Mix{Write: 10, Flush: 1, Crash: 3, MaxBlocks: 2}))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			msg := expectCaught(t, c.name, func(tb testing.TB) { c.run(tb, toyTarget(c.bug, toyBlocks)) })
			if !strings.Contains(msg, c.want) {
				t.Fatalf("caught, but the message does not say %q:\n%s", c.want, msg)
			}
			t.Logf("caught: %.300s", msg)
		})
	}
}

func TestBlockContentDecoding(t *testing.T) {
	p := make([]byte, 4096)
	BlockContent(p, 7, 42)
	if seq, err := DecodeBlock(p, 7); err != nil || seq != 42 {
		t.Fatalf("decode: %d %v", seq, err)
	}
	if _, err := DecodeBlock(p, 8); err == nil {
		t.Fatal("misplaced block not detected")
	}
	q := make([]byte, 4096)
	BlockContent(q, 7, 43)
	copy(p[512:1024], q[512:1024])
	if _, err := DecodeBlock(p, 7); err == nil {
		t.Fatal("torn block not detected")
	}
	if seq, err := DecodeBlock(make([]byte, 4096), 3); err != nil || seq != 0 {
		t.Fatalf("zero block: %d %v", seq, err)
	}
	p[100] ^= 1
	if _, err := DecodeBlock(p, 7); err == nil {
		t.Fatal("corrupt block not detected")
	}
	if errors.Is(nil, blockdev.ErrReadOnly) {
		t.Fatal("unreachable")
	}
}

// TestOracleModel checks the model's rules directly.
func TestOracleModel(t *testing.T) {
	o := NewModel(512, 2)
	o.Record(0, 1, 1, nil, false)
	o.Flushed()
	o.Record(0, 1, 2, nil, false)
	o.Record(0, 1, 3, errors.New("boom"), false)
	if o.CheckLive(0, 1) == nil {
		t.Error("live read of an overwritten value accepted")
	}
	if o.CheckLive(0, 2) != nil || o.CheckLive(0, 3) != nil {
		t.Error("live read of newest acked or unknown value rejected")
	}
	if o.CheckRecovered(0, 0) == nil {
		t.Error("recovered value older than the committed one accepted")
	}
	if err := o.CheckRecovered(0, 2); err != nil {
		t.Errorf("recovered acked-unflushed value rejected: %v", err)
	}
	if o.CheckRecovered(0, 3) == nil {
		t.Error("value discarded by recovery accepted after it")
	}
	o.Record(1, 1, 5, nil, true) // FUA
	o.Record(1, 1, 6, nil, false)
	if o.CheckRecovered(1, 0) == nil {
		t.Error("FUA write lost at crash accepted")
	}

	// A flush covers what was acknowledged before it was called, by
	// anyone, and nothing acknowledged after.
	c := NewModel(512, 2)
	c.Record(0, 1, 7, nil, false)
	start := c.Clock()
	c.Record(1, 1, 8, nil, false) // acknowledged while the flush ran
	c.FlushedAt(start)
	if c.CheckRecovered(0, 0) == nil {
		t.Error("write acknowledged before a flush lost at crash accepted")
	}
	if err := c.CheckRecovered(1, 0); err != nil {
		t.Errorf("write acknowledged during a flush may be lost: %v", err)
	}
}

// workloadMix4Resurrect writes without flushing and crashes with nothing
// synced, so writes are lost and a device that brings them back is seen.
func workloadMix4Resurrect() Mix {
	return Mix{Write: 10, Read: 2, Crash: 2, MaxBlocks: 2, HotBlocks: 4}
}

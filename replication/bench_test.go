package replication

import (
	"math/rand"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// BenchmarkReplicatedWrite compares RF=1, RF=2 sync and RF=3 quorum on
// loopback, each in the same run, on the same engine:
//
//   - qd16: 4 KiB random writes from 16 goroutines, each flushing every 32
//     of its own writes (flushes overlap with other writers' writes);
//   - qd16-fio: what fio does for --iodepth=16 --fsync=32 (the product
//     row): 32 writes with 16 in flight, then every write done and one
//     Flush alone, repeated;
//   - qd1: one goroutine doing write+flush.
//
// It reports IOPS and, for RF>1, the ratio to the RF=1 figure of the same
// workload (RF=1 runs first, so run the whole workload:
// -bench 'ReplicatedWrite/qd16-fio').
func BenchmarkReplicatedWrite(b *testing.B) {
	for _, wl := range []struct {
		name       string
		writers    int
		flushEvery int
		drain      bool // flush after every flushEvery writes of all writers, alone
	}{
		{"qd16", 16, 32, false},
		{"qd16-fio", 16, 32, true},
		{"qd1", 1, 1, false},
	} {
		b.Run(wl.name, func(b *testing.B) {
			var rf1 float64
			for _, cfg := range []struct {
				name string
				rf   int
				mode Mode
			}{
				{"RF1", 1, ModeSync},
				{"RF2-sync", 2, ModeSync},
				{"RF3-quorum", 3, ModeQuorum},
			} {
				b.Run(cfg.name, func(b *testing.B) {
					c := newCluster(b, clusterOpts{rf: cfg.rf, mode: cfg.mode, size: 256 << 20, walSize: 64 << 20, direct: true})
					prefillDev(b, c)
					b.SetBytes(int64(c.dev.BlockSize()))
					b.ResetTimer()
					cpu0 := cpuTime()
					start := time.Now()
					var n int
					if wl.drain {
						n = drainedLoad(b, c.dev, b.N, wl.writers, wl.flushEvery)
					} else {
						n = writerLoad(b, c.dev, b.N, wl.writers, wl.flushEvery)
					}
					el := time.Since(start)
					cpu := cpuTime() - cpu0
					b.StopTimer()
					iops := float64(n) / el.Seconds()
					b.ReportMetric(iops, "IOPS")
					// CPU of the whole process (primary, replicas, their
					// flushers) per write: what a shared machine pays.
					b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu-us/write")
					if cfg.rf == 1 {
						rf1 = iops
					} else if rf1 > 0 {
						b.ReportMetric(iops/rf1, "xRF1")
					}
				})
			}
		})
	}
}

// writerLoad runs writers goroutines of 4 KiB random writes, each flushing
// every flushEvery of its writes, about total writes in all. It returns
// the number of writes done.
func writerLoad(b *testing.B, dev *Volume, total, writers, flushEvery int) int {
	bs := int64(dev.BlockSize())
	nb := dev.Size() / bs
	per := (total + writers - 1) / writers
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(w)))
			p := make([]byte, bs)
			rng.Read(p)
			for i := 0; i < per; i++ {
				if err := dev.WriteAt(p, rng.Int63n(nb)*bs, false); err != nil {
					errs <- err
					return
				}
				if i%flushEvery == flushEvery-1 || i == per-1 {
					if err := dev.Flush(); err != nil {
						errs <- err
						return
					}
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return per * writers
}

// drainedLoad does rounds of flushEvery 4 KiB random writes with writers
// in flight, then one Flush once all of them are done, until about total
// writes. It returns the number of writes done.
func drainedLoad(b *testing.B, dev *Volume, total, writers, flushEvery int) int {
	bs := int64(dev.BlockSize())
	nb := dev.Size() / bs
	rounds := (total + flushEvery - 1) / flushEvery
	var failed atomic.Bool
	var firstErr error
	var errOnce sync.Once
	report := func(err error) {
		errOnce.Do(func() { firstErr = err })
		failed.Store(true)
	}
	type job struct{ off int64 }
	jobs := make(chan job, flushEvery)
	var wg sync.WaitGroup
	var round sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			p := make([]byte, bs)
			rand.New(rand.NewSource(int64(w))).Read(p)
			for j := range jobs {
				if !failed.Load() {
					if err := dev.WriteAt(p, j.off, false); err != nil {
						report(err)
					}
				}
				round.Done()
			}
		}(w)
	}
	rng := rand.New(rand.NewSource(1))
	for r := 0; r < rounds && !failed.Load(); r++ {
		round.Add(flushEvery)
		for i := 0; i < flushEvery; i++ {
			jobs <- job{rng.Int63n(nb) * bs}
		}
		round.Wait()
		if err := dev.Flush(); err != nil {
			report(err)
		}
	}
	close(jobs)
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	return rounds * flushEvery
}

func prefillDev(t testing.TB, c *cluster) {
	p := make([]byte, 1<<20)
	for off := int64(0); off < c.dev.Size(); off += int64(len(p)) {
		if err := c.dev.WriteAt(p, off, false); err != nil {
			t.Fatal(err)
		}
		if off%(16<<20) == 0 {
			if err := c.dev.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := c.dev.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.nodes {
		c.waitCaughtUp(t, n.id)
		if err := n.vol.Checkpoint(); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.pvol.Checkpoint(); err != nil {
		t.Fatal(err)
	}
}

// cpuTime is the user+system CPU time the process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

package replication

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
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

// BenchmarkRFRow is the fast loop for the product's RF=2 row (fio's nbd
// engine, --rw=randwrite --bs=4k --iodepth=16 --fsync=32): RF=1 and RF=2
// sync volumes, both prefilled up front, run the same drained workload
// (32 writes, then one Flush alone) in alternating
// phases of REPL_BENCH_SECONDS (default 2) for REPL_BENCH_ROUNDS rounds
// (default 3). It reports the medians: IOPS of each, the RF=2/RF=1 ratio
// (per round, then the median), CPU per write of the whole process, and
// the flush latency. Run it with -benchtime 1x.
//
// REPL_BENCH_PROF=dir writes a CPU profile of the RF=2 phases
// (rf2-cpu-N.out, merge them with pprof) and block and mutex profiles
// taken during them; goroutines carry a side=primary|replica label (use
// -tagfocus). Do not combine it with go test's own -cpuprofile.
//
// Shapes of the same row: inline, one goroutine doing the writes one
// after the other (what the NBD server does now: its connection reader
// runs write-back WRITEs itself), and workers, 16 goroutines taking them,
// both draining before each FLUSH; and the two loads of the product
// table, 16 goroutines that never wait for each other: stream2, each
// writing twice then flushing (fio's nbd engine at qd16 with fsync=32
// sends a flush about every second write), and stream32, each flushing
// after 32 writes (16 fio jobs at qd1 with fsync=32).
func BenchmarkRFRow(b *testing.B) {
	b.Run("inline", func(b *testing.B) { benchRFRow(b, 1) })
	b.Run("workers", func(b *testing.B) { benchRFRow(b, 16) })
	b.Run("stream2", func(b *testing.B) { benchRFRow(b, -2) })
	b.Run("stream32", func(b *testing.B) { benchRFRow(b, -32) })
}

func benchRFRow(b *testing.B, writers int) {
	secs := benchEnv(b, "REPL_BENCH_SECONDS", 2)
	rounds := benchEnv(b, "REPL_BENCH_ROUNDS", 3)
	prof := os.Getenv("REPL_BENCH_PROF")
	type side struct {
		name    string
		c       *cluster
		iops    []float64
		cpu     []float64
		flushUS []float64
		// per write: context switches, read and write system calls,
		// KiB the process caused to be written to the disk
		csw, sysr, sysw, wkib []float64
	}
	sides := []*side{{name: "RF1"}, {name: "RF2"}}
	for i, s := range sides {
		s.c = newCluster(b, clusterOpts{rf: i + 1, mode: ModeSync, size: 256 << 20, walSize: 64 << 20, direct: true})
		prefillDev(b, s.c)
	}
	var ratios []float64
	b.ResetTimer()
	for r := 0; r < rounds; r++ {
		var got [2]float64
		for k := range sides {
			i := (k + r) % len(sides)
			s := sides[i]
			profiling := prof != "" && i == 1
			if profiling {
				f, err := os.Create(filepath.Join(prof, fmt.Sprintf("rf2-cpu-%d.out", r)))
				if err != nil {
					b.Fatal(err)
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					b.Fatal(err)
				}
				runtime.SetBlockProfileRate(10000)
				runtime.SetMutexProfileFraction(5)
				defer f.Close()
			}
			cpu0 := cpuTime()
			os0 := osCounts()
			var n int
			var el, lat time.Duration
			if writers < 0 {
				n, el, lat = timedStreamLoad(b, s.c.dev, time.Duration(secs)*time.Second, 16, -writers)
			} else {
				n, el, lat = timedDrainedLoad(b, s.c.dev, time.Duration(secs)*time.Second, writers, 32)
			}
			cpu := cpuTime() - cpu0
			osd := osCounts().sub(os0)
			s.csw = append(s.csw, float64(osd.csw)/float64(n))
			s.sysr = append(s.sysr, float64(osd.syscr)/float64(n))
			s.sysw = append(s.sysw, float64(osd.syscw)/float64(n))
			s.wkib = append(s.wkib, float64(osd.wbytes)/1024/float64(n))
			if profiling {
				pprof.StopCPUProfile()
				runtime.SetBlockProfileRate(0)
				runtime.SetMutexProfileFraction(0)
			}
			got[i] = float64(n) / el.Seconds()
			s.iops = append(s.iops, got[i])
			s.cpu = append(s.cpu, float64(cpu.Microseconds())/float64(n))
			s.flushUS = append(s.flushUS, float64(lat.Microseconds()))
		}
		ratios = append(ratios, got[1]/got[0])
		b.Logf("round %d: RF1 %.0f IOPS, RF2 %.0f IOPS, ratio %.3f", r, got[0], got[1], got[1]/got[0])
	}
	b.StopTimer()
	if prof != "" {
		for _, name := range []string{"block", "mutex"} {
			f, err := os.Create(filepath.Join(prof, "rf2-"+name+".out"))
			if err != nil {
				b.Fatal(err)
			}
			pprof.Lookup(name).WriteTo(f, 0)
			f.Close()
		}
	}
	for _, s := range sides {
		b.ReportMetric(median(s.iops), s.name+"-IOPS")
		b.ReportMetric(median(s.cpu), s.name+"-cpu-us/write")
		b.ReportMetric(median(s.flushUS), s.name+"-flush-p50-us")
		b.ReportMetric(median(s.csw), s.name+"-csw/write")
		b.ReportMetric(median(s.sysr), s.name+"-rsys/write")
		b.ReportMetric(median(s.sysw), s.name+"-wsys/write")
		b.ReportMetric(median(s.wkib), s.name+"-diskKiB/write")
	}
	b.ReportMetric(median(ratios), "xRF1")
}

// timedDrainedLoad is drainedLoad for a duration: rounds of flushEvery
// 4 KiB random writes with writers in flight, then one Flush once they
// are all done. It returns the writes done, the time taken and the median
// Flush latency.
func timedDrainedLoad(b *testing.B, dev *Volume, d time.Duration, writers, flushEvery int) (int, time.Duration, time.Duration) {
	bs := int64(dev.BlockSize())
	nb := dev.Size() / bs
	var failed atomic.Bool
	var firstErr error
	var errOnce sync.Once
	report := func(err error) {
		errOnce.Do(func() { firstErr = err })
		failed.Store(true)
	}
	jobs := make(chan int64, flushEvery)
	var wg, round sync.WaitGroup
	var inline []byte // one writer: the caller writes, no hand-off
	if writers == 1 {
		inline = make([]byte, bs)
		rand.New(rand.NewSource(1)).Read(inline)
		writers = 0
	}
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			p := make([]byte, bs)
			rand.New(rand.NewSource(int64(w))).Read(p)
			for off := range jobs {
				if !failed.Load() {
					if err := dev.WriteAt(p, off, false); err != nil {
						report(err)
					}
				}
				round.Done()
			}
		}(w)
	}
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	var lats []float64
	start := time.Now()
	n := 0
	for time.Since(start) < d && !failed.Load() {
		if inline != nil {
			for i := 0; i < flushEvery; i++ {
				if err := dev.WriteAt(inline, rng.Int63n(nb)*bs, false); err != nil {
					report(err)
				}
			}
		} else {
			round.Add(flushEvery)
			for i := 0; i < flushEvery; i++ {
				jobs <- rng.Int63n(nb) * bs
			}
			round.Wait()
		}
		t0 := time.Now()
		if err := dev.Flush(); err != nil {
			report(err)
		}
		lats = append(lats, float64(time.Since(t0)))
		n += flushEvery
	}
	el := time.Since(start)
	close(jobs)
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	sort.Float64s(lats)
	if len(lats) > 0 {
		pc := func(q float64) float64 { return lats[int(q*float64(len(lats)-1))] / 1000 }
		b.Logf("flush latency us: p50 %.0f p75 %.0f p90 %.0f p99 %.0f max %.0f", pc(.5), pc(.75), pc(.9), pc(.99), pc(1))
	}
	return n, el, time.Duration(median(lats))
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func benchEnv(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// counts are the process's context switches (voluntary and not) and its
// read and write system calls (/proc/self/io syscr, syscw: read, pread,
// readv...; write, pwrite, writev...) and the bytes it sent to the disk
// (write_bytes: page cache writeback it caused counts, so a write that
// dirties a large folio shows what it really costs): robust under a busy
// machine.
type counts struct{ csw, syscr, syscw, wbytes int64 }

func (a counts) sub(b counts) counts {
	return counts{a.csw - b.csw, a.syscr - b.syscr, a.syscw - b.syscw, a.wbytes - b.wbytes}
}

func osCounts() counts {
	var c counts
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		c.csw = ru.Nvcsw + ru.Nivcsw
	}
	if b, err := os.ReadFile("/proc/self/io"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(l, ": ")
			if !ok {
				continue
			}
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			switch k {
			case "syscr":
				c.syscr = n
			case "syscw":
				c.syscw = n
			case "write_bytes":
				c.wbytes = n
			}
		}
	}
	return c
}

// timedStreamLoad runs slots goroutines for d, each writing random blocks
// and flushing after every writesPerFlush writes, none waiting for the
// others. It returns the writes done, the time taken and the median
// flush latency.
func timedStreamLoad(b *testing.B, dev *Volume, d time.Duration, slots, writesPerFlush int) (int, time.Duration, time.Duration) {
	bs := int64(dev.BlockSize())
	nb := dev.Size() / bs
	var total atomic.Int64
	var failed atomic.Bool
	errs := make(chan error, slots)
	lats := make([][]float64, slots)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < slots; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(w) + time.Now().UnixNano()))
			p := make([]byte, bs)
			rng.Read(p)
			for time.Since(start) < d && !failed.Load() {
				for i := 0; i < writesPerFlush; i++ {
					if err := dev.WriteAt(p, rng.Int63n(nb)*bs, false); err != nil {
						failed.Store(true)
						errs <- err
						return
					}
				}
				t0 := time.Now()
				if err := dev.Flush(); err != nil {
					failed.Store(true)
					errs <- err
					return
				}
				lats[w] = append(lats[w], float64(time.Since(t0)))
				total.Add(int64(writesPerFlush))
			}
		}(w)
	}
	wg.Wait()
	el := time.Since(start)
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	var all []float64
	for _, l := range lats {
		all = append(all, l...)
	}
	sort.Float64s(all)
	if len(all) > 0 {
		pc := func(q float64) float64 { return all[int(q*float64(len(all)-1))] / 1000 }
		b.Logf("flush latency us: p50 %.0f p75 %.0f p90 %.0f p99 %.0f max %.0f", pc(.5), pc(.75), pc(.9), pc(.99), pc(1))
	}
	return int(total.Load()), el, time.Duration(median(all))
}

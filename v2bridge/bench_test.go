package v2bridge

import (
	"context"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/engine"
	"github.com/weedblock/weedblock/executor"
)

const benchBytes = 32 << 20

// copySource is a file of n random bytes to copy plainly: the baseline on
// the same disk in the same run.
func copySource(b *testing.B, n int64) string {
	b.Helper()
	src := filepath.Join(b.TempDir(), "src")
	f, err := os.Create(src)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewSource(1))
	p := make([]byte, min(n, 8<<20))
	for off := int64(0); off < n; off += int64(len(p)) {
		rng.Read(p)
		if _, err := f.Write(p[:min(int64(len(p)), n-off)]); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return src
}

// cpuTime is the CPU time (user + system) this process used so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// fileCopy copies src to a new file (io.Copy: copy_file_range, then
// fsync) and returns how long it took and the CPU time (this process)
// it used; the copy is removed afterwards.
//
// The copy gets warm memory for its page cache: just before it, as many
// bytes are written to a scratch file that is removed unsynced (no disk
// write), so the copy's pages are memory the kernel just freed. On a VM
// whose host takes back freed guest memory (free page reporting), filling
// pages it took back costs about 1.5 CPU-s/GiB more; warm, the copy is at
// its fastest, whatever ran before it (the rebuild's replica drops its
// pages behind it as it writes; once a removed replica's cached image
// warmed the copy's memory by accident).
func fileCopy(b *testing.B, src string) (took, cpu time.Duration) {
	b.Helper()
	st, err := os.Stat(src)
	if err != nil {
		b.Fatal(err)
	}
	warmPageCache(b, src+".warm", st.Size())
	dst := src + ".copy"
	start, c0 := time.Now(), cpuTime(b)
	in, err := os.Open(src)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		b.Fatal(err)
	}
	defer os.Remove(dst)
	defer out.Close()
	if _, err := io.Copy(out, in); err != nil {
		b.Fatal(err)
	}
	if err := out.Sync(); err != nil {
		b.Fatal(err)
	}
	return time.Since(start), cpuTime(b) - c0
}

// warmPageCache writes n bytes to a new file at path and removes it
// without syncing it: the page cache it used is freed, warm, unwritten.
func warmPageCache(b *testing.B, path string, n int64) {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	p := nonZero(int(min(n, 1<<20)))
	for off := int64(0); off < n; off += int64(len(p)) {
		if _, err := f.Write(p[:min(int64(len(p)), n-off)]); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		b.Fatal(err)
	}
}

// loadWriter writes 4 KiB blocks at random offsets of v every interval
// until stopped, counting them.
type loadWriter struct {
	stop chan struct{}
	done chan error
	n    atomic.Int64
}

func startLoad(v *blockvol.Volume, interval time.Duration) *loadWriter {
	w := &loadWriter{stop: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		rng := rand.New(rand.NewSource(99))
		p := make([]byte, bs)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-w.stop:
				w.done <- v.Flush()
				return
			case <-tick.C:
			}
			rng.Read(p)
			if err := v.WriteAt(p, rng.Int63n(v.Size()/bs)*bs, false); err != nil {
				w.done <- err
				return
			}
			w.n.Add(1)
		}
	}()
	return w
}

func (w *loadWriter) finish(b *testing.B) {
	b.Helper()
	close(w.stop)
	if err := <-w.done; err != nil {
		b.Fatal(err)
	}
}

// benchRecovery runs plan kind into a fresh replica b.N times and reports
// its MB/s beside a plain file copy of the same size, one copy after each
// recovery (so both see the same machine), and the CPU time (user +
// system, both ends: this process) per GiB of each, which varies less than
// the MB/s on a busy machine. With load > 0 a writer adds a 4 KiB write to
// the primary every load meanwhile.
func benchRecovery(b *testing.B, kind engine.Kind, prim *blockvol.Volume, bytes int64, load time.Duration) {
	svc, addr := startService(b)
	slots := engine.NewSlots()
	src := copySource(b, bytes)
	var total, copies, cpu, copyCPU time.Duration
	var writes int64
	for i := 0; i < b.N; i++ {
		rep := newReplicaVol(b, "r.vol", 1, volOpts{size: prim.Size(), wal: 64 << 20})
		svc.Register("vol1", rep)
		rc := newRecovery(b, slots, prim, "s2", addr, PeerOptions{})
		prior := engine.Unknown
		if kind == engine.Rebuild {
			prior = engine.NeedsRebuild
		}
		var w *loadWriter
		if load > 0 {
			w = startLoad(prim, load)
		}
		tok, plan := rc.plan(prior)
		if plan.Kind != kind {
			b.Fatalf("planned %v", plan)
		}
		// No write-back debt of the setup (filling the primary, the last
		// copy) slows what is timed.
		syscall.Sync()
		start, c0 := time.Now(), cpuTime(b)
		out := executor.New(slots, executor.Config{BatchRecords: 256, BatchBytes: 4 << 20}).Run(context.Background(), tok, plan, rc.peer.IO())
		total += time.Since(start)
		cpu += cpuTime(b) - c0
		if w != nil {
			w.finish(b)
			writes += w.n.Load()
		}
		wantInSync(b, out, plan.Target)
		svc.Unregister("vol1")
		rc.peer.Close()
		rep.Close()
		os.Remove(rep.Path())
		syscall.Sync()
		took, used := fileCopy(b, src)
		copies += took
		copyCPU += used
	}
	mbps := float64(bytes) * float64(b.N) / 1e6 / total.Seconds()
	cp := float64(bytes) * float64(b.N) / 1e6 / copies.Seconds()
	b.ReportMetric(mbps, "MB/s")
	b.ReportMetric(cp, "filecopy-MB/s")
	b.ReportMetric(mbps/cp, "ratio")
	gib := float64(bytes) * float64(b.N) / (1 << 30)
	b.ReportMetric(cpu.Seconds()/gib, "cpu-s/GiB")
	b.ReportMetric(copyCPU.Seconds()/gib, "filecopy-cpu-s/GiB")
	if load > 0 {
		b.ReportMetric(float64(writes)/total.Seconds(), "load-writes/s")
	}
	b.SetBytes(bytes)
}

// fillVolume writes random data over all of v and checkpoints it.
func fillVolume(b testing.TB, v *blockvol.Volume, seed int64) {
	rng := rand.New(rand.NewSource(seed))
	p := make([]byte, 1<<20)
	for off := int64(0); off < v.Size(); off += int64(len(p)) {
		rng.Read(p)
		if err := v.WriteAt(p, off, false); err != nil {
			b.Fatal(err)
		}
	}
	if err := v.Checkpoint(); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkCatchUp(b *testing.B) {
	prim := primaryVol(b, 1, volOpts{size: 64 << 20, wal: 48 << 20, manual: true})
	rng := rand.New(rand.NewSource(1))
	p := make([]byte, 128<<10)
	for off := int64(0); off < benchBytes; off += int64(len(p)) {
		rng.Read(p)
		if err := prim.WriteAt(p, off, false); err != nil {
			b.Fatal(err)
		}
	}
	if err := prim.Flush(); err != nil {
		b.Fatal(err)
	}
	benchRecovery(b, engine.CatchUp, prim, benchBytes, 0)
}

func BenchmarkRebuild(b *testing.B) {
	prim := primaryVol(b, 1, volOpts{size: benchBytes, wal: 8 << 20})
	fillVolume(b, prim, 2)
	benchRecovery(b, engine.Rebuild, prim, benchBytes, 0)
}

// BenchmarkRebuild1GiBUnderLoad is the figure: the rebuild of a
// fully written 1 GiB volume while the primary takes 4 KiB writes (one
// every 500 µs), beside a plain copy of 1 GiB.
func BenchmarkRebuild1GiBUnderLoad(b *testing.B) {
	prim := primaryVol(b, 1, volOpts{size: 1 << 30, wal: 256 << 20})
	fillVolume(b, prim, 3)
	benchRecovery(b, engine.Rebuild, prim, 1<<30, 500*time.Microsecond)
}

// BenchmarkRebuildSparse rebuilds a 256 MiB volume of which one block in
// 64 KiB was ever written: the rest travels as zero ranges.
func BenchmarkRebuildSparse(b *testing.B) {
	prim := primaryVol(b, 1, volOpts{size: 256 << 20, wal: 8 << 20})
	p := make([]byte, bs)
	rng := rand.New(rand.NewSource(4))
	for off := int64(0); off < prim.Size(); off += 64 << 10 {
		rng.Read(p)
		if err := prim.WriteAt(p, off, false); err != nil {
			b.Fatal(err)
		}
	}
	if err := prim.Checkpoint(); err != nil {
		b.Fatal(err)
	}
	benchRecovery(b, engine.Rebuild, prim, prim.Size(), 0)
}

package blockvol

import (
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Benchmarks run on a real file in a temp dir (the same disk for the
// engine and the raw baseline). Compare flushes/s of
// BenchmarkWriteFlush4K/writers=16 with BenchmarkRawPwriteFdatasync.

const benchVolSize = 256 << 20

func benchVolume(b *testing.B, opts Options) *Volume {
	b.Helper()
	path := filepath.Join(b.TempDir(), "bench.blk")
	if opts.WALSize == 0 {
		opts.WALSize = 64 << 20
	}
	opts.Standalone = true
	v, err := Create(path, benchVolSize, opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { v.Close() })
	return v
}

func BenchmarkWrite4KRandom(b *testing.B) {
	v := benchVolume(b, Options{})
	p := block(4096, 1)
	rng := rand.New(rand.NewPCG(1, 1))
	nb := benchVolSize / 4096
	b.SetBytes(4096)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := v.WriteAt(p, int64(rng.IntN(nb))*4096, false); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
}

// BenchmarkWriteFlush4K: every op is a 4 KiB write followed by Flush; the
// writers run concurrently and share fdatasyncs.
func BenchmarkWriteFlush4K(b *testing.B) {
	for _, writers := range []int{1, 16} {
		b.Run("writers="+itoa(writers), func(b *testing.B) {
			v := benchVolume(b, Options{})
			nb := benchVolSize / 4096
			b.SetBytes(4096)
			b.ReportAllocs()
			var wg sync.WaitGroup
			per := (b.N + writers - 1) / writers
			b.ResetTimer()
			for w := 0; w < writers; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					p := block(4096, byte(w))
					rng := rand.New(rand.NewPCG(uint64(w), 2))
					for i := 0; i < per; i++ {
						if err := v.WriteAt(p, int64(rng.IntN(nb))*4096, false); err != nil {
							b.Error(err)
							return
						}
						if err := v.Flush(); err != nil {
							b.Error(err)
							return
						}
					}
				}(w)
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(per*writers)/b.Elapsed().Seconds(), "flushes/s")
		})
	}
}

// BenchmarkRawPwriteFdatasync is the baseline: one 4 KiB pwrite and one
// fdatasync per op on a plain file, serially.
func BenchmarkRawPwriteFdatasync(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "raw"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(benchVolSize); err != nil {
		b.Fatal(err)
	}
	p := block(4096, 1)
	rng := rand.New(rand.NewPCG(1, 3))
	nb := benchVolSize / 4096
	b.SetBytes(4096)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := f.WriteAt(p, int64(rng.IntN(nb))*4096); err != nil {
			b.Fatal(err)
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "flushes/s")
}

func benchRead(b *testing.B, checkpoint bool) {
	v := benchVolume(b, Options{ManualFlush: true})
	const blocks = 8192 // 32 MiB: fits the 64 MiB WAL
	p := make([]byte, 64*4096)
	for i := 0; i < blocks; i += 64 {
		for j := range p {
			p[j] = byte(i + j)
		}
		if err := v.WriteAt(p, int64(i)*4096, false); err != nil {
			b.Fatal(err)
		}
	}
	if checkpoint {
		if err := v.Checkpoint(); err != nil {
			b.Fatal(err)
		}
		if d := v.Status().DirtyBlocks; d != 0 {
			b.Fatalf("%d dirty blocks after checkpoint", d)
		}
	} else if d := v.Status().DirtyBlocks; d != blocks {
		b.Fatalf("%d dirty blocks, want %d", d, blocks)
	}
	q := make([]byte, 4096)
	rng := rand.New(rand.NewPCG(1, 4))
	b.SetBytes(4096)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := v.ReadAt(q, int64(rng.IntN(blocks))*4096); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reads/s")
}

func BenchmarkRead4KFromWAL(b *testing.B)    { benchRead(b, false) }
func BenchmarkRead4KFromExtent(b *testing.B) { benchRead(b, true) }

func BenchmarkWrite1MiBSequential(b *testing.B) {
	v := benchVolume(b, Options{})
	p := make([]byte, 1<<20)
	for i := range p {
		p[i] = byte(i)
	}
	b.SetBytes(1 << 20)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		off := int64(i%(benchVolSize>>20)) << 20
		if err := v.WriteAt(p, off, false); err != nil {
			b.Fatal(err)
		}
	}
}

// fillWAL writes 4 KiB blocks until the 64 MiB WAL is nearly full, with
// the flusher off, and returns the volume's path (still open).
func fillWAL(b *testing.B) (*Volume, string) {
	path := filepath.Join(b.TempDir(), "recover.blk")
	v, err := Create(path, benchVolSize, Options{WALSize: 64 << 20, Standalone: true, ManualFlush: true})
	if err != nil {
		b.Fatal(err)
	}
	// 64 KiB writes keep batches dense (little padding).
	p := make([]byte, 64<<10)
	for i := 0; v.Status().WALUsed < 60<<20; i++ {
		for j := range p {
			p[j] = byte(i + j)
		}
		if err := v.WriteAt(p, int64(i%(benchVolSize/len(p)))*int64(len(p)), false); err != nil {
			b.Fatal(err)
		}
	}
	if err := v.Flush(); err != nil {
		b.Fatal(err)
	}
	return v, path
}

func copyFile(b *testing.B, from, to string) {
	src, err := os.Open(from)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(to)
	if err != nil {
		b.Fatal(err)
	}
	defer dst.Close()
	if _, err := io.Copy(dst, src); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRecoveryFullWAL times Open of a volume whose 64 MiB WAL is
// nearly full of unflushed records: "clean" after Close (scan and index
// only), "crash" from a copy taken while open (scan, apply every record to
// the extent, fdatasync, new generation).
func BenchmarkRecoveryFullWAL(b *testing.B) {
	b.Run("clean", func(b *testing.B) {
		v, path := fillWAL(b)
		if err := v.Close(); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			nv, err := Open(path, Options{ManualFlush: true})
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if nv.Status().DirtyBlocks == 0 {
				b.Fatal("nothing recovered")
			}
			nv.Close()
			b.StartTimer()
		}
		b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/open")
	})
	b.Run("crash", func(b *testing.B) {
		v, path := fillWAL(b)
		img := path + ".img"
		copyFile(b, path, img)
		v.Close()
		work := path + ".work"
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			os.Remove(work)
			copyFile(b, img, work)
			b.StartTimer()
			nv, err := Open(work, Options{ManualFlush: true})
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if st := nv.Status(); st.Generation != 2 || st.Checkpoint != st.Head || st.Head == 0 {
				b.Fatalf("crash recovery status %+v", st)
			}
			nv.Close()
			b.StartTimer()
		}
		b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/open")
	})
}

// BenchmarkIndexMemory reports the heap bytes the index costs per dirty
// block (target ≤ 64).
func BenchmarkIndexMemory(b *testing.B) {
	const n = 1 << 20
	for i := 0; i < b.N; i++ {
		v := &Volume{bs: 4096, index: make(map[uint64]uint64)}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		rng := rand.New(rand.NewPCG(uint64(i), 5))
		for j := 0; j < n; j++ {
			m := recMeta{kind: KindWrite, lba: rng.Uint64N(1 << 30), blocks: 1, abs: int64(j) * 4160}
			v.applyIndexLocked(&m)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(len(v.index)), "B/dirty-block")
		runtime.KeepAlive(v)
	}
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}

var _ = time.Second

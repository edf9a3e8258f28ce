package replication

import (
	"math/rand"
	"sync"
	"testing"
	"time"
)

// BenchmarkReplicatedWrite compares RF=1, RF=2 sync and RF=3 quorum on
// loopback: 4 KiB random writes from 16 goroutines with a Flush every 32
// writes per goroutine (qd16), and one goroutine doing write+flush (qd1).
// It reports IOPS and, for RF>1, the ratio to the RF=1 figure of the same
// workload (run RF=1 first: -bench 'ReplicatedWrite/qd16').
func BenchmarkReplicatedWrite(b *testing.B) {
	for _, wl := range []struct {
		name       string
		writers    int
		flushEvery int
	}{
		{"qd16", 16, 32},
		{"qd1", 1, 1},
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
					bs := int64(c.dev.BlockSize())
					nb := c.dev.Size() / bs
					per := (b.N + wl.writers - 1) / wl.writers
					var wg sync.WaitGroup
					errs := make(chan error, wl.writers)
					b.SetBytes(bs)
					b.ResetTimer()
					start := time.Now()
					for w := 0; w < wl.writers; w++ {
						wg.Add(1)
						go func(w int) {
							defer wg.Done()
							rng := rand.New(rand.NewSource(int64(w)))
							p := make([]byte, bs)
							rng.Read(p)
							for i := 0; i < per; i++ {
								if err := c.dev.WriteAt(p, rng.Int63n(nb)*bs, false); err != nil {
									errs <- err
									return
								}
								if i%wl.flushEvery == wl.flushEvery-1 || i == per-1 {
									if err := c.dev.Flush(); err != nil {
										errs <- err
										return
									}
								}
							}
						}(w)
					}
					wg.Wait()
					el := time.Since(start)
					b.StopTimer()
					close(errs)
					for err := range errs {
						b.Fatal(err)
					}
					iops := float64(per*wl.writers) / el.Seconds()
					b.ReportMetric(iops, "IOPS")
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

package blockvolume

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol"
)

// BenchmarkBuildHeartbeat: cost of one heartbeat (a report per volume)
// on a server with 64 volumes.
func BenchmarkBuildHeartbeat(b *testing.B) {
	m, err := New(Options{Dir: b.TempDir(), ServerID: testServerID})
	if err != nil {
		b.Fatal(err)
	}
	if err := m.Start(); err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	const n = 64
	for i := range n {
		m.opMu.Lock()
		_, err := m.allocateLocked(spec(fmt.Sprintf("v%02d", i), 1<<20), epochConfig(1, testServerID), allocMember)
		m.opMu.Unlock()
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		if hb := m.buildHeartbeat(); len(hb.Volumes) != n {
			b.Fatalf("%d reports", len(hb.Volumes))
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/volume")
}

// BenchmarkMeteredWrite: a 4 KiB write through the metered device against
// the same write on the bare volume, to show what metrics cost.
func BenchmarkMeteredWrite(b *testing.B) {
	for _, metered := range []bool{false, true} {
		b.Run(fmt.Sprintf("metered=%v", metered), func(b *testing.B) {
			vol, err := blockvol.Create(filepath.Join(b.TempDir(), "b.blk"), 64<<20, blockvol.Options{Standalone: true})
			if err != nil {
				b.Fatal(err)
			}
			defer vol.Close()
			type writer interface {
				WriteAt(p []byte, off int64, fua bool) error
			}
			var w writer = vol
			if metered {
				w = newMetrics().device("b", vol)
			}
			p := make([]byte, 4096)
			b.SetBytes(4096)
			start := time.Now()
			i := int64(0)
			for b.Loop() {
				if err := w.WriteAt(p, (i%16384)*4096, false); err != nil {
					b.Fatal(err)
				}
				i++
			}
			b.ReportMetric(float64(i)/time.Since(start).Seconds(), "writes/s")
		})
	}
}

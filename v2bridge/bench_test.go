package v2bridge

import (
	"context"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/engine"
	"github.com/weedblock/weedblock/executor"
)

const benchBytes = 32 << 20

// fileCopyMBps copies a file of n bytes (read, write, fsync) and returns
// MB/s: the plain baseline on the same disk in the same run.
func fileCopyMBps(b *testing.B, n int64) float64 {
	b.Helper()
	dir := b.TempDir()
	src := filepath.Join(dir, "src")
	p := make([]byte, n)
	rand.New(rand.NewSource(1)).Read(p)
	if err := os.WriteFile(src, p, 0o600); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	in, err := os.Open(src)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(filepath.Join(dir, "dst"))
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	if _, err := io.Copy(out, in); err != nil {
		b.Fatal(err)
	}
	if err := out.Sync(); err != nil {
		b.Fatal(err)
	}
	return float64(n) / 1e6 / time.Since(start).Seconds()
}

// benchRecovery runs plan kind into a fresh replica b.N times and reports
// its MB/s beside a plain file copy of the same size.
func benchRecovery(b *testing.B, kind engine.Kind, prim *blockvol.Volume, bytes int64) {
	svc, addr := startService(b)
	slots := engine.NewSlots()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		rep := newReplicaVol(b, "r.vol", 1, volOpts{size: prim.Size(), wal: 64 << 20})
		svc.Register("vol1", rep)
		rc := newRecovery(b, slots, prim, "s2", addr, PeerOptions{})
		prior := engine.Unknown
		if kind == engine.Rebuild {
			prior = engine.NeedsRebuild
		}
		tok, plan := rc.plan(prior)
		if plan.Kind != kind {
			b.Fatalf("planned %v", plan)
		}
		start := time.Now()
		out := executor.New(slots, executor.Config{BatchRecords: 256, BatchBytes: 4 << 20}).Run(context.Background(), tok, plan, rc.peer.IO())
		total += time.Since(start)
		wantInSync(b, out, plan.Target)
		svc.Unregister("vol1")
		rc.peer.Close()
		rep.Close()
		os.Remove(rep.Path())
	}
	mbps := float64(bytes) * float64(b.N) / 1e6 / total.Seconds()
	cp := fileCopyMBps(b, bytes)
	b.ReportMetric(mbps, "MB/s")
	b.ReportMetric(cp, "filecopy-MB/s")
	b.ReportMetric(mbps/cp, "ratio")
	b.SetBytes(bytes)
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
	benchRecovery(b, engine.CatchUp, prim, benchBytes)
}

func BenchmarkRebuild(b *testing.B) {
	prim := primaryVol(b, 1, volOpts{size: benchBytes, wal: 8 << 20})
	rng := rand.New(rand.NewSource(2))
	p := make([]byte, 1<<20)
	for off := int64(0); off < benchBytes; off += int64(len(p)) {
		rng.Read(p)
		if err := prim.WriteAt(p, off, false); err != nil {
			b.Fatal(err)
		}
	}
	if err := prim.Checkpoint(); err != nil {
		b.Fatal(err)
	}
	benchRecovery(b, engine.Rebuild, prim, benchBytes)
}

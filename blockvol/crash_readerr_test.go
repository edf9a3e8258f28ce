package blockvol_test

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/blockvol/faultfs"
	"github.com/weedblock/weedblock/blockvol/faultfs/oracle"
)

// TestRecoveryReadErrorLosesNothing: a read error (EIO) while recovery scans
// the WAL is not the end of the log. Open must fail, or succeed with every
// flushed write intact; either way a later Open without the error must find
// every flushed write — recovery must not cut the log at the unreadable
// record and restart it, which would destroy committed data for good.
func TestRecoveryReadErrorLosesNothing(t *testing.T) {
	const bs, nblocks = 4096, 32
	opts := func(fs *faultfs.FS) blockvol.Options {
		return blockvol.Options{FS: faultFS{fs}, WALSize: 1 << 20, FlushInterval: time.Hour, Standalone: true}
	}
	// setup writes every block once (values 1..nblocks, several records),
	// flushes, and crashes keeping everything: the writes are only in the
	// WAL when Open runs.
	setup := func() *faultfs.FS {
		fs := faultfs.New()
		v, err := blockvol.Create(crashVolPath, nblocks*bs, opts(fs))
		if err != nil {
			t.Fatal(err)
		}
		for b := 0; b < nblocks; b++ {
			p := make([]byte, bs)
			oracle.BlockContent(p, uint64(b), uint64(b+1))
			if err := v.WriteAt(p, int64(b*bs), false); err != nil {
				t.Fatal(err)
			}
		}
		if err := v.Flush(); err != nil {
			t.Fatal(err)
		}
		fs.Crash(faultfs.CrashDropAll, 0)
		v.Close()
		return fs
	}
	check := func(v *blockvol.Volume, what string, tolerateErrors bool) {
		t.Helper()
		p := make([]byte, bs)
		for b := 0; b < nblocks; b++ {
			if err := v.ReadAt(p, int64(b*bs)); err != nil {
				if tolerateErrors {
					continue
				}
				t.Fatalf("%s: read lba %d: %v", what, b, err)
			}
			if seq, err := oracle.DecodeBlock(p, uint64(b)); err != nil || seq != uint64(b+1) {
				t.Fatalf("%s: lba %d holds value %d (%v), want the flushed %d", what, b, seq, err, b+1)
			}
		}
	}
	// How many reads a clean recovery makes.
	fs := setup()
	before := fs.ReadCount()
	v, err := blockvol.Open(crashVolPath, opts(fs))
	if err != nil {
		t.Fatal(err)
	}
	reads := fs.ReadCount() - before
	check(v, "no read error", false)
	v.Close()
	if reads < 2*nblocks {
		// The WAL must still hold the writes (the flusher, with its long
		// interval and a WAL under half full, has not copied them).
		t.Fatalf("recovery made only %d reads: the writes were not in the WAL", reads)
	}
	// Every read position when there are few or WEEDBLOCK_CRASH_SEEDS is
	// set, otherwise every third (the first ones always).
	stride := 3
	if _, ok := os.LookupEnv("WEEDBLOCK_CRASH_SEEDS"); ok || reads <= 40 {
		stride = 1
	}
	failedOpens := 0
	for k := 1; k <= reads; k += min(stride, k) {
		what := fmt.Sprintf("read %d/%d of recovery fails", k, reads)
		fs := setup()
		fs.FailReads(fs.ReadCount()+k, 1, nil)
		v, err := blockvol.Open(crashVolPath, opts(fs))
		if err == nil {
			check(v, what, true)
			v.Close()
		} else {
			failedOpens++
		}
		fs.FailReads(0, 0, nil)
		v, err = blockvol.Open(crashVolPath, opts(fs))
		if err != nil {
			t.Fatalf("%s, then open without errors: %v", what, err)
		}
		check(v, what+", then reopened without errors", false)
		v.Close()
	}
	t.Logf("%d recovery reads, failed in turn (stride %d); %d opens refused", reads, stride, failedOpens)
}

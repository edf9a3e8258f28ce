package test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// productWorkload is one fio job of the product table; replicated says
// whether it also runs on the RF=2 and RF=3 volumes.
type productWorkload struct {
	name       string
	args       []string
	replicated bool
}

// The flush-every-32 write row runs twice. fio's nbd engine (3.33) at
// iodepth 16 with --fsync=32 does not flush every 32 writes: its flushes
// are asynchronous and it keeps issuing them, about one per 2.3 writes
// (measured against nbdkit: 115,646 flushes for 265,984 writes; at
// iodepth 1 it is 1 per 32). That row is kept, with the flushes per write
// fio reports in a note: a flush-heavy load, like many committers. The
// 16x qd1 row is the flush-every-32 load the replication target names:
// 16 jobs, each its own connection at queue depth 1 (16 in flight in
// all), each flushing after every 32 of its writes.
var productWorkloads = []productWorkload{
	{"randwrite 4k qd16 fsync/32", []string{"--rw=randwrite", "--bs=4k", "--iodepth=16", "--fsync=32"}, true},
	{"randwrite 4k 16x qd1 fsync/32", []string{"--rw=randwrite", "--bs=4k", "--iodepth=1", "--numjobs=16", "--group_reporting", "--fsync=32"}, true},
	{"randwrite 4k qd1 fsync/1", []string{"--rw=randwrite", "--bs=4k", "--iodepth=1", "--fsync=1"}, true},
	{"randread 4k qd16", []string{"--rw=randread", "--bs=4k", "--iodepth=16"}, false},
	{"write 1M seq qd4", []string{"--rw=write", "--bs=1M", "--iodepth=4"}, false},
}

// cell is one measurement of the table, or why there is none.
type cell struct {
	f   figures
	err error
}

// errNotMeasured marks a cell the table leaves out on purpose.
var errNotMeasured = errors.New("not measured")

func (c cell) String() string {
	if errors.Is(c.err, errNotMeasured) {
		return "-"
	}
	if c.err != nil {
		return "n/a"
	}
	return fmt.Sprintf("%.0f (%.1f)", c.f.iops, c.f.mbps)
}

// ratio is a/b as "1.23x", or "n/a".
func ratio(a, b cell) string {
	if a.err != nil || b.err != nil || b.f.iops == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", a.f.iops/b.f.iops)
}

// benchRows reads WEEDBLOCK_BENCH_ROWS, a comma-separated subset of
// "nbd" (fio on raw file, nbdkit and weed block serve), "iscsi"
// (iscsi-perf on weed block serve and tgtd) and "replicated" (the RF=2/RF=3
// cluster rows and the failover pause); empty or unset means all of them.
func benchRows(b *testing.B) map[string]bool {
	all := []string{"nbd", "iscsi", "replicated"}
	rows := map[string]bool{}
	v := os.Getenv("WEEDBLOCK_BENCH_ROWS")
	if strings.TrimSpace(v) == "" {
		for _, r := range all {
			rows[r] = true
		}
		return rows
	}
	for _, r := range strings.Split(v, ",") {
		r = strings.TrimSpace(r)
		switch r {
		case "nbd", "iscsi", "replicated":
			rows[r] = true
		case "":
		default:
			b.Fatalf("WEEDBLOCK_BENCH_ROWS=%q: unknown row group %q (want a subset of %s)", v, r, strings.Join(all, ","))
		}
	}
	return rows
}

// benchEnvInt reads a positive integer knob from the environment.
func benchEnvInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// BenchmarkProduct is the product benchmark table of DESIGN §8: in one run
// on this machine it drives, with real processes and real clients,
//   - fio on a raw local file (libaio, buffered, same temp dir),
//   - `nbdkit file` over NBD (fio's nbd engine),
//   - `weed block serve` (RF=1, the real engine) over NBD,
//   - iscsi-perf against `weed block serve` and against tgtd (file backing
//     store on the same disk),
//   - an RF=2 sync and an RF=3 quorum volume of a real cluster (master and
//     three volume servers as processes) over NBD on the primary,
//
// and prints one table with IOPS, MB/s and the ratios. Run it with
// -benchtime 1x (b.N is ignored). Knobs: WEEDBLOCK_BENCH_RUNTIME (seconds
// per fio/iscsi-perf job, default 3, plus 1 s fio ramp),
// WEEDBLOCK_BENCH_ROUNDS (runs per cell, RF=2/RF=3 included,
// median; default 3), WEEDBLOCK_BENCH_ROWS (which row groups run: a subset
// of nbd,iscsi,replicated; default all; the others print "-"),
// WEEDBLOCK_BENCH_SIZE (MiB per volume/file, default 256), and
// WEEDBLOCK_BENCH_DIR (default: a temp dir). A replicated row that cannot
// be measured (volume not creatable, copies not current) prints "n/a" with
// the reason instead of failing the benchmark; so does a tgtd that cannot
// run, loudly.
func BenchmarkProduct(b *testing.B) {
	for _, tool := range []string{"fio", "nbdkit", "iscsi-perf", "tgtd", "tgtadm", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Fatalf("required tool %s is not installed (apt-get install fio nbdkit libiscsi-bin tgt qemu-utils): %v", tool, err)
		}
	}
	rows := benchRows(b)
	runtime := benchEnvInt(b, "WEEDBLOCK_BENCH_RUNTIME", 3)
	rounds := benchEnvInt(b, "WEEDBLOCK_BENCH_ROUNDS", 3)
	sizeMiB := benchEnvInt(b, "WEEDBLOCK_BENCH_SIZE", 256)
	size := int64(sizeMiB) << 20
	dir := os.Getenv("WEEDBLOCK_BENCH_DIR")
	if dir == "" {
		dir = b.TempDir()
	} else {
		d, err := os.MkdirTemp(dir, "weedblock-bench-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(d) })
		dir = d
	}
	timed := []string{"--time_based", "--runtime=" + strconv.Itoa(runtime), "--ramp_time=1",
		"--size=" + strconv.Itoa(sizeMiB) + "M"}
	nbd := func(uri string) []string { return append([]string{"--ioengine=nbd", "--uri=" + uri}, timed...) }
	// prefill writes the whole target once so reads hit written blocks.
	prefill := func(target []string) error {
		_, err := fio(append(append([]string{}, target...), "--rw=write", "--bs=1M", "--iodepth=4",
			"--size="+strconv.Itoa(sizeMiB)+"M", "--end_fsync=1")...)
		return err
	}
	newFile := func(name string) string {
		p := filepath.Join(dir, name)
		f, err := os.Create(p)
		if err != nil {
			b.Fatal(err)
		}
		if err := f.Truncate(size); err != nil {
			b.Fatal(err)
		}
		f.Close()
		return p
	}
	start := time.Now()
	var notes []string

	// The single-node targets: a raw local file, nbdkit file, and ours
	// (RF=1: weed block serve over NBD, and its iSCSI LUN further down).
	rawPath := newFile("raw.img")
	kitURI, err := startNbdkit(b, newFile("nbdkit.img"))
	if err != nil {
		b.Fatal(err)
	}
	oursNBD, oursISCSI, err := startServeBench(b, filepath.Join(dir, "ours.blk"), size)
	if err != nil {
		b.Fatal(err)
	}
	single := []struct {
		name   string
		target []string // where fio does I/O
		timed  []string // target plus the time-based knobs
	}{
		// --invalidate=0: the NBD servers keep their files in the page
		// cache too; fio would otherwise drop the raw file's pages first.
		{"raw file", []string{"--ioengine=libaio", "--invalidate=0", "--filename=" + rawPath}, nil},
		{"nbdkit file", []string{"--ioengine=nbd", "--uri=" + kitURI}, nil},
		{"weed block serve", []string{"--ioengine=nbd", "--uri=" + oursNBD}, nil},
	}
	for i := range single {
		single[i].timed = append(append([]string{}, single[i].target...), timed...)
		if !rows["nbd"] {
			continue
		}
		if err := prefill(single[i].target); err != nil {
			b.Fatalf("prefill %s: %v", single[i].name, err)
		}
	}
	// Replicated: an RF=2 sync and an RF=3 quorum volume on a real cluster,
	// set up first so their rows run in the same rounds as RF=1.
	var cluster *benchCluster
	var clusterErr error
	rfTargets := []struct {
		name, vol, args string
		rf              int
		uri             string
		err             error
	}{
		{"RF=2 sync", "bench-rf2", "-rf=2 -durability=sync", 2, "", nil},
		{"RF=3 quorum", "bench-rf3", "-rf=3 -durability=quorum", 3, "", nil},
	}
	if rows["replicated"] {
		cluster, clusterErr = startBenchCluster(b, filepath.Join(dir, "cluster"), 3)
	}
	for i := range rfTargets {
		t := &rfTargets[i]
		switch {
		case !rows["replicated"]:
			t.err = errNotMeasured
		case clusterErr != nil:
			t.err = fmt.Errorf("cluster: %w", clusterErr)
		default:
			t.uri, t.err = cluster.createReplicated(t.vol, "-size="+strconv.Itoa(sizeMiB)+"MiB "+t.args, t.rf)
			if t.err == nil {
				// Written once like the single-node targets, so every row
				// compares writes over allocated blocks, then left until
				// the copies have flushed the prefill.
				if err := prefill([]string{"--ioengine=nbd", "--uri=" + t.uri}); err != nil {
					t.err = fmt.Errorf("prefill: %w", err)
				} else if err := cluster.settled(t.vol); err != nil {
					t.err = fmt.Errorf("after prefill: %w", err)
				}
			}
		}
	}

	// Each workload runs on every target back to back (rounds times,
	// rotating which goes first; the median counts), so a busy moment of
	// the machine hits them alike: the single-node targets, and for the
	// replicated workloads the RF=2 and RF=3 volumes, whose ratio to RF=1
	// is then taken between runs seconds apart.
	type target struct {
		name  string
		timed []string
		fatal bool // a failed job fails the benchmark (else: an n/a cell)
		out   []cell
	}
	results := make([][]cell, len(single)+len(rfTargets))
	for k := range results {
		results[k] = make([]cell, len(productWorkloads))
	}
	for i, w := range productWorkloads {
		var targets []*target
		for k := range single {
			results[k][i] = cell{err: errNotMeasured}
			if rows["nbd"] {
				targets = append(targets, &target{single[k].name, single[k].timed, true, results[k]})
			}
		}
		for k, t := range rfTargets {
			out := results[len(single)+k]
			switch {
			case !w.replicated:
				out[i] = cell{err: errNotMeasured}
			case t.err != nil:
				out[i] = cell{err: t.err}
			default:
				targets = append(targets, &target{t.name, nbd(t.uri), false, out})
			}
		}
		runs := make([][]figures, len(targets))
		errs := make([]error, len(targets))
		for r := range rounds {
			for n := range targets {
				k := (n + r) % len(targets)
				if errs[k] != nil {
					continue
				}
				f, err := fio(append(append([]string{}, targets[k].timed...), w.args...)...)
				if err != nil && targets[k].fatal {
					b.Fatalf("%s %s: %v", targets[k].name, w.name, err)
				}
				errs[k] = err
				runs[k] = append(runs[k], f)
			}
		}
		for k, t := range targets {
			if errs[k] != nil {
				t.out[i] = cell{err: errs[k]}
			} else {
				t.out[i] = cell{f: medianFigures(runs[k])}
			}
		}
	}
	raw, kit, rf1 := results[0], results[1], results[2]
	rf2, rf3 := results[3], results[4]

	// iscsi-perf: ours beside tgtd, rounds times each, alternating which
	// goes first; the median counts.
	// iscsi-perf's -b counts logical blocks: 4096 bytes on ours, 512 on
	// tgtd's file backing store; both sides read the same bytes per I/O.
	perfJobs := []struct {
		name      string
		bytes, qd int
	}{{"iscsi-perf 4k qd32", 4096, 32}, {"iscsi-perf 64k qd16", 65536, 16}}
	perfOurs := make([]cell, len(perfJobs))
	perfTgt := make([]cell, len(perfJobs))
	var tgtErr error
	if rows["iscsi"] {
		if !rows["nbd"] {
			// Ours is read through the same volume the NBD rows wrote.
			if err := prefill(single[2].target); err != nil {
				b.Fatalf("prefill %s: %v", single[2].name, err)
			}
		}
		// tgtd's file is written once like the others, so neither side
		// reads holes.
		tgtPath := newFile("tgtd.img")
		if err := prefill([]string{"--ioengine=libaio", "--filename=" + tgtPath}); err != nil {
			b.Fatalf("prefill tgtd's file: %v", err)
		}
		var tgtURL string
		tgtURL, tgtErr = startTgtd(b, tgtPath)
		for i, j := range perfJobs {
			var ours, tgt []figures
			for r := range rounds {
				for n := range 2 {
					if (n+r)%2 == 0 {
						f, err := iscsiPerf(oursISCSI, j.bytes/4096, j.qd, runtime)
						if err != nil {
							b.Fatalf("iscsi-perf against weed block serve: %v", err)
						}
						ours = append(ours, f)
						continue
					}
					if tgtErr != nil {
						continue
					}
					f, err := iscsiPerf(tgtURL, j.bytes/512, j.qd, runtime)
					if err != nil {
						tgtErr = err
						continue
					}
					tgt = append(tgt, f)
				}
			}
			perfOurs[i] = cell{f: medianFigures(ours)}
			if tgtErr != nil {
				perfTgt[i] = cell{err: tgtErr}
			} else {
				perfTgt[i] = cell{f: medianFigures(tgt)}
			}
		}
	} else {
		for i := range perfJobs {
			perfOurs[i] = cell{err: errNotMeasured}
			perfTgt[i] = cell{err: errNotMeasured}
		}
	}
	if tgtErr != nil {
		msg := fmt.Sprintf("!!! tgtd COULD NOT BE MEASURED — the iSCSI comparison is missing: %v", tgtErr)
		fmt.Println(msg)
		notes = append(notes, msg)
	}

	failover := "n/a (RF=2 not measured)"
	switch {
	case !rows["replicated"]:
		failover = "- (not measured)"
	case clusterErr == nil:
		for _, t := range rfTargets {
			if t.err == nil {
				notes = append(notes, t.name+" after its jobs: "+cluster.durableLSNs(t.vol))
			}
		}
		if rf2[0].err == nil {
			pause, err := cluster.failoverPause("bench-rf2")
			if err != nil {
				failover = "n/a (" + oneLine(err) + ")"
			} else {
				failover = pause.Round(time.Millisecond).String()
				b.ReportMetric(pause.Seconds(), "failover-pause-s")
			}
		}
	}
	for _, rf := range []struct {
		name  string
		cells []cell
	}{{"RF=2 sync", rf2}, {"RF=3 quorum", rf3}} {
		for i, w := range productWorkloads {
			if c := rf.cells[i]; w.replicated && c.err != nil && !errors.Is(c.err, errNotMeasured) {
				notes = append(notes, fmt.Sprintf("%s %s: n/a (%s)", rf.name, w.name, oneLine(c.err)))
			}
		}
	}

	// The table.
	var t strings.Builder
	fmt.Fprintf(&t, "\nweedblock product benchmark — %s, %d s per job (+1 s fio ramp), median of %d round(s) per cell (targets of a row interleaved), %d MiB targets in %s, total %v\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime, rounds, sizeMiB, dir, time.Since(start).Round(time.Second))
	fmt.Fprintf(&t, "cells: IOPS (MB/s). raw = fio libaio on a buffered local file; nbdkit = `nbdkit file`; ours = `weed block serve` (RF=1) / cluster primary (RF=2, RF=3); NBD via fio's nbd engine over loopback\n\n")
	fmt.Fprintf(&t, "%-30s %16s %16s %16s %16s %16s | %8s %8s %8s %8s\n",
		"workload", "raw file", "nbdkit file", "ours RF=1", "RF=2 sync", "RF=3 quorum",
		"RF1/raw", "RF1/kit", "RF2/RF1", "RF3/RF1")
	for i, w := range productWorkloads {
		fmt.Fprintf(&t, "%-30s %16s %16s %16s %16s %16s | %8s %8s %8s %8s\n",
			w.name, raw[i], kit[i], rf1[i], rf2[i], rf3[i],
			ratio(rf1[i], raw[i]), ratio(rf1[i], kit[i]), ratio(rf2[i], rf1[i]), ratio(rf3[i], rf1[i]))
	}
	fmt.Fprintf(&t, "\n%-30s %16s %16s | %8s\n", "iSCSI (sequential reads)", "ours RF=1", "tgtd file", "RF1/tgtd")
	for i, j := range perfJobs {
		fmt.Fprintf(&t, "%-30s %16s %16s | %8s\n", j.name, perfOurs[i], perfTgt[i], ratio(perfOurs[i], perfTgt[i]))
	}
	fmt.Fprintf(&t, "\nfailover I/O pause, RF=2 sync (last flushed write acked by the primary -> kill -9 -> first write acked by the replica): %s\n", failover)
	fmt.Fprintf(&t, "\ntargets: RF1/kit >= 1.00x on the randwrite rows; RF1/tgtd >= 1.50x; RF2/RF1 >= 0.60x on the flush-every-32 row (16x qd1)\n")
	for i, w := range productWorkloads {
		if c := rf1[i]; c.err == nil && c.f.flushes > 0 {
			fmt.Fprintf(&t, "flushes per write fio sent (ours RF=1), %s: %.3f\n", w.name, c.f.flushes)
		}
	}
	for _, n := range notes {
		fmt.Fprintf(&t, "note: %s\n", n)
	}
	fmt.Print(t.String())

	report := func(a, c cell, unit string) {
		if a.err == nil && c.err == nil && c.f.iops > 0 {
			b.ReportMetric(a.f.iops/c.f.iops, unit)
		}
	}
	report(rf1[0], kit[0], "x-nbdkit-qd16")
	report(rf1[1], kit[1], "x-nbdkit-16x1")
	report(rf1[2], kit[2], "x-nbdkit-qd1fsync")
	report(rf1[0], raw[0], "x-raw-qd16")
	report(perfOurs[0], perfTgt[0], "x-tgtd-4k")
	report(rf2[0], rf1[0], "rf2/rf1-qd16")
	report(rf2[1], rf1[1], "rf2/rf1-16x1")
	report(rf3[0], rf1[0], "rf3/rf1-qd16")
	report(rf3[1], rf1[1], "rf3/rf1-16x1")
	if rf1[0].err == nil {
		b.ReportMetric(rf1[0].f.iops, "rf1-qd16-IOPS")
	}
}

// medianFigures is the run with the median IOPS.
func medianFigures(runs []figures) figures {
	s := append([]figures(nil), runs...)
	sort.Slice(s, func(i, j int) bool { return s[i].iops < s[j].iops })
	return s[len(s)/2]
}

// oneLine is err's message on one line, cut to a readable length.
func oneLine(err error) string {
	s := strings.Join(strings.Fields(err.Error()), " ")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

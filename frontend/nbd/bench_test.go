package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fioWorkloads are the fio jobs BenchmarkFio compares (4k requests unless
// stated; the file is written sequentially first so reads hit real data).
var fioWorkloads = []struct {
	name string
	args []string
}{
	{"seqwrite_1M_qd4", []string{"--rw=write", "--bs=1M", "--iodepth=4"}},
	{"randwrite_4k_qd16_fsync32", []string{"--rw=randwrite", "--bs=4k", "--iodepth=16", "--fsync=32"}},
	{"randwrite_4k_qd1_fsync1", []string{"--rw=randwrite", "--bs=4k", "--iodepth=1", "--fsync=1"}},
	{"randread_4k_qd16", []string{"--rw=randread", "--bs=4k", "--iodepth=16"}},
}

type fioResult struct {
	iops, mbps float64
}

// runFio runs one time-based fio job against uri and returns the IOPS and
// MB/s of its reads or writes.
func runFio(b *testing.B, uri string, runtime time.Duration, size string, args []string) fioResult {
	b.Helper()
	all := append([]string{
		"--name=bench", "--ioengine=nbd", "--uri=" + uri, "--size=" + size,
		"--time_based", fmt.Sprintf("--runtime=%d", int(runtime.Seconds())),
		"--ramp_time=1", "--output-format=json",
	}, args...)
	out := run(b, runtime+2*time.Minute, "fio", all...)
	if i := bytes.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	var res struct {
		Jobs []struct {
			Error int `json:"error"`
			Read  struct {
				IOPS float64 `json:"iops"`
				BW   float64 `json:"bw_bytes"`
			} `json:"read"`
			Write struct {
				IOPS float64 `json:"iops"`
				BW   float64 `json:"bw_bytes"`
			} `json:"write"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.Jobs) == 0 || res.Jobs[0].Error != 0 {
		b.Fatalf("fio %v: %v\n%s", args, err, out)
	}
	j := res.Jobs[0]
	if j.Read.IOPS > j.Write.IOPS {
		return fioResult{j.Read.IOPS, j.Read.BW / 1e6}
	}
	return fioResult{j.Write.IOPS, j.Write.BW / 1e6}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(b *testing.B) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startNbdkitFile runs `nbdkit file` on path and returns its URI and pid.
func startNbdkitFile(b *testing.B, path string) (string, int) {
	port := freePort(b)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, tool(b, "nbdkit"), "--foreground", "--exit-with-parent",
		"--ipaddr=127.0.0.1", "--port="+strconv.Itoa(port), "file", "file="+path)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		cancel()
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cancel()
		cmd.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("nbdkit did not listen on port %d: %v", port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Sprintf("nbd://127.0.0.1:%d/", port), cmd.Process.Pid
}

// cpuTicks returns the user+system CPU time of process pid in clock ticks
// (1/100 s on Linux).
func cpuTicks(b *testing.B, pid int) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name (which is in parentheses).
	f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("parse /proc/%d/stat: %q", pid, raw)
	}
	return utime + stime
}

type fioSide struct {
	name string
	uri  string
	pid  int
	runs []fioResult
	cpu  []float64 // server CPU µs per I/O, per run
}

func (s *fioSide) run(b *testing.B, runtime time.Duration, size string, args []string) {
	t0 := cpuTicks(b, s.pid)
	r := runFio(b, s.uri, runtime, size, args)
	t1 := cpuTicks(b, s.pid)
	s.runs = append(s.runs, r)
	// fio's ramp time is excluded from its IOPS but not from the CPU
	// delta; count it in the I/O total.
	ios := r.iops * (runtime.Seconds() + 1)
	s.cpu = append(s.cpu, float64(t1-t0)*1e4/ios)
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func (s *fioSide) medians() (iops, mbps, cpu float64) {
	var i, m []float64
	for _, r := range s.runs {
		i = append(i, r.iops)
		m = append(m, r.mbps)
	}
	return median(i), median(m), median(s.cpu)
}

// BenchmarkFio compares this server over a file-backed device with
// `nbdkit file` on the same machine, using fio's nbd engine. Each workload
// runs NBD_BENCH_ROUNDS rounds (default 3) alternating which server goes
// first, each run lasting NBD_BENCH_RUNTIME seconds (default 3) whatever b.N
// is (use -benchtime=1x); medians are reported, with each server's CPU time
// per I/O, which stays meaningful on a loaded machine. Files live in
// NBD_BENCH_DIR (default: a temp dir) and are NBD_BENCH_SIZE big (default
// 256M). NBD_BENCH_WORKERS overrides Options.Workers.
func BenchmarkFio(b *testing.B) {
	runtime := 3 * time.Second
	if v := os.Getenv("NBD_BENCH_RUNTIME"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("NBD_BENCH_RUNTIME=%q", v)
		}
		runtime = time.Duration(n) * time.Second
	}
	rounds := 3
	if v := os.Getenv("NBD_BENCH_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("NBD_BENCH_ROUNDS=%q", v)
		}
		rounds = n
	}
	size := "256M"
	if v := os.Getenv("NBD_BENCH_SIZE"); v != "" {
		size = v
	}
	dir := os.Getenv("NBD_BENCH_DIR")
	if dir == "" {
		dir = b.TempDir()
	}
	sizeBytes, err := parseSize(size)
	if err != nil {
		b.Fatal(err)
	}

	oursPath := filepath.Join(dir, "weedblock-nbd-bench.img")
	kitPath := filepath.Join(dir, "nbdkit-bench.img")
	b.Cleanup(func() { os.Remove(oursPath); os.Remove(kitPath) })
	dev, err := openFileDevice(oursPath, sizeBytes, 4096)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { dev.Close() })
	f, err := os.Create(kitPath)
	if err != nil {
		b.Fatal(err)
	}
	if err := f.Truncate(sizeBytes); err != nil {
		b.Fatal(err)
	}
	f.Close()

	opts := Options{}
	if v := os.Getenv("NBD_BENCH_WORKERS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("NBD_BENCH_WORKERS=%q", v)
		}
		opts.Workers = n
	}
	s, addr := startServer(b, opts)
	if err := s.AddExport("bench", "", dev); err != nil {
		b.Fatal(err)
	}
	kitURI, kitPID := startNbdkitFile(b, kitPath)

	var table strings.Builder
	fmt.Fprintf(&table, "\nNBD server vs nbdkit file: median of %d × %v runs (fio nbd engine, %s file)\n", rounds, runtime, size)
	fmt.Fprintf(&table, "%-26s %10s %10s %9s %9s %7s %9s %9s\n", "workload", "ours IOPS", "kit IOPS", "ours MB/s", "kit MB/s", "ratio", "ours µs/IO", "kit µs/IO")
	for _, w := range fioWorkloads {
		b.Run(w.name, func(b *testing.B) {
			ours := &fioSide{name: "ours", uri: "nbd://" + addr + "/bench", pid: os.Getpid()}
			kit := &fioSide{name: "nbdkit", uri: kitURI, pid: kitPID}
			for r := range rounds {
				first, second := ours, kit
				if r%2 == 1 {
					first, second = kit, ours
				}
				first.run(b, runtime, size, w.args)
				second.run(b, runtime, size, w.args)
			}
			oi, om, oc := ours.medians()
			ki, km, kc := kit.medians()
			ratio := oi / ki
			b.ReportMetric(oi, "ours-IOPS")
			b.ReportMetric(ki, "nbdkit-IOPS")
			b.ReportMetric(om, "ours-MB/s")
			b.ReportMetric(km, "nbdkit-MB/s")
			b.ReportMetric(oc, "ours-cpu-µs/IO")
			b.ReportMetric(kc, "nbdkit-cpu-µs/IO")
			b.ReportMetric(ratio, "ratio")
			fmt.Fprintf(&table, "%-26s %10.0f %10.0f %9.1f %9.1f %6.2fx %9.1f %9.1f\n", w.name, oi, ki, om, km, ratio, oc, kc)
		})
	}
	fmt.Print(table.String())
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("bad size %q (want e.g. 256M or 1G)", s)
	}
	return n * mult, nil
}

// BenchmarkServer4kWrite measures the server's hot path alone: 4 KiB writes
// to an in-memory device over loopback with 16 requests in flight, from an
// allocation-free client.
func BenchmarkServer4kWrite(b *testing.B) {
	benchServer(b, cmdWrite)
}

// BenchmarkServer4kRead is the same for 4 KiB reads.
func BenchmarkServer4kRead(b *testing.B) {
	benchServer(b, cmdRead)
}

func benchServer(b *testing.B, typ uint16) {
	const (
		depth = 16
		bs    = 4096
		size  = 64 << 20
	)
	s, addr := startServer(b, Options{})
	if err := s.AddExport("m", "", newMem(b, size, bs)); err != nil {
		b.Fatal(err)
	}
	c := dialExport(b, addr, "m", false)
	c.nc.SetDeadline(time.Time{})
	reqLen := requestHeaderLen
	if typ == cmdWrite {
		reqLen += bs
	}
	reqs := make([]byte, depth*reqLen)
	for i := range depth {
		copy(reqs[i*reqLen:], requestBytes(0, typ, uint64(i), uint64(i)*bs, bs, make([]byte, reqLen-requestHeaderLen)))
	}
	replyLen := simpleReplyLen
	if typ == cmdRead {
		replyLen += bs
	}
	reply := make([]byte, replyLen)
	b.SetBytes(bs)
	b.ResetTimer()
	// Keep depth requests in flight: send a first batch, then reuse the
	// slot named by each reply's cookie for the next request.
	sent := 0
	var off uint64
	send := func(slot int) error {
		r := reqs[slot*reqLen : (slot+1)*reqLen]
		off = (off + 7*bs) % size
		binary.BigEndian.PutUint64(r[16:24], off)
		_, err := c.nc.Write(r)
		sent++
		return err
	}
	for i := 0; i < depth && i < b.N; i++ {
		if err := send(i); err != nil {
			b.Fatal(err)
		}
	}
	for done := 0; done < b.N; done++ {
		if _, err := io.ReadFull(c.br, reply); err != nil {
			b.Fatal(err)
		}
		if binary.BigEndian.Uint32(reply[4:8]) != 0 {
			b.Fatalf("errno %d", binary.BigEndian.Uint32(reply[4:8]))
		}
		if sent < b.N {
			if err := send(int(binary.BigEndian.Uint64(reply[8:16]))); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "IOPS")
}

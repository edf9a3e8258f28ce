package iscsi

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockdev"
	"github.com/weedblock/weedblock/frontend/scsi"
)

// fileDev is a blockdev.Device over a plain file (pread/pwrite through the
// page cache), standing in for a volume in the perf loop: it costs what
// a page-cache read costs, like blockvol's checkpointed extent.
type fileDev struct {
	f    *os.File
	size int64
	bs   int
}

func (d *fileDev) BlockSize() int { return d.bs }
func (d *fileDev) Size() int64    { return d.size }
func (d *fileDev) ReadAt(p []byte, off int64) error {
	if err := blockdev.CheckRange(off, int64(len(p)), d.size, d.bs); err != nil {
		return err
	}
	_, err := d.f.ReadAt(p, off)
	return err
}
func (d *fileDev) WriteAt(p []byte, off int64, fua bool) error {
	if err := blockdev.CheckRange(off, int64(len(p)), d.size, d.bs); err != nil {
		return err
	}
	_, err := d.f.WriteAt(p, off)
	return err
}
func (d *fileDev) Trim(off, length int64) error                { return nil }
func (d *fileDev) WriteZeroes(off, length int64, _ bool) error { return nil }
func (d *fileDev) Flush() error                                { return nil }

// perfFile creates a file of size bytes under the working directory's
// disk (not tmpfs), filled with non-zero data so it sits in the page cache.
func perfFile(b *testing.B, size int64) string {
	dir := os.Getenv("ISCSI_PERF_DIR")
	if dir == "" {
		dir = os.TempDir()
	}
	d, err := os.MkdirTemp(dir, "iscsi-perf-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(d) })
	p := filepath.Join(d, "disk.img")
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	buf := pattern(1<<20, 7)
	for off := int64(0); off < size; off += int64(len(buf)) {
		if _, err := f.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
	f.Close()
	return p
}

// cpuTimes returns user+system CPU of this process and of its waited-for
// children.
func cpuTimes() (self, children time.Duration) {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru)
	children = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return
}

// procCPU returns the user+system CPU of process pid from /proc.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * (time.Second / 100) // USER_HZ
}

// BenchmarkPerfLoop runs libiscsi's iscsi-perf (sequential reads) against
// an in-process target over the real logical unit on a page-cached file
// with 4 KiB blocks, and reports MB/s, the target's CPU per I/O
// (target-us/op, from getrusage) and iscsi-perf's (client-us/op). With
// ISCSI_PERF_TGTD=1 each round also measures tgtd on a file of the same
// size, right after ours (tgt-MB/s, tgt-us/op from /proc). Rounds:
// ISCSI_PERF_ROUNDS (default 1), seconds per run: ISCSI_PERF_SECONDS
// (default 3). b.N is ignored.
func BenchmarkPerfLoop(b *testing.B) {
	rounds := envInt("ISCSI_PERF_ROUNDS", 1)
	secs := envInt("ISCSI_PERF_SECONDS", 3)
	const size = 256 << 20
	path := perfFile(b, size)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	dev := &fileDev{f: f, size: size, bs: 4096}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	s := NewServer(Config{})
	name := IQN("perf")
	if err := s.AddTarget(SCSITarget(name, scsi.NewLogicalUnit(dev, scsi.Options{VolumeName: "perf"}))); err != nil {
		b.Fatal(err)
	}
	go s.Serve(l)
	b.Cleanup(func() { s.Close() })
	url := fmt.Sprintf("iscsi://%s/%s/0", l.Addr(), name)
	var tgtURL string
	var tgtPid int
	if os.Getenv("ISCSI_PERF_TGTD") == "1" {
		tgtURL, tgtPid = startPerfTgtd(b, perfFile(b, size))
	}
	for _, c := range []struct {
		name  string
		bytes int
		qd    int
	}{{"4k-qd32", 4096, 32}, {"64k-qd16", 65536, 16}} {
		b.Run(c.name, func(b *testing.B) {
			var mbs, us, cus, tmbs, tus []float64
			for range rounds {
				self0, ch0 := cpuTimes()
				out, err := runTool(b, time.Duration(secs+20)*time.Second, "iscsi-perf", "-m", strconv.Itoa(c.qd),
					"-b", strconv.Itoa(c.bytes/4096), "-t", strconv.Itoa(secs), url)
				self1, ch1 := cpuTimes()
				iops, mb, ok := parseIscsiPerf(out)
				if err != nil || !ok {
					b.Fatalf("iscsi-perf: %v\n%s", err, tail(out, 2000))
				}
				ops := iops * float64(secs)
				mbs = append(mbs, mb)
				us = append(us, float64((self1-self0).Microseconds())/ops)
				cus = append(cus, float64((ch1-ch0).Microseconds())/ops)
				if tgtURL != "" {
					t0 := procCPU(tgtPid)
					out, err := runTool(b, time.Duration(secs+20)*time.Second, "iscsi-perf", "-m", strconv.Itoa(c.qd),
						"-b", strconv.Itoa(c.bytes/512), "-t", strconv.Itoa(secs), tgtURL)
					t1 := procCPU(tgtPid)
					iops, mb, ok := parseIscsiPerf(out)
					if err != nil || !ok {
						b.Fatalf("iscsi-perf on tgtd: %v\n%s", err, tail(out, 2000))
					}
					tmbs = append(tmbs, mb)
					tus = append(tus, float64((t1-t0).Microseconds())/(iops*float64(secs)))
				}
			}
			b.ReportMetric(median(mbs), "MB/s")
			b.ReportMetric(median(us), "target-us/op")
			b.ReportMetric(median(cus), "client-us/op")
			if tgtURL != "" {
				b.ReportMetric(median(tmbs), "tgt-MB/s")
				b.ReportMetric(median(tus), "tgt-us/op")
				b.ReportMetric(median(mbs)/median(tmbs), "ratio")
			}
		})
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}

// startPerfTgtd runs tgtd in the foreground exporting path as LUN 1 and
// returns the LUN's URL and tgtd's pid.
func startPerfTgtd(b *testing.B, path string) (string, int) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctl := strconv.Itoa(10000 + os.Getpid()%10000)
	cmd := exec.Command("tgtd", "-f", "-C", ctl, "--iscsi", "portal="+addr)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		b.Fatalf("tgtd: %v", err)
	}
	b.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		os.Remove("/var/run/tgtd/socket." + ctl)
		os.Remove("/var/run/tgtd/socket." + ctl + ".lock")
	})
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if i > 100 {
			b.Fatalf("tgtd not listening on %s:\n%s", addr, out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	const iqn = "iqn.2026-11.io.weedblock.perf:tgtd"
	for _, args := range [][]string{
		{"--op", "new", "--mode", "target", "--tid", "1", "-T", iqn},
		{"--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", path},
		{"--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"},
	} {
		out, err := exec.Command("tgtadm", append([]string{"-C", ctl, "--lld", "iscsi"}, args...)...).CombinedOutput()
		if err != nil {
			b.Fatalf("tgtadm: %v\n%s", err, out)
		}
	}
	return "iscsi://" + addr + "/" + iqn + "/1", cmd.Process.Pid
}

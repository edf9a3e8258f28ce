package test

import (
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// cuSummaryRE matches iscsi-test-cu's (CUnit's) "tests" summary row:
// Total Ran Passed Failed Inactive.
var cuSummaryRE = regexp.MustCompile(`(?m)^\s*tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$`)

// TestISCSIConformanceOnRealVolume runs libiscsi's SCSI conformance family
// (destructive tests allowed) against `weed block serve` — the real
// engine behind the real iSCSI and SCSI layers — and then checks the
// volume still stops cleanly and reopens.
func TestISCSIConformanceOnRealVolume(t *testing.T) {
	requireTools(t, "iscsi-test-cu")
	vol := filepath.Join(t.TempDir(), "cu.blk")
	s := startServe(t, nil, "-file="+vol, "-size=64MiB", "-walSize=8MiB", "-name=cu", "-iscsi=127.0.0.1:0")
	r := runCmd(t, 10*time.Minute, "iscsi-test-cu", "-d", "-s", "--test=SCSI", s.iscsiURI())
	m := cuSummaryRE.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("iscsi-test-cu: no summary (exit %d)\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	total, _ := strconv.Atoi(m[1])
	ran, _ := strconv.Atoi(m[2])
	passed, _ := strconv.Atoi(m[3])
	failed, _ := strconv.Atoi(m[4])
	t.Logf("iscsi-test-cu SCSI: total %d ran %d passed %d failed %d", total, ran, passed, failed)
	if failed != 0 || r.code != 0 {
		t.Fatalf("iscsi-test-cu: %d of %d failed (exit %d)\n%s", failed, ran, r.code, r.stdout)
	}
	if ran < 100 || passed != ran {
		t.Fatalf("iscsi-test-cu ran only %d tests (passed %d)", ran, passed)
	}
	if code := s.stop(sigterm); code != 0 {
		t.Fatalf("exit %d after SIGTERM following conformance\nstderr:\n%s", code, s.stderrText())
	}
	s = startServe(t, nil, "-file="+vol, "-iscsi=127.0.0.1:0")
	if code := s.stop(sigterm); code != 0 {
		t.Fatalf("reopen after conformance: exit %d", code)
	}
}

// TestFioWritesVerifyAfterRestart writes with fio's NBD engine (random 4 KiB
// writes, 16 in flight, each block stamped with a checksum header), stops
// the server with SIGTERM, starts it again and has fio verify every block.
func TestFioWritesVerifyAfterRestart(t *testing.T) {
	requireTools(t, "fio")
	vol := filepath.Join(t.TempDir(), "fio.blk")
	s := startServe(t, nil, "-file="+vol, "-size=32MiB", "-walSize=4MiB", "-name=fio", "-nbd=127.0.0.1:0")
	job := func(uri string, extra ...string) []string {
		return append([]string{
			"--name=e2e", "--ioengine=nbd", "--uri=" + uri, "--rw=randwrite", "--bs=4k",
			"--iodepth=16", "--size=24M", "--randseed=42", "--verify=crc32c", "--verify_fatal=1",
			"--output-format=terse", "--verify_state_save=0",
		}, extra...)
	}
	mustRun(t, 5*time.Minute, "fio", job(s.nbdURI("fio"), "--do_verify=0")...)
	if code := s.stop(sigterm); code != 0 {
		t.Fatalf("exit %d after SIGTERM\nstderr:\n%s", code, s.stderrText())
	}
	s = startServe(t, nil, "-file="+vol, "-nbd=127.0.0.1:0")
	r := runCmd(t, 5*time.Minute, "fio", job(s.nbdURI("fio"), "--verify_only")...)
	if r.code != 0 {
		t.Fatalf("fio verify after restart: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if code := s.stop(sigterm); code != 0 {
		t.Fatalf("second exit %d after SIGTERM", code)
	}
}

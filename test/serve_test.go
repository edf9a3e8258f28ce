package test

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	sigterm = syscall.SIGTERM
	sigint  = syscall.SIGINT
)

// TestISCSIWriteReadsBackOverNBDAfterRestart is the acceptance line of
// `weed block serve`: data written over iSCSI (QEMU's libiscsi driver)
// reads back over NBD (nbdcopy) after the server was stopped with SIGTERM
// and started again on the same file.
func TestISCSIWriteReadsBackOverNBDAfterRestart(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-io", "nbdcopy", "nbdinfo", "iscsi-ls")
	const (
		size   = 32 << 20
		name   = "accept1"
		target = "iqn.2026-11.io.weedblock:" + name
	)
	dir := t.TempDir()
	vol := filepath.Join(dir, "accept.blk")

	s := startServe(t, nil, "-file="+vol, "-size=32MiB", "-walSize=4MiB", "-name="+name,
		"-nbd=127.0.0.1:0", "-iscsi=127.0.0.1:0")
	if !strings.Contains(s.ready, "created") || s.target != target {
		t.Fatalf("ready line %q", s.ready)
	}

	// Discovery and capacity, as an initiator sees them.
	ls := mustRun(t, time.Minute, "iscsi-ls", "-s", "iscsi://"+s.iscsi)
	if err := contains(ls, "Target:"+target, "Lun:0", "DIRECT_ACCESS"); err != nil {
		t.Fatalf("iscsi-ls: %v\n%s", err, ls)
	}

	// Expected content: random 6 MiB at 0 (qemu-img from a file), a 1 MiB
	// pattern at 20 MiB and a 4 KiB pattern in the last block (qemu-io),
	// zeros elsewhere.
	want := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 6<<20; i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8; j++ {
			want[i+j] = byte(v >> (8 * j))
		}
	}
	src := filepath.Join(dir, "src.img")
	if err := os.WriteFile(src, want[:6<<20], 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, 2*time.Minute, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, s.iscsiURI())
	copy(want[20<<20:21<<20], bytes.Repeat([]byte{0xab}, 1<<20))
	copy(want[size-4096:], bytes.Repeat([]byte{0x5c}, 4096))
	mustRun(t, time.Minute, "qemu-io", "-f", "raw",
		"-c", "write -P 0xab 20M 1M",
		"-c", "write -P 0x5c "+strconv.Itoa(size-4096)+" 4k",
		"-c", "flush",
		s.iscsiURI())

	// Over iSCSI itself first (same session type, before the restart).
	if d := firstDiff(readISCSI(t, s.iscsiURI(), size), want); d != "" {
		t.Fatalf("iSCSI read-back before restart: %s", d)
	}

	if code := s.stop(sigterm); code != 0 {
		t.Fatalf("weed block serve exited %d after SIGTERM\nstderr:\n%s", code, s.stderrText())
	}

	// Restart on the same file: no -size needed, same name.
	s = startServe(t, nil, "-file="+vol, "-name="+name, "-nbd=127.0.0.1:0", "-iscsi=127.0.0.1:0")
	if !strings.Contains(s.ready, "opened") {
		t.Fatalf("second start did not reuse the file: %q", s.ready)
	}
	info := mustRun(t, time.Minute, "nbdinfo", s.nbdURI(name))
	if err := contains(info, "export-size: "+strconv.Itoa(size), "can_flush: true"); err != nil {
		t.Fatalf("nbdinfo: %v\n%s", err, info)
	}
	if d := firstDiff(readNBD(t, s.nbdURI(name), size), want); d != "" {
		t.Fatalf("NBD read-back after restart: %s", d)
	}
	if code := s.stop(sigterm); code != 0 {
		t.Fatalf("second serve exited %d after SIGTERM", code)
	}
}

// TestNBDWriteReadsBackOverISCSIAfterSIGINT is the other direction: nbdcopy
// writes, SIGINT stops, and after a restart QEMU reads it over iSCSI.
func TestNBDWriteReadsBackOverISCSIAfterSIGINT(t *testing.T) {
	requireTools(t, "nbdcopy", "qemu-img")
	const size = 16 << 20
	dir := t.TempDir()
	vol := filepath.Join(dir, "nbd2iscsi.blk")
	want := make([]byte, size)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 4 << 20; i < 12<<20; i++ {
		want[i] = byte(rng.Uint32())
	}
	src := filepath.Join(dir, "src.img")
	if err := os.WriteFile(src, want, 0o644); err != nil {
		t.Fatal(err)
	}
	s := startServe(t, nil, "-file="+vol, "-size=16MiB", "-walSize=2MiB", "-nbd=127.0.0.1:0", "-iscsi=127.0.0.1:0")
	mustRun(t, 2*time.Minute, "nbdcopy", "--flush", src, s.nbdURI("nbd2iscsi"))
	if code := s.stop(sigint); code != 0 {
		t.Fatalf("exit %d after SIGINT\nstderr:\n%s", code, s.stderrText())
	}
	s = startServe(t, nil, "-file="+vol, "-nbd=127.0.0.1:0", "-iscsi=127.0.0.1:0")
	if d := firstDiff(readISCSI(t, s.iscsiURI(), size), want); d != "" {
		t.Fatalf("iSCSI read-back after restart: %s", d)
	}
	if code := s.stop(sigterm); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
}

// TestSIGTERMStopsCleanlyAndLogsApart checks the orderly stop (exit 0, the
// volume flushed and closed) and that golang/glog's files land in the
// weedblock subdirectory of upstream's -logdir, apart from upstream's.
func TestSIGTERMStopsCleanlyAndLogsApart(t *testing.T) {
	logdir := t.TempDir()
	vol := filepath.Join(t.TempDir(), "clean.blk")
	global := []string{"-logdir=" + logdir, "-logtostderr=false", "-alsologtostderr=false"}
	s := startServe(t, global, "-file="+vol, "-size=4MiB", "-walSize=1MiB", "-nbd=127.0.0.1:0")
	if code := s.stop(sigterm); code != 0 {
		t.Fatalf("exit %d after SIGTERM\nstderr:\n%s", code, s.stderrText())
	}
	if s.stderrText() != "" {
		t.Errorf("stderr not empty with -alsologtostderr=false:\n%s", s.stderrText())
	}
	ours := readDirFiles(t, filepath.Join(logdir, "weedblock"))
	if err := contains(ours, "serving \"clean\"", "stopping", "flushed and closed"); err != nil {
		t.Fatalf("weedblock log: %v\n%s", err, ours)
	}
	if theirs := readDirFiles(t, logdir); strings.Contains(theirs, "serving \"clean\"") {
		t.Fatalf("weedblock's messages landed in upstream's log files:\n%s", theirs)
	}

	// A second start reuses the file.
	s = startServe(t, nil, "-file="+vol, "-nbd=127.0.0.1:0")
	if !strings.Contains(s.ready, "opened") || !strings.Contains(s.ready, "(4194304 bytes") {
		t.Fatalf("second start: %q", s.ready)
	}
	if code := s.stop(sigterm); code != 0 {
		t.Fatalf("second start: exit %d after SIGTERM", code)
	}
	if err := contains(s.stderrText(), "flushed and closed"); err != nil {
		t.Fatalf("second stop: %v\n%s", err, s.stderrText())
	}
}

// readDirFiles concatenates the regular files directly inside dir.
func readDirFiles(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	var b strings.Builder
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		b.Write(data)
	}
	return b.String()
}

// TestCHAPGuardsTheTarget: with -chap.user/-chap.secret, an initiator
// without the secret cannot log in; with it, it sees LUN 0.
func TestCHAPGuardsTheTarget(t *testing.T) {
	requireTools(t, "iscsi-ls")
	vol := filepath.Join(t.TempDir(), "chap.blk")
	s := startServe(t, nil, "-file="+vol, "-size=4MiB", "-walSize=1MiB", "-iscsi=127.0.0.1:0",
		"-chap.user=alice", "-chap.secret=secret-123456789")
	for _, url := range []string{"iscsi://" + s.iscsi, "iscsi://alice%wrong-secret-99@" + s.iscsi} {
		r := runCmd(t, time.Minute, "iscsi-ls", "-s", url)
		if r.code == 0 || strings.Contains(r.stdout, "Lun:0") {
			t.Fatalf("iscsi-ls %s logged in without the right secret: exit %d\n%s", url, r.code, r.stdout)
		}
	}
	out := mustRun(t, time.Minute, "iscsi-ls", "-s", "iscsi://alice%secret-123456789@"+s.iscsi)
	if err := contains(out, "Target:"+s.target, "Lun:0"); err != nil {
		t.Fatalf("iscsi-ls with CHAP: %v\n%s", err, out)
	}
	if code := s.stop(sigterm); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
}

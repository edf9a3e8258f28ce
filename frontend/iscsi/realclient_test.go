package iscsi

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockdev"
	"github.com/weedblock/weedblock/frontend/scsi"
)

// Tests with real initiators from Debian's libiscsi-bin, against the real
// SCSI logical unit over an in-memory device.

const (
	realInitiator  = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test"
	realInitiator2 = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2"
)

// realTarget adapts a scsi.LogicalUnit to a Target.
func realTarget(name string, dev blockdev.Device, opts scsi.Options) Target {
	opts.DeviceName = name
	if opts.VolumeName == "" {
		opts.VolumeName = name
	}
	return SCSITarget(name, scsi.NewLogicalUnit(dev, opts))
}

type realServer struct {
	srv  *Server
	port int
	name string
	dev  *blockdev.Mem
}

func startRealServer(t testing.TB, cfg Config, size int64, tweak func(*Target)) *realServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dev, err := blockdev.NewMem(size, 512)
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(cfg)
	name := IQN("disk0")
	tg := realTarget(name, dev, scsi.Options{VendorID: "WEEDBLK", ProductID: "weedblock", ProductRev: "0001", SerialNumber: "wb-disk0"})
	if tweak != nil {
		tweak(&tg)
	}
	if err := s.AddTarget(tg); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		<-done
	})
	return &realServer{srv: s, port: l.Addr().(*net.TCPAddr).Port, name: name, dev: dev}
}

func (r *realServer) portal() string { return fmt.Sprintf("iscsi://127.0.0.1:%d", r.port) }
func (r *realServer) url() string    { return fmt.Sprintf("%s/%s/0", r.portal(), r.name) }

// runTool runs a libiscsi tool; a missing tool fails the test.
func runTool(t testing.TB, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not installed (apt-get install libiscsi-bin): %v", name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("%s timed out after %v", name, timeout)
	}
	return string(out), err
}

func TestRealIscsiLs(t *testing.T) {
	rs := startRealServer(t, Config{}, 16<<20, nil)
	if err := rs.srv.AddTarget(realTarget(IQN("disk1"), mustMem(t, 8<<20), scsi.Options{})); err != nil {
		t.Fatal(err)
	}
	out, err := runTool(t, 30*time.Second, "iscsi-ls", "-s", rs.portal())
	if err != nil {
		t.Fatalf("iscsi-ls: %v\n%s", err, out)
	}
	for _, want := range []string{"Target:" + rs.name, "Target:" + IQN("disk1"), "Portal:127.0.0.1:", "Lun:0"} {
		if !strings.Contains(out, want) {
			t.Errorf("iscsi-ls output lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out, "Type:DIRECT_ACCESS") != 2 {
		t.Errorf("iscsi-ls did not list two disks:\n%s", out)
	}
}

func mustMem(t testing.TB, size int64) *blockdev.Mem {
	t.Helper()
	d, err := blockdev.NewMem(size, 512)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestRealIscsiInqAndReadCapacity(t *testing.T) {
	rs := startRealServer(t, Config{}, 16<<20, nil)
	out, err := runTool(t, 30*time.Second, "iscsi-inq", rs.url())
	if err != nil {
		t.Fatalf("iscsi-inq: %v\n%s", err, out)
	}
	if !strings.Contains(out, "WEEDBLK") || !strings.Contains(out, "weedblock") {
		t.Errorf("iscsi-inq output lacks vendor/product:\n%s", out)
	}
	out, err = runTool(t, 30*time.Second, "iscsi-readcapacity16", rs.url())
	if err != nil {
		t.Fatalf("iscsi-readcapacity16: %v\n%s", err, out)
	}
	if !strings.Contains(out, "LOGICAL BLOCK LENGTH IN BYTES:512") || !strings.Contains(out, "Total size:16777216") {
		t.Errorf("iscsi-readcapacity16 output:\n%s", out)
	}
}

func TestRealIscsiSwp(t *testing.T) {
	rs := startRealServer(t, Config{}, 16<<20, nil)
	// Query only: turning SWP on is MODE SELECT work of the logical unit.
	out, err := runTool(t, 30*time.Second, "iscsi-swp", rs.url())
	if err != nil {
		t.Fatalf("iscsi-swp: %v\n%s", err, out)
	}
	if !strings.Contains(out, "SWP:0") {
		t.Errorf("iscsi-swp output:\n%s", out)
	}
}

func TestRealCHAP(t *testing.T) {
	rs := startRealServer(t, Config{}, 16<<20, func(tg *Target) {
		tg.CHAP = &CHAP{User: "bob", Secret: "bobs-secret-123"}
	})
	url := fmt.Sprintf("iscsi://bob%%bobs-secret-123@127.0.0.1:%d/%s/0", rs.port, rs.name)
	out, err := runTool(t, 30*time.Second, "iscsi-inq", url)
	if err != nil {
		t.Fatalf("iscsi-inq with CHAP: %v\n%s", err, out)
	}
	bad := fmt.Sprintf("iscsi://bob%%wrong-secret-00@127.0.0.1:%d/%s/0", rs.port, rs.name)
	out, err = runTool(t, 30*time.Second, "iscsi-inq", bad)
	if err == nil {
		t.Fatalf("iscsi-inq with a wrong secret succeeded:\n%s", out)
	}
}

// TestRealDigests makes the target accept only CRC32C digests, so libiscsi
// (which offers HeaderDigest=None,CRC32C) must use a header digest: a wrong
// digest byte order would break every PDU. (libiscsi does not propose
// DataDigest, so data digests are covered by TestDigests only.)
func TestRealDigests(t *testing.T) {
	rs := startRealServer(t, Config{HeaderDigests: []string{"CRC32C"}, DataDigests: []string{"CRC32C"}}, 16<<20, nil)
	out, err := runTool(t, 30*time.Second, "iscsi-inq", rs.url())
	if err != nil {
		t.Fatalf("iscsi-inq with digests: %v\n%s", err, out)
	}
	out, err = runTool(t, 60*time.Second, "iscsi-test-cu", "--dataloss", "--test=ALL.Write10.Simple",
		"-i", realInitiator, "-I", realInitiator2, "-n", rs.url())
	sum, perr := parseCUnit(out)
	if perr != nil || sum.passed != 1 || sum.failed != 0 {
		t.Fatalf("Write10.Simple with digests: %+v %v %v\n%s", sum, perr, err, tail(out, 3000))
	}
}

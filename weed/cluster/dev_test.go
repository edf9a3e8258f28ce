package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// devRun is one `weed block dev` run in the background.
type devRun struct {
	out    *syncBuffer
	cancel context.CancelFunc
	done   chan error
}

func startDev(t *testing.T, args []string) *devRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &devRun{out: &syncBuffer{}, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- Dev(ctx, args, r.out, r.out) }()
	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(r.out.String(), "Press Ctrl-C to stop.") {
		select {
		case err := <-r.done:
			t.Fatalf("dev ended while starting: %v\n%s", err, r.out)
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cancel()
			<-r.done
			t.Fatalf("dev cluster not up after 3m:\n%s", r.out)
		}
	}
	return r
}

func (r *devRun) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("dev: %v\n%s", err, r.out)
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("dev did not stop within 2m")
	}
}

// nbdURI is the NBD URI dev printed for the demo volume.
func (r *devRun) nbdURI(t *testing.T) string {
	t.Helper()
	for _, line := range strings.Split(r.out.String(), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "NBD" && strings.HasPrefix(f[1], "nbd://") {
			return f[1]
		}
	}
	t.Fatalf("no NBD URI in dev output:\n%s", r.out)
	return ""
}

func runTool(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s is required (Debian libnbd-bin): %v", name, err)
	}
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return out
}

// TestDevCluster runs `weed block dev` with this test binary as the weed
// binary: a master and three volume servers as real child processes with
// the real block master and block volume manager. The demo volume is
// created, written and read over NBD with libnbd's nbdcopy, the cluster
// stops on cancel, and a second run reuses the data (no new volume, same
// bytes).
func TestDevCluster(t *testing.T) {
	raceDir := t.TempDir()
	for _, kv := range childEnvs(raceDir) {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	defer checkChildRaces(t, raceDir)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// One block of ports, all checked free: master B (gRPC B+10000),
	// volume servers B+1..B+3 (gRPC +10000), NBD B+10/20/30, replication
	// B+11/21/31, iSCSI B+40..B+42.
	offsets := []int{0, 10000, 1, 2, 3, 10001, 10002, 10003, 10, 20, 30, 11, 21, 31, 40, 41, 42}
	b := freePortSet(t, offsets)
	args := []string{"-dir=" + filepath.Join(dir, "data"), "-weed=" + exe, "-size=64MiB",
		fmt.Sprintf("-master.port=%d", b), fmt.Sprintf("-volume.port=%d", b+1),
		fmt.Sprintf("-nbd.port=%d", b+10), fmt.Sprintf("-repl.port=%d", b+11),
		fmt.Sprintf("-iscsi.port=%d", b+40)}

	first := startDev(t, args)
	out := first.out.String()
	if !strings.Contains(out, `created block volume "demo"`) || !strings.Contains(out, `state "ok"`) {
		first.stop(t)
		t.Fatalf("first run did not create a serving demo volume:\n%s", out)
	}
	uri := first.nbdURI(t)
	payload := make([]byte, 1<<20)
	rand.Read(payload)
	in := filepath.Join(dir, "in.bin")
	if err := os.WriteFile(in, payload, 0o644); err != nil {
		t.Fatal(err)
	}
	runTool(t, "nbdcopy", in, uri)
	first.stop(t)
	for _, name := range []string{"master", "volume1", "volume2", "volume3"} {
		if _, err := os.Stat(filepath.Join(dir, "data", name, "stderr.log")); err != nil {
			t.Errorf("%s log: %v", name, err)
		}
	}

	second := startDev(t, args)
	defer second.stop(t)
	out = second.out.String()
	if strings.Contains(out, "created block volume") || !strings.Contains(out, `state "ok"`) {
		t.Fatalf("second run did not reuse the serving demo volume:\n%s", out)
	}
	back := filepath.Join(dir, "back.bin")
	runTool(t, "nbdcopy", "--requests=1", second.nbdURI(t), back)
	got, err := os.ReadFile(back)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) < len(payload) || !bytes.Equal(got[:len(payload)], payload) {
		t.Fatalf("data after restart differs from what was written")
	}
}

// TestDevPortFlags checks that port flags whose derived ports leave
// 1..65535 are refused up front, naming the flag.
func TestDevPortFlags(t *testing.T) {
	for _, tc := range []struct {
		arg string
		ok  bool
	}{
		{"-master.port=55535", true},
		{"-master.port=55536", false},
		{"-volume.port=55533", true},
		{"-volume.port=55534", false},
		{"-nbd.port=65515", true},
		{"-nbd.port=65516", false},
		{"-iscsi.port=0", false},
		{"-repl.port=65516", false},
	} {
		_, err := parseDevFlags([]string{tc.arg, "-weed=/bin/true"}, io.Discard)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok=%v", tc.arg, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), strings.SplitN(tc.arg, "=", 2)[0]) {
			t.Errorf("%s: error %q does not name the flag", tc.arg, err)
		}
	}
}

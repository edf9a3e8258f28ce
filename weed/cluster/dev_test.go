package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
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
	args := []string{"-dir=" + filepath.Join(dir, "data"), "-weed=" + exe, "-size=64MiB",
		fmt.Sprintf("-master.port=%d", freePort(t)), fmt.Sprintf("-volume.port=%d", freePort(t)),
		fmt.Sprintf("-nbd.port=%d", freePort(t)), fmt.Sprintf("-iscsi.port=%d", freePort(t)),
		fmt.Sprintf("-repl.port=%d", freePort(t))}
	// -volume.port N uses N, N+1, N+2 and their gRPC ports +10000; a port
	// from freePort is most likely free along with its neighbours.

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

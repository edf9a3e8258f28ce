package test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// weedBin is the weed binary TestMain builds for this run.
var weedBin string

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	dir, err := os.MkdirTemp("", "weedblock-e2e-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: temp dir: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	weedBin = filepath.Join(dir, "weed")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	// go test runs in the package directory: the module root is its parent.
	build := exec.CommandContext(ctx, "go", "build", "-o", weedBin, "./weed")
	build.Dir = ".."
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build ./weed: %v\n", err)
		return 1
	}
	return m.Run()
}

// requireTools fails the test unless every named client tool is installed.
func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("required client tool %s is not installed (apt-get install libnbd-bin libiscsi-bin qemu-utils qemu-block-extra): %v", tool, err)
		}
	}
}

// runResult is the outcome of a finished command.
type runResult struct {
	stdout, stderr string
	code           int
}

// runCmd runs name args... to completion within timeout.
func runCmd(t *testing.T, timeout time.Duration, name string, args ...string) runResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := runResult{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("%s %q: timed out after %v\nstderr:\n%s", name, args, timeout, res.stderr)
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("%s %q: %v", name, args, err)
	}
	return res
}

// mustRun runs a command that must succeed and returns its stdout.
func mustRun(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	r := runCmd(t, timeout, name, args...)
	if r.code != 0 {
		t.Fatalf("%s %q: exit %d\nstdout:\n%s\nstderr:\n%s", name, args, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// server is a running `weed block serve` child process.
type server struct {
	t      *testing.T
	cmd    *exec.Cmd
	ready  string // the ready line
	nbd    string // host:port, "" when off
	iscsi  string // host:port, "" when off
	target string // iSCSI target name, "" when off

	mu     sync.Mutex
	stderr bytes.Buffer
	done   chan struct{} // closed when the process has exited
	err    error         // Wait's result, valid after done
}

var readyRE = regexp.MustCompile(`^weed block serve: (created|opened) .* serving "([^"]+)"(?: nbd=(\S+))?(?: iscsi=(\S+) target=(\S+))?$`)

// lockedWriter serialises writes of the child's stderr into s.stderr.
type lockedWriter struct{ s *server }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	return w.s.stderr.Write(p)
}

// startServe starts `weed [global...] block serve args...` and waits (at
// most 60 s) for its ready line. The process is killed when the test ends.
func startServe(t *testing.T, global []string, args ...string) *server {
	t.Helper()
	argv := append(append(append([]string{}, global...), "block", "serve"), args...)
	s := &server{t: t, cmd: exec.Command(weedBin, argv...), done: make(chan struct{})}
	first := make(chan string, 1)
	s.cmd.Stdout = &firstLineWriter{line: first}
	s.cmd.Stderr = lockedWriter{s}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start weed: %v", err)
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		select {
		case <-s.done:
		default:
			s.cmd.Process.Kill()
			<-s.done
		}
	})
	select {
	case <-s.done:
		t.Fatalf("weed %q exited before ready: %v\nstderr:\n%s", argv, s.err, s.stderrText())
	case l := <-first:
		m := readyRE.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("unexpected ready line %q", l)
		}
		s.ready, s.nbd, s.iscsi, s.target = l, m[3], m[4], m[5]
	case <-time.After(60 * time.Second):
		t.Fatalf("weed %q not ready after 60s\nstderr:\n%s", argv, s.stderrText())
	}
	return s
}

// firstLineWriter sends the first complete line written to it on line and
// discards everything else.
type firstLineWriter struct {
	buf  []byte
	sent bool
	line chan<- string
}

func (w *firstLineWriter) Write(p []byte) (int, error) {
	if w.sent {
		return len(p), nil
	}
	w.buf = append(w.buf, p...)
	if i := bytes.IndexByte(w.buf, '\n'); i >= 0 {
		w.line <- string(w.buf[:i])
		w.sent = true
		w.buf = nil
	}
	return len(p), nil
}

func (s *server) stderrText() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stderr.String()
}

// stop sends sig and waits (at most 60 s) for the process to exit; it
// returns the exit code.
func (s *server) stop(sig syscall.Signal) int {
	s.t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.t.Fatalf("signal %v: %v", sig, err)
	}
	select {
	case <-s.done:
	case <-time.After(60 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
		s.t.Fatalf("weed did not exit within 60s of %v\nstderr:\n%s", sig, s.stderrText())
	}
	var ee *exec.ExitError
	switch {
	case s.err == nil:
		return 0
	case errors.As(s.err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			s.t.Fatalf("weed was killed by %v instead of exiting\nstderr:\n%s", ws.Signal(), s.stderrText())
		}
		return ee.ExitCode()
	default:
		s.t.Fatalf("wait: %v", s.err)
		return -1
	}
}

// nbdURI is the NBD URI of export name on s.
func (s *server) nbdURI(name string) string { return "nbd://" + s.nbd + "/" + name }

// iscsiURI is the libiscsi URI of LUN 0 of s's target.
func (s *server) iscsiURI() string { return "iscsi://" + s.iscsi + "/" + s.target + "/0" }

// readNBD reads the whole export over NBD with nbdcopy.
func readNBD(t *testing.T, uri string, size int) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "nbd-read.img")
	mustRun(t, 2*time.Minute, "nbdcopy", uri, out)
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != size {
		t.Fatalf("nbdcopy read %d bytes, want %d", len(data), size)
	}
	return data
}

// readISCSI reads the whole LUN over iSCSI with qemu-img (libiscsi).
func readISCSI(t *testing.T, uri string, size int) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "iscsi-read.img")
	mustRun(t, 2*time.Minute, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, out)
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != size {
		t.Fatalf("qemu-img read %d bytes, want %d", len(data), size)
	}
	return data
}

// firstDiff describes where got and want first differ, or returns "".
func firstDiff(got, want []byte) string {
	if bytes.Equal(got, want) {
		return ""
	}
	n := min(len(got), len(want))
	for i := 0; i < n; i++ {
		if got[i] != want[i] {
			return fmt.Sprintf("first difference at byte %d (block %d of 4096): got %#02x, want %#02x", i, i/4096, got[i], want[i])
		}
	}
	return fmt.Sprintf("length %d, want %d", len(got), len(want))
}

func contains(s string, subs ...string) error {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return fmt.Errorf("missing %q", sub)
		}
	}
	return nil
}

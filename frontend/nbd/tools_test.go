package nbd

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// tool returns the path of a real client program, failing the test if it is
// not installed.
func tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is required (apt-get install libnbd-bin fio nbdkit): %v", name, err)
	}
	return p
}

// run runs a command with a deadline and returns its stdout, failing the
// test with its output on error.
func run(t testing.TB, timeout time.Duration, name string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool(t, name), args...)
	cmd.Dir = t.TempDir() // fio leaves verify state files in its working directory
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.Bytes()
}

func TestNbdinfoJSON(t *testing.T) {
	s, addr := startServer(t, Options{})
	if err := s.AddExport("disk1", "first test disk", newMem(t, 64<<20, 4096)); err != nil {
		t.Fatal(err)
	}
	out := run(t, 30*time.Second, "nbdinfo", "--json", fmt.Sprintf("nbd://%s/disk1", addr))
	var info struct {
		Exports []map[string]any `json:"exports"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("nbdinfo output %s: %v", out, err)
	}
	if len(info.Exports) != 1 {
		t.Fatalf("nbdinfo shows %d exports: %s", len(info.Exports), out)
	}
	e := info.Exports[0]
	want := map[string]any{
		"export-name":          "disk1",
		"export-size":          float64(64 << 20),
		"can_flush":            true,
		"can_fua":              true,
		"can_trim":             true,
		"can_zero":             true,
		"can_fast_zero":        true,
		"can_multi_conn":       true,
		"can_df":               true,
		"is_read_only":         false,
		"block_size_minimum":   float64(4096),
		"block_size_preferred": float64(4096),
		"block_size_maximum":   float64(32 << 20),
		"description":          "first test disk",
	}
	for k, v := range want {
		if e[k] != v {
			t.Errorf("nbdinfo %s = %v, want %v", k, e[k], v)
		}
	}
	if ctx := fmt.Sprint(e["contexts"]); ctx != "[base:allocation]" {
		t.Errorf("nbdinfo contexts = %s, want [base:allocation]", ctx)
	}
	if t.Failed() {
		t.Logf("nbdinfo output: %s", out)
	}

	// --map reads base:allocation: one allocated data extent.
	out = run(t, 30*time.Second, "nbdinfo", "--map", "--totals", fmt.Sprintf("nbd://%s/disk1", addr))
	if f := strings.Fields(string(out)); len(f) < 4 || f[0] != fmt.Sprint(64<<20) || f[1] != "100.0%" || f[3] != "data" {
		t.Fatalf("nbdinfo --map --totals: %q", out)
	}
}

func TestNbdinfoList(t *testing.T) {
	s, addr := startServer(t, Options{})
	for i, name := range []string{"alpha", "beta", "gamma"} {
		if err := s.AddExport(name, "disk "+name, newMem(t, int64(i+1)<<20, 512)); err != nil {
			t.Fatal(err)
		}
	}
	out := run(t, 30*time.Second, "nbdinfo", "--list", "--json", fmt.Sprintf("nbd://%s", addr))
	var info struct {
		Exports []map[string]any `json:"exports"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("nbdinfo output %s: %v", out, err)
	}
	got := map[string]float64{}
	for _, e := range info.Exports {
		name, _ := e["export-name"].(string)
		size, _ := e["export-size"].(float64)
		got[name] = size
		if e["description"] != "disk "+name {
			t.Errorf("export %q description %v", name, e["description"])
		}
	}
	want := map[string]float64{"alpha": 1 << 20, "beta": 2 << 20, "gamma": 3 << 20}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("nbdinfo --list exports %v, want %v\n%s", got, want, out)
	}

	// Removing an export takes it out of the list.
	if err := s.RemoveExport("beta"); err != nil {
		t.Fatal(err)
	}
	out = run(t, 30*time.Second, "nbdinfo", "--list", fmt.Sprintf("nbd://%s", addr))
	if bytes.Contains(out, []byte("beta")) || !bytes.Contains(out, []byte("gamma")) {
		t.Fatalf("after RemoveExport(beta), nbdinfo --list:\n%s", out)
	}
}

// TestUnixSocket serves over a Unix socket listener (nbd+unix URI).
func TestUnixSocket(t *testing.T) {
	s := NewServer(Options{})
	if err := s.AddExport("u", "", newMem(t, 4<<20, 4096)); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	out := run(t, 30*time.Second, "nbdinfo", "--size", "nbd+unix:///u?socket="+sock)
	if strings.TrimSpace(string(out)) != fmt.Sprint(4<<20) {
		t.Fatalf("nbdinfo --size over a Unix socket: %q", out)
	}
	s.Close()
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve returned %v", err)
	}
}

func sha256File(t testing.TB, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func TestNbdcopyRoundTrip(t *testing.T) {
	size := int64(256 << 20)
	if testing.Short() {
		size = 32 << 20
	}
	s, addr := startServer(t, Options{})
	if err := s.AddExport("copy", "", newMem(t, size, 4096)); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	in := filepath.Join(dir, "in.img")
	outPath := filepath.Join(dir, "out.img")
	data := make([]byte, size)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(in, data, 0o600); err != nil {
		t.Fatal(err)
	}
	data = nil
	uri := fmt.Sprintf("nbd://%s/copy", addr)
	run(t, 2*time.Minute, "nbdcopy", "--flush", "--connections=4", in, uri)
	run(t, 2*time.Minute, "nbdcopy", "--connections=4", uri, outPath)
	if a, b := sha256File(t, in), sha256File(t, outPath); a != b {
		t.Fatalf("nbdcopy round trip: checksum %x in, %x out", a, b)
	}
}

// TestFioVerify runs fio's nbd engine (4 jobs, queue depth 16, random 4k
// writes with crc32c verification and a flush every 32 writes) over an
// in-memory device and over a file-backed one.
func TestFioVerify(t *testing.T) {
	for _, kind := range []string{"mem", "file"} {
		t.Run(kind, func(t *testing.T) {
			s, addr := startServer(t, Options{})
			const size = 64 << 20
			var flushes func() int64
			if kind == "mem" {
				m := newMem(t, size, 4096)
				flushes = func() int64 { n, _ := m.Counts(); return n }
				if err := s.AddExport("fio", "", m); err != nil {
					t.Fatal(err)
				}
			} else {
				d, err := openFileDevice(filepath.Join(t.TempDir(), "fio.img"), size, 4096)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { d.Close() })
				cd := &countingDevice{Device: d}
				flushes = cd.flushes.Load
				if err := s.AddExport("fio", "", cd); err != nil {
					t.Fatal(err)
				}
			}
			fioVerify(t, addr, flushes)
		})
	}
}

func fioVerify(t *testing.T, addr string, flushes func() int64) {
	size := "8M"
	if testing.Short() {
		size = "4M"
	}
	out := run(t, 3*time.Minute, "fio",
		"--name=verify", "--ioengine=nbd", "--uri=nbd://"+addr+"/fio",
		"--rw=randwrite", "--bs=4k", "--iodepth=16", "--numjobs=4",
		"--size="+size, "--offset_increment=16M",
		"--verify=crc32c", "--verify_fatal=1", "--do_verify=1",
		"--fsync=32", "--group_reporting", "--output-format=json")
	var res struct {
		Jobs []struct {
			Error int `json:"error"`
			Write struct {
				IOs int64 `json:"total_ios"`
			} `json:"write"`
			Read struct {
				IOs int64 `json:"total_ios"`
			} `json:"read"`
		} `json:"jobs"`
	}
	if i := bytes.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("fio json: %v\n%s", err, out)
	}
	if len(res.Jobs) == 0 || res.Jobs[0].Error != 0 || res.Jobs[0].Write.IOs == 0 || res.Jobs[0].Read.IOs == 0 {
		t.Fatalf("fio result %+v\n%s", res.Jobs, out)
	}
	if flushes() == 0 {
		t.Fatalf("fio --fsync=32 sent no NBD_CMD_FLUSH to the device")
	}
}

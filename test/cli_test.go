package test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestVersionIsUpstream(t *testing.T) {
	r := runCmd(t, 30*time.Second, weedBin, "version")
	if r.code != 0 {
		t.Fatalf("weed version: exit %d\n%s", r.code, r.stderr)
	}
	if !strings.HasPrefix(r.stdout, "version ") || !strings.Contains(r.stdout, "linux") {
		t.Fatalf("weed version printed %q, want upstream's \"version X linux ARCH\"", r.stdout)
	}
}

func TestHelpListsUpstreamAndBlockCommands(t *testing.T) {
	r := runCmd(t, 30*time.Second, weedBin, "help")
	if r.code != 0 {
		t.Fatalf("weed help: exit %d\n%s", r.code, r.stderr)
	}
	for _, c := range []string{"master", "volume", "filer", "shell", "server", "version", "block"} {
		found := false
		for _, l := range strings.Split(r.stdout, "\n") {
			if f := strings.Fields(l); len(f) > 1 && f[0] == c {
				found = true
			}
		}
		if !found {
			t.Errorf("weed help does not list %q:\n%s", c, r.stdout)
		}
	}

	r = runCmd(t, 30*time.Second, weedBin, "help", "master")
	if r.code != 0 || !strings.Contains(r.stdout, "Usage: weed master") {
		t.Fatalf("weed help master: exit %d\n%s", r.code, r.stdout)
	}
	// Upstream's flags and defaults are kept.
	if err := contains(r.stderr, "-port", "9333", "-mdir"); err != nil {
		t.Fatalf("weed help master defaults: %v\n%s", err, r.stderr)
	}

	r = runCmd(t, 30*time.Second, weedBin, "help", "block")
	if r.code != 0 || !strings.Contains(r.stdout, "weed block serve") {
		t.Fatalf("weed help block: exit %d\n%s", r.code, r.stdout)
	}

	r = runCmd(t, 30*time.Second, weedBin, "no-such-command")
	if r.code != 2 || !strings.Contains(r.stderr, "unknown subcommand") {
		t.Fatalf("unknown command: exit %d\n%s", r.code, r.stderr)
	}
}

// TestShellIsUpstream checks that `weed shell` is upstream's shell command
// with upstream's flags.
func TestShellIsUpstream(t *testing.T) {
	r := runCmd(t, 30*time.Second, weedBin, "help", "shell")
	if r.code != 0 || !strings.Contains(r.stdout, "Usage: weed shell") {
		t.Fatalf("weed help shell: exit %d\n%s", r.code, r.stdout)
	}
	if err := contains(r.stderr, "-master"); err != nil {
		t.Fatalf("weed help shell flags: %v\n%s", err, r.stderr)
	}
}

func TestBlockServeRejectsBadFlags(t *testing.T) {
	dir := t.TempDir()
	vol := filepath.Join(dir, "v.blk")
	cases := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"no subcommand", []string{"block"}, 2, "missing subcommand"},
		{"missing file", []string{"block", "serve", "-size=1MiB", "-nbd=127.0.0.1:0"}, 2, "-file is required"},
		{"bad size", []string{"block", "serve", "-file=" + vol, "-size=big", "-nbd=127.0.0.1:0"}, 2, "not a size"},
		{"no listener", []string{"block", "serve", "-file=" + vol, "-size=1MiB"}, 2, "nothing to serve"},
		{"missing file without size", []string{"block", "serve", "-file=" + vol, "-nbd=127.0.0.1:0"}, 2, "give -size to create it"},
		{"unknown flag", []string{"block", "serve", "-file=" + vol, "-nbd=127.0.0.1:0", "-frobnicate"}, 2, "frobnicate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := runCmd(t, 30*time.Second, weedBin, tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.msg) {
				t.Fatalf("weed %q: exit %d, stderr %q; want exit %d mentioning %q", tc.args, r.code, r.stderr, tc.code, tc.msg)
			}
		})
	}
	if _, err := os.Stat(vol); !os.IsNotExist(err) {
		t.Fatalf("a refused start created %s: %v", vol, err)
	}
}

func TestBlockServeRefusesSizeMismatch(t *testing.T) {
	vol := filepath.Join(t.TempDir(), "mm.blk")
	s := startServe(t, nil, "-file="+vol, "-size=8MiB", "-walSize=1MiB", "-nbd=127.0.0.1:0")
	if code := s.stop(sigterm); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
	before, err := os.Stat(vol)
	if err != nil {
		t.Fatal(err)
	}
	r := runCmd(t, 30*time.Second, weedBin, "block", "serve", "-file="+vol, "-size=16MiB", "-nbd=127.0.0.1:0")
	if r.code != 1 || !strings.Contains(r.stderr, "size mismatch") {
		t.Fatalf("size mismatch: exit %d, stderr %q", r.code, r.stderr)
	}
	after, err := os.Stat(vol)
	if err != nil {
		t.Fatal(err)
	}
	if after.Size() != before.Size() {
		t.Fatalf("refused start resized the volume file: %d -> %d bytes", before.Size(), after.Size())
	}
	// It still serves at its own size.
	s = startServe(t, nil, "-file="+vol, "-nbd=127.0.0.1:0")
	if !strings.Contains(s.ready, "opened") || !strings.Contains(s.ready, "(8388608 bytes") {
		t.Fatalf("restart after refusal: %q", s.ready)
	}
	if code := s.stop(sigterm); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
}

package blockcmd

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol"
)

func TestParseServeRejectsBadFlags(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "vol1.blk")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no file", []string{"-size=1MiB", "-nbd=127.0.0.1:0"}, "-file is required"},
		{"bad size", []string{"-file=" + f, "-size=lots", "-nbd=127.0.0.1:0"}, "not a size"},
		{"zero size", []string{"-file=" + f, "-size=0", "-nbd=127.0.0.1:0"}, "positive"},
		{"unaligned size", []string{"-file=" + f, "-size=1000", "-nbd=127.0.0.1:0"}, "not a multiple of the block size 4096"},
		{"bad block size", []string{"-file=" + f, "-blockSize=1000", "-nbd=127.0.0.1:0"}, "power of two"},
		{"small wal", []string{"-file=" + f, "-walSize=4KiB", "-nbd=127.0.0.1:0"}, "at least 64KiB"},
		{"nothing to serve", []string{"-file=" + f, "-size=1MiB"}, "nothing to serve"},
		{"bad nbd addr", []string{"-file=" + f, "-nbd=localhost"}, "-nbd="},
		{"bad name", []string{"-file=" + f, "-nbd=127.0.0.1:0", "-name=Bad_Name"}, "-name="},
		{"underivable name", []string{"-file=" + filepath.Join(dir, "My Disk.img"), "-nbd=127.0.0.1:0"}, "give -name"},
		{"chap user only", []string{"-file=" + f, "-iscsi=127.0.0.1:0", "-chap.user=u"}, "go together"},
		{"chap without iscsi", []string{"-file=" + f, "-nbd=127.0.0.1:0", "-chap.user=u", "-chap.secret=s"}, "needs -iscsi"},
		{"extra args", []string{"-file=" + f, "-nbd=127.0.0.1:0", "extra"}, "unexpected arguments"},
		{"unknown flag", []string{"-file=" + f, "-nbd=127.0.0.1:0", "-bogus"}, "bogus"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			_, err := parseServe(tc.args, &out)
			var ue *usageError
			if !errors.As(err, &ue) {
				t.Fatalf("err = %v, want a usage error", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %q, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestParseServeAccepts(t *testing.T) {
	cfg, err := parseServe([]string{"-file=/d/db-1.blk", "-size=1GiB", "-walSize=8MiB", "-nbd=127.0.0.1:10809",
		"-iscsi=:3260", "-chap.user=u", "-chap.secret=s3cret-secret"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.name != "db-1" || cfg.size != 1<<30 || cfg.walSize != 8<<20 || cfg.blockSize != 0 {
		t.Fatalf("cfg = %+v", cfg)
	}
	if cfg.chap == nil || cfg.chap.User != "u" || cfg.chap.Secret != "s3cret-secret" {
		t.Fatalf("chap = %+v", cfg.chap)
	}
	cfg, err = parseServe([]string{"-file=x", "-size=512MiB", "-blockSize=512", "-iscsi=127.0.0.1:0", "-name=vol.a"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.size != 512<<20 || cfg.blockSize != 512 || cfg.name != "vol.a" || cfg.nbdAddr != "" {
		t.Fatalf("cfg = %+v", cfg)
	}
}

func TestMainExitStatus(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		args   []string
		status int
		stderr string
	}{
		{nil, exitUsage, "missing subcommand"},
		{[]string{"frobnicate"}, exitUsage, "unknown subcommand"},
		{[]string{"serve"}, exitUsage, "-file is required"},
		{[]string{"serve", "-h"}, 0, "Usage: weed block serve"},
		{[]string{"serve", "-file=" + filepath.Join(t.TempDir(), "absent"), "-nbd=127.0.0.1:0"}, exitUsage, "give -size to create it"},
	}
	for _, tc := range cases {
		var stdout, stderr bytes.Buffer
		if got := Main(ctx, tc.args, &stdout, &stderr); got != tc.status {
			t.Errorf("Main(%q) = %d, want %d; stderr:\n%s", tc.args, got, tc.status, stderr.String())
		}
		if !strings.Contains(stderr.String(), tc.stderr) {
			t.Errorf("Main(%q) stderr = %q, want %q", tc.args, stderr.String(), tc.stderr)
		}
	}
}

// startServe runs serve in the background and returns what it reported as
// ready, a stop function and the channel its result arrives on.
func startServe(t *testing.T, cfg serveConfig) (readyInfo, context.CancelFunc, <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan readyInfo, 1)
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		done <- serve(ctx, cfg, func(r readyInfo) { ready <- r })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-finished:
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop")
		}
	})
	select {
	case r := <-ready:
		return r, cancel, done
	case err := <-done:
		t.Fatalf("serve failed before ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("serve not ready after 30s")
	}
	return readyInfo{}, cancel, done
}

func waitDone(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop within 30s")
		return nil
	}
}

func TestServeCreatesListensAndStops(t *testing.T) {
	file := filepath.Join(t.TempDir(), "v1.blk")
	cfg := serveConfig{file: file, size: 4 << 20, walSize: 1 << 20, nbdAddr: "127.0.0.1:0", iscsiAddr: "127.0.0.1:0", name: "v1"}
	r, stop, done := startServe(t, cfg)
	if !r.created || r.size != 4<<20 || r.blockSize != blockvol.DefaultBlockSize || r.nbd == nil || r.iscsi == nil {
		t.Fatalf("ready = %+v", r)
	}
	if s := r.String(); !strings.Contains(s, "created") || !strings.Contains(s, "target=iqn.2026-11.io.weedblock:v1") {
		t.Fatalf("ready line %q", s)
	}
	for _, a := range []net.Addr{r.nbd, r.iscsi} {
		c, err := net.DialTimeout("tcp", a.String(), 5*time.Second)
		if err != nil {
			t.Fatalf("dial %s: %v", a, err)
		}
		c.Close()
	}
	stop()
	if err := waitDone(t, done); err != nil {
		t.Fatalf("serve after stop: %v", err)
	}
	for _, a := range []net.Addr{r.nbd, r.iscsi} {
		if c, err := net.DialTimeout("tcp", a.String(), time.Second); err == nil {
			c.Close()
			t.Fatalf("%s still accepting after stop", a)
		}
	}

	// A second start reuses the file; geometry flags must agree with it.
	cfg.size, cfg.walSize = 0, 0
	r, stop, done = startServe(t, cfg)
	if r.created || r.size != 4<<20 {
		t.Fatalf("second start: %+v", r)
	}
	stop()
	if err := waitDone(t, done); err != nil {
		t.Fatalf("second serve: %v", err)
	}

	cfg.size = 8 << 20
	err := serve(context.Background(), cfg, func(readyInfo) { t.Error("served despite size mismatch") })
	if err == nil || !strings.Contains(err.Error(), "size mismatch") {
		t.Fatalf("err = %v, want size mismatch", err)
	}
	cfg.size, cfg.blockSize = 0, 512
	err = serve(context.Background(), cfg, func(readyInfo) { t.Error("served despite block size mismatch") })
	if err == nil || !strings.Contains(err.Error(), "block size mismatch") {
		t.Fatalf("err = %v, want block size mismatch", err)
	}
	// The file survived the refused starts unchanged.
	vol, err := blockvol.Open(file, blockvol.Options{})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer vol.Close()
	if vol.Size() != 4<<20 || vol.BlockSize() != blockvol.DefaultBlockSize {
		t.Fatalf("file geometry changed: %d/%d", vol.Size(), vol.BlockSize())
	}
}

func TestServeBusyPortTouchesNothing(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	file := filepath.Join(t.TempDir(), "v2.blk")
	cfg := serveConfig{file: file, size: 1 << 20, nbdAddr: "127.0.0.1:0", iscsiAddr: l.Addr().String(), name: "v2"}
	err = serve(context.Background(), cfg, func(readyInfo) { t.Error("served on a busy port") })
	if err == nil || !strings.Contains(err.Error(), "iscsi listen") {
		t.Fatalf("err = %v, want iscsi listen error", err)
	}
	if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("volume file created despite failure: %v", err)
	}
}

func TestServeRemovesFileWhenCreateFails(t *testing.T) {
	file := filepath.Join(t.TempDir(), "v3.blk")
	// 64 KiB WAL cannot hold records of 1 MiB blocks: Create refuses.
	cfg := serveConfig{file: file, size: 4 << 20, blockSize: 1 << 20, walSize: 64 << 10, nbdAddr: "127.0.0.1:0", name: "v3"}
	if err := serve(context.Background(), cfg, func(readyInfo) { t.Error("served") }); err == nil {
		t.Fatal("serve succeeded with an impossible geometry")
	}
	if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("half-made volume file left behind: %v", err)
	}
}

func TestHelpIsNotAnError(t *testing.T) {
	_, err := parseServe([]string{"-h"}, &bytes.Buffer{})
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err = %v, want flag.ErrHelp", err)
	}
}

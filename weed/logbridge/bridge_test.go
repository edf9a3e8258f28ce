package logbridge

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/golang/glog"
	upstreamglog "github.com/seaweedfs/seaweedfs/weed/glog"
	upstreamflag "github.com/seaweedfs/seaweedfs/weed/util/fla9"
)

func TestBridgeCopiesFlagsAndUsesSubdirectory(t *testing.T) {
	root := t.TempDir()
	upstream := map[string]string{
		"v": "3", "vmodule": "wal=4", "logtostderr": "false",
		"alsologtostderr": "true", "stderrthreshold": "2", "logdir": root,
	}
	got := map[string]string{}
	get := func(n string) (string, bool) { v, ok := upstream[n]; return v, ok }
	set := func(n, v string) error { got[n] = v; return nil }
	if err := bridge(get, set, "/nonexistent-tmp"); err != nil {
		t.Fatalf("bridge: %v", err)
	}
	want := map[string]string{
		"v": "3", "vmodule": "wal=4", "logtostderr": "false",
		"alsologtostderr": "true", "stderrthreshold": "2",
		"log_dir": filepath.Join(root, Subdir),
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("-%s = %q, want %q", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("set %v, want exactly %v", got, want)
	}
	if st, err := os.Stat(filepath.Join(root, Subdir)); err != nil || !st.IsDir() {
		t.Errorf("log subdirectory not created: %v", err)
	}
}

func TestBridgeDefaultsToTempDir(t *testing.T) {
	tmp := t.TempDir()
	got := map[string]string{}
	get := func(n string) (string, bool) {
		if n == "logdir" {
			return "", true
		}
		return "", false
	}
	if err := bridge(get, func(n, v string) error { got[n] = v; return nil }, tmp); err != nil {
		t.Fatalf("bridge: %v", err)
	}
	if want := filepath.Join(tmp, Subdir); got["log_dir"] != want {
		t.Fatalf("log_dir = %q, want %q", got["log_dir"], want)
	}
}

func TestBridgeFallsBackToStderrWhenDirFails(t *testing.T) {
	root := t.TempDir()
	blocker := filepath.Join(root, "file")
	if err := os.WriteFile(blocker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	get := func(n string) (string, bool) {
		if n == "logdir" {
			return blocker, true // a file: the subdirectory cannot be made
		}
		return "", false
	}
	err := bridge(get, func(n, v string) error { got[n] = v; return nil }, root)
	if err == nil {
		t.Fatal("bridge succeeded with an impossible log directory")
	}
	if got["logtostderr"] != "true" {
		t.Fatalf("did not fall back to stderr: %v", got)
	}
	if _, ok := got["log_dir"]; ok {
		t.Fatalf("log_dir set despite failure: %v", got)
	}
}

func TestBridgeReportsBadValue(t *testing.T) {
	get := func(n string) (string, bool) { return "x", n == "v" }
	boom := errors.New("boom")
	err := bridge(get, func(n, v string) error { return boom }, t.TempDir())
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "-v") {
		t.Fatalf("err = %v, want wrapped boom naming -v", err)
	}
}

// TestApplyKeepsLoggersApart drives the real flag sets of both loggers:
// upstream's -v and -logdir must govern golang/glog, and each logger must
// write only its own files.
func TestApplyKeepsLoggersApart(t *testing.T) {
	root := t.TempDir()
	for n, v := range map[string]string{"v": "2", "logdir": root, "logtostderr": "false", "alsologtostderr": "false"} {
		if err := upstreamflag.Set(n, v); err != nil {
			t.Fatalf("upstream -%s: %v", n, err)
		}
	}
	if err := Apply(); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if v := flag.Lookup("v").Value.String(); v != "2" {
		t.Fatalf("golang/glog -v = %s, want 2", v)
	}
	if !glog.V(2) {
		t.Fatal("golang/glog V(2) disabled after upstream -v=2")
	}
	if glog.V(3) {
		t.Fatal("golang/glog V(3) enabled after upstream -v=2")
	}
	glog.V(2).Info("ours-marker-5f1c")
	upstreamglog.Info("theirs-marker-9a2e")
	Flush()
	upstreamglog.Flush()

	ours := readLogs(t, filepath.Join(root, Subdir))
	theirs := readLogs(t, root)
	if !strings.Contains(ours, "ours-marker-5f1c") {
		t.Errorf("golang/glog message missing from %s/%s", root, Subdir)
	}
	if strings.Contains(ours, "theirs-marker-9a2e") {
		t.Errorf("upstream message leaked into golang/glog's files")
	}
	if !strings.Contains(theirs, "theirs-marker-9a2e") {
		t.Errorf("upstream message missing from %s", root)
	}
	if strings.Contains(theirs, "ours-marker-5f1c") {
		t.Errorf("golang/glog message leaked into upstream's files")
	}
}

// readLogs concatenates the regular files directly inside dir.
func readLogs(t *testing.T, dir string) string {
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
			t.Fatalf("read %s: %v", e.Name(), err)
		}
		b.Write(data)
	}
	return b.String()
}

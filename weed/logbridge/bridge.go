package logbridge

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/golang/glog"
	upstreamflag "github.com/seaweedfs/seaweedfs/weed/util/fla9"
)

// Subdir is the directory, inside upstream's log directory, that holds
// golang/glog's log files.
const Subdir = "weedblock"

// copied maps each upstream logging flag to the golang/glog flag it drives.
// -logdir is handled separately (see Apply).
var copied = []struct{ upstream, ours string }{
	{"v", "v"},
	{"vmodule", "vmodule"},
	{"logtostderr", "logtostderr"},
	{"alsologtostderr", "alsologtostderr"},
	{"stderrthreshold", "stderrthreshold"},
}

const (
	upstreamLogDir = "logdir"
	ourLogDir      = "log_dir"
)

// Apply copies the parsed upstream logging flags (on the upstream flag
// package's command line) onto golang/glog's flags (on the standard flag
// package's command line). Call it once, after parsing and before the first
// golang/glog message. On error golang/glog is left logging to stderr only.
func Apply() error {
	return bridge(lookupUpstream, flag.CommandLine.Set, os.TempDir())
}

// Flush writes out golang/glog's buffered messages.
func Flush() { glog.Flush() }

// lookupUpstream returns the current value of an upstream flag.
func lookupUpstream(name string) (string, bool) {
	f := upstreamflag.Lookup(name)
	if f == nil {
		return "", false
	}
	return f.Value.String(), true
}

// bridge does Apply's work with its sources injected: get reads an
// upstream flag, set writes one of ours, tmp is the fallback log directory.
func bridge(get func(string) (string, bool), set func(name, value string) error, tmp string) error {
	for _, c := range copied {
		v, ok := get(c.upstream)
		if !ok {
			continue
		}
		if err := set(c.ours, v); err != nil {
			return fmt.Errorf("set -%s=%q from upstream -%s: %w", c.ours, v, c.upstream, err)
		}
	}
	dir, _ := get(upstreamLogDir)
	if dir == "" {
		dir = tmp
	}
	dir = filepath.Join(dir, Subdir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		// Without its own directory golang/glog would fall back to the temp
		// directory and could collide with upstream's files: stderr only.
		if serr := set("logtostderr", "true"); serr != nil {
			return fmt.Errorf("create log directory %s: %w (and fall back to stderr: %v)", dir, err, serr)
		}
		return fmt.Errorf("create log directory %s: %w (logging to stderr only)", dir, err)
	}
	if err := set(ourLogDir, dir); err != nil {
		return fmt.Errorf("set -%s=%q: %w", ourLogDir, dir, err)
	}
	return nil
}

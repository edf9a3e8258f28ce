package weedshell

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/seaweedfs/seaweedfs/weed/shell"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/weedblock/weedblock/weed/blockshell"
)

// TestInstallAppendsOnce checks the block commands land in upstream's
// command list next to upstream's own, with their help, exactly once.
func TestInstallAppendsOnce(t *testing.T) {
	Install()
	before := len(shell.Commands)
	Install()
	if got := len(shell.Commands) - before; got != 0 {
		t.Fatalf("a second Install added %d commands", got)
	}
	seen := map[string]int{}
	for _, c := range shell.Commands {
		seen[c.Name()]++
		if strings.HasPrefix(c.Name(), "block.") {
			if c.HasTag(shell.Hidden) || !strings.Contains(c.Help(), c.Name()) {
				t.Errorf("%s: hidden=%v help %q", c.Name(), c.HasTag(shell.Hidden), c.Help())
			}
		}
	}
	for _, n := range []string{"block.create", "block.list", "block.status", "block.delete", "block.promote", "block.repair", "volume.list"} {
		if seen[n] != 1 {
			t.Errorf("%s appears %d times", n, seen[n])
		}
	}
}

// blockCommand returns the installed command named name.
func blockCommand(t *testing.T, name string) interface {
	Do([]string, *shell.CommandEnv, io.Writer) error
} {
	t.Helper()
	Install()
	for _, c := range shell.Commands {
		if c.Name() == name {
			return c
		}
	}
	t.Fatalf("%s not installed", name)
	return nil
}

// TestDoThroughUpstreamEnv runs the installed commands with a real
// upstream CommandEnv whose master never answers: -h and bad flags are
// answered without it, a request gives up after -timeout with an error
// that says it found no master.
func TestDoThroughUpstreamEnv(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there
	masters, group := addr, ""
	env := shell.NewCommandEnv(&shell.ShellOptions{Masters: &masters, FilerGroup: &group,
		GrpcDialOption: grpc.WithTransportCredentials(insecure.NewCredentials())})

	var out bytes.Buffer
	if err := blockCommand(t, "block.create").Do([]string{"-h"}, env, &out); err != nil || !strings.Contains(out.String(), "-durability") {
		t.Fatalf("block.create -h: %v\n%s", err, out.String())
	}
	err = blockCommand(t, "block.create").Do([]string{"-name=x", "-size=huge"}, env, &out)
	if !errors.Is(err, blockshell.ErrUsage) {
		t.Fatalf("bad size: %v", err)
	}
	start := time.Now()
	err = blockCommand(t, "block.list").Do([]string{"-timeout=500ms"}, env, &out)
	if err == nil || !strings.Contains(err.Error(), "block.list: find the master leader") {
		t.Fatalf("no master: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("no master: gave up after %v, want about -timeout", d)
	}
}

package weedshell

import (
	"strings"
	"testing"

	"github.com/seaweedfs/seaweedfs/weed/shell"
)

// TestInstallAppendsOnce checks the block commands land in upstream's
// command list next to upstream's own, with their help, exactly once.
func TestInstallAppendsOnce(t *testing.T) {
	before := len(shell.Commands)
	Install()
	Install()
	if got := len(shell.Commands) - before; got != 4 {
		t.Fatalf("Install added %d commands, want 4", got)
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
	for _, n := range []string{"block.create", "block.list", "block.status", "block.delete", "volume.list"} {
		if seen[n] != 1 {
			t.Errorf("%s appears %d times", n, seen[n])
		}
	}
}

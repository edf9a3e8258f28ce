package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/seaweedfs/seaweedfs/weed/command"
	flag "github.com/seaweedfs/seaweedfs/weed/util/fla9"
	httpclient "github.com/seaweedfs/seaweedfs/weed/util/http"

	"github.com/weedblock/weedblock/weed/logbridge"
)

// childEnv makes the test binary act as the weed binary (global flags,
// then `master ...` or `volume ...`), so tests can run a dev cluster of
// real processes with this package's launchers and the real block plugins
// without building ./weed.
const childEnv = "WEEDBLOCK_CLUSTER_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(runChild(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func runChild(args []string) int {
	if err := flag.CommandLine.Parse(args); err != nil {
		return 2
	}
	if err := logbridge.Apply(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	if err := Install(command.Commands, BlockHooks()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	rest := flag.Args()
	if len(rest) == 0 {
		fmt.Fprintln(os.Stderr, "child: no command")
		return 2
	}
	for _, c := range command.Commands {
		if c.Name() != rest[0] {
			continue
		}
		httpclient.InitGlobalHttpClient()
		if err := c.Flag.Parse(rest[1:]); err != nil {
			return 2
		}
		if !c.Run(c, c.Flag.Args()) {
			return 1
		}
		return 0
	}
	fmt.Fprintf(os.Stderr, "child: unknown command %q\n", rest[0])
	return 2
}

// childEnvs is the environment of a child acting as weed. A race-built
// child writes its race reports to files under dir (exit status kept) so
// checkChildRaces can tell ours from upstream's own.
func childEnvs(dir string) []string {
	return []string{childEnv + "=1", "GORACE=exitcode=0 log_path=" + filepath.Join(dir, "race")}
}

// checkChildRaces fails the test for every race report of the children
// whose racing accesses happen in weedblock code. Races between accesses
// inside upstream SeaweedFS or its libraries (goraft reads its leader name
// and commit index unlocked, for one; our launchers call the same
// constructors upstream's launchers call) are not ours to fix; they are
// logged.
func checkChildRaces(t *testing.T, dir string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "race.*"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Error(err)
			continue
		}
		for _, report := range strings.Split(string(b), "WARNING: DATA RACE")[1:] {
			if racyFrameIsOurs(report) {
				t.Errorf("data race in weedblock code in a child (%s):\n%s", f, report)
			} else {
				first, _, _ := strings.Cut(strings.TrimSpace(report), "\n\n")
				t.Logf("data race inside upstream code (%s):\n%s", f, first)
			}
		}
	}
}

// racyFrameIsOurs reports whether the innermost frame of either racing
// access of a race report is weedblock code.
func racyFrameIsOurs(report string) bool {
	lines := strings.Split(report, "\n")
	for i, l := range lines {
		l = strings.TrimSpace(l)
		access := strings.HasPrefix(l, "Write at") || strings.HasPrefix(l, "Read at") ||
			strings.HasPrefix(l, "Previous write at") || strings.HasPrefix(l, "Previous read at")
		if access && i+1 < len(lines) && strings.Contains(lines[i+1], "github.com/weedblock/weedblock/") {
			return true
		}
	}
	return false
}

func TestRacyFrameIsOurs(t *testing.T) {
	upstream := `
Write at 0x00c by goroutine 146:
  github.com/seaweedfs/raft.(*server).setState()
      /x/server.go:307

Previous read at 0x00c by main goroutine:
  github.com/seaweedfs/raft.(*server).Leader()
      /x/server.go:245
  github.com/weedblock/weedblock/weed/cluster.StartMaster()
`
	if racyFrameIsOurs(upstream) {
		t.Error("a race between two goraft accesses counted as ours")
	}
	ours := strings.Replace(upstream, "github.com/seaweedfs/raft.(*server).Leader()", "github.com/weedblock/weedblock/weed/cluster.(*x).y()", 1)
	if !racyFrameIsOurs(ours) {
		t.Error("a race with a weedblock access not counted as ours")
	}
}

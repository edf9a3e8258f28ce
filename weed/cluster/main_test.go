package cluster

import (
	"fmt"
	"os"
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

package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/seaweedfs/seaweedfs/weed/command"
	upstreamglog "github.com/seaweedfs/seaweedfs/weed/glog"
	"github.com/seaweedfs/seaweedfs/weed/util/grace"

	"github.com/weedblock/weedblock/weed/blockcmd"
	"github.com/weedblock/weedblock/weed/cluster"
	"github.com/weedblock/weedblock/weed/logbridge"
)

// blockExtras are the `weed block` subcommands that need upstream.
var blockExtras = []blockcmd.Subcommand{{Name: "dev", Short: cluster.DevUsage, Run: cluster.Dev}}

// blockStopTimeout bounds how long a signal waits for `weed block` to stop
// (servers closed, volume flushed and closed) before the process exits 1.
const blockStopTimeout = 2 * time.Minute

// blockCommand adapts weedblock's `weed block` (package blockcmd, which
// does not import upstream) to upstream's command framework.
//
// Signals: upstream's grace package catches SIGINT/SIGTERM for the whole
// process, runs its interrupt hooks and then calls os.Exit(0). So the
// block command registers a hook that cancels the subcommand and waits for
// it to finish its orderly stop; a failed stop exits with its status from
// inside the hook.
//
// Errors are printed by blockcmd; the exit status travels through
// command.SetCommandExitStatus so upstream's usage dump is not printed
// for them.
func blockCommand() *command.Command {
	return &command.Command{
		UsageLine: blockcmd.UsageLine,
		Short:     blockcmd.Short,
		Long:      blockcmd.Long(blockExtras...),
		Run: func(_ *command.Command, args []string) bool {
			status := runBlock(args)
			if status != 0 {
				command.SetCommandExitStatus(status)
			}
			return true
		},
	}
}

func runBlock(args []string) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	var status int
	grace.OnInterrupt(func() {
		cancel()
		code := exitFailure
		select {
		case <-done:
			code = status // written before done was closed
		case <-time.After(blockStopTimeout):
			fmt.Fprintf(os.Stderr, "weed block: did not stop within %v\n", blockStopTimeout)
		}
		logbridge.Flush()
		upstreamglog.Flush()
		if code != 0 {
			os.Exit(code)
		}
	})
	status = blockcmd.Main(ctx, args, os.Stdout, os.Stderr, blockExtras...)
	close(done)
	return status
}

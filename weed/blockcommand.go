package main

import (
	"github.com/seaweedfs/seaweedfs/weed/command"

	"github.com/weedblock/weedblock/weed/blockcmd"
)

// blockCommand adapts weedblock's `weed block` (package blockcmd, which
// does not import upstream) to upstream's command framework. Errors are
// printed by blockcmd; the exit status travels through
// command.SetCommandExitStatus so upstream's usage dump is not printed
// for them.
func blockCommand() *command.Command {
	return &command.Command{
		UsageLine: blockcmd.UsageLine,
		Short:     blockcmd.Short,
		Long:      blockcmd.Long(),
		Run: func(_ *command.Command, args []string) bool {
			if status := blockcmd.Run(args); status != 0 {
				command.SetCommandExitStatus(status)
			}
			return true
		},
	}
}

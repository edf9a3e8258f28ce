package blockcmd

import (
	"github.com/seaweedfs/seaweedfs/weed/command"
)

// Command returns the `weed block` command for the weed binary's command
// list.
func Command() *command.Command {
	c := &command.Command{
		UsageLine: "block <subcommand> [flags]",
		Short:     "serve and manage block volumes (weedblock)",
		Long:      "block runs weedblock's block-volume subcommands:\n\n  serve   serve a local volume file over NBD and iSCSI\n\nRun 'weed block <subcommand> -h' for a subcommand's flags.",
	}
	c.Run = func(_ *command.Command, args []string) bool { return true }
	return c
}

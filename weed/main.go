package main

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/seaweedfs/seaweedfs/weed/command"
	upstreamglog "github.com/seaweedfs/seaweedfs/weed/glog"
	weedserver "github.com/seaweedfs/seaweedfs/weed/server"
	"github.com/seaweedfs/seaweedfs/weed/util"
	flag "github.com/seaweedfs/seaweedfs/weed/util/fla9"
	httpclient "github.com/seaweedfs/seaweedfs/weed/util/http"

	"github.com/weedblock/weedblock/weed/blockshell/weedshell"
	"github.com/weedblock/weedblock/weed/cluster"
	"github.com/weedblock/weedblock/weed/logbridge"
)

// Log rotation limits of the upstream logger, as the upstream binary sets
// them before parsing flags (-log_max_size_mb / -log_max_files override).
const (
	upstreamLogMaxSize   = 10 << 20
	upstreamLogMaxFiles  = 5
	exitOK               = 0
	exitFailure          = 1
	exitUsage            = 2
	configDirFlagName    = "config_dir"
	configDirFlagUsage   = "directory with toml configuration files"
	unknownCommandFormat = "weed: unknown subcommand %q\nRun 'weed help' for usage.\n"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

// run is the whole program; it returns the process exit status.
func run(args []string) int {
	upstreamglog.MaxSize = upstreamLogMaxSize
	upstreamglog.MaxFileCount = upstreamLogMaxFiles
	weedserver.StaticFS = staticFS()
	flag.Var(&util.ConfigurationFileDirectory, configDirFlagName, configDirFlagUsage)

	cmds := commandList()
	d := &dispatcher{commands: cmds, stdout: os.Stdout, stderr: os.Stderr}
	flag.Usage = func() { d.usage() }

	if command.AutocompleteMain(cmds) {
		return exitOK
	}

	// The upstream flag package exits the process on a bad global flag,
	// as the upstream binary does.
	if err := flag.CommandLine.Parse(args); err != nil {
		return exitUsage
	}
	if err := logbridge.Apply(); err != nil {
		fmt.Fprintf(os.Stderr, "weed: logging: %v\n", err)
	}
	defer upstreamglog.Flush()
	defer logbridge.Flush()

	return d.dispatch(flag.Args())
}

// commandList is upstream's command list followed by weedblock's commands;
// master, volume and server run weedblock's launchers (package cluster).
func commandList() []*command.Command {
	cmds := slices.Clone(command.Commands)
	weedshell.Install() // block.* commands in `weed shell`
	if err := cluster.Install(cmds, cluster.BlockHooks()); err != nil {
		fmt.Fprintf(os.Stderr, "weed: block launchers: %v\n", err)
	}
	return append(cmds, blockCommand())
}

// dispatch runs the subcommand named by args[0] and returns the exit status.
func (d *dispatcher) dispatch(args []string) int {
	if len(args) < 1 {
		return d.usage()
	}
	if args[0] == "help" {
		return d.help(args[1:])
	}
	cmd := d.find(args[0])
	if cmd == nil {
		fmt.Fprintf(d.stderr, unknownCommandFormat, args[0])
		return exitUsage
	}
	if cmd.Name() != command.GetFuseCommandName() {
		httpclient.InitGlobalHttpClient()
	}
	cmd.Flag.Usage = func() { cmd.Usage() }
	if err := cmd.Flag.Parse(args[1:]); err != nil {
		return exitUsage
	}
	status := exitOK
	if !cmd.Run(cmd, cmd.Flag.Args()) {
		fmt.Fprintf(d.stderr, "\nExample: weed %s\nDescription:\n  %s\n", cmd.UsageLine, strings.TrimSpace(cmd.Long))
		d.commandDefaults(cmd)
		status = exitFailure
	}
	return max(status, command.CommandExitStatus())
}

package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/seaweedfs/seaweedfs/weed/command"
	flag "github.com/seaweedfs/seaweedfs/weed/util/fla9"
)

// dispatcher finds and runs subcommands and prints help about them.
type dispatcher struct {
	commands []*command.Command
	stdout   io.Writer
	stderr   io.Writer
}

// find returns the runnable command called name, or nil.
func (d *dispatcher) find(name string) *command.Command {
	for _, c := range d.commands {
		if c.Name() == name && c.Runnable() {
			return c
		}
	}
	return nil
}

// listCommands writes the one-line summary of every runnable command.
func (d *dispatcher) listCommands(w io.Writer) {
	fmt.Fprintf(w, "\nSeaweedFS with weedblock block volumes.\n\nUsage:\n\n\tweed command [arguments]\n\nThe commands are:\n\n")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range d.commands {
		if c.Runnable() {
			fmt.Fprintf(tw, "    %s\t%s\n", c.Name(), c.Short)
		}
	}
	tw.Flush()
	fmt.Fprintf(w, "\nUse \"weed help [command]\" for more information about a command.\n\n")
}

// usage prints the command list and the global (logging) flags to stderr;
// it is what a bare `weed` or a bad global flag shows.
func (d *dispatcher) usage() int {
	d.listCommands(d.stderr)
	fmt.Fprintf(d.stderr, "For logging, use \"weed [logging_options] [command]\". The logging options are:\n")
	flag.CommandLine.SetOutput(d.stderr)
	flag.PrintDefaults()
	return exitUsage
}

// help implements `weed help [command]`.
func (d *dispatcher) help(args []string) int {
	switch len(args) {
	case 0:
		d.listCommands(d.stdout)
		return exitOK
	case 1:
	default:
		fmt.Fprintf(d.stderr, "usage: weed help command\n\nToo many arguments given.\n")
		return exitUsage
	}
	for _, c := range d.commands {
		if c.Name() != args[0] {
			continue
		}
		if c.Runnable() {
			fmt.Fprintf(d.stdout, "Usage: weed %s\n", c.UsageLine)
		}
		fmt.Fprintf(d.stdout, "\n  %s\n", strings.TrimSpace(c.Long))
		if c.Runnable() {
			d.commandDefaults(c)
		}
		return exitOK
	}
	fmt.Fprintf(d.stderr, "Unknown help topic %q. Run 'weed help'.\n", args[0])
	return exitUsage
}

// commandDefaults prints a command's flags with their defaults to stderr.
func (d *dispatcher) commandDefaults(c *command.Command) {
	fmt.Fprintf(d.stderr, "Default Parameters:\n")
	c.Flag.SetOutput(d.stderr)
	c.Flag.PrintDefaults()
}

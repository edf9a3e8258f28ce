package blockcmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
)

// Exit statuses of a block subcommand.
const (
	exitFailure = 1 // the subcommand ran and failed
	exitUsage   = 2 // bad command line
)

// usageError is a command-line error: Main prints it and exits 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// subcommand is one `weed block <name>` subcommand.
type subcommand struct {
	short string
	// run executes the subcommand with its arguments; it returns when ctx is
	// cancelled (SIGINT/SIGTERM) or the work is done.
	run func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

// Subcommand is a `weed block` subcommand implemented outside this package
// (the weed main adds `dev` from package cluster, which imports upstream).
type Subcommand struct {
	Name, Short string
	Run         func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func subcommands(extra ...Subcommand) map[string]subcommand {
	subs := map[string]subcommand{
		"serve": {short: "serve a local volume file over NBD and iSCSI", run: runServe},
	}
	for _, e := range extra {
		subs[e.Name] = subcommand{short: e.Short, run: e.Run}
	}
	return subs
}

// Short is the one-line description of `weed block`.
const Short = "serve and manage block volumes (weedblock)"

// UsageLine is the usage line of `weed block`.
const UsageLine = "block <subcommand> [flags]"

// Long describes `weed block` and lists its subcommands.
func Long(extra ...Subcommand) string {
	var b strings.Builder
	b.WriteString("block runs weedblock's block-volume subcommands:\n\n")
	subs := subcommands(extra...)
	names := make([]string, 0, len(subs))
	for n := range subs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&b, "    weed block %-8s %s\n", n, subs[n].short)
	}
	b.WriteString("\n  Run 'weed block <subcommand> -h' for a subcommand's flags.")
	return b.String()
}

// Main runs `weed block args...` and returns the exit status. Errors are
// printed to stderr as one line naming the subcommand. A long-running
// subcommand (serve) runs until ctx is cancelled: the weed binary cancels it
// on SIGINT/SIGTERM, then waits for Main to return before the process exits.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer, extra ...Subcommand) int {
	subs := subcommands(extra...)
	if len(args) == 0 {
		fmt.Fprintf(stderr, "weed block: missing subcommand\n%s\n", Long(extra...))
		return exitUsage
	}
	sub, ok := subs[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "weed block: unknown subcommand %q\n%s\n", args[0], Long(extra...))
		return exitUsage
	}
	err := sub.run(ctx, args[1:], stdout, stderr)
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "weed block %s: %v\nRun 'weed block %s -h' for usage.\n", args[0], err, args[0])
		return exitUsage
	default:
		fmt.Fprintf(stderr, "weed block %s: %v\n", args[0], err)
		return exitFailure
	}
}

package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/seaweedfs/seaweedfs/weed/command"
)

func newTestDispatcher(cmds ...*command.Command) (*dispatcher, *bytes.Buffer, *bytes.Buffer) {
	var out, errb bytes.Buffer
	return &dispatcher{commands: cmds, stdout: &out, stderr: &errb}, &out, &errb
}

func TestCommandListKeepsUpstreamAndAddsBlock(t *testing.T) {
	cmds := commandList()
	if len(cmds) != len(command.Commands)+1 {
		t.Fatalf("%d commands, want upstream's %d + block", len(cmds), len(command.Commands))
	}
	for i, c := range command.Commands {
		if cmds[i] != c {
			t.Fatalf("command %d is %q, want upstream's %q", i, cmds[i].Name(), c.Name())
		}
	}
	if last := cmds[len(cmds)-1]; last.Name() != "block" || !last.Runnable() {
		t.Fatalf("last command %q, want runnable block", last.Name())
	}
	seen := map[string]bool{}
	for _, c := range cmds {
		if seen[c.Name()] {
			t.Fatalf("command %q appears twice", c.Name())
		}
		seen[c.Name()] = true
	}
	for _, want := range []string{"master", "volume", "shell", "version", "server", "filer"} {
		if !seen[want] {
			t.Errorf("upstream command %q missing", want)
		}
	}
}

func TestDispatchRunsCommandWithItsFlags(t *testing.T) {
	var gotArgs []string
	var gotN int
	c := &command.Command{UsageLine: "frob [-n=N] args", Short: "frobs", Long: "frob frobs."}
	n := c.Flag.Int("n", 1, "how many")
	c.Run = func(_ *command.Command, args []string) bool { gotArgs, gotN = args, *n; return true }
	d, _, _ := newTestDispatcher(c)
	if st := d.dispatch([]string{"frob", "-n=3", "a", "b"}); st != exitOK {
		t.Fatalf("status %d", st)
	}
	if gotN != 3 || strings.Join(gotArgs, ",") != "a,b" {
		t.Fatalf("ran with n=%d args=%q", gotN, gotArgs)
	}
}

func TestDispatchFailingCommandExits1WithUsage(t *testing.T) {
	c := &command.Command{UsageLine: "bad", Short: "fails", Long: "bad always fails.",
		Run: func(*command.Command, []string) bool { return false }}
	d, _, errb := newTestDispatcher(c)
	if st := d.dispatch([]string{"bad"}); st != exitFailure {
		t.Fatalf("status %d, want %d", st, exitFailure)
	}
	if !strings.Contains(errb.String(), "bad always fails.") || !strings.Contains(errb.String(), "Default Parameters:") {
		t.Fatalf("stderr %q lacks usage", errb.String())
	}
}

func TestDispatchUnknownAndHelp(t *testing.T) {
	c := &command.Command{UsageLine: "frob", Short: "frobs things", Long: "frob frobs things well.",
		Run: func(*command.Command, []string) bool { return true }}
	doc := &command.Command{UsageLine: "topic", Short: "a topic", Long: "only words."}
	d, out, errb := newTestDispatcher(c, doc)

	if st := d.dispatch([]string{"nope"}); st != exitUsage || !strings.Contains(errb.String(), `unknown subcommand "nope"`) {
		t.Fatalf("unknown: status %d stderr %q", st, errb.String())
	}
	if st := d.dispatch([]string{"topic"}); st != exitUsage {
		t.Fatalf("a documentation topic ran as a command: status %d", st)
	}
	out.Reset()
	if st := d.dispatch([]string{"help"}); st != exitOK || !strings.Contains(out.String(), "frob") || !strings.Contains(out.String(), "frobs things") {
		t.Fatalf("help: status %d out %q", st, out.String())
	}
	if strings.Contains(out.String(), "a topic") {
		t.Fatalf("help lists a non-runnable topic: %q", out.String())
	}
	out.Reset()
	if st := d.dispatch([]string{"help", "frob"}); st != exitOK || !strings.Contains(out.String(), "Usage: weed frob") || !strings.Contains(out.String(), "frob frobs things well.") {
		t.Fatalf("help frob: status %d out %q", st, out.String())
	}
	out.Reset()
	if st := d.dispatch([]string{"help", "topic"}); st != exitOK || !strings.Contains(out.String(), "only words.") || strings.Contains(out.String(), "Usage:") {
		t.Fatalf("help topic: status %d out %q", st, out.String())
	}
	if st := d.dispatch([]string{"help", "what"}); st != exitUsage {
		t.Fatalf("help on unknown topic: status %d", st)
	}
	if st := d.dispatch([]string{"help", "a", "b"}); st != exitUsage {
		t.Fatalf("help with two topics: status %d", st)
	}
	errb.Reset()
	if st := d.dispatch(nil); st != exitUsage || !strings.Contains(errb.String(), "frob") {
		t.Fatalf("no command: status %d stderr %q", st, errb.String())
	}
}

func TestStaticFSServesOurAssets(t *testing.T) {
	f, err := staticFS().Open("README.txt")
	if err != nil {
		t.Fatalf("open asset: %v", err)
	}
	f.Close()
}

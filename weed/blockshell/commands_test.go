package blockshell

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

func TestParseCreateDefaultsAndFlags(t *testing.T) {
	req, help, err := ParseCreate([]string{"-name=db1", "-size=20GiB"}, &bytes.Buffer{})
	if err != nil || help {
		t.Fatalf("ParseCreate: help=%v err=%v", help, err)
	}
	s := req.Spec
	if s.Name != "db1" || s.SizeBytes != 20<<30 || s.BlockSize != 4096 || s.ReplicationFactor != 1 ||
		s.Durability != blockpb.Durability_DURABILITY_SYNC || s.WalSizeBytes != 0 || req.JSON || req.Timeout != DefaultTimeout {
		t.Fatalf("defaults: %+v json=%v timeout=%v", s, req.JSON, req.Timeout)
	}
	req, _, err = ParseCreate([]string{"-name=v.2-x", "-size=1G", "-rf=3", "-durability=quorum",
		"-blockSize=512", "-walSize=8MiB", "-json", "-timeout=5s"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	s = req.Spec
	if s.Name != "v.2-x" || s.SizeBytes != 1<<30 || s.BlockSize != 512 || s.ReplicationFactor != 3 ||
		s.Durability != blockpb.Durability_DURABILITY_QUORUM || s.WalSizeBytes != 8<<20 || !req.JSON || req.Timeout != 5*time.Second {
		t.Fatalf("flags: %+v json=%v timeout=%v", s, req.JSON, req.Timeout)
	}
	req, _, _ = ParseCreate([]string{"-name=a", "-size=8M", "-durability=ASYNC", "-rf=2"}, &bytes.Buffer{})
	if req.Spec.GetDurability() != blockpb.Durability_DURABILITY_ASYNC || req.Spec.GetReplicationFactor() != 2 {
		t.Fatalf("async rf=2: %+v", req.Spec)
	}
}

func TestParseCreateRejects(t *testing.T) {
	cases := []struct {
		args []string
		msg  string
	}{
		{[]string{"-size=1G"}, "-name is required"},
		{[]string{"-name=db1"}, "-size is required"},
		{[]string{"-name=Db1", "-size=1G"}, `bad volume name "Db1"`},
		{[]string{"-name=db_1", "-size=1G"}, `bad volume name "db_1"`},
		{[]string{"-name=-db", "-size=1G"}, "bad volume name"},
		{[]string{"-name=" + strings.Repeat("a", 64), "-size=1G"}, "bad volume name"},
		{[]string{"-name=db1", "-size=lots"}, "not a size"},
		{[]string{"-name=db1", "-size=0"}, "must be more than 0"},
		{[]string{"-name=db1", "-size=1000"}, "not a multiple of the block size 4096"},
		{[]string{"-name=db1", "-size=10GB"}, "not a multiple of the block size"},
		{[]string{"-name=db1", "-size=1G", "-blockSize=1000"}, "power of two"},
		{[]string{"-name=db1", "-size=1G", "-blockSize=256"}, "power of two"},
		{[]string{"-name=db1", "-size=1G", "-rf=0"}, "-rf=0"},
		{[]string{"-name=db1", "-size=1G", "-rf=4"}, "-rf=4"},
		{[]string{"-name=db1", "-size=1G", "-durability=fast"}, "want sync, quorum or async"},
		{[]string{"-name=db1", "-size=1G", "-durability=quorum"}, "needs -rf=3"},
		{[]string{"-name=db1", "-size=1G", "-durability=quorum", "-rf=2"}, "needs -rf=3"},
		{[]string{"-name=db1", "-size=1G", "-walSize=x"}, "-walSize"},
		{[]string{"-name=db1", "-size=1G", "-frobnicate"}, "frobnicate"},
		{[]string{"-name=db1", "-size=1G", "extra"}, "unexpected arguments"},
	}
	for _, tc := range cases {
		_, help, err := ParseCreate(tc.args, &bytes.Buffer{})
		if err == nil || help || !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), tc.msg) ||
			!strings.HasPrefix(err.Error(), "block.create: ") {
			t.Errorf("ParseCreate(%q) = help %v, %v; want a usage error mentioning %q", tc.args, help, err, tc.msg)
		}
	}
}

func TestParseHelp(t *testing.T) {
	var out bytes.Buffer
	_, help, err := ParseCreate([]string{"-h"}, &out)
	if err != nil || !help {
		t.Fatalf("-h: help=%v err=%v", help, err)
	}
	if err := containsAll(out.String(), "block.create", "-size", "-rf", "-durability", "-json", "20GiB"); err != nil {
		t.Fatalf("usage: %v\n%s", err, out.String())
	}
	for _, p := range []func([]string, *bytes.Buffer) (bool, error){
		func(a []string, b *bytes.Buffer) (bool, error) { _, h, e := ParseList(a, b); return h, e },
		func(a []string, b *bytes.Buffer) (bool, error) { _, h, e := ParseStatus(a, b); return h, e },
		func(a []string, b *bytes.Buffer) (bool, error) { _, h, e := ParseDelete(a, b); return h, e },
	} {
		out.Reset()
		if help, err := p([]string{"-help"}, &out); !help || err != nil || !strings.Contains(out.String(), "-json") {
			t.Fatalf("-help: help=%v err=%v\n%s", help, err, out.String())
		}
	}
}

func TestParseNamed(t *testing.T) {
	r, _, err := ParseStatus([]string{"-name=db1", "-json"}, &bytes.Buffer{})
	if err != nil || r.Name != "db1" || !r.JSON {
		t.Fatalf("status -name: %+v %v", r, err)
	}
	r, _, err = ParseStatus([]string{"db2"}, &bytes.Buffer{})
	if err != nil || r.Name != "db2" {
		t.Fatalf("status positional: %+v %v", r, err)
	}
	r, _, err = ParseDelete([]string{"-name=db1", "-force"}, &bytes.Buffer{})
	if err != nil || r.Name != "db1" || !r.Force {
		t.Fatalf("delete -force: %+v %v", r, err)
	}
	for _, args := range [][]string{{}, {"-name=db1", "db2"}, {"a", "b"}, {"-name=DB"}, {"-force", "-name=x"}} {
		if _, _, err := ParseStatus(args, &bytes.Buffer{}); !errors.Is(err, ErrUsage) {
			t.Errorf("ParseStatus(%q): %v, want a usage error", args, err)
		}
	}
	if _, _, err := ParseDelete([]string{}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "-name is required") {
		t.Fatalf("delete without name: %v", err)
	}
	if _, _, err := ParseList([]string{"x"}, &bytes.Buffer{}); !errors.Is(err, ErrUsage) {
		t.Fatalf("list with an argument: %v", err)
	}
}

func TestCommandsHaveHelp(t *testing.T) {
	names := map[string]bool{}
	for _, c := range Commands() {
		names[c.Name] = true
		first, _, _ := strings.Cut(c.Help, "\n")
		if !strings.HasPrefix(c.Name, "block.") || !strings.Contains(first, c.Name) {
			t.Errorf("command %q: summary %q", c.Name, first)
		}
	}
	for _, n := range []string{"block.create", "block.list", "block.status", "block.delete", "block.promote", "block.repair"} {
		if !names[n] {
			t.Errorf("missing %s", n)
		}
	}
}

func TestParseRepair(t *testing.T) {
	r, help, err := ParseRepair([]string{"-name=db1"}, &bytes.Buffer{})
	if err != nil || help || r.Name != "db1" || r.Replica != "" || r.Rebuild || r.JSON || r.Timeout != DefaultTimeout {
		t.Fatalf("defaults: %+v %v %v", r, help, err)
	}
	r, _, err = ParseRepair([]string{"-name=db1", "-replica= 10.0.0.2:8080 ", "-rebuild", "-json", "-timeout=3s"}, &bytes.Buffer{})
	if err != nil || r.Replica != "10.0.0.2:8080" || !r.Rebuild || !r.JSON || r.Timeout != 3*time.Second {
		t.Fatalf("flags: %+v %v", r, err)
	}
	var out bytes.Buffer
	if _, help, err := ParseRepair([]string{"-h"}, &out); err != nil || !help || !containsOK(out.String(), "-replica", "-rebuild", "block.repair") {
		t.Fatalf("-h: %v %v\n%s", help, err, out.String())
	}
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{nil, "-name is required"},
		{[]string{"-name=DB"}, "bad volume name"},
		{[]string{"-name=db1", "extra"}, "unexpected arguments"},
		{[]string{"-name=db1", "-rebuild=maybe"}, "invalid boolean"},
	} {
		_, _, err := ParseRepair(c.args, &bytes.Buffer{})
		if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), c.msg) || !strings.Contains(err.Error(), "block.repair") {
			t.Errorf("ParseRepair(%q): %v, want a usage error with %q", c.args, err, c.msg)
		}
	}
}

func containsAll(s string, subs ...string) error {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return errors.New("missing " + sub)
		}
	}
	return nil
}

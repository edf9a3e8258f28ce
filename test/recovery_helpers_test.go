package test

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// recoveryView is one blockpb.RecoveryProgress as a volume server's
// /block/status prints it (protojson: proto names, 64-bit integers quoted).
type recoveryView struct {
	Phase         string `json:"phase"`
	BytesDone     uint64 `json:"bytes_done,string"`
	BytesTotal    uint64 `json:"bytes_total,string"`
	ServerID      string `json:"server_id"`
	Plan          string `json:"plan"`
	TargetLSN     uint64 `json:"target_lsn,string"`
	AchievedLSN   uint64 `json:"achieved_lsn,string"`
	Attempt       uint64 `json:"attempt,string"`
	LastOutcome   string `json:"last_outcome"`
	ForcedRebuild bool   `json:"forced_rebuild"`
	Rebuilds      uint64 `json:"rebuilds,string"`
	CatchUps      uint64 `json:"catch_ups,string"`
}

func (r recoveryView) String() string {
	return fmt.Sprintf("{copy %s phase %q plan %q outcome %q attempt %d catch-ups %d rebuilds %d forced %v target %d achieved %d bytes %d/%d}",
		r.ServerID, r.Phase, r.Plan, r.LastOutcome, r.Attempt, r.CatchUps, r.Rebuilds, r.ForcedRebuild,
		r.TargetLSN, r.AchievedLSN, r.BytesDone, r.BytesTotal)
}

// localReport is one blockpb.VolumeReport from a volume server's own
// /block/status (its local copy of the volume).
type localReport struct {
	Name       string         `json:"name"`
	Epoch      uint64         `json:"epoch,string"`
	Role       string         `json:"role"`
	HeadLSN    uint64         `json:"head_lsn,string"`
	DurableLSN uint64         `json:"durable_lsn,string"`
	Untrusted  bool           `json:"untrusted"`
	Healthy    bool           `json:"healthy"`
	Fenced     bool           `json:"fenced"`
	Recovery   *recoveryView  `json:"recovery"`
	Recoveries []recoveryView `json:"recoveries"`
}

// errNoCopy: the volume server has no local copy of the volume.
var errNoCopy = errors.New("no local copy")

// localStatus reads vs's own report of its copy of name.
func localStatus(vs *volumeServer, name string) (localReport, error) {
	var doc struct {
		Volumes []localReport `json:"volumes"`
	}
	err := getJSON("http://"+vs.http+"/block/status?name="+url.QueryEscape(name), &doc)
	if err != nil {
		if strings.Contains(err.Error(), "404") {
			return localReport{}, fmt.Errorf("%s: %w: %v", vs.name, errNoCopy, err)
		}
		return localReport{}, err
	}
	if len(doc.Volumes) != 1 || doc.Volumes[0].Name != name {
		return localReport{}, fmt.Errorf("%s /block/status?name=%s: %d volumes", vs.name, name, len(doc.Volumes))
	}
	return doc.Volumes[0], nil
}

// recoveryOf is the primary's entry for copy id in rep.Recoveries.
func (rep localReport) recoveryOf(id string) (recoveryView, bool) {
	for _, r := range rep.Recoveries {
		if r.ServerID == id {
			return r, true
		}
	}
	return recoveryView{}, false
}

// recWatch samples, every 200 ms, the recovery entry a primary reports
// for one copy, so a test sees every phase and outcome even when the entry
// is short-lived (a recovery entry may be dropped once the copy is a
// member again).
type recWatch struct {
	primary  *volumeServer
	name, id string
	stop     chan struct{}
	done     chan struct{}

	mu   sync.Mutex
	seen []recoveryView // distinct entries, in order
	last error          // the last failure to read the report
}

func watchRecovery(t *testing.T, primary *volumeServer, name, id string) *recWatch {
	w := &recWatch{primary: primary, name: name, id: id, stop: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	t.Cleanup(w.close)
	return w
}

func (w *recWatch) run() {
	defer close(w.done)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		rep, err := localStatus(w.primary, w.name)
		w.mu.Lock()
		w.last = err
		if err == nil {
			if r, ok := rep.recoveryOf(w.id); ok && (len(w.seen) == 0 || w.seen[len(w.seen)-1] != r) {
				w.seen = append(w.seen, r)
			}
		}
		w.mu.Unlock()
		select {
		case <-w.stop:
			return
		case <-tick.C:
		}
	}
}

// close stops the sampling; idempotent.
func (w *recWatch) close() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

func (w *recWatch) snapshot() ([]recoveryView, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]recoveryView(nil), w.seen...), w.last
}

// waitFor waits until cond accepts the entries seen so far (bounded).
func (w *recWatch) waitFor(t *testing.T, timeout time.Duration, what string, cond func([]recoveryView) error) []recoveryView {
	t.Helper()
	var seen []recoveryView
	waitFor(t, timeout, w.primary.name+" reports "+what+" of "+w.id, func() error {
		var last error
		seen, last = w.snapshot()
		if err := cond(seen); err != nil {
			if last != nil {
				return fmt.Errorf("%v (last report: %v); seen %v", err, last, seen)
			}
			return fmt.Errorf("%v; seen %v", err, seen)
		}
		return nil
	})
	return seen
}

// finished returns the entries that report a finished attempt in sync.
func finished(seen []recoveryView) []recoveryView {
	var out []recoveryView
	for _, r := range seen {
		if inSync(r) == nil && r.Phase != "plan" {
			out = append(out, r)
		}
	}
	return out
}

// inSync accepts a finished recovery whose last outcome is in-sync.
func inSync(r recoveryView) error {
	if !strings.HasPrefix(r.LastOutcome, "in-sync") {
		return fmt.Errorf("last outcome %q, want in-sync", r.LastOutcome)
	}
	return nil
}

// epochView is one entry of block.status -json's history.
type epochView struct {
	Epoch             uint64 `json:"epoch"`
	Primary           string `json:"primary"`
	Reason            string `json:"reason"`
	MayHaveLostWrites bool   `json:"may_have_lost_writes"`
}

// historyDoc is the part of block.status -json about epochs, failover
// and recoveries.
type historyDoc struct {
	State           string      `json:"state"`
	Epoch           uint64      `json:"epoch"`
	Primary         string      `json:"primary"`
	FailoverBlocked string      `json:"failover_blocked"`
	History         []epochView `json:"history"`
	Recoveries      []struct {
		ServerID    string `json:"server_id"`
		Phase       string `json:"phase"`
		Plan        string `json:"plan"`
		LastOutcome string `json:"last_outcome"`
		Rebuilds    uint64 `json:"rebuilds"`
		CatchUps    uint64 `json:"catch_ups"`
	} `json:"recoveries"`
}

// waitShellRecovery waits until block.status -json (the operator's view,
// from the primary's heartbeat) lists a recovery of copy id that finished
// in sync with at least catchUps catch-ups and rebuilds rebuilds, and no
// more than maxRebuilds rebuilds.
func (c *testCluster) waitShellRecovery(name, id string, catchUps, rebuilds, maxRebuilds uint64) {
	c.t.Helper()
	waitFor(c.t, 20*time.Second, "block.status -json shows the recovery of "+id, func() error {
		d, err := c.history(name)
		if err != nil {
			return err
		}
		for _, r := range d.Recoveries {
			if r.ServerID != id {
				continue
			}
			if r.Rebuilds > maxRebuilds {
				c.t.Fatalf("block.status -json: %d rebuilds of %s, want at most %d: %+v", r.Rebuilds, id, maxRebuilds, r)
			}
			if !strings.HasPrefix(r.LastOutcome, "in-sync") || r.CatchUps < catchUps || r.Rebuilds < rebuilds {
				return fmt.Errorf("recovery of %s: %+v", id, r)
			}
			return nil
		}
		return fmt.Errorf("no recovery of %s in %+v", id, d.Recoveries)
	})
}

func (c *testCluster) history(name string) (historyDoc, error) {
	r := c.shell("block.status -json -name=" + name)
	var d historyDoc
	if r.code != 0 {
		return d, fmt.Errorf("block.status %s: exit %d: %s", name, r.code, strings.TrimSpace(r.stderr))
	}
	if err := json.Unmarshal([]byte(r.stdout), &d); err != nil {
		return d, fmt.Errorf("block.status -json %s: %v\n%s", name, err, r.stdout)
	}
	return d, nil
}

// historyAfter returns the first epoch after epoch whose reason contains
// every one of subs.
func (d historyDoc) find(after uint64, subs ...string) (epochView, bool) {
	for _, h := range d.History {
		if h.Epoch > after && contains(h.Reason, subs...) == nil {
			return h, true
		}
	}
	return epochView{}, false
}

func (d historyDoc) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "state %s epoch %d primary %s", d.State, d.Epoch, d.Primary)
	if d.FailoverBlocked != "" {
		fmt.Fprintf(&b, " (failover blocked: %s)", d.FailoverBlocked)
	}
	for _, h := range d.History {
		fmt.Fprintf(&b, "\n  epoch %d primary %s lossy=%v: %s", h.Epoch, h.Primary, h.MayHaveLostWrites, h.Reason)
	}
	return b.String()
}

// checkLeftAndRejoined checks that the volume's history, after epoch
// from, has an epoch that dropped id (its reason names id and one of
// leftWords) and a later one that made it a member again ("id caught up").
func (c *testCluster) checkLeftAndRejoined(name, id string, from uint64, leftWords ...string) historyDoc {
	c.t.Helper()
	d, err := c.history(name)
	if err != nil {
		c.t.Fatal(err)
	}
	var left epochView
	found := false
	for _, w := range leftWords {
		if h, ok := d.find(from, id, w); ok && (!found || h.Epoch < left.Epoch) {
			left, found = h, true
		}
	}
	if !found {
		c.t.Fatalf("no epoch after %d drops %s (reason naming it and one of %q):\n%v", from, id, leftWords, d)
	}
	if _, ok := d.find(left.Epoch, "member "+id+" caught up"); !ok {
		c.t.Fatalf("no epoch after %d (which dropped %s) makes it a member again:\n%v", left.Epoch, id, d)
	}
	c.t.Logf("epoch history of %s:\n%v", name, d)
	return d
}

// otherVolume is the volume server of a two-server cluster that is not id.
func (c *testCluster) otherVolume(id string) *volumeServer {
	c.t.Helper()
	for _, vs := range c.volumes {
		if vs.http != id {
			return vs
		}
	}
	c.t.Fatalf("no volume server other than %s", id)
	return nil
}

func (vs *volumeServer) uri(name string) string { return "nbd://" + vs.nbd + "/" + name }

// blockFile is the path of vs's local copy of name.
func (vs *volumeServer) blockFile(name string) string {
	return filepath.Join(vs.dir, "block", name+".blk")
}

// moveRepl makes the next start of vs listen for (and advertise)
// replication on a new port: a primary that still holds the old address
// can no longer ship to it.
func (vs *volumeServer) moveRepl(t *testing.T) {
	t.Helper()
	if vs.running() {
		t.Fatalf("%s: moveRepl while running", vs.name)
	}
	addr := "127.0.0.1:" + strconv.Itoa(freePorts(t, 1)[0])
	for i, a := range vs.args {
		if strings.HasPrefix(a, "-block.repl=") {
			vs.args[i] = "-block.repl=" + addr
			vs.repl = addr
			return
		}
	}
	t.Fatalf("%s has no -block.repl argument: %q", vs.name, vs.args)
}

// fioSpan is a fio job over one range of a volume: random 4 KiB writes
// that each carry a crc32c verify header, covering every block of the
// range exactly once, a FLUSH every 32 writes and at the end. The same
// span with --verify_only reads the range back and checks every block.
type fioSpan struct {
	name      string
	off, size int64
	seed      int
}

func (s fioSpan) args(uri string, extra ...string) []string {
	return append([]string{
		"--name=" + s.name, "--ioengine=nbd", "--uri=" + uri, "--rw=randwrite", "--bs=4k",
		"--iodepth=8", "--offset=" + strconv.FormatInt(s.off, 10), "--size=" + strconv.FormatInt(s.size, 10),
		"--randseed=" + strconv.Itoa(s.seed), "--verify=crc32c", "--verify_fatal=1",
		"--fsync=32", "--end_fsync=1", "--output-format=terse", "--verify_state_save=0",
	}, extra...)
}

// write runs the span's writes to completion (no verify pass), then
// flushes.
func (s fioSpan) write(t *testing.T, uri string) {
	t.Helper()
	mustRun(t, 3*time.Minute, "fio", s.args(uri, "--do_verify=0")...)
	flushed(t, uri)
}

// flushed sends one more FLUSH to uri with qemu-io, which must succeed: it
// covers every write acknowledged before it. fio's nbd engine ignores
// FLUSH errors (fio 3.33 exits 0 with err=0 when every FLUSH fails), so a
// fio exit status alone does not say its writes were committed.
func flushed(t *testing.T, uri string) {
	t.Helper()
	r := runCmd(t, time.Minute, "qemu-io", "-f", "raw", "-c", "flush", uri)
	if r.code != 0 || strings.Contains(r.stdout+r.stderr, "failed") {
		t.Fatalf("FLUSH after fio's writes to %s failed: exit %d: %s%s", uri, r.code, r.stdout, r.stderr)
	}
}

// verify reads the span back through uri and checks every block.
func (s fioSpan) verify(t *testing.T, uri, what string) {
	t.Helper()
	r := runCmd(t, 3*time.Minute, "fio", s.args(uri, "--verify_only")...)
	if r.code != 0 {
		t.Fatalf("fio verify_only of %s [%d, %d) %s: exit %d\nstdout:\n%s\nstderr:\n%s",
			s.name, s.off, s.off+s.size, what, r.code, r.stdout, r.stderr)
	}
}

// startWrite starts the span's writes in the background at iops; wait
// then also flushes (see flushed).
func (s fioSpan) startWrite(t *testing.T, uri string, iops int) *bgCmd {
	t.Helper()
	b := startBg(t, "fio", s.args(uri, "--do_verify=0", "--rate_iops="+strconv.Itoa(iops))...)
	b.flushURI = uri
	return b
}

// bgCmd is a client command running in the background; it is killed if
// the test ends first.
type bgCmd struct {
	name    string
	cmd     *exec.Cmd
	stdout  bytes.Buffer
	stderr  bytes.Buffer
	done    chan struct{}
	err     error
	started time.Time
	// flushURI: after a successful exit, wait sends a FLUSH there that
	// must succeed.
	flushURI string
}

func startBg(t *testing.T, name string, args ...string) *bgCmd {
	t.Helper()
	b := &bgCmd{name: name, cmd: exec.Command(name, args...), done: make(chan struct{}), started: time.Now()}
	b.cmd.Stdout, b.cmd.Stderr = &b.stdout, &b.stderr
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		b.err = b.cmd.Wait()
		close(b.done)
	}()
	t.Cleanup(func() {
		select {
		case <-b.done:
		default:
			b.cmd.Process.Kill()
			<-b.done
		}
	})
	return b
}

// wait waits (bounded) for the command to exit and fails the test unless
// it exited 0.
func (b *bgCmd) wait(t *testing.T, timeout time.Duration, what string) {
	t.Helper()
	select {
	case <-b.done:
	case <-time.After(timeout):
		b.cmd.Process.Kill()
		<-b.done
		t.Fatalf("%s (%s): still running after %v\nstdout:\n%s\nstderr:\n%s", b.name, what, timeout, b.stdout.String(), b.stderr.String())
	}
	if b.err != nil {
		t.Fatalf("%s (%s): %v\nstdout:\n%s\nstderr:\n%s", b.name, what, b.err, b.stdout.String(), b.stderr.String())
	}
	t.Logf("%s (%s) finished in %v", b.name, what, time.Since(b.started).Round(100*time.Millisecond))
	if b.flushURI != "" {
		flushed(t, b.flushURI)
	}
}

// running says whether the command has not exited yet.
func (b *bgCmd) running() bool {
	select {
	case <-b.done:
		return false
	default:
		return true
	}
}

// readAll copies the whole export at uri with nbdcopy; ok is false (and
// out says why) when the server refused to serve it.
func readAll(t *testing.T, uri string) (data []byte, out string, ok bool) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "copy.img")
	r := runCmd(t, 2*time.Minute, "nbdcopy", uri, f)
	if r.code != 0 {
		return nil, strings.TrimSpace(r.stdout + r.stderr), false
	}
	data, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return data, "", true
}

// mustReadAll copies the whole export at uri; it must be served.
func mustReadAll(t *testing.T, uri string, size int) []byte {
	t.Helper()
	data, out, ok := readAll(t, uri)
	if !ok {
		t.Fatalf("nbdcopy %s: %s", uri, out)
	}
	if len(data) != size {
		t.Fatalf("nbdcopy %s: %d bytes, want %d", uri, len(data), size)
	}
	return data
}

// sameData fails unless got equals want byte for byte.
func sameData(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if d := firstDiff(got, want); d != "" {
		t.Fatalf("%s: %s (sha256 %x, want %x)", what, d, sha256.Sum256(got), sha256.Sum256(want))
	}
}

// pattern is n bytes of b.
func pattern(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

// sigcontOnExit resumes a SIGSTOPped process when the test ends early.
func sigcontOnExit(t *testing.T, vs *volumeServer, stopped *bool) {
	t.Cleanup(func() {
		if *stopped && vs.running() {
			vs.cmd.Process.Signal(syscall.SIGCONT)
		}
	})
}

package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// This file holds the process plumbing of BenchmarkProduct. The e2e helpers
// take *testing.T; a benchmark has a *testing.B, and the replicated rows
// must degrade to "n/a (reason)" instead of failing, so these return errors.

// benchProc is one child process of the benchmark (weed, nbdkit, tgtd),
// killed when the benchmark ends.
type benchProc struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
}

type benchProcWriter struct{ p *benchProc }

func (w benchProcWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.out.Write(b)
}

// startBenchProc starts bin args...; stdout, when not nil, also gets the
// child's stdout.
func startBenchProc(tb testing.TB, name string, stdout *firstLineWriter, bin string, args ...string) (*benchProc, error) {
	p := &benchProc{name: name, cmd: exec.Command(bin, args...), done: make(chan struct{})}
	if stdout != nil {
		p.cmd.Stdout = stdout
	} else {
		p.cmd.Stdout = benchProcWriter{p}
	}
	p.cmd.Stderr = benchProcWriter{p}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	tb.Cleanup(p.kill)
	return p, nil
}

// kill stops the process (SIGKILL) and waits for it; it is idempotent.
func (p *benchProc) kill() {
	select {
	case <-p.done:
	default:
		p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *benchProc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *benchProc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// benchPorts returns n distinct TCP ports on 127.0.0.1 free a moment ago.
func benchPorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// waitListening waits (at most timeout) until addr accepts TCP connections.
func waitListening(p *benchProc, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if !p.running() {
			return fmt.Errorf("%s exited before listening on %s:\n%s", p.name, addr, tail(p.output(), 2000))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening on %s after %v: %w", p.name, addr, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// benchPoll polls cond every 250 ms until it returns nil or timeout passes.
func benchPoll(timeout time.Duration, what string, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		var stop backoffStop
		if errors.As(err, &stop) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting until %s: %w", timeout, what, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// execOut runs a command to completion within timeout and returns its
// stdout followed by its stderr; the error carries both.
func execOut(timeout time.Duration, stdin string, name string, args ...string) (string, error) {
	stdout, stderr, err := execSplit(timeout, stdin, name, args...)
	return stdout + stderr, err
}

// execSplit is execOut with stdout and stderr apart.
func execSplit(timeout time.Duration, stdin string, name string, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		return stdout.String(), stderr.String(), fmt.Errorf("%s %q: timed out after %v: %s", name, args, timeout, tail(stderr.String(), 2000))
	}
	if err != nil {
		return stdout.String(), stderr.String(), fmt.Errorf("%s %q: %w\nstdout:\n%s\nstderr:\n%s", name, args, err, tail(stdout.String(), 2000), tail(stderr.String(), 2000))
	}
	return stdout.String(), stderr.String(), nil
}

// figures is what one job measured: IOPS and MB/s (10^6 bytes) of its
// dominant direction.
type figures struct {
	iops, mbps float64
	// flushes is fio's syncs per write (0 for a job without syncs):
	// what the target was really asked to do, whatever the job said.
	flushes float64
}

// fio runs one fio job with the given arguments (target and workload) and
// returns its figures.
func fio(args ...string) (figures, error) {
	all := append([]string{"--name=bench", "--output-format=json"}, args...)
	out, err := execOut(5*time.Minute, "", "fio", all...)
	if err != nil {
		return figures{}, err
	}
	if i := strings.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	var res struct {
		Jobs []struct {
			Error int `json:"error"`
			Read  struct {
				IOPS float64 `json:"iops"`
				BW   float64 `json:"bw_bytes"`
			} `json:"read"`
			Write struct {
				IOPS float64 `json:"iops"`
				BW   float64 `json:"bw_bytes"`
				IOs  float64 `json:"total_ios"`
			} `json:"write"`
			Sync struct {
				IOs float64 `json:"total_ios"`
			} `json:"sync"`
		} `json:"jobs"`
	}
	dec := json.NewDecoder(strings.NewReader(out))
	if err := dec.Decode(&res); err != nil || len(res.Jobs) == 0 || res.Jobs[0].Error != 0 {
		return figures{}, fmt.Errorf("fio %q: bad result (%v):\n%s", args, err, tail(out, 2000))
	}
	j := res.Jobs[0]
	if j.Read.IOPS > j.Write.IOPS {
		return figures{iops: j.Read.IOPS, mbps: j.Read.BW / 1e6}, nil
	}
	f := figures{iops: j.Write.IOPS, mbps: j.Write.BW / 1e6}
	if j.Write.IOs > 0 {
		f.flushes = j.Sync.IOs / j.Write.IOs
	}
	return f, nil
}

var iscsiPerfAverage = regexp.MustCompile(`iops average (\d+) \((\d+) MB/s\)`)

// iscsiPerf runs libiscsi's iscsi-perf (sequential reads of blocks×512
// bytes at queue depth qd) for seconds against url.
func iscsiPerf(url string, blocks, qd, seconds int) (figures, error) {
	out, err := execOut(time.Duration(seconds+30)*time.Second, "", "iscsi-perf",
		"-m", strconv.Itoa(qd), "-b", strconv.Itoa(blocks), "-t", strconv.Itoa(seconds), url)
	if err != nil {
		return figures{}, err
	}
	m := iscsiPerfAverage.FindAllStringSubmatch(out, -1)
	if len(m) == 0 {
		return figures{}, fmt.Errorf("iscsi-perf %s: no figures:\n%s", url, tail(out, 2000))
	}
	last := m[len(m)-1]
	iops, _ := strconv.ParseFloat(last[1], 64)
	mbs, _ := strconv.ParseFloat(last[2], 64)
	return figures{iops: iops, mbps: mbs}, nil
}

// startNbdkit serves path with `nbdkit file` and returns its URI.
func startNbdkit(tb testing.TB, path string) (string, error) {
	ports, err := benchPorts(1)
	if err != nil {
		return "", err
	}
	p, err := startBenchProc(tb, "nbdkit", nil, "nbdkit", "--foreground", "--exit-with-parent",
		"--ipaddr=127.0.0.1", "--port="+strconv.Itoa(ports[0]), "file", "file="+path)
	if err != nil {
		return "", err
	}
	addr := "127.0.0.1:" + strconv.Itoa(ports[0])
	if err := waitListening(p, addr, 10*time.Second); err != nil {
		return "", err
	}
	return "nbd://" + addr + "/", nil
}

// startServeBench runs `weed block serve` on a new volume file and returns
// its NBD URI and LUN 0's iSCSI URL.
func startServeBench(tb testing.TB, file string, size int64) (nbdURI, iscsiURL string, err error) {
	first := make(chan string, 1)
	p, err := startBenchProc(tb, "weed block serve", &firstLineWriter{line: first}, weedBin,
		"block", "serve", "-file="+file, "-blockSize=4096", "-size="+strconv.FormatInt(size, 10), "-name=bench",
		"-nbd=127.0.0.1:0", "-iscsi=127.0.0.1:0")
	if err != nil {
		return "", "", err
	}
	select {
	case l := <-first:
		m := readyRE.FindStringSubmatch(l)
		if m == nil || m[3] == "" || m[4] == "" {
			return "", "", fmt.Errorf("weed block serve: unexpected ready line %q", l)
		}
		return "nbd://" + m[3] + "/" + m[2], "iscsi://" + m[4] + "/" + m[5] + "/0", nil
	case <-p.done:
		return "", "", fmt.Errorf("weed block serve exited before ready:\n%s", tail(p.output(), 2000))
	case <-time.After(60 * time.Second):
		return "", "", fmt.Errorf("weed block serve not ready after 60s:\n%s", tail(p.output(), 2000))
	}
}

// startTgtd runs tgtd in the foreground with its own control port and
// portal, exporting path as LUN 1 of one target; it returns the LUN's URL.
func startTgtd(tb testing.TB, path string) (string, error) {
	ports, err := benchPorts(1)
	if err != nil {
		return "", err
	}
	// The control port only names tgtd's management socket
	// (/var/run/tgtd/socket.N); pick one unlikely to be in use.
	ctl := strconv.Itoa(20000 + os.Getpid()%10000)
	addr := "127.0.0.1:" + strconv.Itoa(ports[0])
	// Registered first, so it runs after the kill: a killed tgtd leaves
	// its management socket and lock file behind.
	tb.Cleanup(func() {
		os.Remove("/var/run/tgtd/socket." + ctl)
		os.Remove("/var/run/tgtd/socket." + ctl + ".lock")
	})
	p, err := startBenchProc(tb, "tgtd", nil, "tgtd", "-f", "-C", ctl, "--iscsi", "portal="+addr)
	if err != nil {
		return "", err
	}
	if err := waitListening(p, addr, 10*time.Second); err != nil {
		return "", err
	}
	const iqn = "iqn.2026-11.io.weedblock.bench:tgtd"
	for _, args := range [][]string{
		{"--op", "new", "--mode", "target", "--tid", "1", "-T", iqn},
		{"--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", path},
		{"--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"},
	} {
		if _, err := execOut(30*time.Second, "", "tgtadm", append([]string{"-C", ctl, "--lld", "iscsi"}, args...)...); err != nil {
			return "", fmt.Errorf("configure tgtd: %w\ntgtd output:\n%s", err, tail(p.output(), 2000))
		}
	}
	return "iscsi://" + addr + "/" + iqn + "/1", nil
}

// benchCluster is a master and volume servers (with block support) as
// child processes on 127.0.0.1.
type benchCluster struct {
	masterArg string // -master= value: host:port.grpcPort
	servers   []benchServer
}

// benchServer is one volume server of a benchCluster.
type benchServer struct {
	proc      *benchProc
	http, nbd string // host:port; http is its server id
}

// startBenchCluster starts a master and n volume servers and waits until
// every volume server serves /block/status.
func startBenchCluster(tb testing.TB, dir string, n int) (*benchCluster, error) {
	ports, err := benchPorts(2 + 5*n)
	if err != nil {
		return nil, err
	}
	masterHTTP := "127.0.0.1:" + strconv.Itoa(ports[0])
	c := &benchCluster{masterArg: fmt.Sprintf("%s.%d", masterHTTP, ports[1])}
	mdir := filepath.Join(dir, "master")
	if err := os.MkdirAll(mdir, 0o755); err != nil {
		return nil, err
	}
	master, err := startBenchProc(tb, "master", nil, weedBin, "-logdir="+mdir, "master",
		"-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-port="+strconv.Itoa(ports[0]), "-port.grpc="+strconv.Itoa(ports[1]),
		"-mdir="+mdir, "-peers=none", "-telemetry=false", "-volumeSizeLimitMB=64")
	if err != nil {
		return nil, err
	}
	if err := benchPoll(90*time.Second, "the master elects a leader", func() error {
		if !master.running() {
			return errors.New("master exited:\n" + tail(master.output(), 2000))
		}
		var st struct{ Leader string }
		if err := getJSON("http://"+masterHTTP+"/cluster/status", &st); err != nil {
			return err
		}
		if st.Leader == "" {
			return errors.New("no leader yet")
		}
		return nil
	}); err != nil {
		return nil, err
	}
	var vols []*benchProc
	var https []string
	for i := range n {
		p := ports[2+5*i:]
		vdir := filepath.Join(dir, fmt.Sprintf("volume%d", i+1))
		if err := os.MkdirAll(vdir, 0o755); err != nil {
			return nil, err
		}
		httpAddr := "127.0.0.1:" + strconv.Itoa(p[0])
		vs, err := startBenchProc(tb, fmt.Sprintf("volume%d", i+1), nil, weedBin, "-logdir="+vdir, "volume",
			"-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-port="+strconv.Itoa(p[0]), "-port.grpc="+strconv.Itoa(p[1]),
			"-dir="+vdir, "-max=8", "-master="+c.masterArg, "-preStopSeconds=0",
			"-dataCenter=dc1", fmt.Sprintf("-rack=rack%d", i+1),
			"-block.dir="+filepath.Join(vdir, "block"),
			"-block.nbd=127.0.0.1:"+strconv.Itoa(p[2]), "-block.iscsi=127.0.0.1:"+strconv.Itoa(p[3]),
			"-block.repl=127.0.0.1:"+strconv.Itoa(p[4]))
		if err != nil {
			return nil, err
		}
		vols = append(vols, vs)
		https = append(https, httpAddr)
		c.servers = append(c.servers, benchServer{proc: vs, http: httpAddr, nbd: "127.0.0.1:" + strconv.Itoa(p[2])})
	}
	for i, vs := range vols {
		if err := benchPoll(90*time.Second, vs.name+" serves /block/status", func() error {
			if !vs.running() {
				return errors.New(vs.name + " exited:\n" + tail(vs.output(), 2000))
			}
			resp, err := http.Get("http://" + https[i] + "/block/status")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("status %s", resp.Status)
			}
			return nil
		}); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// shell runs commands in `weed shell` against the cluster.
func (c *benchCluster) shell(cmds ...string) (string, error) {
	out, errOut, err := execSplit(2*time.Minute, strings.Join(cmds, "\n")+"\n", weedBin, "shell", "-master="+c.masterArg)
	if err == nil && strings.Contains(errOut, "error: ") {
		err = fmt.Errorf("weed shell %q:\n%s", cmds, tail(errOut, 2000))
	}
	return out, err
}

// createReplicated creates a volume with block.create args and waits until
// its primary serves it and all rf copies report the current epoch; it
// returns the primary's NBD URI.
func (c *benchCluster) createReplicated(name, args string, rf int) (string, error) {
	if err := benchPoll(90*time.Second, "block.create "+name+" succeeds", func() error {
		_, err := c.shell("block.create -name=" + name + " " + args)
		if err != nil && (strings.Contains(err.Error(), "not enough block servers") || strings.Contains(err.Error(), "cannot connect to master")) {
			return err
		}
		if err != nil {
			return backoffStop{err}
		}
		return nil
	}); err != nil {
		var stop backoffStop
		if errors.As(err, &stop) {
			return "", stop.err
		}
		return "", err
	}
	var uri string
	err := benchPoll(60*time.Second, name+" is served with "+strconv.Itoa(rf)+" current copies", func() error {
		v, err := c.status(name)
		if err != nil {
			return err
		}
		if err := v.primaryServing(); err != nil {
			return err
		}
		current := 0
		for _, r := range v.Replicas {
			// Replicas hold no lease (fenced against client writes); they
			// count when they report the epoch and are in sync.
			if r.Alive && r.Reported && r.Epoch == v.Epoch && (r.Role == "primary" || r.ReplicaState == "in-sync") {
				current++
			}
		}
		if current != rf {
			return fmt.Errorf("%d of %d copies current (state %s, warning %q)", current, rf, v.State, v.Warning)
		}
		if v.Attach.NBDURI == "" {
			return errors.New("no NBD URI in block.status")
		}
		uri = v.Attach.NBDURI
		return nil
	})
	return uri, err
}

// benchVolume is the part of `block.status -json` the benchmark reads.
type benchVolume struct {
	Epoch    uint64 `json:"epoch"`
	State    string `json:"state"`
	Warning  string `json:"warning"`
	Primary  string `json:"primary"`
	Replicas []struct {
		ServerID      string `json:"server_id"`
		Role          string `json:"role"`
		Alive         bool   `json:"alive"`
		Reported      bool   `json:"reported"`
		Epoch         uint64 `json:"epoch"`
		Fenced        bool   `json:"fenced"`
		DurableLSN    uint64 `json:"durable_lsn"`
		CheckpointLSN uint64 `json:"checkpoint_lsn"`
		ReplicaState  string `json:"replica_state"`
	} `json:"replicas"`
	Attach struct {
		NBDURI string `json:"nbd_uri"`
	} `json:"attach"`
}

func (v benchVolume) primaryServing() error {
	for _, r := range v.Replicas {
		if r.ServerID == v.Primary {
			if !r.Alive || !r.Reported || r.Epoch != v.Epoch || r.Fenced {
				return fmt.Errorf("primary %s: alive=%v reported=%v epoch %d (volume %d) fenced=%v; state %s",
					r.ServerID, r.Alive, r.Reported, r.Epoch, v.Epoch, r.Fenced, v.State)
			}
			return nil
		}
	}
	return fmt.Errorf("primary %q is not among the copies", v.Primary)
}

// status runs block.status -json for name.
func (c *benchCluster) status(name string) (benchVolume, error) {
	var v benchVolume
	out, err := c.shell("block.status -json -name=" + name)
	if err != nil {
		return v, err
	}
	if i := strings.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return v, fmt.Errorf("block.status -json %s: %w", name, err)
	}
	return v, nil
}

// durableLSNs describes each copy's durable LSN ("primary 123, replica
// 123"): after a flushed workload equal numbers show the copies kept up.
func (c *benchCluster) durableLSNs(name string) string {
	v, err := c.status(name)
	if err != nil {
		return "status: " + oneLine(err)
	}
	var parts []string
	for _, r := range v.Replicas {
		parts = append(parts, fmt.Sprintf("%s %d", r.Role, r.DurableLSN))
	}
	return "durable LSN " + strings.Join(parts, ", ")
}

// settled waits (at most a minute) until every copy of name has the same
// durable LSN and has flushed its WAL to the extent up to it, so a
// measurement does not start behind the flusher backlog of a prefill.
func (c *benchCluster) settled(name string) error {
	return benchPoll(time.Minute, name+" copies equal and checkpointed", func() error {
		v, err := c.status(name)
		if err != nil {
			return err
		}
		for _, r := range v.Replicas {
			if r.DurableLSN != v.Replicas[0].DurableLSN || r.CheckpointLSN < r.DurableLSN {
				return fmt.Errorf("%s", c.durableLSNs(name))
			}
		}
		return nil
	})
}

// backoffStop wraps an error that ends a benchPoll at once (no retry).
type backoffStop struct{ err error }

func (b backoffStop) Error() string { return b.err.Error() }

// nbdWrite4k writes one 4 KiB block at off over NBD with qemu-io and
// flushes; it fails unless both were acknowledged.
func nbdWrite4k(uri string, off int64) error {
	out, err := execOut(10*time.Second, "", "qemu-io", "-f", "raw",
		"-c", fmt.Sprintf("write -P 0x5a %d 4k", off), "-c", "flush", uri)
	if err != nil {
		return err
	}
	if strings.Contains(out, "failed") {
		return fmt.Errorf("qemu-io write at %d on %s: %s", off, uri, strings.TrimSpace(out))
	}
	return nil
}

// failoverPause kills (SIGKILL) the server that is primary of name right
// after an acknowledged, flushed write, and returns the time until another
// copy acknowledges a write as the new primary (at most a minute).
func (c *benchCluster) failoverPause(name string) (time.Duration, error) {
	v, err := c.status(name)
	if err != nil {
		return 0, err
	}
	var primary, other *benchServer
	for i := range c.servers {
		s := &c.servers[i]
		for _, r := range v.Replicas {
			switch {
			case r.ServerID != s.http:
			case r.ServerID == v.Primary:
				primary = s
			case other == nil:
				other = s
			}
		}
	}
	if primary == nil || other == nil {
		return 0, fmt.Errorf("%s: primary %q and a replica not both among this cluster's servers", name, v.Primary)
	}
	uri := func(s *benchServer) string { return "nbd://" + s.nbd + "/" + name }
	if err := nbdWrite4k(uri(primary), 0); err != nil {
		return 0, fmt.Errorf("write before the kill: %w", err)
	}
	lastAck := time.Now()
	primary.proc.kill()
	deadline := lastAck.Add(time.Minute)
	for {
		err := nbdWrite4k(uri(other), 4096)
		if err == nil {
			return time.Since(lastAck), nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("no write acknowledged by %s within a minute of killing the primary: %w", other.http, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

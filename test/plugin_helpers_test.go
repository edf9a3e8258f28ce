package test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
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

// clusterEnv names an existing cluster to run the plugin tests against
// (make compose-test): WEEDBLOCK_CLUSTER=master=host:port[.grpcPort].
// Tests that must stop or restart servers need their own cluster and are
// skipped (with the reason) in that mode.
const clusterEnv = "WEEDBLOCK_CLUSTER"

// weedProc is one `weed` server child process; it can be stopped and
// started again with the same arguments (same ports, same data).
type weedProc struct {
	t    *testing.T
	name string
	args []string

	mu   sync.Mutex
	out  bytes.Buffer // stdout and stderr of every run
	cmd  *exec.Cmd
	done chan struct{} // closed when the current run exited
	err  error
}

type procWriter struct{ p *weedProc }

func (w procWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.out.Write(b)
}

func newProc(t *testing.T, name string, args ...string) *weedProc {
	p := &weedProc{t: t, name: name, args: args}
	t.Cleanup(func() {
		if p.running() {
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("--- %s output (last 6000 bytes) ---\n%s", p.name, tail(p.output(), 6000))
		}
	})
	return p
}

// start runs the process (again).
func (p *weedProc) start() {
	p.t.Helper()
	if p.running() {
		p.t.Fatalf("%s is already running", p.name)
	}
	p.mu.Lock()
	fmt.Fprintf(&p.out, "\n=== start %s %q at %s ===\n", p.name, p.args, time.Now().Format(time.RFC3339Nano))
	p.mu.Unlock()
	cmd := exec.Command(weedBin, p.args...)
	cmd.Stdout, cmd.Stderr = procWriter{p}, procWriter{p}
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("start %s: %v", p.name, err)
	}
	done := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(done)
	}()
}

func (p *weedProc) running() bool {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// stop sends sig and waits at most a minute for the exit (then kills).
func (p *weedProc) stop(sig syscall.Signal) {
	p.t.Helper()
	if !p.running() {
		p.t.Fatalf("%s is not running:\n%s", p.name, tail(p.output(), 4000))
	}
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(time.Minute):
		p.cmd.Process.Kill()
		<-p.done
		p.t.Fatalf("%s did not exit within a minute of %v", p.name, sig)
	}
}

// signal sends sig (SIGSTOP, SIGCONT) without waiting.
func (p *weedProc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal %s %v: %v", p.name, sig, err)
	}
}

func (p *weedProc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// freePorts returns n distinct free TCP ports on 127.0.0.1. They are
// picked below Linux's ephemeral range (32768 and up), so no outgoing
// connection of a busy machine can take one between this check and the
// child's bind ("address already in use").
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for tries := 0; len(ports) < n; tries++ {
		if tries > 10000 {
			t.Fatalf("found only %d free ports in 12000..32767", len(ports))
		}
		p := 12000 + rand.IntN(32768-12000)
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			continue
		}
		ls = append(ls, l)
		ports = append(ports, p)
	}
	return ports
}

// volumeServer is one `weed volume` of a test cluster.
type volumeServer struct {
	*weedProc
	http, grpc       string // host:port
	nbd, iscsi, repl string
	dir              string
}

// testCluster is a master and volume servers on 127.0.0.1, or an
// existing cluster (external) named by WEEDBLOCK_CLUSTER.
type testCluster struct {
	t          *testing.T
	external   bool
	master     *weedProc // nil when external
	masterHTTP string    // host:port
	masterArg  string    // what -master= takes: host:port.grpcPort
	volumes    []*volumeServer
}

// externalCluster returns the cluster of WEEDBLOCK_CLUSTER, or nil.
func externalCluster(t *testing.T) *testCluster {
	v := os.Getenv(clusterEnv)
	if v == "" {
		return nil
	}
	addr, ok := strings.CutPrefix(v, "master=")
	if !ok || addr == "" {
		t.Fatalf("%s=%q: want master=host:port[.grpcPort]", clusterEnv, v)
	}
	httpAddr := addr
	if i := strings.LastIndex(addr, "."); i > strings.LastIndex(addr, ":") {
		httpAddr = addr[:i]
	}
	c := &testCluster{t: t, external: true, masterHTTP: httpAddr, masterArg: addr}
	c.waitMaster()
	return c
}

// requireOwnCluster skips a test that must stop or restart servers when the
// suite runs against an existing cluster.
func requireOwnCluster(t *testing.T) {
	if os.Getenv(clusterEnv) != "" {
		t.Skipf("%s is set: this test stops and restarts servers, which needs its own cluster", clusterEnv)
	}
}

// startCluster starts a master and nVolumes volume servers (each with
// block support: -block.dir, NBD and iSCSI listeners) and waits until all
// answer. With WEEDBLOCK_CLUSTER set it returns that cluster instead.
func startCluster(t *testing.T, nVolumes int) *testCluster {
	t.Helper()
	if c := externalCluster(t); c != nil {
		return c
	}
	dir := t.TempDir()
	ports := freePorts(t, 2+6*nVolumes)
	c := &testCluster{t: t,
		masterHTTP: "127.0.0.1:" + strconv.Itoa(ports[0]),
		masterArg:  fmt.Sprintf("127.0.0.1:%d.%d", ports[0], ports[1]),
	}
	mdir := filepath.Join(dir, "master")
	os.MkdirAll(mdir, 0o755)
	c.master = newProc(t, "master", "-logdir="+mdir, "master",
		"-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-port="+strconv.Itoa(ports[0]), "-port.grpc="+strconv.Itoa(ports[1]),
		"-mdir="+mdir, "-peers=none", "-telemetry=false", "-volumeSizeLimitMB=64")
	c.master.start()
	c.waitMaster()
	for i := range nVolumes {
		p := ports[2+6*i:]
		vs := &volumeServer{
			http:  "127.0.0.1:" + strconv.Itoa(p[0]),
			grpc:  "127.0.0.1:" + strconv.Itoa(p[1]),
			nbd:   "127.0.0.1:" + strconv.Itoa(p[2]),
			iscsi: "127.0.0.1:" + strconv.Itoa(p[3]),
			repl:  "127.0.0.1:" + strconv.Itoa(p[4]),
			dir:   filepath.Join(dir, fmt.Sprintf("volume%d", i+1)),
		}
		os.MkdirAll(vs.dir, 0o755)
		vs.weedProc = newProc(t, fmt.Sprintf("volume%d", i+1), "-logdir="+vs.dir, "volume",
			"-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-port="+strconv.Itoa(p[0]), "-port.grpc="+strconv.Itoa(p[1]),
			"-dir="+vs.dir, "-max=8", "-master="+c.masterArg, "-preStopSeconds=0",
			"-dataCenter=dc1", fmt.Sprintf("-rack=rack%d", i+1),
			"-block.dir="+filepath.Join(vs.dir, "block"), "-block.nbd="+vs.nbd, "-block.iscsi="+vs.iscsi,
			"-block.repl="+vs.repl)
		vs.start()
		c.volumes = append(c.volumes, vs)
	}
	for _, vs := range c.volumes {
		c.waitVolume(vs)
	}
	return c
}

// waitMaster waits (at most 90 s) until the master's raft has a leader.
func (c *testCluster) waitMaster() {
	c.t.Helper()
	waitFor(c.t, 90*time.Second, "master "+c.masterHTTP+" elects a leader", func() error {
		var st struct {
			IsLeader bool
			Leader   string
		}
		if err := getJSON("http://"+c.masterHTTP+"/cluster/status", &st); err != nil {
			return err
		}
		if st.Leader == "" {
			return errors.New("no leader yet")
		}
		return nil
	})
}

// waitVolume waits until the volume server answers on HTTP, block status
// included (its block manager started).
func (c *testCluster) waitVolume(vs *volumeServer) {
	c.t.Helper()
	waitFor(c.t, 90*time.Second, vs.name+" serves /block/status", func() error {
		if !vs.running() {
			c.t.Fatalf("%s exited:\n%s", vs.name, tail(vs.output(), 4000))
		}
		resp, err := http.Get("http://" + vs.http + "/block/status")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %s", resp.Status)
		}
		return nil
	})
}

// getJSON GETs url and decodes its JSON body into v.
func getJSON(url string, v any) error {
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	return json.Unmarshal(body, v)
}

// waitFor polls cond every 250 ms until it returns nil or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting until %s: %v", timeout, what, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// shell pipes commands (one per line) into `weed shell -master=...` and
// returns its outcome.
func (c *testCluster) shell(cmds ...string) runResult {
	c.t.Helper()
	return shellAt(c.t, c.masterArg, cmds...)
}

func shellAt(t *testing.T, master string, cmds ...string) runResult {
	t.Helper()
	cmd := exec.Command(weedBin, "shell", "-master="+master)
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("weed shell %q: no exit after 2 minutes\nstdout:\n%s\nstderr:\n%s", cmds, stdout.String(), stderr.String())
	}
	res := runResult{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		res.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("weed shell: %v", err)
	}
	return res
}

// mustShell runs commands that must all succeed and returns stdout.
func (c *testCluster) mustShell(cmds ...string) string {
	c.t.Helper()
	r := c.shell(cmds...)
	if r.code != 0 || strings.Contains(r.stderr, "error: ") {
		c.t.Fatalf("weed shell %q: exit %d\nstdout:\n%s\nstderr:\n%s", cmds, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// shellFails runs one command that must fail with an error mentioning
// every one of msgs; it returns the error line.
func (c *testCluster) shellFails(cmd string, msgs ...string) string {
	c.t.Helper()
	r := c.shell(cmd)
	if r.code == 0 {
		c.t.Fatalf("weed shell %q succeeded, want an error mentioning %q\nstdout:\n%s\nstderr:\n%s", cmd, msgs, r.stdout, r.stderr)
	}
	if err := contains(r.stderr, append([]string{"error: "}, msgs...)...); err != nil {
		c.t.Fatalf("weed shell %q: %v\nstdout:\n%s\nstderr:\n%s", cmd, err, r.stdout, r.stderr)
	}
	for _, l := range strings.Split(r.stderr, "\n") {
		if strings.HasPrefix(l, "error: ") {
			return l
		}
	}
	return ""
}

// volumeView is the part of `block.status -json` the tests read.
type volumeView struct {
	Name               string `json:"name"`
	SizeBytes          uint64 `json:"size_bytes"`
	ReplicationFactor  uint32 `json:"replication_factor"`
	Durability         string `json:"durability"`
	State              string `json:"state"`
	Epoch              uint64 `json:"epoch"`
	Primary            string `json:"primary"`
	LeaseExpiresUnixMs int64  `json:"lease_expires_unix_ms"`
	Warning            string `json:"warning"`
	Replicas           []struct {
		ServerID         string `json:"server_id"`
		Role             string `json:"role"`
		Alive            bool   `json:"alive"`
		Reported         bool   `json:"reported"`
		Epoch            uint64 `json:"epoch"`
		HeadLSN          uint64 `json:"head_lsn"`
		DurableLSN       uint64 `json:"durable_lsn"`
		Fenced           bool   `json:"fenced"`
		LeaseRemainingMs int64  `json:"lease_remaining_ms"`
		AttachedSessions uint32 `json:"attached_sessions"`
	} `json:"replicas"`
	Attach struct {
		NBDURI      string   `json:"nbd_uri"`
		ISCSIPortal string   `json:"iscsi_portal"`
		ISCSIIQN    string   `json:"iscsi_iqn"`
		Examples    []string `json:"examples"`
	} `json:"attach"`
}

func (v volumeView) iscsiURI() string {
	return "iscsi://" + v.Attach.ISCSIPortal + "/" + v.Attach.ISCSIIQN + "/0"
}

// primaryServing says whether the primary reports the current epoch,
// unfenced.
func (v volumeView) primaryServing() error {
	for _, r := range v.Replicas {
		if r.ServerID != v.Primary {
			continue
		}
		if !r.Alive || !r.Reported || r.Epoch != v.Epoch || r.Fenced {
			return fmt.Errorf("primary %s: alive=%v reported=%v epoch %d (volume %d) fenced=%v; state %s",
				r.ServerID, r.Alive, r.Reported, r.Epoch, v.Epoch, r.Fenced, v.State)
		}
		return nil
	}
	return fmt.Errorf("primary %q is not among the replicas", v.Primary)
}

// status runs block.status -json.
func (c *testCluster) status(name string) (volumeView, error) {
	r := c.shell("block.status -json -name=" + name)
	var v volumeView
	if r.code != 0 {
		return v, fmt.Errorf("block.status %s: exit %d: %s", name, r.code, strings.TrimSpace(r.stderr))
	}
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		return v, fmt.Errorf("block.status -json %s: %v\n%s", name, err, r.stdout)
	}
	return v, nil
}

// waitServing waits until the volume's primary serves its current epoch.
func (c *testCluster) waitServing(name string, timeout time.Duration) volumeView {
	c.t.Helper()
	var v volumeView
	waitFor(c.t, timeout, name+" is served by its primary", func() error {
		var err error
		if v, err = c.status(name); err != nil {
			return err
		}
		return v.primaryServing()
	})
	return v
}

// create runs block.create, retrying while the volume servers have not
// joined the master's block registry yet (at most 90 s).
func (c *testCluster) create(args string) string {
	c.t.Helper()
	var out string
	waitFor(c.t, 90*time.Second, "block.create "+args+" succeeds", func() error {
		r := c.shell("block.create " + args)
		if r.code == 0 && !strings.Contains(r.stderr, "error: ") {
			out = r.stdout
			return nil
		}
		if strings.Contains(r.stderr, "not enough block servers") || strings.Contains(r.stderr, "cannot connect to master") {
			return errors.New(strings.TrimSpace(r.stderr))
		}
		c.t.Fatalf("block.create %s: exit %d\nstdout:\n%s\nstderr:\n%s", args, r.code, r.stdout, r.stderr)
		return nil
	})
	return out
}

// uniqueName is a volume name that no earlier run used (an existing
// cluster keeps its volumes).
func uniqueName(prefix string) string {
	if os.Getenv(clusterEnv) == "" {
		return prefix
	}
	return fmt.Sprintf("%s-%08x", prefix, rand.Uint32())
}

// randomData is n bytes of seeded pseudo-random data.
func randomData(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

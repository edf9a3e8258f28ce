package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestPluginThreeMasters runs three masters (one raft group) and a volume
// server, and drives the block commands through a shell pointed at a
// master that is not the leader: the commands reach the leader.
func TestPluginThreeMasters(t *testing.T) {
	requireOwnCluster(t)
	dir := t.TempDir()
	p := freePorts(t, 6+6)
	var peers []string
	for i := range 3 {
		peers = append(peers, fmt.Sprintf("127.0.0.1:%d.%d", p[2*i], p[2*i+1]))
	}
	var masters []*weedProc
	for i := range 3 {
		mdir := filepath.Join(dir, fmt.Sprintf("m%d", i+1))
		os.MkdirAll(mdir, 0o755)
		m := newProc(t, fmt.Sprintf("master%d", i+1), "-logdir="+mdir, "master",
			"-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-port="+strconv.Itoa(p[2*i]), "-port.grpc="+strconv.Itoa(p[2*i+1]),
			"-mdir="+mdir, "-peers="+strings.Join(peers, ","), "-telemetry=false", "-volumeSizeLimitMB=64",
			"-electionTimeout=2s")
		m.start()
		masters = append(masters, m)
	}
	// Find the leader and a follower through upstream's cluster status.
	var leader string
	waitFor(t, 2*time.Minute, "the masters elect a leader", func() error {
		for i := range 3 {
			var st struct {
				IsLeader bool
				Leader   string
			}
			if err := getJSON("http://127.0.0.1:"+strconv.Itoa(p[2*i])+"/cluster/status", &st); err != nil {
				return err
			}
			if st.Leader == "" {
				return fmt.Errorf("master %d knows no leader", i+1)
			}
			if st.IsLeader {
				leader = peers[i]
			}
		}
		if leader == "" {
			return fmt.Errorf("no master says it leads")
		}
		return nil
	})
	follower := peers[0]
	if follower == leader {
		follower = peers[1]
	}
	followerHTTP, _, _ := strings.Cut(follower, ".")
	c := &testCluster{t: t, masterHTTP: followerHTTP, masterArg: follower}
	q := p[6:]
	vs := &volumeServer{
		http: "127.0.0.1:" + strconv.Itoa(q[0]), grpc: "127.0.0.1:" + strconv.Itoa(q[1]),
		nbd: "127.0.0.1:" + strconv.Itoa(q[2]), iscsi: "127.0.0.1:" + strconv.Itoa(q[3]),
		repl: "127.0.0.1:" + strconv.Itoa(q[4]), dir: filepath.Join(dir, "volume1"),
	}
	os.MkdirAll(vs.dir, 0o755)
	vs.weedProc = newProc(t, "volume1", "-logdir="+vs.dir, "volume",
		"-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-port="+strconv.Itoa(q[0]), "-port.grpc="+strconv.Itoa(q[1]),
		"-dir="+vs.dir, "-max=8", "-master="+strings.Join(peers, ","), "-preStopSeconds=0",
		"-block.dir="+filepath.Join(vs.dir, "block"), "-block.nbd="+vs.nbd, "-block.iscsi="+vs.iscsi, "-block.repl="+vs.repl)
	vs.start()
	c.volumes = []*volumeServer{vs}
	c.waitVolume(vs)

	out := c.create("-name=ha1 -size=16MiB")
	if !strings.Contains(out, "created block volume ha1") {
		t.Fatalf("block.create through a follower:\n%s", out)
	}
	v := c.waitServing("ha1", time.Minute)
	if v.Primary != vs.http {
		t.Fatalf("primary %s, want %s", v.Primary, vs.http)
	}
	if l := c.mustShell("block.list"); !strings.Contains(l, "ha1") {
		t.Fatalf("block.list through a follower:\n%s", l)
	}
	c.mustShell("block.delete -name=ha1")
	c.shellFails("block.status -name=ha1", "no such block volume")
}

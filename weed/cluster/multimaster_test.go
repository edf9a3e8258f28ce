package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// TestThreeMasters runs three `weed master -peers=...` processes (this
// test binary as weed): they form one raft cluster through our bootstrap
// loop, the leader serves the block registry, and each follower's
// BlockMaster answers FailedPrecondition naming the leader's gRPC address
// (the launcher's leadership adapter).
func TestThreeMasters(t *testing.T) {
	if testing.Short() {
		t.Skip("three raft masters take a while; run without -short")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	type master struct {
		http, grpc string
		cmd        *exec.Cmd
		exited     chan struct{}
	}
	raceDir := t.TempDir()
	defer checkChildRaces(t, raceDir) // after the masters stopped (defers run LIFO)
	ms := make([]*master, 3)
	var peers []string
	for i := range ms {
		hp, gp := freePort(t), freePort(t)
		ms[i] = &master{http: fmt.Sprintf("127.0.0.1:%d", hp), grpc: fmt.Sprintf("127.0.0.1:%d", gp)}
		peers = append(peers, fmt.Sprintf("127.0.0.1:%d.%d", hp, gp))
	}
	for i, m := range ms {
		dir := t.TempDir()
		_, hp, _ := strings.Cut(m.http, ":")
		_, gp, _ := strings.Cut(m.grpc, ":")
		m.cmd = exec.Command(exe, "-logdir="+dir, "master", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
			"-port="+hp, "-port.grpc="+gp, "-mdir="+dir, "-peers="+strings.Join(peers, ","),
			"-telemetry=false", "-electionTimeout=2s")
		m.cmd.Env = append(os.Environ(), childEnvs(raceDir)...)
		logf, err := os.Create(filepath.Join(dir, "master.log"))
		if err != nil {
			t.Fatal(err)
		}
		defer logf.Close()
		m.cmd.Stdout, m.cmd.Stderr = logf, logf
		if err := m.cmd.Start(); err != nil {
			t.Fatalf("master %d: %v", i, err)
		}
		m.exited = make(chan struct{})
		go func() { m.cmd.Wait(); close(m.exited) }()
		defer func() {
			m.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-m.exited:
			case <-time.After(30 * time.Second):
				m.cmd.Process.Kill()
				<-m.exited
			}
		}()
	}

	var leader string // leader's http address as every master reports it
	eventually(t, 90*time.Second, func() error {
		seen := map[string]bool{}
		for _, m := range ms {
			resp, err := http.Get("http://" + m.http + "/cluster/status")
			if err != nil {
				return err
			}
			var st struct {
				IsLeader bool
				Leader   string
			}
			err = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if err != nil {
				return err
			}
			if st.Leader == "" {
				return fmt.Errorf("%s: no leader yet", m.http)
			}
			seen[st.Leader] = true
			leader = st.Leader
		}
		if len(seen) != 1 {
			return fmt.Errorf("masters disagree on the leader: %v", seen)
		}
		return nil
	})
	var leaderGRPC string
	for _, m := range ms {
		if strings.HasPrefix(leader, m.http) {
			leaderGRPC = m.grpc
		}
	}
	if leaderGRPC == "" {
		t.Fatalf("leader %q is none of %v", leader, peers)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, m := range ms {
		cc, err := grpc.NewClient(m.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		_, err = blockpb.NewBlockMasterClient(cc).ListVolumes(ctx, &blockpb.ListVolumesRequest{})
		cc.Close()
		if m.grpc == leaderGRPC {
			if err != nil {
				t.Errorf("leader %s ListVolumes: %v", m.grpc, err)
			}
			continue
		}
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), leaderGRPC) {
			t.Errorf("follower %s ListVolumes: %v; want FailedPrecondition naming %s", m.grpc, err, leaderGRPC)
		}
	}
}

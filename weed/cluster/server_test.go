package cluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"net/http"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// TestServerCommand runs `weed server` (this test binary as weed) with a
// block directory: SeaweedFS file upload works, a block volume created
// through the BlockMaster service on the master's gRPC port is served
// over NBD by the embedded volume server, and SIGTERM stops the process
// with status 0.
func TestServerCommand(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	mp, mg, vp, vg := freePort(t), freePort(t), freePort(t), freePort(t)
	nbd, metrics := freePort(t), freePort(t)
	cmd := exec.Command(exe, "-logdir="+dir, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-dir="+dir,
		"-master.port="+strconv.Itoa(mp), "-master.port.grpc="+strconv.Itoa(mg), "-master.telemetry=false", "-metricsPort="+strconv.Itoa(metrics),
		"-volume.port="+strconv.Itoa(vp), "-volume.port.grpc="+strconv.Itoa(vg), "-volume.preStopSeconds=0",
		"-volume.block.dir="+filepath.Join(dir, "block"), fmt.Sprintf("-volume.block.nbd=127.0.0.1:%d", nbd),
		fmt.Sprintf("-volume.block.iscsi=127.0.0.1:%d", freePort(t)), fmt.Sprintf("-volume.block.repl=127.0.0.1:%d", freePort(t)))
	cmd.Env = append(os.Environ(), childEnvs(dir)...)
	logf, err := os.Create(filepath.Join(dir, "server.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	defer func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	}()
	dumpLog := func() string {
		b, _ := os.ReadFile(filepath.Join(dir, "server.log"))
		if i := bytes.Index(b, []byte("WARNING: DATA RACE")); i >= 0 {
			return string(b[i:min(len(b), i+8000)]) // a race-built child exits 66 after a race
		}
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		return string(b)
	}
	masterHTTP := fmt.Sprintf("127.0.0.1:%d", mp)
	eventually(t, time.Minute, func() error {
		resp, err := http.Get("http://" + masterHTTP + "/cluster/status")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	uploadAndRead(t, masterHTTP)

	cc, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", mg), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	bm := blockpb.NewBlockMasterClient(cc)
	var info *blockpb.VolumeInfo
	eventually(t, time.Minute, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if info == nil {
			r, err := bm.CreateVolume(ctx, &blockpb.CreateVolumeRequest{Spec: &blockpb.VolumeSpec{
				Name: "srv1", SizeBytes: 16 << 20, BlockSize: 4096, ReplicationFactor: 1}})
			if err != nil {
				return err
			}
			info = r.GetVolume()
		}
		r, err := bm.LookupVolume(ctx, &blockpb.LookupVolumeRequest{Name: "srv1"})
		if err != nil {
			return err
		}
		if r.GetVolume().GetState() != devReadyState {
			return fmt.Errorf("state %q", r.GetVolume().GetState())
		}
		info = r.GetVolume()
		return nil
	})
	if want := fmt.Sprintf("nbd://127.0.0.1:%d/srv1", nbd); info.GetNbdUri() != want {
		t.Errorf("NBD URI %q, want %q", info.GetNbdUri(), want)
	}
	in := filepath.Join(dir, "in.bin")
	block := make([]byte, 4096) // the export takes whole blocks
	copy(block, "written through weed server's NBD export")
	if err := os.WriteFile(in, block, 0o644); err != nil {
		t.Fatal(err)
	}
	runTool(t, "nbdcopy", in, info.GetNbdUri())

	// Both block plugins' metrics are on upstream's metrics endpoint.
	_, text := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", metrics))
	for _, name := range []string{"weedblock_master_volumes", "weedblock_volume_server_volumes", "SeaweedFS_master_"} {
		if !strings.Contains(text, name) {
			t.Errorf("metrics endpoint lacks %s", name)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("weed server after SIGTERM: %v\n%s", waitErr, dumpLog())
		}
	case <-time.After(time.Minute):
		t.Fatalf("weed server did not stop after SIGTERM\n%s", dumpLog())
	}
	checkChildRaces(t, dir)
}

package test

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// TestPluginAllInOneServer runs `weed server` (master and volume server in
// one process, with the volume server's block flags under the "volume."
// prefix) and checks that block volumes and upstream files both work.
func TestPluginAllInOneServer(t *testing.T) {
	requireOwnCluster(t)
	requireTools(t, "nbdcopy", "qemu-img")
	dir := t.TempDir()
	p := freePorts(t, 7)
	c := &testCluster{t: t,
		masterHTTP: "127.0.0.1:" + strconv.Itoa(p[0]),
		masterArg:  "127.0.0.1:" + strconv.Itoa(p[0]) + "." + strconv.Itoa(p[1]),
	}
	vs := &volumeServer{
		http:  "127.0.0.1:" + strconv.Itoa(p[2]),
		grpc:  "127.0.0.1:" + strconv.Itoa(p[3]),
		nbd:   "127.0.0.1:" + strconv.Itoa(p[4]),
		iscsi: "127.0.0.1:" + strconv.Itoa(p[5]),
		repl:  "127.0.0.1:" + strconv.Itoa(p[6]),
		dir:   dir,
	}
	vs.weedProc = newProc(t, "server", "-logdir="+dir, "server",
		"-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-dir="+dir,
		"-master.port="+strconv.Itoa(p[0]), "-master.port.grpc="+strconv.Itoa(p[1]),
		"-master.volumeSizeLimitMB=64", "-master.peers=none",
		"-volume.port="+strconv.Itoa(p[2]), "-volume.port.grpc="+strconv.Itoa(p[3]),
		"-volume.max=8", "-volume.preStopSeconds=0",
		"-volume.block.dir="+filepath.Join(dir, "block"), "-volume.block.nbd="+vs.nbd,
		"-volume.block.iscsi="+vs.iscsi, "-volume.block.repl="+vs.repl)
	c.master = vs.weedProc
	c.volumes = []*volumeServer{vs}
	vs.start()
	c.waitMaster()
	c.waitVolume(vs)

	name := "allinone"
	c.create("-name=" + name + " -size=32MiB")
	v := c.waitServing(name, time.Minute)
	if v.Primary != vs.http || v.Attach.NBDURI != "nbd://"+vs.nbd+"/"+name || v.Attach.ISCSIPortal != vs.iscsi {
		t.Fatalf("block.status: primary %s attach %+v; want the server's own listeners", v.Primary, v.Attach)
	}
	data := randomData(8<<20, 5)
	src := filepath.Join(dir, "src.img")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, 2*time.Minute, "nbdcopy", "--flush", src, v.Attach.NBDURI)
	checkImage(t, "iSCSI read of the all-in-one server", readImage(t, v.iscsiURI(), dir), 32<<20, []region{{0, data}})

	checkUpstreamFiles(t, c.masterHTTP)

	c.mustShell("block.delete -name=" + name)
	vs.stop(syscall.SIGTERM)
}

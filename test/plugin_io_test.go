package test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPluginNBDWriteISCSIReadAcrossRestarts is the acceptance run:
// a volume created with `weed shell`, 64 MiB written with nbdcopy, read
// back over iSCSI (QEMU's libiscsi driver); then the primary's volume
// server restarts (data intact, the volume opens fenced and is writable
// again once the master re-confirms it), the master stops answering
// (the lease runs out: writes refused, reads served), and the master
// restarts (registry intact, no epoch goes backwards, the volume keeps
// serving).
func TestPluginNBDWriteISCSIReadAcrossRestarts(t *testing.T) {
	requireTools(t, "nbdcopy", "qemu-img", "qemu-io", "iscsi-ls")
	const (
		volSize   = 256 << 20
		writeSize = 64 << 20
	)
	c := startCluster(t, 2)
	name := uniqueName("io1")
	c.create("-name=" + name + " -size=256MiB")
	t.Cleanup(func() { c.shell("block.delete -force -name=" + name) })
	v := c.waitServing(name, time.Minute)

	dir := t.TempDir()
	data := randomData(writeSize, 11)
	src := filepath.Join(dir, "src.img")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	// The portal block.status names lists the volume's target.
	ls := mustRun(t, time.Minute, "iscsi-ls", "-s", "iscsi://"+v.Attach.ISCSIPortal)
	if err := contains(ls, "Target:"+v.Attach.ISCSIIQN, "Lun:0"); err != nil {
		t.Fatalf("iscsi-ls %s: %v\n%s", v.Attach.ISCSIPortal, err, ls)
	}
	mustRun(t, 3*time.Minute, "nbdcopy", "--flush", src, v.Attach.NBDURI)
	// want is the volume's expected content, as regions over zeros.
	want := []region{{0, data}}
	checkImage(t, "iSCSI read after the NBD write", readImage(t, v.iscsiURI(), dir), volSize, want)

	t.Run("volume server restart", func(t *testing.T) {
		requireOwnCluster(t)
		vs := c.volumeFor(v.Primary)
		before := len(vs.output())
		vs.stop(syscall.SIGTERM)
		vs.start()
		c.waitVolume(vs)
		after := c.waitServing(name, time.Minute)
		log := vs.output()[before:]
		if !strings.Contains(log, "opened") || !strings.Contains(log, name+".blk fenced") {
			t.Fatalf("the restarted server did not open %s fenced:\n%s", name, tail(log, 4000))
		}
		if after.Epoch < v.Epoch || after.Primary != v.Primary {
			t.Fatalf("after the restart: epoch %d primary %s, before epoch %d primary %s", after.Epoch, after.Primary, v.Epoch, v.Primary)
		}
		checkImage(t, "NBD read after the volume server restart", readImage(t, after.Attach.NBDURI, dir), volSize, want)
		qemuIO(t, after.Attach.NBDURI, "write -P 0x5a 100M 1M")
		want = append(want, region{100 << 20, bytes.Repeat([]byte{0x5a}, 1<<20)})
	})

	t.Run("volume server crash", func(t *testing.T) {
		requireOwnCluster(t)
		// A flushed write survives kill -9 of the primary's server.
		qemuIO(t, v.Attach.NBDURI, "write -P 0xc3 150M 256k", "flush")
		vs := c.volumeFor(v.Primary)
		vs.stop(syscall.SIGKILL)
		vs.start()
		c.waitVolume(vs)
		after := c.waitServing(name, time.Minute)
		if after.Epoch < v.Epoch {
			t.Fatalf("epoch went backwards across the crash: %d -> %d", v.Epoch, after.Epoch)
		}
		qemuIO(t, after.Attach.NBDURI, "read -P 0xc3 150M 256k", "read -P 0x5a 100M 1M")
		want = append(want, region{150 << 20, bytes.Repeat([]byte{0xc3}, 256<<10)})
	})

	t.Run("lease runs out without the master", func(t *testing.T) {
		requireOwnCluster(t)
		c.master.signal(syscall.SIGSTOP)
		stopped := true
		defer func() {
			if stopped {
				c.master.signal(syscall.SIGCONT)
			}
		}()
		// The primary's lease (3 s) ends; from then on writes are refused.
		waitFor(t, 30*time.Second, "writes are refused without the master", func() error {
			r := runCmd(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x66 120M 4k", v.Attach.NBDURI)
			if r.code == 0 && !strings.Contains(r.stdout+r.stderr, "failed") {
				return fmt.Errorf("write accepted: %s", strings.TrimSpace(r.stdout))
			}
			t.Logf("write without the master: exit %d: %s", r.code, strings.TrimSpace(r.stdout+r.stderr))
			return nil
		})
		// Reads go on.
		qemuIO(t, v.Attach.NBDURI, "read -P 0x5a 100M 1M")
		c.master.signal(syscall.SIGCONT)
		stopped = false
		waitFor(t, time.Minute, "writes are accepted again once the master answers", func() error {
			r := runCmd(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x77 120M 4k", v.Attach.NBDURI)
			if r.code != 0 || strings.Contains(r.stdout+r.stderr, "failed") {
				return fmt.Errorf("write refused: %s", strings.TrimSpace(r.stdout+r.stderr))
			}
			return nil
		})
		want = append(want, region{120 << 20, bytes.Repeat([]byte{0x77}, 4096)})
	})

	t.Run("master restart", func(t *testing.T) {
		requireOwnCluster(t)
		before, err := c.status(name)
		if err != nil {
			t.Fatal(err)
		}
		c.master.stop(syscall.SIGTERM)
		// The volume server keeps serving reads while the master is away.
		qemuIO(t, v.Attach.NBDURI, "read -P 0x77 120M 4k")
		c.master.start()
		c.waitMaster()
		after := c.waitServing(name, 90*time.Second)
		if after.Epoch < before.Epoch {
			t.Fatalf("epoch went backwards across the master restart: %d -> %d", before.Epoch, after.Epoch)
		}
		if after.SizeBytes != volSize || after.Primary != before.Primary {
			t.Fatalf("registry changed across the restart: %+v, before %+v", after, before)
		}
		for _, r := range after.Replicas {
			if r.Epoch < before.Epoch {
				t.Fatalf("replica %s reports epoch %d, below %d", r.ServerID, r.Epoch, before.Epoch)
			}
		}
		if l := c.mustShell("block.list"); !strings.Contains(l, name) {
			t.Fatalf("block.list after the master restart:\n%s", l)
		}
		qemuIO(t, after.Attach.NBDURI, "write -P 0x99 200M 64k")
		want = append(want, region{200 << 20, bytes.Repeat([]byte{0x99}, 64<<10)})
		checkImage(t, "iSCSI read after the master restart", readImage(t, after.iscsiURI(), dir), volSize, want)
	})
}

// region is expected content at an offset.
type region struct {
	off  int64
	data []byte
}

// readImage copies the whole disk at uri (nbd:// or iscsi://) into a file
// with qemu-img and returns its path.
func readImage(t *testing.T, uri, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "read.img")
	os.Remove(out)
	mustRun(t, 3*time.Minute, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, out)
	return out
}

// checkImage compares the file at path with size bytes of zeros overlaid
// with regions (later regions win), streaming.
func checkImage(t *testing.T, what, path string, size int64, regions []region) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != size {
		t.Fatalf("%s: %d bytes, want %d", what, st.Size(), size)
	}
	const chunk = 1 << 20
	r := bufio.NewReaderSize(f, chunk)
	got := make([]byte, chunk)
	want := make([]byte, chunk)
	for off := int64(0); off < size; off += chunk {
		if _, err := io.ReadFull(r, got); err != nil {
			t.Fatalf("%s: read at %d: %v", what, off, err)
		}
		clear(want)
		for _, rg := range regions {
			lo, hi := max(rg.off, off), min(rg.off+int64(len(rg.data)), off+chunk)
			if lo < hi {
				copy(want[lo-off:hi-off], rg.data[lo-rg.off:hi-rg.off])
			}
		}
		if d := firstDiff(got, want); d != "" {
			t.Fatalf("%s: in the MiB at offset %d: %s", what, off, d)
		}
	}
}

// qemuIO runs qemu-io commands on uri (one connection) that must succeed.
func qemuIO(t *testing.T, uri string, commands ...string) {
	t.Helper()
	args := []string{"-f", "raw"}
	for _, c := range commands {
		args = append(args, "-c", c)
	}
	r := runCmd(t, time.Minute, "qemu-io", append(args, uri)...)
	if r.code != 0 || strings.Contains(r.stdout+r.stderr, "failed") {
		t.Fatalf("qemu-io %q %s: exit %d\n%s%s", commands, uri, r.code, r.stdout, r.stderr)
	}
}

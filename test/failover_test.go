package test

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fioJob is a random-write job over NBD whose blocks carry crc32c verify
// headers; every 32 writes are followed by a FLUSH and the job ends with
// one, so everything it wrote is flushed when it exits 0.
func fioJob(uri string, extra ...string) []string {
	return append([]string{
		"--name=failover", "--ioengine=nbd", "--uri=" + uri, "--rw=randwrite", "--bs=4k",
		"--iodepth=8", "--size=16M", "--randseed=7", "--verify=crc32c", "--verify_fatal=1",
		"--fsync=32", "--end_fsync=1", "--output-format=terse", "--verify_state_save=0",
	}, extra...)
}

// nbdWrite writes 4 KiB with qemu-io at off and flushes; it reports
// whether the write was acknowledged, and the output.
func nbdWrite(t *testing.T, uri string, off int64, pattern byte) (bool, string) {
	t.Helper()
	r := runCmd(t, time.Minute, "qemu-io", "-f", "raw",
		"-c", fmt.Sprintf("write -P 0x%02x %d 4k", pattern, off), "-c", "flush", uri)
	out := strings.TrimSpace(r.stdout + r.stderr)
	return r.code == 0 && !strings.Contains(out, "failed"), out
}

// waitPrimary waits until the master names primary (a server id) primary
// of name in an epoch after epoch and that primary serves it.
func (c *testCluster) waitPrimary(name, primary string, epoch uint64, timeout time.Duration) volumeView {
	c.t.Helper()
	var v volumeView
	waitFor(c.t, timeout, name+" promoted to "+primary, func() error {
		var err error
		if v, err = c.status(name); err != nil {
			return err
		}
		if v.Primary != primary || v.Epoch <= epoch {
			return fmt.Errorf("primary %s epoch %d (state %s)", v.Primary, v.Epoch, v.State)
		}
		return v.primaryServing()
	})
	return v
}

// waitMember waits until id is a replica of name in the current epoch.
func (c *testCluster) waitMember(name, id string, timeout time.Duration) volumeView {
	c.t.Helper()
	var v volumeView
	waitFor(c.t, timeout, id+" is a replica of "+name+" again", func() error {
		var err error
		if v, err = c.status(name); err != nil {
			return err
		}
		for _, r := range v.Replicas {
			if r.ServerID == id && r.Role == "replica" && r.Epoch == v.Epoch && r.Alive {
				return nil
			}
		}
		return errors.New("not a current replica yet")
	})
	return v
}

// createRF2 creates a 64 MiB RF=2 sync volume on a two-server cluster and
// waits until it serves; it returns the name, the volume's first view and
// the servers of its primary and of its replica.
func (c *testCluster) createRF2(prefix string) (string, volumeView, *volumeServer, *volumeServer) {
	c.t.Helper()
	name := uniqueName(prefix)
	c.create("-name=" + name + " -size=64MiB -rf=2 -durability=sync")
	v := c.waitServing(name, time.Minute)
	if len(v.Replicas) != 2 {
		c.t.Fatalf("rf=2 volume has %d replicas: %+v", len(v.Replicas), v)
	}
	return name, v, c.volumeFor(v.Primary), c.otherVolume(v.Primary)
}

// TestFailoverKillPrimaryThenStopPrimary: an RF=2 sync volume takes fio
// verify writes with flushes; kill -9 of the primary's server makes the
// master promote the replica, and fio verify_only against the new primary
// passes for everything flushed before the kill (the I/O pause is logged).
// The killed server returns fenced and is caught up and re-added as a
// replica. Then the new primary is SIGSTOPped past its lease: the master
// promotes the old one back, and after SIGCONT a write to the stopped
// server fails (EPERM) while verify_only passes on the promoted one.
func TestFailoverKillPrimaryThenStopPrimary(t *testing.T) {
	requireTools(t, "fio", "qemu-io")
	requireOwnCluster(t)
	c := startCluster(t, 2)
	name, v, first, second := c.createRF2("fo1")
	uri := func(vs *volumeServer) string { return vs.uri(name) }

	mustRun(t, 5*time.Minute, "fio", fioJob(uri(first), "--do_verify=0")...)
	// One last acknowledged, flushed write before the kill: the pause runs
	// from here to the first write the new primary acknowledges.
	if ok, out := nbdWrite(t, uri(first), 32<<20, 0x5a); !ok {
		t.Fatalf("write before the kill: %s", out)
	}
	lastAck := time.Now()
	first.stop(syscall.SIGKILL)

	var firstAck time.Time
	waitFor(t, 60*time.Second, "the replica acknowledges a write as the new primary", func() error {
		ok, out := nbdWrite(t, uri(second), 32<<20+4096, 0x6b)
		if !ok {
			return errors.New(out)
		}
		firstAck = time.Now()
		return nil
	})
	t.Logf("failover I/O pause (last write acked on the old primary -> first write acked on the new one): %v",
		firstAck.Sub(lastAck).Round(time.Millisecond))
	v2 := c.waitPrimary(name, second.http, v.Epoch, 30*time.Second)
	r := runCmd(t, 5*time.Minute, "fio", fioJob(uri(second), "--verify_only")...)
	if r.code != 0 {
		t.Fatalf("fio verify_only on the new primary: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	qemuIO(t, uri(second), "read -P 0x5a 32M 4k", "read -P 0x6b 33558528 4k")

	// The killed server returns: fenced, then caught up and re-added.
	first.start()
	c.waitVolume(first)
	if ok, out := nbdWrite(t, uri(first), 0, 0x11); ok || !strings.Contains(out, "Operation not permitted") {
		t.Fatalf("write to the returning old primary: acknowledged=%v: %s", ok, out)
	}
	v3 := c.waitMember(name, first.http, 60*time.Second)
	if v3.Primary != second.http || v3.Epoch <= v2.Epoch {
		t.Fatalf("after the re-add: primary %s epoch %d", v3.Primary, v3.Epoch)
	}
	if ok, out := nbdWrite(t, uri(second), 34<<20, 0x7c); !ok {
		t.Fatalf("write after the re-add: %s", out)
	}

	// SIGSTOP the primary past its lease: the re-added replica is promoted.
	second.signal(syscall.SIGSTOP)
	stopped := true
	defer func() {
		if stopped {
			second.signal(syscall.SIGCONT)
		}
	}()
	c.waitPrimary(name, first.http, v3.Epoch, 60*time.Second)
	second.signal(syscall.SIGCONT)
	stopped = false
	if ok, out := nbdWrite(t, uri(second), 0, 0x22); ok || !strings.Contains(out, "Operation not permitted") {
		t.Fatalf("write to the resumed old primary: acknowledged=%v: %s", ok, out)
	}
	r = runCmd(t, 5*time.Minute, "fio", fioJob(uri(first), "--verify_only")...)
	if r.code != 0 {
		t.Fatalf("fio verify_only after the second failover: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	qemuIO(t, uri(first), "read -P 0x5a 32M 4k", "read -P 0x6b 33558528 4k", "read -P 0x7c 34M 4k")
}

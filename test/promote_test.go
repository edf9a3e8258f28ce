package test

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPromoteForceOverUnshippedWrites: an operator force-promotes the
// replica of an RF=2 sync volume while the live primary holds writes the
// replica never received (acknowledged, never flushed). The replica's
// data path is cut for real: it is killed (its connection from the
// primary dies with it) and restarted listening for replication on
// another port, so the primary — which still has the old address — can
// ship nothing to it, while the master sees it alive and a member.
// (SIGSTOP would not cut it: the kernel keeps accepting the primary's
// bytes and hands them over on SIGCONT.)
//
// After `block.promote -force` the old primary is fenced (an NBD write
// fails), the new primary serves exactly the data from before the
// unshipped write, the old primary never serves those writes (its reads
// fail or return the new primary's data), and it rejoins through the
// recovery path (truncate or rebuild). Then both copies equal the new
// primary's data byte for byte — through its NBD export and again after a
// failover back to the old primary — and fio verifies the region the
// unshipped write had overwritten.
func TestPromoteForceOverUnshippedWrites(t *testing.T) {
	requireTools(t, "fio", "nbdcopy", "qemu-io")
	requireOwnCluster(t)
	c := startCluster(t, 2)
	name := uniqueName("promote-gap")
	v, prim, repl := recoveryVolume(t, c, name)

	base := fioSpan{name: "base", off: 0, size: 16 << 20, seed: 51}
	base.write(t, prim.uri(name))
	want := mustReadAll(t, prim.uri(name), volSize)
	sameData(t, "the replica's copy before the cut", mustReadAll(t, repl.uri(name), volSize), want)
	before, err := localStatus(prim, name)
	if err != nil {
		t.Fatal(err)
	}

	// Cut the replica off, then write 2 MiB over the base on the primary,
	// acknowledged and never flushed (a sync FLUSH would wait for the
	// replica and get it removed from the epoch).
	repl.stop(syscall.SIGKILL)
	mustRun(t, time.Minute, "fio", "--name=unshipped", "--ioengine=nbd", "--uri="+prim.uri(name),
		"--rw=write", "--bs=64k", "--iodepth=4", "--offset=4M", "--size=2M", "--buffer_pattern=0xab",
		"--output-format=terse")
	if r := runCmd(t, time.Minute, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0xab 4M 2M", prim.uri(name)); r.code != 0 || strings.Contains(r.stdout+r.stderr, "fail") {
		t.Fatalf("the primary does not serve the unflushed write: %s%s", r.stdout, r.stderr)
	}
	after, err := localStatus(prim, name)
	if err != nil {
		t.Fatal(err)
	}
	if after.HeadLSN <= before.HeadLSN {
		t.Fatalf("the primary's head did not move with the unflushed write: %d -> %d", before.HeadLSN, after.HeadLSN)
	}

	restartCutOff(t, c, name, repl, v.Epoch)
	rep, err := localStatus(repl, name)
	if err != nil {
		t.Fatal(err)
	}
	if rep.HeadLSN >= after.HeadLSN {
		t.Fatalf("the cut replica's head %d reached the primary's %d: the write was shipped", rep.HeadLSN, after.HeadLSN)
	}
	t.Logf("primary head %d (before the unflushed write %d); cut replica head %d", after.HeadLSN, before.HeadLSN, rep.HeadLSN)

	w := watchRecovery(t, repl, name, prim.http)
	out := c.mustShell("block.promote -name=" + name + " -to=" + repl.http + " -force")
	t.Logf("block.promote -force:\n%s", out)
	v2 := c.waitPrimary(name, repl.http, v.Epoch, 60*time.Second)

	// The old primary is fenced and never serves the unshipped write.
	if ok, out := nbdWrite(t, prim.uri(name), 0, 0x11); ok || !strings.Contains(out, "Operation not permitted") {
		t.Fatalf("write to the live old primary after the forced promote: acknowledged=%v: %s", ok, out)
	}
	if data, out, ok := readAll(t, prim.uri(name)); ok {
		sameData(t, "what the old primary serves after the promote", data, want)
	} else {
		t.Logf("the old primary refuses reads after the promote: %s", tail(out, 300))
	}
	sameData(t, "the new primary's copy (it never had the unshipped write)", mustReadAll(t, repl.uri(name), volSize), want)
	if h, err := c.history(name); err != nil {
		t.Fatal(err)
	} else if e, ok := h.find(v.Epoch, repl.http); !ok || !e.MayHaveLostWrites || e.Primary != repl.http {
		t.Fatalf("the forced promote's epoch is not marked may_have_lost_writes:\n%v", h)
	}

	// A flushed write on the new primary, then the old primary rejoins.
	qemuIO(t, repl.uri(name), "write -P 0x5c 40M 1M", "flush")
	copy(want[40<<20:41<<20], pattern(0x5c, 1<<20))
	v3 := c.waitMember(name, prim.http, 90*time.Second)
	if v3.Primary != repl.http || v3.Epoch <= v2.Epoch {
		t.Fatalf("after the old primary rejoined: primary %s epoch %d", v3.Primary, v3.Epoch)
	}
	seen := w.waitFor(t, 30*time.Second, "a finished truncation or rebuild", func(seen []recoveryView) error {
		for _, r := range finished(seen) {
			if strings.HasPrefix(r.Plan, "truncate") || strings.HasPrefix(r.Plan, "rebuild") {
				return nil
			}
		}
		return errors.New("no truncation or rebuild finished in sync")
	})
	w.close()
	t.Logf("recovery of the old primary: %v", seen)
	for _, r := range seen {
		if r.Plan == "" {
			continue
		}
		if !strings.HasPrefix(r.Plan, "truncate") && !strings.HasPrefix(r.Plan, "rebuild") {
			t.Fatalf("the old primary, holding records the new primary never had, was first planned %q", r.Plan)
		}
		break
	}
	sameData(t, "the new primary's copy", mustReadAll(t, repl.uri(name), volSize), want)
	sameData(t, "the rejoined old primary's copy", mustReadAll(t, prim.uri(name), volSize), want)

	// Fail back: the old primary serves exactly the new primary's data.
	repl.stop(syscall.SIGKILL)
	c.waitPrimary(name, prim.http, v3.Epoch, 60*time.Second)
	sameData(t, "the old primary's copy after the failover back", mustReadAll(t, prim.uri(name), volSize), want)
	base.verify(t, prim.uri(name), "on the old primary after the failover back")
}

// TestPromoteUnderLoadEndsWhole: an operator promotes the replica of an
// RF=2 sync volume (no force) while fio keeps writing to the primary, and
// the replica's data path has been cut (as in the forced test above) so
// that the primary holds unflushed writes the replica never got. The old
// primary stays a member of the new epoch, so it has diverged: it loses
// those writes through the recovery path and is re-added. The volume ends
// whole and stays so: the old primary is a replica of the current epoch,
// the epoch stops moving (a re-added member sent to a rebuild again would
// be removed and re-added every second or so), and both copies hold the
// new primary's data byte for byte.
func TestPromoteUnderLoadEndsWhole(t *testing.T) {
	requireTools(t, "fio", "nbdcopy", "qemu-io")
	requireOwnCluster(t)
	c := startCluster(t, 2)
	name := uniqueName("promote-load")
	v, prim, repl := recoveryVolume(t, c, name)

	// fio writes without flushing until the old primary refuses (EPERM
	// ends the job) or its time runs out.
	load := exec.Command("fio", "--name=load", "--ioengine=nbd", "--uri="+prim.uri(name),
		"--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=32M", "--time_based", "--runtime=120",
		"--output-format=terse")
	var loadOut bytes.Buffer
	load.Stdout, load.Stderr = &loadOut, &loadOut
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	loadDone := make(chan error, 1)
	go func() { loadDone <- load.Wait() }()
	defer func() {
		if load.ProcessState == nil {
			load.Process.Kill()
			<-loadDone
		}
	}()
	time.Sleep(time.Second)
	repl.stop(syscall.SIGKILL)
	restartCutOff(t, c, name, repl, v.Epoch)
	time.Sleep(time.Second)
	if load.ProcessState != nil {
		t.Fatalf("fio on the primary ended before the promote: %s", tail(loadOut.String(), 300))
	}
	waitFor(t, 30*time.Second, "the promote accepted", func() error {
		r := c.shell("block.promote -name=" + name + " -to=" + repl.http)
		if r.code != 0 || strings.Contains(r.stderr, "error: ") {
			return fmt.Errorf("block.promote: %s", strings.TrimSpace(r.stderr))
		}
		return nil
	})
	v2 := c.waitPrimary(name, repl.http, v.Epoch, 60*time.Second)
	select {
	case err := <-loadDone:
		t.Logf("fio on the old primary ended (%v): %s", err, tail(loadOut.String(), 300))
	case <-time.After(60 * time.Second):
		t.Fatal("fio on the old primary still runs a minute after the promote")
	}
	if ok, out := nbdWrite(t, prim.uri(name), 0, 0x11); ok || !strings.Contains(out, "Operation not permitted") {
		t.Fatalf("write to the old primary after the promote: acknowledged=%v: %s", ok, out)
	}

	qemuIO(t, repl.uri(name), "write -P 0x5c 40M 1M", "flush")
	v3 := c.waitMember(name, prim.http, 90*time.Second)
	if v3.Primary != repl.http || v3.Epoch < v2.Epoch {
		t.Fatalf("after the old primary rejoined: primary %s epoch %d", v3.Primary, v3.Epoch)
	}
	// It stays: no more epochs.
	time.Sleep(5 * time.Second)
	now, err := c.status(name)
	if err != nil {
		t.Fatal(err)
	}
	if now.Epoch != v3.Epoch || now.Primary != repl.http {
		t.Fatalf("the epoch moved from %d to %d (primary %s) after the old primary rejoined", v3.Epoch, now.Epoch, now.Primary)
	}
	// A flushed write reaches both copies; then they are equal.
	qemuIO(t, repl.uri(name), "write -P 0x6d 48M 1M", "flush")
	want := mustReadAll(t, repl.uri(name), volSize)
	if !bytes.Equal(want[48<<20:49<<20], pattern(0x6d, 1<<20)) || !bytes.Equal(want[40<<20:41<<20], pattern(0x5c, 1<<20)) {
		t.Fatal("the new primary lost its own flushed writes")
	}
	sameData(t, "the rejoined old primary's copy", mustReadAll(t, prim.uri(name), volSize), want)
}

// restartCutOff starts the stopped replica repl of name listening for
// replication on another port, so the primary (which still has the old
// address) can ship it nothing, and waits until it reports its copy as a
// member of epoch, which must not have moved.
func restartCutOff(t *testing.T, c *testCluster, name string, repl *volumeServer, epoch uint64) {
	t.Helper()
	repl.moveRepl(t)
	repl.start()
	c.waitVolume(repl)
	waitFor(t, 60*time.Second, "the restarted replica reports its copy as a member", func() error {
		cur, err := c.status(name)
		if err != nil {
			return err
		}
		if cur.Epoch != epoch {
			return fmt.Errorf("epoch moved from %d to %d: the cut replica must stay a member for this test", epoch, cur.Epoch)
		}
		for _, r := range cur.Replicas {
			if r.ServerID == repl.http && r.Alive && r.Reported && r.Epoch == epoch {
				return nil
			}
		}
		return fmt.Errorf("not reported yet: %+v", cur.Replicas)
	})
}

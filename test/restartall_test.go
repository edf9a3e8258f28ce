package test

import (
	"syscall"
	"testing"
	"time"
)

// TestEveryCopyKilledThenRestarted: both servers of an RF=2 sync volume
// are killed (-9) together, as in a rack losing power; the replica comes
// back first. In "primary-back-soon" the old primary returns at once (the
// master confirms it again); in "replica-promoted" only after the master
// promoted the lone replica (the old primary rejoins as a replica). Either
// way the volume serves again with every write flushed before the kill
// (fio verify_only), takes new writes, and both copies end up members of
// the current epoch.
func TestEveryCopyKilledThenRestarted(t *testing.T) {
	t.Run("primary-back-soon", func(t *testing.T) { testEveryCopyKilled(t, false) })
	t.Run("replica-promoted", func(t *testing.T) { testEveryCopyKilled(t, true) })
}

func testEveryCopyKilled(t *testing.T, promoteFirst bool) {
	requireTools(t, "fio", "qemu-io")
	requireOwnCluster(t)
	c := startCluster(t, 2)
	name, v, primary, replica := c.createRF2("ka")
	uri := func(vs *volumeServer) string { return vs.uri(name) }

	mustRun(t, 5*time.Minute, "fio", fioJob(uri(primary), "--do_verify=0")...)
	if ok, out := nbdWrite(t, uri(primary), 32<<20, 0x5a); !ok {
		t.Fatalf("write before the kill: %s", out)
	}
	primary.stop(syscall.SIGKILL)
	replica.stop(syscall.SIGKILL)

	replica.start()
	c.waitVolume(replica)
	if promoteFirst {
		c.waitPrimary(name, replica.http, v.Epoch, 60*time.Second)
	}
	primary.start()
	c.waitVolume(primary)

	v2 := c.waitServing(name, 2*time.Minute)
	serving := c.volumeFor(v2.Primary)
	other := primary
	if serving == primary {
		other = replica
	}
	t.Logf("after the restart: epoch %d -> %d, primary %s (was %s)", v.Epoch, v2.Epoch, serving.name, primary.name)
	r := runCmd(t, 5*time.Minute, "fio", fioJob(uri(serving), "--verify_only")...)
	if r.code != 0 {
		t.Fatalf("fio verify_only on %s after the restart: exit %d\nstdout:\n%s\nstderr:\n%s", serving.name, r.code, r.stdout, r.stderr)
	}
	qemuIO(t, uri(serving), "read -P 0x5a 32M 4k")
	if ok, out := nbdWrite(t, uri(serving), 33<<20, 0x6b); !ok {
		t.Fatalf("write after the restart: %s", out)
	}
	v3 := c.waitMember(name, other.http, 90*time.Second)
	if v3.Epoch < v2.Epoch {
		t.Fatalf("epoch went back from %d to %d", v2.Epoch, v3.Epoch)
	}
	// Whole again: a flushed write is on the other copy too once it is a
	// member (sync), and everything reads back through the primary.
	if ok, out := nbdWrite(t, uri(c.volumeFor(v3.Primary)), 34<<20, 0x7c); !ok {
		t.Fatalf("write once whole: %s", out)
	}
	qemuIO(t, uri(c.volumeFor(v3.Primary)), "read -P 0x5a 32M 4k", "read -P 0x6b 33M 4k", "read -P 0x7c 34M 4k")
	r = runCmd(t, 5*time.Minute, "fio", fioJob(uri(c.volumeFor(v3.Primary)), "--verify_only")...)
	if r.code != 0 {
		t.Fatalf("fio verify_only once whole: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
}

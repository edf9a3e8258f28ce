package test

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// recoveryVolume creates an RF=2 sync volume of 64 MiB, waits until both
// copies are members and returns its status with the primary's and the
// replica's servers.
func recoveryVolume(t *testing.T, c *testCluster, name string) (volumeView, *volumeServer, *volumeServer) {
	t.Helper()
	c.create("-name=" + name + " -size=64MiB -rf=2 -durability=sync")
	v := c.waitServing(name, time.Minute)
	prim := c.volumeFor(v.Primary)
	repl := c.otherVolume(v.Primary)
	v = c.waitMember(name, repl.http, time.Minute)
	return v, prim, repl
}

const volSize = 64 << 20

// rebuilt accepts recovery entries once n rebuilds (plans starting with
// "rebuild") finished in sync.
func rebuilt(n uint64) func([]recoveryView) error {
	return func(seen []recoveryView) error {
		for _, r := range finished(seen) {
			if r.Rebuilds >= n && strings.HasPrefix(r.Plan, "rebuild") {
				return nil
			}
		}
		return fmt.Errorf("%d rebuild(s) not finished in sync", n)
	}
}

// TestRecoveryCatchUpAfterShortOutage: an RF=2 sync volume takes fio verify
// writes (a FLUSH every 32) on its primary while the replica is SIGSTOPped
// for 10 s. The primary drops it from the epoch (the FLUSH it waits for
// completes), and when it resumes it is caught up from the WAL — the
// primary's recovery report says catch-up, with no rebuild — and becomes a
// member again. Both copies are then byte-identical, fio verifies every
// block on the primary, and after kill -9 of the primary every flushed
// write verifies on the promoted, caught-up replica.
func TestRecoveryCatchUpAfterShortOutage(t *testing.T) {
	requireTools(t, "fio", "nbdcopy")
	requireOwnCluster(t)
	c := startCluster(t, 2)
	name := uniqueName("rec-catchup")
	v, prim, repl := recoveryVolume(t, c, name)

	// 200 writes/s for ~15 s: what the primary writes while the replica is
	// away (~2400 records, 4 KiB each padded to 8 KiB in the WAL) stays
	// well inside the WAL it keeps for returning copies (half of 64 MiB).
	job := fioSpan{name: "catchup", off: 0, size: 12 << 20, seed: 21}
	w := watchRecovery(t, prim, name, repl.http)
	fio := job.startWrite(t, prim.uri(name), 200)
	time.Sleep(3 * time.Second)
	repl.signal(syscall.SIGSTOP)
	stopped, stoppedAt := true, time.Now()
	sigcontOnExit(t, repl, &stopped)
	var dropped uint64
	waitFor(t, 30*time.Second, "the primary drops the stopped replica from the epoch", func() error {
		d, err := c.history(name)
		if err != nil {
			return err
		}
		h, ok := d.find(v.Epoch, "member "+repl.http+" removed")
		if !ok {
			return fmt.Errorf("not dropped yet: %v", d)
		}
		dropped = h.Epoch
		return nil
	})
	if !fio.running() {
		t.Fatalf("fio finished while the replica was stopped (%v after the stop): the outage did not overlap the writes; stdout:\n%s",
			time.Since(stoppedAt), fio.stdout.String())
	}
	time.Sleep(time.Until(stoppedAt.Add(10 * time.Second)))
	repl.signal(syscall.SIGCONT)
	stopped = false
	t.Logf("replica stopped for %v; dropped in epoch %d", time.Since(stoppedAt).Round(time.Millisecond), dropped)

	fio.wait(t, 3*time.Minute, "writes across the replica's outage")
	c.waitMember(name, repl.http, 90*time.Second)
	seen := w.waitFor(t, 30*time.Second, "a finished catch-up", func(seen []recoveryView) error {
		for _, r := range finished(seen) {
			if r.CatchUps > 0 && strings.HasPrefix(r.Plan, "catch-up") {
				return nil
			}
		}
		return errors.New("no catch-up finished in sync")
	})
	w.close()
	t.Logf("recovery of the replica: %v", seen)
	for _, r := range seen {
		if r.Rebuilds != 0 || r.ForcedRebuild || strings.HasPrefix(r.Plan, "rebuild") {
			t.Fatalf("a 10 s outage within the WAL's retention was rebuilt, want a catch-up only: %v", r)
		}
	}
	c.checkLeftAndRejoined(name, repl.http, v.Epoch, "removed")
	c.waitShellRecovery(name, repl.http, 1, 0, 0)

	job.verify(t, prim.uri(name), "on the primary after the catch-up")
	want := mustReadAll(t, prim.uri(name), volSize)
	sameData(t, "the caught-up replica's copy against the primary's", mustReadAll(t, repl.uri(name), volSize), want)

	cur, err := c.status(name)
	if err != nil {
		t.Fatal(err)
	}
	prim.stop(syscall.SIGKILL)
	c.waitPrimary(name, repl.http, cur.Epoch, 60*time.Second)
	job.verify(t, repl.uri(name), "on the promoted caught-up replica")
	sameData(t, "the promoted replica's copy against the old primary's", mustReadAll(t, repl.uri(name), volSize), want)
}

// TestRecoveryRebuildWipedReplica: the replica's volume file is deleted
// while it is down and it is restarted while fio writes to the primary.
// The copy comes back empty, is rebuilt (the primary's recovery report
// says rebuild) while the writes go on, and rejoins. Then the wipe is
// repeated with the primary SIGSTOPped: with only an empty or untrusted
// copy left, the master must not promote it — the failover stays
// blocked and an operator's promote without -force is refused — until the
// primary resumes and rebuilds it again. Finally kill -9 of the primary
// promotes the twice-rebuilt copy and every write fio flushed verifies on
// it.
func TestRecoveryRebuildWipedReplica(t *testing.T) {
	requireTools(t, "fio", "nbdcopy", "qemu-io")
	requireOwnCluster(t)
	c := startCluster(t, 2)
	name := uniqueName("rec-rebuild")
	v, prim, repl := recoveryVolume(t, c, name)

	a := fioSpan{name: "before", off: 0, size: 16 << 20, seed: 31}
	a.write(t, prim.uri(name))

	// Wipe the replica and bring it back while fio writes.
	b := fioSpan{name: "during", off: 16 << 20, size: 24 << 20, seed: 32}
	w := watchRecovery(t, prim, name, repl.http)
	fio := b.startWrite(t, prim.uri(name), 500)
	time.Sleep(2 * time.Second)
	repl.stop(syscall.SIGKILL)
	if err := os.Remove(repl.blockFile(name)); err != nil {
		t.Fatalf("delete the replica's volume file: %v", err)
	}
	repl.start()
	c.waitVolume(repl)
	if !fio.running() {
		t.Fatalf("fio finished before the wiped replica came back; stdout:\n%s", fio.stdout.String())
	}
	fio.wait(t, 3*time.Minute, "writes while the wiped replica returns")
	c.waitMember(name, repl.http, 90*time.Second)
	seen := w.waitFor(t, 30*time.Second, "a finished rebuild", rebuilt(1))
	t.Logf("recovery of the wiped replica: %v", seen)
	rep, err := localStatus(repl, name)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Untrusted || !rep.Healthy || rep.Role != "ROLE_REPLICA" {
		t.Fatalf("the rebuilt replica reports untrusted=%v healthy=%v role %s", rep.Untrusted, rep.Healthy, rep.Role)
	}
	d := c.checkLeftAndRejoined(name, repl.http, v.Epoch, "removed", "lost", "no copy", "untrusted")
	a.verify(t, prim.uri(name), "on the primary")
	b.verify(t, prim.uri(name), "on the primary")
	want := mustReadAll(t, prim.uri(name), volSize)
	sameData(t, "the rebuilt replica's copy against the primary's", mustReadAll(t, repl.uri(name), volSize), want)

	// Wipe it again, this time with the primary stopped: nothing may be
	// promoted from a copy that is missing or untrusted.
	repl.stop(syscall.SIGKILL)
	if err := os.Remove(repl.blockFile(name)); err != nil {
		t.Fatalf("delete the replica's volume file: %v", err)
	}
	prim.signal(syscall.SIGSTOP)
	stopped := true
	sigcontOnExit(t, prim, &stopped)
	repl.start()
	c.waitVolume(repl)
	waitFor(t, 60*time.Second, "the master finds no copy it may promote", func() error {
		h, err := c.history(name)
		if err != nil {
			return err
		}
		if h.Primary != prim.http {
			t.Fatalf("the master promoted %s while the only other copy was wiped:\n%v", h.Primary, h)
		}
		if h.FailoverBlocked == "" || strings.HasPrefix(h.FailoverBlocked, "waiting for the lease") {
			return fmt.Errorf("failover not blocked on candidates yet: %v", h)
		}
		return nil
	})
	if h, err := c.history(name); err == nil {
		t.Logf("with the primary stopped and the replica wiped: %v", h)
	}
	switch rep, err := localStatus(repl, name); {
	case errors.Is(err, errNoCopy):
		t.Logf("the wiped server holds no copy yet")
	case err != nil:
		t.Fatal(err)
	case !rep.Untrusted || !rep.Fenced:
		t.Fatalf("the wiped server's new copy reports untrusted=%v fenced=%v (role %s epoch %d): an empty copy must stay untrusted and fenced until rebuilt",
			rep.Untrusted, rep.Fenced, rep.Role, rep.Epoch)
	default:
		t.Logf("the wiped server holds an untrusted, fenced copy (role %s epoch %d)", rep.Role, rep.Epoch)
	}
	r := c.shell("block.promote -name=" + name + " -to=" + repl.http)
	if r.code == 0 && !strings.Contains(r.stderr, "error: ") {
		t.Fatalf("block.promote to the wiped copy succeeded:\n%s%s", r.stdout, r.stderr)
	}
	t.Logf("block.promote to the wiped copy refused: %s", strings.TrimSpace(r.stderr))
	if h, err := c.history(name); err != nil || h.Primary != prim.http {
		t.Fatalf("primary after the refused promote: %v (%v)", h, err)
	}
	prim.signal(syscall.SIGCONT)
	stopped = false
	cur := c.waitMember(name, repl.http, 2*time.Minute)
	if cur.Primary != prim.http {
		t.Fatalf("after the second rebuild the primary is %s, want %s", cur.Primary, prim.http)
	}
	seen = w.waitFor(t, 30*time.Second, "a second finished rebuild", rebuilt(2))
	w.close()
	t.Logf("recoveries of the wiped replica: %v", seen)
	if h, err := c.history(name); err == nil {
		for _, e := range h.History {
			if e.Epoch > d.Epoch && e.Primary == repl.http {
				t.Fatalf("epoch %d made the wiped copy primary:\n%v", e.Epoch, h)
			}
		}
	}

	prim.stop(syscall.SIGKILL)
	c.waitPrimary(name, repl.http, cur.Epoch, 60*time.Second)
	a.verify(t, repl.uri(name), "on the promoted rebuilt replica")
	b.verify(t, repl.uri(name), "on the promoted rebuilt replica")
	sameData(t, "the promoted rebuilt replica's copy against the old primary's", mustReadAll(t, repl.uri(name), volSize), want)
}

// TestRecoveryRepairForcedRebuild: block.repair -rebuild on the in-sync
// replica of an RF=2 volume while fio writes: the copy leaves the epoch,
// is rebuilt (a forced rebuild in the primary's recovery report) and
// rejoins; after kill -9 of the primary every flushed write verifies on
// the promoted copy.
func TestRecoveryRepairForcedRebuild(t *testing.T) {
	requireTools(t, "fio", "nbdcopy")
	requireOwnCluster(t)
	c := startCluster(t, 2)
	name := uniqueName("rec-repair")
	v, prim, repl := recoveryVolume(t, c, name)

	a := fioSpan{name: "before", off: 0, size: 16 << 20, seed: 41}
	a.write(t, prim.uri(name))
	b := fioSpan{name: "during", off: 16 << 20, size: 16 << 20, seed: 42}
	w := watchRecovery(t, prim, name, repl.http)
	fio := b.startWrite(t, prim.uri(name), 500)
	time.Sleep(time.Second)
	out := c.mustShell("block.repair -name=" + name + " -replica=" + repl.http + " -rebuild")
	t.Logf("block.repair:\n%s", out)
	if !strings.Contains(out, repl.http) {
		t.Fatalf("block.repair output does not name the repaired copy %s:\n%s", repl.http, out)
	}
	fio.wait(t, 3*time.Minute, "writes during the repair")
	cur := c.waitMember(name, repl.http, 90*time.Second)
	seen := w.waitFor(t, 30*time.Second, "a finished forced rebuild", func(seen []recoveryView) error {
		forced := false
		for _, r := range seen {
			forced = forced || r.ForcedRebuild
		}
		if !forced {
			return errors.New("no recovery entry says the rebuild was forced")
		}
		return rebuilt(1)(seen)
	})
	w.close()
	t.Logf("recovery of the repaired replica: %v", seen)
	c.checkLeftAndRejoined(name, repl.http, v.Epoch, "repair", "rebuild", "removed")
	c.waitShellRecovery(name, repl.http, 0, 1, 1)

	a.verify(t, prim.uri(name), "on the primary")
	b.verify(t, prim.uri(name), "on the primary")
	want := mustReadAll(t, prim.uri(name), volSize)
	sameData(t, "the repaired replica's copy against the primary's", mustReadAll(t, repl.uri(name), volSize), want)

	prim.stop(syscall.SIGKILL)
	c.waitPrimary(name, repl.http, cur.Epoch, 60*time.Second)
	a.verify(t, repl.uri(name), "on the promoted repaired replica")
	b.verify(t, repl.uri(name), "on the promoted repaired replica")
}

// TestRecoveryRF3TwoCopiesInOneOutage: an RF=3 sync volume under fio: one
// replica is SIGSTOPped for 8 s and dropped from the epoch; as it resumes
// the other replica is killed and restarted with its volume file deleted,
// so the primary recovers both at once while fio writes: the stopped one
// is caught up, the wiped one rebuilt, both rejoin, all three copies are
// byte-identical, and after kill -9 of the primary fio verifies every
// flushed write on the promoted copy.
func TestRecoveryRF3TwoCopiesInOneOutage(t *testing.T) {
	requireTools(t, "fio", "nbdcopy")
	requireOwnCluster(t)
	c := startCluster(t, 3)
	name := uniqueName("rec-rf3")
	c.create("-name=" + name + " -size=64MiB -rf=3 -durability=sync")
	v := c.waitServing(name, time.Minute)
	prim := c.volumeFor(v.Primary)
	var stopped, wiped *volumeServer
	for _, vs := range c.volumes {
		switch {
		case vs == prim:
		case stopped == nil:
			stopped = vs
		default:
			wiped = vs
		}
	}
	c.waitMember(name, stopped.http, time.Minute)
	v = c.waitMember(name, wiped.http, time.Minute)

	job := fioSpan{name: "rf3", off: 0, size: 12 << 20, seed: 61}
	ws := watchRecovery(t, prim, name, stopped.http)
	ww := watchRecovery(t, prim, name, wiped.http)
	fio := job.startWrite(t, prim.uri(name), 200)
	time.Sleep(2 * time.Second)
	stopped.signal(syscall.SIGSTOP)
	isStopped, stoppedAt := true, time.Now()
	sigcontOnExit(t, stopped, &isStopped)
	waitFor(t, 30*time.Second, "the primary drops the stopped replica", func() error {
		d, err := c.history(name)
		if err != nil {
			return err
		}
		if _, ok := d.find(v.Epoch, "member "+stopped.http+" removed"); !ok {
			return fmt.Errorf("not dropped yet: %v", d)
		}
		return nil
	})
	time.Sleep(time.Until(stoppedAt.Add(8 * time.Second)))
	// Both come back at once: the stopped one resumes as the other
	// restarts with its volume file deleted.
	wiped.stop(syscall.SIGKILL)
	if err := os.Remove(wiped.blockFile(name)); err != nil {
		t.Fatalf("delete the volume file: %v", err)
	}
	wiped.start()
	stopped.signal(syscall.SIGCONT)
	isStopped = false
	c.waitVolume(wiped)
	if !fio.running() {
		t.Fatalf("fio finished before both replicas returned; stdout:\n%s", fio.stdout.String())
	}
	fio.wait(t, 3*time.Minute, "writes across the outage of both replicas")

	c.waitMember(name, stopped.http, 90*time.Second)
	c.waitMember(name, wiped.http, 90*time.Second)
	seen := ws.waitFor(t, 30*time.Second, "a finished catch-up", func(seen []recoveryView) error {
		for _, r := range finished(seen) {
			if r.CatchUps > 0 && strings.HasPrefix(r.Plan, "catch-up") {
				return nil
			}
		}
		return errors.New("no catch-up finished in sync")
	})
	for _, r := range seen {
		if r.Rebuilds != 0 || strings.HasPrefix(r.Plan, "rebuild") {
			t.Fatalf("the stopped replica was rebuilt, want a catch-up: %v", r)
		}
	}
	t.Logf("recovery of the stopped replica: %v", seen)
	t.Logf("recovery of the wiped replica: %v", ww.waitFor(t, 30*time.Second, "a finished rebuild", rebuilt(1)))
	ws.close()
	ww.close()
	c.checkLeftAndRejoined(name, stopped.http, v.Epoch, "removed")
	c.checkLeftAndRejoined(name, wiped.http, v.Epoch, "removed", "lost", "untrusted")

	job.verify(t, prim.uri(name), "on the primary")
	want := mustReadAll(t, prim.uri(name), volSize)
	sameData(t, "the caught-up replica's copy", mustReadAll(t, stopped.uri(name), volSize), want)
	sameData(t, "the rebuilt replica's copy", mustReadAll(t, wiped.uri(name), volSize), want)

	cur, err := c.status(name)
	if err != nil {
		t.Fatal(err)
	}
	prim.stop(syscall.SIGKILL)
	var next volumeView
	waitFor(t, 60*time.Second, "a replica is promoted", func() error {
		if next, err = c.status(name); err != nil {
			return err
		}
		if next.Epoch <= cur.Epoch || next.Primary == prim.http {
			return fmt.Errorf("primary %s epoch %d", next.Primary, next.Epoch)
		}
		return next.primaryServing()
	})
	np := c.volumeFor(next.Primary)
	job.verify(t, np.uri(name), "on the promoted copy "+np.name)
	sameData(t, "the promoted copy", mustReadAll(t, np.uri(name), volSize), want)
}

// TestRecoveryRepeatedOutage: the replica of an RF=2 sync volume is
// SIGSTOPped under fio load twice; each time the primary drops it, and it
// is caught up (never rebuilt) and rejoins. The second outage comes after
// two epoch changes (removal, rejoin), so the primary must remove a member
// in an epoch later than the one its replication started in.
func TestRecoveryRepeatedOutage(t *testing.T) {
	requireTools(t, "fio", "nbdcopy")
	requireOwnCluster(t)
	c := startCluster(t, 2)
	name := uniqueName("rec-twice")
	v, prim, repl := recoveryVolume(t, c, name)
	w := watchRecovery(t, prim, name, repl.http)
	spans := []fioSpan{
		{name: "first", off: 0, size: 8 << 20, seed: 71},
		{name: "second", off: 8 << 20, size: 8 << 20, seed: 72},
	}
	from := v.Epoch
	for i, job := range spans {
		fio := job.startWrite(t, prim.uri(name), 200)
		time.Sleep(2 * time.Second)
		repl.signal(syscall.SIGSTOP)
		stopped, stoppedAt := true, time.Now()
		sigcontOnExit(t, repl, &stopped)
		var dropped uint64
		waitFor(t, 30*time.Second, fmt.Sprintf("outage %d: the primary drops the stopped replica", i+1), func() error {
			d, err := c.history(name)
			if err != nil {
				return err
			}
			h, ok := d.find(from, "member "+repl.http+" removed")
			if !ok {
				return fmt.Errorf("not dropped yet: %v", d)
			}
			dropped = h.Epoch
			return nil
		})
		time.Sleep(time.Until(stoppedAt.Add(8 * time.Second)))
		repl.signal(syscall.SIGCONT)
		stopped = false
		fio.wait(t, 3*time.Minute, fmt.Sprintf("writes across outage %d", i+1))
		cur := c.waitMember(name, repl.http, 90*time.Second)
		want := uint64(i + 1)
		seen := w.waitFor(t, 30*time.Second, fmt.Sprintf("catch-up %d", i+1), func(seen []recoveryView) error {
			for _, r := range finished(seen) {
				if r.CatchUps >= want && strings.HasPrefix(r.Plan, "catch-up") {
					return nil
				}
			}
			return fmt.Errorf("%d catch-up(s) not finished", want)
		})
		for _, r := range seen {
			if r.Rebuilds != 0 || strings.HasPrefix(r.Plan, "rebuild") {
				t.Fatalf("outage %d: the replica was rebuilt, want a catch-up: %v", i+1, r)
			}
		}
		t.Logf("outage %d: dropped in epoch %d, member again in epoch %d", i+1, dropped, cur.Epoch)
		from = cur.Epoch
	}
	w.close()
	want := mustReadAll(t, prim.uri(name), volSize)
	sameData(t, "the twice caught-up replica's copy", mustReadAll(t, repl.uri(name), volSize), want)
	cur, err := c.status(name)
	if err != nil {
		t.Fatal(err)
	}
	prim.stop(syscall.SIGKILL)
	c.waitPrimary(name, repl.http, cur.Epoch, 60*time.Second)
	for _, job := range spans {
		job.verify(t, repl.uri(name), "on the promoted replica")
	}
}

package blockvolume

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// TestDivergedMemberOfRestartedPrimaryIsRebuilt: after a promote the old
// primary is a MEMBER of the new epoch (not a catch-up target) and holds
// records of the deposed epoch the new primary never had (checkpointed:
// only its term history knows their epoch). The new primary restarted in
// between (no takeover state in its process) and wrote past them. Its
// replication cursor learns the epoch of the member's head record at hello,
// finds it differs from its own record at that LSN, ships nothing and has
// the member removed; the recovery manager rebuilds it and it is re-added
// holding exactly the primary's data, the extra writes gone.
func TestDivergedMemberOfRestartedPrimaryIsRebuilt(t *testing.T) {
	client, info, prim, repl := startPair(t, "hm")
	c := dialNBD(t, prim.m.Endpoints().GetNbdAddress(), "hm")
	pat := bytes.Repeat([]byte{0x31}, 4096)
	eventually(t, 10*time.Second, "primary writable", func() bool { return c.write(0, pat) == 0 })
	if e := c.flush(); e != 0 {
		t.Fatalf("flush: errno %d", e)
	}
	c.nc.Close()
	oldEpoch := info.GetConfig().GetEpoch()

	// 1. Promote the replica; the live old primary stays as a member.
	eventually(t, 10*time.Second, "promote accepted", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := client.PromoteVolume(ctx, &blockpb.PromoteVolumeRequest{Name: "hm", ToServerId: repl.id})
		return err == nil
	})
	var newEpoch uint64
	eventually(t, 15*time.Second, "the old primary follows the new one as a member", func() bool {
		in := lookupInfo(t, client, "hm")
		if in == nil || in.GetConfig().GetPrimaryServerId() != repl.id || !isMember(in.GetConfig(), prim.id) {
			return false
		}
		newEpoch = in.GetConfig().GetEpoch()
		v := repl.m.lookup("hm")
		if v == nil {
			return false
		}
		rs := v.replicaStates()
		return len(rs) == 1 && rs[0].GetServerId() == prim.id && rs[0].GetState() == "in-sync"
	})
	head := repl.m.lookup("hm").vol.Status().Head
	if h := prim.m.lookup("hm").vol.Status().Head; h != head {
		t.Fatalf("old primary head %d, new primary head %d", h, head)
	}

	// 2. The member's server stops; behind everyone's back its copy gains
	// two records of the deposed epoch, then a checkpoint lets them go
	// from its WAL.
	replAddr := prim.m.Endpoints().GetReplAddress() // the epoch's config names it
	prim.stop()
	ghost := bytes.Repeat([]byte{0xee}, 4096)
	vol := appendGhosts(t, filepath.Join(prim.dir, "hm"+FileExt), head, oldEpoch, 100, ghost)
	if err := vol.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if e, ok := vol.TermAt(head + 2); !ok || e != oldEpoch {
		t.Fatalf("ghost epoch %d, %v; want %d", e, ok, oldEpoch)
	}
	if err := vol.Close(); err != nil {
		t.Fatal(err)
	}

	// 3. The new primary restarts (the member is down: no failover
	// candidate) and writes past the ghosts' LSNs without a FLUSH, so the
	// member stays in the epoch.
	repl.stop()
	repl = startNamedVolumeServer(t, repl.id, "r2", repl.dir, repl.mAddr)
	nc := dialNBD(t, repl.m.Endpoints().GetNbdAddress(), "hm")
	patB := bytes.Repeat([]byte{0x6b}, 4096)
	eventually(t, 15*time.Second, "restarted new primary writable", func() bool { return nc.write(4096*200, patB) == 0 })
	for i := uint64(1); i < 4; i++ {
		if e := nc.write(4096*(200+i), patB); e != 0 {
			t.Fatalf("write %d: errno %d", i, e)
		}
	}
	if in := lookupInfo(t, client, "hm"); in.GetConfig().GetEpoch() != newEpoch || !isMember(in.GetConfig(), prim.id) {
		t.Fatalf("before the member returns: %v (want epoch %d with %s)", in.GetConfig(), newEpoch, prim.id)
	}
	// (The restarted primary's own takeover check — first serving in this
	// process — would catch the member too; the head-epoch check of the
	// replication hello is the one that tells the epochs apart.)

	// 4. The member returns: it is removed, rebuilt and re-added.
	old := startNamedVolumeServer(t, prim.id, "r1", prim.dir, prim.mAddr, func(o *Options) { o.ReplAddr = replAddr })
	last := time.Now()
	eventually(t, 30*time.Second, "the diverged member removed, rebuilt and re-added", func() bool {
		in := lookupInfo(t, client, "hm")
		if time.Since(last) > 2*time.Second {
			last = time.Now()
			t.Logf("config %v; replicas %v; recoveries %v", in.GetConfig(), repl.m.lookup("hm").replicaStates(), repl.m.lookup("hm").recoveryReports())
		}
		return in != nil && in.GetConfig().GetEpoch() > newEpoch+1 && in.GetConfig().GetPrimaryServerId() == repl.id && isMember(in.GetConfig(), prim.id)
	})
	var rec *blockpb.RecoveryProgress
	for _, r := range repl.m.lookup("hm").recoveryReports() {
		if r.GetServerId() == prim.id {
			rec = r
		}
	}
	if rec == nil || rec.GetRebuilds() < 1 {
		t.Fatalf("recovery of the diverged member: %v", rec)
	}
	if e := nc.flush(); e != 0 {
		t.Fatalf("flush on the new primary: errno %d", e)
	}
	eventually(t, 10*time.Second, "rebuilt member equals the primary", func() bool {
		return bytes.Equal(old.readLocal(t, "hm", 0, 4<<20), repl.readLocal(t, "hm", 0, 4<<20))
	})
	if got := old.readLocal(t, "hm", 4096*101, 4096); bytes.Equal(got, ghost) {
		t.Fatal("the member kept the deposed epoch's record")
	}
	nc.nc.Close()
}

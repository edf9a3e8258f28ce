package blockvolume

import (
	"bytes"
	"path/filepath"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// TestRestartedPrimarySameEpochDivergedMember: a primary crashes having
// lost records its member had already made durable (shipped, not yet
// synced on the primary); it restarts and is confirmed again in the SAME
// epoch, and numbers new writes with those LSNs. The member's records
// carry the same epoch, so only the head this process started serving
// with tells them apart: the returning member, whose head is beyond it,
// is rebuilt — never caught up keeping the lost writes.
func TestRestartedPrimarySameEpochDivergedMember(t *testing.T) {
	client, info, prim, repl := startPair(t, "se")
	c := dialNBD(t, prim.m.Endpoints().GetNbdAddress(), "se")
	pat := bytes.Repeat([]byte{0x21}, 4096)
	eventually(t, 10*time.Second, "primary writable", func() bool { return c.write(0, pat) == 0 })
	if e := c.flush(); e != 0 {
		t.Fatalf("flush: errno %d", e)
	}
	c.nc.Close()
	epoch := info.GetConfig().GetEpoch()
	eventually(t, 10*time.Second, "replica in sync", func() bool {
		v := prim.m.lookup("se")
		if v == nil {
			return false
		}
		rs := v.replicaStates()
		return len(rs) == 1 && rs[0].GetState() == "in-sync"
	})
	head := prim.m.lookup("se").vol.Status().Head

	// The member stops; its copy holds two more records of this epoch
	// (the ones the primary is about to lose).
	replAddr := repl.m.Endpoints().GetReplAddress()
	repl.stop()
	ghost := bytes.Repeat([]byte{0xee}, 4096)
	vol := appendGhosts(t, filepath.Join(repl.dir, "se"+FileExt), head, epoch, 300, ghost)
	if err := vol.Close(); err != nil {
		t.Fatal(err)
	}

	// The primary restarts (the member is down: no failover candidate),
	// is confirmed again in the same epoch and writes past the ghosts'
	// LSNs without a FLUSH (the member stays in the epoch).
	prim.stop()
	prim = startNamedVolumeServer(t, prim.id, "r1", prim.dir, prim.mAddr)
	nc := dialNBD(t, prim.m.Endpoints().GetNbdAddress(), "se")
	patB := bytes.Repeat([]byte{0x4c}, 4096)
	eventually(t, 15*time.Second, "restarted primary writable", func() bool { return nc.write(4096*200, patB) == 0 })
	for i := uint64(1); i < 4; i++ {
		if e := nc.write(4096*(200+i), patB); e != 0 {
			t.Fatalf("write %d: errno %d", i, e)
		}
	}
	if in := lookupInfo(t, client, "se"); in.GetConfig().GetEpoch() != epoch || in.GetConfig().GetPrimaryServerId() != prim.id {
		t.Fatalf("after the restart: %v (want epoch %d, primary %s)", in.GetConfig(), epoch, prim.id)
	}
	if v := prim.m.lookup("se"); !v.takeover || v.takeoverHead != head {
		t.Fatalf("restarted primary: takeover %v head %d, want true, %d", v.takeover, v.takeoverHead, head)
	}

	// The member returns: rebuilt, re-added, equal to the primary.
	back := startNamedVolumeServer(t, repl.id, "r2", repl.dir, repl.mAddr, func(o *Options) { o.ReplAddr = replAddr })
	eventually(t, 40*time.Second, "the diverged member rebuilt and re-added", func() bool {
		in := lookupInfo(t, client, "se")
		return in != nil && in.GetConfig().GetEpoch() > epoch+1 && in.GetConfig().GetPrimaryServerId() == prim.id && isMember(in.GetConfig(), repl.id)
	})
	var rec *blockpb.RecoveryProgress
	for _, r := range prim.m.lookup("se").recoveryReports() {
		if r.GetServerId() == repl.id {
			rec = r
		}
	}
	if rec == nil || rec.GetRebuilds() < 1 {
		t.Fatalf("recovery of the diverged member: %v", rec)
	}
	if e := nc.flush(); e != 0 {
		t.Fatalf("flush on the primary: errno %d", e)
	}
	eventually(t, 10*time.Second, "rebuilt member equals the primary", func() bool {
		return bytes.Equal(back.readLocal(t, "se", 0, 4<<20), prim.readLocal(t, "se", 0, 4<<20))
	})
	if got := back.readLocal(t, "se", 4096*301, 4096); bytes.Equal(got, ghost) {
		t.Fatal("the member kept a record the primary lost")
	}
	nc.nc.Close()
}

// appendGhosts opens the stopped copy at path and makes two records durable
// on it behind everyone's back: LSNs head+1 and head+2 of epoch, writing
// data at LBAs lba+1 and lba+2. The caller closes the returned volume.
func appendGhosts(t *testing.T, path string, head, epoch, lba uint64, data []byte) *blockvol.Volume {
	t.Helper()
	vol, err := blockvol.Open(path, blockvol.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := vol.Unfence(vol.Status().Epoch, blockvol.RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 2; i++ {
		rec := blockvol.Record{LSN: head + i, Epoch: epoch, Kind: blockvol.KindWrite, LBA: lba + i, Blocks: 1, Data: data}
		if err := vol.ApplyReplicated(rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := vol.Flush(); err != nil {
		t.Fatal(err)
	}
	return vol
}

package blockvolume

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/frontend/iscsi"
	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// TestHeartbeatLeaseLifecycle: a volume allocated as primary becomes
// writable (NBD and real iSCSI) once the master grants a lease, stays
// writable while renewals come, and refuses writes (EPERM) once the master
// is gone and the lease has run out.
func TestHeartbeatLeaseLifecycle(t *testing.T) {
	f := startFakeMaster(t)
	f.setRespond(confirm(400))
	m := startManager(t, "", withMasters(f.addr))
	allocate(t, m, "lv", 1<<20, epochConfig(1, testServerID))
	c := dialNBD(t, m.Endpoints().GetNbdAddress(), "lv")
	pat := bytes.Repeat([]byte{0x77}, 4096)

	eventually(t, 5*time.Second, "writable after the lease grant", func() bool { return c.write(0, pat) == 0 })
	if e := c.flush(); e != 0 {
		t.Fatalf("flush: errno %d", e)
	}
	// Renewals: keep writing for well over a lease period.
	end := time.Now().Add(1200 * time.Millisecond)
	for i := uint64(1); time.Now().Before(end); i++ {
		if e := c.write(4096*(i%200), pat); e != 0 {
			t.Fatalf("write %d while the master renews: errno %d", i, e)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// What the master heard: seqs increase by one, the volume is reported
	// as primary of epoch 1 with a lease and the NBD session.
	hbs := f.heartbeats()
	for i := 1; i < len(hbs); i++ {
		if hbs[i].GetSeq() != hbs[i-1].GetSeq()+1 {
			t.Fatalf("heartbeat seqs %d then %d", hbs[i-1].GetSeq(), hbs[i].GetSeq())
		}
	}
	last := hbs[len(hbs)-1]
	if last.GetServer().GetServerId() != testServerID || last.GetServer().GetNbdAddress() != m.Endpoints().GetNbdAddress() ||
		last.GetServer().GetIscsiAddress() == "" || last.GetServer().GetReplAddress() != m.Endpoints().GetReplAddress() || strings.HasSuffix(m.Endpoints().GetReplAddress(), ":0") || last.GetServer().GetRack() != "r1" || last.GetFreeBytes() == 0 {
		t.Fatalf("heartbeat server info: %v free %d", last.GetServer(), last.GetFreeBytes())
	}
	r := f.lastReport("lv")
	if r == nil || r.GetEpoch() != 1 || r.GetRole() != blockpb.Role_ROLE_PRIMARY || r.GetFenced() || r.GetLeaseRemainingMs() <= 0 ||
		r.GetLeaseRemainingMs() > 400 || r.GetAttachedSessions() != 1 || r.GetHeadLsn() == 0 || !r.GetHealthy() {
		t.Fatalf("report while primary: %v", r)
	}
	if hs := m.Heartbeat(); !hs.Connected || hs.Master != f.addr || hs.LeaseMs != 400 {
		t.Fatalf("heartbeat status: %+v", hs)
	}

	// Real clients write too: nbdcopy over NBD, qemu-io over iSCSI.
	if out, ok := nbdcopyWrite(t, m.Endpoints().GetNbdAddress(), "lv"); !ok {
		t.Fatalf("nbdcopy to the primary failed:\n%s", out)
	}
	if out, ok := qemuWrite(t, iscsiURI(m, "lv"), 1<<19); !ok {
		t.Fatalf("qemu-io write to the primary failed:\n%s", out)
	}

	if e := c.write(0, pat); e != 0 {
		t.Fatalf("write before the master goes away: errno %d", e)
	}
	// The master goes away: no renewal, the lease runs out.
	f.srv.Stop()
	gone := time.Now()
	eventually(t, 3*time.Second, "writes refused after the lease ran out", func() bool { return c.write(0, pat) == nbdEPERM })
	if waited := time.Since(gone); waited > 1500*time.Millisecond {
		t.Fatalf("writes refused only %v after the master went away (lease 400 ms)", waited)
	}
	if out, ok := qemuWrite(t, iscsiURI(m, "lv"), 0); ok {
		t.Fatalf("qemu-io wrote after the lease expired:\n%s", out)
	}
	if out, ok := nbdcopyWrite(t, m.Endpoints().GetNbdAddress(), "lv"); ok {
		t.Fatalf("nbdcopy wrote after the lease expired:\n%s", out)
	}
	if r := scsiWrite(m, "lv"); !writeProtected(r) {
		t.Fatalf("SCSI write after lease expiry: status %#x sense %x, want WRITE PROTECTED", r.Status, r.Sense)
	}
	if e, data := c.read(0, 4096); e != 0 || !bytes.Equal(data, pat) {
		t.Fatalf("read after lease expiry: errno %d", e)
	}
	reps, _ := m.reports("lv")
	if !reps[0].GetFenced() || reps[0].GetLeaseRemainingMs() != 0 || reps[0].GetRole() != blockpb.Role_ROLE_PRIMARY {
		t.Fatalf("report after lease expiry: %v", reps[0])
	}
	eventually(t, 3*time.Second, "heartbeat status disconnected", func() bool { return !m.Heartbeat().Connected })
}

// TestLeaseStartsWhenTheHeartbeatWasSent: the master answers late; the
// lease must still run from the send time of the heartbeat it answers,
// which is before the master even received it.
func TestLeaseStartsWhenTheHeartbeatWasSent(t *testing.T) {
	const lease = 2000 * time.Millisecond
	const delay = 300 * time.Millisecond
	f := startFakeMaster(t)
	f.mu.Lock()
	f.delay = delay
	f.mu.Unlock()
	f.setRespond(confirm(lease.Milliseconds()))
	m := startManager(t, "", func(o *Options) {
		withMasters(f.addr)(o)
		o.Pulse = time.Second // one heartbeat in flight at a time
	})
	allocate(t, m, "late", 1<<20, epochConfig(1, testServerID))
	v := m.lookup("late")
	var until time.Time
	eventually(t, 5*time.Second, "lease granted", func() bool {
		until = v.vol.Status().LeaseUntil
		return !until.IsZero()
	})
	applied := time.Now()
	// The answered heartbeat is the last one the master received before
	// the grant was applied (with a 1 s pulse and a 300 ms answer delay no
	// later one is sent in between).
	f.mu.Lock()
	var answeredRecv time.Time
	for _, at := range f.gotAt {
		if at.Before(applied) && at.After(answeredRecv) {
			answeredRecv = at
		}
	}
	f.mu.Unlock()
	if !until.Before(answeredRecv.Add(lease)) {
		t.Fatalf("lease until %v is not before master receive time + lease (%v): it did not start at send time", until, answeredRecv.Add(lease))
	}
	if rem := until.Sub(applied); rem > lease-delay+50*time.Millisecond {
		t.Fatalf("lease remaining %v right after the late answer, want ≤ %v", rem, lease-delay)
	}
}

// TestNewerEpochWithoutThisServerFences: an assignment for a newer epoch in
// which this server is not a member fences the volume at that epoch, and
// later lease grants do not unfence it.
func TestNewerEpochWithoutThisServerFences(t *testing.T) {
	f := startFakeMaster(t)
	f.setRespond(confirm(1000))
	m := startManager(t, "", withMasters(f.addr))
	allocate(t, m, "fv", 1<<20, epochConfig(1, testServerID))
	c := dialNBD(t, m.Endpoints().GetNbdAddress(), "fv")
	pat := bytes.Repeat([]byte{1}, 4096)
	eventually(t, 5*time.Second, "writable", func() bool { return c.write(0, pat) == 0 })

	newer := epochConfig(2, "vs2")
	f.setRespond(func(hb *blockpb.BlockHeartbeat) (*blockpb.BlockHeartbeatResponse, error) {
		resp := &blockpb.BlockHeartbeatResponse{HeartbeatSeq: hb.GetSeq(), LeaseMs: 1000}
		for _, r := range hb.GetVolumes() {
			if r.GetName() == "fv" && r.GetEpoch() < 2 {
				resp.Assignments = append(resp.Assignments, &blockpb.Assignment{Spec: spec("fv", 1<<20), Config: newer, Role: blockpb.Role_ROLE_NONE})
			}
		}
		return resp, nil
	})
	eventually(t, 5*time.Second, "fenced by the newer epoch", func() bool { return c.write(0, pat) == nbdEPERM })
	v := m.lookup("fv")
	// Fencing comes first, the epoch is persisted right after.
	eventually(t, 5*time.Second, "epoch 2 persisted", func() bool { return v.vol.Status().Epoch == 2 })
	eventually(t, 5*time.Second, "report of epoch 2 as non-member", func() bool {
		r := f.lastReport("fv")
		return r.GetEpoch() == 2 && r.GetRole() == blockpb.Role_ROLE_NONE && r.GetFenced()
	})
	// Leases keep coming; the volume stays fenced.
	time.Sleep(300 * time.Millisecond)
	if e := c.write(0, pat); e != nbdEPERM {
		t.Fatalf("write after later lease grants: errno %d, want EPERM", e)
	}
	// The old epoch is refused from now on.
	if err := v.vol.Unfence(1, 1, time.Time{}); err == nil {
		t.Fatal("unfence at the old epoch succeeded")
	}
}

// TestAssignmentMakesPrimary: an assignment naming this server primary of
// a volume it has unfences it; a re-sent assignment for the current epoch
// does not interrupt writes.
func TestAssignmentMakesPrimary(t *testing.T) {
	f := startFakeMaster(t)
	cfg := epochConfig(4, testServerID)
	dir := t.TempDir()
	m := startManager(t, dir, withMasters(f.addr))
	allocate(t, m, "av", 1<<20, epochConfig(3, testServerID))
	f.setRespond(func(hb *blockpb.BlockHeartbeat) (*blockpb.BlockHeartbeatResponse, error) {
		// Re-sent on every heartbeat, even once reported: must be harmless.
		return &blockpb.BlockHeartbeatResponse{HeartbeatSeq: hb.GetSeq(), LeaseMs: 1000,
			Assignments: []*blockpb.Assignment{{Spec: spec("av", 1<<20), Config: cfg, Role: blockpb.Role_ROLE_PRIMARY}}}, nil
	})
	c := dialNBD(t, m.Endpoints().GetNbdAddress(), "av")
	pat := bytes.Repeat([]byte{9}, 4096)
	eventually(t, 5*time.Second, "writable", func() bool { return c.write(0, pat) == 0 })
	for i := range 40 {
		if e := c.write(0, pat); e != 0 {
			t.Fatalf("write %d with re-sent assignments: errno %d", i, e)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := m.lookup("av").vol.Status(); st.Epoch != 4 || st.Untrusted {
		t.Fatalf("epoch %d untrusted %v", st.Epoch, st.Untrusted)
	}
}

// TestAssignmentForLostCopyCreatesUntrusted: an assignment for a volume
// this server should hold but does not (its file was lost) creates an
// empty copy that is durably untrusted: never unfenced (not even as
// primary of the assignment), serving no reads or writes, reported
// untrusted with a rebuild phase — also after a restart.
func TestAssignmentForLostCopyCreatesUntrusted(t *testing.T) {
	for _, role := range []blockpb.Role{blockpb.Role_ROLE_PRIMARY, blockpb.Role_ROLE_REPLICA} {
		t.Run(role.String(), func(t *testing.T) {
			f := startFakeMaster(t)
			cfg := epochConfig(4, testServerID)
			if role == blockpb.Role_ROLE_REPLICA {
				cfg = &blockpb.EpochConfig{Epoch: 4, PrimaryServerId: "vs2", Members: []*blockpb.Member{
					{Server: &blockpb.ServerEndpoints{ServerId: "vs2", ReplAddress: "127.0.0.1:1"}, Role: blockpb.Role_ROLE_PRIMARY},
					{Server: &blockpb.ServerEndpoints{ServerId: testServerID}, Role: blockpb.Role_ROLE_REPLICA},
				}}
			}
			f.setRespond(func(hb *blockpb.BlockHeartbeat) (*blockpb.BlockHeartbeatResponse, error) {
				return &blockpb.BlockHeartbeatResponse{HeartbeatSeq: hb.GetSeq(), LeaseMs: 1000,
					Assignments: []*blockpb.Assignment{{Spec: spec("lost", 1<<20), Config: cfg, Role: role}}}, nil
			})
			dir := t.TempDir()
			m := startManager(t, dir, withMasters(f.addr))
			eventually(t, 5*time.Second, "copy created by the assignment", func() bool { return m.lookup("lost") != nil })
			eventually(t, 5*time.Second, "reported untrusted", func() bool {
				r := f.lastReport("lost")
				return r.GetUntrusted() && r.GetEpoch() == 4 && r.GetRecovery().GetPhase() == "rebuild"
			})
			c := dialNBD(t, m.Endpoints().GetNbdAddress(), "lost")
			for i := 0; i < 10; i++ {
				if e := c.write(0, make([]byte, 4096)); e != nbdEPERM {
					t.Fatalf("write to an untrusted copy: errno %d, want EPERM", e)
				}
				if e, _ := c.read(0, 4096); e != nbdEIO {
					t.Fatalf("read from an untrusted copy: errno %d, want EIO", e)
				}
				time.Sleep(20 * time.Millisecond)
			}
			st := m.lookup("lost").vol.Status()
			if !st.Untrusted || !st.Fenced || st.Epoch != 4 {
				t.Fatalf("lost copy status: untrusted %v fenced %v epoch %d", st.Untrusted, st.Fenced, st.Epoch)
			}
			if r := f.lastReport("lost"); !r.GetFenced() {
				t.Fatalf("reported unfenced: %v", r)
			}
			// A restart keeps it untrusted and fenced.
			m.Close()
			m2 := startManager(t, dir, withMasters(f.addr))
			time.Sleep(300 * time.Millisecond) // several answers with the assignment
			st = m2.lookup("lost").vol.Status()
			if !st.Untrusted || !st.Fenced {
				t.Fatalf("after a restart: untrusted %v fenced %v", st.Untrusted, st.Fenced)
			}
		})
	}
}

// TestRecoveryCopyAllocation: AllocateVolume with recovery_copy creates an
// empty untrusted copy even though this server is not a member of the
// config, is idempotent, and leaves an existing copy alone.
func TestRecoveryCopyAllocation(t *testing.T) {
	m := startManager(t, "", nil)
	cfg := epochConfig(5, "vs2")
	req := &blockpb.AllocateVolumeRequest{Spec: spec("rc", 1<<20), Config: cfg, RecoveryCopy: true}
	for i := 0; i < 2; i++ {
		resp, err := m.GRPCService().AllocateVolume(t.Context(), req)
		if err != nil {
			t.Fatalf("allocate recovery copy (%d): %v", i, err)
		}
		if r := resp.GetVolume(); !r.GetUntrusted() || !r.GetFenced() || r.GetEpoch() != 5 || r.GetRole() != blockpb.Role_ROLE_NONE {
			t.Fatalf("recovery copy report: %v", r)
		}
	}
	// Without recovery_copy a non-member is refused, as before.
	_, err := m.GRPCService().AllocateVolume(t.Context(), &blockpb.AllocateVolumeRequest{Spec: spec("rc2", 1<<20), Config: cfg})
	wantCode(t, err, codes.FailedPrecondition, "allocate for a non-member")
	// An existing trusted copy is left as it is.
	allocate(t, m, "keep", 1<<20, epochConfig(2, testServerID))
	resp, err := m.GRPCService().AllocateVolume(t.Context(), &blockpb.AllocateVolumeRequest{Spec: spec("keep", 1<<20), Config: cfg, RecoveryCopy: true})
	if err != nil {
		t.Fatal(err)
	}
	if r := resp.GetVolume(); r.GetUntrusted() || r.GetEpoch() != 2 {
		t.Fatalf("existing copy changed by a recovery-copy allocation: %v", r)
	}
}

// TestDeletesFromMaster: a name in the response's deletes is closed and its
// file removed.
func TestDeletesFromMaster(t *testing.T) {
	f := startFakeMaster(t)
	f.setRespond(confirm(1000))
	dir := t.TempDir()
	m := startManager(t, dir, withMasters(f.addr))
	allocate(t, m, "keep", 1<<20, epochConfig(1, testServerID))
	allocate(t, m, "gone", 1<<20, epochConfig(1, testServerID))
	c := dialNBD(t, m.Endpoints().GetNbdAddress(), "gone")
	eventually(t, 5*time.Second, "reported", func() bool { return f.lastReport("gone") != nil })
	f.setRespond(func(hb *blockpb.BlockHeartbeat) (*blockpb.BlockHeartbeatResponse, error) {
		return &blockpb.BlockHeartbeatResponse{HeartbeatSeq: hb.GetSeq(), LeaseMs: 1000, Deletes: []string{"gone", "never-had"}}, nil
	})
	path := filepath.Join(dir, "gone"+FileExt)
	eventually(t, 5*time.Second, "file removed", func() bool {
		_, err := os.Stat(path)
		return os.IsNotExist(err)
	})
	if m.lookup("gone") != nil || m.lookup("keep") == nil {
		t.Fatalf("volumes after delete: %v", m.names())
	}
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.br.ReadByte(); err == nil {
		t.Fatal("NBD connection to a deleted volume still open")
	}
	if _, err := os.Stat(filepath.Join(dir, "keep"+FileExt)); err != nil {
		t.Fatal(err)
	}
}

// TestLeaderRedirect: a follower answering with leader=X, or failing the
// stream with "not leader; leader is X", sends the heartbeat to X, which
// then grants the lease.
func TestLeaderRedirect(t *testing.T) {
	for _, how := range []string{"response", "error"} {
		t.Run(how, func(t *testing.T) {
			leader := startFakeMaster(t)
			leader.setRespond(confirm(1000))
			follower := startFakeMaster(t)
			follower.setRespond(func(hb *blockpb.BlockHeartbeat) (*blockpb.BlockHeartbeatResponse, error) {
				if how == "error" {
					return nil, status.Errorf(codes.FailedPrecondition, "not leader; leader is %s", leader.addr)
				}
				return &blockpb.BlockHeartbeatResponse{HeartbeatSeq: hb.GetSeq(), Leader: leader.addr}, nil
			})
			m := startManager(t, "", withMasters(follower.addr))
			allocate(t, m, "rv", 1<<20, epochConfig(1, testServerID))
			c := dialNBD(t, m.Endpoints().GetNbdAddress(), "rv")
			eventually(t, 5*time.Second, "writable through the leader", func() bool { return c.write(0, make([]byte, 4096)) == 0 })
			if len(follower.heartbeats()) == 0 || len(leader.heartbeats()) == 0 {
				t.Fatalf("heartbeats: follower %d leader %d", len(follower.heartbeats()), len(leader.heartbeats()))
			}
			if hs := m.Heartbeat(); hs.Master != leader.addr || !hs.Connected {
				t.Fatalf("heartbeat status %+v, want connected to %s", hs, leader.addr)
			}
		})
	}
}

func TestLeaderAddressForms(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.1:9333.19333": "10.0.0.1:19333",
		"m1:19333":            "m1:19333",
		"[::1]:9333.19333":    "[::1]:19333",
		"garbage":             "garbage",
	} {
		if got := normalizeLeader(in); got != want {
			t.Errorf("normalizeLeader(%q) = %q, want %q", in, got, want)
		}
	}
	err := status.Error(codes.FailedPrecondition, "not leader; leader is 10.0.0.2:9333.19333")
	if got := leaderFromError(err); got != "10.0.0.2:19333" {
		t.Errorf("leaderFromError = %q", got)
	}
	if got := leaderFromError(status.Error(codes.Unavailable, "connection refused")); got != "" {
		t.Errorf("leaderFromError(unavailable) = %q", got)
	}
	if !strings.Contains(normalizeLeader("a:1"), "a:1") {
		t.Error("plain address changed")
	}
}

// TestMastersUnreachable: with no master answering, the client keeps
// retrying (bounded backoff) and volumes stay fenced; Close still returns
// promptly.
func TestMastersUnreachable(t *testing.T) {
	m := startManager(t, "", withMasters("127.0.0.1:1", "127.0.0.1:2"))
	allocate(t, m, "nv", 1<<20, epochConfig(1, testServerID))
	time.Sleep(300 * time.Millisecond)
	if hs := m.Heartbeat(); hs.Connected || hs.LastError == "" {
		t.Fatalf("heartbeat status with no master: %+v", hs)
	}
	reps, _ := m.reports("nv")
	if !reps[0].GetFenced() {
		t.Fatal("volume unfenced without a master")
	}
	start := time.Now()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Close took %v", d)
	}
}

// TestSilentMasterIsLeft: a master that takes heartbeats but never answers
// is abandoned after a few pulses and the connection retried.
func TestSilentMasterIsLeft(t *testing.T) {
	f := startFakeMaster(t) // no respond func: silent
	m := startManager(t, "", withMasters(f.addr))
	eventually(t, 5*time.Second, "a second stream", func() bool { return f.streamCount() >= 2 })
	if hs := m.Heartbeat(); hs.Connected || !strings.Contains(hs.LastError, "silent") {
		t.Fatalf("heartbeat status %+v", hs)
	}
}

// TestGrantWithoutAssignmentLeavesFenced: a lease grant alone never
// unfences a volume the master has not confirmed by an assignment (just
// allocated, reopened, or unknown to the registry).
func TestGrantWithoutAssignmentLeavesFenced(t *testing.T) {
	f := startFakeMaster(t)
	f.setRespond(grant(1000))
	m := startManager(t, "", withMasters(f.addr))
	allocate(t, m, "orphan", 1<<20, epochConfig(1, testServerID))
	c := dialNBD(t, m.Endpoints().GetNbdAddress(), "orphan")
	eventually(t, 5*time.Second, "several lease grants", func() bool { return len(f.heartbeats()) >= 6 })
	if e := c.write(0, make([]byte, 4096)); e != nbdEPERM {
		t.Fatalf("write after grants without an assignment: errno %d, want EPERM", e)
	}
	if r := f.lastReport("orphan"); !r.GetFenced() || r.GetRole() != blockpb.Role_ROLE_PRIMARY {
		t.Fatalf("report: %v", r)
	}
	// The assignment arrives: writable.
	f.setRespond(confirm(1000))
	eventually(t, 5*time.Second, "writable after the assignment", func() bool { return c.write(0, make([]byte, 4096)) == 0 })
}

// TestNewEpochKeepsServingPrimary: a newer epoch that keeps this server
// primary moves the volume to it without refusing a single write.
func TestNewEpochKeepsServingPrimary(t *testing.T) {
	f := startFakeMaster(t)
	f.setRespond(confirm(1000))
	m := startManager(t, "", withMasters(f.addr))
	allocate(t, m, "ke", 1<<20, epochConfig(1, testServerID))
	c := dialNBD(t, m.Endpoints().GetNbdAddress(), "ke")
	pat := make([]byte, 4096)
	eventually(t, 5*time.Second, "writable", func() bool { return c.write(0, pat) == 0 })
	f.setRespond(func(hb *blockpb.BlockHeartbeat) (*blockpb.BlockHeartbeatResponse, error) {
		resp := &blockpb.BlockHeartbeatResponse{HeartbeatSeq: hb.GetSeq(), LeaseMs: 1000}
		for _, r := range hb.GetVolumes() {
			if r.GetEpoch() < 2 || r.GetFenced() {
				resp.Assignments = append(resp.Assignments, &blockpb.Assignment{Spec: spec("ke", 1<<20), Config: epochConfig(2, testServerID), Role: blockpb.Role_ROLE_PRIMARY})
			}
		}
		return resp, nil
	})
	v := m.lookup("ke")
	for i := 0; v.vol.Status().Epoch < 2; i++ {
		if i > 2000 {
			t.Fatal("epoch 2 never applied")
		}
		if e := c.write(0, pat); e != 0 {
			t.Fatalf("write %d during the epoch change: errno %d", i, e)
		}
	}
	if e := c.write(0, pat); e != 0 {
		t.Fatalf("write in epoch 2: errno %d", e)
	}
}

// TestReplicaAssignment: an assignment naming this server replica creates
// the volume and unfences it as replica: frontend writes are still refused
// and it reports itself replica of the epoch.
func TestReplicaAssignment(t *testing.T) {
	f := startFakeMaster(t)
	cfg := &blockpb.EpochConfig{
		Epoch:           3,
		PrimaryServerId: "vs2",
		Members: []*blockpb.Member{
			{Server: &blockpb.ServerEndpoints{ServerId: "vs2"}, Role: blockpb.Role_ROLE_PRIMARY},
			{Server: &blockpb.ServerEndpoints{ServerId: testServerID}, Role: blockpb.Role_ROLE_REPLICA},
		},
		Durability: blockpb.Durability_DURABILITY_SYNC,
	}
	m := startManager(t, "", withMasters(f.addr))
	// Allocate before the master starts assigning: an assignment that
	// arrives first creates the copy untrusted (waiting for a rebuild).
	allocate(t, m, "rep", 1<<20, cfg)
	f.setRespond(func(hb *blockpb.BlockHeartbeat) (*blockpb.BlockHeartbeatResponse, error) {
		return &blockpb.BlockHeartbeatResponse{HeartbeatSeq: hb.GetSeq(), LeaseMs: 1000,
			Assignments: []*blockpb.Assignment{{Spec: spec("rep", 1<<20), Config: cfg, Role: blockpb.Role_ROLE_REPLICA}}}, nil
	})
	eventually(t, 5*time.Second, "reported as replica of epoch 3", func() bool {
		r := f.lastReport("rep")
		return r.GetEpoch() == 3 && r.GetRole() == blockpb.Role_ROLE_REPLICA
	})
	st := m.lookup("rep").vol.Status()
	if st.Fenced || st.Role != blockvol.RoleReplica || st.Epoch != 3 {
		t.Fatalf("replica status: fenced %v role %v epoch %d", st.Fenced, st.Role, st.Epoch)
	}
	c := dialNBD(t, m.Endpoints().GetNbdAddress(), "rep")
	if e := c.write(0, make([]byte, 4096)); e != nbdEPERM {
		t.Fatalf("frontend write to a replica: errno %d, want EPERM", e)
	}
}

// TestISCSIRedirectToPrimary: a login to a member that is not primary is
// redirected to the primary's portal (from the stored epoch config); a
// real initiator (qemu-io) follows it and the write lands on the primary.
func TestISCSIRedirectToPrimary(t *testing.T) {
	f := startFakeMaster(t)
	b := startManager(t, "", func(o *Options) {
		withMasters(f.addr)(o)
		o.ServerID = "vs2"
	})
	a := startManager(t, "", nil) // vs1, no master: follows as the replica it was allocated as
	cfg := &blockpb.EpochConfig{
		Epoch:           2,
		PrimaryServerId: "vs2",
		Members: []*blockpb.Member{
			{Server: b.Endpoints(), Role: blockpb.Role_ROLE_PRIMARY},
			{Server: a.Endpoints(), Role: blockpb.Role_ROLE_REPLICA},
		},
	}
	allocate(t, b, "rr", 1<<20, cfg) // before its assignment (which would create it untrusted)
	f.setRespond(func(hb *blockpb.BlockHeartbeat) (*blockpb.BlockHeartbeatResponse, error) {
		return &blockpb.BlockHeartbeatResponse{HeartbeatSeq: hb.GetSeq(), LeaseMs: 1000,
			Assignments: []*blockpb.Assignment{{Spec: spec("rr", 1<<20), Config: cfg, Role: blockpb.Role_ROLE_PRIMARY}}}, nil
	})
	allocate(t, a, "rr", 1<<20, cfg)
	cb := dialNBD(t, b.Endpoints().GetNbdAddress(), "rr")
	eventually(t, 5*time.Second, "primary writable", func() bool { return cb.write(0, make([]byte, 4096)) == 0 })

	if addr, ok := a.iscsiRedirect(iscsi.IQN("rr")); !ok || addr != b.Endpoints().GetIscsiAddress() {
		t.Fatalf("redirect from the replica: %q %v", addr, ok)
	}
	if _, ok := b.iscsiRedirect(iscsi.IQN("rr")); ok {
		t.Fatal("the primary redirects its own logins")
	}
	if out, ok := qemuWrite(t, iscsiURI(a, "rr"), 8192); !ok {
		t.Fatalf("qemu-io through the replica's portal:\n%s", out)
	}
	if e, data := cb.read(8192, 4096); e != 0 || !bytes.Equal(data, bytes.Repeat([]byte{0x5a}, 4096)) {
		t.Fatalf("the write did not land on the primary (errno %d)", e)
	}
}

// TestLateAssignmentDoesNotResurrect: an assignment that was in flight when
// the volume was deleted here does not create it again; a newer epoch of
// the name (a new volume) does.
func TestLateAssignmentDoesNotResurrect(t *testing.T) {
	f := startFakeMaster(t)
	dir := t.TempDir()
	m := startManager(t, dir, withMasters(f.addr))
	allocate(t, m, "zz", 1<<20, epochConfig(2, testServerID))
	if _, err := m.GRPCService().DeleteVolume(t.Context(), &blockpb.DeleteLocalVolumeRequest{Name: "zz", Epoch: 2}); err != nil {
		t.Fatal(err)
	}
	stale := &blockpb.Assignment{Spec: spec("zz", 1<<20), Config: epochConfig(2, testServerID), Role: blockpb.Role_ROLE_PRIMARY}
	f.setRespond(func(hb *blockpb.BlockHeartbeat) (*blockpb.BlockHeartbeatResponse, error) {
		return &blockpb.BlockHeartbeatResponse{HeartbeatSeq: hb.GetSeq(), LeaseMs: 1000, Assignments: []*blockpb.Assignment{stale}}, nil
	})
	eventually(t, 5*time.Second, "several answers", func() bool { return len(f.heartbeats()) >= 5 })
	time.Sleep(100 * time.Millisecond)
	if m.lookup("zz") != nil {
		t.Fatal("a stale assignment re-created a deleted volume")
	}
	if _, err := os.Stat(filepath.Join(dir, "zz"+FileExt)); !os.IsNotExist(err) {
		t.Fatalf("file: %v", err)
	}
	fresh := &blockpb.Assignment{Spec: spec("zz", 1<<20), Config: epochConfig(3, testServerID), Role: blockpb.Role_ROLE_PRIMARY}
	f.setRespond(func(hb *blockpb.BlockHeartbeat) (*blockpb.BlockHeartbeatResponse, error) {
		return &blockpb.BlockHeartbeatResponse{HeartbeatSeq: hb.GetSeq(), LeaseMs: 1000, Assignments: []*blockpb.Assignment{fresh}}, nil
	})
	eventually(t, 5*time.Second, "the new incarnation created (untrusted: an assignment creates no data)", func() bool {
		v := m.lookup("zz")
		return v != nil && v.vol.Status().Untrusted
	})
}

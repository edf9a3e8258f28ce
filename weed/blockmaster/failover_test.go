package blockmaster

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// foPulse is long in real time so that the master's real-time tickers do
// not end streams while a test moves the fake clock; the test drives
// checkFailovers itself.
const foPulse = time.Second

// cluster is a master with up to four fake volume servers a..d (a has the
// most space, so it is the first primary) and one volume "v".
type cluster struct {
	t   *testing.T
	h   *harness
	hb  map[string]*hbClient
	rep map[string]*blockpb.VolumeReport // what each server reports of "v"
}

func newCluster(t *testing.T, rf uint32, d blockpb.Durability, servers ...string) *cluster {
	t.Helper()
	h := newHarness(t, func(o *Options) { o.Pulse = foPulse })
	c := &cluster{t: t, h: h, hb: map[string]*hbClient{}, rep: map[string]*blockpb.VolumeReport{}}
	free := map[string]uint64{"a": 100 * gib, "b": 50 * gib, "c": 40 * gib, "d": 30 * gib}
	for _, id := range servers {
		_, c.hb[id] = h.server(id, "r-"+id, free[id])
	}
	s := spec("v", 1<<20, rf)
	s.Durability = d
	info, err := h.create(s)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.PrimaryServerId != "a" || len(info.Config.Members) != int(rf) {
		t.Fatalf("placement: %v", info.Config)
	}
	for _, mem := range info.Config.Members {
		id := mem.Server.ServerId
		c.rep[id] = &blockpb.VolumeReport{Name: "v", Epoch: 1, Role: mem.Role, Healthy: true}
	}
	c.beatAll()
	return c
}

// beat sends server id's heartbeat with its current report of "v".
func (c *cluster) beat(id string) *blockpb.BlockHeartbeatResponse {
	c.t.Helper()
	if r := c.rep[id]; r != nil {
		return c.hb[id].beat(r)
	}
	return c.hb[id].beat()
}

func (c *cluster) beatAll(ids ...string) {
	c.t.Helper()
	if len(ids) == 0 {
		for id := range c.hb {
			ids = append(ids, id)
		}
	}
	for _, id := range ids {
		c.beat(id)
	}
}

// kill ends server id's heartbeat stream and waits until the master sees it.
func (c *cluster) kill(id string) {
	c.t.Helper()
	c.hb[id].close()
	delete(c.hb, id)
	eventually(c.t, id+" not alive", func() bool {
		c.h.m.mu.Lock()
		defer c.h.m.mu.Unlock()
		return !c.h.m.aliveLocked(id, c.h.clock.Now())
	})
}

// reconnect opens a new heartbeat stream for server id.
func (c *cluster) reconnect(id, rack string) {
	c.t.Helper()
	c.hb[id] = c.h.connect(c.h.vols[id], "dc1", rack, 10*gib)
}

// pass moves the clock by d in half-pulse steps; the live servers beat at
// every step and the master checks for failovers.
func (c *cluster) pass(d time.Duration) {
	c.t.Helper()
	for d > 0 {
		step := min(d, foPulse/2)
		c.h.clock.Advance(step)
		d -= step
		c.beatAll()
		c.h.m.checkFailovers()
	}
}

func (c *cluster) info() *blockpb.VolumeInfo {
	c.t.Helper()
	info, err := c.h.lookup("v")
	if err != nil {
		c.t.Fatal(err)
	}
	return info
}

func (c *cluster) set(id string, epoch uint64, role blockpb.Role, durable uint64) {
	c.rep[id] = &blockpb.VolumeReport{Name: "v", Epoch: epoch, Role: role, DurableLsn: durable, HeadLsn: durable, Healthy: true}
}

func assignmentFor(resp *blockpb.BlockHeartbeatResponse, name string) *blockpb.Assignment {
	for _, a := range resp.GetAssignments() {
		if a.GetSpec().GetName() == name {
			return a
		}
	}
	return nil
}

const (
	primary = blockpb.Role_ROLE_PRIMARY
	replica = blockpb.Role_ROLE_REPLICA
	none    = blockpb.Role_ROLE_NONE
)

func TestAssignmentsCarryEveryMemberWithEndpoints(t *testing.T) {
	c := newCluster(t, 3, blockpb.Durability_DURABILITY_SYNC, "a", "b", "c")
	c.rep = map[string]*blockpb.VolumeReport{}
	roles := map[blockpb.Role]int{}
	for _, id := range []string{"a", "b", "c"} {
		a := assignmentFor(c.beat(id), "v")
		if a == nil {
			t.Fatalf("%s: no assignment", id)
		}
		roles[a.Role]++
		if len(a.Config.Members) != 3 {
			t.Fatalf("%s: members %v", id, a.Config.Members)
		}
		nPrimary := 0
		for _, mem := range a.Config.Members {
			if mem.Server.ReplAddress == "" || mem.Server.GrpcAddress == "" || mem.Server.ServerId == "" {
				t.Fatalf("%s: member without endpoints: %v", id, mem)
			}
			if mem.Role == primary {
				nPrimary++
				if mem.Server.ServerId != a.Config.PrimaryServerId {
					t.Fatalf("primary member %s, config says %s", mem.Server.ServerId, a.Config.PrimaryServerId)
				}
			}
		}
		if nPrimary != 1 {
			t.Fatalf("%s: %d primaries in %v", id, nPrimary, a.Config.Members)
		}
	}
	if roles[primary] != 1 || roles[replica] != 2 {
		t.Fatalf("roles %v", roles)
	}
}

// The new primary is chosen only after the old primary's lease must have
// run out: never before the lease the old primary itself counts, and not
// before the master's conservative view of it.
func TestFailoverWaitsForLeaseExpiry(t *testing.T) {
	c := newCluster(t, 2, blockpb.Durability_DURABILITY_SYNC, "a", "b")
	c.pass(4 * time.Second) // past the start floor, so the grant below decides
	c.set("a", 1, primary, 10)
	c.set("b", 1, replica, 10)
	resp := c.beat("a")
	primaryUntil := c.hb["a"].leaseUntil(resp)
	c.beat("b")
	masterUntil := c.h.m.LeaseExpiry("v")
	if !masterUntil.After(primaryUntil) {
		t.Fatalf("master's view %v not after the primary's %v", masterUntil, primaryUntil)
	}
	c.kill("a")
	lostAt := c.h.clock.Now()
	for c.h.clock.Now().Add(100 * time.Millisecond).Before(masterUntil) {
		c.pass(100 * time.Millisecond)
		info := c.info()
		if info.Config.Epoch != 1 {
			t.Fatalf("promoted at %v, before the lease view %v ends (primary's own lease ends %v)",
				c.h.clock.Now(), masterUntil, primaryUntil)
		}
		if info.State != StateUnavailable || !strings.Contains(info.FailoverBlocked, "lease") {
			t.Fatalf("while waiting: state %q blocked %q", info.State, info.FailoverBlocked)
		}
	}
	c.pass(200 * time.Millisecond)
	now := c.h.clock.Now()
	info := c.info()
	if info.Config.Epoch != 2 || info.Config.PrimaryServerId != "b" {
		t.Fatalf("after the lease: %v", info.Config)
	}
	if now.Before(masterUntil) || !now.After(primaryUntil) {
		t.Fatalf("promoted at %v: lease view %v, primary's lease %v", now, masterUntil, primaryUntil)
	}
	if len(info.Config.Members) != 1 || info.Failovers != 1 || !strings.Contains(info.Config.Reason, "failover") ||
		info.History[len(info.History)-1].Epoch != 1 || info.Config.MayHaveLostWrites || info.Warning != "" {
		t.Fatalf("after failover: %v", info)
	}
	// The new primary is assigned, then serves: the pause is measured.
	a := assignmentFor(c.beat("b"), "v")
	if a == nil || a.Role != primary || a.Config.Epoch != 2 {
		t.Fatalf("b's assignment %v", a)
	}
	c.h.clock.Advance(50 * time.Millisecond)
	c.set("b", 2, primary, 10)
	c.beat("b")
	info = c.info()
	if info.State != StateOK || info.LastFailoverPauseMs < now.Sub(lostAt).Milliseconds() {
		t.Fatalf("state %q pause %dms (lost %v before the promotion)", info.State, info.LastFailoverPauseMs, now.Sub(lostAt))
	}
	ms := gather(t, c.h.m)
	if v, _ := metricValue(ms["weedblock_master_failovers_total"], "", ""); v != 1 {
		t.Fatalf("failovers_total %v", v)
	}
	if v, _ := metricValue(ms["weedblock_master_epoch_changes_total"], "", ""); v != 1 {
		t.Fatalf("epoch_changes_total %v", v)
	}
	if v, ok := metricValue(ms["weedblock_master_last_failover_pause_seconds"], "volume", "v"); !ok || v <= 0 {
		t.Fatalf("pause metric %v %v", v, ok)
	}

	// The old primary comes back: not a member, it is fenced (role NONE);
	// the new primary is told to bring it back and reports it caught up.
	c.reconnect("a", "r-a")
	c.set("a", 1, primary, 12)
	if a := assignmentFor(c.beat("a"), "v"); a == nil || a.Role != none || a.Config.Epoch != 2 {
		t.Fatalf("returning old primary: %v", a)
	}
	resp = c.beat("b")
	if len(resp.CatchUp) != 1 || resp.CatchUp[0].Server.ServerId != "a" || resp.CatchUp[0].Epoch != 2 || resp.CatchUp[0].Server.ReplAddress == "" {
		t.Fatalf("catch-up targets %v", resp.CatchUp)
	}
	c.set("a", 2, none, 10)
	c.beat("a")
	r, err := c.h.client.ReportCaughtUp(context.Background(), &blockpb.ReportCaughtUpRequest{Name: "v", Epoch: 2, ServerId: "a", CallerServerId: "b"})
	if err != nil || r.Config.Epoch != 3 || len(r.Config.Members) != 2 || r.Config.PrimaryServerId != "b" {
		t.Fatalf("ReportCaughtUp: %v %v", r, err)
	}
	if a := assignmentFor(c.beat("a"), "v"); a == nil || a.Role != replica || a.Config.Epoch != 3 {
		t.Fatalf("rejoined: %v", a)
	}
	if resp := c.beat("b"); len(resp.CatchUp) != 0 {
		t.Fatalf("catch-up targets after rejoin %v", resp.CatchUp)
	}
}

func TestFailoverPicksHighestDurableTrustedMember(t *testing.T) {
	for _, tc := range []struct {
		name      string
		mut       func(c *cluster)
		want      string
		dur       blockpb.Durability
		wantBlock string
	}{
		{name: "highest durable", want: "c", mut: func(c *cluster) {}},
		{name: "untrusted skipped", want: "b", mut: func(c *cluster) { c.rep["c"].Untrusted = true; c.rep["c"].DurableLsn = 100 }},
		{name: "unhealthy skipped", want: "b", mut: func(c *cluster) { c.rep["c"].Healthy = false }},
		{name: "stale incarnation skipped", want: "b", mut: func(c *cluster) { c.rep["c"].Epoch = 0 }},
		{name: "all untrusted", wantBlock: "untrusted", mut: func(c *cluster) { c.rep["b"].Untrusted = true; c.rep["c"].Untrusted = true }},
		{name: "quorum 1 of 3 gone", want: "c", dur: blockpb.Durability_DURABILITY_QUORUM, mut: func(c *cluster) {}},
		{name: "quorum 2 of 3 gone", wantBlock: "quorum: heard from 1 of 3", dur: blockpb.Durability_DURABILITY_QUORUM, mut: func(c *cluster) { c.kill("c") }},
		{name: "quorum untrusted does not count", wantBlock: "quorum: heard from 1 of 3", dur: blockpb.Durability_DURABILITY_QUORUM, mut: func(c *cluster) { c.rep["c"].Untrusted = true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dur := tc.dur
			if dur == 0 {
				dur = blockpb.Durability_DURABILITY_SYNC
			}
			c := newCluster(t, 3, dur, "a", "b", "c", "d")
			c.set("a", 1, primary, 20)
			c.set("b", 1, replica, 5)
			c.set("c", 1, replica, 9)
			// d is no member but holds a copy far ahead: never a candidate.
			c.rep["d"] = &blockpb.VolumeReport{Name: "v", Epoch: 1, Role: none, DurableLsn: 1000, Healthy: true}
			c.beatAll()
			c.kill("a")
			tc.mut(c)
			c.pass(5 * time.Second)
			info := c.info()
			if tc.wantBlock != "" {
				if info.Config.Epoch != 1 || info.State != StateUnavailable || !strings.Contains(info.FailoverBlocked, tc.wantBlock) {
					t.Fatalf("want no promotion (%q): epoch %d state %q blocked %q", tc.wantBlock, info.Config.Epoch, info.State, info.FailoverBlocked)
				}
				return
			}
			if info.Config.Epoch != 2 || info.Config.PrimaryServerId != tc.want {
				t.Fatalf("promoted %q (epoch %d), want %q: %s", info.Config.PrimaryServerId, info.Config.Epoch, tc.want, info.Config.Reason)
			}
			for _, mem := range info.Config.Members {
				if id := mem.Server.ServerId; id == "a" || id == "d" {
					t.Fatalf("new epoch lists %s: %v", id, info.Config.Members)
				}
			}
			if info.FailoverBlocked != "" {
				t.Fatalf("blocked %q after promotion", info.FailoverBlocked)
			}
		})
	}
}

func TestAsyncFailoverIsFlagged(t *testing.T) {
	c := newCluster(t, 2, blockpb.Durability_DURABILITY_ASYNC, "a", "b")
	c.set("a", 1, primary, 50)
	c.set("b", 1, replica, 30)
	c.beatAll()
	c.kill("a")
	c.pass(5 * time.Second)
	info := c.info()
	if info.Config.Epoch != 2 || info.Config.PrimaryServerId != "b" || !info.Config.MayHaveLostWrites ||
		!strings.Contains(info.Config.Reason, "async") || !strings.Contains(info.Config.Reason, "50") {
		t.Fatalf("async failover: %v", info.Config)
	}
	if info.LossyEpoch != 2 || !strings.Contains(info.Warning, "lost") {
		t.Fatalf("lossy epoch %d warning %q", info.LossyEpoch, info.Warning)
	}
	// Status over HTTP says so too.
	srv := httptest.NewServer(c.h.m.HTTPHandler())
	defer srv.Close()
	code, body := httpGet(t, http.MethodGet, srv.URL+"/block/volume/v")
	var got struct {
		Failovers  string `json:"failovers"`
		LossyEpoch string `json:"lossyEpoch"`
		Warning    string `json:"warning"`
	}
	if code != http.StatusOK || json.Unmarshal(body, &got) != nil || got.Failovers != "1" || got.LossyEpoch != "2" || !strings.Contains(got.Warning, "async") {
		t.Fatalf("GET /block/volume/v: %d %s", code, body)
	}
	// Still surfaced after a later, ordinary epoch.
	c.reconnect("a", "r-a")
	c.set("a", 2, none, 30)
	c.set("b", 2, primary, 30)
	c.beatAll()
	if _, err := c.h.client.ReportCaughtUp(context.Background(), &blockpb.ReportCaughtUpRequest{Name: "v", Epoch: 2, ServerId: "a", CallerServerId: "b"}); err != nil {
		t.Fatal(err)
	}
	if info := c.info(); info.Config.Epoch != 3 || info.Config.MayHaveLostWrites || info.LossyEpoch != 2 || info.Warning == "" {
		t.Fatalf("after rejoin: epoch %d lossy %d warning %q", info.Config.Epoch, info.LossyEpoch, info.Warning)
	}
}

func TestNoFailoverWithoutAnotherCopy(t *testing.T) {
	c := newCluster(t, 1, blockpb.Durability_DURABILITY_SYNC, "a", "b")
	c.kill("a")
	c.pass(5 * time.Second)
	if info := c.info(); info.Config.Epoch != 1 || info.State != StateUnavailable || info.FailoverBlocked == "" {
		t.Fatalf("rf=1: epoch %d state %q blocked %q", info.Config.Epoch, info.State, info.FailoverBlocked)
	}
	// A primary that comes back before anything was promoted keeps its role.
	c.reconnect("a", "r-a")
	c.set("a", 1, primary, 0)
	c.pass(time.Second)
	if info := c.info(); info.Config.Epoch != 1 || info.State != StateOK || info.FailoverBlocked != "" {
		t.Fatalf("back: epoch %d state %q blocked %q", info.Config.Epoch, info.State, info.FailoverBlocked)
	}
}

func TestRemoveMemberValidation(t *testing.T) {
	c := newCluster(t, 3, blockpb.Durability_DURABILITY_SYNC, "a", "b", "c", "d")
	ctx := context.Background()
	remove := func(epoch uint64, id, caller string) (*blockpb.RemoveMemberResponse, error) {
		return c.h.client.RemoveMember(ctx, &blockpb.RemoveMemberRequest{Name: "v", Epoch: epoch, ServerId: id, CallerServerId: caller, Reason: "no acks for 5s"})
	}
	_, err := remove(1, "b", "c")
	wantCode(t, err, codes.PermissionDenied, "not the primary")
	_, err = remove(2, "b", "a")
	wantCode(t, err, codes.FailedPrecondition, "stale epoch 2")
	_, err = remove(1, "d", "a")
	wantCode(t, err, codes.NotFound, "not a member")
	_, err = remove(1, "zz", "a")
	wantCode(t, err, codes.NotFound, "not a member")
	_, err = remove(1, "a", "a")
	wantCode(t, err, codes.InvalidArgument, "cannot remove itself")
	_, err = remove(1, "", "a")
	wantCode(t, err, codes.InvalidArgument)
	_, err = c.h.client.RemoveMember(ctx, &blockpb.RemoveMemberRequest{Name: "nope", Epoch: 1, ServerId: "b", CallerServerId: "a"})
	wantCode(t, err, codes.NotFound)
	if info := c.info(); info.Config.Epoch != 1 {
		t.Fatalf("refused calls changed the epoch to %d", info.Config.Epoch)
	}

	r, err := remove(1, "b", "a")
	if err != nil || r.Config.Epoch != 2 || len(r.Config.Members) != 2 || roleOf(r.Config, "b") != none || r.Config.PrimaryServerId != "a" ||
		!strings.Contains(r.Config.Reason, "no acks") {
		t.Fatalf("RemoveMember: %v %v", r, err)
	}
	// On disk before anyone is told.
	reg, err := loadRegistry(filepath.Join(c.h.dir, "block"))
	if err != nil || reg.get("v").config.Epoch != 2 {
		t.Fatalf("registry after remove: %v", err)
	}
	// A retry of the same call answers with the current config.
	if r2, err := remove(1, "b", "a"); err != nil || r2.Config.Epoch != 2 {
		t.Fatalf("retry: %v %v", r2, err)
	}
	// Removing c at the stale epoch 1 is refused (c is still a member).
	_, err = remove(1, "c", "a")
	wantCode(t, err, codes.FailedPrecondition, "stale epoch 1")
	if a := assignmentFor(c.beat("b"), "v"); a == nil || a.Role != none || a.Config.Epoch != 2 {
		t.Fatalf("removed member's assignment %v", a)
	}
	if a := assignmentFor(c.beat("a"), "v"); a == nil || a.Role != primary || a.Config.Epoch != 2 {
		t.Fatalf("primary's assignment %v (same primary: no wait)", a)
	}
	// A removed member is never promoted, however far ahead.
	c.set("a", 2, primary, 10)
	c.set("b", 1, none, 99)
	c.set("c", 2, replica, 10)
	c.beatAll()
	c.kill("a")
	c.pass(5 * time.Second)
	if info := c.info(); info.Config.PrimaryServerId != "c" || info.Config.Epoch != 3 {
		t.Fatalf("after failover: %v", info.Config)
	}
}

func TestReportCaughtUpValidation(t *testing.T) {
	c := newCluster(t, 2, blockpb.Durability_DURABILITY_SYNC, "a", "b", "c", "d")
	ctx := context.Background()
	caught := func(epoch uint64, id, caller string) (*blockpb.ReportCaughtUpResponse, error) {
		return c.h.client.ReportCaughtUp(ctx, &blockpb.ReportCaughtUpRequest{Name: "v", Epoch: epoch, ServerId: id, CallerServerId: caller})
	}
	if _, err := c.h.client.RemoveMember(ctx, &blockpb.RemoveMemberRequest{Name: "v", Epoch: 1, ServerId: "b", CallerServerId: "a"}); err != nil {
		t.Fatal(err)
	}
	_, err := caught(2, "b", "b")
	wantCode(t, err, codes.PermissionDenied, "not the primary")
	_, err = caught(3, "b", "a")
	wantCode(t, err, codes.FailedPrecondition, "stale epoch 3")
	_, err = caught(2, "zz", "a")
	wantCode(t, err, codes.NotFound, "unknown server")
	_, err = caught(2, "c", "a") // alive, but holds no copy
	wantCode(t, err, codes.FailedPrecondition, "no copy")
	c.rep["b"] = &blockpb.VolumeReport{Name: "v", Epoch: 2, Role: none, Healthy: true, Untrusted: true}
	c.beat("b")
	_, err = caught(2, "b", "a")
	wantCode(t, err, codes.FailedPrecondition, "untrusted")
	c.set("b", 2, none, 0)
	c.beat("b")
	r, err := caught(2, "b", "a")
	if err != nil || r.Config.Epoch != 3 || roleOf(r.Config, "b") != replica {
		t.Fatalf("ReportCaughtUp: %v %v", r, err)
	}
	// Retry, and already a member: the current config.
	if r, err := caught(2, "b", "a"); err != nil || r.Config.Epoch != 3 {
		t.Fatalf("retry: %v %v", r, err)
	}
	// rf=2 is full: d cannot join even with a good copy.
	c.rep["d"] = &blockpb.VolumeReport{Name: "v", Epoch: 3, Role: none, Healthy: true}
	c.beat("d")
	_, err = caught(3, "d", "a")
	wantCode(t, err, codes.FailedPrecondition, "already has 2 members")
	c.set("a", 3, primary, 0)
	if resp := c.beat("a"); len(resp.CatchUp) != 0 {
		t.Fatalf("catch-up targets on a full volume: %v", resp.CatchUp)
	}
}

// A promotion is persisted before any server hears of it: a master that
// crashes right after (before a heartbeat carried it) restarts with the new
// epoch, and still does not assign the new primary before a lease of its
// previous run could have ended.
func TestPromotionPersistedBeforeAssignment(t *testing.T) {
	c := newCluster(t, 2, blockpb.Durability_DURABILITY_SYNC, "a", "b")
	c.set("a", 1, primary, 10)
	c.set("b", 1, replica, 10)
	c.beatAll()
	c.kill("a")
	c.pass(3 * time.Second)
	c.h.clock.Advance(time.Second) // no beat from b: nobody hears of a new epoch
	c.h.m.checkFailovers()
	// b was silent for a second only: still alive, so it is promoted, but
	// no heartbeat has carried the new epoch yet.
	c.h.m.mu.Lock()
	epoch := c.h.m.reg.get("v").config.Epoch
	c.h.m.mu.Unlock()
	if epoch != 2 {
		t.Fatalf("epoch %d, want the promotion", epoch)
	}
	c.h.stop() // crash between persist and send
	reg, err := loadRegistry(filepath.Join(c.h.dir, "block"))
	if err != nil || reg.get("v").config.Epoch != 2 || reg.get("v").config.PrimaryServerId != "b" || reg.get("v").failovers != 1 {
		t.Fatalf("reloaded registry: %v", err)
	}
	c.h.start()
	restarted := c.h.clock.Now()
	c.reconnect("b", "r-b")
	if a := assignmentFor(c.beat("b"), "v"); a != nil {
		t.Fatalf("new primary assigned right after a master restart: %v", a)
	}
	for c.h.clock.Now().Before(restarted.Add(c.h.opts.Lease + c.h.opts.Margin)) {
		if a := assignmentFor(c.beat("b"), "v"); a != nil {
			t.Fatalf("assigned at %v, before start + lease + margin", c.h.clock.Now().Sub(restarted))
		}
		c.h.clock.Advance(foPulse / 2)
	}
	if a := assignmentFor(c.beat("b"), "v"); a == nil || a.Role != primary || a.Config.Epoch != 2 {
		t.Fatalf("after the floor: %v", a)
	}
	if info := c.info(); info.Failovers != 1 || info.Config.Epoch != 2 {
		t.Fatalf("info after restart: %v", info)
	}
}

// A master restarted while waiting for a lost primary's lease starts the
// wait again from its own start (it cannot know the last grant).
func TestMasterRestartMidFailover(t *testing.T) {
	c := newCluster(t, 2, blockpb.Durability_DURABILITY_SYNC, "a", "b")
	c.pass(4 * time.Second)
	c.set("a", 1, primary, 10)
	c.set("b", 1, replica, 10)
	resp := c.beat("a")
	primaryUntil := c.hb["a"].leaseUntil(resp)
	c.beat("b")
	c.kill("a")
	c.pass(time.Second)
	if info := c.info(); info.Config.Epoch != 1 {
		t.Fatalf("promoted too early: %v", info.Config)
	}
	c.h.stop()
	c.h.start()
	restarted := c.h.clock.Now()
	c.reconnect("b", "r-b")
	floor := restarted.Add(c.h.opts.Lease + c.h.opts.Margin)
	for c.h.clock.Now().Add(foPulse / 2).Before(floor) {
		c.pass(foPulse / 2)
		if info := c.info(); info.Config.Epoch != 1 {
			t.Fatalf("restarted master promoted %v after its start (floor %v)", c.h.clock.Now().Sub(restarted), floor.Sub(restarted))
		}
	}
	c.pass(foPulse)
	info := c.info()
	if info.Config.Epoch != 2 || info.Config.PrimaryServerId != "b" {
		t.Fatalf("after the floor: %v", info.Config)
	}
	if !c.h.clock.Now().After(primaryUntil) {
		t.Fatal("promoted before the old primary's own lease ended")
	}
}

func TestPromoteVolumeChecks(t *testing.T) {
	c := newCluster(t, 3, blockpb.Durability_DURABILITY_SYNC, "a", "b", "c", "d")
	ctx := context.Background()
	promote := func(to string, force bool) (*blockpb.PromoteVolumeResponse, error) {
		return c.h.client.PromoteVolume(ctx, &blockpb.PromoteVolumeRequest{Name: "v", ToServerId: to, Force: force})
	}
	c.set("a", 1, primary, 20)
	c.set("b", 1, replica, 20)
	c.set("c", 1, replica, 15)
	c.beatAll()
	_, err := promote("a", false)
	wantCode(t, err, codes.FailedPrecondition, "already the primary")
	_, err = promote("zz", false)
	wantCode(t, err, codes.NotFound, "unknown server")
	_, err = promote("d", false) // alive, not a member
	wantCode(t, err, codes.FailedPrecondition, "not a member")
	_, err = promote("d", true) // forced, but it holds no copy
	wantCode(t, err, codes.FailedPrecondition, "report a copy")
	_, err = promote("c", false)
	wantCode(t, err, codes.FailedPrecondition, "behind")
	c.rep["b"].Untrusted = true
	c.beat("b")
	_, err = promote("b", false)
	wantCode(t, err, codes.FailedPrecondition, "untrusted")
	c.rep["b"].Untrusted = false
	c.beat("b")
	_, err = c.h.client.PromoteVolume(ctx, &blockpb.PromoteVolumeRequest{Name: "nope", ToServerId: "b"})
	wantCode(t, err, codes.NotFound)
	if info := c.info(); info.Config.Epoch != 1 {
		t.Fatalf("refused promotes changed the epoch to %d", info.Config.Epoch)
	}

	leaseEnd := c.h.m.LeaseExpiry("v")
	r, err := promote("b", false)
	if err != nil {
		t.Fatal(err)
	}
	cfg := r.Volume.Config
	if cfg.Epoch != 2 || cfg.PrimaryServerId != "b" || roleOf(cfg, "a") != replica || roleOf(cfg, "c") != replica || cfg.MayHaveLostWrites || r.Volume.Failovers != 1 {
		t.Fatalf("promote: %v", r.Volume)
	}
	// The old primary is fenced at once (a replica of epoch 2); the new
	// one is not assigned before the old lease must have run out.
	if a := assignmentFor(c.beat("a"), "v"); a == nil || a.Role != replica || a.Config.Epoch != 2 {
		t.Fatalf("old primary's assignment %v", a)
	}
	for c.h.clock.Now().Before(leaseEnd) {
		if a := assignmentFor(c.beat("b"), "v"); a != nil {
			t.Fatalf("new primary assigned %v before the old lease ends", leaseEnd.Sub(c.h.clock.Now()))
		}
		c.h.clock.Advance(foPulse / 2)
		c.beat("a")
		c.beat("c")
		c.beat("d")
	}
	if a := assignmentFor(c.beat("b"), "v"); a == nil || a.Role != primary || a.Config.Epoch != 2 {
		t.Fatalf("new primary's assignment %v", a)
	}

	// Forced: a non-member with a copy is accepted, and flagged.
	c.rep["d"] = &blockpb.VolumeReport{Name: "v", Epoch: 1, Role: none, Healthy: true, DurableLsn: 3}
	c.beat("d")
	r, err = promote("d", true)
	if err != nil || r.Volume.Config.PrimaryServerId != "d" || r.Volume.Config.Epoch != 3 || !r.Volume.Config.MayHaveLostWrites || r.Volume.LossyEpoch != 3 || r.Volume.Failovers != 2 {
		t.Fatalf("forced promote: %v %v", r.GetVolume(), err)
	}
	if roleOf(r.Volume.Config, "b") != none {
		t.Fatalf("forced promote kept the old primary: %v", r.Volume.Config.Members)
	}
}

func TestMemberLagInVolumeInfo(t *testing.T) {
	c := newCluster(t, 3, blockpb.Durability_DURABILITY_SYNC, "a", "b", "c")
	c.set("a", 1, primary, 100)
	c.rep["a"].Replicas = []*blockpb.ReplicaState{
		{ServerId: "c", State: "catching-up", LagLsn: 40, LagBytes: 40 * 4096},
		{ServerId: "b", State: "in-sync", LagLsn: 0},
	}
	c.beat("a")
	info := c.info()
	if len(info.MemberLag) != 3 {
		t.Fatalf("member lag %v", info.MemberLag)
	}
	for i, mem := range info.Config.Members {
		lag := info.MemberLag[i]
		switch mem.Server.ServerId {
		case "a":
			if lag.ServerId != "" {
				t.Fatalf("primary's own lag %v", lag)
			}
		case "b":
			if lag.ServerId != "b" || lag.State != "in-sync" {
				t.Fatalf("b: %v", lag)
			}
		case "c":
			if lag.ServerId != "c" || lag.LagLsn != 40 || lag.State != "catching-up" {
				t.Fatalf("c: %v", lag)
			}
		}
	}
}

// A master that becomes the leader cannot know the leases the previous
// leader granted: it waits Lease + Margin from then before promoting.
func TestLeadershipGainRestartsLeaseWait(t *testing.T) {
	c := newCluster(t, 2, blockpb.Durability_DURABILITY_SYNC, "a", "b")
	c.pass(4 * time.Second)
	c.set("a", 1, primary, 10)
	c.set("b", 1, replica, 10)
	c.beatAll()
	c.kill("a")
	c.h.leader.Store(false)
	c.h.m.checkFailovers()
	c.h.clock.Advance(2 * time.Second) // another master leads meanwhile
	c.h.m.checkFailovers()
	c.h.leader.Store(true)
	became := c.h.clock.Now()
	floor := became.Add(c.h.opts.Lease + c.h.opts.Margin)
	for c.h.clock.Now().Add(foPulse / 2).Before(floor) {
		c.pass(foPulse / 2)
		if info := c.info(); info.Config.Epoch != 1 {
			t.Fatalf("promoted %v after becoming the leader (must wait %v)", c.h.clock.Now().Sub(became), floor.Sub(became))
		}
	}
	c.pass(foPulse)
	if info := c.info(); info.Config.Epoch != 2 || info.Config.PrimaryServerId != "b" {
		t.Fatalf("after the floor: %v", info.Config)
	}
}

// Membership calls, promotions, failover checks and heartbeats racing: every
// epoch the registry ends with is above the one before, names exactly one
// primary (its primary_server_id) and lists each server once.
func TestMembershipChangesUnderConcurrency(t *testing.T) {
	c := newCluster(t, 3, blockpb.Durability_DURABILITY_SYNC, "a", "b", "c")
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				info, err := c.h.lookup("v")
				if err != nil {
					t.Error(err)
					return
				}
				cfg := info.Config
				p := cfg.PrimaryServerId
				other := []string{"a", "b", "c"}[(w+i/3)%3]
				switch (w + i) % 3 {
				case 0:
					c.h.client.RemoveMember(ctx, &blockpb.RemoveMemberRequest{Name: "v", Epoch: cfg.Epoch, ServerId: other, CallerServerId: p})
				case 1:
					c.h.client.ReportCaughtUp(ctx, &blockpb.ReportCaughtUpRequest{Name: "v", Epoch: cfg.Epoch, ServerId: other, CallerServerId: p})
				case 2:
					c.h.client.PromoteVolume(ctx, &blockpb.PromoteVolumeRequest{Name: "v", ToServerId: other, Force: i%2 == 0})
				}
				c.h.m.checkFailovers()
			}
		}()
	}
	for i := 0; i < 25; i++ {
		c.beatAll()
	}
	wg.Wait()
	info := c.info()
	all := append(info.History, info.Config)
	for i, cfg := range all {
		if i > 0 && cfg.Epoch <= all[i-1].Epoch {
			t.Fatalf("epoch %d after %d", cfg.Epoch, all[i-1].Epoch)
		}
		seen := map[string]bool{}
		primaries := 0
		for _, mem := range cfg.Members {
			id := mem.Server.ServerId
			if seen[id] {
				t.Fatalf("epoch %d lists %s twice", cfg.Epoch, id)
			}
			seen[id] = true
			if mem.Role == primary {
				primaries++
				if id != cfg.PrimaryServerId {
					t.Fatalf("epoch %d: primary member %s, primary_server_id %s", cfg.Epoch, id, cfg.PrimaryServerId)
				}
			}
		}
		if primaries != 1 {
			t.Fatalf("epoch %d has %d primaries", cfg.Epoch, primaries)
		}
	}
	if info.Config.Epoch < 3 {
		t.Fatalf("only %d epochs: the calls did nothing", info.Config.Epoch)
	}
	reg, err := loadRegistry(filepath.Join(c.h.dir, "block"))
	if err != nil || reg.get("v").config.Epoch != info.Config.Epoch {
		t.Fatalf("registry on disk: %v", err)
	}
}

func TestMembershipRPCsRefuseBadInputAndFollowers(t *testing.T) {
	c := newCluster(t, 2, blockpb.Durability_DURABILITY_SYNC, "a", "b")
	ctx := context.Background()
	calls := map[string]func() error{
		"remove": func() error {
			_, err := c.h.client.RemoveMember(ctx, &blockpb.RemoveMemberRequest{})
			return err
		},
		"caught-up": func() error {
			_, err := c.h.client.ReportCaughtUp(ctx, &blockpb.ReportCaughtUpRequest{Name: "v"})
			return err
		},
		"promote": func() error {
			_, err := c.h.client.PromoteVolume(ctx, &blockpb.PromoteVolumeRequest{Name: "v"})
			return err
		},
		"promote bad name": func() error {
			_, err := c.h.client.PromoteVolume(ctx, &blockpb.PromoteVolumeRequest{Name: "Bad_Name", ToServerId: "b"})
			return err
		},
	}
	for what, call := range calls {
		t.Run(what, func(t *testing.T) { wantCode(t, call(), codes.InvalidArgument) })
	}
	c.h.leader.Store(false)
	_, err := c.h.client.PromoteVolume(ctx, &blockpb.PromoteVolumeRequest{Name: "v", ToServerId: "b"})
	wantCode(t, err, codes.FailedPrecondition, "not leader; leader is m2:9333")
	_, err = c.h.client.RemoveMember(ctx, &blockpb.RemoveMemberRequest{Name: "v", Epoch: 1, ServerId: "b", CallerServerId: "a"})
	wantCode(t, err, codes.FailedPrecondition, "not leader")
	_, err = c.h.client.ReportCaughtUp(ctx, &blockpb.ReportCaughtUpRequest{Name: "v", Epoch: 1, ServerId: "b", CallerServerId: "a"})
	wantCode(t, err, codes.FailedPrecondition, "not leader")
	// A follower never promotes, however long the primary is gone.
	c.kill("a")
	for i := 0; i < 10; i++ {
		c.h.clock.Advance(time.Second)
		c.h.m.checkFailovers()
	}
	c.h.m.mu.Lock()
	epoch := c.h.m.reg.get("v").config.Epoch
	c.h.m.mu.Unlock()
	if epoch != 1 {
		t.Fatalf("follower promoted: epoch %d", epoch)
	}
}

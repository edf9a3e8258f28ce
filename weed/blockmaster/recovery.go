package blockmaster

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/golang/glog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// lostCopyBeats is how many heartbeats in a row a live home server must
// send without a volume before its copy counts as lost. A server lists
// every local volume in each heartbeat and opens its volumes before its
// first one, so a few pulses without it mean the file is gone.
const lostCopyBeats = 4

// recoveryAllocRetryPulses spaces the attempts to re-create a lost copy on
// one server.
const recoveryAllocRetryPulses = 10

// Kinds of copy trouble: a member with either leaves the epoch.
const (
	troubleLost      = "lost"
	troubleUntrusted = "untrusted"
)

// countAbsentLocked updates, after a heartbeat of server id, how many
// heartbeats in a row it has not listed each volume it is a home of.
// Volumes being created or deleted are not counted.
func (m *Master) countAbsentLocked(id string, s *serverState) {
	homes := m.reg.homesOf(id)
	next := make(map[string]int, len(homes))
	for name := range homes {
		if m.pending[name] != "" || s.reports[name] != nil {
			continue
		}
		next[name] = s.absent[name] + 1
	}
	s.absent = next
}

// copyTroubleLocked says whether server id's copy of rec is lost (the
// server is alive and has not listed the volume for lostCopyBeats
// heartbeats) or untrusted (it says so: a rebuild that has not finished).
// ("", "") when neither, or when the server is not alive (liveness is the
// failover's business).
func (m *Master) copyTroubleLocked(rec *volumeRecord, id string) (kind, why string) {
	name := rec.spec.GetName()
	if m.pending[name] != "" || !m.aliveLocked(id, m.clock.Now()) {
		return "", ""
	}
	s := m.servers[id]
	rep := s.reports[name]
	if rep == nil {
		if n := s.absent[name]; n >= lostCopyBeats {
			return troubleLost, fmt.Sprintf("%s reports no copy (%d heartbeats in a row)", id, n)
		}
		return "", ""
	}
	if rep.GetEpoch() >= rec.firstEpoch && rep.GetUntrusted() {
		return troubleUntrusted, fmt.Sprintf("%s reports its copy untrusted", id)
	}
	return "", ""
}

// dropTroubledMembersLocked persists a new epoch without the replicas
// whose copy is lost or untrusted (the primary is fine: the caller checked).
// They stay homes of the volume: a lost copy is re-created empty and
// rebuilt, an untrusted one is a catch-up target like any non-member copy.
func (m *Master) dropTroubledMembersLocked(name string, rec *volumeRecord, now time.Time) {
	var (
		keep  []*blockpb.Member
		whys  []string
		kinds = map[string]int{}
	)
	for _, mem := range rec.config.GetMembers() {
		id := mem.GetServer().GetServerId()
		if id != rec.config.GetPrimaryServerId() {
			if kind, why := m.copyTroubleLocked(rec, id); kind != "" {
				whys = append(whys, "copy "+kind+": "+why)
				kinds[kind]++
				continue
			}
		}
		keep = append(keep, proto.Clone(mem).(*blockpb.Member))
	}
	if len(whys) == 0 {
		return
	}
	cfg := proto.Clone(rec.config).(*blockpb.EpochConfig)
	cfg.Epoch++
	cfg.CreatedUnixMs = now.UnixMilli()
	cfg.MayHaveLostWrites = false
	cfg.Members = keep
	cfg.Reason = strings.Join(whys, "; ")
	if err := m.commitEpochLocked(name, cfg, false, time.Time{}, time.Time{}, nil); err != nil {
		return // logged; tried again next pulse
	}
	for kind, n := range kinds {
		m.copiesLost[kind] += uint64(n)
	}
}

// recreateLostCopiesLocked asks homes of rec that hold no copy (alive, not
// listing the volume for lostCopyBeats heartbeats) to create an empty,
// untrusted recovery copy, while the volume has fewer copies than its
// replication factor. The new copy is then a catch-up target: the primary
// rebuilds it and ReportCaughtUp makes it a member again. Only homes are
// asked: the master never places a copy anywhere else here. The calls run
// in the background, one at a time per server, spaced by
// recoveryAllocRetryPulses.
func (m *Master) recreateLostCopiesLocked(name string, rec *volumeRecord, now time.Time) {
	rf := int(rec.spec.GetReplicationFactor())
	have := len(rec.config.GetMembers())
	if have >= rf {
		return
	}
	for id, s := range m.servers {
		if roleOf(rec.config, id) == blockpb.Role_ROLE_NONE && m.aliveLocked(id, now) {
			if rep := s.reports[name]; rep != nil && rep.GetEpoch() >= rec.firstEpoch {
				have++
			}
		}
	}
	for _, id := range rec.homes {
		if have >= rf {
			return
		}
		if roleOf(rec.config, id) != blockpb.Role_ROLE_NONE || !m.aliveLocked(id, now) {
			continue
		}
		s := m.servers[id]
		if s.reports[name] != nil || s.absent[name] < lostCopyBeats {
			continue
		}
		have++
		key := name + "\x00" + id
		if m.allocBusy[key] || now.Before(m.allocNext[key]) {
			continue
		}
		addr := s.endpoints.GetGrpcAddress()
		if addr == "" {
			continue
		}
		m.allocBusy[key] = true
		m.allocNext[key] = now.Add(recoveryAllocRetryPulses * m.opts.Pulse)
		req := &blockpb.AllocateVolumeRequest{
			Spec:         proto.Clone(rec.spec).(*blockpb.VolumeSpec),
			Config:       proto.Clone(rec.config).(*blockpb.EpochConfig),
			RecoveryCopy: true,
		}
		glog.Infof("blockmaster: volume %q: %s lost its copy; asking it for an empty recovery copy (epoch %d)", name, id, rec.config.GetEpoch())
		m.wg.Add(1)
		go m.allocateRecoveryCopy(key, id, addr, req)
	}
}

// allocateRecoveryCopy calls AllocateVolume(recovery_copy) on a server; it
// ends with Close at the latest.
func (m *Master) allocateRecoveryCopy(key, id, addr string, req *blockpb.AllocateVolumeRequest) {
	defer m.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), m.opts.RPCTimeout)
	defer cancel()
	go func() {
		select {
		case <-m.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := func() error {
		c, release, err := m.dial(ctx, addr)
		if err != nil {
			return fmt.Errorf("dial %s: %w", addr, err)
		}
		defer release()
		_, err = c.AllocateVolume(ctx, req)
		return err
	}()
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.allocBusy, key)
	name := req.GetSpec().GetName()
	if err != nil {
		glog.Warningf("blockmaster: volume %q: recovery copy on %s: %v", name, id, err)
		return
	}
	m.recoveryCopies++
	glog.Infof("blockmaster: volume %q: %s created a recovery copy; the primary rebuilds it", name, id)
}

// holdsIncarnationLocked reports whether server id reports a copy of this
// incarnation of rec (alive or not).
func (m *Master) holdsIncarnationLocked(rec *volumeRecord, id string) bool {
	rep := m.reportLocked(id, rec.spec.GetName())
	return rep != nil && rep.GetEpoch() >= rec.firstEpoch
}

// RepairVolume brings copies of a volume back through the recovery path
// (block.repair). Without replica_server_id every copy other than the
// primary is named. A named member is left alone (it follows the live
// stream) unless rebuild is set: then it leaves the epoch first (a new
// persisted epoch, "repair: rebuild requested"). Every named non-member
// copy gets its repair sequence bumped and, with rebuild, the forced
// rebuild flag, persisted before the answer; the primary finds both in its
// catch-up targets and plans the copy again. The primary itself cannot be
// repaired (promote another member first). Errors: NotFound for an unknown
// volume, InvalidArgument for an unknown server or one holding no copy,
// FailedPrecondition without a live primary to copy from.
func (m *Master) RepairVolume(ctx context.Context, req *blockpb.RepairVolumeRequest) (*blockpb.RepairVolumeResponse, error) {
	if err := m.checkServing(); err != nil {
		return nil, err
	}
	name, target, rebuild := req.GetName(), strings.TrimSpace(req.GetReplicaServerId()), req.GetRebuild()
	if !validName(name) {
		return nil, badName(name)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	rec := m.reg.get(name)
	if rec == nil {
		return nil, status.Errorf(codes.NotFound, "volume %q not found", name)
	}
	if p := m.pending[name]; p != "" {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %q is %s; try again", name, p)
	}
	now := m.clock.Now()
	primary := rec.config.GetPrimaryServerId()
	if target == primary {
		return nil, status.Errorf(codes.FailedPrecondition, "%q is the primary of %q: promote first (block.promote -name=%s -to=ANOTHER_MEMBER), then repair it", primary, name, name)
	}
	if !m.aliveLocked(primary, now) {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %q has no live primary (%s is not alive) to copy from; wait for the failover or block.promote a member", name, primary)
	}
	if kind, why := m.copyTroubleLocked(rec, primary); kind != "" {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %q has no live primary to copy from: %s; wait for the failover or block.promote a member", name, why)
	}
	if !m.holdsIncarnationLocked(rec, primary) {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %q has no live primary to copy from: %s reports no copy yet", name, primary)
	}
	var named []string
	if target != "" {
		if roleOf(rec.config, target) == blockpb.Role_ROLE_NONE {
			if _, known := m.servers[target]; !known && !rec.isHome(target) {
				return nil, status.Errorf(codes.InvalidArgument, "unknown replica %q: not a member of %q and no server of that id reports a copy", target, name)
			}
			if !m.holdsIncarnationLocked(rec, target) {
				return nil, status.Errorf(codes.InvalidArgument, "replica %q holds no copy of %q (a lost copy of a home server is re-created by the master itself)", target, name)
			}
		}
		named = []string{target}
	} else {
		seen := map[string]bool{primary: true}
		for _, mem := range rec.config.GetMembers() {
			if id := mem.GetServer().GetServerId(); !seen[id] {
				seen[id] = true
				named = append(named, id)
			}
		}
		for id := range m.servers {
			if !seen[id] && m.holdsIncarnationLocked(rec, id) {
				seen[id] = true
				named = append(named, id)
			}
		}
		sort.Strings(named)
		if len(named) == 0 {
			return nil, status.Errorf(codes.FailedPrecondition, "volume %q has no copy other than the primary %s to repair", name, primary)
		}
	}
	resp := &blockpb.RepairVolumeResponse{}
	var remove []string
	for _, id := range named {
		switch {
		case roleOf(rec.config, id) == blockpb.Role_ROLE_NONE:
			resp.Repairing = append(resp.Repairing, id)
		case rebuild:
			remove = append(remove, id)
			resp.Repairing = append(resp.Repairing, id)
		default:
			resp.InSync = append(resp.InSync, id)
		}
	}
	mark := func(r *volumeRecord) {
		if r.repairs == nil {
			r.repairs = map[string]repairMark{}
		}
		for _, id := range resp.Repairing {
			mk := r.repairs[id]
			mk.Seq++
			mk.Rebuild = mk.Rebuild || rebuild
			r.repairs[id] = mk
		}
	}
	switch {
	case len(remove) > 0:
		cfg := proto.Clone(rec.config).(*blockpb.EpochConfig)
		cfg.Epoch++
		cfg.CreatedUnixMs = now.UnixMilli()
		cfg.MayHaveLostWrites = false
		cfg.Reason = fmt.Sprintf("repair: rebuild requested (%s)", strings.Join(remove, ", "))
		cfg.Members = nil
		for _, mem := range rec.config.GetMembers() {
			if !contains(remove, mem.GetServer().GetServerId()) {
				cfg.Members = append(cfg.Members, proto.Clone(mem).(*blockpb.Member))
			}
		}
		if err := m.commitEpochLocked(name, cfg, false, time.Time{}, time.Time{}, mark); err != nil {
			return nil, status.Errorf(codes.Internal, "repair %q: %v", name, err)
		}
	case len(resp.Repairing) > 0:
		if err := m.reg.update(name, nil, false, mark); err != nil {
			glog.Errorf("blockmaster: repair %q: %v", name, err)
			return nil, status.Errorf(codes.Internal, "repair %q: %v", name, err)
		}
	}
	m.repairsRequested += uint64(len(resp.Repairing))
	if len(resp.Repairing) > 0 {
		glog.Infof("blockmaster: volume %q: repair of %v requested (rebuild %v); in sync: %v", name, resp.Repairing, rebuild, resp.InSync)
	}
	resp.Volume = m.volumeInfoLocked(m.reg.get(name), now)
	return resp, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// recovering reports whether the primary's report lists a recovery
// that is running (no outcome yet, in a working phase).
func recovering(recs []*blockpb.RecoveryProgress) bool {
	for _, r := range recs {
		switch r.GetPhase() {
		case "", "done", "failed":
			continue
		}
		if r.GetLastOutcome() == "" {
			return true
		}
	}
	return false
}

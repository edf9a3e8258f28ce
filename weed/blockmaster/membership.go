package blockmaster

import (
	"context"
	"fmt"
	"sort"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// callerLocked checks that a membership call comes from the current
// primary of the current epoch and returns the volume.
func (m *Master) callerLocked(name string, epoch uint64, caller string) (*volumeRecord, error) {
	rec := m.reg.get(name)
	if rec == nil {
		return nil, status.Errorf(codes.NotFound, "volume %q not found", name)
	}
	if p := m.pending[name]; p != "" {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %q is %s; try again", name, p)
	}
	if caller != rec.config.GetPrimaryServerId() {
		return nil, status.Errorf(codes.PermissionDenied, "%q is not the primary of %q (epoch %d has %s)", caller, name, rec.config.GetEpoch(), rec.config.GetPrimaryServerId())
	}
	if epoch != rec.config.GetEpoch() {
		return rec, status.Errorf(codes.FailedPrecondition, "stale epoch %d for %q: current is %d", epoch, name, rec.config.GetEpoch())
	}
	return rec, nil
}

func checkIDs(name, serverID, caller string) error {
	if !validName(name) {
		return badName(name)
	}
	if serverID == "" || caller == "" {
		return status.Error(codes.InvalidArgument, "server_id and caller_server_id are required")
	}
	return nil
}

// RemoveMember is called by the primary when a replica stops answering: the
// master persists a new epoch without it (the primary keeps its role) and
// returns it; the removed server gets role NONE and fences. A retry after
// success (the caller still primary, the server already gone, the caller's
// epoch older) returns the current config.
func (m *Master) RemoveMember(ctx context.Context, req *blockpb.RemoveMemberRequest) (*blockpb.RemoveMemberResponse, error) {
	if err := m.checkServing(); err != nil {
		return nil, err
	}
	name, id, caller := req.GetName(), req.GetServerId(), req.GetCallerServerId()
	if err := checkIDs(name, id, caller); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, err := m.callerLocked(name, req.GetEpoch(), caller)
	if err != nil {
		if rec != nil && req.GetEpoch() < rec.config.GetEpoch() && status.Code(err) == codes.FailedPrecondition && roleOf(rec.config, id) == blockpb.Role_ROLE_NONE {
			return &blockpb.RemoveMemberResponse{Config: proto.Clone(rec.config).(*blockpb.EpochConfig)}, nil
		}
		return nil, err
	}
	switch roleOf(rec.config, id) {
	case blockpb.Role_ROLE_NONE:
		return nil, status.Errorf(codes.NotFound, "%q is not a member of %q epoch %d", id, name, rec.config.GetEpoch())
	case blockpb.Role_ROLE_PRIMARY:
		return nil, status.Errorf(codes.InvalidArgument, "the primary %q cannot remove itself", id)
	}
	now := m.clock.Now()
	cfg := proto.Clone(rec.config).(*blockpb.EpochConfig)
	cfg.Epoch++
	cfg.CreatedUnixMs = now.UnixMilli()
	cfg.MayHaveLostWrites = false
	cfg.Reason = fmt.Sprintf("member %s removed by primary %s: %s", id, caller, req.GetReason())
	cfg.Members = nil
	for _, mem := range rec.config.GetMembers() {
		if mem.GetServer().GetServerId() != id {
			cfg.Members = append(cfg.Members, proto.Clone(mem).(*blockpb.Member))
		}
	}
	if err := m.commitEpochLocked(name, cfg, false, time.Time{}, time.Time{}, nil); err != nil {
		return nil, status.Errorf(codes.Internal, "remove %s from %q: %v", id, name, err)
	}
	return &blockpb.RemoveMemberResponse{Config: proto.Clone(cfg).(*blockpb.EpochConfig)}, nil
}

// ReportCaughtUp is called by the primary once a returning server follows
// the live stream: the master persists a new epoch that includes it as a
// replica. The server must be alive, report a trusted, healthy copy of this
// incarnation, and the volume must have fewer members than its replication
// factor. A server that is already a member gets the current config.
func (m *Master) ReportCaughtUp(ctx context.Context, req *blockpb.ReportCaughtUpRequest) (*blockpb.ReportCaughtUpResponse, error) {
	if err := m.checkServing(); err != nil {
		return nil, err
	}
	name, id, caller := req.GetName(), req.GetServerId(), req.GetCallerServerId()
	if err := checkIDs(name, id, caller); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, err := m.callerLocked(name, req.GetEpoch(), caller)
	if err != nil {
		if rec != nil && req.GetEpoch() < rec.config.GetEpoch() && status.Code(err) == codes.FailedPrecondition && roleOf(rec.config, id) == blockpb.Role_ROLE_REPLICA {
			return &blockpb.ReportCaughtUpResponse{Config: proto.Clone(rec.config).(*blockpb.EpochConfig)}, nil
		}
		return nil, err
	}
	if roleOf(rec.config, id) != blockpb.Role_ROLE_NONE {
		return &blockpb.ReportCaughtUpResponse{Config: proto.Clone(rec.config).(*blockpb.EpochConfig)}, nil
	}
	now := m.clock.Now()
	if _, known := m.servers[id]; !known {
		return nil, status.Errorf(codes.NotFound, "unknown server %q", id)
	}
	if why := m.copyProblemLocked(rec, id, now); why != "" {
		return nil, status.Errorf(codes.FailedPrecondition, "%q cannot rejoin %q: %s", id, name, why)
	}
	if n := len(rec.config.GetMembers()); uint32(n) >= rec.spec.GetReplicationFactor() {
		return nil, status.Errorf(codes.FailedPrecondition, "%q already has %d members (rf %d)", name, n, rec.spec.GetReplicationFactor())
	}
	cfg := proto.Clone(rec.config).(*blockpb.EpochConfig)
	cfg.Epoch++
	cfg.CreatedUnixMs = now.UnixMilli()
	cfg.MayHaveLostWrites = false
	cfg.Reason = fmt.Sprintf("member %s caught up (reported by primary %s)", id, caller)
	cfg.Members = append(cfg.Members, &blockpb.Member{Server: m.endpointsLocked(rec, id), Role: blockpb.Role_ROLE_REPLICA})
	// The copy is back: an operator's forced rebuild of it is done (its
	// repair sequence stays, so a later repair is still a change).
	clearRebuild := func(r *volumeRecord) {
		if mk, ok := r.repairs[id]; ok && mk.Rebuild {
			mk.Rebuild = false
			r.repairs[id] = mk
		}
	}
	if err := m.commitEpochLocked(name, cfg, false, time.Time{}, time.Time{}, clearRebuild); err != nil {
		return nil, status.Errorf(codes.Internal, "add %s to %q: %v", id, name, err)
	}
	return &blockpb.ReportCaughtUpResponse{Config: proto.Clone(cfg).(*blockpb.EpochConfig)}, nil
}

// copyProblemLocked says why server id's copy of rec may not join (or be
// forced to primary): "" when it is alive and reports a trusted, healthy
// copy of this incarnation.
func (m *Master) copyProblemLocked(rec *volumeRecord, id string, now time.Time) string {
	if !m.aliveLocked(id, now) {
		return "not alive"
	}
	rep := m.reportLocked(id, rec.spec.GetName())
	switch {
	case rep == nil:
		return "it reports no copy"
	case rep.GetEpoch() < rec.firstEpoch:
		return fmt.Sprintf("its copy is of an earlier volume (epoch %d)", rep.GetEpoch())
	case rep.GetUntrusted():
		return "its copy is untrusted (rebuilding)"
	case !rep.GetHealthy():
		return "its copy is unhealthy: " + rep.GetHealthMessage()
	}
	return ""
}

// catchUpTargetsLocked lists, for the primary of rec reporting rep, the
// alive servers that hold a copy of this incarnation but are not members,
// while the volume has fewer members than its replication factor.
func (m *Master) catchUpTargetsLocked(rec *volumeRecord, rep *blockpb.VolumeReport) []*blockpb.CatchUpTarget {
	cfg := rec.config
	if rep.GetEpoch() != cfg.GetEpoch() || uint32(len(cfg.GetMembers())) >= rec.spec.GetReplicationFactor() {
		return nil
	}
	name := rec.spec.GetName()
	now := m.clock.Now()
	var out []*blockpb.CatchUpTarget
	for id, s := range m.servers {
		r := s.reports[name]
		if r == nil || r.GetEpoch() < rec.firstEpoch || roleOf(cfg, id) != blockpb.Role_ROLE_NONE || !m.aliveLocked(id, now) {
			continue
		}
		mk := rec.repairs[id]
		out = append(out, &blockpb.CatchUpTarget{Name: name, Epoch: cfg.GetEpoch(), Server: proto.Clone(s.endpoints).(*blockpb.ServerEndpoints),
			Rebuild: mk.Rebuild, RepairSeq: mk.Seq})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Server.GetServerId() < out[j].Server.GetServerId() })
	return out
}

// PromoteVolume makes to_server_id the primary in a new epoch. Without
// force it must be a member the automatic failover could pick: alive,
// trusted, healthy, with the highest durable LSN among the other members
// (the current primary not counted), and in quorum mode a majority heard.
// A live old primary stays as a replica. With force any alive server that
// reports a copy of this incarnation may be picked (never one without a
// copy); the epoch is marked as possibly having lost writes. Either way the
// new primary is not assigned before the old primary's lease must have run
// out.
func (m *Master) PromoteVolume(ctx context.Context, req *blockpb.PromoteVolumeRequest) (*blockpb.PromoteVolumeResponse, error) {
	if err := m.checkServing(); err != nil {
		return nil, err
	}
	name, to := req.GetName(), req.GetToServerId()
	if !validName(name) {
		return nil, badName(name)
	}
	if to == "" {
		return nil, status.Error(codes.InvalidArgument, "to_server_id is required")
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
	old := rec.config.GetPrimaryServerId()
	if to == old {
		return nil, status.Errorf(codes.FailedPrecondition, "%q is already the primary of %q", to, name)
	}
	if _, known := m.servers[to]; !known && roleOf(rec.config, to) == blockpb.Role_ROLE_NONE {
		return nil, status.Errorf(codes.NotFound, "unknown server %q", to)
	}
	now := m.clock.Now()
	oldAlive := m.aliveLocked(old, now)
	var note string
	if req.GetForce() {
		rep := m.reportLocked(to, name)
		if !m.aliveLocked(to, now) || rep == nil || rep.GetEpoch() < rec.firstEpoch {
			return nil, status.Errorf(codes.FailedPrecondition, "cannot force %q to primary of %q: it must be alive and report a copy of this volume", to, name)
		}
		if rep.GetUntrusted() {
			// Empty or half rebuilt: it has nothing to serve, and the
			// volume server never unfences it.
			return nil, status.Errorf(codes.FailedPrecondition, "cannot force %q to primary of %q: its copy is untrusted (waiting for or in a rebuild)", to, name)
		}
		note = fmt.Sprintf("forced promote of %s (durable LSN %d); writes it lacks are lost", to, rep.GetDurableLsn())
	} else {
		if _, why := m.eligibleLocked(rec, to, now); why != "" {
			return nil, status.Errorf(codes.FailedPrecondition, "cannot promote %q in %q: %s", to, name, why)
		}
		pick, why := m.chooseLocked(rec, now, old)
		if pick == "" {
			return nil, status.Errorf(codes.FailedPrecondition, "cannot promote %q in %q: %s", to, name, why)
		}
		if pick != to {
			best := m.reportLocked(pick, name).GetDurableLsn()
			mine := m.reportLocked(to, name).GetDurableLsn()
			if mine < best {
				return nil, status.Errorf(codes.FailedPrecondition, "cannot promote %q in %q: its durable LSN %d is behind %s's %d (use force to accept the loss)", to, name, mine, pick, best)
			}
		}
		note = "manual promote of " + to
	}
	cfg := m.promotedConfigLocked(rec, to, old, now, oldAlive && !req.GetForce())
	cfg.Reason = fmt.Sprintf("%s (old primary %s, alive %v)", note, old, oldAlive)
	if req.GetForce() || rec.config.GetDurability() == blockpb.Durability_DURABILITY_ASYNC {
		cfg.MayHaveLostWrites = true
		if !req.GetForce() {
			cfg.Reason += "; async: writes the old primary had not replicated are lost"
		}
	}
	since := now
	if ls := m.lost[name]; ls != nil {
		since = ls.since
	}
	fence, _ := m.leaseExpiryLocked(name)
	if err := m.commitEpochLocked(name, cfg, true, since, fence, nil); err != nil {
		return nil, status.Errorf(codes.Internal, "promote %q in %q: %v", to, name, err)
	}
	delete(m.lost, name)
	return &blockpb.PromoteVolumeResponse{Volume: m.volumeInfoLocked(m.reg.get(name), now)}, nil
}

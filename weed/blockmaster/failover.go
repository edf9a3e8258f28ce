package blockmaster

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/golang/glog"
	"google.golang.org/protobuf/proto"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// lossState is a volume whose primary the master has lost and not yet
// replaced.
type lossState struct {
	since   time.Time // primary last heard (or first seen lost)
	blocked string    // why no promotion happened yet ("" before the first try)
}

// pauseMark: a promotion to epoch, made for a primary lost at since; the
// pause ends with the new primary's first serving report in that epoch.
type pauseMark struct {
	epoch uint64
	since time.Time
}

// failoverLoop checks every pulse, while this master leads, for volumes
// whose primary is lost. It ends with Close.
func (m *Master) failoverLoop() {
	defer m.wg.Done()
	t := time.NewTicker(m.opts.Pulse)
	defer t.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-t.C:
			m.checkFailovers()
		}
	}
}

// checkFailovers promotes a new primary for every volume whose primary is
// not alive, once the old primary's lease must have run out (the master's
// view: last grant sent + Lease + Margin, never before this master's start
// + Lease + Margin). The new epoch is persisted before any server hears of
// it. A volume without an acceptable candidate stays "unavailable" with the
// reason in VolumeInfo.failover_blocked and is tried again next pulse.
func (m *Master) checkFailovers() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	now := m.clock.Now()
	leader := m.isLeader()
	m.observeLeadershipLocked(leader, now)
	if !leader {
		return
	}
	for _, name := range m.reg.names() {
		rec := m.reg.get(name)
		if m.pending[name] != "" {
			continue
		}
		primary := rec.config.GetPrimaryServerId()
		trouble, troubleWhy := m.copyTroubleLocked(rec, primary)
		if trouble == "" && m.aliveLocked(primary, now) {
			delete(m.lost, name)
			m.dropTroubledMembersLocked(name, rec, now)
			m.recreateLostCopiesLocked(name, m.reg.get(name), now)
			continue
		}
		ls := m.lost[name]
		if ls == nil {
			ls = &lossState{since: now}
			if s := m.servers[primary]; s != nil && !s.lastSeen.IsZero() && s.lastSeen.Before(now) {
				ls.since = s.lastSeen
			}
			m.lost[name] = ls
			if trouble != "" {
				glog.Warningf("blockmaster: volume %q: the copy of its primary is %s (%s), epoch %d; failing over", name, trouble, troubleWhy, rec.config.GetEpoch())
			} else {
				glog.Warningf("blockmaster: volume %q lost its primary %q (epoch %d)", name, primary, rec.config.GetEpoch())
			}
		}
		if exp, _ := m.leaseExpiryLocked(name); now.Before(exp) {
			m.setBlockedLocked(name, ls, fmt.Sprintf("waiting for the lease of %s to run out (%v more)", primary, exp.Sub(now).Round(time.Millisecond)))
			continue
		}
		pick, why := m.chooseLocked(rec, now, primary)
		if pick == "" {
			m.setBlockedLocked(name, ls, why)
			continue
		}
		cfg := m.promotedConfigLocked(rec, pick, primary, now, false)
		cfg.Reason = fmt.Sprintf("failover: primary %s lost; %s promoted (%s)", primary, pick, why)
		if trouble != "" {
			cfg.Reason = fmt.Sprintf("failover: copy %s on primary %s (%s); %s promoted (%s)", trouble, primary, troubleWhy, pick, why)
		}
		if rec.config.GetDurability() == blockpb.Durability_DURABILITY_ASYNC {
			cfg.MayHaveLostWrites = true
			cfg.Reason += fmt.Sprintf("; async: writes %s had not replicated are lost", primary)
			if old := m.reportLocked(primary, name); old != nil {
				cfg.Reason += fmt.Sprintf(" (it last reported durable LSN %d)", old.GetDurableLsn())
			}
		}
		if err := m.commitEpochLocked(name, cfg, true, ls.since, time.Time{}, nil); err != nil {
			m.setBlockedLocked(name, ls, "persisting the new epoch failed: "+err.Error())
			continue
		}
		if trouble != "" {
			m.copiesLost[trouble]++
		}
		delete(m.lost, name)
	}
}

// observeLeadershipLocked records a leadership observation: on becoming
// the leader the lease floor restarts (the previous leader may have granted
// leases until now) and what this master knew of lost primaries is dropped.
func (m *Master) observeLeadershipLocked(leader bool, now time.Time) {
	if leader && !m.wasLeader {
		m.leaderSince = now
		m.lost = map[string]*lossState{}
		glog.Infof("blockmaster: became the block registry leader; new primaries wait until %v from now", m.opts.Lease+m.opts.Margin)
	}
	m.wasLeader = leader
}

func (m *Master) setBlockedLocked(name string, ls *lossState, why string) {
	if why != ls.blocked && !strings.HasPrefix(why, "waiting for the lease") {
		glog.Warningf("blockmaster: volume %q: no promotion yet: %s", name, why)
	}
	ls.blocked = why
}

// commitEpochLocked persists cfg as the volume's next epoch and makes it
// visible: heartbeats carry it from now on. failover counts a promotion;
// pauseSince starts the failover pause clock; fence (if later than now)
// withholds the new primary's assignment until then; mutate (optional)
// changes the volume's other durable fields in the same write.
func (m *Master) commitEpochLocked(name string, cfg *blockpb.EpochConfig, failover bool, pauseSince, fence time.Time, mutate func(*volumeRecord)) error {
	if err := m.reg.update(name, cfg, failover, mutate); err != nil {
		glog.Errorf("blockmaster: volume %q epoch %d: %v", name, cfg.GetEpoch(), err)
		return err
	}
	m.epochChanges++
	if failover {
		m.failoversTotal++
		m.pauseFrom[name] = pauseMark{epoch: cfg.GetEpoch(), since: pauseSince}
	}
	if !fence.IsZero() {
		if fence.After(m.fenceUntil[name]) {
			m.fenceUntil[name] = fence
		}
	}
	glog.Infof("blockmaster: volume %q epoch %d: primary %s, members %v: %s", name, cfg.GetEpoch(), cfg.GetPrimaryServerId(), memberIDs(cfg), cfg.GetReason())
	return nil
}

// candidate rules, shared by failover and PromoteVolume: a member of the
// latest epoch (not the excluded old primary), alive, reporting a healthy,
// trusted copy of this incarnation at an epoch not above the registry's.
func (m *Master) eligibleLocked(rec *volumeRecord, id string, now time.Time) (*blockpb.VolumeReport, string) {
	name := rec.spec.GetName()
	if roleOf(rec.config, id) == blockpb.Role_ROLE_NONE {
		return nil, id + " is not a member of epoch " + fmt.Sprint(rec.config.GetEpoch())
	}
	if !m.aliveLocked(id, now) {
		return nil, id + " is not alive"
	}
	rep := m.reportLocked(id, name)
	switch {
	case rep == nil:
		return nil, id + " reports no copy"
	case rep.GetEpoch() < rec.firstEpoch || rep.GetEpoch() > rec.config.GetEpoch():
		return nil, fmt.Sprintf("%s reports epoch %d outside %d..%d", id, rep.GetEpoch(), rec.firstEpoch, rec.config.GetEpoch())
	case rep.GetUntrusted():
		return nil, id + " is untrusted (rebuilding)"
	case !rep.GetHealthy():
		return nil, id + " is unhealthy: " + rep.GetHealthMessage()
	}
	return rep, ""
}

// chooseLocked picks the member to promote in place of exclude: among the
// eligible members, the highest durable LSN (ties: the lower server id, so
// the choice is deterministic). In quorum mode it must hear (eligible
// reports) from a majority of the latest epoch's members. It returns "" and
// the reason when nobody may be promoted, else the pick and a short note.
func (m *Master) chooseLocked(rec *volumeRecord, now time.Time, exclude string) (string, string) {
	type cand struct {
		id      string
		durable uint64
	}
	var cands []cand
	var refused []string
	for _, mem := range rec.config.GetMembers() {
		id := mem.GetServer().GetServerId()
		if id == exclude {
			continue
		}
		rep, why := m.eligibleLocked(rec, id, now)
		if rep == nil {
			refused = append(refused, why)
			continue
		}
		cands = append(cands, cand{id, rep.GetDurableLsn()})
	}
	if rec.config.GetDurability() == blockpb.Durability_DURABILITY_QUORUM {
		need := len(rec.config.GetMembers())/2 + 1
		if len(cands) < need {
			return "", fmt.Sprintf("quorum: heard from %d of %d members, need %d (%s)", len(cands), len(rec.config.GetMembers()), need, strings.Join(refused, "; "))
		}
	}
	if len(cands) == 0 {
		if len(refused) == 0 {
			return "", "no other member holds a copy"
		}
		return "", "no candidate: " + strings.Join(refused, "; ")
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].durable != cands[j].durable {
			return cands[i].durable > cands[j].durable
		}
		return cands[i].id < cands[j].id
	})
	return cands[0].id, fmt.Sprintf("highest durable LSN %d of %d candidates", cands[0].durable, len(cands))
}

// promotedConfigLocked is the next epoch with pick as primary: pick, then
// the other members of the latest epoch that are alive (the old primary
// only when keepOld and alive), with their latest endpoints. Members that
// are gone come back through ReportCaughtUp.
func (m *Master) promotedConfigLocked(rec *volumeRecord, pick, old string, now time.Time, keepOld bool) *blockpb.EpochConfig {
	cfg := &blockpb.EpochConfig{
		Epoch:           rec.config.GetEpoch() + 1,
		PrimaryServerId: pick,
		Durability:      rec.config.GetDurability(),
		CreatedUnixMs:   now.UnixMilli(),
	}
	cfg.Members = append(cfg.Members, &blockpb.Member{Server: m.endpointsLocked(rec, pick), Role: blockpb.Role_ROLE_PRIMARY})
	for _, mem := range rec.config.GetMembers() {
		id := mem.GetServer().GetServerId()
		if id == pick || !m.aliveLocked(id, now) || (id == old && !keepOld) {
			continue
		}
		if kind, _ := m.copyTroubleLocked(rec, id); kind != "" {
			continue // lost or untrusted: comes back through recovery
		}
		cfg.Members = append(cfg.Members, &blockpb.Member{Server: m.endpointsLocked(rec, id), Role: blockpb.Role_ROLE_REPLICA})
	}
	return cfg
}

// endpointsLocked is server id's latest endpoints: from its heartbeat,
// else from the volume's config.
func (m *Master) endpointsLocked(rec *volumeRecord, id string) *blockpb.ServerEndpoints {
	if s := m.servers[id]; s != nil && s.endpoints != nil {
		return proto.Clone(s.endpoints).(*blockpb.ServerEndpoints)
	}
	for _, mem := range rec.config.GetMembers() {
		if mem.GetServer().GetServerId() == id {
			return proto.Clone(mem.GetServer()).(*blockpb.ServerEndpoints)
		}
	}
	return &blockpb.ServerEndpoints{ServerId: id}
}

// primaryGateLocked is the earliest time server id may be assigned PRIMARY
// of rec's current epoch (zero: now). A server that already acknowledged
// the epoch as primary, the first primary of a volume and a primary that
// kept the role from the previous epoch are not held. A new primary is held
// until the old one's lease must have run out: the fence recorded with the
// promotion and, after a master restart, this master's start + Lease +
// Margin (leases an earlier run granted).
func (m *Master) primaryGateLocked(rec *volumeRecord, id string, rep *blockpb.VolumeReport) time.Time {
	cfg := rec.config
	if rep != nil && rep.GetEpoch() == cfg.GetEpoch() && rep.GetRole() == blockpb.Role_ROLE_PRIMARY {
		return time.Time{}
	}
	if cfg.GetEpoch() == rec.firstEpoch {
		return time.Time{}
	}
	if n := len(rec.history); n > 0 && rec.history[n-1].GetPrimaryServerId() == id {
		return time.Time{}
	}
	gate := m.leaderSince.Add(m.opts.Lease + m.opts.Margin)
	if f := m.fenceUntil[rec.spec.GetName()]; f.After(gate) {
		gate = f
	}
	return gate
}

// notePrimaryReportLocked ends a failover pause when the new primary first
// reports serving the new epoch.
func (m *Master) notePrimaryReportLocked(id string, rep *blockpb.VolumeReport, now time.Time) {
	name := rep.GetName()
	mark, ok := m.pauseFrom[name]
	if !ok || rep.GetEpoch() != mark.epoch || rep.GetRole() != blockpb.Role_ROLE_PRIMARY || rep.GetFenced() {
		return
	}
	rec := m.reg.get(name)
	if rec == nil || rec.config.GetPrimaryServerId() != id {
		return
	}
	pause := now.Sub(mark.since)
	m.lastPause[name] = pause
	delete(m.pauseFrom, name)
	glog.Infof("blockmaster: volume %q: %s serves epoch %d; failover pause %v", name, id, mark.epoch, pause)
}

// lossyEpochLocked is the latest epoch of rec that may have lost writes
// (async failover or forced promote) and its reason; 0 when none.
func lossyEpochLocked(rec *volumeRecord) (uint64, string) {
	if rec.config.GetMayHaveLostWrites() {
		return rec.config.GetEpoch(), rec.config.GetReason()
	}
	for i := len(rec.history) - 1; i >= 0; i-- {
		if h := rec.history[i]; h.GetMayHaveLostWrites() {
			return h.GetEpoch(), h.GetReason()
		}
	}
	return 0, ""
}

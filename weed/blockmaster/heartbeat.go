package blockmaster

import (
	"errors"
	"io"
	"sort"
	"time"

	"github.com/golang/glog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// Heartbeat serves one volume server's block heartbeat stream. Each
// heartbeat is answered with its seq, the lease length, the assignments the
// server has not acknowledged (by reporting their epoch) and the deletes of
// local volumes the registry does not know. After the answer is sent the
// master records, for every volume this server is primary of, that the lease
// ends no earlier than now + Lease + Margin. A follower answers with the
// leader's address and ends the stream with FailedPrecondition; a stream
// silent for 3 pulses is ended with Unavailable.
func (m *Master) Heartbeat(stream grpc.BidiStreamingServer[blockpb.BlockHeartbeat, blockpb.BlockHeartbeatResponse]) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return status.Error(codes.Unavailable, "block master is shutting down")
	}
	m.wg.Add(2) // this handler and its receive pump
	m.mu.Unlock()
	defer m.wg.Done()

	msgs := make(chan *blockpb.BlockHeartbeat)
	recvErr := make(chan error, 1)
	stop := make(chan struct{})
	defer close(stop)
	// The pump is the only caller of Recv; it ends when the stream does,
	// which gRPC guarantees once this handler has returned.
	go func() {
		defer m.wg.Done()
		for {
			hb, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case msgs <- hb:
			case <-stop:
				return
			}
		}
	}()

	ticker := time.NewTicker(m.opts.Pulse)
	defer ticker.Stop()
	var id string
	var streamID uint64
	defer func() {
		if id != "" {
			m.streamEnded(id, streamID)
		}
	}()
	lastRecv := m.clock.Now()
	for {
		select {
		case <-m.done:
			return status.Error(codes.Unavailable, "block master is shutting down")
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-ticker.C:
			if silent := m.clock.Now().Sub(lastRecv); silent > silentPulses*m.opts.Pulse {
				glog.Warningf("blockmaster: block heartbeat of %q silent for %v; ending its stream", id, silent)
				return status.Errorf(codes.Unavailable, "no heartbeat for %v", silent)
			}
		case hb := <-msgs:
			lastRecv = m.clock.Now()
			if !m.isLeader() {
				leader := m.leaderName()
				if err := stream.Send(&blockpb.BlockHeartbeatResponse{HeartbeatSeq: hb.GetSeq(), Leader: leader}); err != nil {
					return err
				}
				return notLeader(leader)
			}
			sid := hb.GetServer().GetServerId()
			switch {
			case sid == "":
				return status.Error(codes.InvalidArgument, "heartbeat without server id")
			case id == "":
				id = sid
				streamID = m.streamStarted(id)
				glog.Infof("blockmaster: block server %q connected (grpc %s)", id, hb.GetServer().GetGrpcAddress())
			case sid != id:
				return status.Errorf(codes.InvalidArgument, "server id changed on a stream from %q to %q", id, sid)
			}
			resp, primaries := m.applyHeartbeat(id, streamID, hb)
			if err := stream.Send(resp); err != nil {
				return err
			}
			m.grantLeases(id, primaries, m.clock.Now())
		}
	}
}

func (m *Master) streamStarted(id string) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nextStream++
	s := m.servers[id]
	if s == nil {
		s = &serverState{reports: map[string]*blockpb.VolumeReport{}}
		m.servers[id] = s
	}
	s.stream = m.nextStream
	return m.nextStream
}

// streamEnded marks server id not alive, unless a newer stream of the same
// server has taken over.
func (m *Master) streamEnded(id string, streamID uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.servers[id]; s != nil && s.stream == streamID {
		s.stream = 0
		glog.Infof("blockmaster: block server %q disconnected", id)
	}
}

// applyHeartbeat records a heartbeat and builds its answer. It also returns
// the volumes whose lease the answer renews (this server is their primary).
func (m *Master) applyHeartbeat(id string, streamID uint64, hb *blockpb.BlockHeartbeat) (*blockpb.BlockHeartbeatResponse, []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.heartbeats++
	now := m.clock.Now()
	m.observeLeadershipLocked(true, now)
	s := m.servers[id]
	if s.stream == streamID {
		// The heartbeat is a fresh message from Recv that nobody else
		// holds: keep its parts without copying (they are never mutated;
		// readers clone what they hand out).
		s.endpoints = hb.GetServer()
		s.freeBytes = hb.GetFreeBytes()
		s.lastSeen = now
		s.reports = make(map[string]*blockpb.VolumeReport, len(hb.GetVolumes()))
		for _, v := range hb.GetVolumes() {
			s.reports[v.GetName()] = v
		}
		m.countAbsentLocked(id, s)
	}
	resp := &blockpb.BlockHeartbeatResponse{HeartbeatSeq: hb.GetSeq(), LeaseMs: m.opts.Lease.Milliseconds()}
	var primaries []string
	// This server's volumes: those it is a member of and those it reports.
	names := m.reg.namesOf(id)
	reported := make(map[string]*blockpb.VolumeReport, len(hb.GetVolumes()))
	for _, v := range hb.GetVolumes() {
		if !validName(v.GetName()) {
			continue // not a volume this master could have made
		}
		reported[v.GetName()] = v
		if _, member := m.reg.byServer[id][v.GetName()]; !member {
			names = append(names, v.GetName())
		}
	}
	orphans := map[string]uint64{}
	defer func() { m.setOrphansLocked(id, orphans) }()
	sort.Strings(names)
	for i, name := range names {
		if i > 0 && names[i-1] == name {
			continue // reported twice
		}
		rec := m.reg.get(name)
		if rec == nil {
			// Only a copy of a volume this registry deleted is deleted. A
			// name it never knew is left alone (an orphan): deleting it
			// would turn a master started on the wrong -mdir, or a leader
			// with another registry, into a cluster-wide data loss.
			tomb, deleted := m.reg.tombstones[name]
			if rep := reported[name]; deleted && rep.GetEpoch() <= tomb {
				resp.Deletes = append(resp.Deletes, name)
			} else {
				orphans[name] = rep.GetEpoch()
			}
			continue
		}
		if m.pending[name] != "" {
			// Allocation is in flight (the file may not exist yet) or the
			// volume is being deleted: nothing to assign, but the lease
			// the primary may hold is still accounted for.
			if rec.config.PrimaryServerId == id {
				primaries = append(primaries, name)
			}
			continue
		}
		rep := s.reports[name]
		role := roleOf(rec.config, id)
		if role == blockpb.Role_ROLE_PRIMARY {
			if kind, _ := m.copyTroubleLocked(rec, id); kind == "" {
				primaries = append(primaries, name)
			}
			// A primary whose copy is lost or untrusted serves nothing:
			// its lease is not renewed, so the failover may replace it
			// once the last grant has run out.
		}
		if role == blockpb.Role_ROLE_NONE {
			if rep == nil {
				continue
			}
			if rep.GetEpoch() < rec.firstEpoch {
				// A copy of an earlier, deleted volume of the same name.
				resp.Deletes = append(resp.Deletes, name)
				continue
			}
		}
		if role == blockpb.Role_ROLE_PRIMARY && rep != nil {
			m.notePrimaryReportLocked(id, rep, now)
			resp.CatchUp = append(resp.CatchUp, m.catchUpTargetsLocked(rec, rep)...)
		}
		if role == blockpb.Role_ROLE_PRIMARY && now.Before(m.primaryGateLocked(rec, id, rep)) {
			// The old primary's lease may still run: the new one must
			// not serve yet.
			continue
		}
		if needsAssignment(rep, rec.config, role) {
			resp.Assignments = append(resp.Assignments, &blockpb.Assignment{
				Spec:   proto.Clone(rec.spec).(*blockpb.VolumeSpec),
				Config: proto.Clone(rec.config).(*blockpb.EpochConfig),
				Role:   role,
			})
		}
	}
	// Record the grant before it leaves, so that no decision taken between
	// the send and grantLeases sees an older expiry than the primary holds.
	// Now is already later than the heartbeat's send time.
	m.grantLeasesLocked(id, primaries, m.clock.Now())
	return resp, primaries
}

// needsAssignment: the server has not acknowledged the current epoch (no
// report, an older epoch, another role) or, as primary, reports itself
// fenced (it restarted, or its lease ran out) and must be re-confirmed.
func needsAssignment(rep *blockpb.VolumeReport, cfg *blockpb.EpochConfig, role blockpb.Role) bool {
	switch {
	case rep == nil:
		return role != blockpb.Role_ROLE_NONE
	case rep.GetEpoch() > cfg.GetEpoch():
		glog.Warningf("blockmaster: volume %q reported at epoch %d, above the registry's %d", rep.GetName(), rep.GetEpoch(), cfg.GetEpoch())
		return false
	case rep.GetEpoch() < cfg.GetEpoch(), rep.GetRole() != role:
		return true
	}
	// An unhealthy primary stays fenced whatever it is told.
	return role == blockpb.Role_ROLE_PRIMARY && rep.GetFenced() && rep.GetHealthy()
}

// roleOf is server id's role in cfg.
func roleOf(cfg *blockpb.EpochConfig, id string) blockpb.Role {
	for _, mem := range cfg.GetMembers() {
		if mem.GetServer().GetServerId() == id {
			if id == cfg.GetPrimaryServerId() {
				return blockpb.Role_ROLE_PRIMARY
			}
			return blockpb.Role_ROLE_REPLICA
		}
	}
	return blockpb.Role_ROLE_NONE
}

// grantLeases records the master's view of the leases just sent: they end no
// earlier than sent + Lease + Margin. sent is taken after the answer left, so
// it is later than the heartbeat the volume server counts from.
func (m *Master) grantLeases(id string, names []string, sent time.Time) {
	if len(names) == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.grantLeasesLocked(id, names, sent)
}

func (m *Master) grantLeasesLocked(id string, names []string, at time.Time) {
	until := at.Add(m.opts.Lease + m.opts.Margin)
	for _, name := range names {
		rec := m.reg.get(name)
		if rec == nil || rec.config.PrimaryServerId != id {
			continue
		}
		if until.After(m.leases[name]) {
			m.leases[name] = until
		}
	}
}

// LeaseExpiry is the master's view of when the primary of name may stop
// believing it holds a lease: no primary write is acknowledged after it. It
// is never earlier than this master's start (or the moment it was seen to
// become the leader) + Lease + Margin, because a previous master (or this
// one before a restart) may have granted a lease just before it stopped. Zero for a volume the registry does not have.
func (m *Master) LeaseExpiry(name string) time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	exp, _ := m.leaseExpiryLocked(name)
	return exp
}

// leaseExpiryLocked also says whether this master granted the lease itself.
func (m *Master) leaseExpiryLocked(name string) (time.Time, bool) {
	if m.reg.get(name) == nil {
		return time.Time{}, false
	}
	floor := m.leaderSince.Add(m.opts.Lease + m.opts.Margin)
	exp, granted := m.leases[name]
	if exp.Before(floor) {
		exp = floor
	}
	return exp, granted
}

// setOrphansLocked records the volumes server id reports that the registry
// neither has nor deleted, warning once for each new one.
func (m *Master) setOrphansLocked(id string, orphans map[string]uint64) {
	prev := m.orphans[id]
	for name, epoch := range orphans {
		if _, seen := prev[name]; !seen {
			glog.Warningf("blockmaster: server %q holds volume %q (epoch %d) that this registry never had; leaving it alone", id, name, epoch)
		}
	}
	if len(orphans) == 0 {
		delete(m.orphans, id)
		return
	}
	m.orphans[id] = orphans
}

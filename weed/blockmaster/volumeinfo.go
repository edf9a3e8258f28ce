package blockmaster

import (
	"fmt"
	"net"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// IQNPrefix is the iSCSI qualified name prefix of block volumes; a volume's
// target is IQNPrefix + name.
const IQNPrefix = "iqn.2026-11.io.weedblock:"

// Volume states reported in VolumeInfo.state.
const (
	StateOK          = "ok"          // primary alive, at the current epoch, unfenced
	StateAssigning   = "assigning"   // primary alive but not yet serving the current epoch
	StateUnhealthy   = "unhealthy"   // primary reports an I/O failure (see its health_message)
	StateDegraded    = "degraded"    // primary serving, some replica down
	StateRecovering  = "recovering"  // primary serving and recovering a copy (VolumeInfo.recoveries)
	StateUnavailable = "unavailable" // primary not alive (or its copy lost or untrusted)
	StateCreating    = stateCreating
	StateDeleting    = stateDeleting
)

func (m *Master) volumeInfoLocked(rec *volumeRecord, now time.Time) *blockpb.VolumeInfo {
	name := rec.spec.GetName()
	info := &blockpb.VolumeInfo{
		Spec:          proto.Clone(rec.spec).(*blockpb.VolumeSpec),
		Config:        proto.Clone(rec.config).(*blockpb.EpochConfig),
		CreatedUnixMs: rec.createdUnixMs,
		IscsiIqn:      IQNPrefix + name,
		Failovers:     rec.failovers,
	}
	if p, ok := m.lastPause[name]; ok {
		info.LastFailoverPauseMs = p.Milliseconds()
	}
	if e, why := lossyEpochLocked(rec); e != 0 {
		info.LossyEpoch = e
		info.Warning = fmt.Sprintf("epoch %d may have lost acknowledged writes: %s", e, why)
	}
	if ls := m.lost[name]; ls != nil {
		info.FailoverBlocked = ls.blocked
	}
	primaryRep := m.reportLocked(rec.config.GetPrimaryServerId(), name)
	for _, r := range primaryRep.GetRecoveries() {
		info.Recoveries = append(info.Recoveries, proto.Clone(r).(*blockpb.RecoveryProgress))
	}
	for _, h := range rec.history {
		info.History = append(info.History, proto.Clone(h).(*blockpb.EpochConfig))
	}
	if exp, _ := m.leaseExpiryLocked(name); !exp.IsZero() {
		// Wall-clock rendering of a monotonic deadline, for display.
		info.LeaseExpiresUnixMs = time.Now().Add(exp.Sub(now)).UnixMilli()
	}
	var primaryAlive, primaryServing, primarySick, replicasAlive = false, false, false, true
	for _, mem := range rec.config.GetMembers() {
		id := mem.GetServer().GetServerId()
		alive := m.aliveLocked(id, now)
		info.Alive = append(info.Alive, alive)
		rep := m.reportLocked(id, name)
		if rep == nil {
			rep = &blockpb.VolumeReport{Name: name}
		} else {
			rep = proto.Clone(rep).(*blockpb.VolumeReport)
		}
		info.Reports = append(info.Reports, rep)
		lag := &blockpb.ReplicaState{}
		for _, rs := range primaryRep.GetReplicas() {
			if rs.GetServerId() == id && id != rec.config.GetPrimaryServerId() {
				lag = proto.Clone(rs).(*blockpb.ReplicaState)
			}
		}
		info.MemberLag = append(info.MemberLag, lag)
		if id == rec.config.GetPrimaryServerId() {
			// A primary whose copy is lost or untrusted serves nothing.
			kind, _ := m.copyTroubleLocked(rec, id)
			primaryAlive = alive && kind == ""
			primaryServing = alive && rep.GetEpoch() == rec.config.GetEpoch() && !rep.GetFenced()
			primarySick = alive && rep.GetEpoch() == rec.config.GetEpoch() && !rep.GetHealthy()
			ep := mem.GetServer()
			if s := m.servers[id]; s != nil && s.endpoints != nil {
				ep = s.endpoints
			}
			if a := advertised(ep.GetNbdAddress(), ep.GetGrpcAddress()); a != "" {
				info.NbdUri = "nbd://" + a + "/" + name
			}
			info.IscsiPortal = advertised(ep.GetIscsiAddress(), ep.GetGrpcAddress())
		} else if !alive {
			replicasAlive = false
		}
	}
	switch {
	case m.pending[name] != "":
		info.State = m.pending[name]
	case !primaryAlive:
		info.State = StateUnavailable
	case primarySick:
		info.State = StateUnhealthy
	case !primaryServing:
		info.State = StateAssigning
	case recovering(info.Recoveries):
		info.State = StateRecovering
	case !replicasAlive:
		info.State = StateDegraded
	default:
		info.State = StateOK
	}
	return info
}

// advertised makes a listen address usable by a client: an empty or
// wildcard host is replaced by the host of the server's gRPC address.
func advertised(addr, grpcAddr string) string {
	if addr == "" {
		return ""
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		return addr
	}
	ghost, _, err := net.SplitHostPort(grpcAddr)
	if err != nil || ghost == "" {
		return addr
	}
	return net.JoinHostPort(ghost, port)
}

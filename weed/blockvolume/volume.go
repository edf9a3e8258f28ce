package blockvolume

import (
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang/glog"
	"google.golang.org/protobuf/proto"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/frontend/iscsi"
	"github.com/weedblock/weedblock/frontend/scsi"
	"github.com/weedblock/weedblock/replication"
	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// volume is one local block volume: the engine, the metered device the
// frontends serve, and its SCSI logical unit.
type volume struct {
	name string
	vol  *blockvol.Volume
	dev  *meteredDevice
	lu   *scsi.LogicalUnit

	// confirmed is the epoch in which an assignment from the master made
	// this server primary (0: none since the volume was opened). Lease
	// grants only renew a confirmed primary. Guarded by Manager.opMu.
	confirmed uint64
	// registered: v follows a primary through the replication Server
	// (Manager.opMu).
	registered bool
	// rf is the replication factor of the latest spec seen in this
	// process (assignment or allocation; 0: none yet). rejoin is the WAL
	// hold a degraded primary keeps for returning copies. Both opMu.
	rf     uint32
	rejoin *blockvol.Hold
	// rfSeen mirrors rf for readers without opMu (the snapshot loop).
	rfSeen atomic.Uint32
	// takeover: this server became primary (from another role) in this
	// process, with head takeoverHead then; shipped are the servers its
	// Primary has had as members since (opMu). See noteTakeoverLocked.
	// wasPrimary: an assignment has named this server primary of v in
	// this process (opMu).
	primErrEpoch uint64 // epoch whose Primary failed to start (logged once)
	wasPrimary   bool
	takeover     bool
	takeoverHead uint64
	shipped      map[string]bool

	// recoverable: registered with the recovery Service (opMu).
	recoverable bool

	// replMu guards prim, catchUps and the recoveries for readers
	// (reports); changes also hold Manager.opMu.
	replMu   sync.Mutex
	prim     *replication.Primary
	primMode replication.Mode // prim's mode (opMu)
	catchUps map[string]*catchUp
	recs     map[string]*recovery        // live recoveries by server id
	recLast  map[string]recoveryProgress // finished ones, for reports
}

func newVolume(name string, vol *blockvol.Volume, mt *metrics) *volume {
	v := &volume{name: name, vol: vol, dev: mt.device(name, vol)}
	v.lu = scsi.NewLogicalUnit(v.dev, scsi.Options{
		VolumeName: name,
		DeviceName: iscsi.IQN(name),
	})
	return v
}

// target is the iSCSI target serving v at LUN 0.
func (v *volume) target() iscsi.Target {
	return iscsi.Target{
		Name:        iscsi.IQN(v.name),
		Alias:       v.name,
		LU:          v.lu,
		OnNexusLost: v.lu.NexusLost,
		OnReset: func(kind iscsi.ResetKind, from scsi.Nexus) {
			switch kind {
			case iscsi.ResetLogicalUnit:
				v.lu.Reset(scsi.ResetLUN, from)
			case iscsi.ResetTargetWarm:
				v.lu.Reset(scsi.ResetTargetWarm, from)
			case iscsi.ResetTargetCold:
				v.lu.Reset(scsi.ResetTargetCold, from)
			}
		},
	}
}

// config returns the persisted epoch configuration, or nil when the volume
// has none (or it does not parse: logged, treated as none).
func (v *volume) config() *blockpb.EpochConfig {
	raw := v.vol.Config()
	if len(raw) == 0 {
		return nil
	}
	cfg := &blockpb.EpochConfig{}
	if err := proto.Unmarshal(raw, cfg); err != nil {
		glog.Warningf("blockvolume: %s: persisted config does not parse: %v", v.name, err)
		return nil
	}
	return cfg
}

// setConfig durably stores cfg as the volume's config blob.
func (v *volume) setConfig(cfg *blockpb.EpochConfig) error {
	raw, err := proto.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("%s: marshal config: %w", v.name, err)
	}
	if len(raw) > blockvol.MaxConfigSize {
		return fmt.Errorf("%s: epoch config is %d bytes, at most %d fit", v.name, len(raw), blockvol.MaxConfigSize)
	}
	if err := v.vol.SetConfig(raw); err != nil {
		return fmt.Errorf("%s: store config: %w", v.name, err)
	}
	return nil
}

// roleIn is server id's role in cfg (ROLE_NONE when not a member or cfg
// is nil).
func roleIn(cfg *blockpb.EpochConfig, id string) blockpb.Role {
	if cfg == nil || id == "" {
		return blockpb.Role_ROLE_NONE
	}
	for _, mb := range cfg.GetMembers() {
		if mb.GetServer().GetServerId() == id {
			if cfg.GetPrimaryServerId() == id {
				return blockpb.Role_ROLE_PRIMARY
			}
			// primary_server_id decides who is primary, whatever the
			// member's role field says.
			return blockpb.Role_ROLE_REPLICA
		}
	}
	return blockpb.Role_ROLE_NONE
}

// writable reports whether st accepts frontend writes at now.
func writable(st blockvol.Status, now time.Time) bool {
	return st.Healthy && !st.Fenced && st.Role == blockvol.RolePrimary &&
		(st.LeaseUntil.IsZero() || now.Before(st.LeaseUntil))
}

// report is v's state as sent to the master; sessions is its attached
// NBD+iSCSI session count.
func (v *volume) report(serverID string, sessions int) *blockpb.VolumeReport {
	st := v.vol.Status()
	now := time.Now()
	cfg := v.config()
	role := blockpb.Role_ROLE_NONE
	if cfg != nil && cfg.GetEpoch() == st.Epoch {
		role = roleIn(cfg, serverID)
	}
	r := &blockpb.VolumeReport{
		Name:             v.name,
		Epoch:            st.Epoch,
		Role:             role,
		HeadLsn:          st.Head,
		DurableLsn:       st.Durable,
		CheckpointLsn:    st.Checkpoint,
		TailLsn:          st.Tail,
		Untrusted:        st.Untrusted,
		Healthy:          st.Healthy,
		SizeBytes:        uint64(st.Size),
		WalUsedBytes:     uint64(max(st.WALUsed, 0)),
		WalSizeBytes:     uint64(max(st.WALSize, 0)),
		Fenced:           !writable(st, now),
		AttachedSessions: uint32(sessions),
	}
	if st.Err != nil {
		r.HealthMessage = st.Err.Error()
	}
	r.Replicas = v.replicaStates()
	r.Recoveries = v.recoveryReports()
	snapshotReport(r, v.vol)
	if st.Untrusted {
		// This copy is being (or waits to be) rebuilt.
		r.Recovery = &blockpb.RecoveryProgress{Phase: phaseRebuild, ServerId: serverID}
	}
	if !r.Fenced {
		if st.LeaseUntil.IsZero() {
			r.LeaseRemainingMs = math.MaxInt64 // no expiry (not granted by a master)
		} else {
			r.LeaseRemainingMs = st.LeaseUntil.Sub(now).Milliseconds()
		}
	}
	return r
}

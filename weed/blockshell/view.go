package blockshell

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// VolumeView is one volume as the commands print it (the -json form is
// this struct). It is derived from the master's VolumeInfo only.
type VolumeView struct {
	Name              string `json:"name"`
	SizeBytes         uint64 `json:"size_bytes"`
	BlockSize         uint32 `json:"block_size"`
	WALSizeBytes      uint64 `json:"wal_size_bytes"`
	ReplicationFactor uint32 `json:"replication_factor"`
	Durability        string `json:"durability"`
	State             string `json:"state"`
	Epoch             uint64 `json:"epoch"`
	EpochReason       string `json:"epoch_reason,omitempty"`
	Primary           string `json:"primary"`
	// LeaseExpiresUnixMs is the master's (conservative) view of when the
	// primary's lease ends; 0 when it has granted none.
	LeaseExpiresUnixMs int64 `json:"lease_expires_unix_ms"`
	CreatedUnixMs      int64 `json:"created_unix_ms"`
	// Failovers counts promotions (automatic and manual); LastFailoverPauseMs
	// is how long the last one left the volume without a serving primary.
	Failovers           uint64 `json:"failovers"`
	LastFailoverPauseMs int64  `json:"last_failover_pause_ms,omitempty"`
	// LossyEpoch is the latest epoch made by a failover that may have lost
	// writes (async or forced); Warning says so in words.
	LossyEpoch uint64 `json:"lossy_epoch,omitempty"`
	Warning    string `json:"warning,omitempty"`
	// FailoverBlocked says why the master cannot promote a new primary.
	FailoverBlocked string        `json:"failover_blocked,omitempty"`
	Replicas        []ReplicaView `json:"replicas"`
	// Recoveries are the primary's recoveries of copies, live or last
	// finished (block.repair, returning or lost copies).
	Recoveries []RecoveryView `json:"recoveries,omitempty"`
	Attach     AttachView     `json:"attach"`
	History    []EpochView    `json:"history,omitempty"`
}

// ReplicaView is one member of the current epoch: the master's
// configuration joined with the member's latest report.
type ReplicaView struct {
	ServerID   string `json:"server_id"`
	Role       string `json:"role"`
	Alive      bool   `json:"alive"`
	DataCenter string `json:"data_center,omitempty"`
	Rack       string `json:"rack,omitempty"`
	// Reported is false until the server reported the volume; the fields
	// below are its latest report.
	Reported         bool   `json:"reported"`
	Epoch            uint64 `json:"epoch"`
	ReportedRole     string `json:"reported_role,omitempty"`
	HeadLSN          uint64 `json:"head_lsn"`
	DurableLSN       uint64 `json:"durable_lsn"`
	CheckpointLSN    uint64 `json:"checkpoint_lsn"`
	TailLSN          uint64 `json:"tail_lsn"`
	Fenced           bool   `json:"fenced"`
	Healthy          bool   `json:"healthy"`
	HealthMessage    string `json:"health_message,omitempty"`
	Untrusted        bool   `json:"untrusted,omitempty"`
	LeaseRemainingMs int64  `json:"lease_remaining_ms"`
	AttachedSessions uint32 `json:"attached_sessions"`
	WALUsedBytes     uint64 `json:"wal_used_bytes"`
	// The primary's view of this replica (empty for the primary itself).
	ReplicaState string `json:"replica_state,omitempty"`
	LagLSN       uint64 `json:"lag_lsn,omitempty"`
	LagBytes     uint64 `json:"lag_bytes,omitempty"`
}

// RecoveryView is the primary's recovery of one copy (DESIGN §6).
type RecoveryView struct {
	ServerID string `json:"server_id"`
	// Phase: plan, catch-up, truncate, rebuild, follow, done, failed.
	Phase         string `json:"phase"`
	Running       bool   `json:"running"`
	Plan          string `json:"plan,omitempty"`
	BytesDone     uint64 `json:"bytes_done"`
	BytesTotal    uint64 `json:"bytes_total"`
	EtaMs         int64  `json:"eta_ms,omitempty"`
	TargetLSN     uint64 `json:"target_lsn,omitempty"`
	AchievedLSN   uint64 `json:"achieved_lsn,omitempty"`
	Attempt       uint64 `json:"attempt,omitempty"`
	StartedUnixMs int64  `json:"started_unix_ms,omitempty"`
	// LastOutcome: in-sync, needs-rebuild: why, aborted: why; "" while
	// running.
	LastOutcome   string `json:"last_outcome,omitempty"`
	ForcedRebuild bool   `json:"forced_rebuild,omitempty"`
	Rebuilds      uint64 `json:"rebuilds,omitempty"`
	CatchUps      uint64 `json:"catch_ups,omitempty"`
}

// newRecoveryView derives the printed form of one recovery.
func newRecoveryView(r *blockpb.RecoveryProgress) RecoveryView {
	v := RecoveryView{
		ServerID: r.GetServerId(), Phase: r.GetPhase(), Plan: r.GetPlan(),
		BytesDone: r.GetBytesDone(), BytesTotal: r.GetBytesTotal(), EtaMs: r.GetEtaMs(),
		TargetLSN: r.GetTargetLsn(), AchievedLSN: r.GetAchievedLsn(), Attempt: r.GetAttempt(),
		StartedUnixMs: r.GetStartedUnixMs(), LastOutcome: r.GetLastOutcome(), ForcedRebuild: r.GetForcedRebuild(),
		Rebuilds: r.GetRebuilds(), CatchUps: r.GetCatchUps(),
	}
	switch v.Phase {
	case "", "done", "failed":
	default:
		v.Running = v.LastOutcome == ""
	}
	return v
}

// progress is "1 MiB of 4 MiB (25%)", or what is known of it.
func (r RecoveryView) progress() string {
	switch {
	case r.BytesTotal > 0:
		return fmt.Sprintf("%s of %s (%d%%)", FormatSize(r.BytesDone), FormatSize(r.BytesTotal), r.BytesDone*100/r.BytesTotal)
	case r.BytesDone > 0:
		return FormatSize(r.BytesDone)
	}
	return "-"
}

// AttachView says how a host attaches the volume (on its primary).
type AttachView struct {
	NBDURI      string   `json:"nbd_uri,omitempty"`
	ISCSIPortal string   `json:"iscsi_portal,omitempty"`
	ISCSIIQN    string   `json:"iscsi_iqn,omitempty"`
	Examples    []string `json:"examples,omitempty"`
}

// EpochView is an earlier (or the current) configuration of the volume.
type EpochView struct {
	Epoch         uint64 `json:"epoch"`
	Primary       string `json:"primary"`
	Reason        string `json:"reason,omitempty"`
	CreatedUnixMs int64  `json:"created_unix_ms"`
	// MayHaveLostWrites marks an epoch made by an async failover or a
	// forced promote.
	MayHaveLostWrites bool `json:"may_have_lost_writes,omitempty"`
}

// RoleName is the lower-case name of a role: primary, replica, none.
func RoleName(r blockpb.Role) string {
	switch r {
	case blockpb.Role_ROLE_PRIMARY:
		return "primary"
	case blockpb.Role_ROLE_REPLICA:
		return "replica"
	case blockpb.Role_ROLE_NONE:
		return "none"
	}
	return "unknown"
}

// DurabilityName is the lower-case name of a durability mode as the
// -durability flag spells it.
func DurabilityName(d blockpb.Durability) string {
	switch d {
	case blockpb.Durability_DURABILITY_SYNC:
		return "sync"
	case blockpb.Durability_DURABILITY_QUORUM:
		return "quorum"
	case blockpb.Durability_DURABILITY_ASYNC:
		return "async"
	}
	return "unspecified"
}

// NewVolumeView derives the printed form of info.
func NewVolumeView(info *blockpb.VolumeInfo) VolumeView {
	spec, cfg := info.GetSpec(), info.GetConfig()
	v := VolumeView{
		Name:                spec.GetName(),
		SizeBytes:           spec.GetSizeBytes(),
		BlockSize:           spec.GetBlockSize(),
		WALSizeBytes:        spec.GetWalSizeBytes(),
		ReplicationFactor:   spec.GetReplicationFactor(),
		Durability:          DurabilityName(spec.GetDurability()),
		State:               info.GetState(),
		Epoch:               cfg.GetEpoch(),
		EpochReason:         cfg.GetReason(),
		Primary:             cfg.GetPrimaryServerId(),
		LeaseExpiresUnixMs:  info.GetLeaseExpiresUnixMs(),
		CreatedUnixMs:       info.GetCreatedUnixMs(),
		Failovers:           info.GetFailovers(),
		LastFailoverPauseMs: info.GetLastFailoverPauseMs(),
		LossyEpoch:          info.GetLossyEpoch(),
		Warning:             info.GetWarning(),
		FailoverBlocked:     info.GetFailoverBlocked(),
		Replicas:            []ReplicaView{},
		Attach: AttachView{
			NBDURI:      info.GetNbdUri(),
			ISCSIPortal: info.GetIscsiPortal(),
			ISCSIIQN:    info.GetIscsiIqn(),
		},
	}
	if v.Durability == "unspecified" && cfg.GetDurability() != blockpb.Durability_DURABILITY_UNSPECIFIED {
		v.Durability = DurabilityName(cfg.GetDurability())
	}
	reports, alive, lags := info.GetReports(), info.GetAlive(), info.GetMemberLag()
	for i, m := range cfg.GetMembers() {
		r := ReplicaView{
			ServerID:   m.GetServer().GetServerId(),
			Role:       RoleName(m.GetRole()),
			DataCenter: m.GetServer().GetDataCenter(),
			Rack:       m.GetServer().GetRack(),
		}
		if i < len(alive) {
			r.Alive = alive[i]
		}
		if i < len(reports) {
			rep := reports[i]
			r.Reported = rep.GetEpoch() != 0 || rep.GetSizeBytes() != 0 || rep.GetHeadLsn() != 0
			r.Epoch = rep.GetEpoch()
			if rep.GetRole() != blockpb.Role_ROLE_UNSPECIFIED {
				r.ReportedRole = RoleName(rep.GetRole())
			}
			r.HeadLSN, r.DurableLSN = rep.GetHeadLsn(), rep.GetDurableLsn()
			r.CheckpointLSN, r.TailLSN = rep.GetCheckpointLsn(), rep.GetTailLsn()
			r.Fenced, r.Healthy, r.HealthMessage = rep.GetFenced(), rep.GetHealthy(), rep.GetHealthMessage()
			r.Untrusted = rep.GetUntrusted()
			r.LeaseRemainingMs = rep.GetLeaseRemainingMs()
			r.AttachedSessions = rep.GetAttachedSessions()
			r.WALUsedBytes = rep.GetWalUsedBytes()
		}
		if i < len(lags) && lags[i].GetServerId() != "" {
			r.ReplicaState, r.LagLSN, r.LagBytes = lags[i].GetState(), lags[i].GetLagLsn(), lags[i].GetLagBytes()
		}
		v.Replicas = append(v.Replicas, r)
	}
	for _, r := range info.GetRecoveries() {
		v.Recoveries = append(v.Recoveries, newRecoveryView(r))
	}
	for _, h := range append(append([]*blockpb.EpochConfig{}, info.GetHistory()...), cfg) {
		if h == nil || h.GetEpoch() == 0 {
			continue
		}
		v.History = append(v.History, EpochView{Epoch: h.GetEpoch(), Primary: h.GetPrimaryServerId(),
			Reason: h.GetReason(), CreatedUnixMs: h.GetCreatedUnixMs(), MayHaveLostWrites: h.GetMayHaveLostWrites()})
	}
	v.Attach.Examples = attachExamples(v.Name, v.Attach)
	return v
}

// attachExamples are one-line commands that attach the volume from a host.
func attachExamples(name string, a AttachView) []string {
	var out []string
	if a.NBDURI != "" {
		if host, port, ok := nbdHostPort(a.NBDURI); ok {
			out = append(out, fmt.Sprintf("sudo nbd-client -N %s %s %s /dev/nbd0", name, host, port))
		}
		out = append(out, "qemu-img info "+a.NBDURI)
	}
	if a.ISCSIPortal != "" && a.ISCSIIQN != "" {
		out = append(out,
			fmt.Sprintf("sudo iscsiadm -m discovery -t sendtargets -p %s && sudo iscsiadm -m node -T %s -p %s --login",
				a.ISCSIPortal, a.ISCSIIQN, a.ISCSIPortal),
			fmt.Sprintf("qemu-img info iscsi://%s/%s/0", a.ISCSIPortal, a.ISCSIIQN))
	}
	return out
}

// nbdHostPort splits nbd://host:port/name.
func nbdHostPort(uri string) (host, port string, ok bool) {
	rest, found := strings.CutPrefix(uri, "nbd://")
	if !found {
		return "", "", false
	}
	hp, _, _ := strings.Cut(rest, "/")
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", "", false
	}
	return h, p, true
}

// writeJSON prints v as indented JSON.
func writeJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// attachedSessions is the primary's attached session count.
func (v VolumeView) attachedSessions() uint32 {
	for _, r := range v.Replicas {
		if r.ServerID == v.Primary {
			return r.AttachedSessions
		}
	}
	return 0
}

// WriteList prints the volumes as a table, one per line.
func WriteList(out io.Writer, vols []VolumeView) error {
	if len(vols) == 0 {
		_, err := fmt.Fprintln(out, "no block volumes (create one with block.create -name=NAME -size=SIZE)")
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSIZE\tRF\tDURABILITY\tEPOCH\tSTATE\tPRIMARY\tSESSIONS")
	for _, v := range vols {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%s\t%s\t%d\n", v.Name, FormatSize(v.SizeBytes), v.ReplicationFactor,
			v.Durability, v.Epoch, v.State, v.Primary, v.attachedSessions())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(out, "%d block volume(s)\n", len(vols))
	return err
}

// WriteStatus prints one volume in full; now dates the lease.
func WriteStatus(out io.Writer, v VolumeView, now time.Time) error {
	var b strings.Builder
	fmt.Fprintf(&b, "block volume %s\n", v.Name)
	fmt.Fprintf(&b, "  size:        %s (%d bytes), block size %d, WAL %s\n", FormatSize(v.SizeBytes), v.SizeBytes, v.BlockSize, FormatSize(v.WALSizeBytes))
	fmt.Fprintf(&b, "  replication: rf=%d, durability %s\n", v.ReplicationFactor, v.Durability)
	if v.Durability == "async" {
		b.WriteString("               (async: a failover may lose writes the primary had not shipped)\n")
	}
	fmt.Fprintf(&b, "  state:       %s\n", v.State)
	fmt.Fprintf(&b, "  epoch:       %d", v.Epoch)
	if v.EpochReason != "" {
		fmt.Fprintf(&b, " (%s)", v.EpochReason)
	}
	fmt.Fprintf(&b, ", primary %s\n", orNone(v.Primary))
	fmt.Fprintf(&b, "  lease:       %s\n", leaseText(v.LeaseExpiresUnixMs, now))
	if v.Failovers > 0 {
		fmt.Fprintf(&b, "  failovers:   %d (last one: %s without a serving primary)\n", v.Failovers,
			(time.Duration(v.LastFailoverPauseMs) * time.Millisecond).Round(time.Millisecond))
	}
	if v.FailoverBlocked != "" {
		fmt.Fprintf(&b, "  failover:    blocked: %s\n", v.FailoverBlocked)
	}
	if v.Warning != "" {
		fmt.Fprintf(&b, "  WARNING:     %s\n", v.Warning)
	} else if v.LossyEpoch != 0 {
		fmt.Fprintf(&b, "  WARNING:     epoch %d came from a failover that may have lost writes\n", v.LossyEpoch)
	}
	if v.CreatedUnixMs > 0 {
		fmt.Fprintf(&b, "  created:     %s\n", time.UnixMilli(v.CreatedUnixMs).UTC().Format(time.RFC3339))
	}
	b.WriteString("  replicas:\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "    SERVER\tROLE\tALIVE\tEPOCH\tHEAD\tDURABLE\tCHECKPOINT\tTAIL\tWAL USED\tFENCED\tLEASE\tSESSIONS\tHEALTH")
	for _, r := range v.Replicas {
		place := r.ServerID
		if r.Rack != "" {
			place += " (" + strings.Trim(r.DataCenter+"/"+r.Rack, "/") + ")"
		}
		lag := ""
		if r.ReplicaState != "" {
			lag = fmt.Sprintf("; %s, lag %d LSNs (%s)", r.ReplicaState, r.LagLSN, FormatSize(r.LagBytes))
		}
		if !r.Reported {
			fmt.Fprintf(tw, "    %s\t%s\t%s\t-\t-\t-\t-\t-\t-\t-\t-\t-\tnot reported yet%s\n", place, r.Role, yesNo(r.Alive), lag)
			continue
		}
		lease := "-"
		if r.LeaseRemainingMs > 0 {
			lease = (time.Duration(r.LeaseRemainingMs) * time.Millisecond).Round(100 * time.Millisecond).String()
		}
		health := "ok"
		if !r.Healthy {
			health = "unhealthy"
			if r.HealthMessage != "" {
				health += ": " + r.HealthMessage
			}
		}
		if r.Untrusted {
			health += " (untrusted: rebuild in progress)"
		}
		health += lag
		fmt.Fprintf(tw, "    %s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%d\t%s\n", place, r.Role, yesNo(r.Alive), r.Epoch,
			r.HeadLSN, r.DurableLSN, r.CheckpointLSN, r.TailLSN, FormatSize(r.WALUsedBytes), yesNo(r.Fenced), lease,
			r.AttachedSessions, health)
	}
	tw.Flush()
	writeRecoveries(&b, v.Recoveries)
	b.WriteString("  attach:\n")
	if v.Attach.NBDURI == "" && v.Attach.ISCSIPortal == "" {
		b.WriteString("    no NBD or iSCSI listener on the primary (start weed volume with -block.nbd / -block.iscsi)\n")
	}
	if v.Attach.NBDURI != "" {
		fmt.Fprintf(&b, "    NBD:   %s\n", v.Attach.NBDURI)
	}
	if v.Attach.ISCSIPortal != "" {
		fmt.Fprintf(&b, "    iSCSI: portal %s, target %s\n", v.Attach.ISCSIPortal, v.Attach.ISCSIIQN)
	}
	for _, e := range v.Attach.Examples {
		fmt.Fprintf(&b, "      %s\n", e)
	}
	_, err := io.WriteString(out, b.String())
	return err
}

// writeRecoveries prints the primary's recoveries as a table.
func writeRecoveries(b *strings.Builder, recs []RecoveryView) {
	if len(recs) == 0 {
		return
	}
	b.WriteString("  recoveries (by the primary):\n")
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "    SERVER\tPHASE\tPROGRESS\tETA\tLSN (ACHIEVED/TARGET)\tATTEMPT\tLAST OUTCOME\tPLAN")
	for _, r := range recs {
		phase := r.Phase
		if phase == "" {
			phase = "-"
		}
		if r.ForcedRebuild {
			phase += " (forced rebuild)"
		}
		eta := "-"
		if r.Running && r.EtaMs > 0 {
			eta = (time.Duration(r.EtaMs) * time.Millisecond).Round(time.Second).String()
		}
		outcome := r.LastOutcome
		if outcome == "" {
			outcome = "-"
			if r.Running {
				outcome = "(running)"
			}
		}
		if r.Rebuilds+r.CatchUps > 0 {
			outcome += fmt.Sprintf(" [%d catch-ups, %d rebuilds done]", r.CatchUps, r.Rebuilds)
		}
		plan := r.Plan
		if plan == "" {
			plan = "-"
		}
		fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\t%d/%d\t%d\t%s\t%s\n", r.ServerID, phase, r.progress(), eta,
			r.AchievedLSN, r.TargetLSN, r.Attempt, outcome, plan)
	}
	tw.Flush()
}

func leaseText(expiresUnixMs int64, now time.Time) string {
	if expiresUnixMs <= 0 {
		return "none granted yet (the primary accepts writes once the master grants one, within a heartbeat)"
	}
	left := time.UnixMilli(expiresUnixMs).Sub(now).Round(100 * time.Millisecond)
	if left <= 0 {
		return fmt.Sprintf("expired %s ago (master's view)", (-left).String())
	}
	return fmt.Sprintf("valid for %s more (master's view; renewed every heartbeat)", left)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

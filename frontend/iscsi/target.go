package iscsi

import (
	"errors"
	"fmt"
	"strings"

	"github.com/weedblock/weedblock/frontend/scsi"
)

// IQNPrefix is the naming authority of weedblock targets.
const IQNPrefix = "iqn.2026-11.io.weedblock:"

// IQN returns the target name of volume name.
func IQN(name string) string { return IQNPrefix + name }

// LogicalUnit executes SCSI commands. Execute is called concurrently from
// many goroutines and must not retain cmd.DataOut after returning.
type LogicalUnit interface {
	Execute(cmd *scsi.Command) *scsi.Response
}

// ResetKind names the task-management reset a LogicalUnit is told about.
type ResetKind int

// Reset kinds.
const (
	ResetAbortTaskSet ResetKind = iota + 1
	ResetClearTaskSet
	ResetLogicalUnit
	ResetTargetWarm
	ResetTargetCold
)

func (k ResetKind) String() string {
	switch k {
	case ResetAbortTaskSet:
		return "abort-task-set"
	case ResetClearTaskSet:
		return "clear-task-set"
	case ResetLogicalUnit:
		return "lun-reset"
	case ResetTargetWarm:
		return "target-warm-reset"
	case ResetTargetCold:
		return "target-cold-reset"
	}
	return fmt.Sprintf("reset(%d)", int(k))
}

// DataOutSizer is optionally implemented by a LogicalUnit: it returns the
// number of data-out bytes a CDB transfers (the SCSI transfer length, used
// to report residuals when the initiator's Expected Data Transfer Length
// differs), or ok=false when the CDB is invalid or has no data-out.
type DataOutSizer interface {
	DataOutLength(cdb []byte) (n uint32, ok bool)
}

// DataInReleaser is optionally implemented by a LogicalUnit that recycles
// its DataIn buffers: ReleaseDataIn is called once the transport no longer
// references resp.DataIn (after it was sent). It may not be called at all
// when the connection closes first; the buffer is then left to the GC.
type DataInReleaser interface {
	ReleaseDataIn(resp *scsi.Response)
}

// QuickChecker is optionally implemented by a LogicalUnit: Quick reports
// whether cmd usually completes without waiting (a small READ that copies
// from the page cache). The connection's reader then runs it itself,
// instead of handing it to a goroutine, and sends its response with the
// next batch. A quick command that turns out slow makes the reader hand
// the next ones off again for a while.
type QuickChecker interface {
	Quick(cmd *scsi.Command) bool
}

// CHAP holds the secrets of one side of CHAP authentication.
type CHAP struct {
	// User and Secret authenticate the initiator to the target.
	User, Secret string
	// MutualUser and MutualSecret, when set, authenticate the target to an
	// initiator that asks for mutual CHAP.
	MutualUser, MutualSecret string
}

// Target is one iSCSI target: a name and the logical unit at LUN 0.
type Target struct {
	// Name is the full iSCSI name (see IQN).
	Name string
	// Alias is sent as TargetAlias when set.
	Alias string
	// LU serves LUN 0 (and answers for every other LUN).
	LU LogicalUnit
	// CHAP, when non-nil, makes CHAP mandatory for logins to this target.
	CHAP *CHAP
	// OnReset, when set, is told of task-management resets (after the
	// transport aborted the affected tasks).
	OnReset func(kind ResetKind, nexus scsi.Nexus)
	// OnNexusLost, when set, is told when a session (I_T nexus) ends.
	OnNexusLost func(nexus scsi.Nexus)
}

// Errors of the target registry.
var (
	ErrTargetExists   = errors.New("iscsi: target already exists")
	ErrNoTarget       = errors.New("iscsi: no such target")
	ErrInvalidName    = errors.New("iscsi: invalid iSCSI name")
	ErrServerClosed   = errors.New("iscsi: server closed")
	ErrProtocol       = errors.New("iscsi: protocol error")
	ErrLoginTimeout   = errors.New("iscsi: login timed out")
	ErrAuthentication = errors.New("iscsi: authentication failed")
)

// validName checks an iSCSI name loosely (RFC 7143 §4.2.7): iqn., eui. or
// naa. prefix, at most 223 bytes, no spaces or control characters.
func validName(n string) bool {
	if len(n) == 0 || len(n) > 223 {
		return false
	}
	if !strings.HasPrefix(n, "iqn.") && !strings.HasPrefix(n, "eui.") && !strings.HasPrefix(n, "naa.") {
		return false
	}
	for i := 0; i < len(n); i++ {
		if n[i] <= ' ' || n[i] >= 0x7f {
			return false
		}
	}
	return true
}

// SCSITarget returns a Target named name serving lu at LUN 0, with
// LOGICAL UNIT RESET, TARGET WARM/COLD RESET and the end of sessions
// forwarded to lu (ABORT/CLEAR TASK SET only abort transport tasks).
func SCSITarget(name string, lu *scsi.LogicalUnit) Target {
	return Target{
		Name: name,
		LU:   lu,
		OnReset: func(k ResetKind, n scsi.Nexus) {
			switch k {
			case ResetLogicalUnit:
				lu.Reset(scsi.ResetLUN, n)
			case ResetTargetWarm:
				lu.Reset(scsi.ResetTargetWarm, n)
			case ResetTargetCold:
				lu.Reset(scsi.ResetTargetCold, n)
			}
		},
		OnNexusLost: lu.NexusLost,
	}
}

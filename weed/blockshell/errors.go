package blockshell

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrUsage is wrapped by every error about the command line itself (bad
// flag, missing -name, bad size...). Nothing was sent to the master.
var ErrUsage = errors.New("usage")

// usagef is a command-line error of command cmd.
func usagef(cmd, format string, args ...any) error {
	return fmt.Errorf("%s: %s (see %s -h): %w", cmd, fmt.Sprintf(format, args...), cmd, ErrUsage)
}

// Error is a request the master (or the way to it) refused, rewritten for
// an operator: what failed, why, and what to do about it.
type Error struct {
	Op     string     // the command, e.g. "block.create"
	Volume string     // the volume name, "" for block.list
	Master string     // the master's gRPC address the request went to
	Code   codes.Code // the gRPC status code
	Msg    string     // the master's own message
	Hint   string     // what the operator can do, "" when nothing useful
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Op)
	if e.Volume != "" {
		fmt.Fprintf(&b, " %s", e.Volume)
	}
	b.WriteString(": ")
	b.WriteString(e.summary())
	if e.Msg != "" {
		fmt.Fprintf(&b, ": %s", e.Msg)
	}
	if e.Hint != "" {
		fmt.Fprintf(&b, " (%s)", e.Hint)
	}
	return b.String()
}

// summary names the kind of failure in words.
func (e *Error) summary() string {
	switch e.Code {
	case codes.InvalidArgument:
		switch {
		case isUnknownReplica(e.Msg):
			return "unknown replica"
		case isNoCopy(e.Msg):
			return "no copy on that server"
		}
		return "invalid request"
	case codes.AlreadyExists:
		return "already exists"
	case codes.NotFound:
		if isUnknownServer(e.Msg) {
			return "unknown server"
		}
		return "no such block volume"
	case codes.ResourceExhausted:
		return "not enough space"
	case codes.FailedPrecondition:
		switch {
		case isNotLeader(e.Msg):
			return fmt.Sprintf("master %s is not the leader", e.Master)
		case isNotEnoughServers(e.Msg):
			return "not enough block servers"
		case isAttached(e.Msg):
			return "volume is attached"
		case isPromoteFirst(e.Msg):
			return "cannot repair the primary"
		case isNoLivePrimary(e.Msg):
			return "no live primary"
		}
		return "refused"
	case codes.Unavailable:
		return fmt.Sprintf("master %s is unavailable", e.Master)
	case codes.DeadlineExceeded:
		return fmt.Sprintf("no answer from master %s in time", e.Master)
	case codes.Unimplemented:
		return fmt.Sprintf("master %s has no block service", e.Master)
	case codes.Canceled:
		return "cancelled"
	}
	return fmt.Sprintf("master %s failed (%s)", e.Master, e.Code)
}

func isNotLeader(msg string) bool { return strings.HasPrefix(msg, "not leader") }
func isNotEnoughServers(msg string) bool {
	return strings.Contains(msg, "not enough") && strings.Contains(msg, "servers")
}
func isAttached(msg string) bool       { return strings.Contains(msg, "attached") }
func isUnknownServer(msg string) bool  { return strings.HasPrefix(msg, "unknown server") }
func isUnknownReplica(msg string) bool { return strings.HasPrefix(msg, "unknown replica") }
func isNoCopy(msg string) bool         { return strings.Contains(msg, "holds no copy") }
func isPromoteFirst(msg string) bool   { return strings.Contains(msg, "promote first") }
func isNoLivePrimary(msg string) bool  { return strings.Contains(msg, "no live primary") }

// leaderFrom extracts X from the master's "not leader; leader is X", or "".
func leaderFrom(msg string) string {
	_, after, ok := strings.Cut(msg, "leader is ")
	if !ok {
		return ""
	}
	f := strings.Fields(after)
	if len(f) == 0 {
		return ""
	}
	return strings.TrimRight(f[0], ".,;")
}

// friendly rewrites err, returned by master for op on volume, as an *Error
// with a hint. Errors that are not gRPC statuses are wrapped as they are.
func friendly(op, volume, master string, err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: master %s: %w", op, master, err)
	}
	e := &Error{Op: op, Volume: volume, Master: master, Code: st.Code(), Msg: st.Message()}
	switch e.Code {
	case codes.AlreadyExists:
		e.Msg = ""
		e.Hint = fmt.Sprintf("block.status -name=%s shows it; pick another name or block.delete it first", volume)
	case codes.NotFound:
		if isUnknownServer(e.Msg) {
			e.Hint = fmt.Sprintf("block.status -name=%s lists the servers holding copies", volume)
			break
		}
		e.Msg = ""
		e.Hint = "block.list shows the volumes"
	case codes.ResourceExhausted:
		e.Hint = "free space under -block.dir, add volume servers or create a smaller volume"
	case codes.InvalidArgument:
		if isUnknownReplica(e.Msg) || isNoCopy(e.Msg) {
			e.Hint = fmt.Sprintf("block.status -name=%s lists the members; a lost copy is re-created by the master by itself", volume)
		}
	case codes.FailedPrecondition:
		switch {
		case isPromoteFirst(e.Msg):
			e.Hint = fmt.Sprintf("block.promote -name=%s -to=ANOTHER_MEMBER, then block.repair it", volume)
		case isNoLivePrimary(e.Msg):
			e.Hint = fmt.Sprintf("a repair copies from the primary; block.status -name=%s shows the failover", volume)
		case isNotLeader(e.Msg):
			e.Hint = "run weed shell against the leader, or retry once the masters agree on one"
		case isNotEnoughServers(e.Msg):
			e.Hint = "start more volume servers with -block.dir, or lower -rf"
		case isAttached(e.Msg):
			e.Hint = "detach the NBD/iSCSI clients, or use -force"
		}
	case codes.Unavailable:
		e.Hint = "is the master running? weed shell -master= must name a master of this cluster"
	case codes.Unimplemented:
		e.Hint = "the master must be weedblock's weed master (with block support)"
	case codes.DeadlineExceeded:
		e.Hint = "the master or a volume server is slow or unreachable; block.status shows what happened"
	}
	return e
}

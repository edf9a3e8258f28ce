package blockmaster

import (
	"fmt"
	"sort"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// candidate is a server placement may choose: it is alive upstream and has
// a live block heartbeat stream.
type candidate struct {
	ID         string
	DataCenter string
	Rack       string
	FreeBytes  uint64
}

func (c candidate) rackKey() string { return c.DataCenter + "/" + c.Rack }

// place chooses rf distinct servers for a copy of need bytes each: servers
// with the most free space first, each on a rack (data center + rack) not yet
// used while such a server exists, then any remaining server. The first
// server returned is the primary. Ties break on the server ID so placement
// is deterministic. Errors are gRPC statuses: FailedPrecondition when fewer
// than rf block servers are alive, ResourceExhausted when too few of them
// have the space.
func place(cands []candidate, rf int, need uint64) ([]candidate, error) {
	if len(cands) < rf {
		return nil, status.Errorf(codes.FailedPrecondition,
			"not enough block servers: rf=%d needs %d, %d alive%s", rf, rf, len(cands), idList(cands))
	}
	var fit []candidate
	for _, c := range cands {
		if c.FreeBytes >= need {
			fit = append(fit, c)
		}
	}
	if len(fit) < rf {
		return nil, status.Errorf(codes.ResourceExhausted,
			"not enough space: rf=%d needs %d servers with %d bytes free, %d of %d alive servers have it%s",
			rf, rf, need, len(fit), len(cands), idList(fit))
	}
	sort.Slice(fit, func(i, j int) bool {
		if fit[i].FreeBytes != fit[j].FreeBytes {
			return fit[i].FreeBytes > fit[j].FreeBytes
		}
		return fit[i].ID < fit[j].ID
	})
	chosen := make([]candidate, 0, rf)
	usedServer := map[string]bool{}
	usedRack := map[string]bool{}
	for _, c := range fit { // first pass: one per rack
		if len(chosen) == rf {
			break
		}
		if usedServer[c.ID] || usedRack[c.rackKey()] {
			continue
		}
		chosen = append(chosen, c)
		usedServer[c.ID] = true
		usedRack[c.rackKey()] = true
	}
	for _, c := range fit { // second pass: distinct servers, racks shared
		if len(chosen) == rf {
			break
		}
		if usedServer[c.ID] {
			continue
		}
		chosen = append(chosen, c)
		usedServer[c.ID] = true
	}
	if len(chosen) < rf { // duplicate IDs in the input
		return nil, status.Errorf(codes.FailedPrecondition,
			"not enough distinct block servers: rf=%d, %d distinct%s", rf, len(chosen), idList(chosen))
	}
	return chosen, nil
}

func idList(cs []candidate) string {
	if len(cs) == 0 {
		return ""
	}
	ids := make([]string, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	sort.Strings(ids)
	return fmt.Sprintf(" (%s)", strings.Join(ids, ", "))
}

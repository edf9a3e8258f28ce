package cluster

import (
	hashicorpRaft "github.com/hashicorp/raft"
	"github.com/seaweedfs/raft"
	weed_server "github.com/seaweedfs/seaweedfs/weed/server"
	"github.com/seaweedfs/seaweedfs/weed/topology"
)

// raftIsLeader reports whether this master's raft is in the leader state.
// Unlike Topology.IsLeader it reads only the locked state, never goraft's
// unlocked leader name (a data race inside goraft, which the block master,
// polling leadership often, would otherwise hit constantly).
func raftIsLeader(t *topology.Topology) bool {
	t.RaftServerAccessLock.RLock()
	defer t.RaftServerAccessLock.RUnlock()
	switch {
	case t.RaftServer != nil:
		return t.RaftServer.State() == raft.Leader
	case t.HashicorpRaft != nil:
		return t.HashicorpRaft.State() == hashicorpRaft.Leader
	}
	return false
}

// masterLeader is the leader's gRPC address (host:port), "" when unknown.
// Followers ask it to redirect callers; it reads goraft's leader name,
// which goraft does not lock (upstream reads it the same way).
func masterLeader(ms *weed_server.MasterServer) string {
	leader, err := ms.Topo.MaybeLeader()
	if err != nil || leader == "" {
		return ""
	}
	return leader.ToGrpcAddress()
}

package replication

import "time"

// ReplicaStats is one member's cursor as the primary sees it.
type ReplicaStats struct {
	ServerID string
	Addr     string
	State    ReplicaState
	// Applied and Durable are the replica's latest reports.
	Applied uint64
	Durable uint64
	// LagLSNs is primary head − replica durable.
	LagLSNs uint64
	// LagBytes is the bytes shipped on the current connection and not yet
	// acknowledged (records not yet shipped are not counted).
	LagBytes int64
	// LastAck is when the replica last reported (zero: never).
	LastAck time.Time
	// Err is why the cursor last failed ("" if it has not).
	Err string
}

// Stats is the primary's replication state.
type Stats struct {
	Name      string
	Epoch     uint64
	Mode      Mode
	Head      uint64
	Durable   uint64
	Committed uint64
	// Replicas lists the current members, then recently removed ones.
	Replicas []ReplicaStats
}

// Stats returns a snapshot in plain structs.
func (p *Primary) Stats() Stats {
	st := p.vol.Status()
	p.mu.Lock()
	defer p.mu.Unlock()
	s := Stats{Name: p.o.Name, Epoch: p.epoch, Mode: p.o.Mode, Head: st.Head, Durable: st.Durable, Committed: p.committedLocked(st.Durable)}
	add := func(r *replica) {
		rs := ReplicaStats{ServerID: r.m.ServerID, Addr: r.m.Addr, State: r.state, Applied: r.applied, Durable: r.durable, LagBytes: r.inflight, LastAck: r.lastAck}
		if st.Head > r.durable {
			rs.LagLSNs = st.Head - r.durable
		}
		if r.lastErr != nil {
			rs.Err = r.lastErr.Error()
		}
		s.Replicas = append(s.Replicas, rs)
	}
	for _, r := range p.members {
		add(r)
	}
	for _, r := range p.removed {
		add(r)
	}
	return s
}

package iscsi

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/golang/glog"

	"github.com/weedblock/weedblock/frontend/scsi"
)

// sessionKey identifies a session for reinstatement: the initiator, its
// ISID and the target ("" for discovery).
type sessionKey struct {
	initiator string
	isid      [6]byte
	target    string
}

// sessionParams are the negotiated session-wide operational parameters.
type sessionParams struct {
	maxConnections      uint32
	initialR2T          bool
	immediateData       bool
	maxBurstLength      uint32
	firstBurstLength    uint32
	defaultTime2Wait    uint32
	defaultTime2Retain  uint32
	maxOutstandingR2T   uint32
	dataPDUInOrder      bool
	dataSequenceInOrder bool
	errorRecoveryLevel  uint32
}

func defaultSessionParams() sessionParams {
	return sessionParams{
		maxConnections:      1,
		initialR2T:          true,
		immediateData:       true,
		maxBurstLength:      262144,
		firstBurstLength:    65536,
		defaultTime2Wait:    2,
		defaultTime2Retain:  20,
		maxOutstandingR2T:   1,
		dataPDUInOrder:      true,
		dataSequenceInOrder: true,
	}
}

// session is one iSCSI session (an I_T nexus). The target supports one
// connection per session (MaxConnections=1), so CmdSN arrives in order.
type session struct {
	srv       *Server
	key       sessionKey
	tsih      uint16
	target    *Target // nil for discovery
	discovery bool
	nexus     scsi.Nexus
	params    sessionParams
	window    uint32

	mu       sync.Mutex
	expCmdSN uint32
	inflight uint32
	conns    map[uint16]*conn
	closed   bool
	// sn packs ExpCmdSN<<32 | MaxCmdSN for lock-free reads by writers.
	sn atomic.Uint64
}

func (s *session) publishLocked() {
	maxSN := s.expCmdSN + s.window - 1 - s.inflight
	s.sn.Store(uint64(s.expCmdSN)<<32 | uint64(maxSN))
}

// cmdSNs returns the current ExpCmdSN and MaxCmdSN.
func (s *session) cmdSNs() (exp, maxSN uint32) {
	v := s.sn.Load()
	return uint32(v >> 32), uint32(v)
}

// admit checks the CmdSN of a request. Non-immediate requests must carry
// exactly ExpCmdSN (one connection per session); they advance it and take a
// window slot that release gives back. Requests outside the window are
// dropped (RFC 7143 §4.2.2.1): admit returns false.
func (s *session) admit(cmdSN uint32, immediate bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if immediate {
		return true
	}
	if cmdSN != s.expCmdSN {
		return false
	}
	s.expCmdSN++
	s.inflight++
	s.publishLocked()
	return true
}

// release gives back the window slot of a completed non-immediate request.
func (s *session) release() {
	s.mu.Lock()
	if s.inflight > 0 {
		s.inflight--
	}
	s.publishLocked()
	s.mu.Unlock()
}

// addConn attaches c; it fails if the session is closed or full.
func (s *session) addConn(c *conn) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("session tsih %d: closed", s.tsih)
	}
	if uint32(len(s.conns)) >= max(s.params.maxConnections, 1) {
		return fmt.Errorf("session tsih %d: too many connections", s.tsih)
	}
	s.conns[c.cid] = c
	return nil
}

// removeConn detaches c; the session ends with its last connection
// (ErrorRecoveryLevel 0).
func (s *session) removeConn(c *conn) {
	s.mu.Lock()
	if s.conns[c.cid] == c {
		delete(s.conns, c.cid)
	}
	last := len(s.conns) == 0 && !s.closed
	if last {
		s.closed = true
	}
	s.mu.Unlock()
	if last {
		s.end()
	}
}

// end unregisters the session and tells the logical unit the nexus is gone.
func (s *session) end() {
	s.srv.mu.Lock()
	if s.srv.sessions[s.key] == s {
		delete(s.srv.sessions, s.key)
	}
	s.srv.mu.Unlock()
	glog.V(1).Infof("iscsi: session tsih=%d %s ended", s.tsih, s.nexus.InitiatorPort)
	if s.target != nil && s.target.OnNexusLost != nil {
		s.target.OnNexusLost(s.nexus)
	}
}

// close closes every connection of the session and waits for them.
func (s *session) close(reason string) {
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for _, c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	glog.V(1).Infof("iscsi: closing session tsih=%d: %s", s.tsih, reason)
	for _, c := range conns {
		c.close()
		c.wait()
	}
}

func (s *session) hasConn(cid uint16) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.conns[cid]
	return ok
}

func (s *session) connList() []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*conn, 0, len(s.conns))
	for _, c := range s.conns {
		out = append(out, c)
	}
	return out
}

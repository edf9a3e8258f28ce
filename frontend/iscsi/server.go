package iscsi

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/golang/glog"
)

// Config tunes a Server. The zero value is usable.
//
// The target answers the keys an initiator proposes; it does not propose
// keys itself. A key the initiator leaves out keeps its RFC 7143 default
// (e.g. DataDigest=None, ImmediateData=Yes, InitialR2T=Yes), whatever the
// settings below allow.
type Config struct {
	// Portals are the addresses ("host:port") advertised in SendTargets.
	// Empty: the local address of the connection that asks.
	Portals []string
	// TPGT is the target portal group tag (default 1).
	TPGT uint16
	// MaxRecvDataSegmentLength the target declares (default 256 KiB).
	MaxRecvDataSegmentLength uint32
	// MaxBurstLength and FirstBurstLength the target offers (defaults 16 MiB
	// - 1 and 64 KiB... negotiation takes the minimum).
	MaxBurstLength   uint32
	FirstBurstLength uint32
	// MaxOutstandingR2T the target offers (default 16).
	MaxOutstandingR2T uint32
	// NoImmediateData makes the target answer ImmediateData=No.
	NoImmediateData bool
	// RequireInitialR2T makes the target answer InitialR2T=Yes.
	RequireInitialR2T bool
	// HeaderDigests and DataDigests list the digests the target accepts
	// ("None", "CRC32C"); default both.
	HeaderDigests, DataDigests []string
	// CmdWindow is the number of commands an initiator may have queued per
	// session (MaxCmdSN - ExpCmdSN + 1 when idle; default 128).
	CmdWindow uint32
	// MaxTransferLength bounds the Expected Data Transfer Length of one
	// write the target buffers (default 32 MiB).
	MaxTransferLength uint32
	// LoginTimeout bounds a whole login phase and each read in it
	// (default 15 s).
	LoginTimeout time.Duration
	// WriteTimeout bounds how long one batch of PDUs may take to be
	// written; an initiator that stops reading is disconnected (default
	// 60 s).
	WriteTimeout time.Duration
	// NopInInterval, when > 0, makes the target send a NOP-In ping on a
	// connection idle that long; a connection whose initiator does not
	// answer within NopInTimeout (default 2×interval) is closed.
	NopInInterval time.Duration
	NopInTimeout  time.Duration
	// DiscoveryCHAP, when set, makes CHAP mandatory for discovery sessions.
	DiscoveryCHAP *CHAP
	// Redirect, when set, is asked at login for a normal session: if it
	// returns ok, the login is answered with a temporary redirect (status
	// 0x0101) to addr ("host:port" or "host:port,tpgt").
	Redirect func(targetName string) (addr string, ok bool)
	// Alias is sent as TargetAlias for targets without their own alias.
	Alias string
}

func (c *Config) withDefaults() Config {
	d := *c
	if d.TPGT == 0 {
		d.TPGT = 1
	}
	if d.MaxRecvDataSegmentLength == 0 {
		d.MaxRecvDataSegmentLength = 256 * 1024
	}
	if d.MaxRecvDataSegmentLength < 512 {
		d.MaxRecvDataSegmentLength = 512
	}
	if d.MaxRecvDataSegmentLength > 1<<24-1 {
		d.MaxRecvDataSegmentLength = 1<<24 - 1
	}
	if d.MaxBurstLength == 0 {
		d.MaxBurstLength = 1<<24 - 1
	}
	if d.FirstBurstLength == 0 {
		d.FirstBurstLength = 1<<24 - 1
	}
	if d.MaxOutstandingR2T == 0 {
		d.MaxOutstandingR2T = 16
	}
	if len(d.HeaderDigests) == 0 {
		d.HeaderDigests = []string{"None", "CRC32C"}
	}
	if len(d.DataDigests) == 0 {
		d.DataDigests = []string{"None", "CRC32C"}
	}
	if d.CmdWindow == 0 {
		d.CmdWindow = 128
	}
	if d.MaxTransferLength == 0 {
		d.MaxTransferLength = 32 << 20
	}
	if d.LoginTimeout == 0 {
		d.LoginTimeout = 15 * time.Second
	}
	if d.WriteTimeout == 0 {
		d.WriteTimeout = 60 * time.Second
	}
	if d.NopInInterval > 0 && d.NopInTimeout == 0 {
		d.NopInTimeout = 2 * d.NopInInterval
	}
	return d
}

// Server is an iSCSI target server: a registry of targets served on any
// number of listeners.
type Server struct {
	cfg Config

	mu        sync.Mutex
	closed    bool
	targets   map[string]*Target
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	sessions  map[sessionKey]*session
	nextTSIH  uint16
	wg        sync.WaitGroup
	done      chan struct{}
}

// NewServer returns a server with no targets.
func NewServer(cfg Config) *Server {
	return &Server{
		cfg:       cfg.withDefaults(),
		targets:   make(map[string]*Target),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]struct{}),
		sessions:  make(map[sessionKey]*session),
		nextTSIH:  1,
		done:      make(chan struct{}),
	}
}

// AddTarget registers t. Its name must be a valid iSCSI name not in use.
func (s *Server) AddTarget(t Target) error {
	if !validName(t.Name) {
		return fmt.Errorf("add target %q: %w", t.Name, ErrInvalidName)
	}
	if t.LU == nil {
		return fmt.Errorf("add target %s: no logical unit", t.Name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("add target %s: %w", t.Name, ErrServerClosed)
	}
	if _, ok := s.targets[t.Name]; ok {
		return fmt.Errorf("add target %s: %w", t.Name, ErrTargetExists)
	}
	tc := t
	s.targets[t.Name] = &tc
	glog.V(1).Infof("iscsi: target %s added", t.Name)
	return nil
}

// RemoveTarget unregisters a target and closes its sessions; it returns
// once their connections have stopped.
func (s *Server) RemoveTarget(name string) error {
	s.mu.Lock()
	t, ok := s.targets[name]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("remove target %s: %w", name, ErrNoTarget)
	}
	delete(s.targets, name)
	var victims []*session
	for _, ss := range s.sessions {
		if ss.target == t {
			victims = append(victims, ss)
		}
	}
	s.mu.Unlock()
	for _, ss := range victims {
		ss.close("target removed")
	}
	glog.V(1).Infof("iscsi: target %s removed", name)
	return nil
}

// Targets returns the names of the registered targets, sorted.
func (s *Server) Targets() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.targets))
	for n := range s.targets {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func (s *Server) lookupTarget(name string) *Target {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.targets[name]
}

// Serve accepts connections on l until l fails or the server is closed.
// It returns ErrServerClosed after Close.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			select {
			case <-s.done:
				return ErrServerClosed
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(backoff):
				case <-s.done:
					return ErrServerClosed
				}
				continue
			}
			return fmt.Errorf("iscsi: accept on %s: %w", l.Addr(), err)
		}
		backoff = 0
		c, ok := s.track(nc)
		if !ok {
			return ErrServerClosed
		}
		go func() {
			defer s.wg.Done()
			s.run(c)
		}()
	}
}

// ServeConn serves one already accepted connection and returns when it
// ends (or at once with ErrServerClosed after Close). The server owns nc.
func (s *Server) ServeConn(nc net.Conn) error {
	c, ok := s.track(nc)
	if !ok {
		return ErrServerClosed
	}
	defer s.wg.Done()
	s.run(c)
	return nil
}

// track registers a new connection; the caller must call s.wg.Done after
// s.run. It closes nc and fails if the server is closed.
func (s *Server) track(nc net.Conn) (*conn, bool) {
	c := newConn(s, nc)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		nc.Close()
		return nil, false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return c, true
}

func (s *Server) run(c *conn) {
	c.serve()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// Close stops every listener and connection and waits for all goroutines.
// It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.done)
	}
	for l := range s.listeners {
		l.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
	s.wg.Wait()
	return nil
}

// allocTSIH returns a TSIH not used by any live session (never 0).
func (s *Server) allocTSIHLocked() uint16 {
	for {
		t := s.nextTSIH
		s.nextTSIH++
		if s.nextTSIH == 0 {
			s.nextTSIH = 1
		}
		used := false
		for _, ss := range s.sessions {
			if ss.tsih == t {
				used = true
				break
			}
		}
		if !used {
			return t
		}
	}
}

// targetSessions returns the live sessions of target t.
func (s *Server) targetSessions(t *Target) []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*session
	for _, ss := range s.sessions {
		if ss.target == t {
			out = append(out, ss)
		}
	}
	return out
}

// closeTargetSessions closes every session of target t. It runs on its own
// goroutine, tracked by the server.
func (s *Server) closeTargetSessions(t *Target) {
	for _, ss := range s.targetSessions(t) {
		ss.close("target cold reset")
	}
}

// SessionInfo describes one live session.
type SessionInfo struct {
	Target    string // "" for discovery sessions
	Initiator string
	ISID      [6]byte
	TSIH      uint16
	Discovery bool
	// Remotes are the initiator addresses of the session's connections.
	Remotes []string
}

// ListSessions returns the live sessions (discovery ones included), ordered
// by TSIH.
func (s *Server) ListSessions() []SessionInfo {
	s.mu.Lock()
	list := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		list = append(list, ss)
	}
	s.mu.Unlock()
	out := make([]SessionInfo, 0, len(list))
	for _, ss := range list {
		si := SessionInfo{
			Target:    ss.key.target,
			Initiator: ss.key.initiator,
			ISID:      ss.key.isid,
			TSIH:      ss.tsih,
			Discovery: ss.discovery,
		}
		for _, c := range ss.connList() {
			si.Remotes = append(si.Remotes, c.nc.RemoteAddr().String())
		}
		out = append(out, si)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TSIH < out[j].TSIH })
	return out
}

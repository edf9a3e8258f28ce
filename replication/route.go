package replication

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/golang/glog"
)

// Other traffic on the replication listener (DESIGN §6: recovery shares the
// volume server's replication port). A connection whose first byte is a
// frame type (1..7) is the data plane. Any other first byte starts a
// preface: a fixed string, the same length for every route, that names the
// handler the connection belongs to. The Server reads it under a deadline,
// clears the deadline and hands the connection over; it still owns the
// connection (Close closes it and waits for the handler to return).

// ConnHandler serves connections routed to it by a preface (already read
// from the connection). ServeConn returns when the connection ends; the
// Server closes the connection afterwards.
type ConnHandler interface {
	ServeConn(net.Conn)
}

// prefaceTimeout bounds how long a routed connection may take to send its
// preface.
const prefaceTimeout = 10 * time.Second

// maxPrefaceLen bounds a preface.
const maxPrefaceLen = 64

// Route sends every accepted connection that starts with preface to h.
// preface must not start with a frame type byte (1..7), must be at most 64
// bytes and as long as every other route's preface. Call it before Serve,
// so that no connection of h's is refused as an unknown preface.
func (s *Server) Route(preface string, h ConnHandler) error {
	switch {
	case h == nil:
		return fmt.Errorf("replication: route %q: nil handler", preface)
	case preface == "" || len(preface) > maxPrefaceLen:
		return fmt.Errorf("replication: route %q: a preface has 1 to %d bytes", preface, maxPrefaceLen)
	case isFrameType(preface[0]):
		return fmt.Errorf("replication: route %q: its first byte %d is a frame type", preface, preface[0])
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("replication: route %q: server closed", preface)
	}
	for p := range s.routes {
		if len(p) != len(preface) {
			return fmt.Errorf("replication: route %q: %d bytes, but route %q has %d", preface, len(preface), p, len(p))
		}
	}
	if _, ok := s.routes[preface]; ok {
		return fmt.Errorf("replication: route %q: already routed", preface)
	}
	s.routes[preface] = h
	return nil
}

func isFrameType(b byte) bool { return b >= byte(typeHello) && b <= byte(typeError) }

// dispatch serves one accepted connection: the data plane, or a routed
// handler chosen by the connection's preface.
func (s *Server) dispatch(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(helloTimeout))
	var first [1]byte
	if _, err := io.ReadFull(c, first[:]); err != nil {
		return // closed before saying anything
	}
	s.mu.Lock()
	n := 0
	for p := range s.routes {
		n = len(p)
		break
	}
	s.mu.Unlock()
	if isFrameType(first[0]) || n == 0 {
		// The data plane (garbage too when nothing is routed: it is
		// refused with a protocol error as it always was).
		s.handle(c, io.MultiReader(bytes.NewReader(first[:]), c))
		return
	}
	pre := make([]byte, n)
	pre[0] = first[0]
	c.SetReadDeadline(time.Now().Add(prefaceTimeout))
	if _, err := io.ReadFull(c, pre[1:]); err != nil {
		glog.Warningf("replication: %s: reading a %d byte preface: %v", c.RemoteAddr(), n, err)
		return
	}
	if err := c.SetReadDeadline(time.Time{}); err != nil && !errors.Is(err, net.ErrClosed) {
		glog.Warningf("replication: %s: clear the preface deadline: %v", c.RemoteAddr(), err)
		return
	}
	s.mu.Lock()
	h := s.routes[string(pre)]
	s.mu.Unlock()
	if h == nil {
		glog.Warningf("replication: %s: unknown preface %q: closing", c.RemoteAddr(), pre)
		return
	}
	h.ServeConn(c)
}

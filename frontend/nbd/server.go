package nbd

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/golang/glog"
	"github.com/weedblock/weedblock/blockdev"
)

// Errors returned by the Server API.
var (
	// ErrServerClosed is returned by Serve after Close, and by AddExport on
	// a closed server.
	ErrServerClosed = errors.New("nbd: server closed")
	// ErrExportExists: AddExport with a name already registered.
	ErrExportExists = errors.New("nbd: export already exists")
	// ErrUnknownExport: RemoveExport with a name not registered.
	ErrUnknownExport = errors.New("nbd: unknown export")
)

// Options tune a Server. Zero fields take the defaults below.
type Options struct {
	// MaxPayload is the largest READ or WRITE accepted, advertised as the
	// maximum block size. Default 32 MiB, at most 1 GiB.
	MaxPayload int
	// MaxInFlightBytes bounds the payload bytes one connection holds at
	// once (requests read but not yet answered). Default 64 MiB; raised to
	// MaxPayload if smaller.
	MaxInFlightBytes int64
	// MaxServerInFlightBytes bounds the same over all connections.
	// Default 512 MiB; raised to MaxPayload if smaller.
	MaxServerInFlightBytes int64
	// Workers is the number of requests one connection runs concurrently.
	// Default 16.
	Workers int
	// HandshakeTimeout bounds the whole option negotiation. Default 30 s.
	HandshakeTimeout time.Duration
	// PreferredBlockSize is advertised as the preferred block size; it is
	// raised to the device block size if smaller. Default 4096.
	PreferredBlockSize int
}

const (
	defaultMaxPayload        = 32 << 20
	maxMaxPayload            = 1 << 30
	defaultMaxInFlightBytes  = 64 << 20
	defaultMaxServerInFlight = 512 << 20
	defaultWorkers           = 16
	defaultHandshakeTimeout  = 30 * time.Second
	defaultPreferredBlock    = 4096
)

func (o Options) withDefaults() Options {
	if o.MaxPayload <= 0 {
		o.MaxPayload = defaultMaxPayload
	}
	o.MaxPayload = min(o.MaxPayload, maxMaxPayload)
	if o.MaxInFlightBytes <= 0 {
		o.MaxInFlightBytes = defaultMaxInFlightBytes
	}
	if o.MaxInFlightBytes < int64(o.MaxPayload) {
		o.MaxInFlightBytes = int64(o.MaxPayload)
	}
	if o.MaxServerInFlightBytes <= 0 {
		o.MaxServerInFlightBytes = defaultMaxServerInFlight
	}
	if o.MaxServerInFlightBytes < int64(o.MaxPayload) {
		o.MaxServerInFlightBytes = int64(o.MaxPayload)
	}
	if o.Workers <= 0 {
		o.Workers = defaultWorkers
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = defaultHandshakeTimeout
	}
	if o.PreferredBlockSize <= 0 {
		o.PreferredBlockSize = defaultPreferredBlock
	}
	return o
}

// export is one named device.
type export struct {
	name        string
	description string
	dev         blockdev.Device
}

// Server serves named exports over NBD. Create it with NewServer, register
// devices with AddExport, run Serve on one or more listeners, and stop it with
// Close.
type Server struct {
	opts   Options
	bufs   bufferPool  // payload buffers shared by all connections
	reqs   sync.Pool   // *request
	budget *byteBudget // payload bytes in flight over all connections

	mu        sync.Mutex
	closed    bool
	exports   map[string]*export
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	wg        sync.WaitGroup // Serve loops and connection goroutines
}

// NewServer returns a server with no exports.
func NewServer(opts Options) *Server {
	opts = opts.withDefaults()
	return &Server{
		opts:      opts,
		budget:    newByteBudget(opts.MaxServerInFlightBytes),
		exports:   make(map[string]*export),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]struct{}),
	}
}

// AddExport registers dev under name. The description is shown to clients
// that list exports or ask for NBD_INFO_DESCRIPTION.
func (s *Server) AddExport(name, description string, dev blockdev.Device) error {
	if len(name) > maxNameLen {
		return fmt.Errorf("add export %.40q...: name longer than %d bytes", name, maxNameLen)
	}
	if dev == nil {
		return fmt.Errorf("add export %q: nil device", name)
	}
	bs := dev.BlockSize()
	if bs <= 0 || bs&(bs-1) != 0 || bs > 64<<10 {
		return fmt.Errorf("add export %q: block size %d is not a power of two ≤ 64 KiB", name, bs)
	}
	if bs > s.opts.MaxPayload {
		return fmt.Errorf("add export %q: block size %d above max payload %d", name, bs, s.opts.MaxPayload)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("add export %q: %w", name, ErrServerClosed)
	}
	if _, ok := s.exports[name]; ok {
		return fmt.Errorf("add export %q: %w", name, ErrExportExists)
	}
	s.exports[name] = &export{name: name, description: description, dev: dev}
	glog.V(1).Infof("nbd: export %q added (%d bytes, block size %d)", name, dev.Size(), bs)
	return nil
}

// RemoveExport unregisters name, closes every connection serving it
// (requests in flight there get no reply) and waits until those connections
// have ended: once it returns the server makes no more I/O calls on the
// device, so the caller may close it. It must not be called from inside a
// call on that device.
func (s *Server) RemoveExport(name string) error {
	s.mu.Lock()
	e, ok := s.exports[name]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("remove export %q: %w", name, ErrUnknownExport)
	}
	delete(s.exports, name)
	var victims []*conn
	for c := range s.conns {
		if c.exp == e {
			victims = append(victims, c)
		}
	}
	s.mu.Unlock()
	for _, c := range victims {
		c.shutdown()
	}
	for _, c := range victims {
		<-c.done
	}
	glog.V(1).Infof("nbd: export %q removed, %d connection(s) closed", name, len(victims))
	return nil
}

// Exports returns the registered export names, sorted.
func (s *Server) Exports() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.exports))
	for n := range s.exports {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// lookup returns the export called name, or nil.
func (s *Server) lookup(name string) *export {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exports[name]
}

// bind looks up name and attaches c to it in one step, so RemoveExport either
// sees the connection or the connection never sees the export.
func (s *Server) bind(c *conn, name string) *export {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.exports[name]
	if e != nil {
		c.exp = e
	}
	return e
}

// exportList snapshots the exports for NBD_OPT_LIST, sorted by name.
func (s *Server) exportList() []*export {
	s.mu.Lock()
	defer s.mu.Unlock()
	list := make([]*export, 0, len(s.exports))
	for _, e := range s.exports {
		list = append(list, e)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].name < list[j].name })
	return list
}

// Serve accepts connections on l until l fails or the server is closed. It
// always closes l. After Close it returns ErrServerClosed.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
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
		l.Close()
	}()

	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				glog.Warningf("nbd: accept on %s: %v; retrying in %v", l.Addr(), err, backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("nbd: accept on %s: %w", l.Addr(), err)
		}
		backoff = 0
		c := newConn(s, nc)
		if !s.track(c) {
			nc.Close()
			return ErrServerClosed
		}
		go func() {
			defer s.untrack(c)
			c.serve()
		}()
	}
}

// ServeConn serves one connection accepted elsewhere (any net.Conn, e.g.
// a Unix socket or an in-memory pipe) and returns when it ends. Close ends
// it too. It always closes nc.
func (s *Server) ServeConn(nc net.Conn) error {
	c := newConn(s, nc)
	if !s.track(c) {
		nc.Close()
		return ErrServerClosed
	}
	defer s.untrack(c)
	c.serve()
	return nil
}

// track registers a connection so Close can end it and wait for it. It
// returns false once the server is closed.
func (s *Server) track(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	close(c.done)
	s.wg.Done()
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Close stops every listener and connection and waits for all goroutines
// the server started. It is idempotent; later calls wait too.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	ls := make([]net.Listener, 0, len(s.listeners))
	for l := range s.listeners {
		ls = append(ls, l)
	}
	cs := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	for _, l := range ls {
		l.Close()
	}
	for _, c := range cs {
		c.shutdown()
	}
	s.wg.Wait()
	return nil
}

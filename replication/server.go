package replication

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang/glog"

	"github.com/weedblock/weedblock/blockdev"
	"github.com/weedblock/weedblock/blockvol"
)

// Target is the replica volume a Server appends to; *blockvol.Volume is one.
type Target interface {
	// ApplyReplicatedBatch appends records in order (see blockvol) and
	// says how many were applied before an error.
	ApplyReplicatedBatch(rs []blockvol.Record) (int, error)
	Flush() error
	Status() blockvol.Status
}

// termHistory is the optional part of a Target that knows the epoch of
// its records (*blockvol.Volume does): a hello that asks for it gets the
// epoch of the record at the head. A Target without it answers "unknown".
type termHistory interface {
	TermAt(lsn uint64) (epoch uint64, ok bool)
}

// barrierNext says whether the next buffered frame is a barrier.
func barrierNext(br *bufio.Reader) bool {
	if br.Buffered() == 0 {
		return false // Peek would wait for the network
	}
	b, err := br.Peek(1)
	return err == nil && frameType(b[0]) == typeBarrier
}

// helloTimeout bounds how long a new connection may take to say hello.
const helloTimeout = 10 * time.Second

// maxBatch and maxBatchBytes bound how many records (and data bytes) the
// replica gathers from already-received input before applying them as one
// batch and acking.
const (
	maxBatch      = 64
	maxBatchBytes = 4 << 20
)

// Server is the replica side of the data plane: one listener (or more) per
// volume server, connections multiplexed by the volume name in their hello.
type Server struct {
	mu        sync.Mutex
	targets   map[string]Target
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]string    // conn → volume ("" before hello, or routed)
	routes    map[string]ConnHandler // preface → handler (route.go)
	closed    bool
	wg        sync.WaitGroup
}

// NewServer returns a server with no volumes; call Serve to accept.
func NewServer() *Server {
	return &Server{
		targets:   make(map[string]Target),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[net.Conn]string),
		routes:    make(map[string]ConnHandler),
	}
}

// Register makes name served by t. A name registered twice is an error.
func (s *Server) Register(name string, t Target) error {
	if name == "" || len(name) > maxNameLen {
		return fmt.Errorf("replication: register %q: bad volume name", name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("replication: register %s: %w", name, blockdev.ErrClosed)
	}
	if _, ok := s.targets[name]; ok {
		return fmt.Errorf("replication: register %s: already registered", name)
	}
	s.targets[name] = t
	return nil
}

// Unregister stops serving name and closes its connections. Connection
// handlers may still be finishing one request when it returns; the target
// must stay open until Close (or until its connections are gone).
func (s *Server) Unregister(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.targets, name)
	for c, v := range s.conns {
		if v == name {
			c.Close()
		}
	}
}

// Serve accepts connections on l until l fails or Close is called. It
// returns nil after Close.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return fmt.Errorf("replication: serve: %w", blockdev.ErrClosed)
	}
	s.listeners[l] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			delete(s.listeners, l)
			s.mu.Unlock()
			if closed {
				return nil
			}
			return fmt.Errorf("replication: accept: %w", err)
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			continue
		}
		s.conns[c] = ""
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.dispatch(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			c.Close()
		}()
	}
}

// Close stops every listener and connection and waits for their
// goroutines. Idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		for l := range s.listeners {
			l.Close()
		}
		for c := range s.conns {
			c.Close()
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// checkEpoch applies the epoch rule (see the package doc).
func checkEpoch(sender uint64, st blockvol.Status) *errorMsg {
	switch {
	case sender < st.Epoch:
		return &errorMsg{codeStaleEpoch, fmt.Sprintf("sender epoch %d is below replica epoch %d", sender, st.Epoch)}
	case sender > st.Epoch:
		return &errorMsg{codeEpochAhead, fmt.Sprintf("sender epoch %d is above replica epoch %d (not yet assigned)", sender, st.Epoch)}
	}
	return nil
}

// replicaReady says whether st may take records now.
func replicaReady(st blockvol.Status) *errorMsg {
	if st.Role != blockvol.RoleReplica || st.Fenced {
		return &errorMsg{codeNotReplica, fmt.Sprintf("volume is %v, fenced=%v", st.Role, st.Fenced)}
	}
	return nil
}

func applyCode(err error) uint16 {
	switch {
	case errors.Is(err, blockvol.ErrStaleEpoch):
		return codeStaleEpoch
	case errors.Is(err, blockvol.ErrFenced), errors.Is(err, blockvol.ErrWrongRole):
		return codeNotReplica
	}
	return codeApply
}

// handle serves one data-plane connection, read from r (c's bytes): a
// hello, then records and barriers in order. Any refusal is sent as an
// error frame and ends the connection.
func (s *Server) handle(c net.Conn, r io.Reader) {
	br := bufio.NewReaderSize(r, 256<<10)
	bw := bufio.NewWriterSize(c, 4096)
	fr := newFrameReader(br)
	refuse := func(m *errorMsg) {
		glog.V(1).Infof("replication: %s: refusing: %s", c.RemoteAddr(), m.Msg)
		c.SetWriteDeadline(time.Now().Add(time.Second))
		if writeFrame(bw, typeError, encodeError(*m)) == nil {
			bw.Flush()
		}
	}
	c.SetReadDeadline(time.Now().Add(helloTimeout))
	t, p, err := fr.next()
	if err != nil {
		if !errors.Is(err, io.EOF) {
			refuse(&errorMsg{codeProtocol, fmt.Sprintf("reading hello: %v", err)})
		}
		return
	}
	if t != typeHello {
		refuse(&errorMsg{codeProtocol, fmt.Sprintf("expected hello, got %v", t)})
		return
	}
	h, err := decodeHello(p)
	if err != nil {
		refuse(&errorMsg{codeProtocol, err.Error()})
		return
	}
	c.SetReadDeadline(time.Time{})
	s.mu.Lock()
	tgt, ok := s.targets[h.Volume]
	if ok && !s.closed {
		s.conns[c] = h.Volume
	}
	s.mu.Unlock()
	if !ok {
		refuse(&errorMsg{codeUnknownVolume, fmt.Sprintf("volume %q is not served here", h.Volume)})
		return
	}
	st := tgt.Status()
	if m := checkEpoch(h.Epoch, st); m != nil {
		refuse(m)
		return
	}
	if m := replicaReady(st); m != nil {
		refuse(m)
		return
	}
	hok := helloOKMsg{Epoch: st.Epoch, Head: st.Head, Durable: st.Durable, extended: h.WantHeadEpoch}
	if th, can := tgt.(termHistory); can && h.WantHeadEpoch {
		hok.HeadEpoch, hok.HeadEpochKnown = th.TermAt(st.Head)
		if !hok.HeadEpochKnown {
			hok.HeadEpoch = 0
		}
	}
	if err := writeFrame(bw, typeHelloOK, encodeHelloOK(hok)); err != nil {
		return
	}
	if err := bw.Flush(); err != nil {
		return
	}
	// A barrier is answered (fsync, then barrier-ack) by the reader
	// itself when nothing else has arrived and no earlier barrier is
	// being answered: no goroutine hand-off on the commit path. Otherwise
	// a second goroutine answers it, so that records keep being applied
	// while the replica fsyncs. Flush covers every record applied before
	// the barrier was read either way.
	var wmu sync.Mutex
	answer := func(m barrierMsg) bool {
		err := tgt.Flush()
		if err != nil {
			wmu.Lock()
			refuse(&errorMsg{applyCode(err), fmt.Sprintf("barrier %d: flush: %v", m.LSN, err)})
			wmu.Unlock()
			c.Close()
			return false
		}
		st := tgt.Status()
		wmu.Lock()
		err = writeFrame(bw, typeBarrierAck, encodeBarrierAck(barrierAckMsg{LSN: m.LSN, Durable: st.Durable}))
		if err == nil {
			err = bw.Flush()
		}
		wmu.Unlock()
		if err != nil {
			c.Close()
			return false
		}
		return true
	}
	bars := make(chan barrierMsg, 1)
	var barsBusy atomic.Int32 // barriers handed to the goroutine, not yet answered
	barsDone := make(chan struct{})
	go func() {
		defer close(barsDone)
		for m := range bars {
			ok := answer(m)
			barsBusy.Add(-1)
			if !ok {
				return
			}
		}
	}()
	defer func() {
		close(bars)
		<-barsDone
	}()
	fail := func(m *errorMsg) {
		wmu.Lock()
		refuse(m)
		wmu.Unlock()
	}
	// Records already received are applied as one batch (they share WAL
	// writes), then acked.
	batch := make([]blockvol.Record, 0, maxBatch)
	arena := make([]byte, 0, maxBatchBytes)
	var cur blockvol.Status
	// apply applies the batch gathered so far; with ack it acknowledges
	// it (a barrier's answer acknowledges what it covers instead).
	apply := func(ack bool) bool {
		if len(batch) == 0 {
			return true
		}
		n, err := tgt.ApplyReplicatedBatch(batch)
		var applied uint64
		if n > 0 {
			applied = batch[n-1].LSN
		}
		if err != nil {
			var at uint64
			if n < len(batch) {
				at = batch[n].LSN
			}
			fail(&errorMsg{applyCode(err), fmt.Sprintf("apply lsn %d: %v", at, err)})
			return false
		}
		batch, arena = batch[:0], arena[:0]
		if !ack {
			return true
		}
		wmu.Lock()
		err = writeFrame(bw, typeAck, encodeAck(applied))
		if err == nil {
			err = bw.Flush()
		}
		wmu.Unlock()
		return err == nil
	}
	for {
		t, p, err := fr.next()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				fail(&errorMsg{codeProtocol, err.Error()})
			}
			return
		}
		switch t {
		case typeRecord:
			m, err := decodeRecord(p)
			if err != nil {
				fail(&errorMsg{codeProtocol, err.Error()})
				return
			}
			if len(batch) == 0 {
				// One look at the volume per batch: records of a batch
				// are applied together, under the epoch seen here.
				cur = tgt.Status()
			}
			if e := checkEpoch(m.Epoch, cur); e != nil {
				fail(e)
				return
			}
			if len(arena)+len(m.Rec.Data) > cap(arena) && !apply(true) {
				return
			}
			if len(m.Rec.Data) > cap(arena) {
				// Larger than the arena: apply it alone, from the frame.
				batch = append(batch, m.Rec)
				if !apply(true) {
					return
				}
				continue
			}
			off := len(arena)
			arena = append(arena, m.Rec.Data...)
			m.Rec.Data = arena[off:len(arena):len(arena)]
			batch = append(batch, m.Rec)
			if br.Buffered() < frameHeaderSize || len(batch) >= maxBatch {
				// A barrier next answers for these records: no ack.
				if !apply(!barrierNext(br)) {
					return
				}
			}
		case typeBarrier:
			if !apply(false) {
				return
			}
			m, err := decodeBarrier(p)
			if err != nil {
				fail(&errorMsg{codeProtocol, err.Error()})
				return
			}
			if e := checkEpoch(m.Epoch, tgt.Status()); e != nil {
				fail(e)
				return
			}
			if barsBusy.Load() == 0 && br.Buffered() == 0 {
				if !answer(m) {
					return
				}
				continue
			}
			barsBusy.Add(1)
			select {
			case bars <- m:
			case <-barsDone:
				return
			}
		default:
			apply(true)
			fail(&errorMsg{codeProtocol, fmt.Sprintf("unexpected %v", t)})
			return
		}
	}
}

package v2bridge

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/golang/glog"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/executor"
	"github.com/weedblock/weedblock/replication"
)

// Service is the replica side of recovery: one listener (or more) per
// volume server, requests multiplexed by volume name. Each volume serves
// one request at a time.
type Service struct {
	mu      sync.Mutex
	vols    map[string]*replicaVol
	ls      map[net.Listener]struct{}
	conns   map[net.Conn]struct{}
	closed  bool
	wg      sync.WaitGroup
	closeMu sync.Once
	// writeBehind: base bytes per write-back window (baseWriteBehind)
	writeBehind uint64
}

// replicaVol is one registered volume and its recovery session.
type replicaVol struct {
	mu  sync.Mutex
	vol *blockvol.Volume
	// newest attempt seen at epoch attemptEpoch; older attempts are stale.
	attemptEpoch, attempt uint64
	// rebuild session (between opBegin and opVerify)
	rebuilding bool
	lease      time.Time // lease of the replica role to restore after the base
	baseLSN    uint64
	size       uint64
	next       uint64
	// sum is the digest (baseDigest) of the base requests applied so far;
	// nil: no base transfer in progress (or it was lost)
	sum *baseDigest
	// Write-behind of the base (writeBehindLocked): once window bytes of
	// data were written from wbFrom on (wbData), the range is handed to
	// the disk (StartBaseWriteback); started holds the ranges started and
	// not yet dropped, oldest first.
	window  uint64
	wbFrom  uint64
	wbData  uint64
	started []baseSpan
}

// baseSpan is a range of the base: off, n bytes.
type baseSpan struct{ off, n uint64 }

// Write-behind of a base on the replica (Service.writeBehind, replicaVol.
// writeBehindLocked).
const (
	// baseWriteBehind is how many bytes of base data a window holds:
	// each is handed to the disk once written.
	baseWriteBehind = 16 << 20
	// writeBehindLag is how many started windows stay cached before the
	// oldest is waited for and dropped from the page cache.
	writeBehindLag = 2
)

// NewService returns a service with no volumes; call Serve to accept.
func NewService() *Service {
	return &Service{vols: map[string]*replicaVol{}, ls: map[net.Listener]struct{}{}, conns: map[net.Conn]struct{}{}, writeBehind: baseWriteBehind}
}

// Register makes name's recovery served by vol. A name registered twice is
// an error.
func (s *Service) Register(name string, vol *blockvol.Volume) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.vols[name]; ok {
		return fmt.Errorf("v2bridge: register %q: already registered", name)
	}
	s.vols[name] = &replicaVol{vol: vol, window: s.writeBehind}
	return nil
}

// Unregister stops serving name; a request in progress finishes.
func (s *Service) Unregister(name string) {
	s.mu.Lock()
	delete(s.vols, name)
	s.mu.Unlock()
}

// Preface is what a Peer writes first on every connection it dials: it
// lets a replication.Server route recovery connections to a Service
// (replication.Server.Route(Preface, svc)), so recovery shares the volume
// server's replication port. Its first byte is not a replication frame
// type.
//
// Version 2 ("WBRECV02"): the base is verified by baseDigest (frame CRCs
// in sequence) instead of the SHA-256 of its bytes; a peer of version 1
// is refused at the preface (closed) rather than disagreeing on digests.
const Preface = "WBRECV02"

// prefaceTimeout bounds how long Serve waits for a connection's preface.
const prefaceTimeout = 10 * time.Second

// Serve accepts connections on l until l fails or Close is called; it
// returns nil after Close. Each connection must start with Preface (a
// connection that does not is closed). In a volume server recovery shares
// the replication listener instead (see ServeConn); Serve is for a
// listener of its own, as in tests.
func (s *Service) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.ls[l] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			delete(s.ls, l)
			s.mu.Unlock()
			if closed {
				return nil
			}
			return fmt.Errorf("v2bridge: accept: %w", err)
		}
		if !s.track(c) {
			c.Close()
			return nil
		}
		go func() {
			defer s.untrack(c)
			c.SetReadDeadline(time.Now().Add(prefaceTimeout))
			var pre [len(Preface)]byte
			if _, err := io.ReadFull(c, pre[:]); err != nil {
				return
			}
			if string(pre[:]) != Preface {
				glog.Warningf("v2bridge: %s: bad preface %q: closing", c.RemoteAddr(), pre[:])
				return
			}
			if c.SetReadDeadline(time.Time{}) != nil {
				return
			}
			s.serveConn(c)
		}()
	}
}

// ServeConn serves one accepted connection whose Preface was already read
// (by a replication.Server routing it here). It returns when the
// connection ends or the Service is closed; Close closes such connections
// and waits for ServeConn to return. The connection is closed on return.
func (s *Service) ServeConn(c net.Conn) {
	if !s.track(c) {
		c.Close()
		return
	}
	defer s.untrack(c)
	s.serveConn(c)
}

// track registers c so Close closes it and waits for its handler; false
// once the Service is closed.
func (s *Service) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

// untrack closes c and ends its handler's share of the Service's wait.
func (s *Service) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
	s.wg.Done()
}

// Close stops every listener and connection and waits for their
// goroutines. Idempotent.
func (s *Service) Close() error {
	s.closeMu.Do(func() {
		s.mu.Lock()
		s.closed = true
		for l := range s.ls {
			l.Close()
		}
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
	})
	s.wg.Wait()
	return nil
}

// readAhead is how many frames a connection's reader may hold read while
// the request before them is being handled.
const readAhead = 4

// inFrame is one frame read ahead (or the read's error), with its
// payload's CRC32C.
type inFrame struct {
	p   []byte
	crc uint32
	err error
}

// serveConn answers c's requests in order until c ends. A reader goroutine
// (owned here, stopped before return) reads and checks the next frames
// while the current request is handled, in buffers that go round between
// the two.
func (s *Service) serveConn(c net.Conn) {
	if sb, ok := c.(interface{ SetReadBuffer(int) error }); ok {
		sb.SetReadBuffer(socketBuffer) // best effort: the kernel may cap it
	}
	// A small read buffer: a base chunk's bytes are mostly read straight
	// into its frame buffer, and only what a read of the buffer took of
	// them is copied.
	br := bufio.NewReaderSize(c, 16<<10)
	bw := bufio.NewWriterSize(c, 64<<10)
	free := make(chan []byte, readAhead+1)
	for i := 0; i <= readAhead; i++ {
		free <- nil
	}
	frames := make(chan inFrame, readAhead)
	stop, readerDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			var buf []byte
			select {
			case buf = <-free:
			case <-stop:
				return
			}
			p, crc, err := readFrameCRC(br, buf)
			select {
			case frames <- inFrame{p: p, crc: crc, err: err}:
			case <-stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	defer func() {
		close(stop)
		c.Close() // ends a read in progress
		<-readerDone
	}()
	var out []byte
	for {
		f := <-frames
		if f.err != nil {
			if errors.Is(f.err, ErrBadFrame) {
				glog.Warningf("v2bridge: %s: %v", c.RemoteAddr(), f.err)
				refuseBadFrame(c, bw, f.err)
			}
			return
		}
		p := f.p
		var resp response
		req, err := decodeRequest(p)
		if err != nil {
			resp = response{Code: codeOther, Msg: err.Error()}
		} else {
			resp = s.handle(&req, f.crc)
		}
		free <- p[:0] // req's slices of p are not used after this
		out = resp.encode(out[:0])
		if err := writeFrame(bw, out); err != nil {
			return
		}
		if req.Op == 0 {
			return // undecodable request: the stream may be out of step
		}
	}
}

// badFrameDrain bounds how long a connection that sent a bad frame is
// read (and discarded) after its refusal, so that the peer reads the
// refusal instead of a reset.
const badFrameDrain = 2 * time.Second

// refuseBadFrame answers a frame that failed its checks (CRC, length) with
// a refusal saying so, as the answer to that frame's request, and ends the
// connection gracefully: the stream may be out of step, so nothing after
// it is read, but it is drained for a while so that the peer, still
// sending, gets the refusal rather than a connection reset.
func refuseBadFrame(c net.Conn, bw *bufio.Writer, why error) {
	r := response{Code: codeOther, Msg: fmt.Sprintf("refused: %v", why)}
	if err := writeFrame(bw, r.encode(nil)); err != nil {
		return
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(badFrameDrain))
	io.Copy(io.Discard, c)
}

// handle answers req, whose frame payload has the CRC32C crc (a base
// request's entry in the base's digest).
func (s *Service) handle(req *request, crc uint32) response {
	s.mu.Lock()
	rv := s.vols[req.Volume]
	s.mu.Unlock()
	if rv == nil {
		return response{Code: codeUnknownVolume, Msg: fmt.Sprintf("volume %q is not registered", req.Volume)}
	}
	rv.mu.Lock()
	defer rv.mu.Unlock()
	if r, ok := rv.admit(req); !ok {
		return r
	}
	var err error
	switch req.Op {
	case opHello:
	case opApply:
		err = rv.apply(req)
	case opTruncate:
		err = rv.truncate(req.A)
	case opBegin:
		err = rv.begin(req)
	case opBase:
		err = rv.base(req, crc)
	case opZero:
		err = rv.zero(req, crc)
	case opVerify:
		err = rv.verify(req)
	case opCommit:
		err = rv.commit(req.A)
	}
	r := rv.report()
	if req.Op == opHello {
		var known bool
		r.Epoch, known = rv.lastEpoch(r.Durable)
		r.EpochUnknown = !known
		if req.B&helloTerms != 0 {
			r.HasTerms, r.Terms = true, rv.terms(r.Durable)
		}
	}
	if err != nil {
		r.Code, r.Msg = codeOther, fmt.Sprintf("%s %s: %v", req.Op, req.Volume, err)
		switch {
		case errors.Is(err, executor.ErrTruncationUnsafe), errors.Is(err, blockvol.ErrBelowCheckpoint):
			r.Code = codeTruncationUnsafe
		case errors.Is(err, executor.ErrBaseMismatch):
			r.Code = codeBaseMismatch
		}
	}
	return r
}

// admit applies the epoch and attempt rules.
func (rv *replicaVol) admit(req *request) (response, bool) {
	st := rv.vol.Status()
	switch {
	case req.Epoch < st.Epoch:
		return response{Code: codeStaleEpoch, Msg: fmt.Sprintf("%s from epoch %d, replica at %d", req.Op, req.Epoch, st.Epoch)}, false
	case req.Epoch > st.Epoch:
		return response{Code: codeEpochAhead, Msg: fmt.Sprintf("%s from epoch %d, replica assigned %d", req.Op, req.Epoch, st.Epoch)}, false
	}
	if req.Epoch != rv.attemptEpoch {
		rv.attemptEpoch, rv.attempt = req.Epoch, 0
	}
	if req.Attempt < rv.attempt {
		return response{Code: codeStaleAttempt, Msg: fmt.Sprintf("%s from attempt %d, attempt %d is newer", req.Op, req.Attempt, rv.attempt)}, false
	}
	if req.Attempt > rv.attempt {
		rv.attempt = req.Attempt
		rv.rebuilding, rv.sum = false, nil // a new attempt restarts any base transfer
	}
	return response{}, true
}

func (rv *replicaVol) report() response {
	st := rv.vol.Status()
	return response{Head: st.Head, Durable: st.Durable, Checkpoint: st.Checkpoint, Epoch: st.Epoch, Untrusted: st.Untrusted}
}

// lastEpoch is the epoch of the replica's record at durable from its term
// history (known, also when the flusher let the record go), else the
// epoch the volume was assigned, which is only an upper bound.
func (rv *replicaVol) lastEpoch(durable uint64) (epoch uint64, known bool) {
	if durable == 0 {
		return rv.vol.Status().Epoch, true
	}
	if e, ok := rv.vol.TermAt(durable); ok {
		return e, true
	}
	return rv.vol.Status().Epoch, false
}

// terms is the replica's term history up to durable (the records beyond
// it are not durable and are not reported).
func (rv *replicaVol) terms(durable uint64) []blockvol.Term {
	ts := rv.vol.Terms()
	n := 0
	for n < len(ts) && ts[n].First <= durable {
		n++
	}
	return ts[:n]
}

// apply appends req.Recs; with B = 1 (the last request of a pipelined
// batch) it also fsyncs before answering, so the answer's durable LSN
// covers them.
func (rv *replicaVol) apply(req *request) error {
	if n, err := rv.vol.ApplyReplicatedBatch(req.Recs); err != nil {
		// Make what was applied durable anyway, so the answer's durable
		// LSN counts it.
		if ferr := rv.vol.Flush(); ferr != nil {
			return fmt.Errorf("flush after %d of %d records: %w", n, len(req.Recs), ferr)
		}
		return fmt.Errorf("after %d of %d records: %w", n, len(req.Recs), err)
	}
	if req.B == 0 {
		return nil
	}
	return rv.vol.Flush()
}

// restore unfences the volume as the replica of epoch again after an
// operation that needed it fenced.
func (rv *replicaVol) restore(epoch uint64, lease time.Time) error {
	if err := rv.vol.Unfence(epoch, blockvol.RoleReplica, lease); err != nil {
		return fmt.Errorf("unfence as replica of epoch %d: %w", epoch, err)
	}
	return nil
}

func (rv *replicaVol) truncate(to uint64) error {
	st := rv.vol.Status()
	if st.Checkpoint > to {
		return fmt.Errorf("checkpoint %d beyond %d: %w", st.Checkpoint, to, executor.ErrTruncationUnsafe)
	}
	if st.Head <= to {
		return nil // nothing beyond to
	}
	rv.vol.Fence()
	err := rv.vol.TruncateWAL(to)
	if !st.Fenced && st.Role == blockvol.RoleReplica {
		if uerr := rv.restore(st.Epoch, st.LeaseUntil); err == nil {
			err = uerr
		}
	}
	if err != nil {
		return fmt.Errorf("truncate WAL to %d: %w", to, err)
	}
	return nil
}

func (rv *replicaVol) begin(req *request) error {
	st := rv.vol.Status()
	rv.vol.Fence()
	if err := rv.vol.BeginRebuild(); err != nil {
		return err
	}
	rv.rebuilding, rv.lease, rv.sum, rv.next = true, st.LeaseUntil, nil, 0
	return nil
}

// chunk checks that a base chunk of n bytes at req.A comes next.
func (rv *replicaVol) chunk(req *request, n uint64) error {
	if !rv.rebuilding {
		return errors.New("no rebuild in progress (begin it first)")
	}
	if req.A == 0 {
		// The manifest travels with the first chunk.
		if req.C != uint64(rv.vol.Size()) {
			return fmt.Errorf("base of %d bytes for a %d byte volume: %w", req.C, rv.vol.Size(), executor.ErrBaseMismatch)
		}
		rv.baseLSN, rv.size, rv.next, rv.sum = req.B, req.C, 0, newBaseDigest(req.B, req.C)
		rv.wbFrom, rv.wbData, rv.started = 0, 0, rv.started[:0]
	}
	if rv.sum == nil || req.B != rv.baseLSN || req.C != rv.size {
		return fmt.Errorf("chunk of base %d/%d bytes without its manifest", req.B, req.C)
	}
	if req.A != rv.next {
		return fmt.Errorf("chunk at %d, expected %d", req.A, rv.next)
	}
	if n == 0 {
		return fmt.Errorf("empty chunk at %d", req.A)
	}
	if n > rv.size-rv.next {
		return fmt.Errorf("chunk of %d bytes at %d overruns the %d byte base", n, req.A, rv.size)
	}
	return nil
}

// base writes a base chunk and counts it in the base's digest (kind,
// offset, length and its frame's CRC32C, checked when it was read): the
// digest is over exactly the requests applied, in order.
func (rv *replicaVol) base(req *request, crc uint32) error {
	if err := rv.chunk(req, uint64(len(req.Data))); err != nil {
		return err
	}
	if err := rv.vol.WriteBase(req.Data, int64(req.A)); err != nil {
		rv.sum = nil // the transfer is lost
		return err
	}
	rv.sum.add(opBase, req.A, uint64(len(req.Data)), crc)
	rv.next += uint64(len(req.Data))
	rv.wbData += uint64(len(req.Data))
	if err := rv.writeBehindLocked(); err != nil {
		rv.sum = nil // the volume failed: the transfer is lost
		return err
	}
	return nil
}

// writeBehindLocked keeps the base written but not yet on the disk small
// (a few windows): once a window of data was written (zero ranges, holes,
// count for nothing) it starts the range's write-back, and once more than
// writeBehindLag windows were started it waits for the oldest and drops
// it from the page cache. The image then
// streams through a few windows of memory: the page cache is not filled
// with a volume nobody reads from there (on a VM whose host takes back
// freed guest memory, filling fresh pages is most of a rebuild's CPU),
// the disk writes overlap the transfer, and InstallBase's fsync, which
// alone makes the base durable, has little left to write. Neither call
// makes anything durable; an error from one fails the volume.
func (rv *replicaVol) writeBehindLocked() error {
	if rv.window == 0 || rv.wbData < rv.window {
		return nil
	}
	w := baseSpan{rv.wbFrom, rv.next - rv.wbFrom}
	if err := rv.vol.StartBaseWriteback(int64(w.off), int64(w.n)); err != nil {
		return err
	}
	rv.wbFrom, rv.wbData = rv.next, 0
	rv.started = append(rv.started, w)
	if len(rv.started) <= writeBehindLag {
		return nil
	}
	old := rv.started[0]
	rv.started = append(rv.started[:0], rv.started[1:]...)
	return rv.vol.DropBase(int64(old.off), int64(old.n))
}

// dropRestLocked writes back and drops from the page cache the part of
// the base writeBehindLocked has not dropped yet (the windows in flight
// and the data after them), before InstallBase: its fsync would wait for
// that write-back anyway, and the replay and every later write then find
// none of the base's large folios (a 1 MiB write caches its range in
// 1 MiB folios, which a 4 KiB write dirties whole) but make their own
// small ones. Like writeBehindLocked, it makes nothing durable.
func (rv *replicaVol) dropRestLocked() error {
	if rv.window == 0 {
		return nil
	}
	rest := baseSpan{rv.wbFrom, rv.next - rv.wbFrom}
	if rest.n > 0 {
		if err := rv.vol.StartBaseWriteback(int64(rest.off), int64(rest.n)); err != nil {
			return err
		}
	}
	for _, w := range append(rv.started, rest) {
		if w.n == 0 {
			continue
		}
		if err := rv.vol.DropBase(int64(w.off), int64(w.n)); err != nil {
			return err
		}
	}
	rv.wbFrom, rv.wbData, rv.started = rv.next, 0, rv.started[:0]
	return nil
}

// zero writes a zero range of the base (req.D bytes at req.A): holes in
// the extent, and one entry in the digest like a chunk's.
func (rv *replicaVol) zero(req *request, crc uint32) error {
	if err := rv.chunk(req, req.D); err != nil {
		return err
	}
	if bs := uint64(rv.vol.BlockSize()); req.A%bs != 0 || req.D%bs != 0 {
		return fmt.Errorf("zero range %d@%d is not in whole %d byte blocks", req.D, req.A, bs)
	}
	if err := rv.vol.ZeroBase(int64(req.A), int64(req.D)); err != nil {
		rv.sum = nil // the transfer is lost
		return err
	}
	rv.sum.add(opZero, req.A, req.D, crc)
	rv.next += req.D
	return nil
}

func (rv *replicaVol) verify(req *request) error {
	if !rv.rebuilding || rv.sum == nil {
		return errors.New("no base transfer in progress")
	}
	if req.A != rv.baseLSN || req.C != rv.size || rv.next != rv.size {
		return fmt.Errorf("manifest base %d size %d, received base %d with %d of %d bytes: %w",
			req.A, req.C, rv.baseLSN, rv.next, rv.size, executor.ErrBaseMismatch)
	}
	if got := rv.sum.sum(); got != req.Sum {
		return fmt.Errorf("base %d: digest of the requests received %x, of those sent %x: %w", rv.baseLSN, got, req.Sum, executor.ErrBaseMismatch)
	}
	// The primary's term history up to the base comes with the manifest
	// (absent from a primary that does not send it: then unknown).
	var terms []blockvol.Term
	if len(req.Data) > 0 {
		var err error
		if terms, err = decodeTerms(req.Data); err != nil {
			return fmt.Errorf("base %d: %w", rv.baseLSN, err)
		}
	}
	if err := rv.dropRestLocked(); err != nil {
		return err
	}
	if err := rv.vol.InstallBaseTerms(rv.baseLSN, terms); err != nil {
		return err
	}
	rv.rebuilding, rv.sum = false, nil
	// Replay goes through ApplyReplicated: the replica role again.
	return rv.restore(req.Epoch, rv.lease)
}

func (rv *replicaVol) commit(achieved uint64) error {
	st := rv.vol.Status()
	if !st.Untrusted {
		return errors.New("commit without a rebuild in progress")
	}
	if rv.rebuilding {
		return errors.New("commit before the base was verified")
	}
	// The replay was applied without fsyncs (the replica is untrusted):
	// make it durable before anything is trusted.
	if err := rv.vol.Flush(); err != nil {
		return fmt.Errorf("flush the replay: %w", err)
	}
	st = rv.vol.Status()
	if st.Durable < achieved {
		return fmt.Errorf("commit at %d but durable is %d", achieved, st.Durable)
	}
	return rv.vol.FinishRebuild()
}

// errorFor maps an answer code to the error the Peer returns.
func errorFor(r response) error {
	switch r.Code {
	case codeOK:
		return nil
	case codeStaleEpoch:
		return fmt.Errorf("replica: %s: %w", r.Msg, replication.ErrStaleEpoch)
	case codeEpochAhead:
		return fmt.Errorf("replica: %s: %w", r.Msg, replication.ErrEpochAhead)
	case codeStaleAttempt:
		return fmt.Errorf("replica: %s: %w", r.Msg, errStaleAttempt)
	case codeUnknownVolume:
		return fmt.Errorf("replica: %s: %w", r.Msg, replication.ErrUnknownVolume)
	case codeTruncationUnsafe:
		return fmt.Errorf("replica: %s: %w", r.Msg, executor.ErrTruncationUnsafe)
	case codeBaseMismatch:
		return fmt.Errorf("replica: %s: %w", r.Msg, executor.ErrBaseMismatch)
	}
	return fmt.Errorf("replica: %s: %w", r.Msg, replication.ErrRemote)
}

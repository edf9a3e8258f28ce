package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang/glog"
	"github.com/weedblock/weedblock/blockdev"
)

const (
	connBufferSize = 128 << 10
	// maxErrorMessage bounds the text carried by a structured error chunk.
	maxErrorMessage = 256
)

// conn is one client connection: negotiation, then the transmission
// pipeline. The goroutine running serve owns it; shutdown may be called from
// anywhere.
type conn struct {
	srv *Server
	nc  net.Conn
	br  *bufio.Reader

	// Set during negotiation, read-only afterwards. exp is written under
	// srv.mu (see Server.bind).
	exp            *export
	structured     bool
	noZeroes       bool
	baseAllocation bool   // base:allocation selected (for metaExport)
	metaExport     string // export named in NBD_OPT_SET_META_CONTEXT
	scratch        []byte

	wmu     sync.Mutex    // serializes replies on bw
	bw      *bufio.Writer // guarded by wmu once transmission starts
	werr    error         // first write error; guarded by wmu
	pending atomic.Int32  // replies waiting for wmu; the last one flushes

	closeOnce sync.Once
	done      chan struct{} // closed when serve has returned (no device call in flight)
}

func newConn(s *Server, nc net.Conn) *conn {
	return &conn{
		srv:  s,
		nc:   nc,
		br:   bufio.NewReaderSize(nc, connBufferSize),
		bw:   bufio.NewWriterSize(nc, connBufferSize),
		done: make(chan struct{}),
	}
}

// shutdown closes the socket, which ends the reader and fails pending writes.
func (c *conn) shutdown() {
	c.closeOnce.Do(func() { c.nc.Close() })
}

// serve runs the connection to its end.
func (c *conn) serve() {
	defer c.shutdown()
	remote := c.nc.RemoteAddr()
	if err := c.nc.SetDeadline(time.Now().Add(c.srv.opts.HandshakeTimeout)); err != nil {
		glog.Warningf("nbd: %s: set handshake deadline: %v", remote, err)
		return
	}
	e, err := c.negotiate()
	if err != nil {
		if errors.Is(err, errAborted) {
			glog.V(1).Infof("nbd: %s: %v", remote, err)
		} else {
			glog.Warningf("nbd: %s: negotiation: %v", remote, err)
		}
		return
	}
	if err := c.nc.SetDeadline(time.Time{}); err != nil {
		glog.Warningf("nbd: %s: clear deadline: %v", remote, err)
		return
	}
	glog.V(1).Infof("nbd: %s: serving export %q (structured replies: %v)", remote, e.name, c.structured)
	if err := c.transmit(e.dev); err != nil {
		if errors.Is(err, net.ErrClosed) {
			// Closed by this side: Server.Close or RemoveExport.
			glog.V(1).Infof("nbd: %s: export %q: connection closed", remote, e.name)
		} else {
			glog.Warningf("nbd: %s: export %q: %v", remote, e.name, err)
		}
		return
	}
	glog.V(1).Infof("nbd: %s: export %q: client disconnected", remote, e.name)
}

// request is one decoded command, from the read of its header to its reply.
type request struct {
	requestHeader
	buf  *[]byte // payload (WRITE) or data to send (READ); nil otherwise
	held int64   // bytes of the in-flight budget this request holds
	hdr  [32]byte
}

// pipeline is the transmission state a connection's workers share.
type pipeline struct {
	budget *byteBudget // payload bytes in flight on this connection

	rmu  sync.Mutex // held by the worker reading the next request
	stop bool       // no more requests will be read; guarded by rmu
	err  error      // why reading stopped (nil: DISC or clean hang-up); guarded by rmu
	hb   [requestHeaderLen]byte

	running atomic.Int32 // requests handed to workers and not yet answered
	handOff int          // quick requests to hand off before running one inline again; guarded by rmu
	held    bool         // replies written but not flushed by inline requests; guarded by rmu
}

// errEnd: the client ended the session (NBD_CMD_DISC, or hung up between
// requests).
var errEnd = errors.New("nbd: end of session")

// transmit runs the transmission phase with a fixed set of workers that take
// turns reading the next request (under rmu), then run it against the
// device and reply in completion order. Reading in the worker that then runs
// the request saves a goroutine hand-off per request. transmit returns nil
// on NBD_CMD_DISC or a clean hang-up between requests, once every accepted
// request was answered.
func (c *conn) transmit(dev blockdev.Device) error {
	p := &pipeline{budget: newByteBudget(c.srv.opts.MaxInFlightBytes)}
	var workers sync.WaitGroup
	for range c.srv.opts.Workers {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for {
				r := c.next(dev, p)
				if r == nil {
					return
				}
				c.execute(dev, r, false)
				c.release(r, p.budget)
				p.running.Add(-1)
			}
		}()
	}
	workers.Wait()
	return p.err
}

// next reads requests until one must be run by the caller, and returns it;
// nil once the session is over. Quick requests (see runsInline) it runs
// itself, still holding rmu: handing the socket to another worker costs a
// goroutine wake-up and a failed read, several times what a write-back
// WRITE costs, and at queue depth 1 that hand-off is pure overhead.
func (c *conn) next(dev blockdev.Device, p *pipeline) *request {
	p.rmu.Lock()
	defer p.rmu.Unlock()
	for !p.stop {
		if p.held && !c.nextBuffered() {
			// Replies held back by inline requests go out before the
			// reader may block on the socket.
			p.held = false
			c.flushReplies()
		}
		r, err := c.readRequest(p)
		if err != nil {
			if p.held {
				p.held = false
				c.flushReplies()
			}
			p.stop = true
			if !errors.Is(err, errEnd) {
				p.err = err
			}
			return nil
		}
		if r == nil {
			continue
		}
		if !c.runsInline(p, r) {
			p.running.Add(1)
			return r
		}
		quick := r.typ != cmdFlush && (r.typ == cmdRead || r.flags&cmdFlagFUA == 0)
		start := time.Now()
		// While the next request is already here, its reply can share
		// this one's write.
		hold := c.nextBuffered()
		c.execute(dev, r, hold)
		p.held = p.held || hold
		c.release(r, p.budget) // r is recycled: no use after this
		if quick && time.Since(start) > slowInline {
			// This device waits for something (a full log, a cache
			// miss): run the next quick requests concurrently.
			p.handOff = handOffAfterSlow
		}
	}
	return nil
}

// slowInline: a quick request (small read or write-back write) that took
// longer than this makes the reader hand the next handOffAfterSlow quick
// ones to workers. inlineMaxData bounds the payload of a quick request.
const (
	slowInline       = 250 * time.Microsecond
	handOffAfterSlow = 64
	inlineMaxData    = 64 << 10
)

// runsInline says whether the reader runs r itself. Quick requests do:
// write-back writes, trims and zeroing usually only append to the device's
// log or page cache, and small reads usually come from the page cache,
// unless the last one was slow. A FLUSH (or FUA request) waits for the
// disk, so it runs inline only when it is all the client is waiting for
// (idle); a client that waits for the flush before sending more (queue
// depth 1, a database commit) then pays no hand-off, and one that sends
// more meanwhile waits at most that flush.
func (c *conn) runsInline(p *pipeline, r *request) bool {
	switch r.typ {
	case cmdRead, cmdWrite, cmdTrim, cmdWriteZeroes:
		// A big payload costs enough to copy and checksum that running
		// it beside the next requests pays for the hand-off.
		if (r.typ == cmdRead || r.typ == cmdWrite) && r.length > inlineMaxData {
			return false
		}
		if r.typ == cmdRead || r.flags&cmdFlagFUA == 0 {
			if p.handOff > 0 {
				p.handOff--
				return false
			}
			return true
		}
		return c.idle(p) // FUA: waits for the disk, like a FLUSH
	case cmdFlush:
		return c.idle(p)
	}
	return false
}

// idle says whether nothing else is running on the connection and no
// further request has arrived: the client waits for this one alone.
func (c *conn) idle(p *pipeline) bool {
	return p.running.Load() == 0 && c.br.Buffered() == 0
}

func (c *conn) readRequest(p *pipeline) (*request, error) {
	opts := &c.srv.opts
	if _, err := io.ReadFull(c.br, p.hb[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errEnd
		}
		return nil, fmt.Errorf("read request: %w", err)
	}
	h, err := parseRequestHeader(p.hb[:])
	if err != nil {
		return nil, err
	}
	switch h.typ {
	case cmdDisc:
		return nil, errEnd
	case cmdWrite:
		if int64(h.length) > int64(opts.MaxPayload) {
			c.replyEarly(h, errnoInval, "write larger than the maximum payload")
			// Skip the payload to stay in sync if that is cheap enough;
			// otherwise the client is misbehaving: hang up.
			if int64(h.length) > 2*int64(opts.MaxPayload) {
				return nil, fmt.Errorf("write of %d bytes above maximum payload %d", h.length, opts.MaxPayload)
			}
			if _, err := io.CopyN(io.Discard, c.br, int64(h.length)); err != nil {
				return nil, fmt.Errorf("skip oversized write payload: %w", err)
			}
			return nil, nil
		}
		r := c.newRequest(h)
		r.held = int64(h.length)
		c.acquire(p.budget, r.held)
		r.buf = c.srv.bufs.get(int(h.length))
		if _, err := io.ReadFull(c.br, *r.buf); err != nil {
			c.release(r, p.budget)
			return nil, fmt.Errorf("read write payload of %d bytes: %w", h.length, err)
		}
		return r, nil
	case cmdRead:
		if int64(h.length) > int64(opts.MaxPayload) {
			c.replyEarly(h, errnoInval, "read larger than the maximum payload")
			return nil, nil
		}
		r := c.newRequest(h)
		r.held = int64(h.length)
		c.acquire(p.budget, r.held)
		return r, nil
	default:
		return c.newRequest(h), nil
	}
}

func (c *conn) newRequest(h requestHeader) *request {
	r, _ := c.srv.reqs.Get().(*request)
	if r == nil {
		r = new(request)
	}
	r.requestHeader = h
	return r
}

// acquire takes n bytes from the connection's budget, then from the
// server-wide one. Holders never wait for anything but the device and the
// client, so the waits end.
func (c *conn) acquire(budget *byteBudget, n int64) {
	budget.acquire(n)
	c.srv.budget.acquire(n)
}

func (c *conn) release(r *request, budget *byteBudget) {
	if r.buf != nil {
		c.srv.bufs.put(r.buf)
		r.buf = nil
	}
	c.srv.budget.release(r.held)
	budget.release(r.held)
	r.held = 0
	c.srv.reqs.Put(r)
}

// replyEarly answers a request the reader rejects before dispatching it.
func (c *conn) replyEarly(h requestHeader, errno uint32, msg string) {
	r := c.newRequest(h)
	c.reply(r, errno, msg, false)
	c.srv.reqs.Put(r)
}

// execute performs r on dev and sends its reply.
func (c *conn) execute(dev blockdev.Device, r *request, hold bool) {
	errno, err := c.perform(dev, r)
	if errno == 0 {
		c.reply(r, 0, "", hold)
		return
	}
	if errno == errnoIO || errno == errnoShutdown {
		glog.Errorf("nbd: %s: command %d %d@%d: %v", c.nc.RemoteAddr(), r.typ, r.length, r.offset, err)
	} else {
		glog.V(2).Infof("nbd: %s: command %d %d@%d: %v", c.nc.RemoteAddr(), r.typ, r.length, r.offset, err)
	}
	c.reply(r, errno, err.Error(), hold)
}

var (
	errBadFlags   = errors.New("nbd: command flags not valid for this command")
	errBadCommand = errors.New("nbd: command not supported")
	errNotFast    = errors.New("nbd: zeroing without holes is not fast")
)

// perform runs one command against the device and returns the NBD errno
// (0 on success) and the error behind it.
func (c *conn) perform(dev blockdev.Device, r *request) (uint32, error) {
	off := int64(-1) // CheckRange rejects it
	if r.offset <= math.MaxInt64 {
		off = int64(r.offset)
	}
	n := int64(r.length)
	fua := r.flags&cmdFlagFUA != 0
	check := func(write bool) (uint32, error) {
		if err := blockdev.CheckRange(off, n, dev.Size(), dev.BlockSize()); err != nil {
			return errnoFor(err, write), fmt.Errorf("%d@%d: %w", r.length, r.offset, err)
		}
		return 0, nil
	}
	var err error
	switch r.typ {
	case cmdRead:
		if r.flags&^(cmdFlagFUA|cmdFlagDF) != 0 {
			return errnoInval, errBadFlags
		}
		if e, err := check(false); e != 0 {
			return e, err
		}
		r.buf = c.srv.bufs.get(int(n))
		err = dev.ReadAt(*r.buf, off)
		return errnoFor(err, false), err
	case cmdWrite:
		if r.flags&^cmdFlagFUA != 0 {
			return errnoInval, errBadFlags
		}
		if e, err := check(true); e != 0 {
			return e, err
		}
		err = dev.WriteAt(*r.buf, off, fua)
		return errnoFor(err, true), err
	case cmdFlush:
		if r.flags&^cmdFlagFUA != 0 {
			return errnoInval, errBadFlags
		}
		err = dev.Flush()
		return errnoFor(err, true), err
	case cmdTrim:
		if r.flags&^cmdFlagFUA != 0 {
			return errnoInval, errBadFlags
		}
		if e, err := check(true); e != 0 {
			return e, err
		}
		err = dev.Trim(off, n)
		if err == nil && fua {
			err = dev.Flush()
		}
		return errnoFor(err, true), err
	case cmdWriteZeroes:
		if r.flags&^(cmdFlagFUA|cmdFlagNoHole|cmdFlagFastZero) != 0 {
			return errnoInval, errBadFlags
		}
		if e, err := check(true); e != 0 {
			return e, err
		}
		if r.flags&cmdFlagNoHole != 0 {
			if r.flags&cmdFlagFastZero != 0 {
				return errnoNotSup, errNotFast
			}
			err = dev.WriteZeroes(off, n, fua)
			return errnoFor(err, true), err
		}
		err = dev.Trim(off, n)
		if err == nil && fua {
			err = dev.Flush()
		}
		return errnoFor(err, true), err
	case cmdBlockStatus:
		if !c.baseAllocation {
			return errnoInval, fmt.Errorf("%w: block status without a negotiated meta context", errBadCommand)
		}
		if r.flags&^cmdFlagReqOne != 0 {
			return errnoInval, errBadFlags
		}
		if n == 0 {
			return errnoInval, errors.New("nbd: zero-length block status")
		}
		return check(false)
	default:
		return errnoInval, fmt.Errorf("%w: type %d", errBadCommand, r.typ)
	}
}

// reply sends the reply to r: errno 0 with the read data for a READ, or an
// error. Replies from all workers are serialized on the writer; the last
// writer in line flushes, so a burst of completions costs one syscall.
func (c *conn) reply(r *request, errno uint32, msg string, hold bool) {
	c.pending.Add(1)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	err := c.writeReply(r, errno, msg)
	if c.pending.Add(-1) == 0 && err == nil && !hold {
		err = c.bw.Flush()
		if err != nil {
			err = fmt.Errorf("flush replies: %w", err)
		}
	}
	if err != nil && c.werr == nil {
		c.werr = err
		glog.V(1).Infof("nbd: %s: %v", c.nc.RemoteAddr(), err)
		c.shutdown()
	}
}

// flushReplies sends the replies buffered so far.
func (c *conn) flushReplies() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return
	}
	if err := c.bw.Flush(); err != nil {
		c.werr = fmt.Errorf("flush replies: %w", err)
		glog.V(1).Infof("nbd: %s: %v", c.nc.RemoteAddr(), c.werr)
		c.shutdown()
	}
}

// nextBuffered says whether the next request, payload included, has
// arrived already, so reading it will not block. Only the reader calls it.
func (c *conn) nextBuffered() bool {
	n := c.br.Buffered()
	if n < requestHeaderLen {
		return false
	}
	b, err := c.br.Peek(requestHeaderLen)
	if err != nil {
		return false
	}
	if binary.BigEndian.Uint16(b[6:8]) != cmdWrite {
		return true
	}
	return int64(n) >= requestHeaderLen+int64(binary.BigEndian.Uint32(b[24:28]))
}

func (c *conn) writeReply(r *request, errno uint32, msg string) error {
	if c.werr != nil {
		return c.werr
	}
	var data []byte
	if r.typ == cmdRead && errno == 0 && r.buf != nil {
		data = *r.buf
	}
	var err error
	if c.structured && (r.typ == cmdRead || r.typ == cmdBlockStatus) {
		if errno == 0 && r.typ == cmdBlockStatus {
			// One extent, the whole range: allocated data.
			putStructuredHeader(r.hdr[:], replyFlagDone, replyTypeBlockStat, r.cookie, 12)
			binary.BigEndian.PutUint32(r.hdr[20:24], metaBaseAllocationID)
			binary.BigEndian.PutUint32(r.hdr[24:28], r.length)
			binary.BigEndian.PutUint32(r.hdr[28:32], 0)
			_, err = c.bw.Write(r.hdr[:32])
		} else if errno == 0 && len(data) == 0 {
			// A data chunk must carry data; a zero-length read gets an
			// empty final chunk.
			putStructuredHeader(r.hdr[:], replyFlagDone, replyTypeNone, r.cookie, 0)
			_, err = c.bw.Write(r.hdr[:structuredHeaderLen])
		} else if errno == 0 {
			putStructuredHeader(r.hdr[:], replyFlagDone, replyTypeOffsetData, r.cookie, uint32(8+len(data)))
			binary.BigEndian.PutUint64(r.hdr[20:28], r.offset)
			_, err = c.bw.Write(r.hdr[:28])
		} else {
			if len(msg) > maxErrorMessage {
				msg = msg[:maxErrorMessage]
			}
			putStructuredHeader(r.hdr[:], replyFlagDone, replyTypeError, r.cookie, uint32(6+len(msg)))
			binary.BigEndian.PutUint32(r.hdr[20:24], errno)
			binary.BigEndian.PutUint16(r.hdr[24:26], uint16(len(msg)))
			_, err = c.bw.Write(r.hdr[:26])
			if err == nil {
				_, err = c.bw.WriteString(msg)
			}
		}
	} else {
		putSimpleReply(r.hdr[:], errno, r.cookie)
		_, err = c.bw.Write(r.hdr[:simpleReplyLen])
	}
	if err == nil && len(data) > 0 {
		_, err = c.bw.Write(data)
	}
	if err != nil {
		return fmt.Errorf("write reply: %w", err)
	}
	return nil
}

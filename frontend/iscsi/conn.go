package iscsi

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang/glog"
)

const (
	readBufSize  = 256 * 1024
	writeBufSize = 256 * 1024
	outQueueLen  = 256
)

// conn is one TCP connection: a reader (the goroutine running serve), a
// writer goroutine that sends the PDUs queued on out (by the reader and the
// keepalive), and one goroutine per executing command, which writes its own
// Data-In and status (sendNow) instead of handing them to the writer. All
// socket writes, StatSN and the write batch are under wmu.
type conn struct {
	srv *Server
	nc  net.Conn
	rd  *pduReader
	wr  *pduWriter

	// Set by login.
	cid        uint16
	sess       *session
	maxSendDSL uint32
	statSN     uint32 // login path, then under wmu

	out       chan *outPDU
	closing   chan struct{}
	closeOnce sync.Once
	stopped   chan struct{}
	writerWG  sync.WaitGroup
	cmdWG     sync.WaitGroup

	mu    sync.Mutex
	tasks map[uint32]*task

	// wmu serializes writes to the socket (wr, statSN, wfailed, wdones).
	// wpending counts writers holding or waiting for wmu: the last one
	// out flushes the batch, so a burst of completions costs one writev.
	wmu      sync.Mutex
	wpending atomic.Int32
	wfailed  bool     // a write failed: the connection is closing, drop PDUs
	wdones   []func() // run once the batch holding their PDUs is flushed

	// Keepalive state (see keepalive).
	lastRecv atomic.Int64  // unix nanoseconds of the last PDU read
	pingTTT  atomic.Uint32 // TTT of the outstanding target NOP-In, 0 if none

	// armedAt is when the write deadline was last set (under wmu).
	armedAt time.Time

	// Reader-owned state.
	nextTTT uint32
	text    textExchange
	// unflushed: the reader added responses of commands it ran itself to
	// the write batch without flushing it (more input was buffered).
	unflushed bool
	// handOff counts the next quick commands the reader hands to
	// goroutines anyway, after one it ran was slow.
	handOff int

	pduPool sync.Pool
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{
		srv:     s,
		nc:      nc,
		rd:      newPDUReader(nc, readBufSize),
		wr:      newPDUWriter(nc, writeBufSize),
		out:     make(chan *outPDU, outQueueLen),
		closing: make(chan struct{}),
		stopped: make(chan struct{}),
		tasks:   make(map[uint32]*task),
		nextTTT: 1,
	}
	c.pduPool.New = func() any { return new(outPDU) }
	return c
}

// close tears the connection down at once (unblocks reader and writer).
func (c *conn) close() {
	c.closeOnce.Do(func() {
		close(c.closing)
		c.nc.Close()
	})
}

// wait returns once serve has returned.
func (c *conn) wait() { <-c.stopped }

func (c *conn) serve() {
	defer close(c.stopped)
	sess, err := c.runLogin()
	if err != nil {
		if !errors.Is(err, io.EOF) {
			glog.V(1).Infof("iscsi: %s: %v", c.nc.RemoteAddr(), err)
		}
		c.close()
		return
	}
	select {
	case <-c.closing:
		// Server closed while the login finished.
		sess.removeConn(c)
		return
	default:
	}
	c.wr.headerDigest = c.rd.headerDigest
	c.wr.dataDigest = c.rd.dataDigest
	c.writerWG.Add(1)
	go c.writer()
	c.lastRecv.Store(time.Now().UnixNano())
	if iv := c.srv.cfg.NopInInterval; iv > 0 && !sess.discovery {
		c.writerWG.Add(1)
		go c.keepalive(iv, c.srv.cfg.NopInTimeout)
	}
	graceful, err := c.fullFeature()
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		glog.V(1).Infof("iscsi: %s tsih=%d: %v", c.nc.RemoteAddr(), sess.tsih, err)
	}
	c.abortAllTasks()
	c.cmdWG.Wait()
	if graceful {
		c.closeOnce.Do(func() { close(c.closing) }) // writer drains, flushes, exits
		c.writerWG.Wait()
		if err != nil {
			c.linger()
		}
		c.nc.Close()
	} else {
		c.close()
		c.writerWG.Wait()
	}
	sess.removeConn(c)
}

// lingerTime bounds how long a connection closed for a protocol error keeps
// reading (and discarding) what the initiator still sends.
const lingerTime = 2 * time.Second

// linger half-closes the connection and discards input until the
// initiator closes its side or lingerTime passes. An initiator still
// writing then sees EOF on its reads instead of EPIPE (and SIGPIPE) on its
// writes. Server.Close interrupts it by closing the socket.
func (c *conn) linger() {
	tc, ok := c.nc.(interface{ CloseWrite() error })
	if !ok || tc.CloseWrite() != nil {
		return
	}
	c.nc.SetReadDeadline(time.Now().Add(lingerTime))
	buf := make([]byte, 4096)
	for {
		if _, err := c.nc.Read(buf); err != nil {
			return
		}
	}
}

// newPDU returns a zeroed outPDU from the pool.
func (c *conn) newPDU() *outPDU {
	p := c.pduPool.Get().(*outPDU)
	*p = outPDU{}
	return p
}

// send queues p for the writer; it is dropped if the connection closes.
func (c *conn) send(p *outPDU) {
	select {
	case c.out <- p:
	case <-c.closing:
	}
}

// sendNow writes the PDUs of one response from the calling goroutine, in
// order and without another PDU in between; they are dropped if the
// connection is closing.
func (c *conn) sendNow(ps ...*outPDU) { c.writeResponse(false, ps) }

// writeResponse writes ps to the batch under wmu; the last writer in line
// flushes, unless batch says a response of the reader's may follow at once.
func (c *conn) writeResponse(batch bool, ps []*outPDU) {
	select {
	case <-c.closing:
		return
	default:
	}
	c.wpending.Add(1)
	c.wmu.Lock()
	for _, p := range ps {
		c.writeLocked(p)
	}
	if c.wpending.Add(-1) == 0 {
		if batch && c.rd.nextBuffered() {
			c.unflushed = true
		} else {
			c.flushLocked()
		}
	}
	c.wmu.Unlock()
}

// sendBatched adds the PDUs of one response of a command the reader ran
// itself to the write batch, in order. It flushes only when no other
// writer is in line and the next PDU is not already buffered by the
// reader: the reader then runs that one first and one writev carries
// both responses. fullFeature flushes before it waits for input.
func (c *conn) sendBatched(ps ...*outPDU) { c.writeResponse(true, ps) }

// flushBatched sends what sendBatched left in the batch. Reader only.
func (c *conn) flushBatched() {
	c.unflushed = false
	c.wpending.Add(1)
	c.wmu.Lock()
	if c.wpending.Add(-1) == 0 {
		c.flushLocked()
	}
	c.wmu.Unlock()
}

// writeLocked stamps p with StatSN, ExpCmdSN and MaxCmdSN and adds it to
// the batch. The caller holds wmu. The first PDU of a batch makes sure the
// write deadline is at least 15/16 of WriteTimeout away (re-arming it
// costs a timer update, so not every batch does): the batch may be sent
// from inside wr.write when it grows large, not only by flushLocked.
func (c *conn) writeLocked(p *outPDU) {
	if !c.wfailed {
		if c.wr.pending == 0 {
			if now := time.Now(); now.Sub(c.armedAt) > c.srv.cfg.WriteTimeout/16 {
				c.nc.SetWriteDeadline(now.Add(c.srv.cfg.WriteTimeout))
				c.armedAt = now
			}
		}
		exp, maxSN := c.sess.cmdSNs()
		h := &p.hdr
		h.putU32(24, c.statSN)
		if p.status {
			c.statSN++
		}
		h.putU32(28, exp)
		h.putU32(32, maxSN)
		if err := c.wr.write(h, p.data); err != nil {
			c.wfailed = true
			glog.V(2).Infof("iscsi: write to %s: %v", c.nc.RemoteAddr(), err)
			c.close()
		}
	}
	if p.done != nil {
		c.wdones = append(c.wdones, p.done)
	}
	*p = outPDU{}
	c.pduPool.Put(p)
}

// flushLocked sends the batch and runs the done hooks of its PDUs. The
// caller holds wmu.
func (c *conn) flushLocked() {
	if !c.wfailed {
		if err := c.wr.flush(); err != nil {
			c.wfailed = true
			glog.V(2).Infof("iscsi: write to %s: %v", c.nc.RemoteAddr(), err)
			c.close()
		}
	}
	for i, d := range c.wdones {
		d()
		c.wdones[i] = nil
	}
	c.wdones = c.wdones[:0]
}

// writer sends the PDUs queued on out until the connection closes; on a
// graceful close it first sends what is still queued.
func (c *conn) writer() {
	defer c.writerWG.Done()
	// drain writes p and whatever else is queued, then flushes unless
	// another writer is waiting for wmu (it flushes after its PDUs).
	drain := func(p *outPDU) {
		c.wpending.Add(1)
		c.wmu.Lock()
		c.writeLocked(p)
		for more := true; more; {
			select {
			case p := <-c.out:
				c.writeLocked(p)
			default:
				more = false
			}
		}
		if c.wpending.Add(-1) == 0 {
			c.flushLocked()
		}
		c.wmu.Unlock()
	}
	for {
		select {
		case p := <-c.out:
			drain(p)
		case <-c.closing:
			c.wmu.Lock()
			for {
				select {
				case p := <-c.out:
					c.writeLocked(p)
				default:
					c.flushLocked()
					c.wmu.Unlock()
					return
				}
			}
		}
	}
}

// fullFeature is the reader loop of the full-feature phase. It returns
// graceful=true after a logout whose response is queued.
func (c *conn) fullFeature() (graceful bool, err error) {
	for {
		if c.unflushed && !c.rd.nextBuffered() {
			c.flushBatched()
		}
		err := c.rd.readHeader()
		c.lastRecv.Store(time.Now().UnixNano())
		if err != nil {
			if errors.Is(err, ErrSegmentLimit) || errors.Is(err, ErrDigest) {
				reason := byte(rejectProtocolError)
				if errors.Is(err, ErrDigest) {
					reason = rejectDigestError
				}
				c.sendReject(&c.rd.hdr, reason)
				return true, err
			}
			return false, err
		}
		h := &c.rd.hdr
		var done bool
		switch h.opcode() {
		case opSCSICmd:
			err = c.handleSCSICmd(h)
		case opDataOut:
			err = c.handleDataOut(h)
		case opNopOut:
			err = c.handleNopOut(h)
		case opTaskMgmtReq:
			err = c.handleTaskMgmt(h)
		case opTextReq:
			err = c.handleText(h)
		case opLogoutReq:
			done, err = c.handleLogout(h)
		case opSNACKReq:
			if err = c.rd.discardData(); err == nil {
				c.sendReject(h, rejectSNACK)
			}
		case opLoginReq:
			// A login in the full-feature phase is a protocol error.
			if err = c.rd.discardData(); err == nil {
				c.sendReject(h, rejectProtocolError)
			}
		default:
			if err = c.rd.discardData(); err == nil {
				c.sendReject(h, rejectCmdNotSupported)
			}
		}
		if err != nil {
			var pe *protoError
			if errors.As(err, &pe) {
				c.sendReject(h, pe.reason)
				return true, err
			}
			return false, err
		}
		if done {
			return true, nil
		}
	}
}

// protoError is a protocol violation: the PDU is rejected and the
// connection closed (ErrorRecoveryLevel 0).
type protoError struct {
	reason byte
	msg    string
}

func (e *protoError) Error() string { return "iscsi protocol error: " + e.msg }
func (e *protoError) Unwrap() error { return ErrProtocol }

func protoErr(reason byte, format string, args ...any) error {
	return &protoError{reason: reason, msg: fmt.Sprintf(format, args...)}
}

// sendReject queues a Reject PDU carrying the offending header.
func (c *conn) sendReject(h *bhs, reason byte) {
	p := c.newPDU()
	p.hdr[0] = opReject
	p.hdr[1] = flagFinal
	p.hdr[2] = reason
	p.hdr.putU32(16, reservedTag)
	hdrCopy := make([]byte, bhsLen)
	copy(hdrCopy, h[:])
	p.data = hdrCopy
	p.status = true
	c.send(p)
}

// allocTTT returns a target transfer tag for R2Ts and text exchanges, in
// [1, 0x80000000); keepalive NOP-Ins use the upper half. Reader only.
func (c *conn) allocTTT() uint32 {
	t := c.nextTTT
	c.nextTTT++
	if c.nextTTT >= pingTTTBase {
		c.nextTTT = 1
	}
	return t
}

const pingTTTBase = 0x80000000

// keepalive sends a NOP-In ping when the connection has been idle for
// interval and closes the connection when the initiator does not answer
// within timeout. It stops when the connection closes.
func (c *conn) keepalive(interval, timeout time.Duration) {
	defer c.writerWG.Done()
	tick := time.NewTicker(max(interval/4, 10*time.Millisecond))
	defer tick.Stop()
	var seq uint32
	var sentAt time.Time
	for {
		select {
		case <-c.closing:
			return
		case now := <-tick.C:
			if c.pingTTT.Load() != 0 {
				if now.Sub(sentAt) > timeout {
					glog.V(1).Infof("iscsi: %s: no answer to NOP-In within %v, closing", c.nc.RemoteAddr(), timeout)
					c.close()
					return
				}
				continue
			}
			if now.Sub(time.Unix(0, c.lastRecv.Load())) < interval {
				continue
			}
			seq = (seq + 1) % (reservedTag - pingTTTBase)
			ttt := pingTTTBase + seq
			c.pingTTT.Store(ttt)
			sentAt = now
			p := c.newPDU()
			p.hdr[0] = opNopIn
			p.hdr[1] = flagFinal
			p.hdr.putU32(16, reservedTag)
			p.hdr.putU32(20, ttt)
			c.send(p)
		}
	}
}

// handleNopOut answers pings and accepts answers to our NOP-Ins.
func (c *conn) handleNopOut(h *bhs) error {
	itt := h.itt()
	data, err := c.rd.readDataScratch()
	if err != nil {
		return err
	}
	if itt == reservedTag {
		// An answer to a target NOP-In (or a bare CmdSN/ExpStatSN update).
		if !h.immediate() {
			return protoErr(rejectProtocolError, "NOP-Out with reserved ITT not immediate")
		}
		if ttt := h.u32(20); ttt != reservedTag {
			c.pingTTT.CompareAndSwap(ttt, 0)
		}
		return nil
	}
	if !c.sess.admit(h.u32(24), h.immediate()) {
		glog.V(2).Infof("iscsi: NOP-Out CmdSN %d outside window, dropped", h.u32(24))
		return nil
	}
	p := c.newPDU()
	p.hdr[0] = opNopIn
	p.hdr[1] = flagFinal
	copy(p.hdr[8:16], h[8:16])
	p.hdr.putU32(16, itt)
	p.hdr.putU32(20, reservedTag)
	if len(data) > 0 {
		n := min(len(data), int(c.maxSendDSL))
		p.data = append([]byte(nil), data[:n]...)
	}
	p.status = true
	if !h.immediate() {
		c.sess.release()
	}
	c.send(p)
	return nil
}

// handleLogout answers a Logout request after the connection's commands
// have finished.
func (c *conn) handleLogout(h *bhs) (bool, error) {
	if err := c.rd.discardData(); err != nil {
		return false, err
	}
	immediate := h.immediate()
	if !c.sess.admit(h.u32(24), immediate) {
		return false, nil
	}
	reason := h.flags() & 0x7f
	cid := h.u16(20)
	resp := byte(0)
	switch reason {
	case 0: // close the session
	case 1: // close the connection
		if cid != c.cid {
			resp = 1 // CID not found
		}
	case 2:
		resp = 2 // connection recovery not supported
	default:
		return false, protoErr(rejectInvalidPDUField, "logout reason %d", reason)
	}
	c.abortWaitingTasks()
	c.cmdWG.Wait()
	p := c.newPDU()
	p.hdr[0] = opLogoutRsp
	p.hdr[1] = flagFinal
	p.hdr[2] = resp
	p.hdr.putU32(16, h.itt())
	p.hdr.putU16(40, uint16(c.sess.params.defaultTime2Wait))
	p.hdr.putU16(42, uint16(c.sess.params.defaultTime2Retain))
	p.status = true
	if !immediate {
		c.sess.release()
	}
	c.send(p)
	if resp != 0 {
		return false, nil
	}
	if reason == 0 {
		// Closing the session closes its other connections too.
		for _, oc := range c.sess.connList() {
			if oc != c {
				oc.close()
			}
		}
	}
	return true, nil
}

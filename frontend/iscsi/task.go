package iscsi

import (
	"encoding/binary"
	"runtime/debug"
	"sync"
	"time"

	"github.com/golang/glog"

	"github.com/weedblock/weedblock/frontend/scsi"
)

// SCSI Command flags (byte 1).
const (
	cmdFlagRead  = 0x40
	cmdFlagWrite = 0x20
)

// Data-In / SCSI Response flags (byte 1).
const (
	flagAck          = 0x40
	flagResOverflow  = 0x04
	flagResUnderflow = 0x02
	flagStatus       = 0x01
)

// r2tState is one outstanding R2T.
type r2tState struct {
	ttt     uint32
	end     uint32 // offset + desired length
	nextOff uint32
	dataSN  uint32
}

// task is one SCSI command on a connection.
type task struct {
	c         *conn
	itt       uint32
	cmdSN     uint32
	lunRaw    [8]byte
	immediate bool
	cmd       scsi.Command
	cdb       [16]byte
	edtl      uint32

	// Data-out gathering (reader goroutine only, until execution).
	buf        []byte
	got        uint32
	unsolEnd   uint32
	unsolNext  uint32
	unsolSN    uint32
	nextR2TOff uint32
	r2tSN      uint32
	r2ts       []r2tState

	// Guarded by c.mu.
	executing bool
	aborted   bool
	finished  bool
	done      chan struct{}

	// slotFreed: respond gave the CmdSN window slot back already.
	slotFreed bool
}

// buffers recycles data-out buffers by power-of-two size class.
var bufClasses = func() (cl [12]sync.Pool) { return }()

const minBufShift = 12 // 4 KiB

func getBuf(n uint32) []byte {
	if n == 0 {
		return nil
	}
	for i := range bufClasses {
		size := uint32(1) << (minBufShift + i)
		if n <= size {
			if b, ok := bufClasses[i].Get().(*[]byte); ok {
				return (*b)[:n]
			}
			return make([]byte, n, size)
		}
	}
	return make([]byte, n)
}

func putBuf(b []byte) {
	c := uint32(cap(b))
	for i := range bufClasses {
		if c == uint32(1)<<(minBufShift+i) {
			b = b[:c]
			bufClasses[i].Put(&b)
			return
		}
	}
}

// decodeLUN turns the 8-byte LUN field into a LUN number for single-level
// peripheral and flat addressing; other forms keep their raw value so that
// the logical unit reports them unsupported.
func decodeLUN(raw []byte) uint64 {
	switch raw[0] >> 6 {
	case 0, 1:
		rest := binary.BigEndian.Uint64(raw) & 0x0000ffffffffffff
		if rest == 0 {
			return uint64(raw[0]&0x3f)<<8 | uint64(raw[1])
		}
	}
	return binary.BigEndian.Uint64(raw)
}

// handleSCSICmd starts a SCSI command: admits its CmdSN, gathers immediate
// data, issues R2Ts and executes it once all data is in.
func (c *conn) handleSCSICmd(h *bhs) error {
	if c.sess.discovery {
		if err := c.rd.discardData(); err != nil {
			return err
		}
		return protoErr(rejectProtocolError, "SCSI command in a discovery session")
	}
	itt := h.itt()
	flags := h.flags()
	edtl := h.u32(20)
	cmdSN := h.u32(24)
	dlen := uint32(h.dataLen())
	immediate := h.immediate()
	p := &c.sess.params

	if !c.sess.admit(cmdSN, immediate) {
		glog.V(2).Infof("iscsi: SCSI command CmdSN %d outside window, dropped", cmdSN)
		return c.rd.discardData()
	}
	t := &task{c: c, itt: itt, cmdSN: cmdSN, immediate: immediate, edtl: edtl, done: make(chan struct{})}
	copy(t.lunRaw[:], h[8:16])
	copy(t.cdb[:], h[32:48])
	t.cmd.CDB = t.cdb[:]
	if c.rd.nAHS > 0 {
		if ext := extendedCDB(c.rd.ahs[:c.rd.nAHS]); ext != nil {
			t.cmd.CDB = append(append([]byte(nil), t.cdb[:]...), ext...)
		}
	}
	t.cmd.Nexus = c.sess.nexus
	t.cmd.LUN = decodeLUN(t.lunRaw[:])
	t.cmd.Read = flags&cmdFlagRead != 0
	t.cmd.Write = flags&cmdFlagWrite != 0
	if t.cmd.Read {
		t.cmd.ExpectedInLength = edtl
	}

	// Validate data-out parameters.
	switch {
	case dlen > 0 && !t.cmd.Write:
		c.releaseSlot(immediate)
		c.rd.discardData()
		return protoErr(rejectProtocolError, "immediate data without W bit")
	case dlen > 0 && !p.immediateData:
		c.releaseSlot(immediate)
		c.rd.discardData()
		return protoErr(rejectProtocolError, "immediate data not negotiated")
	case dlen > edtl || dlen > p.firstBurstLength:
		c.releaseSlot(immediate)
		c.rd.discardData()
		return protoErr(rejectProtocolError, "immediate data %d exceeds EDTL %d or FirstBurstLength", dlen, edtl)
	}
	if !c.addTask(t) {
		// ITT in use: a protocol error by the initiator.
		c.releaseSlot(immediate)
		c.rd.discardData()
		return protoErr(rejectTaskInProgress, "ITT %#x already in use", itt)
	}
	if !t.cmd.Write || edtl == 0 {
		if err := c.rd.discardData(); err != nil {
			return err
		}
		if c.runsInline(t) {
			c.executeInline(t)
			return nil
		}
		c.execute(t)
		return nil
	}
	if edtl > c.srv.cfg.MaxTransferLength {
		// Too large to buffer: fail the command without soliciting data.
		if err := c.rd.discardData(); err != nil {
			return err
		}
		c.finishWithSense(t, senseInvalidFieldInCDB())
		return nil
	}
	t.buf = getBuf(edtl)
	if dlen > 0 {
		if err := c.rd.readData(t.buf[:dlen]); err != nil {
			return err
		}
		t.got = dlen
	}
	t.unsolNext = dlen
	t.unsolEnd = dlen
	if !p.initialR2T {
		t.unsolEnd = max(dlen, min(edtl, p.firstBurstLength))
	}
	if !h.final() && t.unsolEnd == dlen {
		// F=0 announces unsolicited Data-Out that may not follow.
		return protoErr(rejectProtocolError, "F bit clear without unsolicited data allowed")
	}
	if h.final() {
		// No unsolicited Data-Out follows.
		t.unsolEnd = dlen
	}
	t.nextR2TOff = t.unsolEnd
	if t.got == edtl {
		c.execute(t)
		return nil
	}
	c.issueR2Ts(t)
	return nil
}

// releaseSlot gives back the CmdSN window slot of a command that never
// became a task (immediate commands hold none).
func (c *conn) releaseSlot(immediate bool) {
	if !immediate {
		c.sess.release()
	}
}

// extendedCDB returns the CDB bytes beyond 16 from an Extended CDB AHS.
func extendedCDB(ahs []byte) []byte {
	for len(ahs) >= 4 {
		l := int(binary.BigEndian.Uint16(ahs[0:2]))
		typ := ahs[2]
		total := (3 + l + 3) &^ 3
		if 3+l > len(ahs) {
			return nil
		}
		if typ == 1 && l >= 1 {
			return append([]byte(nil), ahs[4:3+l]...)
		}
		if total > len(ahs) {
			return nil
		}
		ahs = ahs[total:]
	}
	return nil
}

func (c *conn) addTask(t *task) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.tasks[t.itt]; ok {
		return false
	}
	c.tasks[t.itt] = t
	return true
}

func (c *conn) lookupTask(itt uint32) *task {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tasks[itt]
}

// issueR2Ts sends R2Ts until MaxOutstandingR2T are outstanding or the whole
// transfer is solicited. Reader goroutine only.
func (c *conn) issueR2Ts(t *task) {
	p := &c.sess.params
	for uint32(len(t.r2ts)) < p.maxOutstandingR2T && t.nextR2TOff < t.edtl {
		n := min(p.maxBurstLength, t.edtl-t.nextR2TOff)
		r := r2tState{ttt: c.allocTTT(), nextOff: t.nextR2TOff, end: t.nextR2TOff + n}
		t.r2ts = append(t.r2ts, r)
		pdu := c.newPDU()
		pdu.hdr[0] = opR2T
		pdu.hdr[1] = flagFinal
		copy(pdu.hdr[8:16], t.lunRaw[:])
		pdu.hdr.putU32(16, t.itt)
		pdu.hdr.putU32(20, r.ttt)
		pdu.hdr.putU32(36, t.r2tSN)
		pdu.hdr.putU32(40, t.nextR2TOff)
		pdu.hdr.putU32(44, n)
		t.r2tSN++
		t.nextR2TOff += n
		c.send(pdu)
	}
}

// handleDataOut places a Data-Out payload in its command's buffer.
func (c *conn) handleDataOut(h *bhs) error {
	itt := h.itt()
	ttt := h.u32(20)
	dataSN := h.u32(36)
	off := h.u32(40)
	n := uint32(h.dataLen())
	t := c.lookupTask(itt)
	if t == nil || t.buf == nil {
		// Aborted or unknown task: drop the data (RFC 7143 §4.2.3.3).
		glog.V(2).Infof("iscsi: Data-Out for unknown ITT %#x dropped", itt)
		return c.rd.discardData()
	}
	c.mu.Lock()
	stale := t.executing || t.aborted
	c.mu.Unlock()
	if stale {
		return c.rd.discardData()
	}
	if ttt == reservedTag {
		if off != t.unsolNext || dataSN != t.unsolSN || uint64(off)+uint64(n) > uint64(t.unsolEnd) {
			return c.failDataOut(t, "unsolicited Data-Out ITT %#x DataSN %d offset %d len %d (want DataSN %d offset %d, end %d)",
				itt, dataSN, off, n, t.unsolSN, t.unsolNext, t.unsolEnd)
		}
		if err := c.rd.readData(t.buf[off : off+n]); err != nil {
			return err
		}
		t.unsolNext += n
		t.unsolSN++
		t.got += n
		if h.final() && t.unsolNext != t.unsolEnd {
			return c.failDataOut(t, "unsolicited burst of ITT %#x ended early at %d of %d", itt, t.unsolNext, t.unsolEnd)
		}
	} else {
		i := -1
		for j := range t.r2ts {
			if t.r2ts[j].ttt == ttt {
				i = j
				break
			}
		}
		if i < 0 {
			return c.failDataOut(t, "Data-Out ITT %#x with unknown TTT %#x", itt, ttt)
		}
		r := &t.r2ts[i]
		if off != r.nextOff || dataSN != r.dataSN || uint64(off)+uint64(n) > uint64(r.end) {
			return c.failDataOut(t, "Data-Out ITT %#x TTT %#x DataSN %d offset %d len %d (want DataSN %d offset %d, end %d)",
				itt, ttt, dataSN, off, n, r.dataSN, r.nextOff, r.end)
		}
		if err := c.rd.readData(t.buf[off : off+n]); err != nil {
			return err
		}
		r.nextOff += n
		r.dataSN++
		t.got += n
		if r.nextOff == r.end {
			if !h.final() {
				return c.failTaskData(t, "burst of ITT %#x complete without F bit", itt)
			}
			t.r2ts = append(t.r2ts[:i], t.r2ts[i+1:]...)
		} else if h.final() {
			return c.failTaskData(t, "F bit before the end of the burst of ITT %#x", itt)
		}
	}
	if t.got == t.edtl {
		c.execute(t)
		return nil
	}
	c.issueR2Ts(t)
	return nil
}

// failDataOut discards the current Data-Out payload and fails its task.
func (c *conn) failDataOut(t *task, format string, args ...any) error {
	if err := c.rd.discardData(); err != nil {
		return err
	}
	return c.failTaskData(t, format, args...)
}

// failTaskData ends a task whose Data-Out sequence is broken (wrong DataSN,
// offset, length, TTT or F bit) with CHECK CONDITION, ABORTED COMMAND /
// DATA PHASE ERROR. At ErrorRecoveryLevel 0 the task cannot be recovered;
// failing it alone keeps the connection and the other tasks alive, and
// later Data-Out for it is dropped as for any finished task.
func (c *conn) failTaskData(t *task, format string, args ...any) error {
	glog.V(1).Infof("iscsi: tsih=%d: "+format, append([]any{c.sess.tsih}, args...)...)
	c.finishWithSense(t, fixedSense(0x0b, 0x4b, 0x00))
	return nil
}

// execute runs the command on its own goroutine.
func (c *conn) execute(t *task) {
	if !c.startExecuting(t) {
		return
	}
	if t.cmd.Write {
		t.cmd.DataOut = t.buf[:t.got]
	}
	c.cmdWG.Add(1)
	go func() {
		defer c.cmdWG.Done()
		c.respond(t, c.executeLU(t), sendDirect)
	}()
}

// Quick commands the reader ran itself: one slower than slowInline makes
// it hand the next handOffAfterSlow quick ones to goroutines (the device
// waits for something, say a disk read, and those run concurrently).
const (
	slowInline       = 250 * time.Microsecond
	handOffAfterSlow = 64
)

// runsInline says whether the reader runs t itself: the logical unit
// calls it quick (QuickChecker) and no quick command was slow lately.
// A goroutine hand-off costs a wake-up and a scheduler round trip, more
// than a page-cache read of a few blocks. Reader only.
func (c *conn) runsInline(t *task) bool {
	q, ok := c.sess.target.LU.(QuickChecker)
	if !ok || !q.Quick(&t.cmd) {
		return false
	}
	if c.handOff > 0 {
		c.handOff--
		return false
	}
	return true
}

// executeInline runs t on the reader and adds its response to the write
// batch (sendBatched).
func (c *conn) executeInline(t *task) {
	if !c.startExecuting(t) {
		return
	}
	start := time.Now()
	r := c.executeLU(t)
	if time.Since(start) > slowInline {
		c.handOff = handOffAfterSlow
	}
	c.respond(t, r, sendInline)
}

// startExecuting marks t executing, unless it was aborted meanwhile.
func (c *conn) startExecuting(t *task) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.aborted {
		return false
	}
	t.executing = true
	return true
}

// executeLU runs the logical unit. A panic in it (a bug there, reachable
// from network input) fails the command with HARDWARE ERROR instead of
// taking the whole server down; it is logged with its stack.
func (c *conn) executeLU(t *task) (resp *scsi.Response) {
	defer func() {
		if v := recover(); v != nil {
			glog.Errorf("iscsi: logical unit %s panicked on CDB % x: %v\n%s",
				c.sess.target.Name, t.cmd.CDB, v, debug.Stack())
			resp = &scsi.Response{Status: scsi.StatusCheckCondition, Sense: senseHardwareError()}
		}
	}()
	return c.sess.target.LU.Execute(&t.cmd)
}

// finishTask removes t and frees its window slot and buffer, exactly once.
// It reports whether the caller may still send t's response.
func (c *conn) finishTask(t *task) bool {
	c.mu.Lock()
	if t.finished {
		c.mu.Unlock()
		return false
	}
	t.finished = true
	aborted := t.aborted
	if c.tasks[t.itt] == t {
		delete(c.tasks, t.itt)
	}
	c.mu.Unlock()
	return !aborted
}

func (c *conn) releaseTask(t *task) { c.releaseTaskBuf(t, true) }

// releaseTaskBuf is releaseTask; with recycle=false it leaves t.buf alone
// (another goroutine may still use it) for the GC to collect.
func (c *conn) releaseTaskBuf(t *task, recycle bool) {
	if recycle && t.buf != nil {
		putBuf(t.buf)
		t.buf = nil
		t.cmd.DataOut = nil
	}
	if !t.immediate && !t.slotFreed {
		c.sess.release()
	}
	close(t.done)
}

// How respond sends a response.
type sendMode int

const (
	// sendQueued: through the writer goroutine (the reader, for
	// responses it builds without running the logical unit).
	sendQueued sendMode = iota
	// sendDirect: written by the calling command goroutine (sendNow).
	sendDirect
	// sendInline: added to the batch by the reader, which ran the
	// command itself (sendBatched).
	sendInline
)

// respond sends the Data-In and status of a completed command. A command
// goroutine writes them itself (sendDirect); the reader batches those of
// commands it ran itself (sendInline) and queues the rest for the writer.
func (c *conn) respond(t *task, r *scsi.Response, mode sendMode) {
	if !c.finishTask(t) {
		// Aborted: no response, but give the slot back.
		c.releaseTask(t)
		return
	}
	defer c.releaseTask(t)
	if !t.immediate {
		// Free the window slot first: the MaxCmdSN of this response
		// then already lets the initiator send the next command.
		c.sess.release()
		t.slotFreed = true
	}
	if r == nil {
		r = &scsi.Response{Status: scsi.StatusCheckCondition, Sense: senseHardwareError()}
	}
	var resFlags byte
	var residual uint32
	var in []byte
	if t.cmd.Read {
		in = r.DataIn
		switch {
		case uint64(len(in)) > uint64(t.edtl):
			resFlags, residual = flagResOverflow, uint32(len(in))-t.edtl
			in = in[:t.edtl]
		case uint32(len(in)) < t.edtl:
			resFlags, residual = flagResUnderflow, t.edtl-uint32(len(in))
		}
	} else if t.cmd.Write {
		if sz, ok := c.sess.target.LU.(DataOutSizer); ok {
			if need, ok := sz.DataOutLength(t.cmd.CDB); ok {
				switch {
				case need > t.edtl:
					resFlags, residual = flagResOverflow, need-t.edtl
				case need < t.edtl:
					resFlags, residual = flagResUnderflow, t.edtl-need
				}
			}
		}
	} else if t.edtl > 0 {
		resFlags, residual = flagResUnderflow, t.edtl
	}
	statusInData := r.Status == scsi.StatusGood && len(r.Sense) == 0 && len(in) > 0
	var release func()
	if rel, ok := c.sess.target.LU.(DataInReleaser); ok && r.DataIn != nil {
		release = func() { rel.ReleaseDataIn(r) }
		if len(in) == 0 {
			release()
			release = nil
		}
	}
	var stack [8]*outPDU
	ps, dataSN := c.dataInPDUs(stack[:0], t, in, statusInData, r.Status, resFlags, residual, release)
	defer func() {
		switch mode {
		case sendDirect:
			c.sendNow(ps...)
		case sendInline:
			c.sendBatched(ps...)
		default:
			for _, p := range ps {
				c.send(p)
			}
		}
	}()
	if statusInData {
		return
	}
	p := c.newPDU()
	p.hdr[0] = opSCSIResp
	p.hdr[1] = flagFinal | resFlags
	p.hdr[2] = 0 // command completed at target
	p.hdr[3] = r.Status
	p.hdr.putU32(16, t.itt)
	p.hdr.putU32(36, dataSN+t.r2tSN)
	p.hdr.putU32(44, residual)
	if len(r.Sense) > 0 {
		sense := r.Sense
		if len(sense) > 0xffff {
			sense = sense[:0xffff]
		}
		d := make([]byte, 2+len(sense))
		binary.BigEndian.PutUint16(d, uint16(len(sense)))
		copy(d[2:], sense)
		p.data = d
	}
	p.status = true
	ps = append(ps, p)
}

// dataInPDUs splits in into Data-In PDUs of at most the initiator's
// MaxRecvDataSegmentLength, each MaxBurstLength sequence ending with F, and
// appends them to ps. With withStatus the last PDU carries the status. It
// returns ps and the number of PDUs added. release, if set, runs once the
// last PDU was sent.
func (c *conn) dataInPDUs(ps []*outPDU, t *task, in []byte, withStatus bool, status byte, resFlags byte, residual uint32, release func()) ([]*outPDU, uint32) {
	seg := c.maxSendDSL
	if seg == 0 {
		seg = 8192
	}
	burst := c.sess.params.maxBurstLength
	var dataSN, off, inBurst uint32
	total := uint32(len(in))
	for off < total {
		n := min(seg, total-off, burst-inBurst)
		p := c.newPDU()
		p.hdr[0] = opDataIn
		last := off+n == total
		inBurst += n
		var f byte
		if last || inBurst == burst {
			f |= flagFinal
			inBurst = 0
		}
		if last && withStatus {
			f |= flagStatus | resFlags
			p.hdr[3] = status
			p.hdr.putU32(44, residual)
			p.status = true
		}
		p.hdr[1] = f
		p.hdr.putU32(16, t.itt)
		p.hdr.putU32(20, reservedTag)
		p.hdr.putU32(36, dataSN)
		p.hdr.putU32(40, off)
		p.data = in[off : off+n]
		if last {
			p.done = release
		}
		ps = append(ps, p)
		dataSN++
		off += n
	}
	return ps, dataSN
}

// finishWithSense completes a task that never reached the logical unit.
func (c *conn) finishWithSense(t *task, sense []byte) {
	c.respond(t, &scsi.Response{Status: scsi.StatusCheckCondition, Sense: sense}, sendQueued)
}

// Fixed-format sense data the transport itself needs.
func fixedSense(key, asc, ascq byte) []byte {
	s := make([]byte, 18)
	s[0] = 0x70
	s[2] = key
	s[7] = 10
	s[12] = asc
	s[13] = ascq
	return s
}

func senseInvalidFieldInCDB() []byte { return fixedSense(0x05, 0x24, 0x00) }
func senseHardwareError() []byte     { return fixedSense(0x04, 0x44, 0x00) }

// abortWaitingTasks drops tasks still gathering data (they never reached
// the logical unit).
func (c *conn) abortWaitingTasks() {
	c.mu.Lock()
	var drop []*task
	for _, t := range c.tasks {
		if !t.executing && !t.aborted {
			t.aborted = true
			t.finished = true
			delete(c.tasks, t.itt)
			drop = append(drop, t)
		}
	}
	c.mu.Unlock()
	for _, t := range drop {
		c.releaseTask(t)
	}
}

// abortAllTasks marks every task aborted: waiting ones are dropped, running
// ones finish without a response.
func (c *conn) abortAllTasks() {
	c.mu.Lock()
	for _, t := range c.tasks {
		t.aborted = true
	}
	c.mu.Unlock()
	c.abortWaitingTasks()
}

package v2bridge

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/engine"
	"github.com/weedblock/weedblock/executor"
)

// errStaleAttempt: the replica has seen a newer attempt at this epoch.
var errStaleAttempt = fmt.Errorf("%w (refused by the replica)", engine.ErrStaleToken)

// applyChunk is the record data of one pipelined apply request.
const applyChunk = 1 << 20

// errScanDone ends a WAL scan that reached its goal.
var errScanDone = errors.New("scan done")

// PeerOptions configure NewPeer.
type PeerOptions struct {
	// Name is the volume name the replica's Service has it registered as.
	Name string
	// Addr is the replica's recovery address (host:port).
	Addr string
	// HoldBudget is the byte budget of each WAL hold (0: none; the hold is
	// still revoked when it alone blocks writers).
	HoldBudget int64
	// Committed is the primary's committed LSN now (the catch-up
	// frontier); nil means the primary volume's durable LSN.
	Committed func() uint64
	// Dialer opens the connection; nil means a net.Dialer.
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	// Timeout bounds one request (0: 30 s).
	Timeout time.Duration
}

// Peer is the primary side of the recovery of one replica: it implements
// executor.CatchUpIO, RebuildIO and TruncateIO over the primary's blockvol
// volume and one connection to the replica's Service. Every call checks
// its token against the slots first. Safe for concurrent use (calls are
// serialized); Close ends the connection.
type Peer struct {
	slots *engine.Slots
	vol   *blockvol.Volume
	o     PeerOptions

	mu     sync.Mutex
	conn   net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	rbuf   []byte
	wbuf   []byte
	closed bool
	// base being sent: baseDig is the digest (baseDigest) of the base
	// requests sent so far, nil when no base is pinned; imgSum, for a
	// snapshot base only, the SHA-256 of the image bytes sent so far
	// (checked against the manifest by VerifyBase)
	baseLSN  uint64
	baseNext int64
	baseDig  *baseDigest
	imgSum   hash.Hash
	// readHead: the primary's head once the last base byte was read; every
	// write the fuzzy image may show is at or below it
	readHead uint64
	chunk    []byte // the batch being sent
	spare    []byte // the next batch, read ahead
	zeroBlk  []byte // one zero block, to spot zero blocks in chunk
	// ahead is the background stage of the base transfer (nil: none):
	// it reads the next batch into spare and, for a snapshot base, hashes
	// the batch being sent into imgSum. Everything that touches imgSum,
	// spare or the pinned image waits for it first (waitAheadLocked).
	ahead *baseAhead
	// Base chunks are not waited for one by one: TransferBase returns once
	// they are sent, and their answers are read later (at most baseWindow
	// unread), before any other request's and by VerifyBase.
	pending int   // answers owed by the replica for base chunks sent
	baseErr error // the first refusal of a base chunk: the transfer is lost
	// replay: a base was verified and not yet committed. The replica is
	// untrusted until Commit, which fsyncs it first, so StreamWAL asks for
	// no fsync meanwhile and counts what the replica applied.
	replay bool
	// apply payload of StreamWAL, reused
	abuf []byte
	// terms of the latest View (Report is conservative across them)
	terms []engine.Term
	// pins counts pins held; doubles counts second releases (a bug).
	pins, doubles atomic.Int64
}

var (
	_ executor.CatchUpIO  = (*Peer)(nil)
	_ executor.RebuildIO  = (*Peer)(nil)
	_ executor.TruncateIO = (*Peer)(nil)
)

// NewPeer returns the recovery I/O for one replica of vol. The connection
// is opened on first use.
func NewPeer(slots *engine.Slots, vol *blockvol.Volume, o PeerOptions) *Peer {
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	return &Peer{slots: slots, vol: vol, o: o}
}

// IO bundles p for executor.Run.
func (p *Peer) IO() executor.IO {
	return executor.IO{CatchUp: p, Rebuild: p, Truncate: p}
}

// Close closes the connection. Idempotent; later calls fail.
func (p *Peer) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.waitAheadLocked()
	p.closed = true
	p.dropLocked()
	return nil
}

func (p *Peer) dropLocked() {
	if p.conn != nil {
		p.conn.Close()
		p.conn, p.br, p.bw = nil, nil, nil
	}
	if p.pending > 0 {
		// Base chunks whose fate is unknown: that transfer cannot go on.
		if p.baseErr == nil {
			p.baseErr = fmt.Errorf("v2bridge: base %s: connection to %s lost with %d chunks unanswered", p.o.Name, p.o.Addr, p.pending)
		}
		p.pending = 0
	}
}

// call sends one request under tok and waits for the answer. A transport
// failure drops the connection (the next call redials).
func (p *Peer) call(ctx context.Context, tok engine.Token, req *request) (response, error) {
	if err := p.slots.Check(tok); err != nil {
		return response{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.callLocked(ctx, tok, req)
}

func (p *Peer) callLocked(ctx context.Context, tok engine.Token, req *request) (response, error) {
	return p.exchangeLocked(ctx, tok, []*request{req})
}

// exchangeLocked sends reqs back to back (pipelined) and then reads their
// answers in order. It returns the last answer, or the first refusal.
func (p *Peer) exchangeLocked(ctx context.Context, tok engine.Token, reqs []*request) (response, error) {
	return p.roundLocked(ctx, reqs[0].Op, func() (int, error) {
		for i, req := range reqs {
			if _, err := p.writeRequestLocked(tok, req); err != nil {
				return i, err
			}
		}
		return len(reqs), nil
	})
}

// session is one use of the connection under a context: the deadline is
// armed (and cut short when ctx ends) until end is called.
type session struct {
	p    *Peer
	ctx  context.Context
	what op
	stop func() bool
}

// openLocked dials if needed and arms the connection's deadline.
func (p *Peer) openLocked(ctx context.Context, what op) (*session, error) {
	if p.closed {
		return nil, fmt.Errorf("v2bridge: %s to %s: peer closed", what, p.o.Addr)
	}
	if ctx == nil {
		ctx = context.Background()
	}
	if p.conn == nil {
		dctx, cancel := context.WithTimeout(ctx, p.o.Timeout)
		c, err := p.dial(dctx)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("v2bridge: dial %s: %w", p.o.Addr, err)
		}
		if sb, ok := c.(interface{ SetWriteBuffer(int) error }); ok {
			sb.SetWriteBuffer(socketBuffer) // best effort: the kernel may cap it
		}
		p.conn, p.br, p.bw = c, bufio.NewReaderSize(c, 64<<10), bufio.NewWriterSize(c, 256<<10)
		// The preface goes out with the first request.
		p.bw.WriteString(Preface)
	}
	c := p.conn
	deadline := time.Now().Add(p.o.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	return &session{p: p, ctx: ctx, what: what, stop: stop}, nil
}

func (ss *session) end() { ss.stop() }

// fail drops the connection after a transport failure.
func (ss *session) fail(err error) error {
	ss.p.dropLocked()
	if cerr := ss.ctx.Err(); cerr != nil {
		err = fmt.Errorf("%w (%v)", err, context.Cause(ss.ctx))
	}
	return fmt.Errorf("v2bridge: %s to %s: %w", ss.what, ss.p.o.Addr, err)
}

// roundLocked writes requests with send, which says how many it wrote,
// then reads their answers (the answers still owed for base chunks first).
// It returns the last answer, or the first refusal. An error from send
// drops the connection (answers may be owed) and is returned wrapped.
func (p *Peer) roundLocked(ctx context.Context, what op, send func() (int, error)) (response, error) {
	ss, err := p.openLocked(ctx, what)
	if err != nil {
		return response{}, err
	}
	defer ss.end()
	if err := p.settleLocked(0); err != nil {
		return response{}, p.withBaseErr(ss.fail(err))
	}
	// The answers are small: the replica never blocks writing them while
	// this side is still writing requests.
	n, err := send()
	if err != nil {
		return response{}, ss.fail(err)
	}
	if err := p.bw.Flush(); err != nil {
		return response{}, ss.fail(err)
	}
	var last response
	var first error
	for range n {
		resp, err := p.readAnswerLocked()
		if err != nil {
			return response{}, ss.fail(err)
		}
		if err := errorFor(resp); err != nil && first == nil {
			first = fmt.Errorf("v2bridge: %s %s: %w", what, p.o.Name, err)
		}
		last = resp
	}
	return last, first
}

// writeRequestLocked writes one request frame (not flushed) under tok and
// returns its payload's CRC32C.
func (p *Peer) writeRequestLocked(tok engine.Token, req *request) (uint32, error) {
	req.Volume, req.Epoch, req.Attempt = p.o.Name, tok.Epoch, tok.Attempt
	p.wbuf = req.encodeHead(p.wbuf[:0])
	return writeFrameParts(p.bw, p.wbuf, req.Data)
}

// directData is the size from which a request's Data is written to the
// connection straight from its buffer (one writev with the frame's
// header and head) instead of through the buffered writer, which would
// copy part of it.
const directData = 64 << 10

// writeBaseRequestLocked is writeRequestLocked for base requests: a chunk
// of at least directData bytes goes out in one writev from its own buffer
// (whatever the buffered writer holds is flushed first, in order).
func (p *Peer) writeBaseRequestLocked(tok engine.Token, req *request) (uint32, error) {
	if len(req.Data) < directData {
		return p.writeRequestLocked(tok, req)
	}
	req.Volume, req.Epoch, req.Attempt = p.o.Name, tok.Epoch, tok.Attempt
	p.wbuf = req.encodeHead(p.wbuf[:0])
	return p.writeFrameDirectLocked(p.wbuf, req.Data)
}

// writeFrameDirectLocked writes one frame whose payload is head then data
// with one writev, after whatever the buffered writer holds, and returns
// the payload's CRC32C. For large payloads: nothing of them is copied.
func (p *Peer) writeFrameDirectLocked(head, data []byte) (uint32, error) {
	h, crc, err := encodeFrameHeader(head, data)
	if err != nil {
		return 0, err
	}
	if err := p.bw.Flush(); err != nil {
		return 0, err
	}
	bufs := net.Buffers{h[:], head, data}
	if _, err := bufs.WriteTo(p.conn); err != nil {
		return 0, err
	}
	return crc, nil
}

func (p *Peer) readAnswerLocked() (response, error) {
	payload, err := readFrame(p.br, p.rbuf)
	if err != nil {
		return response{}, err
	}
	p.rbuf = payload[:0]
	return decodeResponse(payload)
}

// withBaseErr is err, a transport failure while answers for base chunks
// were read, led by the refusal of a base chunk if one came first (the
// replica refuses a bad frame, then ends the connection): the reason, not
// just the closed connection.
func (p *Peer) withBaseErr(err error) error {
	if p.baseErr == nil {
		return err
	}
	return fmt.Errorf("%w (then: %v)", p.baseErr, err)
}

// settleLocked reads the answers owed for base chunks until at most keep
// are owed. A refusal among them is kept in baseErr (the transfer is lost);
// the error returned is a transport failure.
func (p *Peer) settleLocked(keep int) error {
	for p.pending > keep {
		resp, err := p.readAnswerLocked()
		if err != nil {
			return err
		}
		p.pending--
		if err := errorFor(resp); err != nil && p.baseErr == nil {
			p.baseErr = fmt.Errorf("v2bridge: base %s: %w", p.o.Name, err)
		}
	}
	return nil
}

func (p *Peer) dial(ctx context.Context) (net.Conn, error) {
	if p.o.Dialer != nil {
		return p.o.Dialer(ctx, p.o.Addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", p.o.Addr)
}

// Report asks the replica where it stands (for engine.PlanRecovery).
//
// Terms is the replica's term history up to its durable LSN (blockvol's
// durable history: exact also for records the flusher let go of), so the
// planner matches the two histories exactly; Epoch is the epoch of the
// replica's last durable record by that history. A replica that does not
// send its history (an older build) leaves Terms nil; then, when its last
// record's epoch is unknown and the terms of the latest View name more
// than one epoch, Epoch is reported as 0 so that none of its records is
// taken to match (the plan rebuilds rather than risk keeping writes of a
// deposed primary).
func (p *Peer) Report(ctx context.Context, tok engine.Token) (engine.ReplicaReport, error) {
	r, err := p.call(ctx, tok, &request{Op: opHello, B: helloTerms})
	if err != nil {
		return engine.ReplicaReport{}, err
	}
	rep := engine.ReplicaReport{Durable: r.Durable, Checkpoint: r.Checkpoint, Epoch: r.Epoch, Untrusted: r.Untrusted}
	if r.HasTerms {
		rep.Terms = make([]engine.Term, 0, len(r.Terms))
		for _, t := range r.Terms {
			rep.Terms = append(rep.Terms, engine.Term{Epoch: t.Epoch, First: t.First})
		}
		return rep, nil
	}
	p.mu.Lock()
	multi := len(p.terms) > 1
	p.mu.Unlock()
	if r.EpochUnknown && multi {
		rep.Epoch = 0
	}
	return rep, nil
}

// View is the primary's view for engine.PlanRecovery, with
// the WAL held from its tail until tok's attempt ends, so that the records a
// plan binds (a catch-up's From, a full rebuild's Tail-1, a snapshot's LSN)
// cannot leave the WAL between planning and the executor's own pin. Base is
// the volume's base snapshot (snapshot.go). The hold has the peer's
// budget and is released when tok is released or cancelled. Terms are the
// given ones, or with nil the volume's own durable term history (see
// ownTerms).
func (p *Peer) View(tok engine.Token, terms []engine.Term) (engine.PrimaryView, error) {
	if err := p.slots.Check(tok); err != nil {
		return engine.PrimaryView{}, err
	}
	for try := 0; ; try++ {
		st := p.vol.Status()
		h, err := p.vol.Hold(st.Tail, p.o.HoldBudget)
		if err != nil {
			if errors.Is(err, blockvol.ErrNotRetained) && try < 100 {
				continue // the flusher moved the tail: read it again
			}
			return engine.PrimaryView{}, fmt.Errorf("v2bridge: hold the WAL for planning: %w", err)
		}
		context.AfterFunc(tok.Context(), h.Release)
		if terms == nil {
			terms = ownTerms(p.vol, st)
		}
		p.mu.Lock()
		p.terms = append(p.terms[:0], terms...)
		p.mu.Unlock()
		committed := st.Durable
		if p.o.Committed != nil {
			committed = min(p.o.Committed(), st.Durable)
		}
		return engine.PrimaryView{Epoch: st.Epoch, Committed: committed, Durable: st.Durable, Head: st.Head, Tail: st.Tail, Terms: terms, Base: p.snapshotBase()}, nil
	}
}

// ownTerms is vol's term history as engine terms, for the view st: the
// terms of its records up to st.Head, then the current epoch from st.Head+1
// for the records still to come. LSNs below the oldest term have an
// unknown epoch; with nothing known the list is just that last term, so
// that no replica record is taken to match without proof.
func ownTerms(vol *blockvol.Volume, st blockvol.Status) []engine.Term {
	var terms []engine.Term
	for _, t := range vol.Terms() {
		if t.First > st.Head || t.Epoch > st.Epoch {
			break
		}
		terms = append(terms, engine.Term{Epoch: t.Epoch, First: t.First})
	}
	if n := len(terms); n == 0 || terms[n-1].Epoch < st.Epoch {
		terms = append(terms, engine.Term{Epoch: st.Epoch, First: st.Head + 1})
	}
	return terms
}

// Frontier is the primary's committed LSN now.
func (p *Peer) Frontier() uint64 {
	if p.o.Committed != nil {
		return p.o.Committed()
	}
	return p.vol.Status().Durable
}

// release counts one release of a pin.
func (p *Peer) release(done *atomic.Bool) {
	if done.Swap(true) {
		p.doubles.Add(1)
		return
	}
	p.pins.Add(-1)
}

// walPin is a blockvol hold as an executor.WALPin.
type walPin struct {
	p    *Peer
	h    *blockvol.Hold
	done atomic.Bool
}

func (w *walPin) Release() error {
	w.h.Release()
	w.p.release(&w.done)
	return nil
}

func (w *walPin) Revoked() bool {
	select {
	case <-w.h.Revoked():
		return true
	default:
		return false
	}
}

// PinWAL holds the primary's records (after, ∞).
func (p *Peer) PinWAL(tok engine.Token, after uint64) (executor.WALPin, error) {
	if err := p.slots.Check(tok); err != nil {
		return nil, err
	}
	h, err := p.vol.Hold(after+1, p.o.HoldBudget)
	if err != nil {
		if errors.Is(err, blockvol.ErrNotRetained) {
			return nil, fmt.Errorf("v2bridge: %w: %w", executor.ErrRetentionLost, err)
		}
		return nil, fmt.Errorf("v2bridge: pin WAL after %d: %w", after, err)
	}
	p.pins.Add(1)
	return &walPin{p: p, h: h}, nil
}

// StreamWAL ships (after, upTo] from the primary's WAL to the replica's
// ApplyReplicated path and returns the replica's durable LSN (fsynced before
// it answers), capped at upTo.
func (p *Peer) StreamWAL(ctx context.Context, tok engine.Token, after, upTo uint64) (executor.Progress, error) {
	if err := p.slots.Check(tok); err != nil {
		return executor.Progress{}, err
	}
	if upTo <= after {
		return executor.Progress{Achieved: after}, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// Records go out in pipelined requests of about applyChunk bytes,
	// encoded straight from the WAL scan into one reused payload and sent
	// while the scan goes on; only the last one asks the replica to fsync
	// (none during a rebuild's replay).
	replay := p.replay
	head := (&request{Op: opApply, Volume: p.o.Name, Epoch: tok.Epoch, Attempt: tok.Attempt}).encodeFixed(nil)
	bAt := 1 + 4 + len(p.o.Name) + 3*8 // request.B in head: after op, volume, epoch, attempt, A
	if cap(p.abuf) < applyChunk+64<<10 {
		p.abuf = make([]byte, 0, applyChunk+64<<10)
	}
	cur := p.abuf[:0]
	var count uint32
	start := func() {
		cur = putU32(append(cur[:0], head...), 0)
		count = 0
	}
	// send finishes the payload and writes it.
	send := func(fsync bool) error {
		binary.BigEndian.PutUint32(cur[len(head):], count)
		cur = putU32(cur, 0) // no Data
		if fsync {
			binary.BigEndian.PutUint64(cur[bAt:], 1)
		}
		_, err := p.writeFrameDirectLocked(cur, nil)
		p.abuf = cur[:0]
		return err
	}
	var sent int64
	var last uint64
	resp, err := p.roundLocked(ctx, opApply, func() (int, error) {
		n := 0
		start()
		err := p.vol.ScanWAL(after+1, func(r blockvol.Record) error {
			if ctx != nil && ctx.Err() != nil {
				return context.Cause(ctx)
			}
			if len(cur) >= applyChunk {
				if err := send(false); err != nil {
					return err
				}
				n++
				start()
			}
			cur = appendRecord(cur, &r)
			count++
			sent += int64(len(r.Data))
			last = r.LSN
			if r.LSN >= upTo || sent >= maxBatchBytes {
				return errScanDone
			}
			return nil
		})
		if err != nil && !errors.Is(err, errScanDone) {
			if errors.Is(err, blockvol.ErrNotRetained) || errors.Is(err, blockvol.ErrHoldRevoked) {
				return n, fmt.Errorf("read WAL after %d: %w: %w", after, executor.ErrRetentionLost, err)
			}
			return n, fmt.Errorf("read WAL after %d: %w", after, err)
		}
		if count == 0 {
			return n, nil // nothing (more) to ship
		}
		return n + 1, send(!replay)
	})
	if err != nil {
		return executor.Progress{}, err
	}
	if last == 0 {
		return executor.Progress{Achieved: after}, nil
	}
	reached := resp.Durable
	if replay {
		reached = resp.Head // applied; made durable by Commit before trust
	}
	return executor.Progress{Achieved: max(after, min(reached, last)), Bytes: sent}, nil
}

// Truncate drops the replica's records (to, ∞); executor.ErrTruncationUnsafe
// when its checkpoint is beyond to.
func (p *Peer) Truncate(tok engine.Token, to uint64) error {
	_, err := p.call(tok.Context(), tok, &request{Op: opTruncate, A: to})
	return err
}

// MarkUntrusted durably flags the replica as mid-rebuild (and drops its
// WAL).
func (p *Peer) MarkUntrusted(tok engine.Token) error {
	_, err := p.call(tok.Context(), tok, &request{Op: opBegin})
	return err
}

// basePin ends the base transfer state on release.
type basePin struct {
	p    *Peer
	done atomic.Bool
}

func (b *basePin) Release() error {
	b.p.mu.Lock()
	b.p.waitAheadLocked()
	b.p.baseDig, b.p.imgSum, b.p.baseNext = nil, nil, 0
	b.p.endBaseLocked()
	b.p.mu.Unlock()
	b.p.release(&b.done)
	return nil
}

// PinBase pins the primary's extent (engine.Full) at its durable LSN. The
// caller must hold the WAL after that LSN before the first TransferBase (the
// executor does). engine.Snapshot pins exactly the volume's base snapshot
// at lsn (pinSnapshot, snapshot.go) or fails with ErrSnapshotDrifted /
// ErrSnapshotUntrusted, which wrap executor.ErrBaseUnavailable.
func (p *Peer) PinBase(tok engine.Token, src engine.Source, lsn uint64) (executor.Base, error) {
	if err := p.slots.Check(tok); err != nil {
		return executor.Base{}, err
	}
	if src == engine.Snapshot {
		return p.pinSnapshot(lsn)
	}
	if src != engine.Full {
		return executor.Base{}, fmt.Errorf("v2bridge: %s base at %d: %w", src, lsn, executor.ErrBaseUnavailable)
	}
	st := p.vol.Status()
	p.mu.Lock()
	p.waitAheadLocked()
	p.baseLSN, p.baseNext, p.readHead = st.Durable, 0, 0
	p.baseDig, p.imgSum = newBaseDigest(st.Durable, uint64(st.Size)), nil
	p.mu.Unlock()
	p.pins.Add(1)
	return executor.Base{Source: engine.Full, LSN: st.Durable, Size: st.Size, Pin: &basePin{p: p}}, nil
}

// endBaseLocked forgets a base transfer: answers still owed for its chunks
// are not worth waiting for (the connection is dropped), and its refusal,
// if any, is cleared.
func (p *Peer) endBaseLocked() {
	if p.pending > 0 {
		p.dropLocked()
	}
	p.baseErr = nil
	p.replay = false
}

// Base transfer tuning.
const (
	// baseWindow is how many base chunks may be sent and not yet answered.
	baseWindow = 16
	// minZeroRun is the shortest run of zero bytes sent as a zero range
	// rather than as data (shorter runs are punched by the replica anyway).
	minZeroRun = 16 << 10
)

// TransferBase reads up to max bytes of the primary's extent at offset
// (rounded down to whole blocks, at least one) and sends them to the
// replica: runs of zero blocks as zero ranges, the rest as data chunks of
// applyChunk bytes. Offsets must follow each other from 0.
//
// It returns once the chunks are sent, without waiting for the replica's
// answers: up to baseWindow chunks stay unanswered, so that reading and
// hashing the next batch here overlaps writing this one there. A refusal
// is returned by a later TransferBase or by VerifyBase, which waits for
// every answer; nothing is trusted before VerifyBase and Commit.
func (p *Peer) TransferBase(ctx context.Context, tok engine.Token, b executor.Base, offset, max int64) (int64, error) {
	if err := p.slots.Check(tok); err != nil {
		return 0, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.baseDig == nil || b.LSN != p.baseLSN {
		return 0, fmt.Errorf("v2bridge: transfer of base %d that is not pinned: %w", b.LSN, executor.ErrBaseUnavailable)
	}
	if offset != p.baseNext {
		return 0, fmt.Errorf("v2bridge: base transfer at %d, next is %d", offset, p.baseNext)
	}
	if offset == 0 {
		p.waitAheadLocked()
		p.endBaseLocked() // a new transfer: nothing of an older one counts
	}
	if p.baseErr != nil {
		return 0, p.baseErr
	}
	n := p.batchLen(b, offset, max)
	// The background stage read this batch ahead, if it guessed right (and
	// hashed the snapshot image up to offset).
	a := p.waitAheadLocked()
	var buf []byte
	if a != nil && a.off == offset && int64(len(a.buf)) == n && a.err == nil {
		buf = a.buf
		p.chunk, p.spare = p.spare, p.chunk
	} else {
		p.chunk = grow(p.chunk, n)
		buf = p.chunk[:n]
		if err := p.readBase(b, buf, offset); err != nil {
			return 0, fmt.Errorf("v2bridge: read base at %d: %w", offset, err)
		}
	}
	if p.baseNext+n == b.Size && b.Source != engine.Snapshot {
		// Every write the fuzzy image may show is at or below the head
		// now that its last byte was read.
		p.readHead = p.vol.Status().Head
	}
	reqs := p.baseRequests(buf, offset, b)
	ss, err := p.openLocked(ctx, opBase)
	if err != nil {
		return 0, err
	}
	defer ss.end()
	// While the batch goes out: read the next one, which the executor asks
	// for next with the same max (a guess; checked above), and hash a
	// snapshot's image.
	p.startAheadLocked(b, buf, offset+n, max)
	// From here the digests count this batch: if it is not all sent, the
	// transfer cannot go on.
	lost := func(err error) error {
		err = ss.fail(err)
		if p.baseErr == nil {
			p.baseErr = fmt.Errorf("v2bridge: base %s: batch at %d not sent: %w", p.o.Name, offset, err)
		}
		return err
	}
	for i := range reqs {
		r := &reqs[i]
		crc, err := p.writeBaseRequestLocked(tok, r)
		if err != nil {
			return 0, lost(err)
		}
		n := uint64(len(r.Data))
		if r.Op == opZero {
			n = r.D
		}
		p.baseDig.add(r.Op, r.A, n, crc)
	}
	if err := p.bw.Flush(); err != nil {
		return 0, lost(err)
	}
	p.pending += len(reqs)
	p.baseNext += n
	if err := p.settleLocked(baseWindow); err != nil {
		return 0, p.withBaseErr(ss.fail(err))
	}
	if p.baseErr != nil {
		return 0, p.baseErr
	}
	return n, nil
}

// batchLen is the length of the base batch at offset for a TransferBase of
// at most max bytes: whole blocks, at least one.
func (p *Peer) batchLen(b executor.Base, offset, max int64) int64 {
	bs := int64(p.vol.BlockSize())
	n := min(max, b.Size-offset, maxBatchBytes) / bs * bs
	if n <= 0 {
		n = min(bs, b.Size-offset)
	}
	return n
}

func grow(p []byte, n int64) []byte {
	if int64(cap(p)) < n {
		return make([]byte, n)
	}
	return p
}

// baseAhead is one run of the background stage of a base transfer.
type baseAhead struct {
	done chan struct{}
	off  int64  // where buf was read (when read)
	buf  []byte // the batch read ahead; nil: none
	err  error
}

// startAheadLocked starts the background stage: read the batch at next (if
// any) into the spare buffer and, meanwhile, for a snapshot base, hash sent
// (the batch going out now) into imgSum. Owned by the Peer:
// waitAheadLocked ends it, and everything that uses imgSum, the spare
// buffer or the pinned image calls it first.
func (p *Peer) startAheadLocked(b executor.Base, sent []byte, next, max int64) {
	a := &baseAhead{done: make(chan struct{}), off: next}
	var buf []byte
	if next < b.Size {
		n := p.batchLen(b, next, max)
		p.spare = grow(p.spare, n)
		buf = p.spare[:n]
	}
	sum := p.imgSum
	p.ahead = a
	// Two goroutines, so that the read, the hash and the send (this
	// goroutine) all overlap; a.done closes once both ended.
	var wg sync.WaitGroup
	if sum != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sum.Write(sent)
		}()
	}
	if buf != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.err = p.readBase(b, buf, next)
			a.buf = buf
		}()
	}
	go func() {
		wg.Wait()
		close(a.done)
	}()
}

// waitAheadLocked waits for the background stage, if one runs, and
// returns it (nil if none).
func (p *Peer) waitAheadLocked() *baseAhead {
	a := p.ahead
	if a == nil {
		return nil
	}
	<-a.done
	p.ahead = nil
	return a
}

// baseRequests cuts buf (the base at offset) into requests: zero runs of
// at least minZeroRun bytes become opZero, the rest opBase chunks of at
// most applyChunk bytes (slices of buf).
func (p *Peer) baseRequests(buf []byte, offset int64, b executor.Base) []request {
	bs := p.vol.BlockSize()
	if len(p.zeroBlk) != bs {
		p.zeroBlk = make([]byte, bs)
	}
	isZero := func(i int) bool { return bytes.Equal(buf[i:i+bs], p.zeroBlk) }
	// zeroRun is the end of the run of zero blocks from i.
	zeroRun := func(i int) int {
		for i < len(buf) && isZero(i) {
			i += bs
		}
		return i
	}
	var reqs []request
	add := func(o op, i, j int) {
		r := request{Op: o, A: uint64(offset) + uint64(i), B: b.LSN, C: uint64(b.Size)}
		if o == opZero {
			r.D = uint64(j - i)
		} else {
			r.Data = buf[i:j]
		}
		reqs = append(reqs, r)
	}
	if len(buf)%bs != 0 {
		// The volume's last partial block: data as it is.
		add(opBase, 0, len(buf))
		return reqs
	}
	for i := 0; i < len(buf); {
		if z := zeroRun(i); z-i >= minZeroRun {
			add(opZero, i, z)
			i = z
			continue
		}
		// Data up to applyChunk bytes, or up to a long zero run.
		j := i + bs
		for j < len(buf) && j-i < applyChunk {
			if !isZero(j) {
				j += bs
				continue
			}
			z := zeroRun(j)
			if z-j >= minZeroRun {
				break
			}
			j = min(z, i+applyChunk)
		}
		add(opBase, i, j)
		i = j
	}
	return reqs
}

// VerifyBase waits for every answer owed for base chunks, then sends the
// base's digest (baseDigest: of exactly the requests sent) and size; the
// replica compares them with what it received and installs the base
// (executor.ErrBaseMismatch when they differ). For a snapshot base it
// first checks that the image bytes sent hash to the manifest's SHA-256.
func (p *Peer) VerifyBase(tok engine.Token, b executor.Base) error {
	if err := p.slots.Check(tok); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.baseDig == nil || b.LSN != p.baseLSN {
		return fmt.Errorf("v2bridge: verify of base %d that is not pinned: %w", b.LSN, executor.ErrBaseUnavailable)
	}
	req := &request{Op: opVerify, A: b.LSN, C: uint64(b.Size)}
	// The primary's term history up to the base goes with the manifest:
	// the replica's history after the rebuild.
	var terms []blockvol.Term
	for _, t := range p.vol.Terms() {
		if t.First > b.LSN {
			break
		}
		terms = append(terms, t)
	}
	req.Data = appendTerms(nil, terms)
	p.waitAheadLocked() // a snapshot's image hash of the last batch
	if err := p.checkImageLocked(b); err != nil {
		return err
	}
	req.Sum = p.baseDig.sum()
	// The round reads the owed answers first; a refusal among them fails
	// the verification even if the replica's digest happened to match.
	_, err := p.callLocked(tok.Context(), tok, req)
	if p.baseErr != nil {
		return p.baseErr
	}
	p.replay = err == nil
	return err
}

// Commit makes the replica trusted at achieved (FinishRebuild: checkpoint,
// then the untrusted flag cleared in one fsynced superblock update).
//
// The base was read while writes went on, so blocks of the image may show
// writes newer than achieved, up to the primary's head when the read ended.
// Before committing, Commit replays the WAL on to that head (made durable on
// the primary first), so the trusted replica is exactly the primary's state
// at an LSN ≥ achieved, never a mix.
//
// The replay after VerifyBase is applied without fsyncs (the replica is
// untrusted until here): the replica fsyncs before it checks achieved
// against its durable LSN and commits.
func (p *Peer) Commit(tok engine.Token, achieved uint64) error {
	if err := p.slots.Check(tok); err != nil {
		return err
	}
	p.mu.Lock()
	readHead := p.readHead
	p.mu.Unlock()
	if readHead > achieved {
		if err := p.vol.Flush(); err != nil {
			return fmt.Errorf("v2bridge: flush the primary to %d: %w", readHead, err)
		}
		for stalled := 0; achieved < readHead; {
			pr, err := p.StreamWAL(tok.Context(), tok, achieved, readHead)
			if err != nil {
				return fmt.Errorf("v2bridge: replay (%d, %d] behind the fuzzy base: %w", achieved, readHead, err)
			}
			if pr.Achieved <= achieved {
				if stalled++; stalled >= 3 {
					return fmt.Errorf("v2bridge: replay behind the fuzzy base stalled at %d of %d", achieved, readHead)
				}
			}
			achieved = max(achieved, pr.Achieved)
		}
	}
	_, err := p.call(tok.Context(), tok, &request{Op: opCommit, A: achieved})
	p.mu.Lock()
	p.replay = false
	p.mu.Unlock()
	return err
}

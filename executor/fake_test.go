package executor

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/weedblock/weedblock/engine"
)

// The LSN oracle: every block of a fake volume holds the LSN that last
// wrote it, so comparing a replica with the primary's model at an LSN
// shows any lost, extra, reordered or foreign write.

const nblocks = 37
const recordBytes = 4096

type image map[uint64]uint64 // block → LSN that last wrote it

// primary is the fake primary: its whole history, retention, snapshots.
type primary struct {
	mu         sync.Mutex
	epoch      uint64
	writes     []uint64 // writes[i] is the block written by LSN i+1
	committed  uint64
	tail       uint64 // lowest retained LSN
	checkpoint uint64 // a full base is the image at this LSN
	snaps      map[uint64]bool
	pins       []*fakePin
	terms      []engine.Term
	vouch      bool // view reports Durable (= head: the fake fsyncs every append)
}

func newPrimary(epoch uint64, n int) *primary {
	p := &primary{epoch: epoch, tail: 1, snaps: map[uint64]bool{}, terms: []engine.Term{{Epoch: epoch, First: 1}}}
	p.write(n)
	return p
}

// write appends n committed writes (a deterministic block pattern).
func (p *primary) write(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := 0; i < n; i++ {
		lsn := uint64(len(p.writes) + 1)
		p.writes = append(p.writes, (lsn*7+lsn/5)%nblocks)
	}
	p.committed = uint64(len(p.writes))
	p.checkpoint = p.committed
}

// bump starts a new epoch: records from head+1 on carry it.
func (p *primary) bump(epoch uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.epoch = epoch
	p.terms = append(p.terms, engine.Term{Epoch: epoch, First: uint64(len(p.writes)) + 1})
}

// epochOf is the epoch of record lsn (p.mu held).
func (p *primary) epochOf(lsn uint64) uint64 {
	e := p.terms[0].Epoch
	for _, t := range p.terms {
		if t.First <= lsn {
			e = t.Epoch
		}
	}
	return e
}

// commitAll commits every record (what replication does once the
// recovered replica acknowledges them).
func (p *primary) commitAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.committed = uint64(len(p.writes))
}

// recycle moves the tail to lsn, revoking holds that needed older records.
func (p *primary) recycle(lsn uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tail = lsn
	p.checkpoint = max(p.checkpoint, lsn-1) // the flusher frees only what it checkpointed
	for _, h := range p.pins {
		if h.wal && h.from < lsn {
			h.revoked = true
		}
	}
}

func (p *primary) imageAt(lsn uint64) image {
	p.mu.Lock()
	defer p.mu.Unlock()
	img := image{}
	for i := uint64(1); i <= lsn; i++ {
		img[p.writes[i-1]] = i
	}
	return img
}

func (p *primary) view() engine.PrimaryView {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := engine.PrimaryView{Epoch: p.epoch, Committed: p.committed, Head: uint64(len(p.writes)), Tail: p.tail,
		Terms: append([]engine.Term(nil), p.terms...)}
	if p.vouch {
		v.Durable = v.Head
	}
	var best uint64
	for lsn, trusted := range p.snaps {
		if lsn >= best {
			best = lsn
			v.Base = &engine.BaseSnapshot{LSN: lsn, Trusted: trusted}
		}
	}
	return v
}

// replica is the fake replica: an extent image at checkpoint plus its own
// WAL records (checkpoint, durable], which may diverge from the primary's.
type replica struct {
	mu         sync.Mutex
	extent     image
	wal        map[uint64]uint64 // LSN → block
	durable    uint64
	checkpoint uint64
	untrusted  bool
	epoch      uint64
}

// replicaAt is a replica that holds the primary's history up to durable,
// flushed to checkpoint.
func replicaAt(p *primary, durable, checkpoint uint64) *replica {
	r := &replica{extent: p.imageAt(checkpoint), wal: map[uint64]uint64{}, durable: durable, checkpoint: checkpoint, epoch: p.epoch}
	if durable > 0 {
		p.mu.Lock()
		r.epoch = p.epochOf(durable)
		p.mu.Unlock()
	}
	for l := checkpoint + 1; l <= durable; l++ {
		r.wal[l] = p.writes[l-1]
	}
	return r
}

func (r *replica) image() image {
	r.mu.Lock()
	defer r.mu.Unlock()
	img := image{}
	for b, l := range r.extent {
		img[b] = l
	}
	for l := r.checkpoint + 1; l <= r.durable; l++ {
		img[r.wal[l]] = l
	}
	return img
}

func (r *replica) report() engine.ReplicaReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	return engine.ReplicaReport{Durable: r.durable, Checkpoint: r.checkpoint, Epoch: r.epoch, Untrusted: r.untrusted}
}

// flush moves the replica's checkpoint to its durable LSN.
func (r *replica) flush() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for l := r.checkpoint + 1; l <= r.durable; l++ {
		r.extent[r.wal[l]] = l
	}
	r.wal = map[uint64]uint64{}
	r.checkpoint = r.durable
}

type fakePin struct {
	io       *fakeIO
	wal      bool
	from     uint64 // WAL: first held LSN
	released int
	revoked  bool
}

func (h *fakePin) Release() error {
	h.io.mu.Lock()
	defer h.io.mu.Unlock()
	h.released++
	h.io.releases++
	if h.released > 1 {
		return fmt.Errorf("pin released %d times", h.released)
	}
	return nil
}

func (h *fakePin) Revoked() bool {
	h.io.p.mu.Lock()
	defer h.io.p.mu.Unlock()
	return h.revoked
}

// fakeIO implements CatchUpIO, RebuildIO and TruncateIO between one
// primary and one replica. Every call checks the token first (as the real
// bridge must) and counts side effects.
type fakeIO struct {
	p     *primary
	r     *replica
	slots *engine.Slots

	mu          sync.Mutex
	pins        []*fakePin
	releases    int
	sideEffects int
	refused     int // calls refused for a stale token

	// faults
	streamErr   func(call int) error // error for the n-th StreamWAL call (from 1)
	streamCalls int
	stall       bool          // StreamWAL makes no progress
	perCall     uint64        // StreamWAL ships at most this many records (0: all asked)
	offerLSN    uint64        // PinBase(Snapshot) answers with this LSN instead (misbehaving primary)
	blockCall   int           // this StreamWAL call blocks until its context is done
	blocked     chan struct{} // closed when it starts blocking
	transferred int64
}

func newFakeIO(p *primary, r *replica, s *engine.Slots) *fakeIO {
	return &fakeIO{p: p, r: r, slots: s}
}

func (f *fakeIO) admit(tok engine.Token) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.slots.Check(tok); err != nil {
		f.refused++
		return err
	}
	f.sideEffects++
	return nil
}

func (f *fakeIO) counts() (pins, releases, sideEffects, refused int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.pins), f.releases, f.sideEffects, f.refused
}

// releasedOnce reports whether every pin was released exactly once.
func (f *fakeIO) releasedOnce() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, h := range f.pins {
		if h.released != 1 {
			return fmt.Errorf("pin %d (wal=%v from %d) released %d times", i, h.wal, h.from, h.released)
		}
	}
	return nil
}

func (f *fakeIO) newPin(wal bool, from uint64) *fakePin {
	h := &fakePin{io: f, wal: wal, from: from}
	f.mu.Lock()
	f.pins = append(f.pins, h)
	f.mu.Unlock()
	f.p.mu.Lock()
	f.p.pins = append(f.p.pins, h)
	f.p.mu.Unlock()
	return h
}

func (f *fakeIO) PinWAL(tok engine.Token, after uint64) (WALPin, error) {
	if err := f.admit(tok); err != nil {
		return nil, err
	}
	f.p.mu.Lock()
	tail := f.p.tail
	f.p.mu.Unlock()
	if after+1 < tail {
		return nil, fmt.Errorf("record %d recycled (tail %d): %w", after+1, tail, ErrRetentionLost)
	}
	return f.newPin(true, after+1), nil
}

func (f *fakeIO) StreamWAL(ctx context.Context, tok engine.Token, after, upTo uint64) (Progress, error) {
	if err := f.admit(tok); err != nil {
		return Progress{}, err
	}
	f.mu.Lock()
	f.streamCalls++
	call, stall, perCall, errf := f.streamCalls, f.stall, f.perCall, f.streamErr
	f.mu.Unlock()
	if call == f.blockCall {
		close(f.blocked)
		select {
		case <-ctx.Done():
			return Progress{Achieved: after}, fmt.Errorf("link: %w", ctx.Err())
		case <-time.After(10 * time.Second):
			return Progress{Achieved: after}, errors.New("context never cancelled")
		}
	}
	if errf != nil {
		if err := errf(call); err != nil {
			return Progress{}, err
		}
	}
	if err := ctx.Err(); err != nil {
		return Progress{}, err
	}
	f.r.mu.Lock()
	defer f.r.mu.Unlock()
	if after != f.r.durable {
		return Progress{}, fmt.Errorf("replica durable %d, stream asked from %d", f.r.durable, after)
	}
	if stall {
		return Progress{Achieved: after}, nil
	}
	if perCall > 0 {
		upTo = min(upTo, after+perCall)
	}
	f.p.mu.Lock()
	defer f.p.mu.Unlock()
	var pr Progress
	pr.Achieved = after
	for l := after + 1; l <= upTo; l++ {
		if l < f.p.tail {
			return pr, fmt.Errorf("record %d recycled: %w", l, ErrRetentionLost)
		}
		f.r.wal[l] = f.p.writes[l-1]
		f.r.durable = l
		f.r.epoch = f.p.epochOf(l)
		pr.Achieved = l
		pr.Bytes += recordBytes
	}
	return pr, nil
}

func (f *fakeIO) Frontier() uint64 {
	f.p.mu.Lock()
	defer f.p.mu.Unlock()
	return f.p.committed
}

func (f *fakeIO) Truncate(tok engine.Token, to uint64) error {
	if err := f.admit(tok); err != nil {
		return err
	}
	f.r.mu.Lock()
	defer f.r.mu.Unlock()
	if f.r.checkpoint > to {
		return fmt.Errorf("replica checkpoint %d beyond %d: %w", f.r.checkpoint, to, ErrTruncationUnsafe)
	}
	for l := range f.r.wal {
		if l > to {
			delete(f.r.wal, l)
		}
	}
	f.r.durable = min(f.r.durable, to)
	f.r.epoch = f.p.epoch
	return nil
}

func (f *fakeIO) MarkUntrusted(tok engine.Token) error {
	if err := f.admit(tok); err != nil {
		return err
	}
	f.r.mu.Lock()
	defer f.r.mu.Unlock()
	f.r.untrusted = true
	return nil
}

// entries serialises an image: 16 bytes per block (block, LSN), sorted.
func entries(img image) []byte {
	keys := make([]uint64, 0, len(img))
	for b := range img {
		keys = append(keys, b)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	out := make([]byte, 0, 16*len(keys))
	for _, b := range keys {
		out = binary.BigEndian.AppendUint64(out, b)
		out = binary.BigEndian.AppendUint64(out, img[b])
	}
	return out
}

func (f *fakeIO) PinBase(tok engine.Token, src engine.Source, lsn uint64) (Base, error) {
	if err := f.admit(tok); err != nil {
		return Base{}, err
	}
	f.p.mu.Lock()
	switch src {
	case engine.Snapshot:
		if f.offerLSN != 0 {
			lsn = f.offerLSN
		} else if !f.p.snaps[lsn] {
			f.p.mu.Unlock()
			return Base{}, fmt.Errorf("snapshot %d not present or untrusted: %w", lsn, ErrBaseUnavailable)
		}
	case engine.Full:
		lsn = f.p.checkpoint
	}
	f.p.mu.Unlock()
	data := entries(f.p.imageAt(lsn))
	return Base{Source: src, LSN: lsn, Size: int64(len(data)), SHA256: sha256.Sum256(data), Pin: f.newPin(false, lsn)}, nil
}

func (f *fakeIO) TransferBase(ctx context.Context, tok engine.Token, b Base, off, max int64) (int64, error) {
	if err := f.admit(tok); err != nil {
		return 0, err
	}
	data := entries(f.p.imageAt(b.LSN))
	n := min(max, int64(len(data))-off)
	n -= n % 16 // whole entries only
	if n == 0 && max > 0 {
		n = min(16, int64(len(data))-off)
	}
	f.r.mu.Lock()
	defer f.r.mu.Unlock()
	if off == 0 {
		f.r.extent, f.r.wal, f.r.durable, f.r.checkpoint = image{}, map[uint64]uint64{}, 0, 0
	}
	for i := off; i+16 <= off+n; i += 16 {
		f.r.extent[binary.BigEndian.Uint64(data[i:])] = binary.BigEndian.Uint64(data[i+8:])
	}
	f.mu.Lock()
	f.transferred += n
	f.mu.Unlock()
	return n, nil
}

func (f *fakeIO) VerifyBase(tok engine.Token, b Base) error {
	if err := f.admit(tok); err != nil {
		return err
	}
	f.r.mu.Lock()
	defer f.r.mu.Unlock()
	data := entries(f.r.extent)
	if int64(len(data)) != b.Size || sha256.Sum256(data) != b.SHA256 {
		return fmt.Errorf("replica copy %d bytes: %w", len(data), ErrBaseMismatch)
	}
	f.r.checkpoint, f.r.durable = b.LSN, b.LSN
	return nil
}

func (f *fakeIO) Commit(tok engine.Token, achieved uint64) error {
	if err := f.admit(tok); err != nil {
		return err
	}
	f.r.mu.Lock()
	defer f.r.mu.Unlock()
	if f.r.durable != achieved {
		return fmt.Errorf("commit at %d but replica durable %d", achieved, f.r.durable)
	}
	f.r.untrusted = false
	f.r.epoch = f.p.epoch
	return nil
}

func (f *fakeIO) io() IO { return IO{CatchUp: f, Rebuild: f, Truncate: f} }

// clock is a fake clock advanced by tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

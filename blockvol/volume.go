package blockvol

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang/glog"

	"github.com/weedblock/weedblock/blockdev"
)

var _ blockdev.Device = (*Volume)(nil)

const (
	// DefaultBlockSize is the block size Create uses when none is given.
	DefaultBlockSize = 4096
	// DefaultWALSize is the WAL size Create uses when none is given.
	DefaultWALSize = 64 << 20
	minWALSize     = 64 << 10
	// DefaultFlushInterval is how often the flusher looks for work when
	// nobody kicks it.
	DefaultFlushInterval = 100 * time.Millisecond
	// maxRecordData caps the data of one WAL record; larger writes become
	// several records.
	maxRecordData = 1 << 20
	// maxBatchRecords bounds one pwritev (two buffers per record plus a
	// pad stays within IOV_MAX).
	maxBatchRecords = 500
	// flushRoundBytes bounds the WAL bytes one flusher round copies, so
	// the checkpoint and the tail move in steps under heavy load.
	flushRoundBytes = 16 << 20
)

// Options configure Create and Open. The zero value is valid.
type Options struct {
	// FS is the file layer; nil means OSFS.
	FS FS
	// BlockSize (Create only): a power of two ≥ 512; 0 means 4096.
	BlockSize int
	// WALSize (Create only): bytes of WAL, a multiple of 4096 and at least
	// 64 KiB; 0 means 64 MiB.
	WALSize int64
	// FlushInterval: how often the flusher wakes by itself; 0 means 100ms.
	FlushInterval time.Duration
	// ManualFlush: the flusher runs only for Checkpoint calls and for
	// writers waiting for WAL room (never on its timer or at half-full).
	// For tests that need records to stay in the WAL.
	ManualFlush bool
	// Standalone: open unfenced, as primary of the persisted epoch (epoch 1
	// on a fresh volume), with no lease expiry. This is how a single
	// server (`weed block serve`) that has no master opens its volume; it
	// is exactly Unfence(max(epoch,1), RolePrimary, time.Time{}) after open.
	Standalone bool
}

// Volume is one local block volume. All methods are safe for concurrent use.
type Volume struct {
	path      string
	f         File
	bs        int
	size      int64
	walSize   int64
	extentOff int64
	recMax    int // max data bytes per record
	interval  time.Duration
	manual    bool

	// sbMu serializes superblock writes; sb is the last persisted copy.
	sbMu sync.Mutex
	// untrusted mirrors sb.untrusted for Status, which must not wait
	// for a superblock write (sbMu is held across its fdatasync).
	untrusted atomic.Bool
	// scanBufs holds *[]byte read buffers of scanHeld (up to scanSpan
	// plus one record), reused across scans.
	scanBufs sync.Pool
	sb       superblock
	sbSlot   int
	sbBuf    []byte

	// syncMu serializes fdatasync so each error is seen by exactly the
	// caller that must act on it.
	syncMu sync.Mutex
	// flushMu serializes flusher rounds, hold creation and WAL resets.
	flushMu sync.Mutex
	// extentBuf is applyToExtent's WAL read buffer (under flushMu, or
	// during open before the flusher runs).
	extentBuf []byte
	// tailMu: readers of WAL bytes hold it shared; moving the tail (which
	// lets writers reuse space) holds it exclusively.
	tailMu sync.RWMutex
	// fenceMu serializes role/epoch changes.
	fenceMu sync.Mutex

	mu   sync.Mutex
	cond *sync.Cond

	gen        uint64
	epoch      uint64
	role       Role
	fenced     bool
	leaseUntil time.Time

	head       uint64 // highest LSN appended
	written    uint64 // every LSN ≤ written is in the file
	durable    uint64 // every LSN ≤ durable is fsynced
	checkpoint uint64 // every LSN ≤ checkpoint is in the extent (durably)
	writeAbs   int64  // absolute WAL position after the last append
	writtenAbs int64  // absolute WAL bytes below this are in the file
	tailLSN    uint64 // oldest LSN still in the WAL
	tailAbs    int64  // its absolute position

	recs  recQueue
	terms []Term // term history up to the head (term.go)
	index map[uint64]uint64
	zeros []zeroRange

	pending  []*batch // batches not yet written; the last may be open
	spare    []*batch // the other half of the pending double buffer
	freeB    []*batch
	writing  bool
	syncing  bool  // a Flush caller is in fdatasync
	waitRoom int   // writers waiting for WAL space
	roomWant int64 // the furthest WAL end a waiting writer needs free

	holds map[*Hold]struct{}

	rebuilding bool // between BeginRebuild and InstallBase

	snap snapshots // the base snapshot (snapshot.go)

	failed error
	closed bool
	ops    sync.WaitGroup

	kick      chan struct{}
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error

	zeroBuf []byte // read-only zeros, one block or 4 KiB whichever larger
}

// Create makes a new volume file at path of size bytes and opens it.
func Create(path string, size int64, opts Options) (*Volume, error) {
	fs := opts.FS
	if fs == nil {
		fs = OSFS{}
	}
	bs := opts.BlockSize
	if bs == 0 {
		bs = DefaultBlockSize
	}
	if bs < 512 || bs > 1<<20 || bs&(bs-1) != 0 {
		return nil, fmt.Errorf("create %s: block size %d is not a power of two in [512, 1 MiB]", path, bs)
	}
	if size <= 0 || size%int64(bs) != 0 {
		return nil, fmt.Errorf("create %s: size %d is not a positive multiple of block size %d", path, size, bs)
	}
	walSize := opts.WALSize
	if walSize == 0 {
		walSize = DefaultWALSize
	}
	if walSize < minWALSize || walSize%4096 != 0 || walSize > 1<<40 {
		return nil, fmt.Errorf("create %s: WAL size %d must be a multiple of 4096 in [64 KiB, 1 TiB]", path, walSize)
	}
	if int64(bs)*4+8192 > walSize {
		return nil, fmt.Errorf("create %s: WAL size %d too small for block size %d", path, walSize, bs)
	}
	sb := superblock{
		version:      formatVersion,
		seq:          1,
		size:         uint64(size),
		blockSize:    uint32(bs),
		walOffset:    walOffset,
		walSize:      uint64(walSize),
		extentOffset: extentOffsetFor(uint64(walSize), uint32(bs)),
		tailLSN:      1,
		generation:   1,
		clean:        true, // an empty log that ends at LSN 0
	}
	if err := sb.validate(); err != nil {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	f, err := fs.Create(path)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	fail := func(err error) (*Volume, error) {
		f.Close()
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	if err := f.Truncate(int64(sb.extentOffset) + size); err != nil {
		return fail(err)
	}
	buf := make([]byte, superblockSize)
	for slot := 0; slot < superblockCopies; slot++ {
		sb.seq = uint64(slot + 1)
		sb.encode(buf)
		if _, err := f.WriteAt(buf, int64(slot*superblockSize)); err != nil {
			return fail(err)
		}
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	v, err := openFile(path, f, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	// Snapshot files left by an earlier volume at this path are not ours.
	if err := v.dropStaleSnapshot(); err != nil {
		v.Close()
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	return v, nil
}

// Open opens an existing volume, recovering its WAL. It opens fenced
// unless opts.Standalone is set.
func Open(path string, opts Options) (*Volume, error) {
	fs := opts.FS
	if fs == nil {
		fs = OSFS{}
	}
	f, err := fs.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	v, err := openFile(path, f, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	return v, nil
}

func openFile(path string, f File, opts Options) (*Volume, error) {
	fsize, err := f.Size()
	if err != nil {
		return nil, fmt.Errorf("open %s: size: %w", path, err)
	}
	if fsize < walOffset {
		return nil, fmt.Errorf("open %s: %w: %d bytes, superblocks need %d", path, ErrTruncated, fsize, walOffset)
	}
	raw := make([]byte, walOffset)
	if _, err := f.ReadAt(raw, 0); err != nil {
		return nil, fmt.Errorf("open %s: read superblocks: %w", path, err)
	}
	sb, slot, err := pickSuperblock(raw[:superblockSize], raw[superblockSize:])
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if need := int64(sb.extentOffset + sb.size); fsize < need {
		return nil, fmt.Errorf("open %s: %w: %d bytes, layout needs %d", path, ErrTruncated, fsize, need)
	}
	v := &Volume{
		path:      path,
		f:         f,
		bs:        int(sb.blockSize),
		size:      int64(sb.size),
		walSize:   int64(sb.walSize),
		extentOff: int64(sb.extentOffset),
		interval:  opts.FlushInterval,
		manual:    opts.ManualFlush,
		sb:        sb,
		sbSlot:    slot,
		sbBuf:     make([]byte, superblockSize),
		gen:       sb.generation,
		epoch:     sb.epoch,
		role:      sb.role,
		fenced:    true,
		index:     make(map[uint64]uint64),
		holds:     make(map[*Hold]struct{}),
		kick:      make(chan struct{}, 1),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
		zeroBuf:   make([]byte, max(4096, int(sb.blockSize))),
	}
	v.untrusted.Store(sb.untrusted)
	v.cond = sync.NewCond(&v.mu)
	v.snap.fs = opts.FS
	if v.snap.fs == nil {
		v.snap.fs = OSFS{}
	}
	if v.interval <= 0 {
		v.interval = DefaultFlushInterval
	}
	v.recMax = maxRecordData
	if lim := int(v.walSize/4) - 8192; lim < v.recMax {
		v.recMax = lim
	}
	v.recMax = v.recMax / v.bs * v.bs
	if v.recMax < v.bs {
		v.recMax = v.bs
	}
	if err := v.recover(); err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	go v.flusherLoop()
	if opts.Standalone {
		epoch := max(v.epoch, 1)
		if err := v.Unfence(epoch, RolePrimary, time.Time{}); err != nil {
			v.Close()
			return nil, fmt.Errorf("open %s: unfence standalone: %w", path, err)
		}
	}
	return v, nil
}

// Path is the file the volume lives in.
func (v *Volume) Path() string { return v.path }

// BlockSize is the logical block size in bytes.
func (v *Volume) BlockSize() int { return v.bs }

// Size is the capacity in bytes.
func (v *Volume) Size() int64 { return v.size }

// beginOp registers an operation; it fails once Close has started.
func (v *Volume) beginOpLocked() error {
	if v.closed {
		return fmt.Errorf("%s: %w", v.path, blockdev.ErrClosed)
	}
	v.ops.Add(1)
	return nil
}

// failLocked makes the volume read-only for good after a fatal I/O error.
func (v *Volume) failLocked(err error) {
	if v.failed == nil {
		v.failed = err
		glog.Errorf("blockvol %s: fatal I/O error, volume is now read-only: %v", v.path, err)
	}
	v.cond.Broadcast()
}

func (v *Volume) fail(err error) {
	v.mu.Lock()
	v.failLocked(err)
	v.mu.Unlock()
}

func (v *Volume) failedErrLocked() error {
	return fmt.Errorf("%s: %w: %w: %v", v.path, blockdev.ErrReadOnly, ErrUnhealthy, v.failed)
}

// syncFile is the only caller of File.Sync after open. Syncs are serialized
// and a failure is final: later calls fail without touching the file.
func (v *Volume) syncFile() error { return v.syncWAL(0) }

// syncWAL is syncFile for a caller that only needs WAL records up to lsn
// durable (lsn 0: always sync). Every sync makes the records written
// before it started durable (one file: fdatasync covers them), so a
// FLUSH that queued behind another sync (the flusher's extent sync, say)
// finds its records durable once it gets the turn and skips its own.
func (v *Volume) syncWAL(lsn uint64) error {
	v.syncMu.Lock()
	defer v.syncMu.Unlock()
	v.mu.Lock()
	failed, w, gen := v.failed, v.written, v.gen
	covered := lsn > 0 && v.durable >= lsn
	v.mu.Unlock()
	if failed != nil {
		return fmt.Errorf("%s: %w: %v", v.path, ErrUnhealthy, failed)
	}
	if covered {
		return nil
	}
	if err := v.f.Sync(); err != nil {
		err = fmt.Errorf("fdatasync %s: %w", v.path, err)
		v.fail(err)
		return err
	}
	v.mu.Lock()
	if v.gen == gen && w > v.durable && v.failed == nil {
		v.durable = w
		v.cond.Broadcast()
	}
	v.mu.Unlock()
	return nil
}

// persistSuperblock applies mut to a copy of the persisted superblock and
// writes it to the other slot, then fsyncs. On failure the volume fails.
func (v *Volume) persistSuperblock(mut func(*superblock)) error {
	v.sbMu.Lock()
	defer v.sbMu.Unlock()
	next := v.sb
	mut(&next)
	next.version = formatVersion // a version 1 file is upgraded by its first write
	next.seq = v.sb.seq + 1
	slot := 1 - v.sbSlot
	next.encode(v.sbBuf)
	if _, err := v.f.WriteAt(v.sbBuf, int64(slot*superblockSize)); err != nil {
		err = fmt.Errorf("write superblock %s: %w", v.path, err)
		v.fail(err)
		return err
	}
	if err := v.syncFile(); err != nil {
		return err
	}
	v.sb, v.sbSlot = next, slot
	v.untrusted.Store(next.untrusted)
	return nil
}

// Close stops the flusher, syncs what was written and closes the file.
// It waits for operations in progress; it is idempotent.
func (v *Volume) Close() error {
	v.closeOnce.Do(func() {
		v.mu.Lock()
		v.closed = true
		v.cond.Broadcast()
		v.mu.Unlock()
		v.ops.Wait()
		close(v.stop)
		<-v.done
		v.mu.Lock()
		for len(v.pending) > 0 && v.failed == nil {
			v.writePendingLocked()
		}
		failed := v.failed
		for h := range v.holds {
			v.revokeLocked(h, fmt.Errorf("%w: volume closed", ErrHoldRevoked))
		}
		v.mu.Unlock()
		var err error
		if failed == nil {
			err = v.syncFile()
		}
		if err == nil && failed == nil {
			v.mu.Lock()
			head := v.head
			v.mu.Unlock()
			err = v.persistSuperblock(func(s *superblock) { s.clean, s.cleanHead = true, head })
		}
		if cerr := v.f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close %s: %w", v.path, cerr)
		}
		v.closeErr = err
	})
	return v.closeErr
}

// Status is a snapshot of the volume's state.
type Status struct {
	Size        int64
	BlockSize   int
	Head        uint64 // highest LSN appended
	Durable     uint64 // highest LSN fsynced
	Checkpoint  uint64 // highest LSN whose effects are all in the extent
	Tail        uint64 // lowest LSN still readable from the WAL
	Generation  uint64
	Epoch       uint64
	Role        Role
	Fenced      bool
	LeaseUntil  time.Time // zero: no expiry
	Healthy     bool
	Err         error // the fatal error when !Healthy
	Untrusted   bool
	WALSize     int64
	WALUsed     int64 // bytes between tail and head
	Holds       int
	DirtyBlocks int
}

// Status returns a snapshot.
func (v *Volume) Status() Status {
	untrusted := v.untrusted.Load()
	v.mu.Lock()
	defer v.mu.Unlock()
	return Status{
		Size:        v.size,
		BlockSize:   v.bs,
		Head:        v.head,
		Durable:     v.durable,
		Checkpoint:  v.checkpoint,
		Tail:        v.tailLSN,
		Generation:  v.gen,
		Epoch:       v.epoch,
		Role:        v.role,
		Fenced:      v.fenced,
		LeaseUntil:  v.leaseUntil,
		Healthy:     v.failed == nil,
		Err:         v.failed,
		Untrusted:   untrusted,
		WALSize:     v.walSize,
		WALUsed:     v.writeAbs - v.tailAbs,
		Holds:       len(v.holds),
		DirtyBlocks: len(v.index),
	}
}

// SetUntrusted durably marks (or clears) the volume as an incomplete base
// being rebuilt.
func (v *Volume) SetUntrusted(untrusted bool) error {
	if err := v.enter(); err != nil {
		return err
	}
	defer v.ops.Done()
	return v.persistSuperblock(func(s *superblock) { s.untrusted = untrusted })
}

// Config returns the persisted config blob (membership, durability).
func (v *Volume) Config() []byte {
	v.sbMu.Lock()
	defer v.sbMu.Unlock()
	return append([]byte(nil), v.sb.config...)
}

// SetConfig durably stores an opaque config blob of at most MaxConfigSize.
func (v *Volume) SetConfig(cfg []byte) error {
	if len(cfg) > MaxConfigSize {
		return fmt.Errorf("%s: config of %d bytes exceeds %d", v.path, len(cfg), MaxConfigSize)
	}
	if err := v.enter(); err != nil {
		return err
	}
	defer v.ops.Done()
	c := append([]byte(nil), cfg...)
	return v.persistSuperblock(func(s *superblock) { s.config = c })
}

func (v *Volume) enter() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.beginOpLocked()
}

// kickFlusher wakes the flusher without blocking.
func (v *Volume) kickFlusher() {
	select {
	case v.kick <- struct{}{}:
	default:
	}
}

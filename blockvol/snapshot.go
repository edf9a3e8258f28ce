package blockvol

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang/glog"
	"golang.org/x/sys/unix"
)

// Base snapshots (DESIGN §4, §6): one exact image of the volume at an LSN,
// kept beside the volume file so a rebuild can ship it instead of the live
// extent, followed by the WAL tail after it.
//
// Files, next to the volume file <vol>:
//
//	<vol>.snap     manifest: two 4 KiB slots (A/B), the valid one with the
//	               highest sequence number wins (like the superblock)
//	<vol>.snap.0   image slot 0: exactly size bytes, raw, sparse
//	<vol>.snap.1   image slot 1
//
// CreateSnapshot (snapshot_cow.go: copy-on-write, the flusher keeps
// running) writes the image slot the current manifest does not name,
// fsyncs it, and only then writes the manifest slot that names it (one
// pwrite of 4 KiB + fsync). A crash at any point leaves the old manifest
// (naming the untouched old image) or the new one (naming a durable image):
// never a torn snapshot. Everything goes through the volume's FS, so the
// faultfs crash tests apply.
//
// Manifest slot layout (little endian, 4096 bytes):
//
//	0    magic "WBSNAP\x00\x01"
//	8    version u32 (1), flags u32 (bit 0: a snapshot is present)
//	16   seq u64
//	24   lsn u64 (every record ≤ lsn is in the image, none beyond)
//	32   size u64
//	40   blockSize u32, image slot u32
//	48   generation u64 (the volume's WAL generation when taken)
//	56   epoch u64
//	64   sha256 [32] (of the size image bytes)
//	96   created unix nanoseconds i64
//	4092 crc u32 (CRC32C of bytes 0..4092)

// Errors of the snapshot API.
var (
	// ErrNoSnapshot: the volume has no base snapshot.
	ErrNoSnapshot = errors.New("blockvol: no base snapshot")
	// ErrSnapshotUntrusted: the snapshot's manifest is corrupt, does not
	// fit the volume, or its image does not hash to the manifest. It is
	// never used; CreateSnapshot or DeleteSnapshot replaces it.
	ErrSnapshotUntrusted = errors.New("blockvol: base snapshot untrusted")
	// ErrSnapshotAborted: CreateSnapshot gave up (the volume is being
	// rebuilt, closed or failed, or its log was reset meanwhile). The
	// previous snapshot, if any, is unchanged.
	ErrSnapshotAborted = errors.New("blockvol: snapshot creation aborted")
	// ErrSnapshotBusy: the image slot a new snapshot would overwrite is
	// still open by a reader of an older snapshot.
	ErrSnapshotBusy = errors.New("blockvol: snapshot image still in use")
)

const (
	snapSlotSize  = 4096
	snapVersion   = 1
	snapPresent   = 1
	snapCopyChunk = 1 << 20
)

var snapMagic = [8]byte{'W', 'B', 'S', 'N', 'A', 'P', 0, 1}

// SnapshotInfo describes the base snapshot.
type SnapshotInfo struct {
	LSN        uint64 // every record ≤ LSN is in the image, none beyond
	Size       int64
	BlockSize  int
	SHA256     [32]byte // of the Size image bytes, from the manifest
	Generation uint64   // the volume's WAL generation when taken
	Epoch      uint64
	Created    time.Time
	Seq        uint64 // manifest sequence number: changes with every replacement
	// Retained: the WAL still holds every record after LSN (the snapshot's
	// own hold keeps them, within half the WAL) — see BaseFor.
	Retained bool
	// Trusted: the manifest is valid and fits the volume, and the image has
	// not failed verification. OpenSnapshot re-verifies the image.
	Trusted bool
	Err     error // why it is untrusted
}

// BaseFor reports whether the snapshot can be the base of a rebuild of a
// volume whose WAL tail (lowest retained LSN) is tail: it is trusted and the
// WAL still holds every record after it.
func (i SnapshotInfo) BaseFor(tail uint64) bool {
	return i.Trusted && i.LSN+1 >= tail
}

// manifest is one decoded manifest slot.
type manifest struct {
	seq        uint64
	present    bool
	lsn        uint64
	size       uint64
	blockSize  uint32
	image      uint32
	generation uint64
	epoch      uint64
	sum        [32]byte
	created    int64
}

func (m *manifest) encode(b []byte) {
	clear(b[:snapSlotSize])
	copy(b[0:8], snapMagic[:])
	binary.LittleEndian.PutUint32(b[8:], snapVersion)
	var flags uint32
	if m.present {
		flags |= snapPresent
	}
	binary.LittleEndian.PutUint32(b[12:], flags)
	binary.LittleEndian.PutUint64(b[16:], m.seq)
	binary.LittleEndian.PutUint64(b[24:], m.lsn)
	binary.LittleEndian.PutUint64(b[32:], m.size)
	binary.LittleEndian.PutUint32(b[40:], m.blockSize)
	binary.LittleEndian.PutUint32(b[44:], m.image)
	binary.LittleEndian.PutUint64(b[48:], m.generation)
	binary.LittleEndian.PutUint64(b[56:], m.epoch)
	copy(b[64:96], m.sum[:])
	binary.LittleEndian.PutUint64(b[96:], uint64(m.created))
	binary.LittleEndian.PutUint32(b[4092:], crc32c(b[:4092]))
}

// decodeManifest decodes one slot. empty: the slot was never written (all
// zeros), which is not corruption.
func decodeManifest(b []byte) (m manifest, empty bool, err error) {
	if isZero(b) {
		return m, true, nil
	}
	if string(b[0:8]) != string(snapMagic[:]) {
		return m, false, errors.New("bad magic")
	}
	if want, got := crc32c(b[:4092]), binary.LittleEndian.Uint32(b[4092:]); want != got {
		return m, false, fmt.Errorf("crc %#x, computed %#x", got, want)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != snapVersion {
		return m, false, fmt.Errorf("manifest version %d, this build reads %d", v, snapVersion)
	}
	m.present = binary.LittleEndian.Uint32(b[12:])&snapPresent != 0
	m.seq = binary.LittleEndian.Uint64(b[16:])
	m.lsn = binary.LittleEndian.Uint64(b[24:])
	m.size = binary.LittleEndian.Uint64(b[32:])
	m.blockSize = binary.LittleEndian.Uint32(b[40:])
	m.image = binary.LittleEndian.Uint32(b[44:])
	m.generation = binary.LittleEndian.Uint64(b[48:])
	m.epoch = binary.LittleEndian.Uint64(b[56:])
	copy(m.sum[:], b[64:96])
	m.created = int64(binary.LittleEndian.Uint64(b[96:]))
	if m.image > 1 {
		return m, false, fmt.Errorf("image slot %d", m.image)
	}
	return m, false, nil
}

// snapshots is the volume's base-snapshot state.
type snapshots struct {
	fs FS
	// createMu serializes CreateSnapshot and DeleteSnapshot (held for a
	// whole creation); mu guards the fields below and is held briefly.
	createMu sync.Mutex
	mu       sync.Mutex
	loaded   bool
	cur      manifest // the winning manifest slot (cur.present: a snapshot)
	curSlot  int      // its slot; -1 when neither slot is valid
	corrupt  error    // no slot is valid although one was written
	bad      error    // the current image failed verification
	// failed: a manifest write failed, no more snapshot changes. Guarded
	// by failMu alone (it is set under flushMu).
	failMu  sync.Mutex
	failed  error
	files   [2]File // open image handles, shared by readers
	readers [2]int
	// hold keeps the WAL after the snapshot's LSN, so that it stays a
	// rebuild base; revoked (like any hold) over its budget or when it
	// blocks writers. nil when none could be taken.
	hold *Hold

	cow      snapCOW         // the image being written by CreateSnapshot
	deletes  atomic.Int64    // DeleteSnapshot calls: a creation in progress gives up
	copyHook func(off int64) // tests: called before each chunk is copied
}

func (s *snapshots) failedErr() error {
	s.failMu.Lock()
	defer s.failMu.Unlock()
	return s.failed
}

func (v *Volume) manifestPath() string   { return SnapshotFiles(v.path)[0] }
func (v *Volume) imagePath(i int) string { return SnapshotFiles(v.path)[1+i] }

// loadSnapLocked reads the manifest once. Callers hold v.snap.mu.
func (v *Volume) loadSnapLocked() {
	s := &v.snap
	if s.loaded {
		return
	}
	s.loaded, s.curSlot, s.cur, s.corrupt = true, -1, manifest{}, nil
	f, err := s.fs.Open(v.manifestPath())
	if errors.Is(err, iofs.ErrNotExist) {
		return
	}
	if err != nil {
		s.corrupt = fmt.Errorf("open manifest %s: %w", v.manifestPath(), err)
		return
	}
	defer f.Close()
	raw := make([]byte, 2*snapSlotSize)
	n, err := f.ReadAt(raw, 0)
	if err != nil && err != io.EOF {
		s.corrupt = fmt.Errorf("read manifest %s: %w", v.manifestPath(), err)
		return
	}
	clear(raw[n:])
	var errs [2]error
	written := false
	for i := 0; i < 2; i++ {
		m, empty, err := decodeManifest(raw[i*snapSlotSize : (i+1)*snapSlotSize])
		if empty {
			continue
		}
		written = true
		if err != nil {
			errs[i] = err
			continue
		}
		if s.curSlot < 0 || m.seq > s.cur.seq {
			s.cur, s.curSlot = m, i
		}
	}
	if s.curSlot < 0 && written {
		s.corrupt = fmt.Errorf("manifest %s: slot A: %v; slot B: %v", v.manifestPath(), errs[0], errs[1])
	}
	if s.cur.present && s.hold == nil {
		// Keep the WAL after the snapshot if it still holds it (after a
		// restart it usually does not: the snapshot is then no base until
		// a new one is taken).
		if h, err := v.Hold(s.cur.lsn+1, v.snapHoldBudget()); err == nil {
			s.hold = h
		}
	}
}

// snapHoldBudget is the WAL a snapshot's hold may keep: half the WAL.
func (v *Volume) snapHoldBudget() int64 { return v.walSize / 2 }

// infoLocked describes the current snapshot; ok is false when there is none
// (and no corrupt manifest either).
func (v *Volume) infoLocked() (SnapshotInfo, bool) {
	s := &v.snap
	v.loadSnapLocked()
	if s.corrupt != nil {
		return SnapshotInfo{Err: fmt.Errorf("%s: %w: %w", v.path, ErrSnapshotUntrusted, s.corrupt)}, true
	}
	if !s.cur.present {
		return SnapshotInfo{}, false
	}
	m := s.cur
	info := SnapshotInfo{
		LSN: m.lsn, Size: int64(m.size), BlockSize: int(m.blockSize), SHA256: m.sum,
		Generation: m.generation, Epoch: m.epoch, Created: time.Unix(0, m.created), Seq: m.seq,
	}
	v.mu.Lock()
	cp, gen, epoch := v.checkpoint, v.gen, v.epoch
	info.Retained = v.tailLSN <= m.lsn+1
	v.mu.Unlock()
	untrusted := v.untrusted.Load() // sbMu may be held across an fsync
	var why error
	switch {
	case s.bad != nil:
		why = s.bad
	case s.failedErr() != nil:
		why = fmt.Errorf("a manifest write failed: %w", s.failedErr())
	case int64(m.size) != v.size || int(m.blockSize) != v.bs:
		why = fmt.Errorf("image of %d bytes in %d-byte blocks for a volume of %d bytes in %d-byte blocks", m.size, m.blockSize, v.size, v.bs)
	case m.lsn > cp:
		why = fmt.Errorf("snapshot at %d beyond the volume's checkpoint %d", m.lsn, cp)
	case m.generation > gen || m.epoch > epoch:
		why = fmt.Errorf("snapshot of generation %d epoch %d, volume at generation %d epoch %d", m.generation, m.epoch, gen, epoch)
	case untrusted:
		why = errors.New("the volume is being rebuilt")
	}
	if why != nil {
		info.Err = fmt.Errorf("%s: snapshot %d: %w: %w", v.path, m.lsn, ErrSnapshotUntrusted, why)
	} else {
		info.Trusted = true
	}
	return info, true
}

// Snapshot describes the base snapshot without reading its image; ok is
// false when there is none. A snapshot whose manifest is corrupt is
// reported (ok) with Trusted false and Err saying why.
func (v *Volume) Snapshot() (SnapshotInfo, bool) {
	v.snap.mu.Lock()
	defer v.snap.mu.Unlock()
	return v.infoLocked()
}

// SnapshotBase returns the snapshot when it can be a rebuild's base now:
// trusted, and the WAL still holds every record after its LSN.
func (v *Volume) SnapshotBase() (SnapshotInfo, bool) {
	info, ok := v.Snapshot()
	if !ok {
		return info, false
	}
	v.mu.Lock()
	tail := v.tailLSN
	v.mu.Unlock()
	return info, info.BaseFor(tail)
}

// commitManifest writes the manifest of a new snapshot under flushMu, so
// that a log reset (TruncateWAL, BeginRebuild, InstallBase) cannot slip
// between the generation check and the manifest.
func (v *Volume) commitManifest(m *manifest, slot int) error {
	v.flushMu.Lock()
	defer v.flushMu.Unlock()
	v.mu.Lock()
	gen := v.gen
	v.mu.Unlock()
	if gen != m.generation {
		return fmt.Errorf("%s: create snapshot at %d: the log was reset meanwhile (generation %d → %d): %w", v.path, m.lsn, m.generation, gen, ErrSnapshotAborted)
	}
	if err := v.writeManifest(m, slot); err != nil {
		return fmt.Errorf("%s: create snapshot at %d: %w", v.path, m.lsn, err)
	}
	return nil
}

// writeManifest writes m into manifest slot and fsyncs. A failure is final
// for snapshot changes in this process: what reached the disk is unknown.
func (v *Volume) writeManifest(m *manifest, slot int) error {
	s := &v.snap
	f, err := s.fs.Open(v.manifestPath())
	if errors.Is(err, iofs.ErrNotExist) {
		f, err = s.fs.Create(v.manifestPath())
	}
	if err != nil {
		return fmt.Errorf("open manifest: %w", err)
	}
	defer f.Close()
	buf := make([]byte, snapSlotSize)
	m.encode(buf)
	fail := func(err error) error {
		s.failMu.Lock()
		s.failed = err
		s.failMu.Unlock()
		glog.Errorf("blockvol %s: snapshot manifest write failed, snapshots are untrusted until reopen: %v", v.path, err)
		return err
	}
	if _, err := f.WriteAt(buf, int64(slot*snapSlotSize)); err != nil {
		return fail(fmt.Errorf("write manifest %s: %w", v.manifestPath(), err))
	}
	if err := f.Sync(); err != nil {
		return fail(fmt.Errorf("fsync manifest %s: %w", v.manifestPath(), err))
	}
	return nil
}

// DeleteSnapshot durably removes the base snapshot (also a corrupt one):
// a manifest saying "none" first, then the images are emptied. Readers
// already open keep reading their image.
func (v *Volume) DeleteSnapshot() error {
	if err := v.enter(); err != nil {
		return err
	}
	defer v.ops.Done()
	s := &v.snap
	s.deletes.Add(1) // a CreateSnapshot in progress stops copying
	s.createMu.Lock()
	defer s.createMu.Unlock()
	s.mu.Lock()
	v.loadSnapLocked()
	cur, curSlot, corrupt, failed := s.cur, s.curSlot, s.corrupt, s.failedErr()
	s.mu.Unlock()
	if failed != nil {
		return fmt.Errorf("%s: delete snapshot: an earlier manifest write failed: %w", v.path, failed)
	}
	if !cur.present && corrupt == nil {
		return nil
	}
	m := manifest{seq: cur.seq + 1}
	if corrupt != nil {
		m.seq = 1 // no slot is valid: any sequence number wins
	}
	slot := 0
	if curSlot >= 0 {
		slot = 1 - curSlot
	}
	if err := v.writeManifest(&m, slot); err != nil {
		return fmt.Errorf("%s: delete snapshot: %w", v.path, err)
	}
	s.mu.Lock()
	s.cur, s.curSlot, s.corrupt, s.bad = m, slot, nil, nil
	if s.hold != nil {
		s.hold.Release()
		s.hold = nil
	}
	var free []int
	for i := 0; i < 2; i++ {
		if s.readers[i] == 0 {
			free = append(free, i)
		}
	}
	s.mu.Unlock()
	// Give the space back. Not needed for safety: the manifest says none.
	v.emptyImages(free...)
	return nil
}

// emptyImages truncates image slots no manifest names any more and no
// reader has open, to give their space back. Callers hold createMu (no
// snapshot can be created into them meanwhile).
func (v *Volume) emptyImages(slots ...int) {
	for _, i := range slots {
		f, err := v.snap.fs.Open(v.imagePath(i))
		if err != nil {
			continue
		}
		if err := f.Truncate(0); err != nil {
			glog.Warningf("blockvol %s: empty snapshot image %s: %v", v.path, v.imagePath(i), err)
		}
		f.Close()
	}
}

// dropStaleSnapshot durably deletes a snapshot found beside a volume just
// created: it belongs to an earlier volume at the same path.
func (v *Volume) dropStaleSnapshot() error {
	v.snap.mu.Lock()
	v.loadSnapLocked()
	stale := v.snap.cur.present || v.snap.corrupt != nil
	v.snap.mu.Unlock()
	if !stale {
		return nil
	}
	glog.Warningf("blockvol %s: deleting the base snapshot of an earlier volume at this path", v.path)
	return v.DeleteSnapshot()
}

// SnapshotFiles lists the files the base snapshot of the volume at path
// may use (whether or not they exist), for a caller that deletes the
// volume: remove them with it.
func SnapshotFiles(path string) []string {
	return []string{path + ".snap", path + ".snap.0", path + ".snap.1"}
}

// SnapshotReader reads the image of one base snapshot. It stays valid
// (reading that image) when the snapshot is replaced or deleted meanwhile,
// until Close; an image being read is never overwritten (ErrSnapshotBusy).
type SnapshotReader struct {
	v    *Volume
	slot int
	f    File
	info SnapshotInfo
	once sync.Once
}

// Info is the manifest of the snapshot being read.
func (r *SnapshotReader) Info() SnapshotInfo { return r.info }

// ReadAt reads image bytes (io.ReaderAt).
func (r *SnapshotReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("snapshot read at %d: negative offset", off)
	}
	if off >= r.info.Size {
		return 0, io.EOF
	}
	want := len(p)
	if rest := r.info.Size - off; int64(want) > rest {
		want = int(rest)
	}
	n, err := r.f.ReadAt(p[:want], off)
	if n == want {
		if want < len(p) {
			return n, io.EOF
		}
		return n, nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF // the image file is shorter than its manifest
	}
	return n, fmt.Errorf("snapshot read %d bytes at %d: %w", want, off, err)
}

// Close releases the image. Idempotent.
func (r *SnapshotReader) Close() error {
	var err error
	r.once.Do(func() {
		s := &r.v.snap
		s.mu.Lock()
		defer s.mu.Unlock()
		s.readers[r.slot]--
		if s.readers[r.slot] == 0 && s.files[r.slot] != nil {
			err = s.files[r.slot].Close()
			s.files[r.slot] = nil
		}
	})
	return err
}

// OpenSnapshot opens the base snapshot for reading after verifying it: the
// manifest must be valid and fit the volume, and the image must have the
// manifest's size and SHA-256 (it is read once in full). A snapshot failing
// that is marked untrusted (Snapshot reports it) and never opened:
// ErrSnapshotUntrusted. ErrNoSnapshot when there is none.
func (v *Volume) OpenSnapshot() (*SnapshotReader, error) {
	return v.openSnapshot(true)
}

// OpenSnapshotStreaming opens the base snapshot like OpenSnapshot but checks
// only the manifest and the image's size, not its SHA-256: for a caller
// that reads the image once in order, hashes every byte it reads and
// trusts nothing before comparing the digest with Info().SHA256 (calling
// MarkSnapshotBad when it differs) — it saves a full read of the image.
func (v *Volume) OpenSnapshotStreaming() (*SnapshotReader, error) {
	return v.openSnapshot(false)
}

func (v *Volume) openSnapshot(full bool) (*SnapshotReader, error) {
	s := &v.snap
	s.mu.Lock()
	info, ok := v.infoLocked()
	if !ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("%s: %w", v.path, ErrNoSnapshot)
	}
	if !info.Trusted {
		s.mu.Unlock()
		return nil, info.Err
	}
	slot := int(s.cur.image)
	if s.files[slot] == nil {
		f, err := s.fs.Open(v.imagePath(slot))
		if err != nil {
			err = fmt.Errorf("%s: open snapshot image: %w: %w", v.path, ErrSnapshotUntrusted, err)
			s.bad = err
			s.mu.Unlock()
			return nil, err
		}
		s.files[slot] = f
	}
	s.readers[slot]++
	r := &SnapshotReader{v: v, slot: slot, f: s.files[slot], info: info}
	seq := s.cur.seq
	s.mu.Unlock()

	if err := r.verify(full); err != nil {
		r.Close()
		err = fmt.Errorf("%s: snapshot %d: %w: %w", v.path, info.LSN, ErrSnapshotUntrusted, err)
		s.mu.Lock()
		if s.cur.seq == seq {
			s.bad = err
		}
		s.mu.Unlock()
		glog.Warningf("blockvol %s: base snapshot untrusted: %v", v.path, err)
		return nil, err
	}
	return r, nil
}

// verify checks the image's size and (full) SHA-256 against the manifest.
func (r *SnapshotReader) verify(full bool) error {
	size, err := r.f.Size()
	if err != nil {
		return fmt.Errorf("image size: %w", err)
	}
	if size != r.info.Size {
		return fmt.Errorf("image has %d bytes, manifest %d", size, r.info.Size)
	}
	if !full {
		return nil
	}
	h := sha256.New()
	buf := make([]byte, snapCopyChunk)
	for off := int64(0); off < r.info.Size; {
		n, err := r.ReadAt(buf, off)
		if n > 0 {
			h.Write(buf[:n])
			off += int64(n)
		}
		if err != nil && !(err == io.EOF && off == r.info.Size) {
			return fmt.Errorf("read image: %w", err)
		}
	}
	var got [32]byte
	copy(got[:], h.Sum(nil))
	if got != r.info.SHA256 {
		return fmt.Errorf("image SHA-256 %x, manifest %x", got, r.info.SHA256)
	}
	return nil
}

// MarkSnapshotBad records that the current snapshot (manifest seq) failed a
// check outside this package (for example a transfer that hashed
// differently): it is reported untrusted and never opened again until
// replaced.
func (v *Volume) MarkSnapshotBad(seq uint64, why error) {
	s := &v.snap
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur.present && s.cur.seq == seq && s.bad == nil {
		s.bad = fmt.Errorf("%s: snapshot %d: %w: %w", v.path, s.cur.lsn, ErrSnapshotUntrusted, why)
	}
}

// dataSeeker is a File that can find data and holes (SEEK_DATA/SEEK_HOLE),
// so a snapshot skips the extent's holes without reading them.
type dataSeeker interface {
	// seekData returns the first data offset ≥ off; ok is false when
	// there is none before the end.
	seekData(off int64) (pos int64, ok bool, err error)
	// seekHole returns the first hole offset ≥ off (the end counts).
	seekHole(off int64) (int64, error)
}

func (o *osFile) seekData(off int64) (int64, bool, error) {
	for {
		pos, err := unix.Seek(o.fd, off, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENXIO):
			return 0, false, nil
		case err != nil:
			return 0, false, err
		}
		return pos, true, nil
	}
}

func (o *osFile) seekHole(off int64) (int64, error) {
	for {
		pos, err := unix.Seek(o.fd, off, unix.SEEK_HOLE)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return pos, err
	}
}

package faultfs

import (
	"errors"
	"fmt"
	iofs "io/fs"
	"math/rand/v2"
	"sort"
	"sync"
	"syscall"
)

// ErrCrashed is returned by every operation on a handle that was open when
// the file system crashed, and by the Sync that was turned into a crash.
var ErrCrashed = errors.New("faultfs: file system crashed; handle is dead")

// FS is an in-memory file system whose files lose unsynced operations at a
// crash. The zero value is not usable; call New. All methods are safe for
// concurrent use.
type FS struct {
	mu    sync.Mutex
	files map[string]*node
	boot  uint64 // incremented by every crash; handles of older boots are dead

	syncs   int // Sync calls so far, all files, all boots
	writes  int // WriteAt/WritevAt calls so far, all files, all boots
	reads   int // ReadAt calls so far, all files, all boots
	crashes int

	crashAt     int // Sync number that crashes instead (0: none)
	crashAtMode CrashMode
	crashAtSeed uint64

	failSync   map[int]error // Sync number -> injected error
	stickySync bool          // after a failed Sync, later Syncs fail too
	writeFault *writeFault
	readFault  *writeFault // short is unused
}

type writeFault struct {
	from, count int // write numbers [from, from+count); count 0: no end
	err         error
	short       bool
}

// node is one file: its durable image, the state reads see, and the
// operations between them.
type node struct {
	path    string
	durable *image
	current *image
	pending []*op
	// failed: a Sync of this file failed during this boot. Nothing more
	// becomes durable until the next crash (the kernel dropped the dirty
	// state it could not write and will not retry it).
	failed  bool
	handles map[*File]struct{}
}

// New returns an empty file system.
func New() *FS {
	return &FS{files: make(map[string]*node), failSync: make(map[int]error)}
}

// Create makes a new, empty file at path whose directory entry is durable at
// once. It fails with an error wrapping fs.ErrExist if path exists.
func (fs *FS) Create(path string) (*File, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if _, ok := fs.files[path]; ok {
		return nil, &iofs.PathError{Op: "create", Path: path, Err: iofs.ErrExist}
	}
	n := &node{path: path, durable: newImage(), current: newImage(), handles: make(map[*File]struct{})}
	fs.files[path] = n
	return fs.openLocked(n), nil
}

// Open opens an existing file. It fails with an error wrapping
// fs.ErrNotExist if there is none.
func (fs *FS) Open(path string) (*File, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, ok := fs.files[path]
	if !ok {
		return nil, &iofs.PathError{Op: "open", Path: path, Err: iofs.ErrNotExist}
	}
	return fs.openLocked(n), nil
}

func (fs *FS) openLocked(n *node) *File {
	f := &File{fs: fs, node: n, boot: fs.boot}
	n.handles[f] = struct{}{}
	return f
}

// Paths lists the files, sorted.
func (fs *FS) Paths() []string {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	out := make([]string, 0, len(fs.files))
	for p := range fs.files {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// Crash simulates power loss: every file's durable image becomes its durable
// image plus the unsynced operations as mode says (CrashRandom uses seed),
// reads see that image, and every handle open before the crash is dead.
// Injected faults (FailSync, FailWrites, FailReads, CrashAtSync) are disarmed: the
// machine has rebooted.
func (fs *FS) Crash(mode CrashMode, seed uint64) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.crashLocked(mode, seed)
}

func (fs *FS) crashLocked(mode CrashMode, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	// Visit files in a fixed order so a seed means the same crash.
	paths := make([]string, 0, len(fs.files))
	for p := range fs.files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		n := fs.files[p]
		n.durable = crashImage(n.durable, n.pending, mode, rng)
		n.current = n.durable.clone()
		n.pending = nil
		n.failed = false
		n.handles = make(map[*File]struct{})
	}
	fs.boot++
	fs.crashes++
	fs.crashAt = 0
	clear(fs.failSync)
	fs.writeFault = nil
	fs.readFault = nil
}

// CrashAtSync makes the n-th Sync call of this file system (counting every
// Sync on every file since New, see SyncCount) crash the file system with the
// given mode and seed instead of completing: nothing that Sync covered is
// made durable by it, it returns ErrCrashed, and every handle is dead.
// n ≤ SyncCount() disarms it.
func (fs *FS) CrashAtSync(n int, mode CrashMode, seed uint64) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.crashAt, fs.crashAtMode, fs.crashAtSeed = n, mode, seed
}

// FailSync makes the n-th Sync call of this file system (see SyncCount) fail
// with err (EIO when nil). Like Linux fsync: the failed Sync's data may or
// may not reach the disk at a crash, and nothing more of that file becomes
// durable until the next crash. Later Syncs of the file return nil (the
// error is reported once per open handle) unless StickySyncErrors is on.
func (fs *FS) FailSync(n int, err error) {
	if err == nil {
		err = syscall.EIO
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.failSync[n] = err
}

// StickySyncErrors makes every Sync of a file fail once one Sync of it has
// failed (until the next crash), instead of Linux's report-once behaviour.
func (fs *FS) StickySyncErrors(on bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.stickySync = on
}

// FailWrites makes write calls number from .. from+count-1 (counting every
// WriteAt and WritevAt on every file since New, see WriteCount; count 0
// means every write from then on) fail with err (ENOSPC when nil). With
// short, a failing write first stores a sector-aligned prefix of about half
// its data and reports that count along with the error; otherwise it stores
// nothing. from ≤ 0 disarms it.
func (fs *FS) FailWrites(from, count int, err error, short bool) {
	if err == nil {
		err = syscall.ENOSPC
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.writeFault = nil
	if from > 0 {
		fs.writeFault = &writeFault{from: from, count: count, err: err, short: short}
	}
}

// FailReads makes ReadAt calls number from .. from+count-1 (counting every
// ReadAt on every file since New, see ReadCount; count 0 means every read
// from then on) fail with err (EIO when nil), reading nothing: a media
// error, not the end of the file. from ≤ 0 disarms it.
func (fs *FS) FailReads(from, count int, err error) {
	if err == nil {
		err = syscall.EIO
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.readFault = nil
	if from > 0 {
		fs.readFault = &writeFault{from: from, count: count, err: err}
	}
}

// ReadCount is the number of ReadAt calls made so far, across all files
// and crashes.
func (fs *FS) ReadCount() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.reads
}

// SyncCount is the number of Sync calls made so far (including failed and
// crashed ones), across all files and crashes.
func (fs *FS) SyncCount() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.syncs
}

// WriteCount is the number of WriteAt/WritevAt calls made so far, across all
// files and crashes.
func (fs *FS) WriteCount() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.writes
}

// CrashCount is the number of crashes so far (Crash calls and fired
// CrashAtSync triggers).
func (fs *FS) CrashCount() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.crashes
}

// PendingOps is the number of completed but unsynced operations on path (0 if
// there is no such file).
func (fs *FS) PendingOps(path string) int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if n, ok := fs.files[path]; ok {
		return len(n.pending)
	}
	return 0
}

func (fs *FS) String() string {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fmt.Sprintf("faultfs{files=%d syncs=%d writes=%d crashes=%d}", len(fs.files), fs.syncs, fs.writes, fs.crashes)
}

package v2bridge

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/blockvol/faultfs"
	"github.com/weedblock/weedblock/engine"
	"github.com/weedblock/weedblock/executor"
)

// hintFS is a faultfs whose files also take the write-back and cache
// hints of an osFile (blockvol.WritebackPacer, blockvol.CacheDropper).
// A hint makes nothing durable: by default it does nothing. With
// failPace set, the first PaceWriteback reports a write-back error the
// way sync_file_range does on Linux: the file's pending writes are lost
// (a Sync armed to fail) and the error is reported to the hint, no longer
// to the next Sync.
type hintFS struct {
	fs       *faultfs.FS
	failPace bool
	paces    atomic.Int64 // PaceWriteback calls
	drops    atomic.Int64 // DropCache calls
	failed   atomic.Bool  // the failure was injected
	// onFail, if set, runs in the failing PaceWriteback after the error
	// was consumed, before the hint returns it.
	onFail func()
}

func (h *hintFS) Create(path string) (blockvol.File, error) {
	f, err := h.fs.Create(path)
	if err != nil {
		return nil, err
	}
	return &hintFile{File: f, h: h}, nil
}

func (h *hintFS) Open(path string) (blockvol.File, error) {
	f, err := h.fs.Open(path)
	if err != nil {
		return nil, err
	}
	return &hintFile{File: f, h: h}, nil
}

type hintFile struct {
	*faultfs.File
	h *hintFS
}

var (
	_ blockvol.WritebackPacer = (*hintFile)(nil)
	_ blockvol.CacheDropper   = (*hintFile)(nil)
)

func (f *hintFile) PaceWriteback(off, n int64) error {
	f.h.paces.Add(1)
	if f.h.failPace && f.h.failed.CompareAndSwap(false, true) {
		// The write-back failed; this hint is the one that hears of it.
		f.h.fs.FailSync(f.h.fs.SyncCount()+1, syscall.EIO)
		err := f.File.Sync()
		if f.h.onFail != nil {
			f.h.onFail()
		}
		return err
	}
	return nil
}

func (f *hintFile) DropCache(off, n int64) error {
	f.h.drops.Add(1)
	return nil
}

func hintVolOpts(h *hintFS) blockvol.Options {
	return blockvol.Options{FS: h, WALSize: 1 << 20, FlushInterval: 5 * time.Millisecond}
}

// rebuildInto runs a full rebuild of prim into rep, registered with svc
// as vol1 (unregistered afterwards), with small write-behind windows.
func rebuildInto(t *testing.T, svc *Service, addr string, slots *engine.Slots, prim, rep *blockvol.Volume) engine.Outcome {
	t.Helper()
	svc.Register("vol1", rep)
	defer svc.Unregister("vol1")
	rc := newRecovery(t, slots, prim, "s2", addr, PeerOptions{})
	defer rc.peer.Close()
	tok, plan := rc.plan(engine.NeedsRebuild)
	if plan.Kind != engine.Rebuild {
		t.Fatalf("planned %v", plan)
	}
	return rc.run(tok, plan, executor.Config{BatchBytes: 256 << 10})
}

// TestWriteBehindErrorFailsRebuild: a write-back error that a hint
// reported (and the next fsync therefore does not) fails the rebuild; the
// replica is never trusted with a base that did not reach the disk, also
// after a crash.
func TestWriteBehindErrorFailsRebuild(t *testing.T) {
	svc, addr := startService(t)
	svc.writeBehind = 64 << 10
	prim := primaryVol(t, 1, volOpts{size: 2 << 20})
	writeRandom(t, prim, rand.New(rand.NewSource(51)), 200, 0, prim.Size()/bs)
	if err := prim.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	h := &hintFS{fs: faultfs.New(), failPace: true}
	const path = "/r.vol"
	rep := replicaAt(t, path, prim.Size(), hintVolOpts(h))
	out := rebuildInto(t, svc, addr, engine.NewSlots(), prim, rep)
	if !h.failed.Load() {
		t.Fatalf("no write-back error injected (%d paces, %d drops)", h.paces.Load(), h.drops.Load())
	}
	if out.Kind == engine.OutcomeInSync {
		t.Fatalf("rebuild in sync although its base's write-back failed: %v", out)
	}
	if st := rep.Status(); !st.Untrusted {
		t.Fatalf("replica trusted after a failed rebuild: %+v", st)
	}
	rep.Close()
	h.fs.Crash(faultfs.CrashDropAll, 0)
	again, err := blockvol.Open(path, hintVolOpts(h))
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if st := again.Status(); !st.Untrusted {
		t.Fatalf("replica trusted after a crash: %+v", st)
	}
}

// TestBasePaceErrorFailsSyncs: a sync that runs while a base write-back
// hint reports (and so consumes) a write-back error must not succeed on
// the file whose write-back failed: the hint's error fails the volume
// before any sync may run.
func TestBasePaceErrorFailsSyncs(t *testing.T) {
	h := &hintFS{fs: faultfs.New(), failPace: true}
	v, err := blockvol.Create("/r.vol", 1<<20, hintVolOpts(h))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	v.Fence()
	if err := v.BeginRebuild(); err != nil {
		t.Fatal(err)
	}
	p := nonZero(256 << 10)
	if err := v.WriteBase(p, 0); err != nil {
		t.Fatal(err)
	}
	// While the failing hint is still in the kernel (its error already
	// taken from the file), a sync of the base is asked for.
	synced := make(chan error, 1)
	h.onFail = func() {
		go func() { synced <- v.SyncBase() }()
		select {
		case err := <-synced:
			synced <- err // it ran while the error was consumed
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err := v.StartBaseWriteback(0, int64(len(p))); err == nil {
		t.Fatal("a failed write-back hint reported no error")
	}
	if err := <-synced; err == nil {
		t.Fatal("a sync racing a failed write-back hint succeeded")
	}
	if err := v.InstallBase(0); err == nil {
		t.Fatal("base installed after its write-back failed")
	}
}

// TestCrashRebuildWithWriteBehind: a full rebuild into a replica whose
// file takes write-back hints (which make nothing durable), crashed at
// every sync of the replica's file system (dropping every unsynced write,
// or a random part of them): a reopened replica that says it is trusted
// holds exactly the primary's data, and after the rebuild returned in
// sync it is trusted.
func TestCrashRebuildWithWriteBehind(t *testing.T) {
	svc, addr := startService(t)
	svc.writeBehind = 64 << 10
	prim := primaryVol(t, 1, volOpts{size: 1 << 20})
	writeRandom(t, prim, rand.New(rand.NewSource(52)), 100, 0, prim.Size()/bs)
	if err := prim.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	slots := engine.NewSlots()
	const path = "/r.vol"
	// run rebuilds into a new replica on h; done says it returned in
	// sync, early that its file system crashed before it returned.
	run := func(h *hintFS) (done, early bool) {
		rep, err := blockvol.Create(path, prim.Size(), hintVolOpts(h))
		if err != nil {
			return false, true // crashed while creating
		}
		defer rep.Close() // may sync (and crash) too
		if err := rep.Unfence(1, blockvol.RoleReplica, time.Time{}); err != nil {
			return false, true
		}
		out := rebuildInto(t, svc, addr, slots, prim, rep)
		return out.Kind == engine.OutcomeInSync, h.fs.CrashCount() > 0
	}
	dry := &hintFS{fs: faultfs.New()}
	if done, _ := run(dry); !done {
		t.Fatal("dry run not in sync")
	}
	if dry.paces.Load() == 0 || dry.drops.Load() == 0 {
		t.Fatalf("dry run gave %d paces and %d drops", dry.paces.Load(), dry.drops.Load())
	}
	syncs := dry.fs.SyncCount()
	for at := 1; at <= syncs+1; at++ {
		for seed := uint64(0); seed < 2; seed++ {
			mode := faultfs.CrashDropAll
			if seed > 0 {
				mode = faultfs.CrashRandom
			}
			h := &hintFS{fs: faultfs.New()}
			h.fs.CrashAtSync(at, mode, seed)
			done, early := run(h)
			what := fmt.Sprintf("crash at sync %d of %d (%s, seed %d)", at, syncs, mode, seed)
			if h.fs.CrashCount() == 0 {
				if !done {
					t.Fatalf("%s: not in sync without a crash", what)
				}
				h.fs.Crash(mode, seed)
			}
			v, err := blockvol.Open(path, hintVolOpts(h))
			if err != nil {
				if len(h.fs.Paths()) == 0 || at <= 3 {
					continue // crashed while creating the replica
				}
				t.Fatalf("%s: open: %v", what, err)
			}
			st := v.Status()
			switch {
			case done && early:
				t.Fatalf("%s: in sync although its file system crashed", what)
			case done && st.Untrusted:
				t.Fatalf("%s: untrusted after the rebuild returned in sync", what)
			case !st.Untrusted && st.Durable == 0:
				// Crashed before the rebuild began: the new, empty
				// replica.
				allZero(t, what, v)
			case !st.Untrusted:
				t.Logf("%s: trusted at %d", what, st.Durable)
				sameDevice(t, prim, v)
			}
			v.Close()
		}
	}
}

// TestBaseWritebackOnlyDuringRebuild: the write-back hints of a base are
// refused outside a rebuild and outside the volume, and taken during one.
func TestBaseWritebackOnlyDuringRebuild(t *testing.T) {
	v := newReplicaVol(t, "r.vol", 1, volOpts{})
	if err := v.StartBaseWriteback(0, bs); err == nil {
		t.Fatal("write-back hint outside a rebuild accepted")
	}
	if err := v.DropBase(0, bs); err == nil {
		t.Fatal("drop hint outside a rebuild accepted")
	}
	v.Fence()
	if err := v.BeginRebuild(); err != nil {
		t.Fatal(err)
	}
	p := nonZero(64 << 10)
	if err := v.WriteBase(p, 0); err != nil {
		t.Fatal(err)
	}
	if err := v.StartBaseWriteback(0, int64(len(p))); err != nil {
		t.Fatal(err)
	}
	if err := v.DropBase(0, int64(len(p))); err != nil {
		t.Fatal(err)
	}
	if err := v.DropBase(v.Size()-bs, 2*bs); err == nil {
		t.Fatal("drop hint beyond the volume accepted")
	}
	if err := v.InstallBase(0); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(p))
	if err := v.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, p) {
		t.Fatal("base dropped from the page cache reads back wrong")
	}
	if st := v.Status(); !st.Untrusted {
		t.Fatalf("trusted before FinishRebuild: %+v", st)
	}
}

// allZero checks that v reads as zeros everywhere.
func allZero(t *testing.T, what string, v *blockvol.Volume) {
	t.Helper()
	p := make([]byte, 1<<20)
	for off := int64(0); off < v.Size(); off += int64(len(p)) {
		n := min(int64(len(p)), v.Size()-off)
		if err := v.ReadAt(p[:n], off); err != nil {
			t.Fatalf("%s: read %d@%d: %v", what, n, off, err)
		}
		for i, c := range p[:n] {
			if c != 0 {
				t.Fatalf("%s: byte %d of an empty replica is %#x", what, off+int64(i), c)
			}
		}
	}
}

// TestWriteBehindDropsBase: on real files the replica writes the base
// back as it goes and drops it from the page cache behind it, so after
// the rebuild little of the replica's extent is cached; the data is the
// primary's.
func TestWriteBehindDropsBase(t *testing.T) {
	svc, addr := startService(t)
	svc.writeBehind = 1 << 20
	const size = 16 << 20
	prim := primaryVol(t, 1, volOpts{size: size, wal: 4 << 20})
	fillVolume(t, prim, 53)
	rep := replicaAt(t, filepath.Join(diskDir(t), "r.vol"), size, blockvol.Options{WALSize: 1 << 20, FlushInterval: 5 * time.Millisecond})
	out := rebuildInto(t, svc, addr, engine.NewSlots(), prim, rep)
	wantInSync(t, out, prim.Status().Durable)
	// The extent is the file's last size bytes.
	cached, total := residentPages(t, rep.Path(), size)
	t.Logf("%d of %d pages of the replica's extent cached", cached, total)
	if cached > total/16 {
		t.Fatalf("%d of %d pages of the replica's extent still cached after its rebuild", cached, total)
	}
	sameDevice(t, prim, rep)
}

// diskDir is a new directory on a file system with a page cache in front
// of a disk (the test's temporary directory, or else one beside the
// package's sources), removed when the test ends: in tmpfs or ramfs every
// page is the file and cannot be dropped.
func diskDir(t *testing.T) string {
	t.Helper()
	inMemory := func(dir string) bool {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil {
			t.Fatalf("statfs %s: %v", dir, err)
		}
		return st.Type == unix.TMPFS_MAGIC || st.Type == unix.RAMFS_MAGIC
	}
	if dir := t.TempDir(); !inMemory(dir) {
		return dir
	}
	dir, err := os.MkdirTemp(".", "writebehind-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if inMemory(dir) {
		t.Fatalf("no disk-backed directory for the page cache test (%s and %s are in memory)", os.TempDir(), dir)
	}
	return dir
}

// residentPages counts the pages of the last n bytes of the file at path
// that are in the page cache (mincore).
func residentPages(t *testing.T, path string, n int64) (cached, total int) {
	t.Helper()
	f, err := os.Open(filepath.Clean(path))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	page := int64(os.Getpagesize())
	off := (st.Size() - n) / page * page
	m, err := unix.Mmap(int(f.Fd()), off, int(st.Size()-off), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (len(m)+int(page)-1)/int(page))
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatalf("mincore %s: %v", path, e)
	}
	for _, b := range vec {
		if b&1 != 0 {
			cached++
		}
	}
	return cached, len(vec)
}

// nonZero is n bytes of a pattern with no zero byte (no zero range).
func nonZero(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i | 1)
	}
	return p
}

// replicaAt creates a volume at path with opts, unfenced as a replica of
// epoch 1 and closed when the test ends.
func replicaAt(t *testing.T, path string, size int64, opts blockvol.Options) *blockvol.Volume {
	t.Helper()
	rep, err := blockvol.Create(path, size, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rep.Close() })
	if err := rep.Unfence(1, blockvol.RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	return rep
}

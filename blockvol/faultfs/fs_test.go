package faultfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"
)

// fill returns n bytes of b.
func fill(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

func mustCreate(t *testing.T, fs *FS, path string) *File {
	t.Helper()
	f, err := fs.Create(path)
	if err != nil {
		t.Fatalf("create %s: %v", path, err)
	}
	return f
}

func mustOpen(t *testing.T, fs *FS, path string) *File {
	t.Helper()
	f, err := fs.Open(path)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	return f
}

func mustWrite(t *testing.T, f *File, p []byte, off int64) {
	t.Helper()
	if n, err := f.WriteAt(p, off); err != nil || n != len(p) {
		t.Fatalf("write %d@%d: n=%d err=%v", len(p), off, n, err)
	}
}

func mustSync(t *testing.T, f *File) {
	t.Helper()
	if err := f.Sync(); err != nil {
		t.Fatalf("sync: %v", err)
	}
}

// readAll returns the whole current content of path through a new handle.
func readAll(t *testing.T, fs *FS, path string) []byte {
	t.Helper()
	f := mustOpen(t, fs, path)
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		t.Fatalf("size: %v", err)
	}
	buf := make([]byte, size)
	if n, err := f.ReadAt(buf, 0); n != len(buf) || (err != nil && err != io.EOF) {
		t.Fatalf("read all: n=%d err=%v", n, err)
	}
	return buf
}

func TestCreateOpenClose(t *testing.T) {
	fs := New()
	f := mustCreate(t, fs, "a")
	if _, err := fs.Create("a"); !errors.Is(err, iofs.ErrExist) {
		t.Fatalf("create existing: got %v, want ErrExist", err)
	}
	if _, err := fs.Open("missing"); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("open missing: got %v, want ErrNotExist", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if _, err := f.WriteAt([]byte{1}, 0); !errors.Is(err, iofs.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
	if err := f.Sync(); !errors.Is(err, iofs.ErrClosed) {
		t.Fatalf("sync after close: %v", err)
	}
	if got := fs.Paths(); len(got) != 1 || got[0] != "a" {
		t.Fatalf("paths = %v", got)
	}
	// A created file exists durably even if never synced.
	fs.Crash(CrashDropAll, 0)
	g := mustOpen(t, fs, "a")
	if sz, _ := g.Size(); sz != 0 {
		t.Fatalf("size after crash = %d", sz)
	}
}

func TestReadSeesUnsyncedAndEOF(t *testing.T) {
	fs := New()
	f := mustCreate(t, fs, "a")
	mustWrite(t, f, fill(7, 100), 10)
	buf := make([]byte, 200)
	n, err := f.ReadAt(buf, 0)
	if n != 110 || err != io.EOF {
		t.Fatalf("read: n=%d err=%v, want 110 EOF", n, err)
	}
	if !bytes.Equal(buf[:10], make([]byte, 10)) || !bytes.Equal(buf[10:110], fill(7, 100)) {
		t.Fatalf("read content wrong")
	}
	if n, err := f.ReadAt(buf[:10], 200); n != 0 || err != io.EOF {
		t.Fatalf("read past end: n=%d err=%v", n, err)
	}
	if _, err := f.ReadAt(buf, -1); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("negative offset: %v", err)
	}
	n2, err := f.WritevAt([][]byte{fill(1, 3), nil, fill(2, 5)}, 0)
	if n2 != 8 || err != nil {
		t.Fatalf("writev: %d %v", n2, err)
	}
	if got := readAll(t, fs, "a")[:11]; !bytes.Equal(got, []byte{1, 1, 1, 2, 2, 2, 2, 2, 0, 0, 7}) {
		t.Fatalf("writev content %v", got)
	}
}

func TestDropAllLosesUnsyncedKeepsSynced(t *testing.T) {
	fs := New()
	f := mustCreate(t, fs, "a")
	mustWrite(t, f, fill(1, 4096), 0)
	mustSync(t, f)
	mustWrite(t, f, fill(2, 4096), 0)    // overwrite, unsynced
	mustWrite(t, f, fill(3, 4096), 4096) // extend, unsynced
	if fs.PendingOps("a") != 2 {
		t.Fatalf("pending = %d", fs.PendingOps("a"))
	}
	fs.Crash(CrashDropAll, 1)
	if got := readAll(t, fs, "a"); !bytes.Equal(got, fill(1, 4096)) {
		t.Fatalf("after drop-all crash: len %d first %d", len(got), got[0])
	}
	if fs.PendingOps("a") != 0 {
		t.Fatalf("pending after crash = %d", fs.PendingOps("a"))
	}
}

func TestKeepAllKeepsUnsyncedInOrder(t *testing.T) {
	fs := New()
	f := mustCreate(t, fs, "a")
	mustWrite(t, f, fill(1, 1024), 0)
	mustWrite(t, f, fill(2, 512), 512)
	if err := f.PunchHole(0, 256); err != nil {
		t.Fatal(err)
	}
	want := readAll(t, fs, "a")
	fs.Crash(CrashKeepAll, 1)
	if got := readAll(t, fs, "a"); !bytes.Equal(got, want) {
		t.Fatalf("keep-all crash changed content")
	}
}

func TestCrashKillsHandles(t *testing.T) {
	fs := New()
	f := mustCreate(t, fs, "a")
	mustWrite(t, f, fill(1, 512), 0)
	mustSync(t, f)
	fs.Crash(CrashRandom, 3)
	checks := map[string]error{}
	_, checks["read"] = f.ReadAt(make([]byte, 1), 0)
	_, checks["write"] = f.WriteAt([]byte{1}, 0)
	_, checks["writev"] = f.WritevAt([][]byte{{1}}, 0)
	checks["sync"] = f.Sync()
	checks["punch"] = f.PunchHole(0, 1)
	checks["truncate"] = f.Truncate(0)
	_, checks["size"] = f.Size()
	for op, err := range checks {
		if !errors.Is(err, ErrCrashed) {
			t.Errorf("%s on dead handle: %v, want ErrCrashed", op, err)
		}
	}
	if err := f.Close(); err != nil {
		t.Errorf("close of dead handle: %v", err)
	}
	if fs.CrashCount() != 1 {
		t.Errorf("crash count %d", fs.CrashCount())
	}
	if got := readAll(t, fs, "a"); !bytes.Equal(got, fill(1, 512)) {
		t.Errorf("synced data lost")
	}
}

// TestTornWritesSectorGranular: an unsynced write over synced data leaves, at
// a random crash, every sector wholly old or wholly new; across seeds, some
// crashes mix old and new sectors inside one write.
func TestTornWritesSectorGranular(t *testing.T) {
	const size = 64 << 10
	mixed, allNew, allOld := 0, 0, 0
	for seed := uint64(0); seed < 200; seed++ {
		fs := New()
		f := mustCreate(t, fs, "a")
		mustWrite(t, f, fill(0xAA, size), 0)
		mustSync(t, f)
		mustWrite(t, f, fill(0xBB, size), 0)
		fs.Crash(CrashRandom, seed)
		got := readAll(t, fs, "a")
		if len(got) != size {
			t.Fatalf("seed %d: size %d", seed, len(got))
		}
		nNew := 0
		for s := 0; s < size/SectorSize; s++ {
			sec := got[s*SectorSize : (s+1)*SectorSize]
			switch {
			case bytes.Equal(sec, fill(0xBB, SectorSize)):
				nNew++
			case bytes.Equal(sec, fill(0xAA, SectorSize)):
			default:
				t.Fatalf("seed %d: sector %d is neither old nor new", seed, s)
			}
		}
		switch nNew {
		case 0:
			allOld++
		case size / SectorSize:
			allNew++
		default:
			mixed++
		}
	}
	if mixed == 0 || allNew == 0 || allOld == 0 {
		t.Fatalf("outcomes over seeds: mixed=%d allNew=%d allOld=%d; want all three", mixed, allNew, allOld)
	}
}

// TestTornUnalignedWrite: a write that starts and ends inside sectors tears at
// the file's sector boundaries, not the write's.
func TestTornUnalignedWrite(t *testing.T) {
	sawPartial := false
	for seed := uint64(0); seed < 200; seed++ {
		fs := New()
		f := mustCreate(t, fs, "a")
		mustWrite(t, f, fill(0xAA, 2048), 0)
		mustSync(t, f)
		mustWrite(t, f, fill(0xBB, 1024), 256) // touches sectors 0,1,2
		fs.Crash(CrashRandom, seed)
		got := readAll(t, fs, "a")
		pieces := [][2]int{{256, 512}, {512, 1024}, {1024, 1280}}
		landed := 0
		for _, pc := range pieces {
			seg := got[pc[0]:pc[1]]
			switch {
			case bytes.Equal(seg, fill(0xBB, len(seg))):
				landed++
			case bytes.Equal(seg, fill(0xAA, len(seg))):
			default:
				t.Fatalf("seed %d: piece %v torn inside a sector", seed, pc)
			}
		}
		if !bytes.Equal(got[:256], fill(0xAA, 256)) || !bytes.Equal(got[1280:], fill(0xAA, 768)) {
			t.Fatalf("seed %d: bytes outside the write changed", seed)
		}
		if landed == 1 || landed == 2 {
			sawPartial = true
		}
	}
	if !sawPartial {
		t.Fatal("no seed tore the unaligned write")
	}
}

// TestReorderAcrossSeeds: with two unsynced writes A then B, crashes leave
// "B without A" (a non-prefix subset) for some seeds; and with two unsynced
// writes to one sector over a synced value X, each of X, A and B can be what
// survives; and a crash can land both writes whole with the older one last.
func TestReorderAcrossSeeds(t *testing.T) {
	sawLaterWithoutEarlier := false
	outcomes := map[byte]int{}
	for seed := uint64(0); seed < 300; seed++ {
		fs := New()
		f := mustCreate(t, fs, "a")
		mustWrite(t, f, fill(0, 2*SectorSize), 0)
		mustWrite(t, f, fill('X', SectorSize), 4096)
		mustSync(t, f)
		mustWrite(t, f, fill('A', SectorSize), 0)
		mustWrite(t, f, fill('B', SectorSize), SectorSize)
		mustWrite(t, f, fill('A', SectorSize), 4096)
		mustWrite(t, f, fill('B', SectorSize), 4096)
		fs.Crash(CrashRandom, seed)
		got := readAll(t, fs, "a")
		if got[0] == 0 && got[SectorSize] == 'B' {
			sawLaterWithoutEarlier = true
		}
		outcomes[got[4096]]++
	}
	if !sawLaterWithoutEarlier {
		t.Error("no crash kept a later write while dropping an earlier one")
	}
	for _, c := range []byte{'X', 'A', 'B'} {
		if outcomes[c] == 0 {
			t.Errorf("no crash left %q in the twice-written sector: %v", c, outcomes)
		}
	}
}

func TestCrashPlanReorders(t *testing.T) {
	a := &op{kind: opWrite, off: 0, data: fill('A', SectorSize)}
	b := &op{kind: opWrite, off: 0, data: fill('B', SectorSize)}
	for seed := uint64(0); seed < 500; seed++ {
		plan := crashPlan([]*op{a, b}, rand.New(rand.NewPCG(seed, 1)))
		if len(plan) == 2 && !plan[0].torn && !plan[1].torn && plan[0].o == b {
			// Same seed through crashImage: the older write wins.
			out := crashImage(newImage(), []*op{a, b}, CrashRandom, rand.New(rand.NewPCG(seed, 1)))
			buf := make([]byte, SectorSize)
			out.readAt(buf, 0)
			if buf[0] != 'A' {
				t.Fatalf("seed %d: plan put B before A but image holds %q", seed, buf[0])
			}
			return
		}
	}
	t.Fatal("no seed landed two writes whole in reverse order")
}

func TestCrashDeterministicPerSeed(t *testing.T) {
	run := func(seed uint64) []byte {
		fs := New()
		f := mustCreate(t, fs, "a")
		g := mustCreate(t, fs, "b")
		r := rand.New(rand.NewPCG(42, 42))
		for i := 0; i < 50; i++ {
			off := int64(r.IntN(64)) * 512
			mustWrite(t, f, fill(byte(i+1), 512*(1+r.IntN(8))), off)
			mustWrite(t, g, fill(byte(i+1), 700), off+13)
			if i%17 == 0 {
				mustSync(t, f)
			}
		}
		fs.Crash(CrashRandom, seed)
		return append(readAll(t, fs, "a"), readAll(t, fs, "b")...)
	}
	if !bytes.Equal(run(5), run(5)) {
		t.Fatal("same seed gave different images")
	}
	distinct := map[string]bool{}
	for s := uint64(0); s < 10; s++ {
		distinct[string(run(s))] = true
	}
	if len(distinct) < 5 {
		t.Fatalf("10 seeds gave only %d distinct images", len(distinct))
	}
}

func TestPunchHoleUnsyncedMayBeLost(t *testing.T) {
	const size = 16 << 10
	outcomes := map[string]int{}
	for seed := uint64(0); seed < 200; seed++ {
		fs := New()
		f := mustCreate(t, fs, "a")
		mustWrite(t, f, fill(9, size), 0)
		mustSync(t, f)
		if err := f.PunchHole(0, size); err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, fs, "a"); !bytes.Equal(got, make([]byte, size)) {
			t.Fatal("punched range does not read as zeros before the crash")
		}
		fs.Crash(CrashRandom, seed)
		got := readAll(t, fs, "a")
		if len(got) != size {
			t.Fatalf("punch changed size to %d", len(got))
		}
		zeros := 0
		for p := 0; p < size/punchUnit; p++ {
			blk := got[p*punchUnit : (p+1)*punchUnit]
			switch {
			case bytes.Equal(blk, make([]byte, punchUnit)):
				zeros++
			case bytes.Equal(blk, fill(9, punchUnit)):
			default:
				t.Fatalf("seed %d: block %d partly punched", seed, p)
			}
		}
		switch zeros {
		case 0:
			outcomes["lost"]++
		case size / punchUnit:
			outcomes["kept"]++
		default:
			outcomes["torn"]++
		}
	}
	for _, k := range []string{"lost", "kept", "torn"} {
		if outcomes[k] == 0 {
			t.Errorf("never saw the punch %s: %v", k, outcomes)
		}
	}
	// Synced punches survive any crash; drop-all loses unsynced ones.
	fs := New()
	f := mustCreate(t, fs, "a")
	mustWrite(t, f, fill(9, 8192), 0)
	mustSync(t, f)
	if err := f.PunchHole(0, 4096); err != nil {
		t.Fatal(err)
	}
	mustSync(t, f)
	if err := f.PunchHole(4096, 4096); err != nil {
		t.Fatal(err)
	}
	fs.Crash(CrashDropAll, 0)
	got := readAll(t, fs, "a")
	if !bytes.Equal(got[:4096], make([]byte, 4096)) || !bytes.Equal(got[4096:], fill(9, 4096)) {
		t.Fatal("synced punch lost or unsynced punch kept by drop-all")
	}
	if err := mustOpen(t, fs, "a").PunchHole(0, 0); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("zero-length punch: %v", err)
	}
}

func TestTruncate(t *testing.T) {
	fs := New()
	f := mustCreate(t, fs, "a")
	mustWrite(t, f, fill(5, 8192), 0)
	mustSync(t, f)
	if err := f.Truncate(100); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(8192); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, fs, "a")
	if !bytes.Equal(got[:100], fill(5, 100)) || !bytes.Equal(got[100:], make([]byte, 8092)) {
		t.Fatal("shrink then grow did not expose zeros")
	}
	fs.Crash(CrashDropAll, 0)
	if got := readAll(t, fs, "a"); !bytes.Equal(got, fill(5, 8192)) {
		t.Fatal("unsynced truncate survived drop-all")
	}
	f = mustOpen(t, fs, "a")
	if err := f.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	mustSync(t, f)
	fs.Crash(CrashRandom, 7)
	f = mustOpen(t, fs, "a")
	if sz, _ := f.Size(); sz != 1<<30 {
		t.Fatalf("synced sparse grow: size %d", sz)
	}
	buf := make([]byte, 4096)
	if _, err := f.ReadAt(buf, 1<<29); err != nil || !bytes.Equal(buf, make([]byte, 4096)) {
		t.Fatalf("hole read: %v", err)
	}
	if err := f.Truncate(-1); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("negative truncate: %v", err)
	}
}

func TestCrashAtSync(t *testing.T) {
	fs := New()
	f := mustCreate(t, fs, "a")
	g := mustCreate(t, fs, "b")
	mustWrite(t, f, fill(1, 512), 0)
	mustSync(t, f) // sync 1
	mustWrite(t, g, fill(2, 512), 0)
	mustSync(t, g) // sync 2
	if fs.SyncCount() != 2 {
		t.Fatalf("sync count %d", fs.SyncCount())
	}
	fs.CrashAtSync(3, CrashDropAll, 0)
	mustWrite(t, f, fill(3, 512), 0)
	err := f.Sync() // sync 3: crashes instead
	if !errors.Is(err, ErrCrashed) {
		t.Fatalf("armed sync returned %v, want ErrCrashed", err)
	}
	if fs.CrashCount() != 1 || fs.SyncCount() != 3 {
		t.Fatalf("crashes=%d syncs=%d", fs.CrashCount(), fs.SyncCount())
	}
	if _, err := g.WriteAt([]byte{1}, 0); !errors.Is(err, ErrCrashed) {
		t.Fatalf("other handle after crash-at-sync: %v", err)
	}
	if got := readAll(t, fs, "a"); !bytes.Equal(got, fill(1, 512)) {
		t.Fatal("crashing sync made its data durable")
	}
	if got := readAll(t, fs, "b"); !bytes.Equal(got, fill(2, 512)) {
		t.Fatal("earlier synced data lost")
	}
	// The trigger is disarmed: later syncs work.
	f = mustOpen(t, fs, "a")
	mustWrite(t, f, fill(4, 512), 0)
	mustSync(t, f)
	fs.Crash(CrashDropAll, 0)
	if got := readAll(t, fs, "a"); !bytes.Equal(got, fill(4, 512)) {
		t.Fatal("sync after a crash-at-sync did not stick")
	}
}

// TestCrashAtEverySyncPoint shows the intended use: count the syncs of a
// fixed workload, then crash at each one and check what survived.
func TestCrashAtEverySyncPoint(t *testing.T) {
	workload := func(fs *FS) (synced int, err error) {
		f, err := fs.Create("log")
		if err != nil {
			return 0, err
		}
		for i := 1; i <= 8; i++ {
			if _, err := f.WriteAt(fill(byte(i), SectorSize), int64(i-1)*SectorSize); err != nil {
				return synced, err
			}
			if err := f.Sync(); err != nil {
				return synced, err
			}
			synced = i
		}
		return synced, nil
	}
	fs := New()
	if _, err := workload(fs); err != nil {
		t.Fatal(err)
	}
	n := fs.SyncCount()
	if n != 8 {
		t.Fatalf("workload made %d syncs", n)
	}
	for at := 1; at <= n; at++ {
		for seed := uint64(0); seed < 4; seed++ {
			fs := New()
			fs.CrashAtSync(at, CrashRandom, seed)
			synced, err := workload(fs)
			if !errors.Is(err, ErrCrashed) || synced != at-1 {
				t.Fatalf("crash at %d: synced=%d err=%v", at, synced, err)
			}
			got := readAll(t, fs, "log")
			for i := 1; i <= synced; i++ {
				if !bytes.Equal(got[(i-1)*SectorSize:i*SectorSize], fill(byte(i), SectorSize)) {
					t.Fatalf("crash at %d seed %d: synced record %d lost", at, seed, i)
				}
			}
		}
	}
}

// TestSyncErrorLinuxSemantics: a failed Sync reports EIO once per handle,
// later Syncs return nil but nothing of the file becomes durable again until
// a crash; data synced before the failure is kept.
func TestSyncErrorLinuxSemantics(t *testing.T) {
	fs := New()
	f := mustCreate(t, fs, "a")
	other := mustOpen(t, fs, "a")
	mustWrite(t, f, fill(1, 512), 0)
	mustSync(t, f) // 1
	fs.FailSync(fs.SyncCount()+1, nil)
	mustWrite(t, f, fill(2, 512), 512)
	err := f.Sync()
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("failed sync returned %v, want EIO", err)
	}
	late := mustOpen(t, fs, "a")
	if err := f.Sync(); err != nil {
		t.Fatalf("second sync on same handle: %v (Linux reports once)", err)
	}
	if err := other.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("handle open at failure time: %v, want EIO once", err)
	}
	if err := other.Sync(); err != nil {
		t.Fatalf("handle open at failure time, second sync: %v", err)
	}
	if err := late.Sync(); err != nil {
		t.Fatalf("handle opened after failure: %v", err)
	}
	// Writes after the failure are readable but a "successful" sync does
	// not make them durable.
	mustWrite(t, f, fill(3, 512), 1024)
	mustSync(t, f)
	if got := readAll(t, fs, "a"); got[1024] != 3 {
		t.Fatal("write after failure not readable")
	}
	fs.Crash(CrashDropAll, 0)
	got := readAll(t, fs, "a")
	if !bytes.Equal(got, fill(1, 512)) {
		t.Fatalf("after failed sync + crash: %d bytes, want only the data synced before the failure", len(got))
	}
	// The failed sync's data is in limbo: a random crash may or may not
	// keep it.
	kept, lost := 0, 0
	for seed := uint64(0); seed < 100; seed++ {
		fs := New()
		f := mustCreate(t, fs, "a")
		mustWrite(t, f, fill(1, 512), 0)
		fs.FailSync(1, syscall.EIO)
		if err := f.Sync(); err == nil {
			t.Fatal("injected failure did not fail")
		}
		fs.Crash(CrashRandom, seed)
		if got := readAll(t, fs, "a"); len(got) == 512 && got[0] == 1 {
			kept++
		} else {
			lost++
		}
	}
	if kept == 0 || lost == 0 {
		t.Fatalf("failed sync's data: kept=%d lost=%d; want both", kept, lost)
	}
	// After a crash the file syncs normally again.
	f = mustOpen(t, fs, "a")
	mustWrite(t, f, fill(4, 512), 0)
	mustSync(t, f)
	fs.Crash(CrashDropAll, 0)
	if got := readAll(t, fs, "a"); got[0] != 4 {
		t.Fatal("sync after reboot not durable")
	}
}

func TestStickySyncErrors(t *testing.T) {
	fs := New()
	fs.StickySyncErrors(true)
	f := mustCreate(t, fs, "a")
	other := mustCreate(t, fs, "b")
	fs.FailSync(1, syscall.EIO)
	mustWrite(t, f, fill(1, 512), 0)
	for i := 0; i < 3; i++ {
		if err := f.Sync(); !errors.Is(err, syscall.EIO) {
			t.Fatalf("sticky sync %d: %v", i, err)
		}
	}
	// Other files are unaffected.
	mustWrite(t, other, fill(1, 512), 0)
	mustSync(t, other)
	fs.Crash(CrashDropAll, 0)
	if got := readAll(t, fs, "a"); len(got) != 0 {
		t.Fatal("data of a failed file became durable")
	}
	if got := readAll(t, fs, "b"); !bytes.Equal(got, fill(1, 512)) {
		t.Fatal("healthy file lost synced data")
	}
}

func TestWriteFaults(t *testing.T) {
	fs := New()
	f := mustCreate(t, fs, "a")
	mustWrite(t, f, fill(1, 4096), 0) // write 1
	fs.FailWrites(2, 2, nil, false)
	for i := 0; i < 2; i++ {
		n, err := f.WriteAt(fill(2, 4096), 0)
		if n != 0 || !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("faulted write %d: n=%d err=%v", i, n, err)
		}
	}
	if got := readAll(t, fs, "a"); !bytes.Equal(got, fill(1, 4096)) {
		t.Fatal("failed write stored data")
	}
	mustWrite(t, f, fill(3, 512), 0) // write 4: fault window over
	if fs.WriteCount() != 4 {
		t.Fatalf("write count %d", fs.WriteCount())
	}

	// Short writes keep a sector-aligned prefix.
	fs.FailWrites(fs.WriteCount()+1, 0, syscall.EIO, true)
	n, err := f.WritevAt([][]byte{fill(4, 1000), fill(5, 1000)}, 100)
	if !errors.Is(err, syscall.EIO) || n <= 0 || n >= 2000 || (100+int64(n))%SectorSize != 0 {
		t.Fatalf("short write: n=%d err=%v", n, err)
	}
	got := readAll(t, fs, "a")
	if !bytes.Equal(got[100:100+n], fill(4, n)) || got[100+n] != 1 {
		t.Fatalf("short write stored the wrong bytes")
	}
	if _, err := f.WriteAt([]byte{1}, 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("open-ended fault stopped: %v", err)
	}
	fs.Crash(CrashDropAll, 0) // disarms faults
	f = mustOpen(t, fs, "a")
	mustWrite(t, f, []byte{1}, 0)
	if _, err := f.WriteAt([]byte{1}, -5); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("negative offset write: %v", err)
	}
}

func TestReadFaults(t *testing.T) {
	fs := New()
	f := mustCreate(t, fs, "a")
	mustWrite(t, f, fill(1, 512), 0)
	buf := make([]byte, 512)
	if _, err := f.ReadAt(buf, 0); err != nil { // read 1
		t.Fatal(err)
	}
	fs.FailReads(2, 2, nil)
	for i := 0; i < 2; i++ {
		if n, err := f.ReadAt(buf, 0); n != 0 || !errors.Is(err, syscall.EIO) {
			t.Fatalf("faulted read %d: n=%d err=%v", i, n, err)
		}
	}
	if n, err := f.ReadAt(buf, 0); n != 512 || err != nil || buf[0] != 1 {
		t.Fatalf("read after the fault window: n=%d err=%v", n, err)
	}
	if fs.ReadCount() != 4 {
		t.Fatalf("read count %d", fs.ReadCount())
	}
	fs.FailReads(fs.ReadCount()+1, 0, syscall.EBADMSG)
	if _, err := f.ReadAt(buf, 0); !errors.Is(err, syscall.EBADMSG) {
		t.Fatalf("open-ended read fault: %v", err)
	}
	fs.FailReads(0, 0, nil) // disarms
	if _, err := f.ReadAt(buf, 0); err != nil {
		t.Fatalf("read after disarming: %v", err)
	}
	fs.FailReads(fs.ReadCount()+1, 0, nil)
	fs.Crash(CrashKeepAll, 0) // disarms too
	if got := readAll(t, fs, "a"); got[0] != 1 {
		t.Fatal("data lost")
	}
}

// TestRandomCrashPerSectorCandidates is a property test: after a random
// crash, every sector holds its last synced content or the content one of the
// unsynced operations gave it — never anything else.
func TestRandomCrashPerSectorCandidates(t *testing.T) {
	const sectors = 64
	const size = sectors * SectorSize
	for seed := uint64(0); seed < 60; seed++ {
		r := rand.New(rand.NewPCG(seed, 99))
		fs := New()
		f := mustCreate(t, fs, "a")
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		mustSync(t, f)
		durable := make([][]byte, sectors)
		for i := range durable {
			durable[i] = make([]byte, SectorSize)
		}
		cands := make([]map[string]bool, sectors)
		resetCands := func() {
			for i := range cands {
				cands[i] = map[string]bool{string(durable[i]): true}
			}
		}
		resetCands()
		cur := make([][]byte, sectors)
		for i := range cur {
			cur[i] = append([]byte(nil), durable[i]...)
		}
		tag := byte(1)
		for step := 0; step < 40; step++ {
			switch r.IntN(5) {
			case 0, 1, 2: // sector-aligned write
				s, n := r.IntN(sectors), 1+r.IntN(8)
				n = min(n, sectors-s)
				buf := make([]byte, 0, n*SectorSize)
				for i := 0; i < n; i++ {
					sec := fill(tag, SectorSize)
					sec[0] = byte(s + i)
					buf = append(buf, sec...)
					cur[s+i] = sec
					cands[s+i][string(sec)] = true
				}
				tag++
				mustWrite(t, f, buf, int64(s)*SectorSize)
			case 3: // block-aligned punch
				b := r.IntN(size / punchUnit)
				if err := f.PunchHole(int64(b)*punchUnit, punchUnit); err != nil {
					t.Fatal(err)
				}
				for s := b * punchUnit / SectorSize; s < (b+1)*punchUnit/SectorSize; s++ {
					cur[s] = make([]byte, SectorSize)
					cands[s][string(cur[s])] = true
				}
			case 4:
				mustSync(t, f)
				for i := range durable {
					durable[i] = append([]byte(nil), cur[i]...)
				}
				resetCands()
			}
		}
		fs.Crash(CrashRandom, seed)
		got := readAll(t, fs, "a")
		if len(got) != size {
			t.Fatalf("seed %d: size %d", seed, len(got))
		}
		for s := 0; s < sectors; s++ {
			if !cands[s][string(got[s*SectorSize:(s+1)*SectorSize])] {
				t.Fatalf("seed %d: sector %d holds content no operation gave it", seed, s)
			}
		}
	}
}

// TestImageAgainstFlatModel drives random writes, punches and truncates and
// compares reads with a flat byte-slice model, then checks that keep-all and
// synced drop-all crashes both reproduce it.
func TestImageAgainstFlatModel(t *testing.T) {
	for seed := uint64(0); seed < 20; seed++ {
		r := rand.New(rand.NewPCG(seed, 7))
		fs := New()
		f := mustCreate(t, fs, "a")
		var model []byte
		for step := 0; step < 300; step++ {
			switch r.IntN(6) {
			case 0, 1, 2:
				off := r.Int64N(40000)
				p := make([]byte, r.IntN(9000))
				for i := range p {
					p[i] = byte(r.IntN(255) + 1)
				}
				mustWrite(t, f, p, off)
				if end := off + int64(len(p)); end > int64(len(model)) {
					model = append(model, make([]byte, end-int64(len(model)))...)
				}
				copy(model[off:], p)
			case 3:
				off, n := r.Int64N(40000), 1+r.Int64N(10000)
				if err := f.PunchHole(off, n); err != nil {
					t.Fatal(err)
				}
				for i := off; i < off+n && i < int64(len(model)); i++ {
					model[i] = 0
				}
			case 4:
				sz := r.Int64N(50000)
				if err := f.Truncate(sz); err != nil {
					t.Fatal(err)
				}
				if sz < int64(len(model)) {
					model = model[:sz]
				} else {
					model = append(model, make([]byte, sz-int64(len(model)))...)
				}
			case 5:
				if r.IntN(2) == 0 {
					mustSync(t, f)
				}
			}
			if step%50 == 0 {
				if got := readAll(t, fs, "a"); !bytes.Equal(got, model) {
					t.Fatalf("seed %d step %d: content differs from model", seed, step)
				}
			}
		}
		if seed%2 == 0 {
			fs.Crash(CrashKeepAll, 0)
		} else {
			mustSync(t, f)
			fs.Crash(CrashDropAll, 0)
		}
		if got := readAll(t, fs, "a"); !bytes.Equal(got, model) {
			t.Fatalf("seed %d: after crash content differs from model", seed)
		}
	}
}

// TestConcurrentUseAndCrash exercises the locking under -race: writers and
// syncers on several handles while the file system crashes underneath them.
func TestConcurrentUseAndCrash(t *testing.T) {
	fs := New()
	for i := 0; i < 4; i++ {
		mustCreate(t, fs, fmt.Sprint("f", i))
	}
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			path := fmt.Sprint("f", w)
			f, _ := fs.Open(path)
			for i := 0; i < 300; i++ {
				_, err := f.WriteAt(fill(byte(i), 512), int64(i%16)*512)
				if err == nil && i%10 == 0 {
					err = f.Sync()
				}
				if errors.Is(err, ErrCrashed) {
					f.Close()
					if f, err = fs.Open(path); err != nil {
						t.Error(err)
						return
					}
				} else if err != nil {
					t.Error(err)
					return
				}
				buf := make([]byte, 512)
				f.ReadAt(buf, 0)
			}
			f.Close()
		}(w)
	}
	for i := 0; i < 20; i++ {
		fs.Crash(CrashRandom, uint64(i))
	}
	wg.Wait()
	if fs.CrashCount() != 20 {
		t.Fatalf("crash count %d", fs.CrashCount())
	}
}

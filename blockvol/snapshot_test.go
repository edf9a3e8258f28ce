package blockvol_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/blockvol/faultfs"
)

const snapBS = 4096

// lsnModel is the LSN oracle: every acknowledged write with the LSN it got,
// so the expected image at any LSN can be rebuilt.
type lsnModel struct {
	mu     sync.Mutex
	size   int64
	span   int64 // writes go to [0, span); 0 means size
	writes []modelWrite
}

type modelWrite struct {
	lsn  uint64
	off  int64
	data []byte // nil: zeroed (trim)
	n    int64
}

// at returns the device image with every write ≤ lsn applied.
func (m *lsnModel) at(lsn uint64) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	img := make([]byte, m.size)
	for _, w := range m.writes {
		if w.lsn > lsn {
			continue
		}
		if w.data == nil {
			clear(img[w.off : w.off+w.n])
		} else {
			copy(img[w.off:], w.data)
		}
	}
	return img
}

// write does one single-record write (one to four blocks, or a trim) and
// records it with the LSN it got. Only one goroutine may write at a time:
// the head after the write is then its LSN.
func (m *lsnModel) write(t testing.TB, v *blockvol.Volume, rng *rand.Rand) {
	t.Helper()
	blocks := int64(1 + rng.IntN(4))
	span := m.size
	if m.span > 0 {
		span = m.span
	}
	off := rng.Int64N(span/snapBS-blocks+1) * snapBS
	w := modelWrite{off: off, n: blocks * snapBS}
	var err error
	if rng.IntN(8) == 0 {
		err = v.Trim(off, w.n)
	} else {
		w.data = make([]byte, w.n)
		for i := range w.data {
			w.data[i] = byte(rng.Uint32())
		}
		err = v.WriteAt(w.data, off, false)
	}
	if err != nil {
		t.Errorf("write at %d: %v", off, err)
		return
	}
	w.lsn = v.Status().Head
	m.mu.Lock()
	if n := len(m.writes); n > 0 && m.writes[n-1].lsn >= w.lsn {
		t.Errorf("write got LSN %d after %d", w.lsn, m.writes[n-1].lsn)
	}
	m.writes = append(m.writes, w)
	m.mu.Unlock()
}

// readImage reads a whole snapshot image.
func readImage(t testing.TB, r *blockvol.SnapshotReader) []byte {
	t.Helper()
	img := make([]byte, r.Info().Size)
	if n, err := r.ReadAt(img, 0); err != nil || n != len(img) {
		t.Fatalf("read image: %d bytes, %v", n, err)
	}
	var one [1]byte
	if _, err := r.ReadAt(one[:], r.Info().Size); err != io.EOF {
		t.Fatalf("read past the image: %v, want EOF", err)
	}
	return img
}

func sameImage(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: differs at byte %d (block %d)", what, i, i/snapBS)
		}
	}
}

func newSnapVolume(t *testing.T, size, wal int64, manual bool) (*blockvol.Volume, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vol.blk")
	v, err := blockvol.Create(path, size, blockvol.Options{WALSize: wal, ManualFlush: manual, Standalone: true, FlushInterval: 2 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v, path
}

// TestSnapshotExactWhileWriting: a snapshot taken while a writer keeps
// writing is exactly the LSN oracle's image at the snapshot's LSN, at least
// the head when it was asked for, and sparse on disk.
func TestSnapshotExactWhileWriting(t *testing.T) {
	const size = 16 << 20
	v, path := newSnapVolume(t, size, 8<<20, false)
	m := &lsnModel{size: size}
	rng := rand.New(rand.NewPCG(1, 2))
	// Writes only in the first 4 MiB: the rest stays holes.
	m.span = 4 << 20
	for i := 0; i < 300; i++ {
		m.write(t, v, rng)
	}
	if _, ok := v.Snapshot(); ok {
		t.Fatal("a new volume reports a snapshot")
	}
	if _, err := v.OpenSnapshot(); !errors.Is(err, blockvol.ErrNoSnapshot) {
		t.Fatalf("open without a snapshot: %v", err)
	}

	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		wrng := rand.New(rand.NewPCG(3, 4))
		for {
			select {
			case <-stop:
				return
			default:
			}
			m.write(t, v, wrng)
			time.Sleep(200 * time.Microsecond)
		}
	}()
	var infos []blockvol.SnapshotInfo
	for i := 0; i < 3; i++ {
		head := v.Status().Head
		info, err := v.CreateSnapshot()
		if err != nil {
			close(stop)
			<-done
			t.Fatal(err)
		}
		if !info.Trusted || info.LSN < head || info.Size != size || info.BlockSize != snapBS {
			close(stop)
			<-done
			t.Fatalf("snapshot %+v, head before %d", info, head)
		}
		infos = append(infos, info)
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	<-done
	if v.Status().Head <= infos[0].LSN {
		t.Fatal("no write raced with the snapshots")
	}
	for i := 1; i < len(infos); i++ {
		if infos[i].Seq <= infos[i-1].Seq || infos[i].LSN < infos[i-1].LSN {
			t.Fatalf("snapshot %d %+v after %+v", i, infos[i], infos[i-1])
		}
	}
	last := infos[len(infos)-1]
	r, err := v.OpenSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	if r.Info().LSN != last.LSN || r.Info().SHA256 != last.SHA256 {
		t.Fatalf("opened %+v, created %+v", r.Info(), last)
	}
	sameImage(t, fmt.Sprintf("snapshot at %d", last.LSN), readImage(t, r), m.at(last.LSN))
	r.Close()
	if b, ok := v.SnapshotBase(); ok != (v.Status().Tail <= b.LSN+1) {
		t.Fatalf("SnapshotBase %v with tail %d and snapshot %d", ok, v.Status().Tail, b.LSN)
	}

	// Sparse: the 12 MiB never written take no space in the image; the
	// previous snapshot's image was emptied.
	slot := imageSlot(t, path, last)
	var st syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("%s.snap.%d", path, 1-slot), &st); err != nil || st.Size != 0 {
		t.Fatalf("the replaced image: %v, %d bytes", err, st.Size)
	}
	if err := syscall.Stat(fmt.Sprintf("%s.snap.%d", path, slot), &st); err != nil {
		t.Fatal(err)
	}
	if used := st.Blocks * 512; used > 6<<20 {
		t.Fatalf("image of a volume with 4 MiB written uses %d bytes", used)
	}

	// Reopen: the same snapshot, still exact.
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	v2, err := blockvol.Open(path, blockvol.Options{Standalone: true})
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close()
	info, ok := v2.Snapshot()
	if !ok || !info.Trusted || info.LSN != last.LSN || info.Seq != last.Seq {
		t.Fatalf("after reopen %+v (ok %v), created %+v", info, ok, last)
	}
	r, err = v2.OpenSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	sameImage(t, "snapshot after reopen", readImage(t, r), m.at(last.LSN))
}

// imageSlot finds which image file holds the snapshot (by its size on disk
// and hash).
func imageSlot(t *testing.T, path string, info blockvol.SnapshotInfo) int {
	t.Helper()
	for i := 0; i < 2; i++ {
		b, err := os.ReadFile(fmt.Sprintf("%s.snap.%d", path, i))
		if err == nil && int64(len(b)) == info.Size && sha256.Sum256(b) == info.SHA256 {
			return i
		}
	}
	t.Fatalf("no image file holds snapshot %+v", info)
	return -1
}

// TestSnapshotReplaceWhileReading: a reader keeps reading its image while
// the snapshot is replaced; the image it reads is never overwritten
// (ErrSnapshotBusy) until it closes; DeleteSnapshot leaves it readable.
func TestSnapshotReplaceWhileReading(t *testing.T) {
	const size = 2 << 20
	v, _ := newSnapVolume(t, size, 256<<10, false)
	m := &lsnModel{size: size}
	rng := rand.New(rand.NewPCG(5, 6))
	for i := 0; i < 50; i++ {
		m.write(t, v, rng)
	}
	if _, err := v.CreateSnapshot(); err != nil {
		t.Fatal(err)
	}
	r, err := v.OpenSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	old := r.Info()
	for i := 0; i < 50; i++ {
		m.write(t, v, rng)
	}
	s2, err := v.CreateSnapshot() // the other image slot
	if err != nil {
		t.Fatal(err)
	}
	if s2.LSN <= old.LSN {
		t.Fatalf("second snapshot at %d, first at %d", s2.LSN, old.LSN)
	}
	// The next one would overwrite the image r reads.
	if _, err := v.CreateSnapshot(); !errors.Is(err, blockvol.ErrSnapshotBusy) {
		t.Fatalf("snapshot over an image being read: %v", err)
	}
	if info, _ := v.Snapshot(); info.Seq != s2.Seq || !info.Trusted {
		t.Fatalf("a refused snapshot changed the current one: %+v", info)
	}
	sameImage(t, "old reader", readImage(t, r), m.at(old.LSN))
	if err := v.DeleteSnapshot(); err != nil {
		t.Fatal(err)
	}
	if _, ok := v.Snapshot(); ok {
		t.Fatal("snapshot still reported after delete")
	}
	if _, err := v.OpenSnapshot(); !errors.Is(err, blockvol.ErrNoSnapshot) {
		t.Fatalf("open after delete: %v", err)
	}
	sameImage(t, "reader after delete", readImage(t, r), m.at(old.LSN))
	r.Close()
	r.Close() // idempotent
	s3, err := v.CreateSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	r3, err := v.OpenSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer r3.Close()
	sameImage(t, "snapshot after delete", readImage(t, r3), m.at(s3.LSN))
}

// TestSnapshotCorruptionUntrusted: an image that no longer hashes to its
// manifest, or a manifest whose slots are both corrupt, is reported
// untrusted with a clear error and never opened; a new snapshot (or a
// delete) replaces it.
func TestSnapshotCorruptionUntrusted(t *testing.T) {
	const size = 1 << 20
	v, path := newSnapVolume(t, size, 256<<10, false)
	m := &lsnModel{size: size}
	rng := rand.New(rand.NewPCG(7, 8))
	for i := 0; i < 40; i++ {
		m.write(t, v, rng)
	}
	info, err := v.CreateSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	img := fmt.Sprintf("%s.snap.%d", path, imageSlot(t, path, info))
	flipByte(t, img, 4096*3+17)
	// Streaming opens check the manifest and the size only: the reader's
	// own digest of the image differs from the manifest's.
	rs, err := v.OpenSnapshotStreaming()
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(readImage(t, rs)) == rs.Info().SHA256 {
		t.Fatal("a corrupted image hashes to its manifest")
	}
	rs.Close()
	if _, err := v.OpenSnapshot(); !errors.Is(err, blockvol.ErrSnapshotUntrusted) {
		t.Fatalf("open of a corrupt image: %v", err)
	}
	if _, err := v.OpenSnapshotStreaming(); !errors.Is(err, blockvol.ErrSnapshotUntrusted) {
		t.Fatalf("streaming open of a snapshot found corrupt: %v", err)
	}
	got, ok := v.Snapshot()
	if !ok || got.Trusted || !errors.Is(got.Err, blockvol.ErrSnapshotUntrusted) {
		t.Fatalf("corrupt image reported %+v", got)
	}
	if _, ok := v.SnapshotBase(); ok {
		t.Fatal("a corrupt snapshot offered as a base")
	}
	// Still untrusted after the volume reopens (the hash is checked again).
	v = reopenVol(t, v, path)
	if _, err := v.OpenSnapshot(); !errors.Is(err, blockvol.ErrSnapshotUntrusted) {
		t.Fatalf("open of a corrupt image after reopen: %v", err)
	}
	// A truncated image too.
	info, err = v.CreateSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(fmt.Sprintf("%s.snap.%d", path, imageSlot(t, path, info)), size-4096); err != nil {
		t.Fatal(err)
	}
	if _, err := v.OpenSnapshotStreaming(); !errors.Is(err, blockvol.ErrSnapshotUntrusted) {
		t.Fatalf("streaming open of a truncated image: %v", err)
	}
	if _, err := v.OpenSnapshot(); !errors.Is(err, blockvol.ErrSnapshotUntrusted) {
		t.Fatalf("open of a truncated image: %v", err)
	}

	// Both manifest slots corrupt.
	info, err = v.CreateSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	flipByte(t, path+".snap", 30)
	flipByte(t, path+".snap", 4096+30)
	v = reopenVol(t, v, path)
	got, ok = v.Snapshot()
	if !ok || got.Trusted || !errors.Is(got.Err, blockvol.ErrSnapshotUntrusted) {
		t.Fatalf("corrupt manifest reported %+v (ok %v)", got, ok)
	}
	if _, err := v.OpenSnapshot(); !errors.Is(err, blockvol.ErrSnapshotUntrusted) {
		t.Fatalf("open with a corrupt manifest: %v", err)
	}
	if err := v.DeleteSnapshot(); err != nil {
		t.Fatal(err)
	}
	if _, ok := v.Snapshot(); ok {
		t.Fatal("snapshot reported after deleting a corrupt one")
	}
	info, err = v.CreateSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	v = reopenVol(t, v, path)
	r, err := v.OpenSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	sameImage(t, "snapshot after corruption", readImage(t, r), m.at(info.LSN))

	// One corrupt manifest slot: the other (older) snapshot is used only if
	// its image still hashes; here it was overwritten, so nothing is
	// trusted, never the wrong image.
	r.Close()
	flipByte(t, path+".snap", int64(manifestSlotOf(t, path, info))*4096+40)
	v = reopenVol(t, v, path)
	if got, ok := v.Snapshot(); ok && got.Trusted {
		if rr, err := v.OpenSnapshot(); err == nil {
			rr.Close()
			t.Fatalf("an older manifest naming an overwritten image was opened: %+v", got)
		}
	}
}

// manifestSlotOf returns the manifest slot (0 or 1) holding info's seq.
func manifestSlotOf(t *testing.T, path string, info blockvol.SnapshotInfo) int {
	t.Helper()
	b, err := os.ReadFile(path + ".snap")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2 && (i+1)*4096 <= len(b); i++ {
		var seq uint64
		for k := 0; k < 8; k++ {
			seq |= uint64(b[i*4096+16+k]) << (8 * k)
		}
		if seq == info.Seq {
			return i
		}
	}
	t.Fatalf("no manifest slot with seq %d", info.Seq)
	return -1
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

func reopenVol(t *testing.T, v *blockvol.Volume, path string) *blockvol.Volume {
	t.Helper()
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	nv, err := blockvol.Open(path, blockvol.Options{Standalone: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nv.Close() })
	return nv
}

// TestSnapshotNeverStallsWriters: while a snapshot is being copied,
// writers fill and refill the WAL many times over (the flusher keeps
// running: blocks it changes are copied on write first); they all complete
// while the copy waits, and the snapshot is still exactly the volume at
// its LSN.
func TestSnapshotNeverStallsWriters(t *testing.T) {
	const size = 8 << 20
	v, _ := newSnapVolume(t, size, 64<<10, false)
	m := &lsnModel{size: size}
	rng := rand.New(rand.NewPCG(9, 10))
	for i := 0; i < 400; i++ {
		m.write(t, v, rng)
	}
	before := v.Status().Checkpoint
	done := false
	v.SetSnapshotCopyHook(func(off int64) {
		if done || off < 2<<20 {
			return
		}
		done = true
		// Mid-copy: 200 writes and trims of up to 16 KiB over the whole
		// volume (ahead of the copier and behind it) through a 64 KiB
		// WAL, each one waited for.
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			wrng := rand.New(rand.NewPCG(11, 12))
			for i := 0; i < 200; i++ {
				m.write(t, v, wrng)
			}
		}()
		select {
		case <-wrote:
		case <-time.After(30 * time.Second):
			t.Error("writers stalled while a snapshot was being copied")
		}
	})
	info, err := v.CreateSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	if !done || t.Failed() {
		t.Fatalf("hook ran %v", done)
	}
	if info.LSN < before || v.Status().Checkpoint <= info.LSN {
		t.Fatalf("snapshot at %d, checkpoint before %d, now %d: the flusher did not run during the copy", info.LSN, before, v.Status().Checkpoint)
	}
	r, err := v.OpenSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	sameImage(t, fmt.Sprintf("snapshot at %d with writes during the copy", info.LSN), readImage(t, r), m.at(info.LSN))
	if sameImageQuiet(m.at(info.LSN), m.at(v.Status().Head)) {
		t.Fatal("the writes during the copy changed nothing")
	}
}

func sameImageQuiet(a, b []byte) bool { return bytes.Equal(a, b) }

// TestBeginRebuildDeletesSnapshot: a volume being rebuilt drops its base
// snapshot durably, and refuses new ones until the rebuild finishes.
func TestBeginRebuildDeletesSnapshot(t *testing.T) {
	v, path := newSnapVolume(t, 1<<20, 256<<10, false)
	m := &lsnModel{size: 1 << 20}
	rng := rand.New(rand.NewPCG(11, 12))
	for i := 0; i < 10; i++ {
		m.write(t, v, rng)
	}
	if _, err := v.CreateSnapshot(); err != nil {
		t.Fatal(err)
	}
	v.Fence()
	if err := v.BeginRebuild(); err != nil {
		t.Fatal(err)
	}
	if _, ok := v.Snapshot(); ok {
		t.Fatal("snapshot kept by a volume being rebuilt")
	}
	if _, err := v.CreateSnapshot(); !errors.Is(err, blockvol.ErrSnapshotAborted) {
		t.Fatalf("snapshot of a volume being rebuilt: %v", err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	v2, err := blockvol.Open(path, blockvol.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close()
	if _, ok := v2.Snapshot(); ok {
		t.Fatal("the deleted snapshot came back after reopen")
	}
}

// TestSnapshotCrashAtEverySync: a crash at every sync point of
// CreateSnapshot (faultfs: unsynced writes dropped, torn, reordered) leaves
// after reopen the old snapshot or the new one, trusted and exact, never a
// torn one; with no old snapshot, none or the new one.
func TestSnapshotCrashAtEverySync(t *testing.T) {
	for _, withOld := range []bool{true, false} {
		t.Run(fmt.Sprintf("old=%v", withOld), func(t *testing.T) {
			crashSnapshotSweep(t, withOld)
		})
	}
}

func crashSnapshotSweep(t *testing.T, withOld bool) {
	const size = 512 << 10
	opts := func(fs *faultfs.FS) blockvol.Options {
		return blockvol.Options{FS: faultFS{fs}, WALSize: 128 << 10, Standalone: true, ManualFlush: true}
	}
	// setup writes two rounds, snapshotting after the first (withOld), and
	// returns the images and LSNs both snapshots must show.
	type setup struct {
		v          *blockvol.Volume
		oldLSN     uint64
		oldImg     []byte
		newImg     []byte
		newLSN     uint64
		syncsAfter int
	}
	prepare := func(fs *faultfs.FS) setup {
		v, err := blockvol.Create(crashVolPath, size, opts(fs))
		if err != nil {
			t.Fatal(err)
		}
		m := &lsnModel{size: size}
		rng := rand.New(rand.NewPCG(13, 14))
		for i := 0; i < 30; i++ {
			m.write(t, v, rng)
		}
		var s setup
		s.v = v
		if withOld {
			info, err := v.CreateSnapshot()
			if err != nil {
				t.Fatal(err)
			}
			s.oldLSN, s.oldImg = info.LSN, m.at(info.LSN)
		}
		for i := 0; i < 30; i++ {
			m.write(t, v, rng)
		}
		// Quiesce the flusher (it ran for writers waiting for room) so the
		// sync points of CreateSnapshot are the same from run to run.
		if err := v.Checkpoint(); err != nil {
			t.Fatal(err)
		}
		s.newLSN = v.Status().Head
		s.newImg = m.at(s.newLSN)
		s.syncsAfter = fs.SyncCount()
		return s
	}
	// Count the sync points of one CreateSnapshot.
	fs := faultfs.New()
	s := prepare(fs)
	if _, err := s.v.CreateSnapshot(); err != nil {
		t.Fatal(err)
	}
	points := fs.SyncCount() - s.syncsAfter
	s.v.Close()
	if points < 2 {
		t.Fatalf("CreateSnapshot made %d syncs", points)
	}
	sawNew, sawOld := false, false
	for k := 1; k <= points+1; k++ {
		for seed := uint64(0); seed < 3; seed++ {
			fs := faultfs.New()
			s := prepare(fs)
			if k <= points {
				fs.CrashAtSync(s.syncsAfter+k, faultfs.CrashRandom, seed)
			}
			_, cerr := s.v.CreateSnapshot()
			// A snapshot CreateSnapshot returned must survive any crash.
			// (It may succeed with k ≤ points when the crash hit another
			// sync — the flusher's — after its image was durable.)
			mustNew := cerr == nil
			if k > points {
				if cerr != nil {
					t.Fatal(cerr)
				}
				fs.Crash(faultfs.CrashRandom, seed)
			}
			s.v.Close()
			v, err := blockvol.Open(crashVolPath, opts(fs))
			if err != nil {
				t.Fatalf("sync point %d seed %d: reopen: %v", k, seed, err)
			}
			info, ok := v.Snapshot()
			var img []byte
			if ok && info.Trusted {
				r, err := v.OpenSnapshot()
				if err != nil {
					t.Fatalf("sync point %d seed %d: trusted snapshot %+v fails to open: %v", k, seed, info, err)
				} else {
					img = readImage(t, r)
					r.Close()
				}
			}
			switch {
			case img != nil && info.LSN == s.newLSN:
				sameImage(t, fmt.Sprintf("sync point %d seed %d: new snapshot", k, seed), img, s.newImg)
				sawNew = true
			case img != nil && withOld && info.LSN == s.oldLSN:
				sameImage(t, fmt.Sprintf("sync point %d seed %d: old snapshot", k, seed), img, s.oldImg)
				sawOld = true
				if mustNew {
					t.Fatalf("sync point %d seed %d: old snapshot after CreateSnapshot returned", k, seed)
				}
			case img != nil:
				t.Fatalf("sync point %d seed %d: snapshot at %d, neither old %d nor new %d", k, seed, info.LSN, s.oldLSN, s.newLSN)
			case withOld || mustNew:
				t.Fatalf("sync point %d seed %d: no trusted snapshot (%+v, ok %v)", k, seed, info, ok)
			}
			v.Close()
		}
	}
	if !sawNew || (withOld && !sawOld) {
		t.Fatalf("sweep saw new=%v old=%v", sawNew, sawOld)
	}
}

// TestSnapshotHoldsWAL: a snapshot keeps the WAL after its LSN (it stays a
// rebuild base while the flusher runs), within half the WAL; past that its
// hold is revoked and it is no base any more (still trusted), until a new
// snapshot is taken.
func TestSnapshotHoldsWAL(t *testing.T) {
	const size = 4 << 20
	v, _ := newSnapVolume(t, size, 256<<10, false)
	m := &lsnModel{size: size}
	rng := rand.New(rand.NewPCG(15, 16))
	for i := 0; i < 20; i++ {
		m.write(t, v, rng)
	}
	info, err := v.CreateSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	if !info.Retained || v.Status().Holds != 1 {
		t.Fatalf("new snapshot %+v, %d holds", info, v.Status().Holds)
	}
	p := make([]byte, 4*snapBS)
	for i := 0; i < 4; i++ { // 64 KiB: within the 128 KiB budget
		if err := v.WriteAt(p, int64(i)*int64(len(p)), false); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	st := v.Status()
	if b, ok := v.SnapshotBase(); !ok || st.Tail > info.LSN+1 || st.Checkpoint <= info.LSN {
		t.Fatalf("after a checkpoint: base %+v (ok %v), status %+v", b, ok, st)
	}
	for i := 0; i < 40; i++ { // 640 KiB: beyond the budget
		if err := v.WriteAt(p, int64(i%16)*int64(len(p)), false); err != nil {
			t.Fatal(err)
		}
		if err := v.Checkpoint(); err != nil {
			t.Fatal(err)
		}
	}
	got, ok := v.Snapshot()
	if !ok || !got.Trusted || got.Retained || v.Status().Tail <= info.LSN+1 {
		t.Fatalf("after the budget: %+v (ok %v), tail %d", got, ok, v.Status().Tail)
	}
	if _, ok := v.SnapshotBase(); ok {
		t.Fatal("a snapshot whose WAL tail is gone offered as a base")
	}
	if _, err := v.CreateSnapshot(); err != nil {
		t.Fatal(err)
	}
	if _, ok := v.SnapshotBase(); !ok {
		t.Fatal("a new snapshot is no base")
	}
	if err := v.DeleteSnapshot(); err != nil {
		t.Fatal(err)
	}
	if h := v.Status().Holds; h != 0 {
		t.Fatalf("%d holds after delete", h)
	}
}

// BenchmarkCreateSnapshot measures taking a snapshot of a fully written
// 256 MiB volume (MB/s of volume size) while a 4 KiB writer keeps writing
// (copy-on-write active), beside a plain copy of the same number of bytes
// between two files with an fsync, in the same run.
// SNAPBENCH_NOWRITE=1 leaves the writer out.
func BenchmarkCreateSnapshot(b *testing.B) {
	const size = 256 << 20
	dir := b.TempDir()
	path := filepath.Join(dir, "vol.blk")
	v, err := blockvol.Create(path, size, blockvol.Options{WALSize: 64 << 20, Standalone: true})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	rng := rand.New(rand.NewPCG(1, 1))
	chunk := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(chunk)) {
		for i := range chunk {
			chunk[i] = byte(rng.Uint32())
		}
		if err := v.WriteAt(chunk, off, false); err != nil {
			b.Fatal(err)
		}
	}
	if err := v.Checkpoint(); err != nil {
		b.Fatal(err)
	}
	plain := plainCopyMBps(b, path, filepath.Join(dir, "copy"), size)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	var writes int64
	go func() {
		defer wg.Done()
		p := make([]byte, 4096)
		wr := rand.New(rand.NewPCG(2, 2))
		for os.Getenv("SNAPBENCH_NOWRITE") == "" {
			select {
			case <-stop:
				return
			default:
			}
			p[0]++
			if err := v.WriteAt(p, wr.Int64N(size/4096)*4096, false); err != nil {
				b.Error(err)
				return
			}
			writes++
		}
	}()
	b.SetBytes(size)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := v.CreateSnapshot(); err != nil {
			b.Fatal(err)
		}
	}
	el := time.Since(start)
	b.StopTimer()
	close(stop)
	wg.Wait()
	mbps := float64(size) * float64(b.N) / el.Seconds() / 1e6
	b.ReportMetric(mbps, "snapshot-MB/s")
	b.ReportMetric(plain, "plain-copy-MB/s")
	b.ReportMetric(mbps/plain, "x-plain")
	b.ReportMetric(float64(writes)/el.Seconds(), "writes/s")
}

// plainCopyMBps copies n bytes of src into a new file dst (1 MiB reads and
// writes, then fsync) and returns MB/s.
func plainCopyMBps(b *testing.B, src, dst string, n int64) float64 {
	b.Helper()
	in, err := os.Open(src)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		b.Fatal(err)
	}
	defer os.Remove(dst)
	defer out.Close()
	buf := make([]byte, 1<<20)
	start := time.Now()
	for off := int64(0); off < n; off += int64(len(buf)) {
		if _, err := in.ReadAt(buf, off); err != nil && err != io.EOF {
			b.Fatal(err)
		}
		if _, err := out.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := out.Sync(); err != nil {
		b.Fatal(err)
	}
	return float64(n) / time.Since(start).Seconds() / 1e6
}

// TestStaleSnapshotDroppedOnCreate: the snapshot files of a deleted volume
// are never taken for a new volume created at the same path, however far
// the new one gets; SnapshotFiles names them for removal.
func TestStaleSnapshotDroppedOnCreate(t *testing.T) {
	const size = 1 << 20
	v, path := newSnapVolume(t, size, 256<<10, false)
	m := &lsnModel{size: size}
	rng := rand.New(rand.NewPCG(17, 18))
	for i := 0; i < 10; i++ {
		m.write(t, v, rng)
	}
	if _, err := v.CreateSnapshot(); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	nv, err := blockvol.Create(path, size, blockvol.Options{WALSize: 256 << 10, Standalone: true})
	if err != nil {
		t.Fatal(err)
	}
	defer nv.Close()
	m2 := &lsnModel{size: size}
	for i := 0; i < 40; i++ { // beyond the old snapshot's LSN
		m2.write(t, nv, rng)
	}
	if err := nv.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if info, ok := nv.Snapshot(); ok {
		t.Fatalf("a new volume took an earlier volume's snapshot: %+v", info)
	}
	if _, err := nv.OpenSnapshot(); !errors.Is(err, blockvol.ErrNoSnapshot) {
		t.Fatalf("open on a new volume: %v", err)
	}
	files := blockvol.SnapshotFiles(path)
	if _, err := os.Stat(files[0]); err != nil {
		t.Fatalf("manifest %s: %v", files[0], err)
	}
}

// TestDeleteStopsCreation: DeleteSnapshot (which BeginRebuild calls) makes
// a snapshot being copied give up at once instead of waiting for the copy.
func TestDeleteStopsCreation(t *testing.T) {
	const size = 8 << 20
	v, _ := newSnapVolume(t, size, 256<<10, false)
	m := &lsnModel{size: size}
	rng := rand.New(rand.NewPCG(19, 20))
	for i := 0; i < 20; i++ {
		m.write(t, v, rng)
	}
	deleted := make(chan error, 1)
	chunks := 0
	v.SetSnapshotCopyHook(func(off int64) {
		chunks++
		if chunks == 2 {
			n := v.SnapshotDeletes()
			go func() { deleted <- v.DeleteSnapshot() }()
			for i := 0; i < 2000 && v.SnapshotDeletes() == n; i++ {
				time.Sleep(time.Millisecond) // until it asked
			}
		}
	})
	if _, err := v.CreateSnapshot(); !errors.Is(err, blockvol.ErrSnapshotAborted) {
		t.Fatalf("creation during a delete: %v", err)
	}
	if chunks >= size/(1<<20) {
		t.Fatalf("the copy went on to chunk %d", chunks)
	}
	if err := <-deleted; err != nil {
		t.Fatal(err)
	}
	if _, ok := v.Snapshot(); ok {
		t.Fatal("snapshot after an aborted creation and a delete")
	}
}

// TestSnapshotDeleteCrash: a crash at every sync point of DeleteSnapshot
// leaves the snapshot (trusted and exact) or none — and none once
// DeleteSnapshot returned.
func TestSnapshotDeleteCrash(t *testing.T) {
	const size = 256 << 10
	opts := func(fs *faultfs.FS) blockvol.Options {
		return blockvol.Options{FS: faultFS{fs}, WALSize: 128 << 10, Standalone: true, ManualFlush: true}
	}
	prepare := func(fs *faultfs.FS) (*blockvol.Volume, blockvol.SnapshotInfo, []byte) {
		v, err := blockvol.Create(crashVolPath, size, opts(fs))
		if err != nil {
			t.Fatal(err)
		}
		m := &lsnModel{size: size}
		rng := rand.New(rand.NewPCG(21, 22))
		for i := 0; i < 20; i++ {
			m.write(t, v, rng)
		}
		info, err := v.CreateSnapshot()
		if err != nil {
			t.Fatal(err)
		}
		return v, info, m.at(info.LSN)
	}
	fs := faultfs.New()
	v, _, _ := prepare(fs)
	before := fs.SyncCount()
	if err := v.DeleteSnapshot(); err != nil {
		t.Fatal(err)
	}
	points := fs.SyncCount() - before
	v.Close()
	if points < 1 {
		t.Fatalf("DeleteSnapshot made %d syncs", points)
	}
	sawGone, sawKept := false, false
	for k := 1; k <= points+1; k++ {
		for seed := uint64(0); seed < 4; seed++ {
			fs := faultfs.New()
			v, info, img := prepare(fs)
			if k <= points {
				fs.CrashAtSync(fs.SyncCount()+k, faultfs.CrashRandom, seed)
			}
			derr := v.DeleteSnapshot()
			if k > points {
				if derr != nil {
					t.Fatal(derr)
				}
				fs.Crash(faultfs.CrashRandom, seed)
			}
			v.Close()
			nv, err := blockvol.Open(crashVolPath, opts(fs))
			if err != nil {
				t.Fatal(err)
			}
			got, ok := nv.Snapshot()
			switch {
			case !ok:
				sawGone = true
			case got.Trusted && got.LSN == info.LSN && derr != nil:
				r, err := nv.OpenSnapshot()
				if err != nil {
					t.Fatalf("sync point %d seed %d: kept snapshot fails to open: %v", k, seed, err)
				}
				sameImage(t, "snapshot kept through a crashed delete", readImage(t, r), img)
				r.Close()
				sawKept = true
			default:
				t.Fatalf("sync point %d seed %d: after delete (err %v): %+v (ok %v)", k, seed, derr, got, ok)
			}
			nv.Close()
		}
	}
	if !sawGone || !sawKept {
		t.Fatalf("sweep saw gone=%v kept=%v", sawGone, sawKept)
	}
}

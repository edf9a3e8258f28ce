package blockvol

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol/faultfs"
)

// applyEpochs applies one record per LSN from..to at LBA lsn with data
// byte(epoch), all of the given epoch, as a replica.
func applyEpochs(t testing.TB, v *Volume, from, to, epoch uint64) {
	t.Helper()
	bs := v.BlockSize()
	for l := from; l <= to; l++ {
		d := make([]byte, bs)
		d[0] = byte(epoch)
		if err := v.ApplyReplicated(Record{LSN: l, Epoch: epoch, Kind: KindWrite, LBA: l, Blocks: 1, Data: d}); err != nil {
			t.Fatalf("apply lsn %d epoch %d: %v", l, epoch, err)
		}
	}
}

func wantTerms(t testing.TB, v *Volume, want []Term) {
	t.Helper()
	if got := v.Terms(); !reflect.DeepEqual(got, want) {
		t.Fatalf("terms %v, want %v", got, want)
	}
}

func wantTermAt(t testing.TB, v *Volume, lsn, epoch uint64, ok bool) {
	t.Helper()
	e, k := v.TermAt(lsn)
	if k != ok || (ok && e != epoch) {
		t.Fatalf("TermAt(%d) = %d, %v; want %d, %v", lsn, e, k, epoch, ok)
	}
}

func openReplica(t testing.TB, path string, opts Options, epoch uint64) *Volume {
	t.Helper()
	v, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	if err := v.Unfence(epoch, RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestTermsSurviveCheckpoint: the epochs of records the flusher let go of
// are still known, also after a reopen, and TermAt answers exactly.
func TestTermsSurviveCheckpoint(t *testing.T) {
	v, path := newTestVolume(t, 64*4096, 256<<10, Options{ManualFlush: true})
	wantTerms(t, v, nil)
	wantTermAt(t, v, 1, 0, false)
	for i := 0; i < 3; i++ {
		if err := v.WriteAt(block(4096, byte(i)), int64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.FenceEpoch(4); err != nil {
		t.Fatal(err)
	}
	if err := v.Unfence(4, RolePrimary, time.Time{}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := v.WriteAt(block(4096, byte(i)), int64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	want := []Term{{Epoch: 1, First: 1}, {Epoch: 4, First: 4}}
	wantTerms(t, v, want)
	for lsn, e := range map[uint64]uint64{1: 1, 3: 1, 4: 4, 5: 4} {
		wantTermAt(t, v, lsn, e, true)
	}
	wantTermAt(t, v, 0, 0, false)
	wantTermAt(t, v, 6, 0, false)
	if err := v.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if st := v.Status(); st.Tail != 6 {
		t.Fatalf("tail %d: the WAL should hold no record", st.Tail)
	}
	wantTerms(t, v, want)
	v = reopen(t, v, path, Options{ManualFlush: true})
	wantTerms(t, v, want)
	wantTermAt(t, v, 3, 1, true)
	wantTermAt(t, v, 5, 4, true)
	wantTermAt(t, v, 6, 0, false)
}

// TestTermsReplicaTruncate: a replica's history follows ApplyReplicated;
// TruncateWAL drops the terms beyond the point, durably.
func TestTermsReplicaTruncate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "r")
	opts := Options{WALSize: 256 << 10, ManualFlush: true}
	v, err := Create(path, 64*4096, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Unfence(7, RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	applyEpochs(t, v, 1, 2, 2)
	applyEpochs(t, v, 3, 4, 3)
	if err := v.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	applyEpochs(t, v, 5, 6, 5)
	applyEpochs(t, v, 7, 9, 7)
	wantTerms(t, v, []Term{{2, 1}, {3, 3}, {5, 5}, {7, 7}})
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	v.Fence()
	if err := v.TruncateWAL(5); err != nil {
		t.Fatal(err)
	}
	want := []Term{{2, 1}, {3, 3}, {5, 5}}
	wantTerms(t, v, want)
	wantTermAt(t, v, 6, 0, false)
	v.Close()
	v = openReplica(t, path, opts, 8)
	wantTerms(t, v, want)
	// The log goes on with a new epoch right after the truncation point.
	applyEpochs(t, v, 6, 6, 8)
	wantTerms(t, v, []Term{{2, 1}, {3, 3}, {5, 5}, {8, 6}})
	// A duplicate of another epoch is still refused (the history does not
	// change what ApplyReplicated accepts).
	if err := v.ApplyReplicated(Record{LSN: 6, Epoch: 7, Kind: KindWrite, LBA: 6, Blocks: 1, Data: make([]byte, 4096)}); !errors.Is(err, ErrLSNConflict) {
		t.Fatalf("conflicting duplicate: %v", err)
	}
}

// TestTermsRebuildInstall: BeginRebuild forgets the history; InstallBaseTerms
// takes the given one up to the base LSN, durably; bad terms are refused.
func TestTermsRebuildInstall(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r")
	opts := Options{WALSize: 256 << 10, ManualFlush: true}
	v, err := Create(path, 64*4096, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Unfence(3, RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	applyEpochs(t, v, 1, 3, 3)
	v.Fence()
	if err := v.BeginRebuild(); err != nil {
		t.Fatal(err)
	}
	wantTerms(t, v, nil)
	wantTermAt(t, v, 2, 0, false)
	for _, bad := range [][]Term{
		{{1, 5}, {2, 3}},
		{{1, 0}},
		{{1, 1}, {1, 4}},
	} {
		if err := v.InstallBaseTerms(10, bad); err == nil {
			t.Fatalf("install with terms %v accepted", bad)
		}
	}
	if err := v.InstallBaseTerms(10, []Term{{1, 1}, {2, 5}, {4, 11}}); err != nil {
		t.Fatal(err)
	}
	want := []Term{{1, 1}, {2, 5}}
	wantTerms(t, v, want)
	wantTermAt(t, v, 10, 2, true)
	wantTermAt(t, v, 11, 0, false)
	v.Close()
	v = openReplica(t, path, opts, 4)
	wantTerms(t, v, want)
	applyEpochs(t, v, 11, 12, 4)
	if err := v.FinishRebuild(); err != nil {
		t.Fatal(err)
	}
	wantTerms(t, v, []Term{{1, 1}, {2, 5}, {4, 11}})
}

// TestTermsBounded: at most MaxTerms are kept; the epochs of records below
// the oldest kept term are unknown, never guessed, also after a reopen.
func TestTermsBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r")
	opts := Options{WALSize: 1 << 20, ManualFlush: true}
	v, err := Create(path, 128*4096, opts)
	if err != nil {
		t.Fatal(err)
	}
	const n = MaxTerms + 10
	if err := v.Unfence(n, RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	for e := uint64(1); e <= n; e++ {
		applyEpochs(t, v, e, e, e)
		if e == n/2 {
			if err := v.Checkpoint(); err != nil {
				t.Fatal(err)
			}
		}
	}
	check := func(v *Volume) {
		t.Helper()
		terms := v.Terms()
		if len(terms) != MaxTerms || terms[0].First != n-MaxTerms+1 || terms[len(terms)-1].First != n {
			t.Fatalf("terms %v", terms)
		}
		for l := uint64(1); l <= n; l++ {
			wantTermAt(t, v, l, l, l > n-MaxTerms)
		}
	}
	check(v)
	if err := v.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	v.Close()
	v = openReplica(t, path, opts, n)
	check(v)
}

// TestTermsOldFormat: a version 1 superblock (no history) opens with an
// empty history; the records still in the WAL give the terms from the
// tail on; the first superblock write upgrades the file to version 2.
func TestTermsOldFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r")
	opts := Options{WALSize: 256 << 10, ManualFlush: true}
	v, err := Create(path, 64*4096, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Unfence(2, RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	applyEpochs(t, v, 1, 3, 2)
	if err := v.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	applyEpochs(t, v, 4, 5, 2)
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	// A clean close keeps records 4..5 in the WAL; then both superblock
	// copies are rewritten as version 1.
	v.Close()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	raw := make([]byte, walOffset)
	if _, err := f.ReadAt(raw, 0); err != nil {
		t.Fatal(err)
	}
	for slot := 0; slot < 2; slot++ {
		b := raw[slot*superblockSize : (slot+1)*superblockSize]
		s, err := decodeSuperblock(b)
		if err != nil {
			t.Fatal(err)
		}
		if s.version != formatVersion || len(s.terms) == 0 && s.checkpoint >= 3 {
			t.Fatalf("slot %d: version %d terms %v checkpoint %d", slot, s.version, s.terms, s.checkpoint)
		}
		s.version, s.terms = 1, nil
		s.encode(b)
		if _, err := f.WriteAt(b, int64(slot*superblockSize)); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	v = openReplica(t, path, opts, 3)
	// The clean close left records 4..5 in the WAL: their epoch is known,
	// the checkpointed ones' is not.
	wantTerms(t, v, []Term{{2, 4}})
	wantTermAt(t, v, 3, 0, false)
	wantTermAt(t, v, 5, 2, true)
	applyEpochs(t, v, 6, 6, 3)
	if err := v.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	v.sbMu.Lock()
	sb := v.sb
	v.sbMu.Unlock()
	if sb.version != formatVersion || !reflect.DeepEqual(sb.terms, []Term{{2, 4}, {3, 6}}) {
		t.Fatalf("after a write: version %d terms %v", sb.version, sb.terms)
	}
}

// TestSuperblockTerms: the history round-trips; a count beyond MaxTerms,
// unordered terms or terms beyond the checkpoint make the copy invalid.
func TestSuperblockTerms(t *testing.T) {
	s := testSuperblock()
	s.terms = []Term{{1, 1}, {5, 20}, {9, 41}}
	buf := make([]byte, superblockSize)
	s.encode(buf)
	got, err := decodeSuperblock(buf)
	if err != nil || !reflect.DeepEqual(got.terms, s.terms) {
		t.Fatalf("round trip: %v %v", got.terms, err)
	}
	full := testSuperblock()
	full.checkpoint = MaxTerms
	for i := 0; i < MaxTerms; i++ {
		full.terms = append(full.terms, Term{Epoch: uint64(i), First: uint64(i + 1)})
	}
	full.encode(buf)
	if got, err := decodeSuperblock(buf); err != nil || len(got.terms) != MaxTerms {
		t.Fatalf("full history: %d terms, %v", len(got.terms), err)
	}
	for name, terms := range map[string][]Term{
		"beyond checkpoint": {{1, 1}, {5, 42}},
		"unordered":         {{1, 20}, {5, 10}},
		"first 0":           {{1, 0}},
		"repeated epoch":    {{1, 1}, {1, 10}},
	} {
		b := testSuperblock()
		b.terms = terms
		b.encode(buf)
		if _, err := decodeSuperblock(buf); !errors.Is(err, ErrBadSuperblock) {
			t.Fatalf("%s: %v", name, err)
		}
	}
	// A count beyond MaxTerms (with a valid CRC).
	s.encode(buf)
	buf[termsOffset] = MaxTerms + 1
	copy(buf[4092:], le32(crc32c(buf[:4092])))
	if _, err := decodeSuperblock(buf); !errors.Is(err, ErrBadSuperblock) {
		t.Fatalf("count beyond MaxTerms: %v", err)
	}
	// Version 1 ignores the area.
	s.version = 1
	s.encode(buf)
	if got, err := decodeSuperblock(buf); err != nil || got.terms != nil {
		t.Fatalf("version 1: %v %v", got.terms, err)
	}
}

func le32(x uint32) []byte {
	return []byte{byte(x), byte(x >> 8), byte(x >> 16), byte(x >> 24)}
}

// TestCrashTerms crashes at every sync of a replica's life (applies,
// flushes, checkpoints, a truncation, epoch changes), with random loss of
// unsynced writes, then once more after reopening. Each record n writes
// LBA n with byte(epoch): after every recovery, for each LSN up to the
// recovered head, the history knows the epoch and it is exactly the one of
// the record whose data survived; beyond the head it claims nothing.
func TestCrashTerms(t *testing.T) {
	opts := func(fs *faultfs.FS) Options {
		return Options{FS: ffsAdapter{fs}, WALSize: 64 << 10, ManualFlush: true}
	}
	check := func(t *testing.T, v *Volume, what string) {
		t.Helper()
		head := v.Status().Head
		for _, tm := range v.Terms() {
			if tm.First > head {
				t.Fatalf("%s: term %v beyond head %d", what, tm, head)
			}
		}
		for l := uint64(1); l <= head; l++ {
			e, ok := v.TermAt(l)
			got := mustRead(t, v, int64(l)*4096, 4096)[0]
			if !ok || byte(e) != got {
				t.Fatalf("%s: lsn %d: history says %d (%v), data of epoch %d", what, l, e, ok, got)
			}
		}
		if _, ok := v.TermAt(head + 1); ok {
			t.Fatalf("%s: epoch claimed beyond head %d", what, head)
		}
	}
	// life runs the steps until one fails (the crash).
	life := func(v *Volume) (err error) {
		step := func(f func() error) {
			if err == nil {
				err = f()
			}
		}
		apply := func(from, to, e uint64) func() error {
			return func() error {
				for l := from; l <= to; l++ {
					d := make([]byte, 4096)
					d[0] = byte(e)
					if err := v.ApplyReplicated(Record{LSN: l, Epoch: e, Kind: KindWrite, LBA: l, Blocks: 1, Data: d}); err != nil {
						return err
					}
				}
				return nil
			}
		}
		step(apply(1, 3, 1))
		step(v.Flush)
		step(apply(4, 6, 2))
		step(v.Checkpoint)
		step(apply(7, 9, 3))
		step(v.Flush)
		step(func() error { v.Fence(); return v.TruncateWAL(8) })
		step(func() error { return v.Unfence(4, RoleReplica, time.Time{}) })
		step(apply(9, 10, 4))
		step(v.Checkpoint)
		step(apply(11, 12, 5))
		step(v.Flush)
		return err
	}
	for k := 1; ; k++ {
		if k > 200 {
			t.Fatal("the life never ends without a crash")
		}
		crashed := false
		for seed := uint64(0); seed < 4; seed++ {
			fs := faultfs.New()
			v, err := Create("r", 32*4096, opts(fs))
			if err != nil {
				t.Fatal(err)
			}
			// Records carry their own epochs (1..5), not the assigned one.
			if err := v.Unfence(1, RoleReplica, time.Time{}); err != nil {
				t.Fatal(err)
			}
			fs.CrashAtSync(fs.SyncCount()+k, faultfs.CrashRandom, seed)
			lifeErr := life(v)
			if lifeErr != nil {
				crashed = true
			} else {
				fs.Crash(faultfs.CrashRandom, seed)
			}
			v.Close()
			what := fmt.Sprintf("k=%d seed=%d (life err %v)", k, seed, lifeErr)
			v, err = Open("r", opts(fs))
			if err != nil {
				t.Fatalf("%s: open: %v", what, err)
			}
			check(t, v, what)
			// Go on at a new epoch and crash again without a sync.
			head := v.Status().Head
			if err := v.Unfence(6, RoleReplica, time.Time{}); err != nil {
				t.Fatal(err)
			}
			d := make([]byte, 4096)
			d[0] = 6
			if err := v.ApplyReplicated(Record{LSN: head + 1, Epoch: 6, Kind: KindWrite, LBA: head + 1, Blocks: 1, Data: d}); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			fs.Crash(faultfs.CrashRandom, seed+7)
			v.Close()
			v, err = Open("r", opts(fs))
			if err != nil {
				t.Fatalf("%s: second open: %v", what, err)
			}
			check(t, v, what+" then a second crash")
			v.Close()
		}
		if !crashed {
			break
		}
	}
}

// TestTermsBoundAfterInstall: more than MaxTerms epochs after a base
// install (whose history the superblock shares) keep the persisted history
// intact: reopening works and gives the newest MaxTerms terms.
func TestTermsBoundAfterInstall(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r")
	opts := Options{WALSize: 1 << 20, ManualFlush: true}
	v, err := Create(path, 256*4096, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.BeginRebuild(); err != nil {
		t.Fatal(err)
	}
	var base []Term
	for e := uint64(1); e <= MaxTerms; e++ {
		base = append(base, Term{Epoch: e, First: e})
	}
	if err := v.InstallBaseTerms(MaxTerms, base); err != nil {
		t.Fatal(err)
	}
	const n = MaxTerms + 20
	if err := v.Unfence(n, RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	for e := uint64(MaxTerms + 1); e <= n; e++ {
		applyEpochs(t, v, e, e, e)
	}
	if err := v.Close(); err != nil { // persists the superblock as it is
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for slot := 0; slot < 2; slot++ {
		if _, err := decodeSuperblock(raw[slot*superblockSize : (slot+1)*superblockSize]); err != nil {
			t.Fatalf("superblock copy %d: %v", slot, err)
		}
	}
	v = openReplica(t, path, opts, n)
	terms := v.Terms()
	if len(terms) != MaxTerms || terms[0].First != n-MaxTerms+1 || terms[MaxTerms-1].First != n {
		t.Fatalf("terms %v", terms)
	}
	wantTermAt(t, v, n-MaxTerms, 0, false)
	wantTermAt(t, v, MaxTerms, MaxTerms, true)
}

// TestCrashInstallBaseTerms crashes at every sync of a rebuild's install
// (and right after it): the volume comes back either as before the install
// (untrusted, no history) or installed (untrusted until finished, the
// given history up to the base, head at the base), never a mix.
func TestCrashInstallBaseTerms(t *testing.T) {
	const baseLSN = 30
	given := []Term{{Epoch: 2, First: 1}, {Epoch: 5, First: 12}, {Epoch: 9, First: 31}}
	want := given[:2]
	for k := 1; ; k++ {
		if k > 50 {
			t.Fatal("the install never ends without a crash")
		}
		crashed := false
		for seed := uint64(0); seed < 3; seed++ {
			fs := faultfs.New()
			opts := Options{FS: ffsAdapter{fs}, WALSize: 64 << 10, ManualFlush: true}
			v, err := Create("r", 32*4096, opts)
			if err != nil {
				t.Fatal(err)
			}
			if err := v.Unfence(9, RoleReplica, time.Time{}); err != nil {
				t.Fatal(err)
			}
			applyEpochs(t, v, 1, 3, 1)
			if err := v.Flush(); err != nil {
				t.Fatal(err)
			}
			v.Fence()
			if err := v.BeginRebuild(); err != nil {
				t.Fatal(err)
			}
			if err := v.WriteBase(block(4096, 7), 4096); err != nil {
				t.Fatal(err)
			}
			fs.CrashAtSync(fs.SyncCount()+k, faultfs.CrashRandom, seed)
			ierr := v.InstallBaseTerms(baseLSN, given)
			if ierr != nil {
				crashed = true
			} else {
				fs.Crash(faultfs.CrashRandom, seed)
			}
			v.Close()
			v, err = Open("r", opts)
			if err != nil {
				t.Fatalf("k=%d seed=%d: open: %v", k, seed, err)
			}
			st := v.Status()
			terms := v.Terms()
			switch {
			case !st.Untrusted:
				t.Fatalf("k=%d seed=%d: trusted after a crash in a rebuild: %+v", k, seed, st)
			case st.Head == baseLSN && reflect.DeepEqual(terms, want):
			case st.Head == 3 && len(terms) == 0 && ierr != nil:
			default:
				t.Fatalf("k=%d seed=%d (install err %v): head %d terms %v", k, seed, ierr, st.Head, terms)
			}
			v.Close()
		}
		if !crashed {
			break
		}
	}
}

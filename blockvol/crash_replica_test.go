package blockvol_test

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/blockvol/faultfs"
	"github.com/weedblock/weedblock/blockvol/faultfs/oracle"
)

// replicaStream is a deterministic stream of records LSN 1..n of epoch 1 as
// a primary would ship them: writes, trims and zeroes.
func replicaStream(seed uint64, n, nblocks, bs int) []blockvol.Record {
	return replicaStreamFrom(seed, 1, n, 1, nblocks, bs)
}

// streamValue is the value a write record gives its blocks: its LSN, made
// distinct per epoch so that records of two histories sharing an LSN can be
// told apart.
func streamValue(rec blockvol.Record) uint64 { return rec.LSN + (rec.Epoch-1)*1_000_000 }

// replicaStreamFrom is replicaStream for LSNs first..first+n-1 of epoch.
func replicaStreamFrom(seed, first uint64, n int, epoch uint64, nblocks, bs int) []blockvol.Record {
	r := rand.New(rand.NewPCG(seed, 77))
	recs := make([]blockvol.Record, 0, n)
	for lsn := first; lsn < first+uint64(n); lsn++ {
		blocks := 1 + r.IntN(4)
		lba := r.IntN(nblocks - blocks + 1)
		rec := blockvol.Record{LSN: lsn, Epoch: epoch, LBA: uint64(lba), Blocks: uint32(blocks), Kind: blockvol.KindWrite}
		switch r.IntN(8) {
		case 0:
			rec.Kind = blockvol.KindTrim
		case 1:
			rec.Kind = blockvol.KindZero
		default:
			rec.Data = make([]byte, blocks*bs)
			for i := 0; i < blocks; i++ {
				oracle.BlockContent(rec.Data[i*bs:(i+1)*bs], uint64(lba+i), streamValue(rec))
			}
		}
		recs = append(recs, rec)
	}
	return recs
}

// prefixState is the value (0 = zeros) of every block after applying
// recs[:head].
func prefixState(recs []blockvol.Record, head uint64, nblocks int) []uint64 {
	st := make([]uint64, nblocks)
	for _, rec := range recs[:head] {
		for b := rec.LBA; b < rec.LBA+uint64(rec.Blocks); b++ {
			if rec.Kind == blockvol.KindWrite {
				st[b] = streamValue(rec)
			} else {
				st[b] = 0
			}
		}
	}
	return st
}

// replicaHarness drives a replica volume on faultfs through the stream,
// flushing every flushEvery records.
type replicaHarness struct {
	t       *testing.T
	fs      *faultfs.FS
	v       *blockvol.Volume
	recs    []blockvol.Record
	nblocks int
	bs      int
	flushed uint64 // highest LSN a returned Flush covered
	applied uint64 // highest LSN ApplyReplicated accepted
}

func (h *replicaHarness) opts() blockvol.Options {
	return blockvol.Options{FS: faultFS{h.fs}, WALSize: 128 << 10, FlushInterval: 3 * time.Millisecond}
}

// apply ships records from head+1 on; it stops at the first error (a
// crash).
func (h *replicaHarness) apply(upto uint64, flushEvery int) error {
	for lsn := h.v.Status().Head + 1; lsn <= upto; lsn++ {
		if err := h.v.ApplyReplicated(h.recs[lsn-1]); err != nil {
			return fmt.Errorf("apply lsn %d: %w", lsn, err)
		}
		h.applied = lsn
		if int(lsn)%flushEvery == 0 || lsn == upto {
			if err := h.v.Flush(); err != nil {
				return fmt.Errorf("flush at lsn %d: %w", lsn, err)
			}
			h.flushed = lsn
			if d := h.v.Status().Durable; d < lsn {
				h.t.Fatalf("flush returned with durable %d below applied %d", d, lsn)
			}
		}
	}
	return nil
}

// reopen opens the crashed volume as a replica and checks that it holds
// exactly a prefix of the stream, at least up to the last flush.
func (h *replicaHarness) reopen(what string) {
	t := h.t
	v, err := blockvol.Open(crashVolPath, h.opts())
	if err != nil {
		t.Fatalf("%s: open: %v", what, err)
	}
	h.v = v
	if err := v.Unfence(1, blockvol.RoleReplica, time.Time{}); err != nil {
		t.Fatalf("%s: unfence: %v", what, err)
	}
	st := v.Status()
	if st.Head < h.flushed || st.Head > h.applied+1 {
		t.Fatalf("%s: recovered head %d, want between the last flushed LSN %d and the last applied %d (+1 in flight)", what, st.Head, h.flushed, h.applied)
	}
	if st.Durable < st.Head {
		// What recovery found is on disk: it is durable.
		t.Fatalf("%s: recovered durable %d below head %d", what, st.Durable, st.Head)
	}
	checkPrefix(t, v, h.recs, st.Head, h.nblocks, h.bs, what)
	h.applied = st.Head
	h.flushed = st.Head
}

// TestCrashReplicaAtEverySync: a replica applies a primary's stream with
// periodic flushes; crash at every sync point. After each crash the replica
// must hold exactly the stream's prefix 1..head (LSNs contiguous, nothing
// from beyond head, no torn record), head ≥ the last flushed LSN; then it
// must take the rest of the stream from head+1 and survive one more crash.
func TestCrashReplicaAtEverySync(t *testing.T) {
	const nblocks, bs, n, flushEvery = 48, 4096, 60, 7
	recs := replicaStream(3, n, nblocks, bs)
	newReplica := func(fs *faultfs.FS) (*replicaHarness, error) {
		h := &replicaHarness{t: t, fs: fs, recs: recs, nblocks: nblocks, bs: bs}
		v, err := blockvol.Create(crashVolPath, nblocks*bs, h.opts())
		if err != nil {
			return nil, err
		}
		h.v = v
		return h, v.Unfence(1, blockvol.RoleReplica, time.Time{})
	}
	dry, err := newReplica(faultfs.New())
	if err != nil {
		t.Fatal(err)
	}
	if err := dry.apply(n, flushEvery); err != nil {
		t.Fatal(err)
	}
	dry.v.Close()
	syncs := dry.fs.SyncCount()
	fired := 0
	for at := 1; at <= syncs; at++ {
		for seed := uint64(0); seed < 2; seed++ {
			mode := faultfs.CrashRandom
			if seed == 0 && at%2 == 0 {
				mode = faultfs.CrashDropAll
			}
			fs := faultfs.New()
			fs.CrashAtSync(at, mode, seed)
			h, err := newReplica(fs)
			if err != nil {
				if fs.CrashCount() == 0 {
					t.Fatalf("create: %v", err)
				}
				if h != nil && h.v != nil {
					h.v.Close()
				}
				continue
			}
			what := fmt.Sprintf("crash at sync %d/%d (%s seed %d)", at, syncs, mode, seed)
			if err := h.apply(n, flushEvery); err != nil && fs.CrashCount() == 0 {
				t.Fatalf("%s: %v", what, err)
			}
			h.v.Close()
			if fs.CrashCount() == 0 {
				fs.Crash(mode, seed)
			} else {
				fired++
			}
			h.reopen(what)
			// Catch up from head+1 like a replica rejoining, then crash
			// once more at random.
			if err := h.apply(n, flushEvery); err != nil {
				t.Fatalf("%s: catching up: %v", what, err)
			}
			h.v.Close()
			fs.Crash(faultfs.CrashRandom, seed+100)
			h.reopen(what + ", then caught up and crashed again")
			if got := h.v.Status().Head; got != n {
				t.Fatalf("%s: after catching up and a crash head is %d, want %d (it was flushed)", what, got, n)
			}
			h.v.Close()
		}
	}
	if fired == 0 {
		t.Fatal("no armed crash fired")
	}
	t.Logf("%d sync points, %d crashes fired", syncs, fired)
}

// checkPrefix checks that v holds exactly the state of recs[:head].
func checkPrefix(t *testing.T, v *blockvol.Volume, recs []blockvol.Record, head uint64, nblocks, bs int, what string) {
	t.Helper()
	want := prefixState(recs, head, nblocks)
	p := make([]byte, bs)
	for b := 0; b < nblocks; b++ {
		if err := v.ReadAt(p, int64(b*bs)); err != nil {
			t.Fatalf("%s: read lba %d: %v", what, b, err)
		}
		got, err := oracle.DecodeBlock(p, uint64(b))
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got != want[b] {
			t.Fatalf("%s: lba %d holds value %d, but the prefix 1..%d gives it %d (0 means zeros; values above 1e6 are from epoch 2)", what, b, got, head, want[b])
		}
	}
}

// TestCrashTruncateWALAtEverySync: a replica ahead of the committed point
// drops its tail with TruncateWAL, then takes a new primary's history for
// the same LSNs. Crash at every sync point: the replica must hold an exact
// prefix of the old history (at least up to the truncation point), or of
// the new one once TruncateWAL returned — never a dropped record again.
func TestCrashTruncateWALAtEverySync(t *testing.T) {
	const nblocks, bs, n, trunc, n2 = 32, 4096, 30, 18, 20
	old := replicaStream(5, n, nblocks, bs)
	// The new history: the committed prefix, then epoch 2 records.
	newer := append(append([]blockvol.Record(nil), old[:trunc]...), replicaStreamFrom(6, trunc+1, n2, 2, nblocks, bs)...)
	opts := func(fs *faultfs.FS) blockvol.Options {
		return blockvol.Options{FS: faultFS{fs}, WALSize: 1 << 20, FlushInterval: time.Hour}
	}
	// run returns how far it got: 0 nothing, 1 old history flushed, 2
	// truncated, 3 new history flushed.
	run := func(fs *faultfs.FS) (int, error) {
		v, err := blockvol.Create(crashVolPath, nblocks*bs, opts(fs))
		if err != nil {
			return 0, err
		}
		defer v.Close()
		if err := v.Unfence(1, blockvol.RoleReplica, time.Time{}); err != nil {
			return 0, err
		}
		for _, rec := range old {
			if err := v.ApplyReplicated(rec); err != nil {
				return 0, err
			}
		}
		if err := v.Flush(); err != nil {
			return 0, err
		}
		v.Fence()
		if err := v.TruncateWAL(trunc); err != nil {
			return 1, err
		}
		if err := v.Unfence(2, blockvol.RoleReplica, time.Time{}); err != nil {
			return 2, err
		}
		for _, rec := range newer[trunc:] {
			if err := v.ApplyReplicated(rec); err != nil {
				return 2, err
			}
		}
		if err := v.Flush(); err != nil {
			return 2, err
		}
		return 3, v.Close()
	}
	dry := faultfs.New()
	if stage, err := run(dry); err != nil || stage != 3 {
		t.Fatalf("dry run: stage %d: %v", stage, err)
	}
	syncs := dry.SyncCount()
	for at := 1; at <= syncs; at++ {
		for seed := uint64(0); seed < 3; seed++ {
			mode := faultfs.CrashRandom
			if seed == 0 {
				mode = faultfs.CrashDropAll
			}
			fs := faultfs.New()
			fs.CrashAtSync(at, mode, seed)
			stage, err := run(fs)
			what := fmt.Sprintf("crash at sync %d/%d (%s seed %d), stage %d", at, syncs, mode, seed, stage)
			if fs.CrashCount() == 0 {
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				fs.Crash(mode, seed)
			}
			if stage == 0 {
				continue // the old history was never flushed: nothing promised
			}
			v, err := blockvol.Open(crashVolPath, opts(fs))
			if err != nil {
				t.Fatalf("%s: open: %v", what, err)
			}
			head := v.Status().Head
			switch {
			case stage == 3:
				if head != uint64(len(newer)) {
					t.Fatalf("%s: head %d, want %d", what, head, len(newer))
				}
				checkPrefix(t, v, newer, head, nblocks, bs, what)
			case stage == 2 && head > trunc:
				checkPrefix(t, v, newer, head, nblocks, bs, what+" (new history)")
			case stage == 2:
				if head != trunc {
					t.Fatalf("%s: head %d after TruncateWAL(%d) returned", what, head, trunc)
				}
				checkPrefix(t, v, newer, head, nblocks, bs, what)
			default: // TruncateWAL in flight
				if head < trunc || head > n {
					t.Fatalf("%s: head %d, want between %d and %d", what, head, trunc, n)
				}
				checkPrefix(t, v, old, head, nblocks, bs, what+" (old history)")
			}
			v.Close()
		}
	}
	t.Logf("%d sync points", syncs)
}

// TestCrashRebuildAtEverySync: a rebuild (BeginRebuild, WriteBase,
// InstallBase, replay, FinishRebuild) crashed at every sync point. A
// reopened volume that says it is trusted must hold exactly the base plus
// the replayed records; until FinishRebuild returns it may instead say it is
// untrusted (its data may then be anything); once it returned, it must be
// trusted.
func TestCrashRebuildAtEverySync(t *testing.T) {
	const nblocks, bs, n, baseLSN = 32, 4096, 40, 25
	recs := replicaStream(8, n, nblocks, bs)
	base := prefixState(recs, baseLSN, nblocks)
	opts := func(fs *faultfs.FS) blockvol.Options {
		return blockvol.Options{FS: faultFS{fs}, WALSize: 256 << 10, FlushInterval: 3 * time.Millisecond}
	}
	// run returns 0 before BeginRebuild returned, 1 while rebuilding, 2
	// once FinishRebuild returned.
	run := func(fs *faultfs.FS) (int, error) {
		v, err := blockvol.Create(crashVolPath, nblocks*bs, opts(fs))
		if err != nil {
			return 0, err
		}
		defer v.Close()
		// Some stale data of its own first.
		if err := v.Unfence(1, blockvol.RolePrimary, time.Time{}); err != nil {
			return 0, err
		}
		junk := make([]byte, 8*bs)
		for i := 0; i < 8; i++ {
			oracle.BlockContent(junk[i*bs:(i+1)*bs], uint64(i), 999_999)
		}
		if err := v.WriteAt(junk, 0, true); err != nil {
			return 0, err
		}
		v.Fence()
		if err := v.BeginRebuild(); err != nil {
			return 0, err
		}
		p := make([]byte, bs)
		for b := 0; b < nblocks; b++ {
			oracle.BlockContent(p, uint64(b), base[b])
			if err := v.WriteBase(p, int64(b*bs)); err != nil {
				return 1, err
			}
		}
		if err := v.InstallBase(baseLSN); err != nil {
			return 1, err
		}
		if err := v.Unfence(1, blockvol.RoleReplica, time.Time{}); err != nil {
			return 1, err
		}
		for _, rec := range recs[baseLSN:] {
			if err := v.ApplyReplicated(rec); err != nil {
				return 1, err
			}
		}
		if err := v.Flush(); err != nil {
			return 1, err
		}
		if err := v.FinishRebuild(); err != nil {
			return 1, err
		}
		return 2, v.Close()
	}
	dry := faultfs.New()
	if stage, err := run(dry); err != nil || stage != 2 {
		t.Fatalf("dry run: stage %d: %v", stage, err)
	}
	syncs := dry.SyncCount()
	for at := 1; at <= syncs; at++ {
		for seed := uint64(0); seed < 3; seed++ {
			mode := faultfs.CrashRandom
			if seed == 0 {
				mode = faultfs.CrashDropAll
			}
			fs := faultfs.New()
			fs.CrashAtSync(at, mode, seed)
			stage, err := run(fs)
			what := fmt.Sprintf("crash at sync %d/%d (%s seed %d), stage %d", at, syncs, mode, seed, stage)
			if fs.CrashCount() == 0 {
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				fs.Crash(mode, seed)
			}
			v, err := blockvol.Open(crashVolPath, opts(fs))
			if err != nil {
				if stage == 0 {
					continue // may have crashed inside create
				}
				t.Fatalf("%s: open: %v", what, err)
			}
			st := v.Status()
			switch stage {
			case 1:
				// Untrusted, or — if the crash landed the final
				// superblock of FinishRebuild — trusted with everything.
				if !st.Untrusted {
					if st.Head != n {
						t.Fatalf("%s: a volume crashed mid-rebuild reopened trusted with head %d, want %d", what, st.Head, n)
					}
					checkPrefix(t, v, recs, n, nblocks, bs, what+" (reopened trusted)")
				}
			case 2:
				if st.Untrusted {
					t.Fatalf("%s: FinishRebuild returned but the volume reopened untrusted", what)
				}
				if st.Head != n {
					t.Fatalf("%s: head %d, want %d", what, st.Head, n)
				}
				checkPrefix(t, v, recs, n, nblocks, bs, what)
			}
			v.Close()
		}
	}
	t.Logf("%d sync points", syncs)
}

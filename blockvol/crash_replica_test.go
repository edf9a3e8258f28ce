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

// replicaStream is a deterministic stream of records LSN 1..n as a primary
// would ship them: writes (each block encodes (lba, lsn)), trims and zeroes.
func replicaStream(seed uint64, n, nblocks, bs int) []blockvol.Record {
	r := rand.New(rand.NewPCG(seed, 77))
	recs := make([]blockvol.Record, 0, n)
	for lsn := uint64(1); lsn <= uint64(n); lsn++ {
		blocks := 1 + r.IntN(4)
		lba := r.IntN(nblocks - blocks + 1)
		rec := blockvol.Record{LSN: lsn, Epoch: 1, LBA: uint64(lba), Blocks: uint32(blocks), Kind: blockvol.KindWrite}
		switch r.IntN(8) {
		case 0:
			rec.Kind = blockvol.KindTrim
		case 1:
			rec.Kind = blockvol.KindZero
		default:
			rec.Data = make([]byte, blocks*bs)
			for i := 0; i < blocks; i++ {
				oracle.BlockContent(rec.Data[i*bs:(i+1)*bs], uint64(lba+i), lsn)
			}
		}
		recs = append(recs, rec)
	}
	return recs
}

// prefixState is the value (0 = zeros, else the LSN that wrote it) of every
// block after applying recs[:head].
func prefixState(recs []blockvol.Record, head uint64, nblocks int) []uint64 {
	st := make([]uint64, nblocks)
	for _, rec := range recs[:head] {
		for b := rec.LBA; b < rec.LBA+uint64(rec.Blocks); b++ {
			if rec.Kind == blockvol.KindWrite {
				st[b] = rec.LSN
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
	want := prefixState(h.recs, st.Head, h.nblocks)
	p := make([]byte, h.bs)
	for b := 0; b < h.nblocks; b++ {
		if err := v.ReadAt(p, int64(b*h.bs)); err != nil {
			t.Fatalf("%s: read lba %d: %v", what, b, err)
		}
		got, err := oracle.DecodeBlock(p, uint64(b))
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got != want[b] {
			t.Fatalf("%s: lba %d holds lsn %d, but the recovered prefix 1..%d gives it %d (an LSN of 0 means zeros)", what, b, got, st.Head, want[b])
		}
	}
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

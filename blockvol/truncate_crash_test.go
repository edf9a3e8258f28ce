package blockvol

import (
	"bytes"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol/faultfs"
)

// ffsAdapter adapts *faultfs.FS to FS for tests in this package.
type ffsAdapter struct{ fs *faultfs.FS }

func (a ffsAdapter) Create(path string) (File, error) {
	f, err := a.fs.Create(path)
	if err != nil {
		return nil, err
	}
	return f, nil
}

func (a ffsAdapter) Open(path string) (File, error) {
	f, err := a.fs.Open(path)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// TestTruncateWALCrash crashes at every sync TruncateWAL makes (and after
// it), with random loss/tearing of unsynced writes. After recovery the
// replica holds either the state before the truncation (all eight durable
// records) or exactly the state at the truncation point, never a mix; and
// once the truncation returned, the dropped records never come back, even
// across later crashes.
func TestTruncateWALCrash(t *testing.T) {
	const bs, to, last = 4096, 5, 8
	stateAt := func(lsn uint64) map[uint64][]byte {
		m := map[uint64][]byte{}
		for l := uint64(1); l <= lsn; l++ {
			m[l%4] = block(bs, byte(l))
		}
		return m
	}
	matches := func(v *Volume, want map[uint64][]byte) bool {
		for lba := uint64(0); lba < 4; lba++ {
			w := want[lba]
			if w == nil {
				w = make([]byte, bs)
			}
			if !bytes.Equal(mustRead(t, v, int64(lba)*bs, bs), w) {
				return false
			}
		}
		return true
	}
	for k := 1; k <= 4; k++ {
		for seed := uint64(0); seed < 8; seed++ {
			fs := faultfs.New()
			opts := Options{FS: ffsAdapter{fs}, WALSize: 64 << 10, ManualFlush: true}
			v, err := Create("r", 16*bs, opts)
			if err != nil {
				t.Fatal(err)
			}
			if err := v.Unfence(1, RoleReplica, time.Time{}); err != nil {
				t.Fatal(err)
			}
			for l := uint64(1); l <= last; l++ {
				if err := v.ApplyReplicated(Record{LSN: l, Epoch: 1, Kind: KindWrite, LBA: l % 4, Blocks: 1, Data: block(bs, byte(l))}); err != nil {
					t.Fatal(err)
				}
				if l == 3 {
					if err := v.Checkpoint(); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := v.Flush(); err != nil {
				t.Fatal(err)
			}
			v.Fence()
			fs.CrashAtSync(fs.SyncCount()+k, faultfs.CrashRandom, seed)
			truncErr := v.TruncateWAL(to)
			if truncErr == nil {
				fs.Crash(faultfs.CrashRandom, seed) // crash right after it returned
			}
			v.Close()
			v, err = Open("r", opts)
			if err != nil {
				t.Fatalf("k=%d seed %d: open: %v", k, seed, err)
			}
			head := v.Status().Head
			switch {
			case head == to && matches(v, stateAt(to)):
			case head == last && truncErr != nil && matches(v, stateAt(last)):
			default:
				t.Fatalf("k=%d seed %d (truncate err %v): recovered head %d with data matching neither LSN %d nor %d", k, seed, truncErr, head, to, last)
			}
			// Continue the log with a different record, crash again: the
			// dropped records must stay dropped.
			if head == to {
				if err := v.Unfence(2, RoleReplica, time.Time{}); err != nil {
					t.Fatal(err)
				}
				if err := v.ApplyReplicated(Record{LSN: to + 1, Epoch: 2, Kind: KindWrite, LBA: 2, Blocks: 1, Data: block(bs, 99)}); err != nil {
					t.Fatal(err)
				}
				if err := v.Flush(); err != nil {
					t.Fatal(err)
				}
				fs.Crash(faultfs.CrashRandom, seed+100)
				v.Close()
				v, err = Open("r", opts)
				if err != nil {
					t.Fatal(err)
				}
				want := stateAt(to)
				want[2] = block(bs, 99)
				if st := v.Status(); st.Head != to+1 || !matches(v, want) {
					t.Fatalf("k=%d seed %d: after second crash head %d, data mismatch or dropped records back", k, seed, st.Head)
				}
			}
			v.Close()
		}
	}
}

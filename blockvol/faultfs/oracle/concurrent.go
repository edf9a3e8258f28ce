package oracle

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/weedblock/weedblock/blockvol/faultfs"
)

// Concurrent runs rounds of workers that drive the device at the same time,
// each on its own range of blocks (so its reads can be checked exactly), with
// each Flush required to commit every write any worker had acknowledged
// before it was called, while a crash armed at a random
// upcoming Sync cuts the round short. After each round the device is
// recovered and every block checked. It returns how many rounds ended in an
// armed crash (the others end with a random crash after the workers finish).
func Concurrent(t testing.TB, tgt Target, nblocks, workers, rounds, opsPerWorker int, seed uint64) int {
	t.Helper()
	if workers < 1 || nblocks < workers {
		t.Fatalf("concurrent: %d workers over %d blocks", workers, nblocks)
	}
	r := NewRunner(t, tgt, faultfs.New(), nblocks)
	if r == nil {
		t.Fatalf("%s: create crashed without an armed crash", tgt.Name)
	}
	rng := rand.New(rand.NewPCG(seed, 0xc0c0))
	per := nblocks / workers
	mix := DefaultMix()
	mix.Reopen, mix.Crash = 0, 0
	fired := 0
	for round := 0; round < rounds; round++ {
		crashSeed := rng.Uint64()
		r.fs.CrashAtSync(r.fs.SyncCount()+1+rng.IntN(100), faultfs.CrashRandom, crashSeed)
		var (
			mu   sync.Mutex // guards r.or and failure
			wg   sync.WaitGroup
			fail string
		)
		for w := 0; w < workers; w++ {
			lo := w * per
			ops := Generate(rng.Uint64(), opsPerWorker, per, mix)
			wg.Add(1)
			go func() {
				defer wg.Done()
				if msg := r.worker(&mu, lo, lo+per, ops); msg != "" {
					mu.Lock()
					if fail == "" {
						fail = fmt.Sprintf("round %d worker %d: %s", round, lo/per, msg)
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if fail != "" {
			r.fatalf("%s", fail)
		}
		if r.crashed() {
			fired++
		} else {
			r.fs.Crash(faultfs.CrashRandom, crashSeed)
		}
		r.fs.CrashAtSync(0, faultfs.CrashRandom, 0)
		r.note("round %d: crash (armed one fired: %v)", round, r.crashed())
		r.recover()
	}
	r.Close()
	return fired
}

// worker runs ops shifted to blocks [lo, hi), until they end or the file
// system crashes. It returns a failure description, or "".
func (r *Runner) worker(mu *sync.Mutex, lo, hi int, ops []Op) string {
	bs := int64(r.bs)
	for _, op := range ops {
		if r.crashed() {
			return ""
		}
		op.LBA += lo
		lba := op.LBA
		off, length := int64(lba)*bs, int64(op.N)*bs
		var err error
		switch op.Kind {
		case OpWrite, OpWriteFUA:
			mu.Lock()
			seq := r.or.NextSeq()
			mu.Unlock()
			p := make([]byte, length)
			for i := 0; i < op.N; i++ {
				BlockContent(p[int64(i)*bs:int64(i+1)*bs], uint64(lba+i), seq)
			}
			err = r.dev.WriteAt(p, off, op.Kind == OpWriteFUA)
			mu.Lock()
			r.or.Record(lba, op.N, seq, err, op.Kind == OpWriteFUA)
			mu.Unlock()
		case OpTrim:
			err = r.dev.Trim(off, length)
			mu.Lock()
			r.or.Record(lba, op.N, 0, err, false)
			mu.Unlock()
		case OpZero, OpZeroFUA:
			err = r.dev.WriteZeroes(off, length, op.Kind == OpZeroFUA)
			mu.Lock()
			r.or.Record(lba, op.N, 0, err, op.Kind == OpZeroFUA)
			mu.Unlock()
		case OpFlush:
			// Every write any worker recorded before this point was
			// acknowledged before the Flush call: it must cover them.
			mu.Lock()
			start := r.or.Clock()
			mu.Unlock()
			err = r.dev.Flush()
			if err == nil {
				mu.Lock()
				r.or.FlushedAt(start)
				mu.Unlock()
			}
		case OpRead:
			p := make([]byte, length)
			if err = r.dev.ReadAt(p, off); err != nil || r.crashed() {
				break
			}
			mu.Lock()
			for i := 0; i < op.N && err == nil; i++ {
				var seq uint64
				seq, err = DecodeBlock(p[int64(i)*bs:int64(i+1)*bs], uint64(lba+i))
				if err == nil {
					err = r.or.CheckLive(lba+i, seq)
				}
			}
			mu.Unlock()
			if err != nil && !r.crashed() {
				return fmt.Sprintf("%v: %v", op, err)
			}
			err = nil
		}
		if err != nil && !r.crashed() {
			return fmt.Sprintf("%v: unexpected error: %v", op, err)
		}
	}
	return ""
}

package oracle

import (
	"fmt"
	"math/rand/v2"

	"github.com/weedblock/weedblock/blockvol/faultfs"
)

type OpKind int

const (
	OpWrite OpKind = iota
	OpWriteFUA
	OpTrim
	OpZero
	OpZeroFUA
	OpFlush
	OpRead
	OpReopen // clean close and open, no crash
	OpCrash  // crash the file system (mode, seed), reopen, check everything
)

func (k OpKind) String() string {
	return [...]string{"write", "write-fua", "trim", "zero", "zero-fua", "flush", "read", "reopen", "crash"}[k]
}

type Op struct {
	Kind   OpKind
	LBA, N int               // request range in blocks (I/O ops)
	Mode   faultfs.CrashMode // OpCrash
	Seed   uint64            // OpCrash
}

func (w Op) String() string {
	switch w.Kind {
	case OpFlush, OpReopen:
		return w.Kind.String()
	case OpCrash:
		return fmt.Sprintf("crash(%s,%d)", w.Mode, w.Seed)
	}
	return fmt.Sprintf("%s[%d+%d]", w.Kind, w.LBA, w.N)
}

// Mix weights the op kinds of a random workload.
type Mix struct {
	Write, WriteFUA, Trim, Zero, ZeroFUA, Flush, Read, Reopen, Crash int
	// MaxBlocks is the longest request, in blocks (at least 1).
	MaxBlocks int
	// HotBlocks: two thirds of requests start in the first HotBlocks
	// blocks, so blocks are overwritten often (0: uniform).
	HotBlocks int
}

// DefaultMix is a general workload: mostly writes and reads, regular
// flushes, some FUA, trims, zeroes, clean reopens and crashes.
func DefaultMix() Mix {
	return Mix{Write: 40, WriteFUA: 6, Trim: 6, Zero: 4, ZeroFUA: 2, Flush: 12, Read: 20, Reopen: 2, Crash: 3, MaxBlocks: 8, HotBlocks: 8}
}

// Generate builds a deterministic random workload of n ops over nblocks.
func Generate(seed uint64, n, nblocks int, mix Mix) []Op {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	weights := []int{mix.Write, mix.WriteFUA, mix.Trim, mix.Zero, mix.ZeroFUA, mix.Flush, mix.Read, mix.Reopen, mix.Crash}
	total := 0
	for _, w := range weights {
		total += w
	}
	ops := make([]Op, 0, n)
	for len(ops) < n {
		x := r.IntN(total)
		k := 0
		for x >= weights[k] {
			x -= weights[k]
			k++
		}
		op := Op{Kind: OpKind(k)}
		switch op.Kind {
		case OpCrash:
			op.Mode = faultfs.CrashMode(r.IntN(3))
			if r.IntN(2) == 0 {
				op.Mode = faultfs.CrashRandom
			}
			op.Seed = r.Uint64()
		case OpFlush, OpReopen:
		default:
			op.N = 1 + r.IntN(min(mix.MaxBlocks, nblocks))
			if mix.HotBlocks > 0 && r.IntN(3) > 0 {
				op.LBA = r.IntN(max(1, min(mix.HotBlocks, nblocks-op.N+1)))
			} else {
				op.LBA = r.IntN(nblocks - op.N + 1)
			}
		}
		ops = append(ops, op)
	}
	return ops
}

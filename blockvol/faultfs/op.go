package faultfs

import "math/rand/v2"

// SectorSize is the granularity at which a crash tears an unsynced write: each
// 512-byte sector of the file that a write touches lands or does not,
// independently of its neighbours.
const SectorSize = 512

// punchUnit is the granularity at which a crash tears an unsynced hole punch
// (a file-system block: punching is an extent operation).
const punchUnit = pageSize

type opKind int

const (
	opWrite opKind = iota
	opPunch
	opTruncate
)

// op is one completed but not yet durable change to a file.
type op struct {
	kind   opKind
	off    int64  // write/punch offset; truncate: the new size
	length int64  // punch length
	data   []byte // write payload (owned by the op)
}

// apply performs the whole op on im.
func (o *op) apply(im *image) {
	switch o.kind {
	case opWrite:
		im.write(o.data, o.off)
	case opPunch:
		im.zero(o.off, o.length)
	case opTruncate:
		im.truncate(o.off)
	}
}

// units is how many independently landing pieces the op has at a crash.
func (o *op) units() (unit int64, first, last int64) {
	switch o.kind {
	case opWrite:
		unit = SectorSize
		if len(o.data) == 0 {
			return unit, 0, -1
		}
		return unit, o.off / unit, (o.off + int64(len(o.data)) - 1) / unit
	case opPunch:
		unit = punchUnit
		if o.length <= 0 {
			return unit, 0, -1
		}
		return unit, o.off / unit, (o.off + o.length - 1) / unit
	}
	return 0, 0, -1
}

// applyTorn performs the part of the op that falls in the units for which
// lands returns true. A truncate cannot be torn; it is applied whole.
func (o *op) applyTorn(im *image, lands func() bool) {
	unit, first, last := o.units()
	if unit == 0 {
		o.apply(im)
		return
	}
	end := o.off + o.length
	if o.kind == opWrite {
		end = o.off + int64(len(o.data))
	}
	for u := first; u <= last; u++ {
		if !lands() {
			continue
		}
		lo, hi := max(u*unit, o.off), min((u+1)*unit, end)
		switch o.kind {
		case opWrite:
			im.write(o.data[lo-o.off:hi-o.off], lo)
		case opPunch:
			im.zero(lo, hi-lo)
		}
	}
}

// CrashMode says what a crash does with operations that were not synced.
type CrashMode int

const (
	// CrashRandom drops, applies or tears (at sector granularity) each
	// unsynced operation independently and applies the survivors in a
	// random order. Deterministic for a given seed and pending state.
	CrashRandom CrashMode = iota
	// CrashDropAll loses every unsynced operation.
	CrashDropAll
	// CrashKeepAll makes every unsynced operation durable, in order.
	CrashKeepAll
)

func (m CrashMode) String() string {
	switch m {
	case CrashRandom:
		return "random"
	case CrashDropAll:
		return "drop-all"
	case CrashKeepAll:
		return "keep-all"
	}
	return "unknown"
}

// crashImage builds the durable image a crash leaves behind from the durable
// image dur and the pending operations. dur is not modified.
func crashImage(dur *image, pending []*op, mode CrashMode, rng *rand.Rand) *image {
	out := dur.clone()
	switch mode {
	case CrashDropAll:
		return out
	case CrashKeepAll:
		for _, o := range pending {
			o.apply(out)
		}
		return out
	}
	for _, c := range crashPlan(pending, rng) {
		if !c.torn {
			c.o.apply(out)
			continue
		}
		p := c.landP
		c.o.applyTorn(out, func() bool { return rng.Float64() < p })
	}
	return out
}

// planned is one unsynced operation that lands (whole, or torn with each unit
// landing with probability landP).
type planned struct {
	o     *op
	torn  bool
	landP float64
}

// crashPlan decides which pending operations land at a random crash, whether
// each is torn, and the order they land in.
func crashPlan(pending []*op, rng *rand.Rand) []planned {
	// Per crash, pick how lossy it is so that runs see everything from
	// "almost all landed" to "almost nothing landed".
	dropP := rng.Float64()
	tearP := rng.Float64()
	var plan []planned
	for _, o := range pending {
		if rng.Float64() < dropP {
			continue
		}
		c := planned{o: o}
		if o.kind != opTruncate && rng.Float64() < tearP {
			c.torn, c.landP = true, rng.Float64()
		}
		plan = append(plan, c)
	}
	rng.Shuffle(len(plan), func(i, j int) { plan[i], plan[j] = plan[j], plan[i] })
	return plan
}

package scsi

import (
	"math/bits"
	"sync"
)

// readBuffers recycles the data-in buffers of READ commands by
// power-of-two size class. A transport that implements the release hook
// (iscsi.DataInReleaser calls LogicalUnit.ReleaseDataIn) hands each buffer
// back once it was sent; the next READ of that class reuses it instead of
// allocating (and zeroing) a new one. Buffers a transport never returns
// are left to the garbage collector.
type readBuffers struct {
	classes [readBufferClasses]sync.Pool // class k holds *[]byte of capacity 1<<(k+minReadBufferShift)
}

const (
	minReadBufferShift = 12 // 4 KiB
	// readBufferClasses covers 4 KiB .. 64 MiB, more than the largest
	// transfer a unit accepts by default (32 MiB).
	readBufferClasses = 15
)

// readBufferClass returns the class holding n bytes, or -1 when n is larger
// than the largest class.
func readBufferClass(n int) int {
	c := 0
	if n > 1<<minReadBufferShift {
		c = bits.Len(uint(n-1)) - minReadBufferShift
	}
	if c >= readBufferClasses {
		return -1
	}
	return c
}

// get returns a buffer of length n. Its contents are undefined: the caller
// overwrites every byte (blockdev.Device.ReadAt fills the whole slice).
func (p *readBuffers) get(n int) *[]byte {
	c := readBufferClass(n)
	if c < 0 {
		b := make([]byte, n)
		return &b
	}
	if v, ok := p.classes[c].Get().(*[]byte); ok {
		*v = (*v)[:n]
		return v
	}
	b := make([]byte, n, 1<<(c+minReadBufferShift))
	return &b
}

// put makes b available again. Buffers not made by get are dropped.
func (p *readBuffers) put(b *[]byte) {
	k := cap(*b)
	c := readBufferClass(k)
	if c < 0 || k != 1<<(c+minReadBufferShift) {
		return
	}
	p.classes[c].Put(b)
}

// ReleaseDataIn gives the data-in buffer of resp back to the unit once the
// transport no longer references it (iscsi.DataInReleaser). resp.DataIn is
// cleared. Calling it again, or for a response whose buffer is not
// recycled, does nothing.
func (lu *LogicalUnit) ReleaseDataIn(resp *Response) {
	if resp == nil || resp.buf == nil {
		return
	}
	b := resp.buf
	resp.buf = nil
	resp.DataIn = nil
	lu.readBufs.put(b)
}

// quickReadMax is the largest READ that Quick calls quick: copying more out
// of the page cache takes long enough that running it beside the next
// commands pays for a goroutine hand-off.
const quickReadMax = 128 << 10

// Quick reports whether cmd is a READ (6/10/12/16) of at most 128 KiB, the
// command a transport may run on its reading goroutine (iscsi.QuickChecker):
// it usually only copies from the page cache, so handing it to another
// goroutine costs more than it runs. It only inspects the CDB; whether the
// read is valid is Execute's business.
func (lu *LogicalUnit) Quick(cmd *Command) bool {
	cdb := cmd.CDB
	if len(cdb) == 0 || cmd.Write {
		return false
	}
	switch cdb[0] {
	case opRead6, opRead10, opRead12, opRead16:
	default:
		return false
	}
	info, cerr := lu.lookup(cdb)
	if cerr != nil || len(cdb) < info.cdbLen {
		return false
	}
	n := uint64(decodeLBA(cdb[:info.cdbLen]).n)
	if info.op == opRead6 && n == 0 {
		n = 256
	}
	return n*uint64(lu.bs) <= quickReadMax
}

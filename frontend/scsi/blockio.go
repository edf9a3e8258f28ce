package scsi

import "bytes"

// Data-path commands (SBC-3 5.x): READ, WRITE, WRITE AND VERIFY, VERIFY,
// PRE-FETCH, SYNCHRONIZE CACHE, WRITE SAME, UNMAP, COMPARE AND WRITE, GET
// LBA STATUS and READ CAPACITY.

// Flag bits of byte 1 of block commands.
const (
	flagProtect = 0xE0 // RDPROTECT / WRPROTECT / VRPROTECT
	flagDPO     = 0x10
	flagFUA     = 0x08
)

// writeChunk bounds the buffer WRITE SAME fills with its pattern.
const writeChunk = 1 << 20

// getLBAStatusScanBytes bounds how much one GET LBA STATUS reads.
const getLBAStatusScanBytes = 1 << 20

func (lu *LogicalUnit) read(r *request) ([]byte, error) {
	rg := decodeLBA(r.cdb)
	if len(r.cdb) == 6 && rg.n == 0 {
		rg.n = 256
	}
	if rg.flags&flagProtect != 0 {
		return nil, errInvalidFieldCDB()
	}
	if err := lu.checkRange(rg.lba, uint64(rg.n)); err != nil {
		return nil, err
	}
	if rg.n > lu.maxXfer {
		return nil, errInvalidFieldCDB()
	}
	if rg.n == 0 {
		return nil, nil
	}
	// A recycled buffer (not zeroed: ReadAt fills all of it), returned
	// by the transport through ReleaseDataIn once sent.
	b := lu.readBufs.get(int(rg.n) * int(lu.bs))
	if err := lu.dev.ReadAt(*b, lu.off(rg.lba)); err != nil {
		lu.readBufs.put(b)
		return nil, ioError(err, false)
	}
	r.buf = b
	return *b, nil
}

// writable reports WRITE PROTECTED for a read-only unit.
func (lu *LogicalUnit) writable() error {
	if lu.opts.ReadOnly {
		return errWriteProtected()
	}
	return nil
}

// dataOut returns the first n bytes of the command's data-out buffer, or
// an error if the initiator sent fewer.
func dataOut(r *request, n int) ([]byte, error) {
	if len(r.cmd.DataOut) < n {
		return nil, errDataShort()
	}
	return r.cmd.DataOut[:n], nil
}

func (lu *LogicalUnit) write(r *request) ([]byte, error) {
	rg := decodeLBA(r.cdb)
	if len(r.cdb) == 6 && rg.n == 0 {
		rg.n = 256
	}
	if rg.flags&flagProtect != 0 {
		return nil, errInvalidFieldCDB()
	}
	return nil, lu.writeBlocks(r, rg.lba, rg.n, rg.flags&flagFUA != 0)
}

// writeBlocks validates and performs the data part of a write command.
func (lu *LogicalUnit) writeBlocks(r *request, lba uint64, n uint32, fua bool) error {
	if err := lu.checkRange(lba, uint64(n)); err != nil {
		return err
	}
	if n > lu.maxXfer {
		return errInvalidFieldCDB()
	}
	if err := lu.writable(); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	// If the initiator sent less than the transfer length (its Expected
	// Data Transfer Length was smaller), write only the whole blocks it
	// sent (FCP-4 / SAM-5: data beyond the expected length is neither
	// requested nor transferred); the transport reports the overflow.
	data := r.cmd.DataOut
	if need := int(n) * int(lu.bs); len(data) > need {
		data = data[:need]
	}
	data = data[:len(data)-len(data)%int(lu.bs)]
	if len(data) == 0 {
		return nil
	}
	n = uint32(len(data) / int(lu.bs))
	release := lu.ranges.lock(lba, uint64(n), false)
	defer release()
	if err := lu.dev.WriteAt(data, lu.off(lba), fua || !lu.wce.Load()); err != nil {
		return ioError(err, true)
	}
	return nil
}

// writeAndVerify is WRITE AND VERIFY (10/12/16). The data is written
// through to stable storage; with BYTCHK=1 it is read back and compared.
func (lu *LogicalUnit) writeAndVerify(r *request) ([]byte, error) {
	rg := decodeLBA(r.cdb)
	if rg.flags&flagProtect != 0 || rg.flags&0x04 != 0 {
		return nil, errInvalidFieldCDB()
	}
	if err := lu.writeBlocks(r, rg.lba, rg.n, true); err != nil {
		return nil, err
	}
	if rg.flags&0x02 != 0 && rg.n > 0 {
		size := int(rg.n) * int(lu.bs)
		if len(r.cmd.DataOut) < size {
			size = len(r.cmd.DataOut) - len(r.cmd.DataOut)%int(lu.bs)
		}
		got := make([]byte, size)
		if err := lu.dev.ReadAt(got, lu.off(rg.lba)); err != nil {
			return nil, ioError(err, false)
		}
		if i := firstDiff(got, r.cmd.DataOut[:len(got)]); i >= 0 {
			return nil, errMiscompare(i)
		}
	}
	return nil, nil
}

// firstDiff returns the index of the first differing byte, or -1.
func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// verify is VERIFY (10/12/16): BYTCHK 00 checks the blocks are readable,
// 01 compares them with the data-out buffer, 11 compares each with the one
// block sent.
func (lu *LogicalUnit) verify(r *request) ([]byte, error) {
	rg := decodeLBA(r.cdb)
	if rg.flags&flagProtect != 0 {
		return nil, errInvalidFieldCDB()
	}
	bytchk := (rg.flags >> 1) & 0x03
	if bytchk == 2 {
		return nil, errInvalidFieldCDB()
	}
	if err := lu.checkRange(rg.lba, uint64(rg.n)); err != nil {
		return nil, err
	}
	if rg.n > lu.maxXfer {
		return nil, errInvalidFieldCDB()
	}
	if rg.n == 0 {
		return nil, nil
	}
	bs := int(lu.bs)
	size := int(rg.n) * bs
	var want []byte
	switch bytchk {
	case 1:
		d, err := dataOut(r, size)
		if err != nil {
			return nil, err
		}
		want = d
	case 3:
		d, err := dataOut(r, bs)
		if err != nil {
			return nil, err
		}
		want = d
	}
	got := make([]byte, size)
	if err := lu.dev.ReadAt(got, lu.off(rg.lba)); err != nil {
		return nil, ioError(err, false)
	}
	switch bytchk {
	case 1:
		if i := firstDiff(got, want); i >= 0 {
			return nil, errMiscompare(i)
		}
	case 3:
		for blk := 0; blk < int(rg.n); blk++ {
			if i := firstDiff(got[blk*bs:(blk+1)*bs], want); i >= 0 {
				return nil, errMiscompare(blk*bs + i)
			}
		}
	}
	return nil, nil
}

// prefetch is PRE-FETCH (10/16). The device has no cache to fill, so it
// validates the range and returns GOOD (SBC-3: GOOD when the blocks will not
// all fit in the cache).
func (lu *LogicalUnit) prefetch(r *request) ([]byte, error) {
	var lba uint64
	var n uint32
	if len(r.cdb) == 10 {
		lba, n = uint64(be32(r.cdb[2:6])), uint32(be16(r.cdb[7:9]))
	} else {
		lba, n = be64(r.cdb[2:10]), be32(r.cdb[10:14])
	}
	return nil, lu.checkRange(lba, uint64(n))
}

// syncCache is SYNCHRONIZE CACHE (10/16): it flushes the whole device
// (a range flush would not be cheaper for a log-structured engine).
func (lu *LogicalUnit) syncCache(r *request) ([]byte, error) {
	var lba uint64
	var n uint32
	if len(r.cdb) == 10 {
		lba, n = uint64(be32(r.cdb[2:6])), uint32(be16(r.cdb[7:9]))
	} else {
		lba, n = be64(r.cdb[2:10]), be32(r.cdb[10:14])
	}
	if err := lu.checkRange(lba, uint64(n)); err != nil {
		return nil, err
	}
	if err := lu.dev.Flush(); err != nil {
		return nil, ioError(err, true)
	}
	return nil, nil
}

// writeSame is WRITE SAME (10/16), with UNMAP (thin provisioning) and, for
// the 16-byte form, NDOB (no data-out buffer: zeros). ANCHOR is not
// supported (ANC_SUP=0).
func (lu *LogicalUnit) writeSame(r *request) ([]byte, error) {
	flags := r.cdb[1]
	var lba uint64
	var n uint64
	ndob := false
	if len(r.cdb) == 10 {
		lba, n = uint64(be32(r.cdb[2:6])), uint64(be16(r.cdb[7:9]))
		if flags&0x01 != 0 {
			return nil, errInvalidFieldCDB()
		}
	} else {
		lba, n = be64(r.cdb[2:10]), uint64(be32(r.cdb[10:14]))
		ndob = flags&0x01 != 0
	}
	unmap := flags&0x08 != 0
	if flags&flagProtect != 0 || flags&0x10 != 0 || flags&0x06 != 0 {
		// WRPROTECT, ANCHOR, or the obsolete PBDATA/LBDATA bits.
		return nil, errInvalidFieldCDB()
	}
	if n == 0 {
		// WSNZ=0: zero blocks means "to the end of the medium".
		if lba >= lu.nblocks() {
			return nil, errLBAOutOfRange()
		}
		n = lu.nblocks() - lba
	} else if err := lu.checkRange(lba, n); err != nil {
		return nil, err
	}
	if n > uint64(lu.maxWS) {
		return nil, errInvalidFieldCDB()
	}
	bs := int(lu.bs)
	var pattern []byte
	if ndob {
		pattern = make([]byte, bs)
	} else {
		switch {
		case len(r.cmd.DataOut) < bs:
			return nil, errDataShort()
		case len(r.cmd.DataOut) > bs:
			return nil, errInvalidFieldCDB()
		}
		pattern = r.cmd.DataOut
	}
	if err := lu.writable(); err != nil {
		return nil, err
	}
	release := lu.ranges.lock(lba, n, false)
	defer release()
	off, length := lu.off(lba), int64(n)*int64(bs)
	fua := !lu.wce.Load()
	if unmap {
		// Deallocate whatever the pattern: the blocks then read as
		// zeros (LBPRZ=1), as initiators that set UNMAP expect.
		if err := lu.dev.Trim(off, length); err != nil {
			return nil, ioError(err, true)
		}
		return nil, nil
	}
	if isZero(pattern) {
		if err := lu.dev.WriteZeroes(off, length, fua); err != nil {
			return nil, ioError(err, true)
		}
		return nil, nil
	}
	chunk := writeChunk
	if int64(chunk) > length {
		chunk = int(length)
	}
	chunk -= chunk % bs
	buf := make([]byte, chunk)
	for i := 0; i < chunk; i += bs {
		copy(buf[i:], pattern)
	}
	for length > 0 {
		w := buf
		if int64(len(w)) > length {
			w = w[:length]
		}
		if err := lu.dev.WriteAt(w, off, fua); err != nil {
			return nil, ioError(err, true)
		}
		off += int64(len(w))
		length -= int64(len(w))
	}
	return nil, nil
}

func isZero(p []byte) bool {
	for _, c := range p {
		if c != 0 {
			return false
		}
	}
	return true
}

// unmap is UNMAP (SBC-3 5.28). Every descriptor is validated before any
// block is discarded.
func (lu *LogicalUnit) unmap(r *request) ([]byte, error) {
	if r.cdb[1]&0x01 != 0 { // ANCHOR: not supported
		return nil, errInvalidFieldCDB()
	}
	plen := int(be16(r.cdb[7:9]))
	if plen == 0 {
		return nil, nil
	}
	if plen < 8 {
		return nil, errParamListLength()
	}
	data := r.cmd.DataOut
	if len(data) < plen {
		return nil, errParamListLength()
	}
	data = data[:plen]
	if err := lu.writable(); err != nil {
		return nil, err
	}
	bddl := int(be16(data[2:4]))
	if bddl > plen-8 {
		return nil, errParamListLength()
	}
	ndesc := bddl / 16
	if uint32(ndesc) > lu.maxDescs {
		return nil, errInvalidFieldParam()
	}
	type extent struct{ lba, n uint64 }
	exts := make([]extent, 0, ndesc)
	var total uint64
	for i := 0; i < ndesc; i++ {
		d := data[8+16*i : 8+16*(i+1)]
		e := extent{lba: be64(d[0:8]), n: uint64(be32(d[8:12]))}
		if e.lba > lu.nblocks() || e.n > lu.nblocks()-e.lba {
			return nil, errLBAOutOfRange()
		}
		total += e.n
		if total > uint64(lu.maxUnmap) {
			return nil, errInvalidFieldParam()
		}
		if e.n > 0 {
			exts = append(exts, e)
		}
	}
	for _, e := range exts {
		release := lu.ranges.lock(e.lba, e.n, false)
		err := lu.dev.Trim(lu.off(e.lba), int64(e.n)*int64(lu.bs))
		release()
		if err != nil {
			return nil, ioError(err, true)
		}
	}
	return nil, nil
}

// compareAndWrite is COMPARE AND WRITE (SBC-3 5.2): atomically with
// respect to every other write to those blocks, compare the first half of
// the data-out buffer with the medium and, if equal, write the second half.
func (lu *LogicalUnit) compareAndWrite(r *request) ([]byte, error) {
	flags := r.cdb[1]
	if flags&flagProtect != 0 {
		return nil, errInvalidFieldCDB()
	}
	lba := be64(r.cdb[2:10])
	n := uint64(r.cdb[13])
	if err := lu.checkRange(lba, n); err != nil {
		return nil, err
	}
	if n > maxCompareAndWriteBlocks {
		return nil, errInvalidFieldCDB()
	}
	if err := lu.writable(); err != nil {
		return nil, err
	}
	if n == 0 {
		if len(r.cmd.DataOut) > 0 {
			// Data for a zero-length command: the initiator meant more
			// blocks than the one-byte field can say.
			return nil, errInvalidFieldCDB()
		}
		return nil, nil
	}
	size := int(n) * int(lu.bs)
	if len(r.cmd.DataOut) != 2*size {
		if len(r.cmd.DataOut) < 2*size {
			return nil, errDataShort()
		}
		return nil, errInvalidFieldCDB()
	}
	want, next := r.cmd.DataOut[:size], r.cmd.DataOut[size:2*size]
	release := lu.ranges.lock(lba, n, true)
	defer release()
	got := make([]byte, size)
	if err := lu.dev.ReadAt(got, lu.off(lba)); err != nil {
		return nil, ioError(err, false)
	}
	if i := firstDiff(got, want); i >= 0 {
		return nil, errMiscompare(i)
	}
	if err := lu.dev.WriteAt(next, lu.off(lba), flags&flagFUA != 0 || !lu.wce.Load()); err != nil {
		return nil, ioError(err, true)
	}
	return nil, nil
}

// getLBAStatus is GET LBA STATUS (SBC-3 5.6). The device interface cannot
// say which blocks are allocated; since deallocated blocks read as zeros
// (LBPRZ=1), runs of all-zero blocks are reported deallocated and the rest
// mapped. At most getLBAStatusScanBytes are inspected per command.
func (lu *LogicalUnit) getLBAStatus(r *request) ([]byte, error) {
	lba := be64(r.cdb[2:10])
	alloc := int(be32(r.cdb[10:14]))
	if lba >= lu.nblocks() {
		return nil, errLBAOutOfRange()
	}
	span := lu.nblocks() - lba
	if max := uint64(getLBAStatusScanBytes / lu.bs); span > max {
		span = max
	}
	bs := int(lu.bs)
	buf := make([]byte, int(span)*bs)
	if err := lu.dev.ReadAt(buf, lu.off(lba)); err != nil {
		return nil, ioError(err, false)
	}
	type run struct {
		lba     uint64
		n       uint32
		dealloc bool
	}
	var runs []run
	for i := 0; i < int(span); i++ {
		z := isZero(buf[i*bs : (i+1)*bs])
		if k := len(runs); k > 0 && runs[k-1].dealloc == z {
			runs[k-1].n++
			continue
		}
		runs = append(runs, run{lba: lba + uint64(i), n: 1, dealloc: z})
	}
	out := make([]byte, 8, 8+16*len(runs))
	for _, rn := range runs {
		d := make([]byte, 16)
		put64(d[0:], rn.lba)
		put32(d[8:], rn.n)
		if rn.dealloc {
			d[12] = 1
		}
		out = append(out, d...)
	}
	put32(out[0:], uint32(len(out)-4))
	return clip(out, alloc), nil
}

// readCapacity10 is READ CAPACITY (10).
func (lu *LogicalUnit) readCapacity10(r *request) ([]byte, error) {
	if r.cdb[8]&0x01 == 0 && be32(r.cdb[2:6]) != 0 {
		return nil, errInvalidFieldCDB()
	}
	out := make([]byte, 8)
	last := lu.lastLBA()
	if last > 0xFFFFFFFF {
		last = 0xFFFFFFFF
	}
	put32(out[0:], uint32(last))
	put32(out[4:], lu.bs)
	return out, nil
}

// readCapacity16 is READ CAPACITY (16): thin provisioned (LBPME=1) and
// reading zeros from unmapped blocks (LBPRZ=1), no protection.
func (lu *LogicalUnit) readCapacity16(r *request) ([]byte, error) {
	alloc := int(be32(r.cdb[10:14]))
	out := make([]byte, 32)
	put64(out[0:], lu.lastLBA())
	put32(out[8:], lu.bs)
	out[13] = lu.opts.PhysicalBlockExponent & 0x0F
	out[14] = 0x80 | 0x40
	return clip(out, alloc), nil
}

// lastLBA is the address of the last logical block (0 for an empty device).
func (lu *LogicalUnit) lastLBA() uint64 {
	if lu.nblocks() == 0 {
		return 0
	}
	return lu.nblocks() - 1
}

package scsi

import "math"

// DataOutLength returns how many data-out bytes cdb asks for according to
// its own fields (the SCSI transfer length or parameter list length), so a
// transport can report residuals when the initiator's Expected Data Transfer
// Length differs. ok is false when the CDB is too short or not a command
// with data-out.
func (lu *LogicalUnit) DataOutLength(cdb []byte) (n uint32, ok bool) {
	if len(cdb) == 0 {
		return 0, false
	}
	info, cerr := lu.lookup(cdb)
	if cerr != nil || len(cdb) < info.cdbLen {
		return 0, false
	}
	cdb = cdb[:info.cdbLen]
	bs := uint64(lu.bs)
	blocks := func(b uint64) (uint32, bool) {
		if v := b * bs; b <= math.MaxUint32 && v <= math.MaxUint32 {
			return uint32(v), true
		}
		return math.MaxUint32, true
	}
	switch info.op {
	case opWrite6:
		rg := decodeLBA(cdb)
		if rg.n == 0 {
			rg.n = 256
		}
		return blocks(uint64(rg.n))
	case opWrite10, opWrite12, opWrite16, opWriteVerify10, opWriteVerify12, opWriteVerify16:
		return blocks(uint64(decodeLBA(cdb).n))
	case opVerify10, opVerify12, opVerify16:
		rg := decodeLBA(cdb)
		switch (rg.flags >> 1) & 3 {
		case 1:
			return blocks(uint64(rg.n))
		case 3:
			if rg.n > 0 {
				return blocks(1)
			}
		}
		return 0, true
	case opWriteSame10:
		return blocks(1)
	case opWriteSame16:
		if cdb[1]&0x01 != 0 {
			return 0, true
		}
		return blocks(1)
	case opCompareAndWrite:
		return blocks(2 * uint64(cdb[13]))
	case opUnmap, opModeSelect10:
		return uint32(be16(cdb[7:9])), true
	case opModeSelect6:
		return uint32(cdb[4]), true
	case opPersistResOut:
		return be32(cdb[5:9]), true
	}
	return 0, false
}

package scsi

import "encoding/binary"

// Big-endian field access. Callers have checked the CDB length against the
// command's table entry, so these never index out of range.

func be16(p []byte) uint16 { return binary.BigEndian.Uint16(p) }
func be32(p []byte) uint32 { return binary.BigEndian.Uint32(p) }
func be64(p []byte) uint64 { return binary.BigEndian.Uint64(p) }

func put16(p []byte, v uint16) { binary.BigEndian.PutUint16(p, v) }
func put32(p []byte, v uint32) { binary.BigEndian.PutUint32(p, v) }
func put64(p []byte, v uint64) { binary.BigEndian.PutUint64(p, v) }

// allocLen16 reads a two-byte allocation length.
func allocLen16(p []byte) int { return int(be16(p)) }

// clip cuts data to the allocation length.
func clip(data []byte, alloc int) []byte {
	if alloc < len(data) {
		return data[:alloc]
	}
	return data
}

// lbaRange is the (LBA, transfer length) pair of a block command plus its
// flag byte.
type lbaRange struct {
	lba   uint64
	n     uint32
	flags byte
}

// decodeLBA reads LBA and transfer length from a READ/WRITE/VERIFY style
// CDB of the 6-, 10-, 12- or 16-byte layout (SBC-3 4.2.2).
func decodeLBA(cdb []byte) lbaRange {
	switch len(cdb) {
	case 6:
		lba := uint64(cdb[1]&0x1F)<<16 | uint64(cdb[2])<<8 | uint64(cdb[3])
		return lbaRange{lba: lba, n: uint32(cdb[4])}
	case 10:
		return lbaRange{lba: uint64(be32(cdb[2:6])), n: uint32(be16(cdb[7:9])), flags: cdb[1]}
	case 12:
		return lbaRange{lba: uint64(be32(cdb[2:6])), n: be32(cdb[6:10]), flags: cdb[1]}
	default:
		return lbaRange{lba: be64(cdb[2:10]), n: be32(cdb[10:14]), flags: cdb[1]}
	}
}

// checkRange reports LBA OUT OF RANGE unless [lba, lba+n) lies inside the
// medium. A zero-length range is checked at its LBA only.
func (lu *LogicalUnit) checkRange(lba uint64, n uint64) error {
	if lba > lu.nblocks() || n > lu.nblocks()-lba {
		return errLBAOutOfRange()
	}
	if n == 0 && lba >= lu.nblocks() && lu.nblocks() > 0 {
		return errLBAOutOfRange()
	}
	return nil
}

func (lu *LogicalUnit) off(lba uint64) int64 { return int64(lba) * int64(lu.bs) }

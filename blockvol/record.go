package blockvol

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// castagnoli is the CRC32C table; read-only after package init.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc32c(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// Kind is what a WAL record does.
type Kind uint8

const (
	// KindWrite carries Blocks blocks of data for LBA..LBA+Blocks.
	KindWrite Kind = 1
	// KindTrim discards the range (reads return zeros).
	KindTrim Kind = 2
	// KindZero sets the range to zeros.
	KindZero Kind = 3
	// kindPad is an on-disk filler (end of batch, end of region); it
	// consumes no LSN. Its LSN field holds the next expected LSN.
	kindPad Kind = 4
)

func (k Kind) String() string {
	switch k {
	case KindWrite:
		return "write"
	case KindTrim:
		return "trim"
	case KindZero:
		return "zero"
	case kindPad:
		return "pad"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Record is one WAL record as the replication layer sees it.
type Record struct {
	LSN    uint64
	Epoch  uint64
	Kind   Kind
	LBA    uint64 // first block
	Blocks uint32 // number of blocks
	// Data holds Blocks*BlockSize bytes for KindWrite, nothing otherwise.
	// In ScanWAL callbacks it is only valid during the call.
	Data []byte
}

// On-disk record header, little endian, recordHeaderSize bytes:
//
//	0  magic u32
//	4  kind u8, 3 bytes reserved (zero)
//	8  lsn u64
//	16 epoch u64
//	24 generation u64
//	32 lba u64
//	40 blocks u32
//	44 dataLen u32 (bytes following the header; for a pad, bytes skipped)
//	48 dataCRC u32 (CRC32C of the data; 0 for pads and data-less kinds)
//	52 8 bytes reserved (zero)
//	60 headerCRC u32 (CRC32C of bytes 0..60)
const (
	recordHeaderSize = 64
	recordMagic      = 0x57524543 // "WREC"
	// recordAlign: every record length is a multiple of this, so a gap
	// before a 4 KiB boundary always fits a pad header.
	recordAlign = 64
)

type recordHeader struct {
	kind    Kind
	lsn     uint64
	epoch   uint64
	gen     uint64
	lba     uint64
	blocks  uint32
	dataLen uint32
	dataCRC uint32
}

func (h *recordHeader) encode(b []byte) {
	_ = b[recordHeaderSize-1]
	binary.LittleEndian.PutUint32(b[0:], recordMagic)
	b[4] = byte(h.kind)
	b[5], b[6], b[7] = 0, 0, 0
	binary.LittleEndian.PutUint64(b[8:], h.lsn)
	binary.LittleEndian.PutUint64(b[16:], h.epoch)
	binary.LittleEndian.PutUint64(b[24:], h.gen)
	binary.LittleEndian.PutUint64(b[32:], h.lba)
	binary.LittleEndian.PutUint32(b[40:], h.blocks)
	binary.LittleEndian.PutUint32(b[44:], h.dataLen)
	binary.LittleEndian.PutUint32(b[48:], h.dataCRC)
	for i := 52; i < 60; i++ {
		b[i] = 0
	}
	binary.LittleEndian.PutUint32(b[60:], crc32c(b[:60]))
}

// decodeRecordHeader validates and decodes a header. It checks magic, CRC,
// kind and internal consistency against the block size bs; it does not
// check generation or LSN (the caller knows what it expects).
func decodeRecordHeader(b []byte, bs int) (recordHeader, error) {
	var h recordHeader
	if len(b) < recordHeaderSize {
		return h, fmt.Errorf("%w: header needs %d bytes, have %d", ErrBadRecord, recordHeaderSize, len(b))
	}
	if m := binary.LittleEndian.Uint32(b[0:]); m != recordMagic {
		return h, fmt.Errorf("%w: magic %#x", ErrBadRecord, m)
	}
	if want, got := crc32c(b[:60]), binary.LittleEndian.Uint32(b[60:]); want != got {
		return h, fmt.Errorf("%w: header crc %#x, computed %#x", ErrBadRecord, got, want)
	}
	h.kind = Kind(b[4])
	h.lsn = binary.LittleEndian.Uint64(b[8:])
	h.epoch = binary.LittleEndian.Uint64(b[16:])
	h.gen = binary.LittleEndian.Uint64(b[24:])
	h.lba = binary.LittleEndian.Uint64(b[32:])
	h.blocks = binary.LittleEndian.Uint32(b[40:])
	h.dataLen = binary.LittleEndian.Uint32(b[44:])
	h.dataCRC = binary.LittleEndian.Uint32(b[48:])
	if h.lsn == 0 {
		return h, fmt.Errorf("%w: lsn 0", ErrBadRecord)
	}
	switch h.kind {
	case KindWrite:
		if h.blocks == 0 || uint64(h.dataLen) != uint64(h.blocks)*uint64(bs) {
			return h, fmt.Errorf("%w: write of %d blocks with %d data bytes", ErrBadRecord, h.blocks, h.dataLen)
		}
	case KindTrim, KindZero:
		if h.blocks == 0 || h.dataLen != 0 {
			return h, fmt.Errorf("%w: %v of %d blocks with %d data bytes", ErrBadRecord, h.kind, h.blocks, h.dataLen)
		}
	case kindPad:
		if h.dataLen%recordAlign != 0 {
			return h, fmt.Errorf("%w: pad length %d", ErrBadRecord, h.dataLen)
		}
	default:
		return h, fmt.Errorf("%w: unknown kind %d", ErrBadRecord, b[4])
	}
	if h.lba+uint64(h.blocks) < h.lba {
		return h, fmt.Errorf("%w: lba range overflows", ErrBadRecord)
	}
	return h, nil
}

// recordLen is the on-disk length of a record with dataLen bytes of data.
func recordLen(dataLen int) int64 {
	return alignUp(int64(recordHeaderSize+dataLen), recordAlign)
}

// decodeRecord decodes one complete record (header and data) from b and
// returns it with its on-disk length. Data aliases b. Pads are returned
// with Kind kindPad.
func decodeRecord(b []byte, bs int) (Record, recordHeader, int64, error) {
	h, err := decodeRecordHeader(b, bs)
	if err != nil {
		return Record{}, h, 0, err
	}
	n := recordLen(int(h.dataLen))
	r := Record{LSN: h.lsn, Epoch: h.epoch, Kind: h.kind, LBA: h.lba, Blocks: h.blocks}
	if h.kind == KindWrite {
		if int64(len(b)) < recordHeaderSize+int64(h.dataLen) {
			return Record{}, h, 0, fmt.Errorf("%w: lsn %d truncated: %d of %d data bytes", ErrBadRecord, h.lsn, len(b)-recordHeaderSize, h.dataLen)
		}
		r.Data = b[recordHeaderSize : recordHeaderSize+int(h.dataLen)]
		if c := crc32c(r.Data); c != h.dataCRC {
			return Record{}, h, 0, fmt.Errorf("%w: lsn %d data crc %#x, computed %#x", ErrBadRecord, h.lsn, h.dataCRC, c)
		}
	}
	return r, h, n, nil
}

func alignUp(x, a int64) int64   { return (x + a - 1) / a * a }
func alignDown(x, a int64) int64 { return x / a * a }

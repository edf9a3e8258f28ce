package oracle

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

const blockMagic = 0x6f7261636c65626b // "oraclebk"

// BlockContent fills p (one block) with the content of value seq at lba.
// seq 0 is the zero block.
func BlockContent(p []byte, lba, seq uint64) {
	if seq == 0 {
		clear(p)
		return
	}
	binary.LittleEndian.PutUint64(p[0:], blockMagic)
	binary.LittleEndian.PutUint64(p[8:], lba)
	binary.LittleEndian.PutUint64(p[16:], seq)
	x := lba*0x9e3779b97f4a7c15 ^ seq*0xc2b2ae3d27d4eb4f
	for i := 24; i+8 <= len(p)-4; i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(p[i:], x)
	}
	binary.LittleEndian.PutUint32(p[len(p)-4:], crc32.ChecksumIEEE(p[:len(p)-4]))
}

// DecodeBlock returns the value a block read at lba holds, or an error if it
// is not a whole block the workload wrote there (torn, misplaced, garbage).
func DecodeBlock(p []byte, lba uint64) (uint64, error) {
	allZero := true
	for _, b := range p {
		if b != 0 {
			allZero = false
			break
		}
	}
	if allZero {
		return 0, nil
	}
	if binary.LittleEndian.Uint64(p[0:]) != blockMagic {
		return 0, fmt.Errorf("block at lba %d is neither zeros nor a written block (head %x)", lba, p[:24])
	}
	gotLBA, seq := binary.LittleEndian.Uint64(p[8:]), binary.LittleEndian.Uint64(p[16:])
	if gotLBA != lba {
		return 0, fmt.Errorf("block at lba %d holds data written to lba %d (seq %d)", lba, gotLBA, seq)
	}
	want := make([]byte, len(p))
	BlockContent(want, lba, seq)
	if string(want) != string(p) {
		return 0, fmt.Errorf("block at lba %d (seq %d) is torn or corrupt", lba, seq)
	}
	return seq, nil
}

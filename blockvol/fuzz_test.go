package blockvol

import (
	"bytes"
	"testing"
)

// FuzzDecodeRecord: arbitrary bytes never panic the record decoder; what
// decodes re-encodes to the same header bytes and its data CRC holds.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(encodeRecord(recordHeader{kind: KindWrite, lsn: 1, epoch: 1, gen: 1, lba: 0, blocks: 1}, block(512, 1)))
	f.Add(encodeRecord(recordHeader{kind: KindTrim, lsn: 9, gen: 2, lba: 100, blocks: 5000}, nil))
	f.Add(encodeRecord(recordHeader{kind: kindPad, lsn: 3, gen: 1, dataLen: 4096 - 64}, nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, bs := range []int{512, 4096} {
			r, h, n, err := decodeRecord(b, bs)
			if err != nil {
				continue
			}
			if n < recordHeaderSize || n%recordAlign != 0 {
				t.Fatalf("length %d", n)
			}
			re := make([]byte, recordHeaderSize)
			h.encode(re)
			if !bytes.Equal(re, b[:recordHeaderSize]) {
				t.Fatal("header does not re-encode identically")
			}
			if r.Kind == KindWrite && (len(r.Data) != int(r.Blocks)*bs || crc32c(r.Data) != h.dataCRC) {
				t.Fatal("accepted write record with inconsistent data")
			}
		}
	})
}

// FuzzDecodeSuperblock: arbitrary bytes never panic the superblock decoder
// (nor the A/B picker); a decoded copy re-encodes to the same bytes.
func FuzzDecodeSuperblock(f *testing.F) {
	buf := make([]byte, superblockSize)
	s := testSuperblock()
	s.encode(buf)
	f.Add(append([]byte(nil), buf...))
	s.version = 2
	s.encode(buf)
	f.Add(append([]byte(nil), buf...))
	f.Add([]byte("WEEDBLK\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeSuperblock(b)
		half := len(b) / 2
		pickSuperblock(b[:half], b[half:])
		if err != nil {
			return
		}
		re := make([]byte, superblockSize)
		s.encode(re)
		d, err := decodeSuperblock(re)
		if err != nil {
			t.Fatalf("re-encoded superblock invalid: %v", err)
		}
		if d.seq != s.seq || d.checkpoint != s.checkpoint || d.tailPos != s.tailPos || !bytes.Equal(d.config, s.config) {
			t.Fatal("round trip changed the superblock")
		}
	})
}

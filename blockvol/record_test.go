package blockvol

import (
	"errors"
	"testing"
	"time"
)

var timeZero time.Time

func encodeRecord(h recordHeader, data []byte) []byte {
	if h.kind == KindWrite {
		h.dataCRC = crc32c(data)
		h.dataLen = uint32(len(data))
	}
	b := make([]byte, recordHeaderSize+len(data))
	h.encode(b)
	copy(b[recordHeaderSize:], data)
	return b
}

func TestRecordRoundTrip(t *testing.T) {
	data := block(1024, 3)
	b := encodeRecord(recordHeader{kind: KindWrite, lsn: 17, epoch: 4, gen: 2, lba: 99, blocks: 2}, data)
	r, h, n, err := decodeRecord(b, 512)
	if err != nil {
		t.Fatal(err)
	}
	if r.LSN != 17 || r.Epoch != 4 || h.gen != 2 || r.LBA != 99 || r.Blocks != 2 || r.Kind != KindWrite || n != int64(len(b)) || string(r.Data) != string(data) {
		t.Fatalf("decoded %+v gen %d n %d", r, h.gen, n)
	}
	for _, k := range []Kind{KindTrim, KindZero} {
		b := encodeRecord(recordHeader{kind: k, lsn: 1, gen: 1, lba: 5, blocks: 1000}, nil)
		r, _, n, err := decodeRecord(b, 4096)
		if err != nil || r.Kind != k || r.Blocks != 1000 || n != recordHeaderSize {
			t.Fatalf("%v: %+v n %d err %v", k, r, n, err)
		}
	}
}

func TestRecordCorruption(t *testing.T) {
	data := block(4096, 8)
	good := encodeRecord(recordHeader{kind: KindWrite, lsn: 3, gen: 1, lba: 1, blocks: 1}, data)
	cases := map[string]func([]byte) []byte{
		"header bit":   func(b []byte) []byte { b[9] ^= 1; return b },
		"header crc":   func(b []byte) []byte { b[61] ^= 1; return b },
		"magic":        func(b []byte) []byte { b[0] = 0; return b },
		"data bit":     func(b []byte) []byte { b[recordHeaderSize+100] ^= 4; return b },
		"torn data":    func(b []byte) []byte { clear(b[recordHeaderSize+2048:]); return b },
		"truncated":    func(b []byte) []byte { return b[:recordHeaderSize+10] },
		"short header": func(b []byte) []byte { return b[:30] },
		"all zeros":    func(b []byte) []byte { return make([]byte, len(b)) },
		"wrong data len": func(b []byte) []byte {
			return encodeRecord(recordHeader{kind: KindWrite, lsn: 3, gen: 1, lba: 1, blocks: 2}, data)
		},
		"unknown kind": func(b []byte) []byte { return encodeRecord(recordHeader{kind: 9, lsn: 3, gen: 1}, nil) },
		"lsn zero": func(b []byte) []byte {
			return encodeRecord(recordHeader{kind: KindTrim, lsn: 0, gen: 1, blocks: 1}, nil)
		},
		"trim no blocks": func(b []byte) []byte { return encodeRecord(recordHeader{kind: KindTrim, lsn: 1, gen: 1}, nil) },
		"lba overflow": func(b []byte) []byte {
			return encodeRecord(recordHeader{kind: KindTrim, lsn: 1, gen: 1, lba: ^uint64(0), blocks: 2}, nil)
		},
	}
	for name, mut := range cases {
		b := mut(append([]byte(nil), good...))
		if _, _, _, err := decodeRecord(b, 4096); !errors.Is(err, ErrBadRecord) {
			t.Errorf("%s: err %v", name, err)
		}
	}
}

package replication

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/weedblock/weedblock/blockvol"
)

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	rec := blockvol.Record{LSN: 7, Epoch: 3, Kind: blockvol.KindWrite, LBA: 42, Blocks: 2, Data: bytes.Repeat([]byte{0xab}, 1024)}
	var hdr [recordFixed]byte
	msgs := []struct {
		t     frameType
		parts [][]byte
	}{
		{typeHello, [][]byte{encodeHello(helloMsg{Epoch: 5, Volume: "db1"})}},
		{typeHelloOK, [][]byte{encodeHelloOK(helloOKMsg{Epoch: 5, Head: 10, Durable: 9})}},
		{typeRecord, [][]byte{encodeRecordHeader(hdr[:], 5, &rec), rec.Data}},
		{typeAck, [][]byte{encodeAck(7)}},
		{typeBarrier, [][]byte{encodeBarrier(barrierMsg{Epoch: 5, LSN: 7})}},
		{typeBarrierAck, [][]byte{encodeBarrierAck(barrierAckMsg{LSN: 7, Durable: 7})}},
		{typeError, [][]byte{encodeError(errorMsg{Code: codeStaleEpoch, Msg: "old"})}},
	}
	for _, m := range msgs {
		if err := writeFrame(&buf, m.t, m.parts...); err != nil {
			t.Fatal(err)
		}
	}
	fr := newFrameReader(&buf)
	for _, m := range msgs {
		typ, p, err := fr.next()
		if err != nil || typ != m.t {
			t.Fatalf("frame %v: got %v, %v", m.t, typ, err)
		}
		switch typ {
		case typeHello:
			h, err := decodeHello(p)
			if err != nil || h.Epoch != 5 || h.Volume != "db1" {
				t.Fatalf("hello %+v %v", h, err)
			}
		case typeRecord:
			r, err := decodeRecord(p)
			if err != nil || r.Epoch != 5 || r.Rec.LSN != 7 || r.Rec.Epoch != 3 || r.Rec.LBA != 42 || r.Rec.Blocks != 2 || !bytes.Equal(r.Rec.Data, rec.Data) {
				t.Fatalf("record %+v %v", r, err)
			}
		case typeError:
			e, err := decodeError(p)
			if err != nil {
				t.Fatal(err)
			}
			if re := (&RemoteError{Code: e.Code, Msg: e.Msg}); !errors.Is(re, ErrStaleEpoch) {
				t.Fatalf("error frame %v does not map to ErrStaleEpoch", re)
			}
		}
	}
	if _, _, err := fr.next(); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
}

func TestFrameRejectsCorruption(t *testing.T) {
	var buf bytes.Buffer
	writeFrame(&buf, typeAck, encodeAck(9))
	b := buf.Bytes()
	b[len(b)-1] ^= 1
	if _, _, err := newFrameReader(bytes.NewReader(b)).next(); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("flipped payload bit: %v", err)
	}
	huge := []byte{byte(typeRecord), 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}
	if _, _, err := newFrameReader(bytes.NewReader(huge)).next(); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("oversized frame: %v", err)
	}
	if _, _, err := newFrameReader(bytes.NewReader([]byte{99, 0, 0, 0, 0, 0, 0, 0, 0})).next(); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("unknown type: %v", err)
	}
	if _, _, err := newFrameReader(bytes.NewReader(b[:len(b)-3])).next(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short payload: %v", err)
	}
}

// FuzzFrame feeds arbitrary bytes to the frame reader and every message
// decoder: they must return errors, never panic, and a decoded message must
// encode back to the same payload.
func FuzzFrame(f *testing.F) {
	var buf bytes.Buffer
	rec := blockvol.Record{LSN: 1, Epoch: 1, Kind: blockvol.KindWrite, LBA: 0, Blocks: 1, Data: make([]byte, 512)}
	var hdr [recordFixed]byte
	writeFrame(&buf, typeRecord, encodeRecordHeader(hdr[:], 1, &rec), rec.Data)
	f.Add(append([]byte(nil), buf.Bytes()...))
	buf.Reset()
	writeFrame(&buf, typeHello, encodeHello(helloMsg{Epoch: 2, Volume: "v"}))
	writeFrame(&buf, typeBarrier, encodeBarrier(barrierMsg{Epoch: 2, LSN: 5}))
	f.Add(append([]byte(nil), buf.Bytes()...))
	buf.Reset()
	writeFrame(&buf, typeHello, encodeHello(helloMsg{Epoch: 2, Volume: "v", WantHeadEpoch: true}))
	writeFrame(&buf, typeHelloOK, encodeHelloOK(helloOKMsg{Epoch: 2, Head: 9, Durable: 8, HeadEpoch: 2, HeadEpochKnown: true, extended: true}))
	writeFrame(&buf, typeHelloOK, encodeHelloOK(helloOKMsg{Epoch: 2, Head: 9, Durable: 8, extended: true}))
	f.Add(append([]byte(nil), buf.Bytes()...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr := newFrameReader(bytes.NewReader(b))
		for i := 0; i < 16; i++ {
			typ, p, err := fr.next()
			if err != nil {
				return
			}
			var re []byte
			switch typ {
			case typeHello:
				if m, err := decodeHello(p); err == nil {
					re = encodeHello(m)
				}
			case typeHelloOK:
				if m, err := decodeHelloOK(p); err == nil {
					re = encodeHelloOK(m)
				}
			case typeRecord:
				if m, err := decodeRecord(p); err == nil {
					var h [recordFixed]byte
					re = append(encodeRecordHeader(h[:], m.Epoch, &m.Rec), m.Rec.Data...)
				}
			case typeAck:
				if a, err := decodeAck(p); err == nil {
					re = encodeAck(a)
				}
			case typeBarrier:
				if m, err := decodeBarrier(p); err == nil {
					re = encodeBarrier(m)
				}
			case typeBarrierAck:
				if m, err := decodeBarrierAck(p); err == nil {
					re = encodeBarrierAck(m)
				}
			case typeError:
				if m, err := decodeError(p); err == nil {
					re = encodeError(m)
				}
			}
			if re != nil && !bytes.Equal(re, p) {
				t.Fatalf("%v: decode/encode changed the payload:\n%x\n%x", typ, p, re)
			}
		}
	})
}

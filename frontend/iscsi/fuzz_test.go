package iscsi

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// FuzzPDUReader feeds arbitrary bytes to the PDU reader with and without
// digests and a segment limit: it must return errors, never panic or read
// past the announced lengths.
func FuzzPDUReader(f *testing.F) {
	var h bhs
	h[0] = opNopOut | flagImmediate
	h[1] = flagFinal
	h.putU32(16, 1)
	var buf bytes.Buffer
	w := newPDUWriter(&buf, 4096)
	w.write(&h, []byte("hello"))
	w.flush()
	f.Add(buf.Bytes(), false, false, 8192)
	buf.Reset()
	w.headerDigest, w.dataDigest = true, true
	w.write(&h, []byte("digested data"))
	w.flush()
	f.Add(buf.Bytes(), true, true, 8192)
	f.Add(make([]byte, 47), false, false, 0)
	f.Fuzz(func(t *testing.T, data []byte, hd, dd bool, limit int) {
		r := newPDUReader(bytes.NewReader(data), 4096)
		r.headerDigest, r.dataDigest = hd, dd
		if limit < 0 || limit > 1<<24 {
			limit = 0
		}
		r.maxRecvDSL = limit
		for n := 0; n < 64; n++ {
			if err := r.readHeader(); err != nil {
				return
			}
			if limit > 0 && r.hdr.dataLen() > limit {
				t.Fatalf("header beyond limit accepted")
			}
			d, err := r.readDataScratch()
			if err != nil {
				return
			}
			if len(d) != r.hdr.dataLen() {
				t.Fatalf("read %d bytes, header says %d", len(d), r.hdr.dataLen())
			}
		}
	})
}

// FuzzParseText checks that text parsing never panics and that what it
// accepts survives a round trip.
func FuzzParseText(f *testing.F) {
	f.Add([]byte("InitiatorName=iqn.2026-11.x:y\x00SessionType=Normal\x00"))
	f.Add([]byte("a=b\x00\x00c=\x00"))
	f.Add([]byte("=x\x00"))
	f.Add([]byte("CHAP_C=0x0102\x00CHAP_I=7\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		kvs, err := parseText(data)
		if err != nil {
			return
		}
		var tb textBuf
		for _, p := range kvs {
			tb.add(p.key, p.value)
		}
		again, err := parseText(tb.bytes())
		if err != nil || len(again) != len(kvs) {
			t.Fatalf("round trip: %v, %d vs %d pairs", err, len(again), len(kvs))
		}
		for _, p := range kvs {
			decodeCHAPBinary(p.value)
			parseNumber(p.value)
		}
	})
}

// FuzzConnection drives a whole target connection (login, then the
// full-feature phase) with arbitrary initiator bytes. The server must answer
// or close, never panic or hang, and Close must return.
func FuzzConnection(f *testing.F) {
	for _, seed := range connectionSeeds() {
		f.Add(seed)
	}
	srv := NewServer(Config{LoginTimeout: time.Second})
	lu := newMemLU(64)
	close(lu.block) // vendor opcode 0xC0 never blocks here
	if err := srv.AddTarget(Target{Name: IQN("fuzz"), LU: lu, CHAP: nil}); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { srv.Close() })
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() {
			srv.ServeConn(server)
			close(done)
		}()
		go io.Copy(io.Discard, client)
		client.SetWriteDeadline(time.Now().Add(2 * time.Second))
		client.Write(data)
		client.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("connection did not end after the initiator closed")
		}
	})
}

// connectionSeeds returns byte streams of valid logins followed by
// full-feature PDUs.
func connectionSeeds() [][]byte {
	var out [][]byte
	enc := func(pdus ...func(w *pduWriter)) []byte {
		var buf bytes.Buffer
		w := newPDUWriter(&buf, 1<<16)
		for _, p := range pdus {
			p(w)
		}
		w.flush()
		return buf.Bytes()
	}
	login := func(w *pduWriter) {
		var h bhs
		h[0] = opLoginReq | flagImmediate
		h[1] = 0x80 | 0x04 | 3 // T, CSG 1, NSG 3
		h[8] = 0x80
		h.putU32(24, 1)
		w.write(&h, defaultOpKeys().text("InitiatorName", testInitiatorName, "TargetName", IQN("fuzz")))
	}
	scsiCmd := func(cdb []byte, flags byte, edtl uint32, data []byte) func(w *pduWriter) {
		return func(w *pduWriter) {
			var h bhs
			h[0] = opSCSICmd
			h[1] = flagFinal | flags
			h.putU32(16, 7)
			h.putU32(20, edtl)
			h.putU32(24, 1)
			copy(h[32:], cdb)
			w.write(&h, data)
		}
	}
	out = append(out, enc(login))
	out = append(out, enc(login, scsiCmd(read10(0, 1), cmdFlagRead, 512, nil)))
	out = append(out, enc(login, scsiCmd(write10(0, 1), cmdFlagWrite, 512, make([]byte, 512))))
	out = append(out, enc(login, scsiCmd(write10(0, 2), cmdFlagWrite, 1024, make([]byte, 512)), func(w *pduWriter) {
		var h bhs
		h[0] = opDataOut
		h[1] = flagFinal
		h.putU32(16, 7)
		h.putU32(20, 1)
		h.putU32(40, 512)
		w.write(&h, make([]byte, 512))
	}))
	out = append(out, enc(login, func(w *pduWriter) {
		var h bhs
		h[0] = opTextReq | flagImmediate
		h[1] = flagFinal
		h.putU32(20, reservedTag)
		w.write(&h, kvText("SendTargets", "All"))
	}, func(w *pduWriter) {
		var h bhs
		h[0] = opTaskMgmtReq | flagImmediate
		h[1] = flagFinal | tmfLUNReset
		w.write(&h, nil)
	}, func(w *pduWriter) {
		var h bhs
		h[0] = opLogoutReq | flagImmediate
		h[1] = flagFinal
		w.write(&h, nil)
	}))
	out = append(out, enc(func(w *pduWriter) {
		var h bhs
		h[0] = opLoginReq | flagImmediate
		h[1] = 0x81
		w.write(&h, kvText("InitiatorName", testInitiatorName, "SessionType", "Discovery", "AuthMethod", "CHAP,None"))
	}))
	return out
}

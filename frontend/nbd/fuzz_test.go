package nbd

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// fuzzSessions are client byte streams (everything after the server
// greeting) used as seeds for FuzzSession.
func fuzzSessions() [][]byte {
	flags := binary.BigEndian.AppendUint32(nil, clientFixedNewstyle|clientNoZeroes)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	requests := cat(
		requestBytes(cmdFlagFUA, cmdWrite, 1, 512, 1024, bytes.Repeat([]byte{0xaa}, 1024)),
		requestBytes(0, cmdRead, 2, 0, 2048, nil),
		requestBytes(0, cmdFlush, 3, 0, 0, nil),
		requestBytes(0, cmdTrim, 4, 512, 512, nil),
		requestBytes(cmdFlagNoHole, cmdWriteZeroes, 5, 1024, 512, nil),
		requestBytes(0, cmdRead, 6, 1<<20, 512, nil),
		requestBytes(0, cmdWrite, 7, 0, 70000, nil),
		requestBytes(0, 42, 8, 0, 0, nil),
		requestBytes(0, cmdDisc, 9, 0, 0, nil),
	)
	return [][]byte{
		cat(flags, optionBytes(optGo, infoData("d", infoBlockSize)), requests),
		cat(flags, optionBytes(optStructuredReply, nil), optionBytes(optGo, infoData("")), requests),
		cat(flags, optionBytes(optExportName, []byte("d")), requests),
		cat(flags, optionBytes(optList, nil), optionBytes(optInfo, infoData("d", infoName, infoDescription)),
			optionBytes(optInfo, infoData("missing")), optionBytes(99, []byte("x")), optionBytes(optAbort, nil)),
		cat(flags, optionBytes(optGo, []byte{0, 0, 1, 0, 'd'})),
		cat(binary.BigEndian.AppendUint32(nil, 0), optionBytes(optList, nil)),
		cat(flags, optionBytes(optGo, infoData("d")), requestBytes(0, cmdWrite, 1, 0, 4096, nil)[:20]),
		cat(flags, optionBytes(optListMetaContext, metaData("d")), optionBytes(optStructuredReply, nil),
			optionBytes(optSetMetaContext, metaData("d", metaBaseAllocation)), optionBytes(optGo, infoData("d")),
			requestBytes(0, cmdBlockStatus, 1, 0, 4096, nil), requestBytes(cmdFlagReqOne, cmdBlockStatus, 2, 1<<20, 512, nil),
			requestBytes(0, cmdRead, 3, 512, 0, nil)),
	}
}

// FuzzSession feeds arbitrary client bytes to a real server connection: it
// must never panic, never hang, and always end the connection.
func FuzzSession(f *testing.F) {
	for _, s := range fuzzSessions() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s := NewServer(Options{MaxPayload: 64 << 10, MaxInFlightBytes: 128 << 10, Workers: 2, HandshakeTimeout: 5 * time.Second})
		defer s.Close()
		for _, name := range []string{"", "d"} {
			if err := s.AddExport(name, "fuzz", newMem(t, 1<<20, 512)); err != nil {
				t.Fatal(err)
			}
		}
		srvSide, cliSide := net.Pipe()
		served := make(chan struct{})
		go func() {
			s.ServeConn(srvSide)
			close(served)
		}()
		drained := make(chan struct{})
		go func() {
			io.Copy(io.Discard, cliSide)
			close(drained)
		}()
		cliSide.SetWriteDeadline(time.Now().Add(5 * time.Second))
		cliSide.Write(data)
		cliSide.Close()
		select {
		case <-served:
		case <-time.After(10 * time.Second):
			t.Fatalf("connection did not end after the client hung up")
		}
		<-drained
	})
}

// FuzzParseInfoRequest checks that NBD_OPT_GO/INFO data either fails to
// parse or round-trips exactly.
func FuzzParseInfoRequest(f *testing.F) {
	f.Add(infoData("d", infoBlockSize))
	f.Add(infoData("", infoName, infoDescription, infoBlockSize, infoExport))
	f.Add([]byte{0, 0, 0, 9, 'x'})
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := parseInfoRequest(data)
		if err != nil {
			return
		}
		if again := infoData(r.name, r.infos...); !bytes.Equal(again, data) {
			t.Fatalf("parse(%x) = %+v re-encodes as %x", data, r, again)
		}
	})
}

// FuzzRequestHeader checks request header decoding against the encoder.
func FuzzRequestHeader(f *testing.F) {
	f.Add(requestBytes(cmdFlagFUA, cmdWrite, 1, 4096, 512, nil))
	f.Add(make([]byte, requestHeaderLen))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := parseRequestHeader(data)
		if err != nil {
			return
		}
		if again := requestBytes(h.flags, h.typ, h.cookie, h.offset, h.length, nil); !bytes.Equal(again, data[:requestHeaderLen]) {
			t.Fatalf("parse(%x) = %+v re-encodes as %x", data, h, again)
		}
	})
}

// FuzzParseMetaContextRequest checks that meta context option data either
// fails to parse or round-trips exactly.
func FuzzParseMetaContextRequest(f *testing.F) {
	f.Add(metaData("d", metaBaseAllocation))
	f.Add(metaData("", "base:", "x"))
	f.Add([]byte{0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := parseMetaContextRequest(data)
		if err != nil {
			return
		}
		if again := metaData(r.name, r.queries...); !bytes.Equal(again, data) {
			t.Fatalf("parse(%x) = %+v re-encodes as %x", data, r, again)
		}
	})
}

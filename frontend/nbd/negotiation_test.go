package nbd

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

func TestHandshakeRejectsBadClientFlags(t *testing.T) {
	s, addr := startServer(t, Options{})
	if err := s.AddExport("d", "", newMem(t, 1<<20, 512)); err != nil {
		t.Fatal(err)
	}
	for _, flags := range []uint32{0, clientNoZeroes, 1 << 5, clientFixedNewstyle | 1<<31} {
		c := dialRaw(t, addr)
		c.write(binary.BigEndian.AppendUint32(nil, flags))
		c.write(optionBytes(optList, nil))
		c.expectClosed()
	}
	// The server is still healthy.
	c := dialExport(t, addr, "d", false)
	c.do(0, cmdRead, 0, 512, nil, 0)
}

func TestHandshakeMalformed(t *testing.T) {
	s, addr := startServer(t, Options{})
	if err := s.AddExport("d", "", newMem(t, 1<<20, 512)); err != nil {
		t.Fatal(err)
	}
	t.Run("bad option magic", func(t *testing.T) {
		c := dialOpts(t, addr)
		b := optionBytes(optList, nil)
		b[0] ^= 0xff
		c.write(b)
		c.expectClosed()
	})
	t.Run("garbage", func(t *testing.T) {
		c := dialRaw(t, addr)
		c.write(bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 64))
		c.expectClosed()
	})
	t.Run("truncated option", func(t *testing.T) {
		c := dialOpts(t, addr)
		c.write(optionBytes(optGo, infoData("d"))[:20])
		c.nc.(*net.TCPConn).CloseWrite()
		c.expectClosed()
	})
	t.Run("name length beyond data", func(t *testing.T) {
		c := dialOpts(t, addr)
		data := infoData("d")
		binary.BigEndian.PutUint32(data, 1000)
		c.option(optGo, data)
		if _, typ, _ := c.optReply(); typ != repErrInvalid {
			t.Fatalf("GO with bad name length: reply %#x, want NBD_REP_ERR_INVALID", typ)
		}
		c.option(optInfo, []byte{0, 0})
		if _, typ, _ := c.optReply(); typ != repErrInvalid {
			t.Fatalf("INFO with 2 bytes: reply %#x, want NBD_REP_ERR_INVALID", typ)
		}
		c.option(optInfo, append(infoData("d", infoName), 0))
		if _, typ, _ := c.optReply(); typ != repErrInvalid {
			t.Fatalf("INFO with trailing byte: reply %#x, want NBD_REP_ERR_INVALID", typ)
		}
		// Negotiation goes on after an invalid option.
		c.option(optGo, infoData("d"))
		for _, typ, _ := c.optReply(); typ != repAck; _, typ, _ = c.optReply() {
			if typ != repInfo {
				t.Fatalf("GO reply %#x", typ)
			}
		}
	})
	t.Run("oversized option", func(t *testing.T) {
		c := dialOpts(t, addr)
		c.option(99, make([]byte, maxOptionData+1))
		if opt, typ, _ := c.optReply(); opt != 99 || typ != repErrTooBig {
			t.Fatalf("oversized option: reply %d %#x, want NBD_REP_ERR_TOO_BIG", opt, typ)
		}
		c.option(optList, nil)
		if _, typ, _ := c.optReply(); typ != repServer {
			t.Fatalf("LIST after oversized option: reply %#x", typ)
		}
		// Declared larger than the server is willing to skip: hang up.
		h := optionBytes(optList, nil)
		binary.BigEndian.PutUint32(h[12:], maxOptionSkip+1)
		c = dialOpts(t, addr)
		c.write(h)
		c.expectClosed()
	})
}

func TestHandshakeTimeout(t *testing.T) {
	_, addr := startServer(t, Options{HandshakeTimeout: 200 * time.Millisecond})
	c := dialRaw(t, addr)
	start := time.Now()
	c.expectClosed()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("idle client closed after %v", d)
	}
}

func TestUnknownOptions(t *testing.T) {
	s, addr := startServer(t, Options{})
	if err := s.AddExport("d", "", newMem(t, 1<<20, 512)); err != nil {
		t.Fatal(err)
	}
	c := dialOpts(t, addr)
	for _, opt := range []uint32{optStartTLS, optExtendedHeaders, 4, 1000, 1 << 31} {
		c.option(opt, []byte("xyz"))
		gotOpt, typ, msg := c.optReply()
		if gotOpt != opt || typ != repErrUnsup {
			t.Fatalf("option %d: reply for %d type %#x (%q), want NBD_REP_ERR_UNSUP", opt, gotOpt, typ, msg)
		}
	}
	c.option(optGo, infoData("d"))
	for _, typ, _ := c.optReply(); typ != repAck; _, typ, _ = c.optReply() {
		if typ != repInfo {
			t.Fatalf("GO reply %#x", typ)
		}
	}
	c.do(0, cmdRead, 0, 512, nil, 0)
}

func TestUnknownExport(t *testing.T) {
	s, addr := startServer(t, Options{})
	if err := s.AddExport("d", "", newMem(t, 1<<20, 512)); err != nil {
		t.Fatal(err)
	}
	c := dialOpts(t, addr)
	for _, opt := range []uint32{optInfo, optGo} {
		c.option(opt, infoData("nope"))
		if o, typ, _ := c.optReply(); o != opt || typ != repErrUnknown {
			t.Fatalf("option %d on unknown export: reply %d %#x, want NBD_REP_ERR_UNKNOWN", opt, o, typ)
		}
	}
	// NBD_OPT_EXPORT_NAME has no error reply: the server hangs up.
	c.option(optExportName, []byte("nope"))
	c.expectClosed()
}

func TestOptInfo(t *testing.T) {
	s, addr := startServer(t, Options{MaxPayload: 1 << 20, PreferredBlockSize: 65536})
	if err := s.AddExport("disk", "a description", newMem(t, 8<<20, 4096)); err != nil {
		t.Fatal(err)
	}
	c := dialOpts(t, addr)
	c.option(optInfo, infoData("disk", infoName, infoDescription, infoBlockSize))
	got := map[uint16][]byte{}
	for {
		opt, typ, data := c.optReply()
		if opt != optInfo {
			t.Fatalf("reply for option %d", opt)
		}
		if typ == repAck {
			break
		}
		if typ != repInfo || len(data) < 2 {
			t.Fatalf("INFO reply %#x %q", typ, data)
		}
		got[binary.BigEndian.Uint16(data)] = data[2:]
	}
	exp := got[infoExport]
	if len(exp) != 10 || binary.BigEndian.Uint64(exp) != 8<<20 {
		t.Fatalf("NBD_INFO_EXPORT %x", exp)
	}
	flags := binary.BigEndian.Uint16(exp[8:])
	want := tflagHasFlags | tflagSendFlush | tflagSendFUA | tflagSendTrim | tflagSendWriteZeros | tflagCanMultiConn | tflagSendFastZero
	if flags != want {
		t.Fatalf("transmission flags %#x, want %#x", flags, want)
	}
	if string(got[infoName]) != "disk" || string(got[infoDescription]) != "a description" {
		t.Fatalf("name %q description %q", got[infoName], got[infoDescription])
	}
	bs := got[infoBlockSize]
	if len(bs) != 12 || binary.BigEndian.Uint32(bs) != 4096 || binary.BigEndian.Uint32(bs[4:]) != 65536 || binary.BigEndian.Uint32(bs[8:]) != 1<<20 {
		t.Fatalf("block sizes %x", bs)
	}
	// INFO leaves negotiation open; structured replies add SEND_DF.
	c.option(optStructuredReply, nil)
	if _, typ, _ := c.optReply(); typ != repAck {
		t.Fatalf("STRUCTURED_REPLY reply %#x", typ)
	}
	c.option(optGo, infoData("disk"))
	_, typ, data := c.optReply()
	if typ != repInfo || binary.BigEndian.Uint16(data) != infoExport || binary.BigEndian.Uint16(data[10:])&tflagSendDF == 0 {
		t.Fatalf("GO after structured replies: %#x %x", typ, data)
	}
}

func TestOptList(t *testing.T) {
	s, addr := startServer(t, Options{})
	for _, n := range []string{"b", "a"} {
		if err := s.AddExport(n, "desc "+n, newMem(t, 1<<20, 512)); err != nil {
			t.Fatal(err)
		}
	}
	c := dialOpts(t, addr)
	c.option(optList, []byte{1})
	if _, typ, _ := c.optReply(); typ != repErrInvalid {
		t.Fatalf("LIST with data: %#x, want NBD_REP_ERR_INVALID", typ)
	}
	c.option(optList, nil)
	var names []string
	for {
		_, typ, data := c.optReply()
		if typ == repAck {
			break
		}
		if typ != repServer {
			t.Fatalf("LIST reply %#x", typ)
		}
		n := binary.BigEndian.Uint32(data)
		names = append(names, string(data[4:4+n])+"|"+string(data[4+n:]))
	}
	if len(names) != 2 || names[0] != "a|desc a" || names[1] != "b|desc b" {
		t.Fatalf("LIST = %q", names)
	}
}

func TestOptAbort(t *testing.T) {
	_, addr := startServer(t, Options{})
	c := dialOpts(t, addr)
	c.option(optAbort, nil)
	if opt, typ, _ := c.optReply(); opt != optAbort || typ != repAck {
		t.Fatalf("ABORT reply %d %#x", opt, typ)
	}
	c.expectClosed()
}

func TestExportName(t *testing.T) {
	s, addr := startServer(t, Options{})
	m := newMem(t, 1<<20, 512)
	if err := m.WriteAt(bytes.Repeat([]byte{7}, 512), 512, false); err != nil {
		t.Fatal(err)
	}
	if err := s.AddExport("legacy", "", m); err != nil {
		t.Fatal(err)
	}
	for _, noZeroes := range []bool{false, true} {
		c := dialRaw(t, addr)
		flags := clientFixedNewstyle
		want := 10 + 124
		if noZeroes {
			flags |= clientNoZeroes
			want = 10
		}
		c.write(binary.BigEndian.AppendUint32(nil, flags))
		c.option(optExportName, []byte("legacy"))
		b := make([]byte, want)
		if _, err := io.ReadFull(c.br, b); err != nil {
			t.Fatal(err)
		}
		if binary.BigEndian.Uint64(b) != 1<<20 || binary.BigEndian.Uint16(b[8:])&tflagSendFlush == 0 {
			t.Fatalf("EXPORT_NAME reply %x", b[:10])
		}
		if !bytes.Equal(b[10:], make([]byte, want-10)) {
			t.Fatalf("EXPORT_NAME padding not zero")
		}
		r := c.do(0, cmdRead, 512, 512, nil, 0)
		if !bytes.Equal(r.data, bytes.Repeat([]byte{7}, 512)) {
			t.Fatalf("read after EXPORT_NAME returned wrong data")
		}
	}
}

func TestParseInfoRequest(t *testing.T) {
	good := infoData("vol", infoBlockSize, infoName)
	r, err := parseInfoRequest(good)
	if err != nil || r.name != "vol" || len(r.infos) != 2 || !r.wants(infoName) || r.wants(infoDescription) {
		t.Fatalf("parseInfoRequest(%x) = %+v, %v", good, r, err)
	}
	bad := [][]byte{
		nil,
		{0, 0, 0, 0, 0},
		good[:len(good)-1],
		append(append([]byte{}, good...), 0),
		binary.BigEndian.AppendUint32(nil, 0xffffffff),
		append(binary.BigEndian.AppendUint32(nil, maxNameLen+1), make([]byte, maxNameLen+3)...),
	}
	for _, b := range bad {
		if _, err := parseInfoRequest(b); err == nil {
			t.Errorf("parseInfoRequest(%x) accepted", b)
		}
	}
}

func metaData(name string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// metaReplies reads option replies up to the ack and returns the contexts
// offered, or the error reply type.
func (c *testClient) metaReplies(opt uint32) ([]string, uint32) {
	c.t.Helper()
	var got []string
	for {
		o, typ, data := c.optReply()
		if o != opt {
			c.t.Fatalf("reply for option %d, want %d", o, opt)
		}
		switch typ {
		case repAck:
			return got, 0
		case repMetaContext:
			if len(data) < 5 || binary.BigEndian.Uint32(data) != metaBaseAllocationID {
				c.t.Fatalf("META_CONTEXT reply %x", data)
			}
			got = append(got, string(data[4:]))
		default:
			return got, typ
		}
	}
}

func TestMetaContext(t *testing.T) {
	s, addr := startServer(t, Options{})
	for _, n := range []string{"d", "other"} {
		if err := s.AddExport(n, "", newMem(t, 1<<20, 4096)); err != nil {
			t.Fatal(err)
		}
	}
	c := dialOpts(t, addr)
	c.option(optListMetaContext, metaData("d"))
	if got, e := c.metaReplies(optListMetaContext); e != 0 || len(got) != 1 || got[0] != metaBaseAllocation {
		t.Fatalf("LIST_META_CONTEXT = %q, %#x", got, e)
	}
	c.option(optListMetaContext, metaData("d", "base:", "qemu:dirty-bitmap:x"))
	if got, e := c.metaReplies(optListMetaContext); e != 0 || len(got) != 1 {
		t.Fatalf("LIST_META_CONTEXT base: = %q, %#x", got, e)
	}
	c.option(optSetMetaContext, metaData("d", metaBaseAllocation))
	if _, e := c.metaReplies(optSetMetaContext); e != repErrInvalid {
		t.Fatalf("SET_META_CONTEXT before structured replies: %#x, want NBD_REP_ERR_INVALID", e)
	}
	c.option(optStructuredReply, nil)
	if _, typ, _ := c.optReply(); typ != repAck {
		t.Fatal("structured replies refused")
	}
	c.structured = true
	c.option(optSetMetaContext, metaData("nope", metaBaseAllocation))
	if _, e := c.metaReplies(optSetMetaContext); e != repErrUnknown {
		t.Fatalf("SET_META_CONTEXT on unknown export: %#x", e)
	}
	c.option(optSetMetaContext, metaData("d", metaBaseAllocation)[:9])
	if _, e := c.metaReplies(optSetMetaContext); e != repErrInvalid {
		t.Fatalf("truncated SET_META_CONTEXT: %#x", e)
	}
	c.option(optSetMetaContext, metaData("d", "qemu:allocation-depth"))
	if got, e := c.metaReplies(optSetMetaContext); e != 0 || len(got) != 0 {
		t.Fatalf("SET_META_CONTEXT of an unknown context = %q, %#x", got, e)
	}
	c.option(optSetMetaContext, metaData("d", metaBaseAllocation))
	if got, e := c.metaReplies(optSetMetaContext); e != 0 || len(got) != 1 {
		t.Fatalf("SET_META_CONTEXT base:allocation = %q, %#x", got, e)
	}
	c.option(optGo, infoData("d"))
	for _, typ, _ := c.optReply(); typ != repAck; _, typ, _ = c.optReply() {
	}
	r := c.do(0, cmdBlockStatus, 8192, 16384, nil, 0)
	if len(r.data) != 12 || binary.BigEndian.Uint32(r.data) != metaBaseAllocationID ||
		binary.BigEndian.Uint32(r.data[4:]) != 16384 || binary.BigEndian.Uint32(r.data[8:]) != 0 {
		t.Fatalf("BLOCK_STATUS chunk %x", r.data)
	}
	c.do(cmdFlagReqOne, cmdBlockStatus, 0, 4096, nil, 0)
	c.do(0, cmdBlockStatus, 1<<20, 4096, nil, errnoInval)
	c.do(0, cmdBlockStatus, 0, 0, nil, errnoInval)
	c.do(cmdFlagFUA, cmdBlockStatus, 0, 4096, nil, errnoInval)

	// Contexts chosen for one export do not apply to another.
	c = dialExport(t, addr, "other", true)
	c2 := dialOpts(t, addr)
	c2.option(optStructuredReply, nil)
	c2.optReply()
	c2.structured = true
	c2.option(optSetMetaContext, metaData("d", metaBaseAllocation))
	if got, _ := c2.metaReplies(optSetMetaContext); len(got) != 1 {
		t.Fatal("SET_META_CONTEXT refused")
	}
	c2.option(optGo, infoData("other"))
	for _, typ, _ := c2.optReply(); typ != repAck; _, typ, _ = c2.optReply() {
	}
	c2.do(0, cmdBlockStatus, 0, 4096, nil, errnoInval)
}

func TestParseMetaContextRequest(t *testing.T) {
	good := metaData("vol", "base:allocation", "x")
	r, err := parseMetaContextRequest(good)
	if err != nil || r.name != "vol" || len(r.queries) != 2 || r.queries[1] != "x" {
		t.Fatalf("parse = %+v, %v", r, err)
	}
	for _, b := range [][]byte{nil, good[:len(good)-1], append(append([]byte{}, good...), 0), metaData("v")[:7],
		append(metaData("v"), 0xff, 0xff, 0xff, 0xff)} {
		if _, err := parseMetaContextRequest(b); err == nil {
			t.Errorf("parseMetaContextRequest(%x) accepted", b)
		}
	}
}

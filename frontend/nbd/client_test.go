package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// testClient is a minimal hand-written NBD client that lets tests send
// well-formed and malformed bytes and inspect every reply.
type testClient struct {
	t          testing.TB
	nc         net.Conn
	br         *bufio.Reader
	structured bool
	readLens   map[uint64]int // outstanding simple-reply reads: cookie → length
}

// dialRaw connects and checks the server greeting; nothing is sent.
func dialRaw(t testing.TB, addr string) *testClient {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	if err := nc.SetDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	c := &testClient{t: t, nc: nc, br: bufio.NewReader(nc), readLens: map[uint64]int{}}
	var hello [18]byte
	if _, err := io.ReadFull(c.br, hello[:]); err != nil {
		t.Fatalf("read greeting: %v", err)
	}
	if m := binary.BigEndian.Uint64(hello[0:]); m != magicNBD {
		t.Fatalf("greeting magic %#x", m)
	}
	if m := binary.BigEndian.Uint64(hello[8:]); m != magicOption {
		t.Fatalf("greeting option magic %#x", m)
	}
	if f := binary.BigEndian.Uint16(hello[16:]); f != flagFixedNewstyle|flagNoZeroes {
		t.Fatalf("handshake flags %#x", f)
	}
	return c
}

// dialOpts connects and sends the usual client flags.
func dialOpts(t testing.TB, addr string) *testClient {
	t.Helper()
	c := dialRaw(t, addr)
	c.write(binary.BigEndian.AppendUint32(nil, clientFixedNewstyle|clientNoZeroes))
	return c
}

// dialExport connects and enters transmission on name with NBD_OPT_GO.
func dialExport(t testing.TB, addr, name string, structured bool) *testClient {
	t.Helper()
	c := dialOpts(t, addr)
	if structured {
		c.option(optStructuredReply, nil)
		if _, typ, _ := c.optReply(); typ != repAck {
			t.Fatalf("NBD_OPT_STRUCTURED_REPLY reply %#x", typ)
		}
		c.structured = true
	}
	c.option(optGo, infoData(name))
	for {
		_, typ, data := c.optReply()
		if typ == repAck {
			return c
		}
		if typ != repInfo {
			t.Fatalf("NBD_OPT_GO %q: reply %#x %q", name, typ, data)
		}
	}
}

func (c *testClient) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func infoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

func optionBytes(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicOption)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func (c *testClient) option(opt uint32, data []byte) {
	c.t.Helper()
	c.write(optionBytes(opt, data))
}

// optReply reads one option reply.
func (c *testClient) optReply() (opt, typ uint32, data []byte) {
	c.t.Helper()
	var h [20]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		c.t.Fatalf("read option reply: %v", err)
	}
	if m := binary.BigEndian.Uint64(h[0:]); m != magicOptReply {
		c.t.Fatalf("option reply magic %#x", m)
	}
	n := binary.BigEndian.Uint32(h[16:])
	if n > 1<<20 {
		c.t.Fatalf("option reply of %d bytes", n)
	}
	data = make([]byte, n)
	if _, err := io.ReadFull(c.br, data); err != nil {
		c.t.Fatalf("read option reply data: %v", err)
	}
	return binary.BigEndian.Uint32(h[8:]), binary.BigEndian.Uint32(h[12:]), data
}

// expectClosed checks that the server closes the connection (after
// possibly sending a few more bytes).
func (c *testClient) expectClosed() {
	c.t.Helper()
	if err := c.nc.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		c.t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, c.br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatalf("server did not close the connection (read %d bytes)", n)
	}
}

func requestBytes(flags, typ uint16, cookie, offset uint64, length uint32, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(make([]byte, 0, requestHeaderLen+len(payload)), magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, offset)
	b = binary.BigEndian.AppendUint32(b, length)
	return append(b, payload...)
}

// send sends one request; for reads it remembers the length so a simple
// reply can be parsed.
func (c *testClient) send(flags, typ uint16, cookie, offset uint64, length uint32, payload []byte) {
	c.t.Helper()
	if typ == cmdRead {
		c.readLens[cookie] = int(length)
	}
	c.write(requestBytes(flags, typ, cookie, offset, length, payload))
}

type testReply struct {
	cookie uint64
	errno  uint32
	data   []byte
	offset uint64 // structured data chunk offset
	msg    string // structured error message
}

// reply reads one reply (simple, or one structured chunk that must be the
// last of its request).
func (c *testClient) reply() (testReply, error) {
	var m [4]byte
	if _, err := io.ReadFull(c.br, m[:]); err != nil {
		return testReply{}, err
	}
	switch binary.BigEndian.Uint32(m[:]) {
	case magicSimple:
		var h [12]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return testReply{}, err
		}
		r := testReply{errno: binary.BigEndian.Uint32(h[0:]), cookie: binary.BigEndian.Uint64(h[4:])}
		if n, ok := c.readLens[r.cookie]; ok {
			delete(c.readLens, r.cookie)
			if c.structured {
				return r, fmt.Errorf("simple reply to a READ after structured replies were negotiated")
			}
			if r.errno == 0 {
				r.data = make([]byte, n)
				if _, err := io.ReadFull(c.br, r.data); err != nil {
					return r, err
				}
			}
		}
		return r, nil
	case magicStructured:
		var h [16]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return testReply{}, err
		}
		flags := binary.BigEndian.Uint16(h[0:])
		typ := binary.BigEndian.Uint16(h[2:])
		r := testReply{cookie: binary.BigEndian.Uint64(h[4:])}
		delete(c.readLens, r.cookie)
		n := binary.BigEndian.Uint32(h[12:])
		if flags != replyFlagDone {
			return r, fmt.Errorf("structured chunk flags %#x, want DONE", flags)
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(c.br, payload); err != nil {
			return r, err
		}
		switch typ {
		case replyTypeNone:
			if n != 0 {
				return r, fmt.Errorf("NONE chunk of %d bytes", n)
			}
		case replyTypeOffsetData:
			if n < 9 {
				return r, fmt.Errorf("data chunk of %d bytes carries no data", n)
			}
			if n < 8 {
				return r, fmt.Errorf("data chunk of %d bytes", n)
			}
			r.offset = binary.BigEndian.Uint64(payload)
			r.data = payload[8:]
		case replyTypeBlockStat:
			r.data = payload
		case replyTypeError:
			if n < 6 {
				return r, fmt.Errorf("error chunk of %d bytes", n)
			}
			r.errno = binary.BigEndian.Uint32(payload)
			ml := int(binary.BigEndian.Uint16(payload[4:]))
			if 6+ml > int(n) {
				return r, fmt.Errorf("error message of %d bytes in chunk of %d", ml, n)
			}
			r.msg = string(payload[6 : 6+ml])
		default:
			return r, fmt.Errorf("unexpected chunk type %d", typ)
		}
		return r, nil
	default:
		return testReply{}, fmt.Errorf("bad reply magic %x", m)
	}
}

// mustReply reads one reply and checks its cookie and errno.
func (c *testClient) mustReply(cookie uint64, errno uint32) testReply {
	c.t.Helper()
	r, err := c.reply()
	if err != nil {
		c.t.Fatalf("reply to %d: %v", cookie, err)
	}
	if r.cookie != cookie || r.errno != errno {
		c.t.Fatalf("reply cookie %d errno %d (%q), want cookie %d errno %d", r.cookie, r.errno, r.msg, cookie, errno)
	}
	return r
}

// do sends one request and waits for its reply.
func (c *testClient) do(flags, typ uint16, offset uint64, length uint32, payload []byte, errno uint32) testReply {
	c.t.Helper()
	c.send(flags, typ, 77, offset, length, payload)
	return c.mustReply(77, errno)
}

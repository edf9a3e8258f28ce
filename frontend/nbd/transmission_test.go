package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockdev"
)

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func TestCommands(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			s, addr := startServer(t, Options{})
			m := newMem(t, 1<<20, 4096)
			dev := &recordingDevice{Device: m}
			if err := s.AddExport("d", "", dev); err != nil {
				t.Fatal(err)
			}
			c := dialExport(t, addr, "d", structured)
			w := pattern(16384, 3)
			c.do(0, cmdWrite, 8192, uint32(len(w)), w, 0)
			r := c.do(0, cmdRead, 8192, uint32(len(w)), nil, 0)
			if !bytes.Equal(r.data, w) {
				t.Fatalf("read back differs")
			}
			if structured && r.offset != 8192 {
				t.Fatalf("structured data chunk offset %d", r.offset)
			}
			// Zero-length requests succeed and carry no data.
			if r := c.do(0, cmdRead, 4096, 0, nil, 0); len(r.data) != 0 {
				t.Fatalf("zero-length read returned %d bytes", len(r.data))
			}
			c.do(0, cmdWrite, 4096, 0, nil, 0)
			c.do(cmdFlagFUA, cmdWrite, 0, 4096, w[:4096], 0)
			c.do(0, cmdFlush, 0, 0, nil, 0)
			if flushes, fuas := m.Counts(); flushes != 1 || fuas != 1 {
				t.Fatalf("device saw %d flushes %d FUA writes, want 1 and 1", flushes, fuas)
			}
			// TRIM zeroes one block; FUA on it flushes.
			c.do(cmdFlagFUA, cmdTrim, 8192, 4096, nil, 0)
			if flushes, _ := m.Counts(); flushes != 2 {
				t.Fatalf("TRIM+FUA: %d flushes, want 2", flushes)
			}
			r = c.do(0, cmdRead, 8192, 8192, nil, 0)
			if !bytes.Equal(r.data[:4096], make([]byte, 4096)) || !bytes.Equal(r.data[4096:], w[4096:8192]) {
				t.Fatalf("TRIM did not zero exactly its range")
			}
			// WRITE_ZEROES: plain → trim; NO_HOLE → WriteZeroes (with FUA passed on);
			// NO_HOLE|FAST_ZERO → ENOTSUP; FAST_ZERO alone is a fast trim.
			c.do(0, cmdWriteZeroes, 12288, 4096, nil, 0)
			if dev.trims.Load() != 2 || dev.zeroes.Load() != 0 {
				t.Fatalf("plain WRITE_ZEROES: trims %d zeroes %d", dev.trims.Load(), dev.zeroes.Load())
			}
			c.do(cmdFlagNoHole|cmdFlagFUA, cmdWriteZeroes, 16384, 8192, nil, 0)
			if dev.zeroes.Load() != 1 || dev.zeroFUAs.Load() != 1 {
				t.Fatalf("NO_HOLE WRITE_ZEROES: zeroes %d (fua %d)", dev.zeroes.Load(), dev.zeroFUAs.Load())
			}
			c.do(cmdFlagNoHole|cmdFlagFastZero, cmdWriteZeroes, 0, 4096, nil, errnoNotSup)
			c.do(cmdFlagFastZero, cmdWriteZeroes, 0, 4096, nil, 0)
			r = c.do(0, cmdRead, 0, 24576, nil, 0)
			if !bytes.Equal(r.data, make([]byte, 24576)) {
				t.Fatalf("zeroed ranges do not read as zeros")
			}
			// DISC: the server closes after answering nothing more.
			c.send(0, cmdDisc, 1, 0, 0, nil)
			c.expectClosed()
		})
	}
}

func TestRequestErrors(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			s, addr := startServer(t, Options{})
			m := newMem(t, 1<<20, 4096)
			if err := s.AddExport("d", "", m); err != nil {
				t.Fatal(err)
			}
			c := dialExport(t, addr, "d", structured)
			end := uint64(1 << 20)
			cases := []struct {
				name   string
				flags  uint16
				typ    uint16
				off    uint64
				n      uint32
				errno  uint32
				inject []byte
			}{
				{"read past end", 0, cmdRead, end, 4096, errnoInval, nil},
				{"read straddling end", 0, cmdRead, end - 4096, 8192, errnoInval, nil},
				{"read huge offset", 0, cmdRead, 1 << 63, 4096, errnoInval, nil},
				{"read wrapping offset", 0, cmdRead, ^uint64(0) - 100, 4096, errnoInval, nil},
				{"read unaligned offset", 0, cmdRead, 512, 4096, errnoInval, nil},
				{"read unaligned length", 0, cmdRead, 0, 100, errnoInval, nil},
				{"write past end", 0, cmdWrite, end, 4096, errnoNoSpc, make([]byte, 4096)},
				{"write unaligned", 0, cmdWrite, 100, 4096, errnoInval, make([]byte, 4096)},
				{"trim past end", 0, cmdTrim, end, 4096, errnoNoSpc, nil},
				{"zeroes past end", cmdFlagNoHole, cmdWriteZeroes, 0, 1<<20 + 4096, errnoNoSpc, nil},
				{"unknown command", 0, 99, 0, 0, errnoInval, nil},
				{"cache not offered", 0, cmdCache, 0, 4096, errnoInval, nil},
				{"block status not negotiated", 0, cmdBlockStatus, 0, 4096, errnoInval, nil},
				{"unknown read flag", 1 << 9, cmdRead, 0, 4096, errnoInval, nil},
				{"NO_HOLE on write", cmdFlagNoHole, cmdWrite, 0, 4096, errnoInval, make([]byte, 4096)},
				{"REQ_ONE on trim", cmdFlagReqOne, cmdTrim, 0, 4096, errnoInval, nil},
			}
			for i, tc := range cases {
				cookie := uint64(1000 + i)
				c.send(tc.flags, tc.typ, cookie, tc.off, tc.n, tc.inject)
				r, err := c.reply()
				if err != nil {
					t.Fatalf("%s: %v", tc.name, err)
				}
				if r.cookie != cookie || r.errno != tc.errno {
					t.Fatalf("%s: reply cookie %d errno %d, want %d errno %d", tc.name, r.cookie, r.errno, cookie, tc.errno)
				}
				if structured && tc.typ == cmdRead && r.msg == "" {
					t.Errorf("%s: structured error chunk carries no message", tc.name)
				}
			}
			// The connection is still good and nothing was written.
			r := c.do(0, cmdRead, 0, 4096, nil, 0)
			if !bytes.Equal(r.data, make([]byte, 4096)) {
				t.Fatalf("a rejected request changed data")
			}
		})
	}
}

func TestReadOnlyDevice(t *testing.T) {
	s, addr := startServer(t, Options{})
	m := newMem(t, 1<<20, 512)
	m.SetReadOnly(true)
	if err := s.AddExport("ro", "", m); err != nil {
		t.Fatal(err)
	}
	c := dialExport(t, addr, "ro", false)
	c.do(0, cmdWrite, 0, 512, make([]byte, 512), errnoPerm)
	c.do(cmdFlagFUA, cmdWrite, 0, 512, make([]byte, 512), errnoPerm)
	c.do(0, cmdTrim, 0, 512, nil, errnoPerm)
	c.do(cmdFlagNoHole, cmdWriteZeroes, 0, 512, nil, errnoPerm)
	c.do(0, cmdRead, 0, 512, nil, 0)
	c.do(0, cmdFlush, 0, 0, nil, 0)
	m.SetReadOnly(false) // a fenced volume gets its lease back
	c.do(0, cmdWrite, 0, 512, make([]byte, 512), 0)
}

func TestDeviceErrors(t *testing.T) {
	s, addr := startServer(t, Options{})
	m := newMem(t, 1<<20, 512)
	for name, err := range map[string]error{
		"eio":    errors.New("disk on fire"),
		"closed": fmt.Errorf("volume x: %w", blockdev.ErrClosed),
	} {
		if err := s.AddExport(name, "", failingDevice{Device: m, err: err}); err != nil {
			t.Fatal(err)
		}
	}
	c := dialExport(t, addr, "eio", true)
	r := c.do(0, cmdRead, 0, 512, nil, errnoIO)
	if r.msg == "" {
		t.Errorf("structured EIO carries no message")
	}
	c.do(0, cmdWrite, 0, 512, make([]byte, 512), errnoIO)
	c.do(0, cmdFlush, 0, 0, nil, errnoIO)
	c = dialExport(t, addr, "closed", false)
	c.do(0, cmdWrite, 0, 512, make([]byte, 512), errnoShutdown)
}

func TestErrnoMapping(t *testing.T) {
	cases := []struct {
		err   error
		write bool
		want  uint32
	}{
		{nil, false, 0},
		{fmt.Errorf("x: %w", blockdev.ErrReadOnly), true, errnoPerm},
		{fmt.Errorf("x: %w", blockdev.ErrOutOfRange), false, errnoInval},
		{fmt.Errorf("x: %w", blockdev.ErrOutOfRange), true, errnoNoSpc},
		{fmt.Errorf("x: %w", blockdev.ErrUnaligned), true, errnoInval},
		{blockdev.ErrClosed, false, errnoShutdown},
		{errors.New("other"), false, errnoIO},
	}
	for _, c := range cases {
		if got := errnoFor(c.err, c.write); got != c.want {
			t.Errorf("errnoFor(%v, %v) = %d, want %d", c.err, c.write, got, c.want)
		}
	}
}

func TestOversizedRequests(t *testing.T) {
	const maxPayload = 64 << 10
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			s, addr := startServer(t, Options{MaxPayload: maxPayload})
			if err := s.AddExport("d", "", newMem(t, 4<<20, 4096)); err != nil {
				t.Fatal(err)
			}
			c := dialExport(t, addr, "d", structured)
			c.do(0, cmdRead, 0, maxPayload+4096, nil, errnoInval)
			c.do(0, cmdRead, 0, maxPayload, nil, 0)
			// A slightly oversized write is answered and its payload skipped.
			c.do(0, cmdWrite, 0, maxPayload+4096, pattern(maxPayload+4096, 1), errnoInval)
			c.do(0, cmdWrite, 0, 4096, pattern(4096, 2), 0)
			// TRIM and WRITE_ZEROES carry no payload: no size limit.
			c.do(cmdFlagNoHole, cmdWriteZeroes, 0, 1<<20, nil, 0)
			c.do(0, cmdTrim, 0, 4<<20, nil, 0)
			// A write the server will not skip: error reply, then hang-up.
			c.send(0, cmdWrite, 9, 0, 1<<30, nil)
			c.mustReply(9, errnoInval)
			c.expectClosed()
		})
	}
}

func TestTruncatedRequests(t *testing.T) {
	s, addr := startServer(t, Options{})
	m := newMem(t, 1<<20, 4096)
	if err := s.AddExport("d", "", m); err != nil {
		t.Fatal(err)
	}
	// Half a header, then hang-up.
	c := dialExport(t, addr, "d", false)
	c.write(requestBytes(0, cmdRead, 1, 0, 4096, nil)[:13])
	c.nc.(*net.TCPConn).CloseWrite()
	c.expectClosed()
	// A write whose payload stops short: nothing is written.
	c = dialExport(t, addr, "d", false)
	c.write(requestBytes(0, cmdWrite, 2, 0, 8192, bytes.Repeat([]byte{9}, 5000)))
	c.nc.(*net.TCPConn).CloseWrite()
	c.expectClosed()
	got := make([]byte, 8192)
	if err := m.ReadAt(got, 0); err != nil || !bytes.Equal(got, make([]byte, 8192)) {
		t.Fatalf("truncated write reached the device: %v", err)
	}
	// Bad request magic: unrecoverable, hang up.
	c = dialExport(t, addr, "d", false)
	b := requestBytes(0, cmdRead, 3, 0, 4096, nil)
	b[0] ^= 1
	c.write(b)
	c.expectClosed()
	// The server is fine.
	c = dialExport(t, addr, "d", false)
	c.do(0, cmdRead, 0, 4096, nil, 0)
}

func TestOutOfOrderReplies(t *testing.T) {
	s, addr := startServer(t, Options{})
	gate := make(chan struct{})
	dev := &gateDevice{
		Device:  newMem(t, 1<<20, 4096),
		gates:   map[int64]chan struct{}{0: gate},
		entered: make(chan int64, 1),
	}
	if err := s.AddExport("d", "", dev); err != nil {
		t.Fatal(err)
	}
	c := dialExport(t, addr, "d", true)
	// Blocks in the device. It is bigger than the reader runs itself, so
	// the requests after it are read and answered meanwhile.
	c.send(0, cmdRead, 1, 0, 2*inlineMaxData, nil)
	select {
	case <-dev.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("gated read never reached the device")
	}
	w := pattern(4096, 5)
	c.send(0, cmdWrite, 2, 4096, 4096, w)
	c.send(0, cmdRead, 3, 4096, 4096, nil)
	c.send(0, cmdFlush, 4, 0, 0, nil)
	seen := map[uint64]bool{}
	for range 2 {
		r, err := c.reply()
		if err != nil {
			t.Fatal(err)
		}
		if r.cookie == 1 || r.errno != 0 {
			t.Fatalf("got reply %d errno %d while request 1 is blocked", r.cookie, r.errno)
		}
		seen[r.cookie] = true
	}
	// The read of 4096 may race the write (both in flight); collect all.
	r, err := c.reply()
	if err != nil || r.cookie == 1 {
		t.Fatalf("third reply %d: %v", r.cookie, err)
	}
	seen[r.cookie] = true
	if !seen[2] || !seen[3] || !seen[4] {
		t.Fatalf("replies seen %v", seen)
	}
	close(gate)
	c.mustReply(1, 0)
}

func TestConcurrentRequestsBounded(t *testing.T) {
	const (
		workers  = 4
		inflight = 64 << 10
		reqSize  = 16 << 10
		nreq     = 200
	)
	s, addr := startServer(t, Options{Workers: workers, MaxInFlightBytes: inflight, MaxPayload: 32 << 10})
	dev := &gateDevice{Device: newMem(t, 4<<20, 4096), delay: time.Millisecond}
	if err := s.AddExport("d", "", dev); err != nil {
		t.Fatal(err)
	}
	c := dialExport(t, addr, "d", false)
	rng := rand.New(rand.NewPCG(1, 2))
	expect := map[uint64]uint64{} // cookie → offset
	for i := range nreq {
		expect[uint64(i)] = uint64(rng.IntN(4<<20/reqSize)) * reqSize
	}
	// Send all requests from one goroutine while this one reads replies,
	// so many requests are in flight at once.
	done := make(chan error, 1)
	go func() {
		for i := range nreq {
			if _, err := c.nc.Write(requestBytes(0, cmdWrite, uint64(i), expect[uint64(i)], reqSize, pattern(reqSize, byte(i)))); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	got := map[uint64]bool{}
	for range nreq {
		r, err := c.reply()
		if err != nil {
			t.Fatal(err)
		}
		if r.errno != 0 || got[r.cookie] || r.cookie >= nreq {
			t.Fatalf("reply cookie %d errno %d (dup %v)", r.cookie, r.errno, got[r.cookie])
		}
		got[r.cookie] = true
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Writes to the same offset were in flight together, so only check
	// that each offset holds one of the patterns written there.
	want := map[uint64]bool{}
	for i := range nreq {
		want[expect[uint64(i)]] = true
	}
	for off := range want {
		r := c.do(0, cmdRead, off, reqSize, nil, 0)
		ok := false
		for i := range nreq {
			if expect[uint64(i)] == off && bytes.Equal(r.data, pattern(reqSize, byte(i))) {
				ok = true
			}
		}
		if !ok {
			t.Fatalf("offset %d holds none of the patterns written there", off)
		}
	}
	calls, peakBytes := dev.peaks()
	if calls < 2 {
		t.Errorf("peak %d device calls at once: requests were not run concurrently", calls)
	}
	if calls > workers {
		t.Errorf("%d device calls at once, want ≤ %d workers", calls, workers)
	}
	if peakBytes > inflight {
		t.Errorf("%d payload bytes in the device at once, want ≤ %d", peakBytes, inflight)
	}
	t.Logf("peak %d concurrent device calls, %d bytes", calls, peakBytes)
}

func TestDiscAnswersPendingRequests(t *testing.T) {
	s, addr := startServer(t, Options{})
	m := newMem(t, 1<<20, 4096)
	if err := s.AddExport("d", "", m); err != nil {
		t.Fatal(err)
	}
	c := dialExport(t, addr, "d", false)
	var b []byte
	for i := range 32 {
		b = append(b, requestBytes(0, cmdWrite, uint64(i), uint64(i)*4096, 4096, pattern(4096, byte(i)))...)
	}
	b = append(b, requestBytes(0, cmdDisc, 99, 0, 0, nil)...)
	c.write(b)
	got := map[uint64]bool{}
	for range 32 {
		r, err := c.reply()
		if err != nil || r.errno != 0 {
			t.Fatalf("reply %+v: %v", r, err)
		}
		got[r.cookie] = true
	}
	if len(got) != 32 {
		t.Fatalf("%d distinct replies", len(got))
	}
	c.expectClosed()
	for i := range 32 {
		p := make([]byte, 4096)
		if err := m.ReadAt(p, int64(i)*4096); err != nil || !bytes.Equal(p, pattern(4096, byte(i))) {
			t.Fatalf("block %d not written before DISC completed: %v", i, err)
		}
	}
}

func TestRemoveExportClosesConnections(t *testing.T) {
	s, addr := startServer(t, Options{})
	gate := make(chan struct{})
	gone := &gateDevice{Device: newMem(t, 1<<20, 512), gates: map[int64]chan struct{}{0: gate}, entered: make(chan int64, 1)}
	if err := s.AddExport("gone", "", gone); err != nil {
		t.Fatal(err)
	}
	if err := s.AddExport("stays", "", newMem(t, 1<<20, 512)); err != nil {
		t.Fatal(err)
	}
	c1 := dialExport(t, addr, "gone", false)
	c2 := dialExport(t, addr, "stays", false)
	c1.do(0, cmdRead, 512, 512, nil, 0)
	c1.send(0, cmdRead, 5, 0, 4096, nil) // blocks in the device
	<-gone.entered
	removed := make(chan error, 1)
	go func() { removed <- s.RemoveExport("gone") }()
	c1.expectClosed()
	// RemoveExport waits for the device call still running.
	select {
	case err := <-removed:
		t.Fatalf("RemoveExport returned (%v) while a device call was running", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(gate)
	if err := <-removed; err != nil {
		t.Fatal(err)
	}
	c2.do(0, cmdRead, 0, 512, nil, 0)
	if err := s.RemoveExport("gone"); !errors.Is(err, ErrUnknownExport) {
		t.Fatalf("second RemoveExport = %v", err)
	}
	c3 := dialOpts(t, addr)
	c3.option(optGo, infoData("gone"))
	if _, typ, _ := c3.optReply(); typ != repErrUnknown {
		t.Fatalf("GO on removed export: %#x", typ)
	}
	// The name can be reused by a new volume.
	if err := s.AddExport("gone", "", newMem(t, 2<<20, 512)); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(s.Exports()); got != "[gone stays]" {
		t.Fatalf("Exports() = %s", got)
	}
}

func TestAddExportErrors(t *testing.T) {
	s := NewServer(Options{})
	m := newMem(t, 1<<20, 512)
	if err := s.AddExport("a", "", m); err != nil {
		t.Fatal(err)
	}
	if err := s.AddExport("a", "", m); !errors.Is(err, ErrExportExists) {
		t.Fatalf("duplicate AddExport = %v", err)
	}
	if err := s.AddExport("n", "", nil); err == nil {
		t.Fatal("nil device accepted")
	}
	if err := s.AddExport(string(make([]byte, maxNameLen+1)), "", m); err == nil {
		t.Fatal("over-long name accepted")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.AddExport("b", "", m); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("AddExport after Close = %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(l); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve after Close = %v", err)
	}
	if _, err := net.Dial("tcp", l.Addr().String()); err == nil {
		t.Fatal("Serve after Close left the listener open")
	}
}

func TestCloseStopsEverything(t *testing.T) {
	s := NewServer(Options{})
	gate := make(chan struct{})
	dev := &gateDevice{Device: newMem(t, 1<<20, 4096), gates: map[int64]chan struct{}{0: gate}, entered: make(chan int64, 1)}
	if err := s.AddExport("d", "", dev); err != nil {
		t.Fatal(err)
	}
	var served []chan error
	var addrs []string
	for range 2 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ch := make(chan error, 1)
		go func() { ch <- s.Serve(l) }()
		served = append(served, ch)
		addrs = append(addrs, l.Addr().String())
	}
	idle := dialRaw(t, addrs[0])                // stuck in negotiation
	busy := dialExport(t, addrs[1], "d", false) // a request blocked in the device
	busy.send(0, cmdRead, 1, 0, 4096, nil)
	<-dev.entered
	closed := make(chan struct{})
	go func() {
		s.Close()
		close(closed)
	}()
	idle.expectClosed()
	busy.expectClosed()
	// Close waits for the worker stuck in the device.
	select {
	case <-closed:
		t.Fatal("Close returned while a device call was still running")
	case <-time.After(100 * time.Millisecond):
	}
	close(gate)
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	for _, ch := range served {
		if err := <-ch; !errors.Is(err, ErrServerClosed) {
			t.Fatalf("Serve returned %v", err)
		}
	}
	s.Close() // idempotent
}

func TestServerWideInFlightBudget(t *testing.T) {
	const (
		serverBudget = 64 << 10
		reqSize      = 16 << 10
		conns        = 4
		perConn      = 40
	)
	s, addr := startServer(t, Options{MaxServerInFlightBytes: serverBudget, MaxPayload: 32 << 10})
	dev := &gateDevice{Device: newMem(t, 4<<20, 4096), delay: time.Millisecond}
	if err := s.AddExport("d", "", dev); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, conns)
	for i := range conns {
		c := dialExport(t, addr, "d", false)
		go func() {
			var b []byte
			for j := range perConn {
				b = append(b, requestBytes(0, cmdWrite, uint64(j), uint64(i*perConn+j)*reqSize, reqSize, pattern(reqSize, byte(j)))...)
			}
			go c.nc.Write(b)
			for range perConn {
				r, err := c.reply()
				if err == nil && r.errno != 0 {
					err = fmt.Errorf("errno %d", r.errno)
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range conns {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	calls, peak := dev.peaks()
	if peak > serverBudget {
		t.Fatalf("%d payload bytes in the device at once over %d connections, budget %d", peak, conns, serverBudget)
	}
	if calls < 2 {
		t.Fatalf("peak %d device calls: connections did not run concurrently", calls)
	}
	t.Logf("peak %d device calls, %d bytes", calls, peak)
}

// TestExportChurn adds and removes an export while clients connect and do
// I/O: no panic, no deadlock, and every client either works or is cut off.
func TestExportChurn(t *testing.T) {
	s, addr := startServer(t, Options{})
	m := newMem(t, 1<<20, 512)
	stop := make(chan struct{})
	churned := make(chan int)
	go func() {
		n := 0
		defer func() { churned <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := s.AddExport("v", "", m); err != nil {
				t.Errorf("AddExport: %v", err)
				return
			}
			time.Sleep(time.Millisecond)
			if err := s.RemoveExport("v"); err != nil {
				t.Errorf("RemoveExport: %v", err)
				return
			}
			n++
		}
	}()
	served := 0
	deadline := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(deadline) {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		b := binary.BigEndian.AppendUint32(nil, clientFixedNewstyle|clientNoZeroes)
		b = append(b, optionBytes(optExportName, []byte("v"))...)
		for i := range 8 {
			b = append(b, requestBytes(0, cmdWrite, uint64(i), uint64(i)*512, 512, pattern(512, byte(i)))...)
		}
		nc.Write(b)
		// Greeting (18) + export reply (10) + 8 replies (16 each), or an
		// early close.
		got, _ := io.ReadAll(io.LimitReader(nc, 18+10+8*16))
		if len(got) == 18+10+8*16 {
			served++
		}
		nc.Close()
	}
	close(stop)
	n := <-churned
	if n == 0 || served == 0 {
		t.Fatalf("%d add/remove cycles, %d clients fully served: churn did not overlap I/O", n, served)
	}
	t.Logf("%d add/remove cycles, %d clients fully served", n, served)
}

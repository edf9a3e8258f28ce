package iscsi

import (
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weedblock/weedblock/frontend/scsi"
)

// A minimal hand-written initiator for protocol tests.

const testInitiatorName = "iqn.2026-11.io.weedblock.test:initiator"

type testInit struct {
	t         testing.TB
	nc        net.Conn
	rd        *pduReader
	wr        *pduWriter
	isid      [6]byte
	tsih      uint16
	cid       uint16
	cmdSN     uint32
	expStatSN uint32
	maxCmdSN  uint32
	itt       uint32
	// targetMRDSL is what the target declared (what we may send).
	targetMRDSL uint32
	hd, dd      bool
}

func dialInit(t testing.TB, addr string) *testInit {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { nc.Close() })
	return &testInit{
		t: t, nc: nc,
		rd:          newPDUReader(nc, 64*1024),
		wr:          newPDUWriter(nc, 64*1024),
		isid:        [6]byte{0x80, 0, 0, 0x12, 0x34, 0x56},
		cmdSN:       1,
		itt:         0x100,
		targetMRDSL: 8192,
	}
}

func (i *testInit) nextITT() uint32 { i.itt++; return i.itt }

// raw sends a header and data as is (DataSegmentLength set from data).
func (i *testInit) raw(h *bhs, data []byte) error {
	i.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := i.wr.write(h, data); err != nil {
		return err
	}
	return i.wr.flush()
}

func (i *testInit) send(h *bhs, data []byte) {
	i.t.Helper()
	if err := i.raw(h, data); err != nil {
		i.t.Fatalf("send opcode %#x: %v", h.opcode(), err)
	}
}

// recv reads one PDU; it fails the test on error.
func (i *testInit) recv() (bhs, []byte) {
	i.t.Helper()
	h, d, err := i.tryRecv(5 * time.Second)
	if err != nil {
		i.t.Fatalf("recv: %v", err)
	}
	return h, d
}

func (i *testInit) tryRecv(timeout time.Duration) (bhs, []byte, error) {
	i.nc.SetReadDeadline(time.Now().Add(timeout))
	if err := i.rd.readHeader(); err != nil {
		return bhs{}, nil, err
	}
	d, err := i.rd.readDataScratch()
	if err != nil {
		return bhs{}, nil, err
	}
	h := i.rd.hdr
	if h.opcode() != opLoginRsp && h.opcode() != opR2T {
		if h.opcode() != opDataIn || h.flags()&flagStatus != 0 {
			i.expStatSN = h.u32(24) + 1
		}
	}
	if h.opcode() != opLoginRsp {
		i.maxCmdSN = h.u32(32)
	}
	return h, append([]byte(nil), d...), nil
}

// expectClosed waits for the target to close the connection (PDUs such as
// a Reject may come first).
func (i *testInit) expectClosed() {
	i.t.Helper()
	for n := 0; n < 100; n++ {
		_, _, err := i.tryRecv(5 * time.Second)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				i.t.Fatalf("target did not close the connection")
			}
			return
		}
	}
	i.t.Fatalf("target kept sending instead of closing")
}

func kvText(pairs ...string) []byte {
	var t textBuf
	for j := 0; j+1 < len(pairs); j += 2 {
		t.add(pairs[j], pairs[j+1])
	}
	return t.bytes()
}

func kvMap(t testing.TB, d []byte) map[string]string {
	t.Helper()
	kvs, err := parseText(d)
	if err != nil {
		t.Fatalf("parse response text %q: %v", d, err)
	}
	m := map[string]string{}
	for _, p := range kvs {
		m[p.key] = p.value
	}
	return m
}

// loginPDU sends one login request and returns the response.
func (i *testInit) loginPDU(csg, nsg int, transit bool, text []byte) (bhs, map[string]string) {
	i.t.Helper()
	var h bhs
	h[0] = opLoginReq | flagImmediate
	f := byte(csg) << 2
	if transit {
		f |= 0x80 | byte(nsg)
	}
	h[1] = f
	copy(h[8:14], i.isid[:])
	h.putU16(14, i.tsih)
	h.putU32(16, i.itt)
	h.putU16(20, i.cid)
	h.putU32(24, i.cmdSN)
	h.putU32(28, i.expStatSN)
	i.send(&h, text)
	r, d := i.recv()
	if r.opcode() != opLoginRsp {
		i.t.Fatalf("login: got opcode %#x", r.opcode())
	}
	i.expStatSN = r.u32(24) + 1
	i.maxCmdSN = r.u32(32)
	return r, kvMap(i.t, d)
}

func loginStatus(h bhs) uint16 { return binary.BigEndian.Uint16(h[36:38]) }

// opKeys are the operational keys the test initiator proposes.
type opKeys struct {
	headerDigest, dataDigest string
	initialR2T, immediate    string
	mrdsl, mbl, fbl, maxR2T  string
}

func defaultOpKeys() opKeys {
	return opKeys{"None", "None", "No", "Yes", "262144", "262144", "65536", "1"}
}

func (o opKeys) text(extra ...string) []byte {
	p := []string{
		"HeaderDigest", o.headerDigest, "DataDigest", o.dataDigest,
		"ErrorRecoveryLevel", "0", "InitialR2T", o.initialR2T,
		"ImmediateData", o.immediate, "MaxRecvDataSegmentLength", o.mrdsl,
		"MaxBurstLength", o.mbl, "FirstBurstLength", o.fbl,
		"MaxOutstandingR2T", o.maxR2T, "MaxConnections", "1",
		"DefaultTime2Wait", "2", "DefaultTime2Retain", "0",
		"DataPDUInOrder", "Yes", "DataSequenceInOrder", "Yes",
	}
	return kvText(append(p, extra...)...)
}

// login performs a normal login without authentication.
func (i *testInit) login(target string, o opKeys) map[string]string {
	i.t.Helper()
	r, m := i.loginPDU(0, 1, true, kvText("InitiatorName", testInitiatorName,
		"TargetName", target, "SessionType", "Normal", "AuthMethod", "None"))
	if s := loginStatus(r); s != 0 {
		i.t.Fatalf("security stage: status %#04x", s)
	}
	if m["AuthMethod"] != "None" {
		i.t.Fatalf("AuthMethod answer %q", m["AuthMethod"])
	}
	return i.operational(r, o)
}

func (i *testInit) operational(r bhs, o opKeys) map[string]string {
	i.t.Helper()
	if r[1]&0x80 == 0 || r[1]&3 != 1 {
		i.t.Fatalf("security stage response did not transit to operational: %#x", r[1])
	}
	r, m := i.loginPDU(1, 3, true, o.text())
	if s := loginStatus(r); s != 0 {
		i.t.Fatalf("operational stage: status %#04x", s)
	}
	if r[1]&0x80 == 0 || r[1]&3 != 3 {
		i.t.Fatalf("no transit to full feature: flags %#x keys %v", r[1], m)
	}
	i.tsih = r.u16(14)
	if i.tsih == 0 {
		i.t.Fatalf("TSIH 0 after login")
	}
	if v, ok := m["MaxRecvDataSegmentLength"]; ok {
		n, _ := parseNumber(v)
		i.targetMRDSL = uint32(n)
	}
	i.hd = m["HeaderDigest"] == "CRC32C"
	i.dd = m["DataDigest"] == "CRC32C"
	i.rd.headerDigest, i.wr.headerDigest = i.hd, i.hd
	i.rd.dataDigest, i.wr.dataDigest = i.dd, i.dd
	return m
}

// cmdResult gathers everything the target answered for one command.
type cmdResult struct {
	status   byte
	response byte
	flags    byte
	residual uint32
	sense    []byte
	dataIn   []byte
	dataPDUs int
	r2ts     []bhs
}

// scsiCmdHeader builds a SCSI Command BHS.
func (i *testInit) scsiCmdHeader(cdb []byte, read, write bool, edtl uint32, final bool) bhs {
	var h bhs
	h[0] = opSCSICmd
	f := byte(1) // SIMPLE
	if final {
		f |= flagFinal
	}
	if read {
		f |= cmdFlagRead
	}
	if write {
		f |= cmdFlagWrite
	}
	h[1] = f
	h.putU32(16, i.nextITT())
	h.putU32(20, edtl)
	h.putU32(24, i.cmdSN)
	i.cmdSN++
	h.putU32(28, i.expStatSN)
	copy(h[32:48], cdb)
	return h
}

// do runs one command to completion, answering R2Ts from out.
func (i *testInit) do(cdb []byte, read bool, out []byte, edtl uint32, immediate int) cmdResult {
	i.t.Helper()
	write := out != nil
	h := i.scsiCmdHeader(cdb, read, write, edtl, true)
	itt := h.itt()
	i.send(&h, out[:immediate])
	return i.collect(itt, out)
}

func (i *testInit) collect(itt uint32, out []byte) cmdResult {
	i.t.Helper()
	var res cmdResult
	for {
		r, d := i.recv()
		if r.itt() != itt && r.opcode() != opReject {
			i.t.Fatalf("PDU opcode %#x for ITT %#x, want %#x", r.opcode(), r.itt(), itt)
		}
		switch r.opcode() {
		case opR2T:
			res.r2ts = append(res.r2ts, r)
			i.answerR2T(r, out)
		case opDataIn:
			if off := r.u32(40); int(off) != len(res.dataIn) {
				i.t.Fatalf("Data-In offset %d, have %d bytes", off, len(res.dataIn))
			}
			if sn := r.u32(36); int(sn) != res.dataPDUs {
				i.t.Fatalf("Data-In DataSN %d, want %d", sn, res.dataPDUs)
			}
			res.dataPDUs++
			res.dataIn = append(res.dataIn, d...)
			if r.flags()&flagStatus != 0 {
				res.status = r[3]
				res.flags = r.flags()
				res.residual = r.u32(44)
				return res
			}
		case opSCSIResp:
			res.response = r[2]
			res.status = r[3]
			res.flags = r.flags()
			res.residual = r.u32(44)
			if len(d) >= 2 {
				n := int(binary.BigEndian.Uint16(d))
				res.sense = d[2 : 2+n]
			}
			return res
		case opReject:
			i.t.Fatalf("command rejected, reason %#x", r[2])
		default:
			i.t.Fatalf("unexpected opcode %#x", r.opcode())
		}
	}
}

// answerR2T sends the solicited data in Data-Out PDUs of targetMRDSL.
func (i *testInit) answerR2T(r bhs, out []byte) {
	i.t.Helper()
	off, n := r.u32(40), r.u32(44)
	var sn uint32
	for sent := uint32(0); sent < n; {
		l := min(n-sent, i.targetMRDSL)
		var h bhs
		h[0] = opDataOut
		if sent+l == n {
			h[1] = flagFinal
		}
		copy(h[8:16], r[8:16])
		h.putU32(16, r.itt())
		h.putU32(20, r.u32(20))
		h.putU32(28, i.expStatSN)
		h.putU32(36, sn)
		h.putU32(40, off+sent)
		i.send(&h, out[off+sent:off+sent+l])
		sn++
		sent += l
	}
}

func (i *testInit) nop(data []byte) bhs {
	i.t.Helper()
	var h bhs
	h[0] = opNopOut | flagImmediate
	h[1] = flagFinal
	h.putU32(16, i.nextITT())
	h.putU32(20, reservedTag)
	h.putU32(24, i.cmdSN)
	h.putU32(28, i.expStatSN)
	i.send(&h, data)
	r, d := i.recv()
	if r.opcode() != opNopIn || r.itt() != h.itt() {
		i.t.Fatalf("NOP-Out answered by opcode %#x itt %#x", r.opcode(), r.itt())
	}
	if string(d) != string(data) {
		i.t.Fatalf("NOP-In echoed %q, want %q", d, data)
	}
	return r
}

func (i *testInit) logout(reason byte) bhs {
	i.t.Helper()
	var h bhs
	h[0] = opLogoutReq | flagImmediate
	h[1] = flagFinal | reason
	h.putU32(16, i.nextITT())
	h.putU16(20, i.cid)
	h.putU32(24, i.cmdSN)
	h.putU32(28, i.expStatSN)
	i.send(&h, nil)
	r, _ := i.recv()
	if r.opcode() != opLogoutRsp {
		i.t.Fatalf("logout answered by opcode %#x", r.opcode())
	}
	return r
}

// memLU is a small logical unit for transport tests: READ(10), WRITE(10),
// TEST UNIT READY, INQUIRY and a vendor opcode 0xC0 that blocks until
// released (to test task management against running commands).
type memLU struct {
	mu      sync.Mutex
	bs      int
	data    []byte
	cmds    []scsi.Command
	block   chan struct{}
	entered chan struct{}
	resets  []ResetKind
	// released counts ReleaseDataIn calls.
	released atomic.Int32
}

func (m *memLU) ReleaseDataIn(r *scsi.Response) {
	if r.DataIn != nil {
		m.released.Add(1)
	}
}

func newMemLU(blocks int) *memLU {
	return &memLU{bs: 512, data: make([]byte, blocks*512), block: make(chan struct{}), entered: make(chan struct{}, 16)}
}

func (m *memLU) DataOutLength(cdb []byte) (uint32, bool) {
	if cdb[0] == 0x2a {
		return uint32(binary.BigEndian.Uint16(cdb[7:9])) * uint32(m.bs), true
	}
	return 0, false
}

func (m *memLU) Execute(c *scsi.Command) *scsi.Response {
	m.mu.Lock()
	cc := *c
	cc.DataOut = append([]byte(nil), c.DataOut...)
	m.cmds = append(m.cmds, cc)
	m.mu.Unlock()
	cdb := c.CDB
	switch cdb[0] {
	case 0x00:
		return &scsi.Response{}
	case 0x12:
		d := make([]byte, 36)
		d[2], d[3], d[4] = 5, 2, 31
		copy(d[8:], "WEEDBLK TESTLU          0001")
		return &scsi.Response{DataIn: d[:min(36, int(binary.BigEndian.Uint16(cdb[3:5])))]}
	case 0x28, 0x2a:
		lba := int(binary.BigEndian.Uint32(cdb[2:6]))
		n := int(binary.BigEndian.Uint16(cdb[7:9]))
		off, end := lba*m.bs, (lba+n)*m.bs
		if end > len(m.data) {
			return &scsi.Response{Status: scsi.StatusCheckCondition, Sense: fixedSense(5, 0x21, 0)}
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		if cdb[0] == 0x28 {
			return &scsi.Response{DataIn: append([]byte(nil), m.data[off:end]...)}
		}
		copy(m.data[off:end], c.DataOut)
		return &scsi.Response{}
	case 0xc1:
		panic("memLU: vendor opcode 0xC1 panics")
	case 0xc0:
		m.entered <- struct{}{}
		<-m.block
		return &scsi.Response{}
	}
	return &scsi.Response{Status: scsi.StatusCheckCondition, Sense: fixedSense(5, 0x20, 0)}
}

func (m *memLU) commands() []scsi.Command {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]scsi.Command(nil), m.cmds...)
}

func read10(lba uint32, blocks uint16) []byte {
	c := make([]byte, 10)
	c[0] = 0x28
	binary.BigEndian.PutUint32(c[2:], lba)
	binary.BigEndian.PutUint16(c[7:], blocks)
	return c
}

func write10(lba uint32, blocks uint16) []byte {
	c := read10(lba, blocks)
	c[0] = 0x2a
	return c
}

// testServer starts a server with one target over a memLU.
type testServer struct {
	srv  *Server
	addr string
	lu   *memLU
	name string
}

func startServer(t testing.TB, cfg Config, tgt func(*Target)) *testServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.LoginTimeout == 0 {
		cfg.LoginTimeout = 5 * time.Second
	}
	s := NewServer(cfg)
	lu := newMemLU(2048)
	ts := &testServer{srv: s, addr: l.Addr().String(), lu: lu, name: IQN("vol1")}
	target := Target{Name: ts.name, LU: lu, OnReset: func(k ResetKind, _ scsi.Nexus) {
		lu.mu.Lock()
		lu.resets = append(lu.resets, k)
		lu.mu.Unlock()
	}}
	if tgt != nil {
		tgt(&target)
	}
	if err := s.AddTarget(target); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != ErrServerClosed {
			t.Errorf("Serve returned %v", err)
		}
	})
	return ts
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for j := range b {
		b[j] = byte(j*7) + seed
	}
	return b
}

func must(t testing.TB, cond bool, format string, args ...any) {
	t.Helper()
	if !cond {
		t.Fatalf(format, args...)
	}
}

var _ = fmt.Sprint
var _ = strings.Contains

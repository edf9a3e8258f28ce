package iscsi

import (
	"bytes"
	"encoding/binary"
	"net"
	"runtime"
	"testing"
	"time"
)

func TestReadWriteImmediate(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	in := dialInit(t, ts.addr)
	in.login(ts.name, defaultOpKeys())
	data := pattern(4096, 3)
	res := in.do(write10(10, 8), false, data, 4096, 4096)
	must(t, res.status == 0 && len(res.r2ts) == 0, "write: status %#x r2ts %d", res.status, len(res.r2ts))
	res = in.do(read10(10, 8), true, nil, 4096, 0)
	must(t, res.status == 0 && bytes.Equal(res.dataIn, data), "read back: status %#x, %d bytes", res.status, len(res.dataIn))
	must(t, res.flags&(flagResOverflow|flagResUnderflow) == 0, "unexpected residual flags %#x", res.flags)
	// The logical unit gets its DataIn buffer back once it was sent.
	for k := 0; k < 100 && ts.lu.released.Load() == 0; k++ {
		time.Sleep(10 * time.Millisecond)
	}
	must(t, ts.lu.released.Load() == 1, "ReleaseDataIn called %d times", ts.lu.released.Load())
	cmds := ts.lu.commands()
	must(t, len(cmds) == 2 && cmds[0].Write && !cmds[0].Read && cmds[1].Read, "commands seen: %+v", len(cmds))
	must(t, cmds[0].Nexus.InitiatorPort == testInitiatorName+",i,0x800000123456", "nexus %q", cmds[0].Nexus.InitiatorPort)
	must(t, cmds[0].Nexus.TargetPort == ts.name+",t,0x0001", "target port %q", cmds[0].Nexus.TargetPort)
}

func TestWriteR2TFlow(t *testing.T) {
	ts := startServer(t, Config{MaxOutstandingR2T: 2}, nil)
	in := dialInit(t, ts.addr)
	o := defaultOpKeys()
	o.initialR2T, o.immediate, o.mbl, o.maxR2T = "Yes", "No", "4096", "4"
	m := in.login(ts.name, o)
	must(t, m["MaxOutstandingR2T"] == "2", "MaxOutstandingR2T %q", m["MaxOutstandingR2T"])
	in.targetMRDSL = 1024 // several Data-Out per burst
	data := pattern(8*4096, 9)

	// Send the command, then read R2Ts without answering: exactly
	// MaxOutstandingR2T must arrive.
	h := in.scsiCmdHeader(write10(100, 64), false, true, uint32(len(data)), true)
	in.send(&h, nil)
	var r2ts []bhs
	for len(r2ts) < 2 {
		r, _ := in.recv()
		must(t, r.opcode() == opR2T, "opcode %#x", r.opcode())
		r2ts = append(r2ts, r)
	}
	if _, _, err := in.tryRecv(200 * time.Millisecond); err == nil {
		t.Fatalf("more than MaxOutstandingR2T R2Ts outstanding")
	}
	for j, r := range r2ts {
		must(t, r.u32(36) == uint32(j) && r.u32(40) == uint32(j*4096) && r.u32(44) == 4096,
			"R2T %d: sn %d off %d len %d", j, r.u32(36), r.u32(40), r.u32(44))
	}
	for _, r := range r2ts {
		in.answerR2T(r, data)
	}
	res := in.collect(h.itt(), data)
	must(t, res.status == 0, "status %#x", res.status)
	must(t, len(res.r2ts) == 6, "later R2Ts %d", len(res.r2ts))
	for j, r := range res.r2ts {
		must(t, r.u32(36) == uint32(j+2) && r.u32(40) == uint32((j+2)*4096), "R2T sn %d off %d", r.u32(36), r.u32(40))
	}
	rd := in.do(read10(100, 64), true, nil, uint32(len(data)), 0)
	must(t, bytes.Equal(rd.dataIn, data), "data mismatch after R2T write")
}

func TestWriteUnsolicitedData(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	in := dialInit(t, ts.addr)
	o := defaultOpKeys()
	o.initialR2T, o.fbl, o.mbl = "No", "8192", "8192"
	in.login(ts.name, o)
	data := pattern(20480, 1)
	h := in.scsiCmdHeader(write10(0, 40), false, true, uint32(len(data)), false)
	in.send(&h, data[:2048]) // immediate
	// Unsolicited Data-Out for [2048, 8192) in two PDUs.
	for j, off := range []int{2048, 5120} {
		var d bhs
		d[0] = opDataOut
		if off == 5120 {
			d[1] = flagFinal
		}
		d.putU32(16, h.itt())
		d.putU32(20, reservedTag)
		d.putU32(36, uint32(j))
		d.putU32(40, uint32(off))
		in.send(&d, data[off:off+3072])
	}
	res := in.collect(h.itt(), data)
	must(t, res.status == 0, "status %#x", res.status)
	must(t, len(res.r2ts) == 2 && res.r2ts[0].u32(40) == 8192 && res.r2ts[1].u32(44) == 4096,
		"R2Ts %d", len(res.r2ts))
	rd := in.do(read10(0, 40), true, nil, uint32(len(data)), 0)
	must(t, bytes.Equal(rd.dataIn, data), "data mismatch")
}

func TestDataOutInvalidDataSN(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	in := dialInit(t, ts.addr)
	o := defaultOpKeys()
	o.initialR2T, o.immediate = "Yes", "No"
	in.login(ts.name, o)
	h := in.scsiCmdHeader(write10(0, 2), false, true, 1024, true)
	in.send(&h, nil)
	r, _ := in.recv()
	must(t, r.opcode() == opR2T, "opcode %#x", r.opcode())
	var d bhs
	d[0] = opDataOut
	d[1] = flagFinal
	d.putU32(16, h.itt())
	d.putU32(20, r.u32(20))
	d.putU32(36, 27) // wrong DataSN
	in.send(&d, make([]byte, 1024))
	// The task fails with ABORTED COMMAND / DATA PHASE ERROR; the
	// connection stays usable and late Data-Out for the task is dropped.
	r, dd := in.recv()
	must(t, r.opcode() == opSCSIResp && r[3] == 2, "opcode %#x status %#x", r.opcode(), r[3])
	must(t, len(dd) >= 16 && dd[2+2]&0x0f == 0x0b && dd[2+12] == 0x4b, "sense %x", dd)
	d.putU32(36, 0)
	in.send(&d, make([]byte, 1024))
	in.nop(nil)
	must(t, len(ts.lu.commands()) == 0, "command with bad Data-Out executed")
}

func TestReadSplitAndResiduals(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	in := dialInit(t, ts.addr)
	o := defaultOpKeys()
	o.mrdsl, o.mbl = "4096", "8192"
	in.login(ts.name, o)
	data := pattern(32768, 5)
	in.do(write10(0, 64), false, data, 32768, 8192)
	res := in.do(read10(0, 64), true, nil, 32768, 0)
	must(t, res.dataPDUs == 8 && bytes.Equal(res.dataIn, data), "pdus %d", res.dataPDUs)

	// EDTL larger than the data: underflow.
	res = in.do(read10(0, 2), true, nil, 4096, 0)
	must(t, res.flags&flagResUnderflow != 0 && res.residual == 3072 && len(res.dataIn) == 1024,
		"underflow: flags %#x residual %d len %d", res.flags, res.residual, len(res.dataIn))
	// EDTL smaller: overflow, data cut.
	res = in.do(read10(0, 4), true, nil, 1000, 0)
	must(t, res.flags&flagResOverflow != 0 && res.residual == 1048 && len(res.dataIn) == 1000,
		"overflow: flags %#x residual %d len %d", res.flags, res.residual, len(res.dataIn))
	// Write with EDTL above the CDB's transfer length: underflow via
	// DataOutSizer.
	res = in.do(write10(0, 1), false, make([]byte, 1024), 1024, 1024)
	must(t, res.flags&flagResUnderflow != 0 && res.residual == 512, "write underflow: %#x %d", res.flags, res.residual)
	res = in.do(write10(0, 2), false, make([]byte, 512), 512, 512)
	must(t, res.flags&flagResOverflow != 0 && res.residual == 512, "write overflow: %#x %d", res.flags, res.residual)
	// Errors come back in a SCSI Response with sense data.
	res = in.do(read10(1<<20, 1), true, nil, 512, 0)
	must(t, res.status == 2 && len(res.sense) == 18 && res.sense[2] == 5 && res.sense[12] == 0x21,
		"sense: status %#x sense %x", res.status, res.sense)
}

func TestDigests(t *testing.T) {
	ts := startServer(t, Config{HeaderDigests: []string{"CRC32C"}, DataDigests: []string{"CRC32C"}}, nil)
	in := dialInit(t, ts.addr)
	o := defaultOpKeys()
	o.headerDigest, o.dataDigest = "None,CRC32C", "None,CRC32C"
	m := in.login(ts.name, o)
	must(t, m["HeaderDigest"] == "CRC32C" && m["DataDigest"] == "CRC32C", "digests %v", m)
	data := pattern(3000, 7) // not a multiple of 4: padding is digested
	res := in.do(write10(0, 6), false, append(data, make([]byte, 72)...), 3072, 3072)
	must(t, res.status == 0, "status %#x", res.status)
	in.nop([]byte("odd"))
	rd := in.do(read10(0, 6), true, nil, 3072, 0)
	must(t, bytes.Equal(rd.dataIn[:3000], data), "data mismatch")

	// A corrupted header digest closes the connection.
	var h bhs
	h[0] = opNopOut | flagImmediate
	h[1] = flagFinal
	h.putU32(16, in.nextITT())
	buf := append([]byte(nil), h[:]...)
	buf = binary.LittleEndian.AppendUint32(buf, crc32c(h[:])^1)
	in.nc.Write(buf)
	in.expectClosed()

	// Without CRC32C offered, login negotiation rejects the digest.
	in = dialInit(t, ts.addr)
	r, _ := in.loginPDU(0, 1, true, kvText("InitiatorName", testInitiatorName, "TargetName", ts.name, "AuthMethod", "None"))
	_, m = in.loginPDU(1, 1, false, kvText("HeaderDigest", "None"))
	_ = r
	must(t, m["HeaderDigest"] == "Reject", "HeaderDigest %q", m["HeaderDigest"])
}

func TestDataDigestError(t *testing.T) {
	ts := startServer(t, Config{DataDigests: []string{"CRC32C"}}, nil)
	in := dialInit(t, ts.addr)
	o := defaultOpKeys()
	o.dataDigest = "CRC32C"
	in.login(ts.name, o)
	in.wr.dataDigest = false // send a payload with a bad digest
	var h bhs
	h[0] = opNopOut | flagImmediate
	h[1] = flagFinal
	h.putU32(16, in.nextITT())
	h.putU32(20, reservedTag)
	in.send(&h, []byte("abcd\x00\x00\x00\x00"[:4]))
	in.nc.Write([]byte{1, 2, 3, 4})
	in.expectClosed()
}

func TestOversizedSegment(t *testing.T) {
	ts := startServer(t, Config{MaxRecvDataSegmentLength: 8192}, nil)
	in := dialInit(t, ts.addr)
	in.login(ts.name, defaultOpKeys())
	var h bhs
	h[0] = opNopOut | flagImmediate
	h[1] = flagFinal
	h.putU32(16, in.nextITT())
	h.putU32(20, reservedTag)
	h.setDataLen(1 << 20)
	in.nc.Write(h[:]) // header only: the target must not wait for 1 MiB
	r, _, err := in.tryRecv(5 * time.Second)
	must(t, err == nil && r.opcode() == opReject && r[2] == rejectProtocolError, "got %#x err %v", r.opcode(), err)
	in.expectClosed()
}

func TestTruncatedPDU(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	in := dialInit(t, ts.addr)
	in.login(ts.name, defaultOpKeys())
	h := in.scsiCmdHeader(write10(0, 8), false, true, 4096, true)
	h.setDataLen(4096)
	in.nc.Write(h[:])
	in.nc.Write(make([]byte, 100))
	in.nc.(*net.TCPConn).CloseWrite()
	in.expectClosed()
	must(t, len(ts.lu.commands()) == 0, "truncated command executed")
}

func TestUnknownOpcodeRejected(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	in := dialInit(t, ts.addr)
	in.login(ts.name, defaultOpKeys())
	var h bhs
	h[0] = 0x1c | flagImmediate
	h[1] = flagFinal
	h.putU32(16, 0xabc)
	in.send(&h, []byte("junk"))
	r, d := in.recv()
	must(t, r.opcode() == opReject && r[2] == rejectCmdNotSupported, "got %#x reason %#x", r.opcode(), r[2])
	must(t, len(d) == 48 && d[0]&0x3f == 0x1c, "reject data %x", d)
	in.nop(nil) // still usable

	h[0] = opSNACKReq
	in.send(&h, nil)
	r, _ = in.recv()
	must(t, r.opcode() == opReject && r[2] == rejectSNACK, "SNACK: %#x %#x", r.opcode(), r[2])
}

func TestCmdSNWindow(t *testing.T) {
	ts := startServer(t, Config{CmdWindow: 4}, nil)
	in := dialInit(t, ts.addr)
	in.login(ts.name, defaultOpKeys())
	r := in.nop(nil)
	exp, maxSN := r.u32(28), r.u32(32)
	must(t, maxSN == exp+3, "window: exp %d max %d", exp, maxSN)

	// CmdSN beyond MaxCmdSN and below ExpCmdSN are dropped silently.
	for _, sn := range []uint32{maxSN + 1, exp - 1} {
		h := in.scsiCmdHeader([]byte{0}, false, false, 0, true)
		h.putU32(24, sn)
		in.cmdSN--
		in.send(&h, nil)
		if r, _, err := in.tryRecv(300 * time.Millisecond); err == nil {
			t.Fatalf("CmdSN %d answered by %#x", sn, r.opcode())
		}
	}
	// A blocked command holds a slot: MaxCmdSN stays put until it ends.
	h := in.scsiCmdHeader([]byte{0xc0}, false, false, 0, true)
	in.send(&h, nil)
	<-ts.lu.entered
	r = in.nop(nil)
	must(t, r.u32(28) == exp+1 && r.u32(32) == maxSN, "while blocked: exp %d max %d", r.u32(28), r.u32(32))
	ts.lu.block <- struct{}{}
	rr, _ := in.recv()
	must(t, rr.opcode() == opSCSIResp && rr.u32(32) == maxSN+1, "after: opcode %#x max %d", rr.opcode(), rr.u32(32))
	in.nop(nil)
}

func TestLogicalUnitPanicFailsOnlyTheCommand(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	in := dialInit(t, ts.addr)
	in.login(ts.name, defaultOpKeys())
	res := in.do([]byte{0xc1}, false, nil, 0, 0)
	must(t, res.status == 2 && len(res.sense) >= 14 && res.sense[2] == 4, "status %#x sense %x", res.status, res.sense)
	in.nop(nil)
}

func TestPipelinedCommands(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	in := dialInit(t, ts.addr)
	in.login(ts.name, defaultOpKeys())
	// A blocked command must not hold up later ones.
	hb := in.scsiCmdHeader([]byte{0xc0}, false, false, 0, true)
	in.send(&hb, nil)
	<-ts.lu.entered
	const n = 16
	itts := map[uint32]bool{}
	for j := 0; j < n; j++ {
		h := in.scsiCmdHeader(read10(uint32(j), 1), true, false, 512, true)
		itts[h.itt()] = true
		in.send(&h, nil)
	}
	for j := 0; j < n; j++ {
		r, _ := in.recv()
		must(t, r.opcode() == opDataIn && itts[r.itt()], "opcode %#x itt %#x", r.opcode(), r.itt())
		delete(itts, r.itt())
	}
	ts.lu.block <- struct{}{}
	r, _ := in.recv()
	must(t, r.opcode() == opSCSIResp && r.itt() == hb.itt(), "blocked command response")
}

func tmfReq(in *testInit, fn byte, rtt, refCmdSN uint32, lun byte) bhs {
	var h bhs
	h[0] = opTaskMgmtReq | flagImmediate
	h[1] = flagFinal | fn
	h[9] = lun
	h.putU32(16, in.nextITT())
	h.putU32(20, rtt)
	h.putU32(24, in.cmdSN)
	h.putU32(28, in.expStatSN)
	h.putU32(32, refCmdSN)
	return h
}

func TestTaskManagement(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	in := dialInit(t, ts.addr)
	o := defaultOpKeys()
	o.initialR2T, o.immediate = "Yes", "No"
	in.login(ts.name, o)

	// ABORT TASK on a write waiting for its data.
	w := in.scsiCmdHeader(write10(0, 8), false, true, 4096, true)
	in.send(&w, nil)
	r, _ := in.recv()
	must(t, r.opcode() == opR2T, "opcode %#x", r.opcode())
	h := tmfReq(in, tmfAbortTask, w.itt(), w.u32(24), 0)
	in.send(&h, nil)
	r, _ = in.recv()
	must(t, r.opcode() == opTaskMgmtRsp && r[2] == tmfRespComplete, "abort: %#x resp %d", r.opcode(), r[2])
	// Data for the aborted task is ignored.
	in.answerR2T(r2tFor(w.itt(), 0, 4096), make([]byte, 4096))

	// ABORT TASK for a finished task: task does not exist.
	res := in.do([]byte{0}, false, nil, 0, 0)
	must(t, res.status == 0, "TUR %#x", res.status)
	h = tmfReq(in, tmfAbortTask, 0xdead, in.cmdSN-1, 0)
	in.send(&h, nil)
	r, _ = in.recv()
	must(t, r[2] == tmfRespNoTask, "abort missing: resp %d", r[2])

	// ABORT TASK on a running command: the response comes after the
	// command finishes, and the command's own response is suppressed.
	b := in.scsiCmdHeader([]byte{0xc0}, false, false, 0, true)
	in.send(&b, nil)
	<-ts.lu.entered
	h = tmfReq(in, tmfAbortTask, b.itt(), b.u32(24), 0)
	in.send(&h, nil)
	if r, _, err := in.tryRecv(200 * time.Millisecond); err == nil {
		t.Fatalf("TMF answered (%#x) before the running task ended", r.opcode())
	}
	ts.lu.block <- struct{}{}
	r, _ = in.recv()
	must(t, r.opcode() == opTaskMgmtRsp && r[2] == tmfRespComplete, "abort running: %#x %d", r.opcode(), r[2])
	in.nop(nil) // no stray SCSI Response in between

	// LUN RESET, TARGET WARM RESET reach the logical unit; other LUNs do
	// not exist; unsupported functions say so.
	for _, c := range []struct {
		fn   byte
		lun  byte
		resp byte
	}{
		{tmfLUNReset, 0, tmfRespComplete},
		{tmfTargetWarmReset, 0, tmfRespComplete},
		{tmfAbortTaskSet, 0, tmfRespComplete},
		{tmfClearTaskSet, 0, tmfRespComplete},
		{tmfLUNReset, 3, tmfRespNoLUN},
		{tmfClearACA, 0, tmfRespNotSupported},
		{tmfTaskReassign, 0, tmfRespNoReassign},
		{0x55, 0, tmfRespRejected},
	} {
		h = tmfReq(in, c.fn, reservedTag, in.cmdSN, c.lun)
		in.send(&h, nil)
		r, _ = in.recv()
		must(t, r.opcode() == opTaskMgmtRsp && r[2] == c.resp, "fn %d: resp %d want %d", c.fn, r[2], c.resp)
	}
	ts.lu.mu.Lock()
	resets := append([]ResetKind(nil), ts.lu.resets...)
	ts.lu.mu.Unlock()
	must(t, len(resets) == 4 && resets[0] == ResetLogicalUnit && resets[1] == ResetTargetWarm,
		"resets %v", resets)

	// LUN RESET aborts a blocked command of another session too.
	other := dialInit(t, ts.addr)
	other.isid[5] = 0x42
	other.login(ts.name, defaultOpKeys())
	ob := other.scsiCmdHeader([]byte{0xc0}, false, false, 0, true)
	other.send(&ob, nil)
	<-ts.lu.entered
	h = tmfReq(in, tmfLUNReset, reservedTag, in.cmdSN, 0)
	in.send(&h, nil)
	go func() {
		time.Sleep(100 * time.Millisecond)
		ts.lu.block <- struct{}{}
	}()
	r, _ = in.recv()
	must(t, r[2] == tmfRespComplete, "lun reset: %d", r[2])
	other.nop(nil) // the aborted command sent no response

	// ... and a write of another session still waiting for its data: the
	// late Data-Out is dropped and that session keeps working.
	ow := other.scsiCmdHeader(write10(0, 64), false, true, 32768, true)
	other.send(&ow, nil)
	r2t, _ := other.recv()
	must(t, r2t.opcode() == opR2T, "opcode %#x", r2t.opcode())
	h = tmfReq(in, tmfLUNReset, reservedTag, in.cmdSN, 0)
	in.send(&h, nil)
	r, _ = in.recv()
	must(t, r[2] == tmfRespComplete, "lun reset 2: %d", r[2])
	other.answerR2T(r2t, make([]byte, 32768))
	other.nop(nil)
	res = other.do(read10(0, 1), true, nil, 512, 0)
	must(t, res.status == 0, "read after reset: %#x", res.status)
}

func r2tFor(itt, off, n uint32) bhs {
	var r bhs
	r[0] = opR2T
	r.putU32(16, itt)
	r.putU32(20, 0x7fff0000)
	r.putU32(40, off)
	r.putU32(44, n)
	return r
}

func TestLogoutWaitsForCommands(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	in := dialInit(t, ts.addr)
	in.login(ts.name, defaultOpKeys())
	b := in.scsiCmdHeader([]byte{0xc0}, false, false, 0, true)
	in.send(&b, nil)
	<-ts.lu.entered
	var h bhs
	h[0] = opLogoutReq | flagImmediate
	h[1] = flagFinal | 1
	h.putU32(16, in.nextITT())
	in.send(&h, nil)
	go func() {
		time.Sleep(100 * time.Millisecond)
		ts.lu.block <- struct{}{}
	}()
	r, _ := in.recv()
	must(t, r.opcode() == opSCSIResp && r.itt() == b.itt(), "first the command response, got %#x", r.opcode())
	r, _ = in.recv()
	must(t, r.opcode() == opLogoutRsp && r[2] == 0, "logout %#x %d", r.opcode(), r[2])
	in.expectClosed()

	// Logout for connection recovery is not supported at ERL 0.
	in = dialInit(t, ts.addr)
	in.login(ts.name, defaultOpKeys())
	r = in.logout(2)
	must(t, r[2] == 2, "recovery logout response %d", r[2])
	in.nop(nil)
}

func TestManySessionsConcurrent(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	t.Run("group", func(t *testing.T) {
		for s := 0; s < 8; s++ {
			t.Run("session", func(t *testing.T) {
				t.Parallel()
				in := dialInit(t, ts.addr)
				in.isid[5] = byte(s)
				in.login(ts.name, defaultOpKeys())
				data := pattern(8192, byte(s))
				lba := uint32(s * 16)
				for k := 0; k < 20; k++ {
					in.do(write10(lba, 16), false, data, 8192, 8192)
					rd := in.do(read10(lba, 16), true, nil, 8192, 0)
					must(t, bytes.Equal(rd.dataIn, data), "session %d: data mismatch", s)
				}
				in.logout(0)
			})
		}
	})
}

func TestKeepaliveNopIn(t *testing.T) {
	ts := startServer(t, Config{NopInInterval: 100 * time.Millisecond, NopInTimeout: 300 * time.Millisecond}, nil)
	in := dialInit(t, ts.addr)
	in.login(ts.name, defaultOpKeys())
	for k := 0; k < 2; k++ {
		r, _ := in.recv()
		must(t, r.opcode() == opNopIn && r.itt() == reservedTag && r.u32(20) != reservedTag,
			"ping %d: opcode %#x itt %#x ttt %#x", k, r.opcode(), r.itt(), r.u32(20))
		var h bhs
		h[0] = opNopOut | flagImmediate
		h[1] = flagFinal
		h.putU32(16, reservedTag)
		h.putU32(20, r.u32(20))
		h.putU32(24, in.cmdSN)
		in.send(&h, nil)
	}
	// Now stay silent: the target must give up on us.
	r, _ := in.recv()
	must(t, r.opcode() == opNopIn, "third ping: %#x", r.opcode())
	start := time.Now()
	in.expectClosed()
	must(t, time.Since(start) < 3*time.Second, "closed after %v", time.Since(start))
}

func TestWriteTimeoutDisconnectsStuckInitiator(t *testing.T) {
	ts := startServer(t, Config{WriteTimeout: 200 * time.Millisecond, MaxRecvDataSegmentLength: 1 << 20}, nil)
	in := dialInit(t, ts.addr)
	in.login(ts.name, defaultOpKeys())
	in.nc.(*net.TCPConn).SetReadBuffer(4096)
	// Ask for far more read data than the socket buffers hold, never read.
	for k := 0; k < 64; k++ {
		h := in.scsiCmdHeader(read10(0, 2048), true, false, 1<<20, true)
		if err := in.raw(&h, nil); err != nil {
			break
		}
	}
	// The target gives up on the connection and ends the session.
	for k := 0; ; k++ {
		ts.srv.mu.Lock()
		n := len(ts.srv.sessions)
		ts.srv.mu.Unlock()
		if n == 0 {
			break
		}
		must(t, k < 500, "stuck connection still open after 5 s")
		time.Sleep(10 * time.Millisecond)
	}
}

// A response large enough to be sent in several writev calls, after the
// connection sat idle for longer than the write timeout, must not run into
// a deadline armed for an earlier batch.
func TestLargeReadAfterIdle(t *testing.T) {
	ts := startServer(t, Config{WriteTimeout: 150 * time.Millisecond}, nil)
	in := dialInit(t, ts.addr)
	in.login(ts.name, defaultOpKeys())
	data := pattern(1<<20, 9)
	copy(ts.lu.data, data)
	in.nop(nil)
	time.Sleep(400 * time.Millisecond)
	res := in.do(read10(0, 2048), true, nil, 1<<20, 0)
	must(t, res.status == 0 && bytes.Equal(res.dataIn, data), "read after idle: status %#x, %d bytes", res.status, len(res.dataIn))
	in.nop(nil)
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(Config{NopInInterval: 50 * time.Millisecond, LoginTimeout: time.Second})
	lu := newMemLU(64)
	if err := srv.AddTarget(Target{Name: IQN("leak"), LU: lu}); err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { srv.Serve(l); close(served) }()
	// A session with a running command, one mid-login, one with a write
	// waiting for data.
	a := dialInit(t, l.Addr().String())
	a.login(IQN("leak"), defaultOpKeys())
	h := a.scsiCmdHeader([]byte{0xc0}, false, false, 0, true)
	a.send(&h, nil)
	<-lu.entered
	b := dialInit(t, l.Addr().String())
	b.nc.Write([]byte{0x43, 0x81})
	c := dialInit(t, l.Addr().String())
	c.isid[5] = 9
	o := defaultOpKeys()
	o.initialR2T, o.immediate = "Yes", "No"
	c.login(IQN("leak"), o)
	w := c.scsiCmdHeader(write10(0, 8), false, true, 4096, true)
	c.send(&w, nil)
	c.recv() // R2T

	closed := make(chan struct{})
	go func() { srv.Close(); close(closed) }()
	time.Sleep(50 * time.Millisecond)
	lu.block <- struct{}{} // Close waits for the running command
	<-closed
	<-served
	a.nc.Close()
	b.nc.Close()
	c.nc.Close()
	for k := 0; ; k++ {
		n := runtime.NumGoroutine()
		if n <= before+1 {
			break
		}
		if k > 200 {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines after Close, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

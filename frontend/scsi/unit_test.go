package scsi

import (
	"encoding/binary"
	"testing"
)

var tur = []byte{opTestUnitReady, 0, 0, 0, 0, 0}

func TestUnitAttentionAfterReset(t *testing.T) {
	for _, c := range []struct {
		kind ResetKind
		asc  byte
		ascq byte
	}{{ResetLUN, 0x29, 0x03}, {ResetTargetWarm, 0x29, 0x02}, {ResetTargetCold, 0x29, 0x01}} {
		lu, _ := newTestLU(t, 10, Options{})
		mustGood(t, lu, nexusA, tur, nil)
		mustGood(t, lu, nexusB, tur, nil)
		lu.Reset(c.kind, nexusA)
		mustGood(t, lu, nexusA, tur, nil) // the issuer gets none
		// INQUIRY and REPORT LUNS do not report or clear it.
		mustGood(t, lu, nexusB, inq(false, 0, 96), nil)
		wantSense(t, run(lu, nexusB, tur, nil), SenseUnitAttention, c.asc, c.ascq)
		mustGood(t, lu, nexusB, tur, nil) // reported once
	}
	// REQUEST SENSE returns and clears a unit attention.
	lu, _ := newTestLU(t, 10, Options{})
	mustGood(t, lu, nexusB, tur, nil)
	lu.Reset(ResetLUN, nexusA)
	d := mustGood(t, lu, nexusB, []byte{opRequestSense, 0, 0, 0, 252, 0}, nil)
	if d[2]&0x0F != SenseUnitAttention || d[12] != 0x29 || d[13] != 0x03 {
		t.Fatalf("REQUEST SENSE % x", d)
	}
	d = mustGood(t, lu, nexusB, []byte{opRequestSense, 0, 0, 0, 252, 0}, nil)
	if d[0] != 0x70 || d[2] != 0 || d[12] != 0 {
		t.Fatalf("REQUEST SENSE after clearing % x", d)
	}
	wantSense(t, run(lu, nexusB, []byte{opRequestSense, 1, 0, 0, 252, 0}, nil), SenseIllegalRequest, 0x24, 0x00)
}

func TestResetAndNexusLossReleaseReserve6(t *testing.T) {
	lu, _ := newTestLU(t, 10, Options{})
	reserve := []byte{opReserve6, 0, 0, 0, 0, 0}
	release := []byte{opRelease6, 0, 0, 0, 0, 0}
	mustGood(t, lu, nexusA, reserve, nil)
	mustGood(t, lu, nexusA, reserve, nil)
	wantStatus(t, run(lu, nexusB, reserve, nil), StatusReservationConflict)
	mustGood(t, lu, nexusB, release, nil) // no-op
	wantStatus(t, run(lu, nexusB, cdb10(opRead10, 0, 0, 1), nil), StatusReservationConflict)
	wantStatus(t, run(lu, nexusB, []byte{opModeSense6, 0, 0x3F, 0, 255, 0}, nil), StatusReservationConflict)
	mustGood(t, lu, nexusB, inq(false, 0, 96), nil)
	mustGood(t, lu, nexusA, cdb10(opRead10, 0, 0, 1), nil)
	lu.NexusLost(nexusA)
	mustGood(t, lu, nexusB, cdb10(opRead10, 0, 0, 1), nil)
	mustGood(t, lu, nexusB, reserve, nil)
	lu.Reset(ResetLUN, nexusA)
	wantSense(t, run(lu, nexusB, tur, nil), SenseUnitAttention, 0x29, 0x03)
	mustGood(t, lu, nexusA, reserve, nil)
	mustGood(t, lu, nexusA, release, nil)
	wantSense(t, run(lu, nexusA, []byte{opReserve6, 1, 0, 0, 0, 0}, nil), SenseIllegalRequest, 0x24, 0x00)
}

func TestReportLUNs(t *testing.T) {
	lu, _ := newTestLU(t, 10, Options{LUN: 300})
	c := []byte{opReportLUNs, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0}
	r := lu.Execute(&Command{Nexus: nexusA, LUN: 300, CDB: c})
	wantStatus(t, r, StatusGood)
	if binary.BigEndian.Uint32(r.DataIn) != 8 || len(r.DataIn) != 16 || r.DataIn[8] != 0x41 || r.DataIn[9] != 0x2C {
		t.Fatalf("REPORT LUNS % x", r.DataIn)
	}
	c[9] = 15
	wantSense(t, lu.Execute(&Command{Nexus: nexusA, LUN: 300, CDB: c}), SenseIllegalRequest, 0x24, 0x00)
	c[9], c[2] = 64, 0x07
	wantSense(t, lu.Execute(&Command{Nexus: nexusA, LUN: 300, CDB: c}), SenseIllegalRequest, 0x24, 0x00)
}

func TestStartStopAndPreventAllow(t *testing.T) {
	lu, _ := newTestLU(t, 10, Options{})
	mustGood(t, lu, nexusA, []byte{opStartStopUnit, 0, 0, 0, 0x01, 0}, nil)
	mustGood(t, lu, nexusA, []byte{opStartStopUnit, 1, 0, 0, 0x00, 0}, nil)
	// LOEJ on a non-removable medium fails.
	wantSense(t, run(lu, nexusA, []byte{opStartStopUnit, 1, 0, 0, 0x02, 0}, nil), SenseIllegalRequest, 0x24, 0x00)
	wantSense(t, run(lu, nexusA, []byte{opStartStopUnit, 0, 0, 0, 0x50, 0}, nil), SenseIllegalRequest, 0x24, 0x00)
	mustGood(t, lu, nexusA, []byte{opPreventAllow, 0, 0, 0, 1, 0}, nil)
	if !lu.nexuses[nexusA].prevent {
		t.Fatal("prevent not recorded")
	}
	lu.Reset(ResetTargetWarm, nexusB)
	if lu.nexuses[nexusA].prevent {
		t.Fatal("reset did not clear prevent")
	}
	wantSense(t, run(lu, nexusA, tur, nil), SenseUnitAttention, 0x29, 0x02)
	mustGood(t, lu, nexusA, []byte{opPreventAllow, 0, 0, 0, 0, 0}, nil)
	wantSense(t, run(lu, nexusA, []byte{opPreventAllow, 0, 0, 0, 2, 0}, nil), SenseIllegalRequest, 0x24, 0x00)
}

func TestUnsupportedAndShortCDBs(t *testing.T) {
	lu, _ := newTestLU(t, 10, Options{})
	wantSense(t, run(lu, nexusA, []byte{0xC5, 0, 0, 0, 0, 0}, nil), SenseIllegalRequest, 0x20, 0x00)
	wantSense(t, run(lu, nexusA, nil, nil), SenseIllegalRequest, 0x20, 0x00)
	wantSense(t, run(lu, nexusA, []byte{opRead16, 0, 0}, nil), SenseIllegalRequest, 0x24, 0x00)
	wantSense(t, run(lu, nexusA, []byte{opServiceActionIn16}, nil), SenseIllegalRequest, 0x24, 0x00)
	wantSense(t, run(lu, nexusA, []byte{opMaintenanceIn, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil), SenseIllegalRequest, 0x24, 0x00)
	if r := lu.Execute(nil); r.Status != StatusCheckCondition {
		t.Fatal("nil command accepted")
	}
}

func rsoc(options byte, rctd bool, op byte, sa uint16, alloc uint32) []byte {
	c := make([]byte, 12)
	c[0], c[1], c[2], c[3] = opMaintenanceIn, saReportOpcodes, options, op
	if rctd {
		c[2] |= 0x80
	}
	binary.BigEndian.PutUint16(c[4:], sa)
	binary.BigEndian.PutUint32(c[6:], alloc)
	return c
}

func TestReportSupportedOpcodes(t *testing.T) {
	lu, _ := newTestLU(t, 10, Options{})
	for _, rctd := range []bool{false, true} {
		d := mustGood(t, lu, nexusA, rsoc(0, rctd, 0, 0, 65536), nil)
		n := int(binary.BigEndian.Uint32(d))
		if n+4 != len(d) {
			t.Fatalf("command data length %d for %d bytes", n, len(d))
		}
		size := 8
		if rctd {
			size = 20
		}
		if n%size != 0 || n/size != len(lu.ordered) {
			t.Fatalf("rctd=%v: %d bytes of descriptors for %d commands", rctd, n, len(lu.ordered))
		}
		for p := d[4:]; len(p) > 0; p = p[size:] {
			info := lu.commands[key(p[0], binary.BigEndian.Uint16(p[2:]))]
			if info == nil || int(binary.BigEndian.Uint16(p[6:])) != info.cdbLen || (p[5]&1 != 0) != info.hasSA || (p[5]&2 != 0) != rctd {
				t.Fatalf("descriptor % x", p[:8])
			}
			if rctd && binary.BigEndian.Uint16(p[8:]) != 0x0A {
				t.Fatalf("timeouts descriptor % x", p[8:20])
			}
		}
	}
	// One command: usage data is as long as the CDB and starts with the opcode.
	for _, info := range lu.ordered {
		opt := byte(1)
		if info.hasSA {
			opt = 2
		}
		d := mustGood(t, lu, nexusA, rsoc(opt, false, info.op, info.sa, 512), nil)
		if d[1]&0x07 != 3 || int(binary.BigEndian.Uint16(d[2:])) != info.cdbLen || len(d) != 4+info.cdbLen || d[4] != info.op {
			t.Fatalf("%s: one-command data % x", info.name, d)
		}
		if info.hasSA && d[5]&0x1F != byte(info.sa) {
			t.Fatalf("%s: service action not in usage data", info.name)
		}
	}
	d := mustGood(t, lu, nexusA, rsoc(1, true, opRead10, 0, 512), nil)
	if d[1]&0x80 == 0 || len(d) != 4+10+12 {
		t.Fatalf("CTDP one-command % x", d)
	}
	d = mustGood(t, lu, nexusA, rsoc(1, false, 0xC5, 0, 512), nil)
	if d[1]&0x07 != 1 {
		t.Fatalf("unsupported opcode reported % x", d)
	}
	wantSense(t, run(lu, nexusA, rsoc(1, false, opServiceActionIn16, 0, 512), nil), SenseIllegalRequest, 0x24, 0x00)
	wantSense(t, run(lu, nexusA, rsoc(2, false, opRead10, 0, 512), nil), SenseIllegalRequest, 0x24, 0x00)
	wantSense(t, run(lu, nexusA, rsoc(7, false, 0, 0, 512), nil), SenseIllegalRequest, 0x24, 0x00)
	if d = mustGood(t, lu, nexusA, rsoc(0, false, 0, 0, 10), nil); len(d) != 10 {
		t.Fatalf("allocation length ignored: %d", len(d))
	}

	tmf := []byte{opMaintenanceIn, saReportTMFs, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0}
	d = mustGood(t, lu, nexusA, tmf, nil)
	if len(d) != 4 || d[0]&0x08 == 0 || d[0]&0x80 == 0 {
		t.Fatalf("TMF data % x", d)
	}
	tmf[9] = 3
	wantSense(t, run(lu, nexusA, tmf, nil), SenseIllegalRequest, 0x24, 0x00)
}

package scsi

import (
	"encoding/binary"
	"testing"
)

func prOut(t *testing.T, lu *LogicalUnit, n Nexus, sa, typ byte, resKey, saKey uint64) *Response {
	t.Helper()
	c := []byte{opPersistResOut, sa, typ, 0, 0, 0, 0, 0, 24, 0}
	p := make([]byte, 24)
	binary.BigEndian.PutUint64(p[0:], resKey)
	binary.BigEndian.PutUint64(p[8:], saKey)
	return run(lu, n, c, p)
}

// observer reads PR state without disturbing the unit attentions of the
// nexuses under test.
var observer = Nexus{InitiatorPort: "iqn.2026-11.test:observer,i,0x1", TargetPort: "t", RelativeTargetPortID: 1}

func prIn(t *testing.T, lu *LogicalUnit, n Nexus, sa byte) []byte {
	t.Helper()
	if n == observer {
		for {
			if _, ok := lu.popUA(observer); !ok {
				break
			}
		}
	}
	return mustGood(t, lu, n, []byte{opPersistResIn, sa, 0, 0, 0, 0, 0, 0x10, 0, 0}, nil)
}

func readKeys(t *testing.T, lu *LogicalUnit) (gen uint32, keys []uint64) {
	t.Helper()
	d := prIn(t, lu, observer, prInReadKeys)
	n := binary.BigEndian.Uint32(d[4:])
	if int(n)+8 != len(d) || n%8 != 0 {
		t.Fatalf("READ KEYS length %d for %d bytes", n, len(d))
	}
	for p := d[8:]; len(p) > 0; p = p[8:] {
		keys = append(keys, binary.BigEndian.Uint64(p))
	}
	return binary.BigEndian.Uint32(d), keys
}

// reservation returns (key, type) of the current reservation, type 0 if none.
func reservation(t *testing.T, lu *LogicalUnit) (uint64, byte) {
	t.Helper()
	d := prIn(t, lu, observer, prInReadReservation)
	switch binary.BigEndian.Uint32(d[4:]) {
	case 0:
		return 0, 0
	case 16:
		return binary.BigEndian.Uint64(d[8:]), d[21] & 0x0F
	}
	t.Fatalf("READ RESERVATION % x", d)
	return 0, 0
}

func good(t *testing.T, r *Response) {
	t.Helper()
	wantStatus(t, r, StatusGood)
}

func conflict(t *testing.T, r *Response) {
	t.Helper()
	wantStatus(t, r, StatusReservationConflict)
}

func TestPRRegister(t *testing.T) {
	lu, _ := newTestLU(t, 10, Options{})
	good(t, prOut(t, lu, nexusA, prOutRegister, 0, 0, 0xA))
	good(t, prOut(t, lu, nexusB, prOutRegister, 0, 0, 0xB))
	if gen, keys := readKeys(t, lu); gen != 2 || len(keys) != 2 || keys[0] != 0xA || keys[1] != 0xB {
		t.Fatalf("gen %d keys %x", gen, keys)
	}
	// Unregistered nexus with a non-zero reservation key: conflict.
	conflict(t, prOut(t, lu, nexusC, prOutRegister, 0, 5, 0xC))
	// Registered nexus with the wrong key: conflict; REGISTER AND IGNORE works.
	conflict(t, prOut(t, lu, nexusA, prOutRegister, 0, 0x99, 0xAA))
	good(t, prOut(t, lu, nexusA, prOutRegisterIgnore, 0, 0x99, 0xAA))
	good(t, prOut(t, lu, nexusA, prOutRegister, 0, 0xAA, 0xA))
	// Unregister.
	good(t, prOut(t, lu, nexusB, prOutRegister, 0, 0xB, 0))
	if _, keys := readKeys(t, lu); len(keys) != 1 || keys[0] != 0xA {
		t.Fatalf("keys %x", keys)
	}
	// Unregistered nexus registering key 0: no-op.
	good(t, prOut(t, lu, nexusC, prOutRegister, 0, 0, 0))
	// APTPL, ALL_TG_PT, SPEC_I_PT are not supported.
	for _, f := range []byte{0x01, 0x04, 0x08} {
		p := make([]byte, 24)
		binary.BigEndian.PutUint64(p[8:], 7)
		p[20] = f
		wantSense(t, run(lu, nexusC, []byte{opPersistResOut, prOutRegister, 0, 0, 0, 0, 0, 0, 24, 0}, p), SenseIllegalRequest, 0x26, 0x00)
	}
	// Parameter list length must be 24.
	wantSense(t, run(lu, nexusC, []byte{opPersistResOut, prOutRegister, 0, 0, 0, 0, 0, 0, 20, 0}, make([]byte, 24)), SenseIllegalRequest, 0x1A, 0x00)
	wantSense(t, run(lu, nexusC, []byte{opPersistResOut, prOutRegister, 0, 0, 0, 0, 0, 0, 24, 0}, make([]byte, 10)), SenseIllegalRequest, 0x1A, 0x00)
	// Unsupported service actions.
	wantSense(t, prOut(t, lu, nexusA, 0x07, 0, 0xA, 0), SenseIllegalRequest, 0x24, 0x00)
	wantSense(t, run(lu, nexusA, []byte{opPersistResIn, 0x05, 0, 0, 0, 0, 0, 0x10, 0, 0}, nil), SenseIllegalRequest, 0x24, 0x00)
}

func TestPRReserveRelease(t *testing.T) {
	lu, _ := newTestLU(t, 10, Options{})
	// Not registered: conflict.
	conflict(t, prOut(t, lu, nexusA, prOutReserve, prTypeWE, 0xA, 0))
	good(t, prOut(t, lu, nexusA, prOutRegister, 0, 0, 0xA))
	good(t, prOut(t, lu, nexusB, prOutRegister, 0, 0, 0xB))
	conflict(t, prOut(t, lu, nexusA, prOutReserve, prTypeWE, 0xB, 0))
	wantSense(t, prOut(t, lu, nexusA, prOutReserve, 0x2, 0xA, 0), SenseIllegalRequest, 0x24, 0x00)
	wantSense(t, prOut(t, lu, nexusA, prOutReserve, 0x10|prTypeWE, 0xA, 0), SenseIllegalRequest, 0x24, 0x00)
	good(t, prOut(t, lu, nexusA, prOutReserve, prTypeWERO, 0xA, 0))
	good(t, prOut(t, lu, nexusA, prOutReserve, prTypeWERO, 0xA, 0)) // same again
	conflict(t, prOut(t, lu, nexusA, prOutReserve, prTypeEA, 0xA, 0))
	conflict(t, prOut(t, lu, nexusB, prOutReserve, prTypeWERO, 0xB, 0))
	if k, typ := reservation(t, lu); k != 0xA || typ != prTypeWERO {
		t.Fatalf("reservation %x type %d", k, typ)
	}
	gen, _ := readKeys(t, lu)
	// RESERVE(6) is refused while persistent reservations exist.
	conflict(t, run(lu, nexusB, []byte{opReserve6, 0, 0, 0, 0, 0}, nil))
	// Release by a non-holder: no-op. Wrong type: INVALID RELEASE.
	good(t, prOut(t, lu, nexusB, prOutRelease, prTypeWERO, 0xB, 0))
	wantSense(t, prOut(t, lu, nexusA, prOutRelease, prTypeWE, 0xA, 0), SenseIllegalRequest, 0x26, 0x04)
	good(t, prOut(t, lu, nexusA, prOutRelease, prTypeWERO, 0xA, 0))
	if _, typ := reservation(t, lu); typ != 0 {
		t.Fatal("not released")
	}
	if g, _ := readKeys(t, lu); g != gen {
		t.Fatal("RESERVE/RELEASE changed the generation")
	}
	// Releasing a registrants-only reservation tells the other registrants.
	wantSense(t, run(lu, nexusB, tur, nil), SenseUnitAttention, 0x2A, 0x04)
	good(t, prOut(t, lu, nexusA, prOutRelease, prTypeWERO, 0xA, 0)) // nothing to release

	// Unregistering the holder of an RO reservation releases it.
	good(t, prOut(t, lu, nexusA, prOutReserve, prTypeEARO, 0xA, 0))
	good(t, prOut(t, lu, nexusA, prOutRegister, 0, 0xA, 0))
	if _, typ := reservation(t, lu); typ != 0 {
		t.Fatal("unregistering the holder did not release")
	}
	wantSense(t, run(lu, nexusB, tur, nil), SenseUnitAttention, 0x2A, 0x04)

	// All-registrants: survives the reserver unregistering.
	good(t, prOut(t, lu, nexusA, prOutRegister, 0, 0, 0xA))
	good(t, prOut(t, lu, nexusA, prOutReserve, prTypeWEAR, 0xA, 0))
	good(t, prOut(t, lu, nexusB, prOutReserve, prTypeWEAR, 0xB, 0)) // B is a holder too
	if k, typ := reservation(t, lu); k != 0 || typ != prTypeWEAR {
		t.Fatalf("AR reservation key %x type %d", k, typ)
	}
	good(t, prOut(t, lu, nexusA, prOutRegister, 0, 0xA, 0))
	if _, typ := reservation(t, lu); typ != prTypeWEAR {
		t.Fatal("AR reservation lost with a registrant left")
	}
	good(t, prOut(t, lu, nexusB, prOutRegister, 0, 0xB, 0))
	if _, typ := reservation(t, lu); typ != 0 {
		t.Fatal("AR reservation kept without registrants")
	}
}

// TestPRAccess checks SPC-4 table 5.13 for every reservation type: what
// the holder, a registered non-holder and an unregistered nexus may do.
func TestPRAccess(t *testing.T) {
	read := cdb10(opRead10, 0, 0, 1)
	write := cdb10(opWrite10, 0, 0, 1)
	cases := []struct {
		typ                   byte
		regRead, regWrite     bool
		unregRead, unregWrite bool
	}{
		{prTypeWE, true, false, true, false},
		{prTypeEA, false, false, false, false},
		{prTypeWERO, true, true, true, false},
		{prTypeEARO, true, true, false, false},
		{prTypeWEAR, true, true, true, false},
		{prTypeEAAR, true, true, false, false},
	}
	for _, c := range cases {
		lu, _ := newTestLU(t, 10, Options{})
		good(t, prOut(t, lu, nexusA, prOutRegister, 0, 0, 0xA))
		good(t, prOut(t, lu, nexusB, prOutRegister, 0, 0, 0xB))
		good(t, prOut(t, lu, nexusA, prOutReserve, c.typ, 0xA, 0))
		check := func(n Nexus, cdb []byte, allowed bool) {
			t.Helper()
			r := run(lu, n, cdb, fill(testBS, 1))
			if allowed != (r.Status == StatusGood) || (!allowed && r.Status != StatusReservationConflict) {
				t.Fatalf("type %d nexus %s op %#x: status %#x, allowed=%v", c.typ, n.InitiatorPort, cdb[0], r.Status, allowed)
			}
		}
		check(nexusA, read, true)
		check(nexusA, write, true)
		check(nexusB, read, c.regRead)
		check(nexusB, write, c.regWrite)
		check(nexusC, read, c.unregRead)
		check(nexusC, write, c.unregWrite)
		// Always allowed.
		for _, n := range []Nexus{nexusB, nexusC} {
			good(t, run(lu, n, inq(false, 0, 96), nil))
			good(t, run(lu, n, tur, nil))
			good(t, run(lu, n, cdb10(opReadCapacity10, 0, 0, 0), nil))
			good(t, run(lu, n, []byte{opPersistResIn, 0, 0, 0, 0, 0, 0, 0x10, 0, 0}, nil))
		}
		// Writes by the holder still work after unrelated traffic.
		check(nexusA, write, true)
	}
}

func TestPRClearAndPreempt(t *testing.T) {
	lu, _ := newTestLU(t, 10, Options{})
	good(t, prOut(t, lu, nexusA, prOutRegister, 0, 0, 0xA))
	good(t, prOut(t, lu, nexusB, prOutRegister, 0, 0, 0xB))
	good(t, prOut(t, lu, nexusA, prOutReserve, prTypeEA, 0xA, 0))
	conflict(t, prOut(t, lu, nexusC, prOutClear, 0, 0xC, 0))
	good(t, prOut(t, lu, nexusB, prOutClear, 0, 0xB, 0))
	if _, keys := readKeys(t, lu); len(keys) != 0 {
		t.Fatal("CLEAR left registrations")
	}
	if _, typ := reservation(t, lu); typ != 0 {
		t.Fatal("CLEAR left the reservation")
	}
	wantSense(t, run(lu, nexusA, tur, nil), SenseUnitAttention, 0x2A, 0x03)

	// PREEMPT the holder: B takes the reservation, A's registration is gone.
	good(t, prOut(t, lu, nexusA, prOutRegister, 0, 0, 0xA))
	good(t, prOut(t, lu, nexusB, prOutRegister, 0, 0, 0xB))
	good(t, prOut(t, lu, nexusC, prOutRegister, 0, 0, 0xC))
	good(t, prOut(t, lu, nexusA, prOutReserve, prTypeWE, 0xA, 0))
	gen, _ := readKeys(t, lu)
	good(t, prOut(t, lu, nexusB, prOutPreemptAbort, prTypeEA, 0xB, 0xA))
	if k, typ := reservation(t, lu); k != 0xB || typ != prTypeEA {
		t.Fatalf("after preempt: key %x type %d", k, typ)
	}
	if g, keys := readKeys(t, lu); g != gen+1 || len(keys) != 2 {
		t.Fatalf("after preempt: gen %d keys %x", g, keys)
	}
	wantSense(t, run(lu, nexusA, tur, nil), SenseUnitAttention, 0x2A, 0x05)
	// C stays registered but the reservation changed type.
	wantSense(t, run(lu, nexusC, tur, nil), SenseUnitAttention, 0x2A, 0x04)
	conflict(t, run(lu, nexusA, cdb10(opRead10, 0, 0, 1), nil))
	// Preempting a non-holder key removes only that registration.
	good(t, prOut(t, lu, nexusB, prOutPreempt, prTypeEA, 0xB, 0xC))
	if _, keys := readKeys(t, lu); len(keys) != 1 || keys[0] != 0xB {
		t.Fatalf("keys %x", keys)
	}
	// Preempting a key nobody has: conflict. Zero key with a holder: invalid.
	conflict(t, prOut(t, lu, nexusB, prOutPreempt, prTypeEA, 0xB, 0x77))
	good(t, prOut(t, lu, nexusA, prOutRegister, 0, 0, 0xA))
	wantSense(t, prOut(t, lu, nexusA, prOutPreempt, prTypeEA, 0xA, 0), SenseIllegalRequest, 0x26, 0x00)
	// Without a reservation, PREEMPT removes registrations.
	good(t, prOut(t, lu, nexusB, prOutRelease, prTypeEA, 0xB, 0))
	good(t, prOut(t, lu, nexusA, prOutPreempt, prTypeWE, 0xA, 0xB))
	if _, keys := readKeys(t, lu); len(keys) != 1 || keys[0] != 0xA {
		t.Fatalf("keys %x", keys)
	}
	wantSense(t, run(lu, nexusB, tur, nil), SenseUnitAttention, 0x2A, 0x05)
	// All-registrants with key 0: everybody else goes, new reservation.
	good(t, prOut(t, lu, nexusB, prOutRegister, 0, 0, 0xB))
	good(t, prOut(t, lu, nexusA, prOutReserve, prTypeEAAR, 0xA, 0))
	good(t, prOut(t, lu, nexusB, prOutPreempt, prTypeWE, 0xB, 0))
	if k, typ := reservation(t, lu); k != 0xB || typ != prTypeWE {
		t.Fatalf("after AR preempt: key %x type %d", k, typ)
	}
}

func TestPRInFormats(t *testing.T) {
	lu, _ := newTestLU(t, 10, Options{})
	d := prIn(t, lu, nexusA, prInReportCapabilities)
	if len(d) != 8 || binary.BigEndian.Uint16(d) != 8 || d[2]&0x0D != 0 || d[3]&0x80 == 0 || d[4] != 0xEA || d[5] != 0x01 {
		t.Fatalf("REPORT CAPABILITIES % x", d)
	}
	good(t, prOut(t, lu, nexusA, prOutRegister, 0, 0, 0xA))
	good(t, prOut(t, lu, nexusB, prOutRegister, 0, 0, 0xB))
	good(t, prOut(t, lu, nexusB, prOutReserve, prTypeWE, 0xB, 0))
	d = prIn(t, lu, nexusA, prInReadFullStatus)
	if int(binary.BigEndian.Uint32(d[4:]))+8 != len(d) {
		t.Fatalf("READ FULL STATUS length % x", d[:8])
	}
	p := d[8:]
	for i, want := range []struct {
		key    uint64
		holder bool
		port   string
	}{{0xA, false, nexusA.InitiatorPort}, {0xB, true, nexusB.InitiatorPort}} {
		if len(p) < 24 {
			t.Fatalf("descriptor %d truncated", i)
		}
		tidLen := int(binary.BigEndian.Uint32(p[20:]))
		tid := p[24 : 24+tidLen]
		if binary.BigEndian.Uint64(p) != want.key || (p[12]&1 != 0) != want.holder || binary.BigEndian.Uint16(p[18:]) != 1 {
			t.Fatalf("descriptor %d % x", i, p[:24])
		}
		if want.holder && p[13] != prTypeWE {
			t.Fatalf("holder type %d", p[13])
		}
		if tid[0] != 0x45 || int(binary.BigEndian.Uint16(tid[2:]))+4 != len(tid) || len(tid)%4 != 0 || string(tid[4:4+len(want.port)]) != want.port {
			t.Fatalf("TransportID % x", tid)
		}
		p = p[24+tidLen:]
	}
	// Allocation length truncates.
	d = mustGood(t, lu, nexusA, []byte{opPersistResIn, prInReadKeys, 0, 0, 0, 0, 0, 0, 12, 0}, nil)
	if len(d) != 12 || binary.BigEndian.Uint32(d[4:]) != 16 {
		t.Fatalf("truncated READ KEYS % x", d)
	}
	// Registrations survive nexus loss and resets.
	lu.NexusLost(nexusB)
	lu.Reset(ResetLUN, nexusA)
	if _, keys := readKeys(t, lu); len(keys) != 2 {
		t.Fatal("registrations lost")
	}
}

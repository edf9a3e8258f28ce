package scsi

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

func inq(evpd bool, page byte, alloc uint16) []byte {
	c := []byte{opInquiry, 0, page, byte(alloc >> 8), byte(alloc), 0}
	if evpd {
		c[1] = 1
	}
	return c
}

func TestInquiryStandard(t *testing.T) {
	lu, _ := newTestLU(t, 100, Options{VendorID: "ACME", ProductID: "BLOCK", ProductRev: "7"})
	d := mustGood(t, lu, nexusA, inq(false, 0, 255), nil)
	if len(d) != 96 {
		t.Fatalf("standard INQUIRY is %d bytes", len(d))
	}
	checks := []struct {
		name      string
		got, want byte
	}{
		{"peripheral", d[0], 0x00},
		{"RMB", d[1] & 0x80, 0},
		{"version SPC-4", d[2], 0x06},
		{"HiSup", d[3] & 0x10, 0x10},
		{"response data format", d[3] & 0x0F, 2},
		{"additional length", d[4], 91},
		{"TPGS/3PC/PROTECT", d[5], 0},
		{"CmdQue", d[7] & 0x02, 0x02},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: %#x, want %#x", c.name, c.got, c.want)
		}
	}
	if string(d[8:16]) != "ACME    " || string(d[16:32]) != "BLOCK           " || string(d[32:36]) != "7   " {
		t.Errorf("identification %q %q %q", d[8:16], d[16:32], d[32:36])
	}
	if binary.BigEndian.Uint16(d[60:]) != versionISCSI || binary.BigEndian.Uint16(d[62:]) != versionSPC4 || binary.BigEndian.Uint16(d[64:]) != versionSBC3 {
		t.Errorf("version descriptors % x", d[58:74])
	}
	if d := mustGood(t, lu, nexusA, inq(false, 0, 5), nil); len(d) != 5 {
		t.Errorf("allocation length 5 returned %d bytes", len(d))
	}
	wantSense(t, run(lu, nexusA, inq(false, 0x80, 255), nil), SenseIllegalRequest, 0x24, 0x00)
	wantSense(t, run(lu, nexusA, []byte{opInquiry, 0x02, 0, 0, 255, 0}, nil), SenseIllegalRequest, 0x24, 0x00)
	wantSense(t, run(lu, nexusA, inq(true, 0x99, 255), nil), SenseIllegalRequest, 0x24, 0x00)
}

// vpd fetches a VPD page and checks its header.
func vpd(t *testing.T, lu *LogicalUnit, n Nexus, page byte) []byte {
	t.Helper()
	d := mustGood(t, lu, n, inq(true, page, 0xFFFF), nil)
	if len(d) < 4 || d[1] != page || int(binary.BigEndian.Uint16(d[2:]))+4 != len(d) {
		t.Fatalf("VPD %#x header % x (len %d)", page, d[:4], len(d))
	}
	return d
}

func TestInquiryVPD(t *testing.T) {
	lu, _ := newTestLU(t, 1000, Options{SerialNumber: "SN123", VolumeName: "db1", DeviceName: "iqn.2026-11.test:t", MaxUnmapBlocks: 4096})
	if d := vpd(t, lu, nexusA, 0x00); !bytes.Equal(d[4:], []byte{0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2}) {
		t.Errorf("supported pages % x", d[4:])
	}
	if d := vpd(t, lu, nexusA, 0x80); string(d[4:]) != "SN123" {
		t.Errorf("serial %q", d[4:])
	}

	d := vpd(t, lu, nexusA, 0x83)
	type desc struct {
		proto, codeSet, assoc, typ byte
		piv                        bool
		id                         []byte
	}
	var descs []desc
	for p := d[4:]; len(p) > 0; {
		if len(p) < 4 || len(p) < 4+int(p[3]) {
			t.Fatalf("truncated designator % x", p)
		}
		descs = append(descs, desc{p[0] >> 4, p[0] & 0x0F, (p[1] >> 4) & 3, p[1] & 0x0F, p[1]&0x80 != 0, p[4 : 4+p[3]]})
		p = p[4+p[3]:]
	}
	if len(descs) != 5 {
		t.Fatalf("%d designators", len(descs))
	}
	if x := descs[0]; x.typ != 3 || x.codeSet != 1 || x.assoc != 0 || len(x.id) != 8 || x.id[0]>>4 != 3 {
		t.Errorf("NAA designator %+v", x)
	}
	if x := descs[1]; x.typ != 1 || x.codeSet != 2 || !strings.HasPrefix(string(x.id), "WEEDBLK db1") {
		t.Errorf("T10 designator %+v %q", x, x.id)
	}
	if x := descs[2]; x.typ != 4 || x.assoc != 1 || !x.piv || x.proto != 5 || binary.BigEndian.Uint16(x.id[2:]) != 1 {
		t.Errorf("relative port designator %+v", x)
	}
	if x := descs[3]; x.typ != 8 || x.assoc != 1 || x.codeSet != 3 || len(x.id)%4 != 0 || !strings.HasPrefix(string(x.id), nexusA.TargetPort+"\x00") {
		t.Errorf("target port name designator %+v", x)
	}
	if x := descs[4]; x.typ != 8 || x.assoc != 2 || !strings.HasPrefix(string(x.id), "iqn.2026-11.test:t\x00") {
		t.Errorf("device name designator %+v", x)
	}
	// The NAA identifier is stable for a volume name and differs between names.
	lu2, _ := newTestLU(t, 10, Options{VolumeName: "db1"})
	lu3, _ := newTestLU(t, 10, Options{VolumeName: "db2"})
	if !bytes.Equal(lu.naa, lu2.naa) || bytes.Equal(lu.naa, lu3.naa) {
		t.Error("NAA not derived from the volume name")
	}

	d = vpd(t, lu, nexusA, 0xB0)
	if len(d) != 64 {
		t.Fatalf("block limits length %d", len(d))
	}
	be32 := func(off int) uint32 { return binary.BigEndian.Uint32(d[off:]) }
	if d[5] != 255 || be32(8) != 65536 || be32(12) != 2048 || be32(20) != 4096 || be32(24) != 256 || be32(28) != 1 || binary.BigEndian.Uint64(d[36:]) == 0 {
		t.Errorf("block limits % x", d)
	}
	d = vpd(t, lu, nexusA, 0xB1)
	if len(d) != 64 || binary.BigEndian.Uint16(d[4:]) != 1 {
		t.Errorf("block device characteristics % x", d[:8])
	}
	d = vpd(t, lu, nexusA, 0xB2)
	if len(d) != 8 || d[5] != 0xE4 || d[6]&0x07 != 2 {
		t.Errorf("logical block provisioning % x", d)
	}
}

func TestWrongLUN(t *testing.T) {
	lu, _ := newTestLU(t, 10, Options{})
	r := lu.Execute(&Command{Nexus: nexusA, LUN: 3, CDB: inq(false, 0, 96)})
	if r.Status != StatusGood || r.DataIn[0] != 0x7F {
		t.Fatalf("INQUIRY to absent LUN: %#x % x", r.Status, r.DataIn)
	}
	r = lu.Execute(&Command{Nexus: nexusA, LUN: 3, CDB: cdb10(opRead10, 0, 0, 1)})
	wantSense(t, r, SenseIllegalRequest, 0x25, 0x00)
	rl := []byte{opReportLUNs, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}
	r = lu.Execute(&Command{Nexus: nexusA, LUN: 3, CDB: rl})
	if r.Status != StatusGood || len(r.DataIn) != 16 {
		t.Fatalf("REPORT LUNS to absent LUN: %#x % x", r.Status, r.DataIn)
	}
}

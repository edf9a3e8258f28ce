package scsi

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/weedblock/weedblock/blockdev"
)

const testBS = 512

var (
	nexusA = Nexus{InitiatorPort: "iqn.2026-11.test:a,i,0x23d000000001", TargetPort: "iqn.2026-11.test:t,t,0x0001", RelativeTargetPortID: 1}
	nexusB = Nexus{InitiatorPort: "iqn.2026-11.test:b,i,0x23d000000002", TargetPort: "iqn.2026-11.test:t,t,0x0001", RelativeTargetPortID: 1}
	nexusC = Nexus{InitiatorPort: "iqn.2026-11.test:c,i,0x23d000000003", TargetPort: "iqn.2026-11.test:t,t,0x0001", RelativeTargetPortID: 1}
)

// newTestLU returns a unit over a fresh in-memory device of blocks blocks.
func newTestLU(t testing.TB, blocks int64, opts Options) (*LogicalUnit, *blockdev.Mem) {
	t.Helper()
	mem, err := blockdev.NewMem(blocks*testBS, testBS)
	if err != nil {
		t.Fatal(err)
	}
	if opts.VolumeName == "" {
		opts.VolumeName = "vol1"
	}
	return NewLogicalUnit(mem, opts), mem
}

func run(lu *LogicalUnit, n Nexus, cdb []byte, out []byte) *Response {
	return lu.Execute(&Command{Nexus: n, CDB: cdb, DataOut: out, ExpectedInLength: 1 << 20})
}

// mustGood runs a command and fails the test unless it completes GOOD.
func mustGood(t *testing.T, lu *LogicalUnit, n Nexus, cdb []byte, out []byte) []byte {
	t.Helper()
	r := run(lu, n, cdb, out)
	if r.Status != StatusGood {
		t.Fatalf("cdb % x: status %#x sense % x", cdb, r.Status, r.Sense)
	}
	return r.DataIn
}

// wantSense checks a CHECK CONDITION with the given key/asc/ascq.
func wantSense(t *testing.T, r *Response, key, asc, ascq byte) {
	t.Helper()
	if r.Status != StatusCheckCondition {
		t.Fatalf("status %#x, want CHECK CONDITION %x/%02x/%02x", r.Status, key, asc, ascq)
	}
	if len(r.Sense) < 18 || r.Sense[0]&0x7F != 0x70 || r.Sense[7] != 10 {
		t.Fatalf("sense not fixed format: % x", r.Sense)
	}
	if r.Sense[2]&0x0F != key || r.Sense[12] != asc || r.Sense[13] != ascq {
		t.Fatalf("sense %x/%02x/%02x, want %x/%02x/%02x", r.Sense[2]&0x0F, r.Sense[12], r.Sense[13], key, asc, ascq)
	}
}

func wantStatus(t *testing.T, r *Response, status byte) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %#x (sense % x), want %#x", r.Status, r.Sense, status)
	}
}

// CDB builders.

func cdb6(op byte, lba uint32, n byte) []byte {
	return []byte{op, byte(lba>>16) & 0x1F, byte(lba >> 8), byte(lba), n, 0}
}

func cdb10(op, flags byte, lba uint32, n uint16) []byte {
	c := make([]byte, 10)
	c[0], c[1] = op, flags
	binary.BigEndian.PutUint32(c[2:], lba)
	binary.BigEndian.PutUint16(c[7:], n)
	return c
}

func cdb12(op, flags byte, lba uint32, n uint32) []byte {
	c := make([]byte, 12)
	c[0], c[1] = op, flags
	binary.BigEndian.PutUint32(c[2:], lba)
	binary.BigEndian.PutUint32(c[6:], n)
	return c
}

func cdb16(op, flags byte, lba uint64, n uint32) []byte {
	c := make([]byte, 16)
	c[0], c[1] = op, flags
	binary.BigEndian.PutUint64(c[2:], lba)
	binary.BigEndian.PutUint32(c[10:], n)
	return c
}

func fill(n int, v byte) []byte { return bytes.Repeat([]byte{v}, n) }

// readBack reads blocks directly from the device.
func readBack(t *testing.T, mem *blockdev.Mem, lba, n int64) []byte {
	t.Helper()
	p := make([]byte, n*testBS)
	if err := mem.ReadAt(p, lba*testBS); err != nil {
		t.Fatal(err)
	}
	return p
}

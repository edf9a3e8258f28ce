package scsi

import (
	"errors"
	"fmt"
	"testing"

	"github.com/weedblock/weedblock/blockdev"
)

// failingDev returns err from every I/O method.
type failingDev struct {
	*blockdev.Mem
	err error
}

func (f failingDev) ReadAt(p []byte, off int64) error            { return f.err }
func (f failingDev) WriteAt(p []byte, off int64, fua bool) error { return f.err }
func (f failingDev) Trim(off, length int64) error                { return f.err }
func (f failingDev) WriteZeroes(off, n int64, fua bool) error    { return f.err }
func (f failingDev) Flush() error                                { return f.err }

func TestIOErrorsMapToSense(t *testing.T) {
	mem, err := blockdev.NewMem(100*testBS, testBS)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		err            error
		cdb            []byte
		data           []byte
		key, asc, ascq byte
	}{
		{errors.New("disk on fire"), cdb10(opRead10, 0, 0, 1), nil, SenseMediumError, 0x11, 0x00},
		{errors.New("disk on fire"), cdb10(opWrite10, 0, 0, 1), fill(testBS, 1), SenseMediumError, 0x0C, 0x00},
		{errors.New("fsync failed"), cdb10(opSyncCache10, 0, 0, 0), nil, SenseMediumError, 0x0C, 0x00},
		{fmt.Errorf("write: %w", blockdev.ErrReadOnly), cdb16(opWriteSame16, 0x08, 0, 4), fill(testBS, 0), SenseDataProtect, 0x27, 0x00},
		{fmt.Errorf("write: %w", blockdev.ErrReadOnly), cdb10(opUnmap, 0, 0, 24), unmapList([2]uint64{0, 1}), SenseDataProtect, 0x27, 0x00},
		{fmt.Errorf("read: %w", blockdev.ErrClosed), cdb16(opRead16, 0, 0, 1), nil, SenseNotReady, 0x04, 0x00},
		{fmt.Errorf("read: %w", blockdev.ErrClosed), cawCDB(0, 0, 1), fill(2*testBS, 0), SenseNotReady, 0x04, 0x00},
		{errors.New("bad sector"), cdb10(opVerify10, 0, 0, 1), nil, SenseMediumError, 0x11, 0x00},
	}
	for _, c := range cases {
		lu := NewLogicalUnit(failingDev{mem, c.err}, Options{})
		wantSense(t, run(lu, nexusA, c.cdb, c.data), c.key, c.asc, c.ascq)
	}
}

func TestModeSensePageControlAndNAAOverride(t *testing.T) {
	lu, _ := newTestLU(t, 100, Options{NAA: []byte{0x60, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}})
	// Turn WCE off, then: current shows 0, default and changeable show 1.
	cur := mustGood(t, lu, nexusA, []byte{opModeSense6, 0x08, pageCaching, 0, 255, 0}, nil)
	param := append([]byte{0, 0, 0, 0}, cur[4:]...)
	param[6] &^= cachingWCE
	mustGood(t, lu, nexusA, []byte{opModeSelect6, 0x10, 0, 0, byte(len(param)), 0}, param)
	for pc, want := range map[byte]byte{pcCurrent: 0, pcChangeable: cachingWCE, pcDefault: cachingWCE} {
		d := mustGood(t, lu, nexusA, []byte{opModeSense6, 0x08, pc<<6 | pageCaching, 0, 255, 0}, nil)
		if d[6]&cachingWCE != want {
			t.Errorf("PC %d: caching byte 2 = %#x", pc, d[6])
		}
	}
	d := vpd(t, lu, nexusA, 0x83)
	if d[4+3] != 16 || d[4+4] != 0x60 || d[4+19] != 15 {
		t.Fatalf("NAA override not used: % x", d[4:24])
	}
}

// growingDev reports a size that a test can raise, over a larger Mem.
type growingDev struct {
	*blockdev.Mem
	size int64
}

func (g *growingDev) Size() int64 { return g.size }

func TestCapacityChanged(t *testing.T) {
	mem, err := blockdev.NewMem(200*testBS, testBS)
	if err != nil {
		t.Fatal(err)
	}
	dev := &growingDev{Mem: mem, size: 100 * testBS}
	lu := NewLogicalUnit(dev, Options{})
	mustGood(t, lu, nexusA, tur, nil)
	mustGood(t, lu, nexusB, tur, nil)
	wantSense(t, run(lu, nexusA, cdb10(opRead10, 0, 150, 1), nil), SenseIllegalRequest, 0x21, 0x00)
	lu.CapacityChanged() // unchanged: no unit attention
	mustGood(t, lu, nexusA, tur, nil)
	dev.size = 200 * testBS
	lu.CapacityChanged()
	for _, n := range []Nexus{nexusA, nexusB} {
		wantSense(t, run(lu, n, tur, nil), SenseUnitAttention, 0x2A, 0x09)
	}
	d := mustGood(t, lu, nexusA, cdb10(opReadCapacity10, 0, 0, 0), nil)
	if d[3] != 199 {
		t.Fatalf("READ CAPACITY after grow % x", d)
	}
	mustGood(t, lu, nexusA, cdb10(opRead10, 0, 150, 1), nil)
}

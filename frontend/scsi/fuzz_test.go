package scsi

import (
	"testing"

	"github.com/weedblock/weedblock/blockdev"
)

// FuzzExecute feeds arbitrary CDBs and data-out buffers to a logical unit:
// it must never panic, and every response must be well formed.
func FuzzExecute(f *testing.F) {
	seeds := [][2][]byte{
		{inq(false, 0, 96), nil},
		{inq(true, 0x83, 255), nil},
		{cdb10(opRead10, 0, 0, 1), nil},
		{cdb16(opWrite16, 0x08, 1, 1), fill(testBS, 1)},
		{cdb10(opWriteSame10, 0x08, 0, 0), fill(testBS, 0)},
		{cdb10(opUnmap, 0, 0, 24), unmapList([2]uint64{1, 2})},
		{cawCDB(0, 0, 1), make([]byte, 2*testBS)},
		{[]byte{opModeSelect6, 0x10, 0, 0, 24, 0}, append([]byte{0, 0, 0, 0}, make([]byte, 20)...)},
		{[]byte{opPersistResOut, 0, 0, 0, 0, 0, 0, 0, 24, 0}, make([]byte, 24)},
		{rsoc(2, true, opServiceActionIn16, saGetLBAStatus, 100), nil},
		{[]byte{opServiceActionIn16}, nil},
		{cdb16(opVerify16, 0x06, 0, 3), fill(testBS, 0)},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, cdb, data []byte) {
		mem, err := blockdev.NewMem(64*testBS, testBS)
		if err != nil {
			t.Fatal(err)
		}
		lu := NewLogicalUnit(mem, Options{VolumeName: "fuzz"})
		for _, n := range []Nexus{nexusA, nexusB} {
			r := lu.Execute(&Command{Nexus: n, CDB: cdb, DataOut: data})
			switch r.Status {
			case StatusGood, StatusReservationConflict:
			case StatusCheckCondition:
				if len(r.Sense) != 18 || r.Sense[0]&0x7F != 0x70 {
					t.Fatalf("bad sense % x", r.Sense)
				}
			default:
				t.Fatalf("unexpected status %#x", r.Status)
			}
			lu.DataOutLength(cdb)
		}
	})
}

package scsi

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockdev"
)

// slowReads widens the window between COMPARE AND WRITE's read and write
// so that a missing exclusion shows up as lost increments.
type slowReads struct{ *blockdev.Mem }

func (s slowReads) ReadAt(p []byte, off int64) error {
	err := s.Mem.ReadAt(p, off)
	if off == 0 {
		time.Sleep(20 * time.Microsecond)
	}
	return err
}

// TestConcurrentCommands runs data I/O, COMPARE AND WRITE, reservations,
// mode changes and resets from many goroutines at once (meant for -race).
// COMPARE AND WRITE is used as an atomic increment of a counter block: if
// it were not atomic against concurrent writers, increments would be lost.
func TestConcurrentCommands(t *testing.T) {
	mem, err := blockdev.NewMem(4096*testBS, testBS)
	if err != nil {
		t.Fatal(err)
	}
	lu := NewLogicalUnit(slowReads{mem}, Options{})
	const (
		workers = 8
		incs    = 60
	)
	counter := func(v uint64) []byte {
		b := make([]byte, testBS)
		binary.BigEndian.PutUint64(b, v)
		return b
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers*4)
	for w := 0; w < workers; w++ {
		n := Nexus{InitiatorPort: fmt.Sprintf("iqn.test:w%d,i,0x1", w), TargetPort: "t", RelativeTargetPortID: 1}
		wg.Add(2)
		go func() { // atomic increments of block 0
			defer wg.Done()
			done := 0
			for tries := 0; done < incs && tries < 100000; tries++ {
				r := lu.Execute(&Command{Nexus: n, CDB: cdb10(opRead10, 0, 0, 1)})
				if r.Status != StatusGood {
					continue // unit attention from a reset
				}
				v := binary.BigEndian.Uint64(r.DataIn)
				r = lu.Execute(&Command{Nexus: n, CDB: cawCDB(0, 0, 1), DataOut: append(counter(v), counter(v+1)...)})
				if r.Status == StatusGood {
					done++
				}
			}
			if done != incs {
				errs <- fmt.Errorf("%s: only %d increments", n.InitiatorPort, done)
			}
		}()
		go func(w int) { // private region writes/reads plus state chatter
			defer wg.Done()
			lba := uint32(100 + 100*w)
			for i := 0; i < 50; i++ {
				data := fill(8*testBS, byte(w*50+i))
				r := lu.Execute(&Command{Nexus: n, CDB: cdb10(opWrite10, 0, lba, 8), DataOut: data})
				if r.Status == StatusCheckCondition && r.Sense[2] == SenseUnitAttention {
					r = lu.Execute(&Command{Nexus: n, CDB: cdb10(opWrite10, 0, lba, 8), DataOut: data})
				}
				if r.Status != StatusGood {
					errs <- fmt.Errorf("write: %#x % x", r.Status, r.Sense)
					return
				}
				r = lu.Execute(&Command{Nexus: n, CDB: cdb10(opRead10, 0, lba, 8)})
				if r.Status == StatusGood && !bytes.Equal(r.DataIn, data) {
					errs <- fmt.Errorf("worker %d read back other data", w)
					return
				}
				// Blocks 1..3 are overwritten by plain writes concurrently
				// with the counter's COMPARE AND WRITE on block 0.
				lu.Execute(&Command{Nexus: n, CDB: cdb10(opWrite10, 0, 1, 3), DataOut: fill(3*testBS, byte(i))})
				lu.Execute(&Command{Nexus: n, CDB: cdb16(opWriteSame16, 0, 2, 2), DataOut: fill(testBS, byte(i))})
				switch i % 10 {
				case 0:
					lu.Execute(&Command{Nexus: n, CDB: []byte{opPersistResOut, prOutRegisterIgnore, 0, 0, 0, 0, 0, 0, 24, 0}, DataOut: make([]byte, 24)})
				case 3:
					lu.Execute(&Command{Nexus: n, CDB: []byte{opPersistResIn, prInReadFullStatus, 0, 0, 0, 0, 0, 0x10, 0, 0}})
				case 5:
					lu.Execute(&Command{Nexus: n, CDB: []byte{opModeSense6, 0, 0x3F, 0, 255, 0}})
				case 7:
					if w == 0 {
						lu.Reset(ResetLUN, n)
					}
				case 9:
					lu.Execute(&Command{Nexus: n, CDB: cdb10(opSyncCache10, 0, 0, 0)})
				}
			}
			lu.NexusLost(n)
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got := binary.BigEndian.Uint64(readBack(t, mem, 0, 1))
	if got != workers*incs {
		t.Fatalf("counter %d, want %d: COMPARE AND WRITE lost updates", got, workers*incs)
	}
}

// BenchmarkRead4K and BenchmarkWrite4K measure the logical unit's own
// overhead per command over the in-memory device.
func BenchmarkRead4K(b *testing.B) {
	lu, _ := newTestLU(b, 1<<16, Options{})
	cmd := &Command{Nexus: nexusA, CDB: cdb10(opRead10, 0, 0, 8)}
	b.SetBytes(8 * testBS)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if r := lu.Execute(cmd); r.Status != StatusGood {
				b.Fatal("read failed")
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "cmds/s")
}

func BenchmarkWrite4K(b *testing.B) {
	lu, _ := newTestLU(b, 1<<16, Options{})
	data := fill(8*testBS, 1)
	b.SetBytes(8 * testBS)
	b.RunParallel(func(pb *testing.PB) {
		i := uint32(0)
		for pb.Next() {
			i = (i + 8) % (1 << 16)
			if r := lu.Execute(&Command{Nexus: nexusA, CDB: cdb10(opWrite10, 0, i, 8), DataOut: data}); r.Status != StatusGood {
				b.Fatal("write failed")
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "cmds/s")
}

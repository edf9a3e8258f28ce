package nbd

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/weedblock/weedblock/blockdev"
)

// recordingDevice wraps a Device and counts calls by kind.
type recordingDevice struct {
	blockdev.Device
	trims, zeroes, zeroFUAs atomic.Int64
}

func (d *recordingDevice) Trim(off, n int64) error {
	d.trims.Add(1)
	return d.Device.Trim(off, n)
}

func (d *recordingDevice) WriteZeroes(off, n int64, fua bool) error {
	d.zeroes.Add(1)
	if fua {
		d.zeroFUAs.Add(1)
	}
	return d.Device.WriteZeroes(off, n, fua)
}

// gateDevice blocks every ReadAt/WriteAt at an offset listed in gates until
// that gate's channel is closed, and tracks how many data calls run at once.
type gateDevice struct {
	blockdev.Device
	gates map[int64]chan struct{}
	delay time.Duration // added to every data call

	mu         sync.Mutex
	active     int
	maxActive  int
	activeByte int64
	maxBytes   int64
	entered    chan int64 // receives the offset of each gated call entering
}

func (d *gateDevice) enter(off int64, n int) {
	d.mu.Lock()
	d.active++
	d.activeByte += int64(n)
	d.maxActive = max(d.maxActive, d.active)
	d.maxBytes = max(d.maxBytes, d.activeByte)
	d.mu.Unlock()
	if d.delay > 0 {
		time.Sleep(d.delay)
	}
	if g, ok := d.gates[off]; ok {
		if d.entered != nil {
			d.entered <- off
		}
		<-g
	}
}

func (d *gateDevice) leave(n int) {
	d.mu.Lock()
	d.active--
	d.activeByte -= int64(n)
	d.mu.Unlock()
}

func (d *gateDevice) ReadAt(p []byte, off int64) error {
	d.enter(off, len(p))
	defer d.leave(len(p))
	return d.Device.ReadAt(p, off)
}

func (d *gateDevice) WriteAt(p []byte, off int64, fua bool) error {
	d.enter(off, len(p))
	defer d.leave(len(p))
	return d.Device.WriteAt(p, off, fua)
}

func (d *gateDevice) peaks() (calls int, bytes int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.maxActive, d.maxBytes
}

// failingDevice fails every data call with err.
type failingDevice struct {
	blockdev.Device
	err error
}

func (d failingDevice) ReadAt([]byte, int64) error           { return d.err }
func (d failingDevice) WriteAt([]byte, int64, bool) error    { return d.err }
func (d failingDevice) Flush() error                         { return d.err }
func (d failingDevice) Trim(int64, int64) error              { return d.err }
func (d failingDevice) WriteZeroes(int64, int64, bool) error { return d.err }

// countingDevice counts Flush calls.
type countingDevice struct {
	blockdev.Device
	flushes atomic.Int64
}

func (d *countingDevice) Flush() error {
	d.flushes.Add(1)
	return d.Device.Flush()
}

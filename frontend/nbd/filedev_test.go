package nbd

import (
	"fmt"
	"os"
	"syscall"

	"github.com/weedblock/weedblock/blockdev"
)

// fileDevice is a test-only Device over one file: pwrite / pread, fdatasync
// on Flush and FUA, fallocate for TRIM and WRITE_ZEROES. It stands in for
// the engine in benchmarks against `nbdkit file`.
type fileDevice struct {
	f    *os.File
	size int64
	bs   int
}

const (
	fallocKeepSize  = 0x01
	fallocPunchHole = 0x02
	fallocZeroRange = 0x10
)

func openFileDevice(path string, size int64, bs int) (*fileDevice, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("truncate %s: %w", path, err)
	}
	return &fileDevice{f: f, size: size, bs: bs}, nil
}

func (d *fileDevice) Close() error   { return d.f.Close() }
func (d *fileDevice) BlockSize() int { return d.bs }
func (d *fileDevice) Size() int64    { return d.size }

func (d *fileDevice) ReadAt(p []byte, off int64) error {
	if err := blockdev.CheckRange(off, int64(len(p)), d.size, d.bs); err != nil {
		return err
	}
	_, err := d.f.ReadAt(p, off)
	return err
}

func (d *fileDevice) WriteAt(p []byte, off int64, fua bool) error {
	if err := blockdev.CheckRange(off, int64(len(p)), d.size, d.bs); err != nil {
		return err
	}
	if _, err := d.f.WriteAt(p, off); err != nil {
		return err
	}
	if fua {
		return d.Flush()
	}
	return nil
}

func (d *fileDevice) Trim(off, n int64) error {
	if err := blockdev.CheckRange(off, n, d.size, d.bs); err != nil {
		return err
	}
	return syscall.Fallocate(int(d.f.Fd()), fallocPunchHole|fallocKeepSize, off, n)
}

func (d *fileDevice) WriteZeroes(off, n int64, fua bool) error {
	if err := blockdev.CheckRange(off, n, d.size, d.bs); err != nil {
		return err
	}
	if err := syscall.Fallocate(int(d.f.Fd()), fallocZeroRange|fallocKeepSize, off, n); err != nil {
		return err
	}
	if fua {
		return d.Flush()
	}
	return nil
}

func (d *fileDevice) Flush() error {
	return syscall.Fdatasync(int(d.f.Fd()))
}

var _ blockdev.Device = (*fileDevice)(nil)

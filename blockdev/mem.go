package blockdev

import (
	"fmt"
	"sync"
)

// Mem is an in-memory Device for tests. Every write is immediately
// "committed"; FlushCount counts Flush calls and FUA writes so tests can check
// that a frontend passes them through.
type Mem struct {
	mu       sync.RWMutex
	bs       int
	data     []byte
	readOnly bool
	flushes  int64
	fuas     int64
}

// NewMem returns a zeroed in-memory device of size bytes.
func NewMem(size int64, blockSize int) (*Mem, error) {
	if blockSize < 512 || blockSize&(blockSize-1) != 0 {
		return nil, fmt.Errorf("blockdev: block size %d is not a power of two ≥ 512", blockSize)
	}
	if size <= 0 || size%int64(blockSize) != 0 {
		return nil, fmt.Errorf("blockdev: size %d is not a positive multiple of %d", size, blockSize)
	}
	return &Mem{bs: blockSize, data: make([]byte, size)}, nil
}

func (m *Mem) BlockSize() int { return m.bs }
func (m *Mem) Size() int64    { return int64(len(m.data)) }

// SetReadOnly makes later writes fail with ErrReadOnly (or succeed again).
func (m *Mem) SetReadOnly(ro bool) {
	m.mu.Lock()
	m.readOnly = ro
	m.mu.Unlock()
}

// Counts returns how many Flush calls and FUA writes were seen.
func (m *Mem) Counts() (flushes, fuas int64) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.flushes, m.fuas
}

func (m *Mem) ReadAt(p []byte, off int64) error {
	if err := CheckRange(off, int64(len(p)), m.Size(), m.bs); err != nil {
		return fmt.Errorf("read %d@%d: %w", len(p), off, err)
	}
	m.mu.RLock()
	copy(p, m.data[off:])
	m.mu.RUnlock()
	return nil
}

func (m *Mem) WriteAt(p []byte, off int64, fua bool) error {
	if err := CheckRange(off, int64(len(p)), m.Size(), m.bs); err != nil {
		return fmt.Errorf("write %d@%d: %w", len(p), off, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.readOnly {
		return fmt.Errorf("write %d@%d: %w", len(p), off, ErrReadOnly)
	}
	copy(m.data[off:], p)
	if fua {
		m.fuas++
	}
	return nil
}

func (m *Mem) Trim(off, length int64) error {
	return m.zero("trim", off, length, false)
}

func (m *Mem) WriteZeroes(off, length int64, fua bool) error {
	return m.zero("write zeroes", off, length, fua)
}

func (m *Mem) zero(op string, off, length int64, fua bool) error {
	if err := CheckRange(off, length, m.Size(), m.bs); err != nil {
		return fmt.Errorf("%s %d@%d: %w", op, length, off, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.readOnly {
		return fmt.Errorf("%s %d@%d: %w", op, length, off, ErrReadOnly)
	}
	clear(m.data[off : off+length])
	if fua {
		m.fuas++
	}
	return nil
}

func (m *Mem) Flush() error {
	m.mu.Lock()
	m.flushes++
	m.mu.Unlock()
	return nil
}

var _ Device = (*Mem)(nil)

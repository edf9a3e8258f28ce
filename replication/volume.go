package replication

import (
	"github.com/weedblock/weedblock/blockdev"
	"github.com/weedblock/weedblock/blockvol"
)

// Volume is the primary's block device with replication: writes go to
// the local volume and wake the cursors; Flush and FUA writes return only
// once the durability mode's commit covers them.
type Volume struct {
	vol *blockvol.Volume
	p   *Primary
}

var _ blockdev.Device = (*Volume)(nil)

// NewVolume wraps vol, whose WAL p ships. The caller keeps owning both
// (close p before vol).
func NewVolume(vol *blockvol.Volume, p *Primary) *Volume { return &Volume{vol: vol, p: p} }

// Primary is the shipper behind the device.
func (v *Volume) Primary() *Primary { return v.p }

// BlockSize is the logical block size.
func (v *Volume) BlockSize() int { return v.vol.BlockSize() }

// Size is the capacity in bytes.
func (v *Volume) Size() int64 { return v.vol.Size() }

// ReadAt reads the primary's data.
func (v *Volume) ReadAt(p []byte, off int64) error { return v.vol.ReadAt(p, off) }

// WriteAt appends to the primary's WAL; with fua it waits for the commit.
func (v *Volume) WriteAt(p []byte, off int64, fua bool) error {
	if err := v.vol.WriteAt(p, off, false); err != nil {
		return err
	}
	v.p.Notify(len(p))
	if fua {
		return v.Flush()
	}
	return nil
}

// Trim discards a range (replicated like a write).
func (v *Volume) Trim(off, length int64) error {
	if err := v.vol.Trim(off, length); err != nil {
		return err
	}
	v.p.Notify(noteBytes)
	return nil
}

// noteBytes is what a trim or zeroing record counts for Notify: a
// header, no data.
const noteBytes = 64

// WriteZeroes zeroes a range; with fua it waits for the commit.
func (v *Volume) WriteZeroes(off, length int64, fua bool) error {
	if err := v.vol.WriteZeroes(off, length, false); err != nil {
		return err
	}
	v.p.Notify(noteBytes)
	if fua {
		return v.Flush()
	}
	return nil
}

// Flush returns once every write acknowledged before the call is
// committed for the durability mode: durable locally, then on the members
// the mode requires (bounded by CommitTimeout, ErrCommitTimeout after).
func (v *Volume) Flush() error {
	lsn := v.vol.Status().Head
	// Ask the replicas first so their fsync overlaps the local one.
	v.p.RequestBarrier(lsn)
	if err := v.vol.Flush(); err != nil {
		return err
	}
	return v.p.WaitCommitted(lsn)
}

// VolumeStatus is the local volume's status plus the committed LSN.
type VolumeStatus struct {
	blockvol.Status
	// Committed is the highest LSN durable on the set the mode requires.
	Committed uint64
}

// Status returns a snapshot.
func (v *Volume) Status() VolumeStatus {
	st := v.vol.Status()
	return VolumeStatus{Status: st, Committed: v.p.Committed()}
}

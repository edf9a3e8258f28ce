package blockvol

import (
	"fmt"
	"time"

	"github.com/weedblock/weedblock/blockdev"
)

// Unfence lets the volume accept writes as role (RolePrimary: frontend
// writes; RoleReplica: ApplyReplicated) for epoch, until leaseUntil (zero:
// no expiry). An epoch lower than the persisted one fails with
// ErrStaleEpoch. A new epoch or role is persisted (fsync) before the call
// returns; calling it again with the same epoch and role just renews the
// lease.
func (v *Volume) Unfence(epoch uint64, role Role, leaseUntil time.Time) error {
	if role != RolePrimary && role != RoleReplica {
		return fmt.Errorf("%s: unfence as %v: %w", v.path, role, ErrWrongRole)
	}
	if err := v.enter(); err != nil {
		return err
	}
	defer v.ops.Done()
	v.fenceMu.Lock()
	defer v.fenceMu.Unlock()
	v.mu.Lock()
	cur, curRole, failed := v.epoch, v.role, v.failed
	v.mu.Unlock()
	if failed != nil {
		return fmt.Errorf("%s: unfence: %w: %w: %v", v.path, blockdev.ErrReadOnly, ErrUnhealthy, failed)
	}
	if epoch < cur {
		return fmt.Errorf("%s: unfence at epoch %d, persisted %d: %w", v.path, epoch, cur, ErrStaleEpoch)
	}
	if epoch != cur || role != curRole {
		if err := v.persistSuperblock(func(s *superblock) {
			s.epoch = epoch
			s.role = role
		}); err != nil {
			return err
		}
	}
	v.mu.Lock()
	v.epoch, v.role, v.fenced, v.leaseUntil = epoch, role, false, leaseUntil
	v.cond.Broadcast()
	v.mu.Unlock()
	return nil
}

// Fence stops accepting writes (reads still work) until the next Unfence.
// Writes already appended complete; none is appended after Fence returns.
func (v *Volume) Fence() {
	v.mu.Lock()
	v.fenced = true
	v.cond.Broadcast()
	v.mu.Unlock()
}

// FenceEpoch fences the volume and durably records that epoch exists, so
// that any later Unfence with an older epoch is refused. Lower epochs are
// refused with ErrStaleEpoch.
func (v *Volume) FenceEpoch(epoch uint64) error {
	v.Fence()
	if err := v.enter(); err != nil {
		return err
	}
	defer v.ops.Done()
	v.fenceMu.Lock()
	defer v.fenceMu.Unlock()
	v.mu.Lock()
	cur := v.epoch
	v.mu.Unlock()
	if epoch < cur {
		return fmt.Errorf("%s: fence at epoch %d, persisted %d: %w", v.path, epoch, cur, ErrStaleEpoch)
	}
	if epoch == cur {
		return nil
	}
	if err := v.persistSuperblock(func(s *superblock) { s.epoch = epoch }); err != nil {
		return err
	}
	v.mu.Lock()
	v.epoch = epoch
	v.mu.Unlock()
	return nil
}

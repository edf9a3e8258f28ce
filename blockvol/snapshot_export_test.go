package blockvol

// Test hooks for the snapshot tests (package blockvol_test).

// SetSnapshotCopyHook makes CreateSnapshot call f before copying each chunk
// of the extent (off: the chunk's offset in the volume).
func (v *Volume) SetSnapshotCopyHook(f func(off int64)) {
	v.mu.Lock()
	v.snap.copyHook = f
	v.mu.Unlock()
}

// WritersWaitingForRoom is how many writers wait for WAL space.
func (v *Volume) WritersWaitingForRoom() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.waitRoom
}

// SnapshotDeletes is how many DeleteSnapshot calls have started.
func (v *Volume) SnapshotDeletes() int64 { return v.snap.deletes.Load() }

// Package faultfs is an in-memory file system for crash-consistency tests: it
// really loses what was not synced.
//
// Every file keeps a durable image (what a disk would hold after power loss)
// and a list of pending operations (writes, hole punches, truncates) that
// have completed but have not been made durable by a Sync. Reads see the
// latest state, as they would through a page cache. A crash builds new
// durable images in which each pending operation is independently dropped,
// applied, or torn at 512-byte sector granularity, in a random order; then
// every open handle dies. Sync points can be turned into crashes
// (CrashAtSync), and syncs and writes can be made to fail (EIO, ENOSPC, short
// writes). A failed Sync behaves like Linux fsync: the data it covered may or
// may not be on disk, the error is reported once per open handle, later Syncs
// on the file succeed but make nothing durable until the next crash.
//
// It owns: the in-memory images, the pending-operation log, the crash
// construction and the fault-injection switches. *File satisfies
// blockvol.File structurally; FS.Create/Open return *File, so a
// blockvol.FS is a four-line adapter in the caller's tests (see
// blockvol/crash_test.go). Package oracle, below it, checks a block device
// running on an FS against a model of what it acknowledged.
//
// It must never: import another weedblock package (blockvol imports it only
// from tests), touch the real file system, hold package-level mutable state,
// or offer a way to read or restore state "as of just before the crash" —
// the tests built on it exist to find exactly the bugs such helpers hide.
package faultfs

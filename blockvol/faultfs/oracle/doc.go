// Package oracle checks a block device against an in-memory model of what it
// may return, through workloads that crash the file system under it
// (package faultfs) at random points and at every sync point.
//
// Every block the workload writes encodes (lba, seq) in its whole content,
// so any read can be decoded and a torn, misplaced or corrupt block is
// detected. Per block the Model keeps the values given to it since it was
// last known exactly, and which of them is committed:
//   - while the device runs, a read must return the newest acknowledged
//     value (or a newer one whose call failed, so its outcome is unknown);
//   - after a crash, a read must return the committed value (the newest one
//     covered by a successful Flush or FUA) or any value written after it;
//   - after a crash the value seen becomes the only allowed one: whatever the
//     recovery did not bring back must never come back later.
//
// A Runner drives a Target (how to create and reopen the device on a
// faultfs.FS) through a workload of writes, FUA writes, trims, write-zeroes,
// flushes, reads, clean reopens and crashes; CrashAtEverySync and
// SyncFailure are the two systematic drivers.
//
// It owns: the model, the block content encoding, workload generation and the
// runners. It must never: import the engine (blockvol) or any other
// weedblock package except blockdev and faultfs — it checks any
// blockdev.Device — or save device state "just before the crash" to compare
// against: the only truth is what the device acknowledged.
package oracle

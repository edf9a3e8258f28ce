// Package blockdev defines the small block-device contract that the frontends
// (NBD, iSCSI) serve and that the local engine (blockvol) and later the
// replicated volume implement.
//
// It owns: the Device interface, the sentinel errors a frontend branches on
// to pick a protocol error (NBD errno, SCSI sense), and Mem, an in-memory
// Device for frontend tests.
//
// It must never: import another weedblock package, do I/O of its own, or hold
// package-level mutable state. It is a leaf so that the frontends build and
// test without the engine.
package blockdev

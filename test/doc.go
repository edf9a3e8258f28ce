// Package test holds weedblock's end-to-end tests: it builds the real `weed`
// binary once, runs it as child processes and drives it with real clients
// from Debian packages (libnbd's nbdinfo/nbdcopy, libiscsi's iscsi-ls,
// QEMU's qemu-img/qemu-io with the libiscsi block driver).
//
// It owns process orchestration for tests only: every child is killed when
// its test ends, every wait is bounded, and everything listens on
// 127.0.0.1. A test whose client tool is missing fails; none is skipped.
// It never imports the packages it tests: it sees them only through the
// binary and the wire.
package test

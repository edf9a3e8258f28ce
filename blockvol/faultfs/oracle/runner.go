package oracle

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockdev"
	"github.com/weedblock/weedblock/blockvol/faultfs"
)

// Device is what the Runner drives: a block Device that can be closed.
type Device interface {
	blockdev.Device
	Close() error
}

// Target creates and reopens the Device under test on a faultfs.
type Target struct {
	Name string
	// Create makes a new device on fs (the runner checks its size).
	Create func(fs *faultfs.FS) (Device, error)
	// Open opens the existing device on fs (after a crash or a clean
	// close), ready for writes.
	Open func(fs *faultfs.FS) (Device, error)
	// Unhealthy, if set, reports whether the device says it is unhealthy;
	// SyncFailure requires it to be true after an injected Sync failure.
	Unhealthy func(Device) bool
}

// Runner drives one Device through a workload, checking every read against
// the Model. A crash armed with CrashAtSync may fire at any Sync, in any
// goroutine of the Device; the Runner notices it after the op that was
// running and recovers.
type Runner struct {
	t       testing.TB
	tgt     Target
	fs      *faultfs.FS
	dev     Device
	or      *Model
	bs      int
	crashes int // fs.CrashCount() the Runner has already recovered from
	log     []string
	// tolerateErrors: op errors are expected (fault injection); Record
	// them as unknown outcomes instead of failing.
	tolerateErrors bool
	// errs counts op errors seen while tolerateErrors.
	errs int
}

// NewRunner creates the Device on fs and fails the test if that fails. It
// returns nil if the file system crashed during create (CrashAtSync at one
// of create's syncs): a create that did not return success promises nothing.
func NewRunner(t testing.TB, tgt Target, fs *faultfs.FS, nblocks int) *Runner {
	t.Helper()
	r, err := StartRunner(t, tgt, fs, nblocks)
	if err != nil {
		t.Fatalf("%s: create: %v", tgt.Name, err)
	}
	return r
}

// StartRunner is NewRunner that returns a create error instead of failing.
func StartRunner(t testing.TB, tgt Target, fs *faultfs.FS, nblocks int) (*Runner, error) {
	t.Helper()
	crashes := fs.CrashCount()
	dev, err := tgt.Create(fs)
	if fs.CrashCount() != crashes {
		if dev != nil {
			dev.Close()
		}
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	bs := dev.BlockSize()
	if got := dev.Size(); got != int64(nblocks*bs) {
		t.Fatalf("%s: size %d, want %d", tgt.Name, got, nblocks*bs)
	}
	return &Runner{t: t, tgt: tgt, fs: fs, dev: dev, or: NewModel(bs, nblocks), bs: bs, crashes: fs.CrashCount()}, nil
}

func (r *Runner) fatalf(format string, args ...any) {
	r.t.Helper()
	tail := r.log
	if len(tail) > 40 {
		tail = tail[len(tail)-40:]
	}
	r.t.Fatalf("%s: %s\nlast ops:\n  %s", r.tgt.Name, fmt.Sprintf(format, args...), strings.Join(tail, "\n  "))
}

func (r *Runner) note(format string, args ...any) {
	r.log = append(r.log, fmt.Sprintf(format, args...))
}

// crashed reports whether the file system crashed since the last recovery.
func (r *Runner) crashed() bool { return r.fs.CrashCount() != r.crashes }

// opErr handles the error of a Device call: nil, a crash in progress, or a
// tolerated fault are fine; anything else fails the test.
func (r *Runner) opErr(what string, err error) {
	r.t.Helper()
	if err == nil || r.crashed() {
		return
	}
	if r.tolerateErrors {
		r.errs++
		return
	}
	r.fatalf("%s: unexpected error: %v", what, err)
}

// Run executes ops in order, recovering from crashes as they happen.
func (r *Runner) Run(ops []Op) {
	r.t.Helper()
	for _, op := range ops {
		r.do(op)
		if r.crashed() {
			r.recover()
		}
	}
}

func (r *Runner) do(op Op) {
	r.t.Helper()
	bs := int64(r.bs)
	off, length := int64(op.LBA)*bs, int64(op.N)*bs
	switch op.Kind {
	case OpWrite, OpWriteFUA:
		seq := r.or.NextSeq()
		p := make([]byte, length)
		for i := 0; i < op.N; i++ {
			BlockContent(p[int64(i)*bs:int64(i+1)*bs], uint64(op.LBA+i), seq)
		}
		err := r.dev.WriteAt(p, off, op.Kind == OpWriteFUA)
		r.note("%v seq=%d -> %v", op, seq, err)
		r.or.Record(op.LBA, op.N, seq, err, op.Kind == OpWriteFUA)
		r.opErr(op.String(), err)
	case OpTrim:
		err := r.dev.Trim(off, length)
		r.note("%v -> %v", op, err)
		r.or.Record(op.LBA, op.N, 0, err, false)
		r.opErr(op.String(), err)
	case OpZero, OpZeroFUA:
		err := r.dev.WriteZeroes(off, length, op.Kind == OpZeroFUA)
		r.note("%v -> %v", op, err)
		r.or.Record(op.LBA, op.N, 0, err, op.Kind == OpZeroFUA)
		r.opErr(op.String(), err)
	case OpFlush:
		err := r.dev.Flush()
		r.note("flush -> %v", err)
		if err == nil {
			r.or.Flushed()
		}
		r.opErr("flush", err)
	case OpRead:
		p := make([]byte, length)
		err := r.dev.ReadAt(p, off)
		r.note("%v -> %v", op, err)
		if err != nil {
			r.opErr(op.String(), err)
			return
		}
		if r.crashed() {
			// The data may come from a dead Device; only the recovered
			// volume is checked.
			return
		}
		for i := 0; i < op.N; i++ {
			b := op.LBA + i
			seq, derr := DecodeBlock(p[int64(i)*bs:int64(i+1)*bs], uint64(b))
			if derr == nil {
				derr = r.or.CheckLive(b, seq)
			}
			if derr != nil {
				r.fatalf("%v: %v", op, derr)
			}
		}
	case OpReopen:
		r.closeDev()
		if r.crashed() {
			return
		}
		if r.openDev() {
			r.note("reopen")
			r.verifyAll(false) // a crash meanwhile is recovered by Run
		}
	case OpCrash:
		r.note("%v", op)
		r.fs.Crash(op.Mode, op.Seed)
	}
}

// closeDev closes the Device; a Close that does not return is a bug.
func (r *Runner) closeDev() {
	r.t.Helper()
	done := make(chan error, 1)
	dev := r.dev
	go func() { done <- dev.Close() }()
	select {
	case err := <-done:
		if err != nil && !r.crashed() && !r.tolerateErrors {
			r.fatalf("close: %v", err)
		}
	case <-time.After(20 * time.Second):
		r.fatalf("close did not return within 20s")
	}
	r.dev = nil
}

// openDev opens the Device. An open that fails because the file system
// crashed under it (CrashAtSync firing during recovery) reports false.
func (r *Runner) openDev() bool {
	r.t.Helper()
	dev, err := r.tgt.Open(r.fs)
	if err != nil {
		if r.crashed() {
			return false
		}
		r.fatalf("open: %v", err)
	}
	r.dev = dev
	return true
}

// recover closes the crashed Device, reopens it on the rebooted file system
// and checks every block against the Model. A crash armed by CrashAtSync may
// fire again during the reopen or in a background goroutine of the reopened
// device while it is being checked; then it recovers again.
func (r *Runner) recover() {
	r.t.Helper()
	if r.dev != nil {
		r.closeDev()
	}
	for i := 0; ; i++ {
		if i > 5 {
			r.fatalf("file system keeps crashing during recovery")
		}
		r.crashes = r.fs.CrashCount()
		opened := r.openDev()
		r.note("reopen after crash")
		if opened && r.verifyAll(true) {
			return
		}
		if opened {
			r.closeDev()
		}
	}
}

// verifyAll reads every block; recovered says a crash happened since the
// last check. It returns false if the file system crashed meanwhile (the
// blocks checked so far stay checked).
func (r *Runner) verifyAll(recovered bool) bool {
	r.t.Helper()
	p := make([]byte, r.bs)
	for b := 0; b < r.or.nblocks; b++ {
		err := r.dev.ReadAt(p, int64(b)*int64(r.bs))
		if r.crashed() {
			return false
		}
		if err != nil {
			r.fatalf("verify read lba %d: %v", b, err)
		}
		seq, err := DecodeBlock(p, uint64(b))
		if err == nil {
			if recovered {
				err = r.or.CheckRecovered(b, seq)
			} else {
				err = r.or.CheckLive(b, seq)
			}
		}
		if err != nil {
			r.fatalf("verify: %v", err)
		}
	}
	return true
}

// verifyReadOnly checks every block of a device that went read-only after
// an I/O failure; see SyncFailure.
func (r *Runner) verifyReadOnly() {
	r.t.Helper()
	p := make([]byte, r.bs)
	for b := 0; b < r.or.nblocks; b++ {
		if err := r.dev.ReadAt(p, int64(b)*int64(r.bs)); err != nil {
			if r.or.Unsettled(b) {
				continue
			}
			r.fatalf("read-only device: read lba %d (no failed write touched it): %v", b, err)
		}
		seq, err := DecodeBlock(p, uint64(b))
		if err == nil {
			err = r.or.CheckLive(b, seq)
		}
		if err != nil {
			r.fatalf("read-only device: %v", err)
		}
	}
}

// CrashRecovery crashes the file system (mode, seed) and recovers with the
// k-th Sync after the crash (counting from the reopen) armed to crash again
// (randomly), so crashes land inside recovery itself. It returns whether
// that second crash fired.
func (r *Runner) CrashRecovery(mode faultfs.CrashMode, seed uint64, k int) bool {
	r.t.Helper()
	r.note("crash(%s,%d) with a crash at recovery sync %d", mode, seed, k)
	r.fs.Crash(mode, seed)
	before := r.fs.CrashCount()
	r.fs.CrashAtSync(r.fs.SyncCount()+k, faultfs.CrashRandom, seed^0x5a5a)
	r.recover()
	fired := r.fs.CrashCount() != before
	r.fs.CrashAtSync(0, faultfs.CrashRandom, 0) // disarm if it did not fire
	return fired
}

// Close closes the device (no crash); a Close that does not return in 20 s
// fails the test.
func (r *Runner) Close() {
	r.t.Helper()
	if r.dev != nil {
		r.closeDev()
	}
}

// Stats returns what the crashes so far did to unflushed data.
func (r *Runner) Stats() Stats { return r.or.Stats() }

// Errors is how many device calls failed while errors were tolerated
// (SyncFailure).
func (r *Runner) Errors() int { return r.errs }

// Finish crashes the file system one last time, recovers and checks, then
// closes the Device.
func (r *Runner) Finish(mode faultfs.CrashMode, seed uint64) {
	r.t.Helper()
	r.note("final crash(%s,%d)", mode, seed)
	r.fs.Crash(mode, seed)
	r.recover()
	r.closeDev()
}

// CountSyncs runs ops on a fresh file system without any crash and returns
// how many Syncs they caused (create and the final close included).
func CountSyncs(t testing.TB, tgt Target, nblocks int, ops []Op) int {
	t.Helper()
	fs := faultfs.New()
	r := NewRunner(t, tgt, fs, nblocks)
	if r == nil {
		t.Fatalf("%s: create crashed without an armed crash", tgt.Name)
	}
	var clean []Op
	for _, op := range ops {
		if op.Kind != OpCrash {
			clean = append(clean, op)
		}
	}
	r.Run(clean)
	r.closeDev()
	return fs.SyncCount()
}

// withoutCrashes returns ops without OpCrash, ending with a clean reopen so
// that the syncs of Close are crash points too.
func withoutCrashes(ops []Op) []Op {
	var clean []Op
	for _, op := range ops {
		if op.Kind != OpCrash {
			clean = append(clean, op)
		}
	}
	return append(clean, Op{Kind: OpReopen})
}

// CrashAtEverySync runs ops once per sync point n = 1..N of the workload,
// each time with the n-th Sync turned into a crash (mode/seed varying with
// n), recovering, finishing the workload on the recovered Device and ending
// with a random crash.
func CrashAtEverySync(t testing.TB, tgt Target, nblocks int, ops []Op, seeds int) {
	t.Helper()
	n := CountSyncs(t, tgt, nblocks, ops)
	if n < 3 {
		t.Fatalf("%s: workload made only %d syncs", tgt.Name, n)
	}
	clean := withoutCrashes(ops)
	fired := 0
	for at := 1; at <= n; at++ {
		for s := 0; s < seeds; s++ {
			seed := uint64(at*1000 + s)
			mode := faultfs.CrashRandom
			if s == 0 && at%3 == 0 {
				mode = faultfs.CrashDropAll
			}
			fs := faultfs.New()
			fs.CrashAtSync(at, mode, seed)
			r := NewRunner(t, tgt, fs, nblocks)
			if r == nil {
				// Crashed inside create, which promised nothing: the
				// file must either refuse to open with an error or open
				// as an empty device.
				fired++
				checkHalfCreated(t, tgt, fs, nblocks, fmt.Sprintf("crash at sync %d inside create (%s seed %d)", at, mode, seed))
				continue
			}
			r.tgt.Name = fmt.Sprintf("%s crash-at-sync %d/%d %s seed %d", tgt.Name, at, n, mode, seed)
			r.Run(clean)
			if fs.CrashCount() > 0 {
				fired++
			}
			r.Finish(faultfs.CrashRandom, seed^0xabc)
		}
	}
	if fired == 0 {
		t.Fatalf("%s: no armed sync point ever fired", tgt.Name)
	}
	t.Logf("%s: %d sync points x %d seeds, %d crashes fired", tgt.Name, n, seeds, fired)
}

// Fault is an I/O failure FaultRun injects.
type Fault struct {
	// SyncAt fails the SyncAt-th Sync with EIO (0: none). Linux semantics:
	// later Syncs of the file succeed but make nothing durable.
	SyncAt int
	// Sticky: after the failed Sync every later Sync of the file fails too
	// (instead of Linux's report-once).
	Sticky bool
	// WriteAt fails write calls WriteAt .. WriteAt+WriteCount-1 with ENOSPC
	// (0: none; WriteCount 0: every write from then on); Short lands a
	// sector-aligned prefix first and reports a short count.
	WriteAt, WriteCount int
	Short               bool
	// ReadAt fails read calls ReadAt .. ReadAt+ReadCount-1 with EIO (0:
	// none; ReadCount 0: every read from then on). A read error alone
	// does not require the device to go read-only.
	ReadAt, ReadCount int
}

func (f Fault) String() string {
	if f.SyncAt > 0 {
		return fmt.Sprintf("sync %d fails (sticky=%v)", f.SyncAt, f.Sticky)
	}
	if f.WriteAt > 0 {
		return fmt.Sprintf("writes %d+%d fail (short=%v)", f.WriteAt, f.WriteCount, f.Short)
	}
	return fmt.Sprintf("reads %d+%d fail", f.ReadAt, f.ReadCount)
}

// checkHalfCreated opens what a crash inside create left: an error is fine,
// a device must be the right size and read as zeros.
func checkHalfCreated(t testing.TB, tgt Target, fs *faultfs.FS, nblocks int, what string) {
	t.Helper()
	dev, err := tgt.Open(fs)
	if err != nil {
		return
	}
	defer dev.Close()
	bs := dev.BlockSize()
	if dev.Size() != int64(nblocks*bs) {
		t.Fatalf("%s: %s: half-created device opened with size %d, want %d", tgt.Name, what, dev.Size(), nblocks*bs)
	}
	p := make([]byte, bs)
	for b := 0; b < nblocks; b++ {
		if err := dev.ReadAt(p, int64(b*bs)); err != nil {
			t.Fatalf("%s: %s: half-created device: read lba %d: %v", tgt.Name, what, b, err)
		}
		if seq, err := DecodeBlock(p, uint64(b)); err != nil || seq != 0 {
			t.Fatalf("%s: %s: half-created device: lba %d is not zeros (value %d, %v)", tgt.Name, what, b, seq, err)
		}
	}
}

// SyncFailure is FaultRun with Fault{SyncAt: failAt}.
func SyncFailure(t testing.TB, tgt Target, nblocks int, ops []Op, failAt int, mode faultfs.CrashMode, seed uint64, checkReadOnly bool) bool {
	t.Helper()
	return FaultRun(t, tgt, nblocks, ops, Fault{SyncAt: failAt}, mode, seed, checkReadOnly)
}

// FaultRun runs ops (without their crashes and reopens) with the fault
// injected (reads must return an error or the right data throughout), then,
// for a sync or write fault, checks that the device turned read-only
// (refuses a write with an error wrapping blockdev.ErrReadOnly, reports
// itself unhealthy if the target can tell, still serves reads),
// and finally crashes (mode, seed), reopens and checks that nothing
// acknowledged as flushed was lost. It returns whether the injected failure
// was reached. checkReadOnly false skips the read-only checks (to show that
// the crash check alone catches a device that ignores the failure).
func FaultRun(t testing.TB, tgt Target, nblocks int, ops []Op, fault Fault, mode faultfs.CrashMode, seed uint64, checkReadOnly bool) bool {
	t.Helper()
	fs := faultfs.New()
	if fault.SyncAt > 0 {
		fs.FailSync(fault.SyncAt, nil)
		fs.StickySyncErrors(fault.Sticky)
	}
	if fault.WriteAt > 0 {
		fs.FailWrites(fault.WriteAt, fault.WriteCount, nil, fault.Short)
	}
	if fault.ReadAt > 0 {
		fs.FailReads(fault.ReadAt, fault.ReadCount, nil)
	}
	reachedFn := func() bool {
		return (fault.SyncAt > 0 && fs.SyncCount() >= fault.SyncAt) ||
			(fault.WriteAt > 0 && fs.WriteCount() >= fault.WriteAt) ||
			(fault.ReadAt > 0 && fs.ReadCount() >= fault.ReadAt)
	}
	r, err := StartRunner(t, tgt, fs, nblocks)
	if err != nil && reachedFn() {
		return true // create failed on the injected error and said so
	}
	if err != nil || r == nil {
		t.Fatalf("%s: create: %v", tgt.Name, err)
	}
	r.tgt.Name = fmt.Sprintf("%s %v, then crash(%s,%d)", tgt.Name, fault, mode, seed)
	r.tolerateErrors = true
	var clean []Op
	for _, op := range ops {
		if op.Kind != OpCrash && op.Kind != OpReopen {
			clean = append(clean, op)
		}
	}
	r.Run(clean)
	reached := reachedFn()
	if fault.SyncAt == 0 && fault.WriteAt == 0 {
		checkReadOnly = false // read errors alone need not stop writes
	}
	if reached && checkReadOnly {
		// Make sure the failure was reported to the Device: flush until
		// it says something (a Device that never reports is caught here
		// and by the crash check).
		// The failed Sync may have run in a background goroutine of the
		// device that has not handled its error yet: give it a moment.
		for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			flushErr := r.dev.Flush()
			r.note("flush after failure -> %v", flushErr)
			if flushErr != nil {
				break
			}
			r.or.Flushed()
			if time.Now().After(deadline) {
				break // the write below must still be refused
			}
		}
		if tgt.Unhealthy != nil && !tgt.Unhealthy(r.dev) {
			r.fatalf("device does not report itself unhealthy after %v", fault)
		}
		seq := r.or.NextSeq()
		p := make([]byte, r.bs)
		BlockContent(p, 0, seq)
		err := r.dev.WriteAt(p, 0, false)
		r.note("write after failure seq=%d -> %v", seq, err)
		r.or.Record(0, 1, seq, err, false)
		if !errors.Is(err, blockdev.ErrReadOnly) {
			r.fatalf("write after the failure: %v, want an error wrapping blockdev.ErrReadOnly", err)
		}
		// Reads keep working on a read-only device and show the newest
		// acknowledged data, at least for every block no failed call
		// touched since (a block whose newest write failed may read as an
		// error: its newest data never reached the file).
		r.verifyReadOnly()
	}
	r.Finish(mode, seed)
	return reached
}

package scsi

import (
	"crypto/sha256"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/golang/glog"

	"github.com/weedblock/weedblock/blockdev"
)

// Options describe the logical unit to initiators.
type Options struct {
	// VendorID (8 ASCII chars), ProductID (16) and ProductRev (4) are the
	// standard INQUIRY identification; longer values are cut, shorter ones
	// padded with spaces.
	VendorID, ProductID, ProductRev string
	// SerialNumber is the unit serial number (VPD page 80h).
	SerialNumber string
	// VolumeName names the volume; the NAA identifier is derived from it
	// when NAA is empty.
	VolumeName string
	// NAA is an explicit 8- or 16-byte NAA designator (VPD page 83h). Its
	// first nibble must be the NAA type (3, 5 or 6).
	NAA []byte
	// DeviceName, when set, is reported as a SCSI name string designator
	// for the target device (for iSCSI, the target IQN).
	DeviceName string
	// ReadOnly makes every write fail with DATA PROTECT / WRITE PROTECTED
	// and sets WP in the mode parameter header.
	ReadOnly bool
	// LUN is the logical unit number this unit answers to (REPORT LUNS).
	LUN uint64
	// PhysicalBlockExponent is log2(physical block / logical block),
	// reported by READ CAPACITY (16).
	PhysicalBlockExponent uint8
	// MaxTransferBlocks bounds one READ/WRITE/VERIFY (VPD B0h). 0 means the
	// default (32 MiB worth of blocks).
	MaxTransferBlocks uint32
	// MaxUnmapBlocks and MaxUnmapDescriptors bound one UNMAP. 0 means the
	// defaults (the maximum transfer length and 256 descriptors).
	MaxUnmapBlocks, MaxUnmapDescriptors uint32
	// MaxWriteSameBlocks bounds one WRITE SAME. 0 means 1 GiB worth.
	MaxWriteSameBlocks uint32
}

// ResetKind says which task management reset happened.
type ResetKind int

const (
	// ResetLUN is LOGICAL UNIT RESET.
	ResetLUN ResetKind = iota
	// ResetTargetWarm is TARGET WARM RESET.
	ResetTargetWarm
	// ResetTargetCold is TARGET COLD RESET (treated as a power on).
	ResetTargetCold
)

// maxCompareAndWriteBlocks is the largest COMPARE AND WRITE (VPD B0h).
const maxCompareAndWriteBlocks = 255

// LogicalUnit is one SCSI direct-access logical unit over a block device.
// Execute may be called concurrently; state (reservations, unit attentions,
// mode pages) is guarded by mu, data I/O goes to the device unlocked except
// that COMPARE AND WRITE excludes overlapping writes through ranges.
type LogicalUnit struct {
	dev  blockdev.Device
	opts Options
	bs   uint32
	// blocks is the capacity in logical blocks; it changes only through
	// CapacityChanged.
	blocks   atomic.Uint64
	naa      []byte
	maxXfer  uint32
	maxUnmap uint32
	maxDescs uint32
	maxWS    uint32
	commands map[uint32]*commandInfo
	saOps    map[byte]bool
	ordered  []*commandInfo

	// wce mirrors the caching mode page WCE bit; when false every write is
	// written with FUA.
	wce    atomic.Bool
	ranges rangeLock
	// readBufs recycles READ data-in buffers (see ReleaseDataIn).
	readBufs readBuffers

	mu      sync.Mutex
	nexuses map[Nexus]*nexusState
	// reserve6 holds the nexus owning a RESERVE(6) reservation.
	reserve6 *Nexus
	pr       persistentReservations
}

// nexusState is what the unit remembers per I_T nexus.
type nexusState struct {
	uas     []ua
	prevent bool
}

// NewLogicalUnit returns a logical unit serving dev.
func NewLogicalUnit(dev blockdev.Device, opts Options) *LogicalUnit {
	lu := &LogicalUnit{
		dev:     dev,
		opts:    opts,
		bs:      uint32(dev.BlockSize()),
		nexuses: make(map[Nexus]*nexusState),
	}
	lu.blocks.Store(uint64(dev.Size()) / uint64(lu.bs))
	lu.maxXfer = opts.MaxTransferBlocks
	if lu.maxXfer == 0 {
		lu.maxXfer = uint32((32 << 20) / int(lu.bs))
	}
	lu.maxUnmap = opts.MaxUnmapBlocks
	if lu.maxUnmap == 0 {
		lu.maxUnmap = 0xFFFFFFFF
	}
	lu.maxDescs = opts.MaxUnmapDescriptors
	if lu.maxDescs == 0 {
		lu.maxDescs = 256
	}
	lu.maxWS = opts.MaxWriteSameBlocks
	if lu.maxWS == 0 {
		lu.maxWS = uint32((1 << 30) / int(lu.bs))
	}
	lu.naa = deriveNAA(opts)
	lu.wce.Store(true)
	lu.ranges.init()
	lu.buildCommandTable()
	return lu
}

// deriveNAA returns opts.NAA if valid, otherwise a locally assigned (type 3)
// 8-byte NAA identifier hashed from the volume name (or serial number).
func deriveNAA(opts Options) []byte {
	if n := len(opts.NAA); (n == 8 || n == 16) && opts.NAA[0]>>4 != 0 {
		return append([]byte(nil), opts.NAA...)
	}
	seed := opts.VolumeName
	if seed == "" {
		seed = opts.SerialNumber
	}
	h := sha256.Sum256([]byte("weedblock:" + seed))
	id := make([]byte, 8)
	copy(id, h[:8])
	id[0] = 0x30 | id[0]&0x0f
	return id
}

// BlockSize is the logical block size in bytes.
func (lu *LogicalUnit) BlockSize() uint32 { return lu.bs }

// Blocks is the capacity in logical blocks.
func (lu *LogicalUnit) Blocks() uint64 { return lu.blocks.Load() }

func (lu *LogicalUnit) nblocks() uint64 { return lu.blocks.Load() }

// CapacityChanged re-reads the device size after it changed (online grow)
// and, if the capacity differs, queues CAPACITY DATA HAS CHANGED (06/2A/09)
// for every known nexus so initiators re-read it.
func (lu *LogicalUnit) CapacityChanged() {
	n := uint64(lu.dev.Size()) / uint64(lu.bs)
	if lu.blocks.Swap(n) == n {
		return
	}
	lu.mu.Lock()
	defer lu.mu.Unlock()
	for nx := range lu.nexuses {
		lu.addUALocked(nx, uaCapacityChanged)
	}
}

// errConflict is returned by handlers for RESERVATION CONFLICT status.
var errConflict = errors.New("scsi: reservation conflict")

// request is one command being executed.
type request struct {
	cmd   *Command
	cdb   []byte
	nexus Nexus
	info  *commandInfo
	// buf is set by a handler whose data-in is a recycled buffer.
	buf *[]byte
}

// Execute runs one command and returns its outcome. It never panics on a
// malformed CDB or parameter list.
func (lu *LogicalUnit) Execute(cmd *Command) *Response {
	if cmd == nil || len(cmd.CDB) == 0 {
		return checkCondition(errInvalidOpcode())
	}
	cdb := cmd.CDB
	if cmd.LUN != lu.opts.LUN {
		return lu.wrongLUN(cmd)
	}
	info, cerr := lu.lookup(cdb)
	if cerr != nil {
		if r := lu.pendingUA(cmd.Nexus, false); r != nil {
			return r
		}
		return checkCondition(cerr)
	}
	if len(cdb) < info.cdbLen {
		return checkCondition(errInvalidFieldCDB())
	}
	if r := lu.admit(cmd.Nexus, info, cdb); r != nil {
		return r
	}
	req := &request{cmd: cmd, cdb: cdb[:info.cdbLen], nexus: cmd.Nexus, info: info}
	data, err := info.run(lu, req)
	if err != nil {
		if req.buf != nil {
			lu.readBufs.put(req.buf)
		}
		return lu.failure(info, err)
	}
	return &Response{Status: StatusGood, DataIn: data, buf: req.buf}
}

// failure turns a handler error into a response.
func (lu *LogicalUnit) failure(info *commandInfo, err error) *Response {
	var c *Condition
	switch {
	case errors.As(err, &c):
		return checkCondition(c)
	case errors.Is(err, errConflict):
		return &Response{Status: StatusReservationConflict}
	}
	glog.Warningf("scsi: %s: %v", info.name, err)
	return checkCondition(errInternalTarget())
}

func checkCondition(c *Condition) *Response {
	return &Response{Status: StatusCheckCondition, Sense: c.Sense()}
}

// wrongLUN answers a command addressed to a LUN this unit is not.
func (lu *LogicalUnit) wrongLUN(cmd *Command) *Response {
	switch cmd.CDB[0] {
	case opInquiry:
		if len(cmd.CDB) < 6 {
			return checkCondition(errInvalidFieldCDB())
		}
		// Peripheral qualifier 011b: no logical unit at this LUN.
		data := make([]byte, 36)
		data[0] = 0x7F
		data[2] = 0x06
		data[3] = 0x12
		data[4] = 31
		return &Response{Status: StatusGood, DataIn: clip(data, allocLen16(cmd.CDB[3:5]))}
	case opReportLUNs:
		info, cerr := lu.lookup(cmd.CDB)
		if cerr != nil || len(cmd.CDB) < info.cdbLen {
			return checkCondition(errInvalidFieldCDB())
		}
		data, err := info.run(lu, &request{cmd: cmd, cdb: cmd.CDB, nexus: cmd.Nexus, info: info})
		if err != nil {
			return lu.failure(info, err)
		}
		return &Response{Status: StatusGood, DataIn: data}
	case opRequestSense:
		if len(cmd.CDB) < 6 {
			return checkCondition(errInvalidFieldCDB())
		}
		return &Response{Status: StatusGood, DataIn: clip(errLUNotSupported().Sense(), int(cmd.CDB[4]))}
	}
	return checkCondition(errLUNotSupported())
}

func (lu *LogicalUnit) nexusLocked(n Nexus) *nexusState {
	st, ok := lu.nexuses[n]
	if !ok {
		st = &nexusState{}
		lu.nexuses[n] = st
	}
	return st
}

// pendingUA reports (and clears) the oldest unit attention of nexus n,
// unless the command is one that unit attentions do not stop (INQUIRY,
// REPORT LUNS, REQUEST SENSE).
func (lu *LogicalUnit) pendingUA(n Nexus, exempt bool) *Response {
	lu.mu.Lock()
	defer lu.mu.Unlock()
	st := lu.nexusLocked(n)
	if exempt || len(st.uas) == 0 {
		return nil
	}
	u := st.uas[0]
	st.uas = st.uas[1:]
	return checkCondition(u.condition())
}

// admit decides, under one acquisition of the state lock, whether a
// command may run: a pending unit attention (unless the command is exempt)
// or a reservation held through another nexus stops it.
func (lu *LogicalUnit) admit(n Nexus, info *commandInfo, cdb []byte) *Response {
	cls := classify(info, cdb)
	lu.mu.Lock()
	defer lu.mu.Unlock()
	st := lu.nexusLocked(n)
	if !info.uaExempt && len(st.uas) > 0 {
		u := st.uas[0]
		st.uas = st.uas[1:]
		return checkCondition(u.condition())
	}
	if lu.conflictsLocked(n, info, cls) {
		return &Response{Status: StatusReservationConflict}
	}
	return nil
}

// popUA removes and returns the oldest unit attention of n, if any.
func (lu *LogicalUnit) popUA(n Nexus) (ua, bool) {
	lu.mu.Lock()
	defer lu.mu.Unlock()
	st := lu.nexusLocked(n)
	if len(st.uas) == 0 {
		return 0, false
	}
	u := st.uas[0]
	st.uas = st.uas[1:]
	return u, true
}

// addUALocked queues a unit attention for nexus n (once per kind).
func (lu *LogicalUnit) addUALocked(n Nexus, u ua) {
	st := lu.nexusLocked(n)
	for _, have := range st.uas {
		if have == u {
			return
		}
	}
	const maxQueued = 16
	if len(st.uas) >= maxQueued {
		return
	}
	st.uas = append(st.uas, u)
}

// Reset performs the logical-unit side of a LOGICAL UNIT RESET or TARGET
// RESET received on nexus from: every other known nexus gets a unit
// attention, and non-persistent state (RESERVE(6), PREVENT ALLOW MEDIUM
// REMOVAL, mode page changes) is released. Persistent reservations survive.
func (lu *LogicalUnit) Reset(kind ResetKind, from Nexus) {
	u := uaDeviceReset
	switch kind {
	case ResetTargetWarm:
		u = uaBusReset
	case ResetTargetCold:
		u = uaPowerOn
	}
	lu.mu.Lock()
	defer lu.mu.Unlock()
	for n, st := range lu.nexuses {
		st.prevent = false
		if n == from {
			continue
		}
		// A reset supersedes older unit attentions.
		st.uas = append(st.uas[:0], u)
	}
	lu.reserve6 = nil
	lu.wce.Store(true)
}

// NexusLost forgets the state of an I_T nexus whose session ended:
// its unit attentions, its RESERVE(6) and PREVENT ALLOW MEDIUM REMOVAL.
// Persistent reservation registrations survive, as SPC-4 requires.
func (lu *LogicalUnit) NexusLost(n Nexus) {
	lu.mu.Lock()
	defer lu.mu.Unlock()
	delete(lu.nexuses, n)
	if lu.reserve6 != nil && *lu.reserve6 == n {
		lu.reserve6 = nil
	}
}

// ioError maps a device error to a check condition.
func ioError(err error, write bool) error {
	switch {
	case errors.Is(err, blockdev.ErrReadOnly):
		return errWriteProtected()
	case errors.Is(err, blockdev.ErrOutOfRange):
		return errLBAOutOfRange()
	case errors.Is(err, blockdev.ErrClosed):
		return errNotReady()
	}
	glog.Warningf("scsi: device I/O: %v", err)
	if write {
		return errWriteError()
	}
	return errUnrecoveredRead()
}

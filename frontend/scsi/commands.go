package scsi

import "sort"

// Operation codes this unit implements (SPC-4, SBC-3).
const (
	opTestUnitReady     = 0x00
	opRequestSense      = 0x03
	opRead6             = 0x08
	opWrite6            = 0x0A
	opInquiry           = 0x12
	opModeSelect6       = 0x15
	opReserve6          = 0x16
	opRelease6          = 0x17
	opModeSense6        = 0x1A
	opStartStopUnit     = 0x1B
	opPreventAllow      = 0x1E
	opReadCapacity10    = 0x25
	opRead10            = 0x28
	opWrite10           = 0x2A
	opWriteVerify10     = 0x2E
	opVerify10          = 0x2F
	opPrefetch10        = 0x34
	opSyncCache10       = 0x35
	opWriteSame10       = 0x41
	opUnmap             = 0x42
	opModeSelect10      = 0x55
	opModeSense10       = 0x5A
	opPersistResIn      = 0x5E
	opPersistResOut     = 0x5F
	opRead16            = 0x88
	opCompareAndWrite   = 0x89
	opWrite16           = 0x8A
	opWriteVerify16     = 0x8E
	opVerify16          = 0x8F
	opPrefetch16        = 0x90
	opSyncCache16       = 0x91
	opWriteSame16       = 0x93
	opServiceActionIn16 = 0x9E
	opReportLUNs        = 0xA0
	opMaintenanceIn     = 0xA3
	opRead12            = 0xA8
	opWrite12           = 0xAA
	opWriteVerify12     = 0xAE
	opVerify12          = 0xAF
)

// Service actions.
const (
	saReadCapacity16 = 0x10
	saGetLBAStatus   = 0x12
	saReportOpcodes  = 0x0C
	saReportTMFs     = 0x0D
)

// accessClass says how reservations held by other nexuses affect a
// command (SPC-4 5.13, table "SPC commands that are allowed in the presence
// of various reservations").
type accessClass int

const (
	// accessAlways: allowed whatever reservation exists.
	accessAlways accessClass = iota
	// accessRead: blocked by exclusive-access reservations only.
	accessRead
	// accessWrite: blocked by write-exclusive and exclusive-access ones.
	accessWrite
	// accessSpecial: decided by the command from its CDB (see classify).
	accessSpecial
)

// commandInfo describes one supported command: how to run it, how long its
// CDB is, and the CDB usage bitmap REPORT SUPPORTED OPERATION CODES returns.
type commandInfo struct {
	op     byte
	sa     uint16
	hasSA  bool
	name   string
	cdbLen int
	// usage is the CDB usage data: the operation code, the service action
	// in its place, and a mask of the bits the unit looks at elsewhere.
	usage    []byte
	access   accessClass
	uaExempt bool
	run      func(lu *LogicalUnit, r *request) ([]byte, error)
}

func key(op byte, sa uint16) uint32 { return uint32(op)<<16 | uint32(sa) }

// ff is n bytes of 0xFF.
func ff(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = 0xFF
	}
	return b
}

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func b(v ...byte) []byte { return v }

// buildCommandTable fills lu.commands with every implemented command.
func (lu *LogicalUnit) buildCommandTable() {
	const ctl = 0x07
	rw10 := func(op, flags byte) []byte { return cat(b(op, flags), ff(4), b(0x1F), ff(2), b(ctl)) }
	rw12 := func(op, flags byte) []byte { return cat(b(op, flags), ff(8), b(0x1F, ctl)) }
	rw16 := func(op, flags byte) []byte { return cat(b(op, flags), ff(12), b(0x1F, ctl)) }
	cmds := []*commandInfo{
		{op: opTestUnitReady, name: "TEST UNIT READY", cdbLen: 6, usage: b(0x00, 0, 0, 0, 0, ctl), run: (*LogicalUnit).testUnitReady},
		{op: opRequestSense, name: "REQUEST SENSE", cdbLen: 6, usage: b(0x03, 0x01, 0, 0, 0xFF, ctl), uaExempt: true, run: (*LogicalUnit).requestSense},
		{op: opRead6, name: "READ(6)", cdbLen: 6, usage: b(0x08, 0x1F, 0xFF, 0xFF, 0xFF, ctl), access: accessRead, run: (*LogicalUnit).read},
		{op: opWrite6, name: "WRITE(6)", cdbLen: 6, usage: b(0x0A, 0x1F, 0xFF, 0xFF, 0xFF, ctl), access: accessWrite, run: (*LogicalUnit).write},
		{op: opInquiry, name: "INQUIRY", cdbLen: 6, usage: b(0x12, 0x01, 0xFF, 0xFF, 0xFF, ctl), uaExempt: true, run: (*LogicalUnit).inquiry},
		{op: opModeSelect6, name: "MODE SELECT(6)", cdbLen: 6, usage: b(0x15, 0x11, 0, 0, 0xFF, ctl), access: accessWrite, run: (*LogicalUnit).modeSelect},
		{op: opReserve6, name: "RESERVE(6)", cdbLen: 6, usage: b(0x16, 0, 0, 0, 0, ctl), access: accessSpecial, run: (*LogicalUnit).reserve6Cmd},
		{op: opRelease6, name: "RELEASE(6)", cdbLen: 6, usage: b(0x17, 0, 0, 0, 0, ctl), access: accessSpecial, run: (*LogicalUnit).release6Cmd},
		{op: opModeSense6, name: "MODE SENSE(6)", cdbLen: 6, usage: b(0x1A, 0x08, 0xFF, 0xFF, 0xFF, ctl), access: accessRead, run: (*LogicalUnit).modeSense},
		{op: opStartStopUnit, name: "START STOP UNIT", cdbLen: 6, usage: b(0x1B, 0x01, 0, 0x0F, 0xF7, ctl), access: accessSpecial, run: (*LogicalUnit).startStopUnit},
		{op: opPreventAllow, name: "PREVENT ALLOW MEDIUM REMOVAL", cdbLen: 6, usage: b(0x1E, 0, 0, 0, 0x03, ctl), access: accessSpecial, run: (*LogicalUnit).preventAllow},
		{op: opReadCapacity10, name: "READ CAPACITY(10)", cdbLen: 10, usage: b(0x25, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, ctl), run: (*LogicalUnit).readCapacity10},
		{op: opRead10, name: "READ(10)", cdbLen: 10, usage: rw10(opRead10, 0x18), access: accessRead, run: (*LogicalUnit).read},
		{op: opWrite10, name: "WRITE(10)", cdbLen: 10, usage: rw10(opWrite10, 0x18), access: accessWrite, run: (*LogicalUnit).write},
		{op: opWriteVerify10, name: "WRITE AND VERIFY(10)", cdbLen: 10, usage: rw10(opWriteVerify10, 0x12), access: accessWrite, run: (*LogicalUnit).writeAndVerify},
		{op: opVerify10, name: "VERIFY(10)", cdbLen: 10, usage: rw10(opVerify10, 0x16), access: accessRead, run: (*LogicalUnit).verify},
		{op: opPrefetch10, name: "PRE-FETCH(10)", cdbLen: 10, usage: rw10(opPrefetch10, 0x02), access: accessRead, run: (*LogicalUnit).prefetch},
		{op: opSyncCache10, name: "SYNCHRONIZE CACHE(10)", cdbLen: 10, usage: rw10(opSyncCache10, 0x02), access: accessWrite, run: (*LogicalUnit).syncCache},
		{op: opWriteSame10, name: "WRITE SAME(10)", cdbLen: 10, usage: rw10(opWriteSame10, 0x08), access: accessWrite, run: (*LogicalUnit).writeSame},
		{op: opUnmap, name: "UNMAP", cdbLen: 10, usage: b(0x42, 0, 0, 0, 0, 0, 0x1F, 0xFF, 0xFF, ctl), access: accessWrite, run: (*LogicalUnit).unmap},
		{op: opModeSelect10, name: "MODE SELECT(10)", cdbLen: 10, usage: b(0x55, 0x10, 0, 0, 0, 0, 0, 0xFF, 0xFF, ctl), access: accessWrite, run: (*LogicalUnit).modeSelect},
		{op: opModeSense10, name: "MODE SENSE(10)", cdbLen: 10, usage: b(0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, ctl), access: accessRead, run: (*LogicalUnit).modeSense},
		{op: opRead16, name: "READ(16)", cdbLen: 16, usage: rw16(opRead16, 0x18), access: accessRead, run: (*LogicalUnit).read},
		{op: opCompareAndWrite, name: "COMPARE AND WRITE", cdbLen: 16, usage: cat(b(0x89, 0x18), ff(8), b(0, 0, 0, 0xFF, 0x1F, ctl)), access: accessWrite, run: (*LogicalUnit).compareAndWrite},
		{op: opWrite16, name: "WRITE(16)", cdbLen: 16, usage: rw16(opWrite16, 0x18), access: accessWrite, run: (*LogicalUnit).write},
		{op: opWriteVerify16, name: "WRITE AND VERIFY(16)", cdbLen: 16, usage: rw16(opWriteVerify16, 0x12), access: accessWrite, run: (*LogicalUnit).writeAndVerify},
		{op: opVerify16, name: "VERIFY(16)", cdbLen: 16, usage: rw16(opVerify16, 0x16), access: accessRead, run: (*LogicalUnit).verify},
		{op: opPrefetch16, name: "PRE-FETCH(16)", cdbLen: 16, usage: rw16(opPrefetch16, 0x02), access: accessRead, run: (*LogicalUnit).prefetch},
		{op: opSyncCache16, name: "SYNCHRONIZE CACHE(16)", cdbLen: 16, usage: rw16(opSyncCache16, 0x02), access: accessWrite, run: (*LogicalUnit).syncCache},
		{op: opWriteSame16, name: "WRITE SAME(16)", cdbLen: 16, usage: rw16(opWriteSame16, 0x09), access: accessWrite, run: (*LogicalUnit).writeSame},
		{op: opServiceActionIn16, sa: saReadCapacity16, hasSA: true, name: "READ CAPACITY(16)", cdbLen: 16, usage: cat(b(0x9E, saReadCapacity16), ff(12), b(0, ctl)), run: (*LogicalUnit).readCapacity16},
		{op: opServiceActionIn16, sa: saGetLBAStatus, hasSA: true, name: "GET LBA STATUS", cdbLen: 16, usage: cat(b(0x9E, saGetLBAStatus), ff(12), b(0, ctl)), access: accessRead, run: (*LogicalUnit).getLBAStatus},
		{op: opReportLUNs, name: "REPORT LUNS", cdbLen: 12, usage: cat(b(0xA0, 0, 0xFF, 0, 0, 0), ff(4), b(0, ctl)), uaExempt: true, run: (*LogicalUnit).reportLUNs},
		{op: opMaintenanceIn, sa: saReportOpcodes, hasSA: true, name: "REPORT SUPPORTED OPERATION CODES", cdbLen: 12, usage: cat(b(0xA3, saReportOpcodes, 0x87, 0xFF, 0xFF, 0xFF), ff(4), b(0, ctl)), run: (*LogicalUnit).reportOpcodes},
		{op: opMaintenanceIn, sa: saReportTMFs, hasSA: true, name: "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS", cdbLen: 12, usage: cat(b(0xA3, saReportTMFs, 0x80, 0, 0, 0), ff(4), b(0, ctl)), run: (*LogicalUnit).reportTMFs},
		{op: opRead12, name: "READ(12)", cdbLen: 12, usage: rw12(opRead12, 0x18), access: accessRead, run: (*LogicalUnit).read},
		{op: opWrite12, name: "WRITE(12)", cdbLen: 12, usage: rw12(opWrite12, 0x18), access: accessWrite, run: (*LogicalUnit).write},
		{op: opWriteVerify12, name: "WRITE AND VERIFY(12)", cdbLen: 12, usage: rw12(opWriteVerify12, 0x12), access: accessWrite, run: (*LogicalUnit).writeAndVerify},
		{op: opVerify12, name: "VERIFY(12)", cdbLen: 12, usage: rw12(opVerify12, 0x16), access: accessRead, run: (*LogicalUnit).verify},
	}
	for sa, name := range map[uint16]string{
		prInReadKeys: "PERSISTENT RESERVE IN: READ KEYS", prInReadReservation: "PERSISTENT RESERVE IN: READ RESERVATION",
		prInReportCapabilities: "PERSISTENT RESERVE IN: REPORT CAPABILITIES", prInReadFullStatus: "PERSISTENT RESERVE IN: READ FULL STATUS",
	} {
		cmds = append(cmds, &commandInfo{op: opPersistResIn, sa: sa, hasSA: true, name: name, cdbLen: 10,
			usage: b(opPersistResIn, byte(sa), 0, 0, 0, 0, 0, 0xFF, 0xFF, ctl), uaExempt: false, run: (*LogicalUnit).persistentReserveIn})
	}
	for sa, name := range map[uint16]string{
		prOutRegister: "REGISTER", prOutReserve: "RESERVE", prOutRelease: "RELEASE", prOutClear: "CLEAR",
		prOutPreempt: "PREEMPT", prOutPreemptAbort: "PREEMPT AND ABORT", prOutRegisterIgnore: "REGISTER AND IGNORE EXISTING KEY",
	} {
		cmds = append(cmds, &commandInfo{op: opPersistResOut, sa: sa, hasSA: true, name: "PERSISTENT RESERVE OUT: " + name, cdbLen: 10,
			usage: b(opPersistResOut, byte(sa), 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, ctl), run: (*LogicalUnit).persistentReserveOut})
	}
	sort.Slice(cmds, func(i, j int) bool { return key(cmds[i].op, cmds[i].sa) < key(cmds[j].op, cmds[j].sa) })
	lu.ordered = cmds
	lu.commands = make(map[uint32]*commandInfo, len(cmds))
	lu.saOps = make(map[byte]bool)
	for _, c := range cmds {
		lu.commands[key(c.op, c.sa)] = c
		if c.hasSA {
			lu.saOps[c.op] = true
		}
	}
}

// serviceAction extracts the service action of a CDB whose operation code
// has service actions; ok is false if the CDB is too short to hold it.
func serviceAction(cdb []byte) (uint16, bool) {
	if len(cdb) < 2 {
		return 0, false
	}
	return uint16(cdb[1] & 0x1F), true
}

// lookup finds the command a CDB names.
func (lu *LogicalUnit) lookup(cdb []byte) (*commandInfo, *Condition) {
	op := cdb[0]
	var sa uint16
	if lu.saOps[op] {
		s, ok := serviceAction(cdb)
		if !ok {
			return nil, errInvalidFieldCDB()
		}
		sa = s
		c := lu.commands[key(op, sa)]
		if c == nil {
			return nil, errInvalidFieldCDB()
		}
		return c, nil
	}
	c := lu.commands[key(op, 0)]
	if c == nil {
		return nil, errInvalidOpcode()
	}
	return c, nil
}

// reportOpcodes is REPORT SUPPORTED OPERATION CODES (SPC-4 6.35).
func (lu *LogicalUnit) reportOpcodes(r *request) ([]byte, error) {
	cdb := r.cdb
	rctd := cdb[2]&0x80 != 0
	options := cdb[2] & 0x07
	reqOp := cdb[3]
	reqSA := be16(cdb[4:6])
	alloc := int(be32(cdb[6:10]))
	timeouts := func() []byte {
		// Command timeouts descriptor: length 0x0A, no specific
		// timeouts (0 = not specified).
		return []byte{0, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	}
	switch options {
	case 0:
		var body []byte
		for _, c := range lu.ordered {
			d := make([]byte, 8)
			d[0] = c.op
			put16(d[2:], c.sa)
			if c.hasSA {
				d[5] |= 0x01
			}
			if rctd {
				d[5] |= 0x02
			}
			put16(d[6:], uint16(c.cdbLen))
			body = append(body, d...)
			if rctd {
				body = append(body, timeouts()...)
			}
		}
		out := make([]byte, 4, 4+len(body))
		put32(out, uint32(len(body)))
		return clip(append(out, body...), alloc), nil
	case 1, 2, 3:
		hasSA := lu.saOps[reqOp]
		var c *commandInfo
		switch {
		case options == 1 && hasSA:
			return nil, errInvalidFieldCDB()
		case options == 2 && !hasSA:
			return nil, errInvalidFieldCDB()
		case options == 1 || (options == 3 && !hasSA):
			if options == 3 && reqSA != 0 {
				// A service action for an operation code without
				// service actions: not supported.
				c = nil
			} else {
				c = lu.commands[key(reqOp, 0)]
			}
		default:
			if reqSA <= 0x1F {
				c = lu.commands[key(reqOp, reqSA)]
			}
		}
		var out []byte
		if c == nil {
			out = []byte{0, 0x01, 0, 0}
		} else {
			out = make([]byte, 4, 4+len(c.usage)+12)
			out[1] = 0x03 // supported, standard conforming
			if rctd {
				out[1] |= 0x80
			}
			put16(out[2:], uint16(len(c.usage)))
			out = append(out, c.usage...)
			if rctd {
				out = append(out, timeouts()...)
			}
		}
		return clip(out, alloc), nil
	}
	return nil, errInvalidFieldCDB()
}

// reportTMFs is REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 6.37).
// It claims what SAM-5 requires plus what an iSCSI target provides: ABORT
// TASK, ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET, and (for the
// target) TARGET RESET.
func (lu *LogicalUnit) reportTMFs(r *request) ([]byte, error) {
	repd := r.cdb[2]&0x80 != 0
	alloc := int(be32(r.cdb[6:10]))
	if alloc < 4 {
		return nil, errInvalidFieldCDB()
	}
	out := make([]byte, 4)
	out[0] = 0x80 | 0x40 | 0x10 | 0x08 | 0x02 // ATS ATSS CTSS LURS TRS
	if repd {
		out = append(out, make([]byte, 12)...)
		out[3] = 0x0C
	}
	return clip(out, alloc), nil
}

package scsi

import "strings"

// Reservations: persistent reservations (SPC-4 5.13, PERSISTENT RESERVE IN
// and OUT) kept in memory (APTPL is not supported), and the older
// RESERVE(6)/RELEASE(6) kind.

// PERSISTENT RESERVE IN service actions.
const (
	prInReadKeys           = 0x00
	prInReadReservation    = 0x01
	prInReportCapabilities = 0x02
	prInReadFullStatus     = 0x03
)

// PERSISTENT RESERVE OUT service actions.
const (
	prOutRegister       = 0x00
	prOutReserve        = 0x01
	prOutRelease        = 0x02
	prOutClear          = 0x03
	prOutPreempt        = 0x04
	prOutPreemptAbort   = 0x05
	prOutRegisterIgnore = 0x06
)

// Persistent reservation types.
const (
	prTypeWE   = 0x1 // write exclusive
	prTypeEA   = 0x3 // exclusive access
	prTypeWERO = 0x5 // write exclusive, registrants only
	prTypeEARO = 0x6 // exclusive access, registrants only
	prTypeWEAR = 0x7 // write exclusive, all registrants
	prTypeEAAR = 0x8 // exclusive access, all registrants
)

const prOutParamLen = 24

// registration is one registered I_T nexus and its key.
type registration struct {
	nexus Nexus
	key   uint64
}

// persistentReservations is the PR state of the unit; guarded by
// LogicalUnit.mu.
type persistentReservations struct {
	generation uint32
	regs       []registration
	// resType is 0 when no persistent reservation exists.
	resType byte
	// holder is the reservation holder for the non-all-registrants types.
	holder Nexus
}

func validPRType(t byte) bool {
	switch t {
	case prTypeWE, prTypeEA, prTypeWERO, prTypeEARO, prTypeWEAR, prTypeEAAR:
		return true
	}
	return false
}

func allRegistrants(t byte) bool  { return t == prTypeWEAR || t == prTypeEAAR }
func registrantsOnly(t byte) bool { return t == prTypeWERO || t == prTypeEARO }

func (p *persistentReservations) find(n Nexus) int {
	for i, r := range p.regs {
		if r.nexus == n {
			return i
		}
	}
	return -1
}

func (p *persistentReservations) isHolder(n Nexus) bool {
	if p.resType == 0 {
		return false
	}
	if allRegistrants(p.resType) {
		return p.find(n) >= 0
	}
	return p.holder == n
}

// unregister removes registration i and applies what losing the holder
// means for the reservation. It returns the nexuses that must be told the
// reservation was released.
func (p *persistentReservations) unregister(i int) []Nexus {
	n := p.regs[i].nexus
	p.regs = append(p.regs[:i], p.regs[i+1:]...)
	if p.resType == 0 {
		return nil
	}
	if allRegistrants(p.resType) {
		if len(p.regs) == 0 {
			p.resType = 0
		}
		return nil
	}
	if p.holder != n {
		return nil
	}
	t := p.resType
	p.resType, p.holder = 0, Nexus{}
	if !registrantsOnly(t) {
		return nil
	}
	var tell []Nexus
	for _, r := range p.regs {
		tell = append(tell, r.nexus)
	}
	return tell
}

// classify resolves the access class of commands whose effect on
// reservations depends on their CDB.
func classify(info *commandInfo, cdb []byte) accessClass {
	if info.access != accessSpecial {
		return info.access
	}
	switch info.op {
	case opStartStopUnit:
		if cdb[4]&0x01 != 0 && cdb[4]>>4 == 0 {
			return accessAlways
		}
		return accessWrite
	case opPreventAllow:
		if cdb[4]&0x03 == 0 {
			return accessAlways
		}
		return accessWrite
	}
	return accessAlways
}

// conflictsLocked reports whether a reservation held through another
// nexus forbids a command of class cls (RESERVATION CONFLICT).
func (lu *LogicalUnit) conflictsLocked(n Nexus, info *commandInfo, cls accessClass) bool {
	if lu.reserve6 != nil && *lu.reserve6 != n {
		switch info.op {
		case opReserve6, opRelease6:
			return false // decided by the command itself
		case opPersistResIn, opPersistResOut:
			return true
		}
		return cls != accessAlways
	}
	p := &lu.pr
	if p.resType == 0 || cls == accessAlways || p.isHolder(n) {
		return false
	}
	registered := p.find(n) >= 0
	switch p.resType {
	case prTypeWE:
		return cls == accessWrite
	case prTypeEA:
		return true
	case prTypeWERO, prTypeWEAR:
		return cls == accessWrite && !registered
	default: // EARO, EAAR
		return !registered
	}
}

// reserve6Cmd is RESERVE(6): a whole-unit reservation for this nexus.
func (lu *LogicalUnit) reserve6Cmd(r *request) ([]byte, error) {
	if r.cdb[1]&0x1F != 0 { // third-party / extent reservations
		return nil, errInvalidFieldCDB()
	}
	lu.mu.Lock()
	defer lu.mu.Unlock()
	if lu.pr.resType != 0 || len(lu.pr.regs) > 0 {
		return nil, errConflict
	}
	if lu.reserve6 != nil && *lu.reserve6 != r.nexus {
		return nil, errConflict
	}
	n := r.nexus
	lu.reserve6 = &n
	return nil, nil
}

// release6Cmd is RELEASE(6): drops this nexus's RESERVE(6); a no-op
// otherwise.
func (lu *LogicalUnit) release6Cmd(r *request) ([]byte, error) {
	if r.cdb[1]&0x1F != 0 {
		return nil, errInvalidFieldCDB()
	}
	lu.mu.Lock()
	defer lu.mu.Unlock()
	if lu.reserve6 != nil && *lu.reserve6 == r.nexus {
		lu.reserve6 = nil
	}
	return nil, nil
}

func (lu *LogicalUnit) persistentReserveIn(r *request) ([]byte, error) {
	sa := r.cdb[1] & 0x1F
	alloc := allocLen16(r.cdb[7:9])
	lu.mu.Lock()
	defer lu.mu.Unlock()
	p := &lu.pr
	var out []byte
	switch sa {
	case prInReadKeys:
		out = make([]byte, 8, 8+8*len(p.regs))
		put32(out[0:], p.generation)
		for _, reg := range p.regs {
			k := make([]byte, 8)
			put64(k, reg.key)
			out = append(out, k...)
		}
		put32(out[4:], uint32(len(out)-8))
	case prInReadReservation:
		out = make([]byte, 8)
		put32(out[0:], p.generation)
		if p.resType != 0 {
			d := make([]byte, 16)
			if !allRegistrants(p.resType) {
				if i := p.find(p.holder); i >= 0 {
					put64(d[0:], p.regs[i].key)
				}
			}
			d[13] = p.resType // scope 0: logical unit
			out = append(out, d...)
			put32(out[4:], 16)
		}
	case prInReportCapabilities:
		out = make([]byte, 8)
		put16(out[0:], 8)
		out[2] = 0x10 // CRH: RESERVE(6) handled as SPC-4 5.13.3 says
		out[3] = 0x80 // TMV: the type mask is valid
		out[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02
		out[5] = 0x01
	case prInReadFullStatus:
		out = make([]byte, 8)
		put32(out[0:], p.generation)
		for _, reg := range p.regs {
			tid := transportID(reg.nexus.InitiatorPort)
			d := make([]byte, 24, 24+len(tid))
			put64(d[0:], reg.key)
			if p.isHolder(reg.nexus) {
				d[12] = 0x01
				d[13] = p.resType
			}
			put16(d[18:], reg.nexus.RelativeTargetPortID)
			put32(d[20:], uint32(len(tid)))
			out = append(out, append(d, tid...)...)
		}
		put32(out[4:], uint32(len(out)-8))
	default:
		return nil, errInvalidFieldCDB()
	}
	return clip(out, alloc), nil
}

// transportID encodes an iSCSI initiator port as a TransportID (SPC-4
// 7.6.4.6): format 01b ("name,i,0xISID") when the port name has that form,
// format 00b (device name only) otherwise.
func transportID(port string) []byte {
	format := byte(0x00)
	if strings.Contains(port, ",i,0x") {
		format = 0x40
	}
	n := len(port) + 1
	if n < 20 {
		n = 20
	}
	n = (n + 3) &^ 3
	if n > 0xFFFF-4 {
		n = (0xFFFF - 4) &^ 3
		port = port[:n-1]
	}
	out := make([]byte, 4+n)
	out[0] = format | protocolIDISCSI
	put16(out[2:], uint16(n))
	copy(out[4:], port)
	return out
}

// tellLocked queues unit attention u for each nexus in ns except skip.
func (lu *LogicalUnit) tellLocked(ns []Nexus, skip Nexus, u ua) {
	for _, n := range ns {
		if n != skip {
			lu.addUALocked(n, u)
		}
	}
}

func (lu *LogicalUnit) persistentReserveOut(r *request) ([]byte, error) {
	sa := r.cdb[1] & 0x1F
	scope, typ := r.cdb[2]>>4, r.cdb[2]&0x0F
	plen := be32(r.cdb[5:9])
	if plen != prOutParamLen {
		return nil, errParamListLength()
	}
	if len(r.cmd.DataOut) < prOutParamLen {
		return nil, errParamListLength()
	}
	data := r.cmd.DataOut[:prOutParamLen]
	resKey, saKey := be64(data[0:8]), be64(data[8:16])
	flags := data[20]
	const (
		specIPT  = 0x08
		allTgtPT = 0x04
		aptpl    = 0x01
	)
	n := r.nexus
	lu.mu.Lock()
	defer lu.mu.Unlock()
	p := &lu.pr
	me := p.find(n)
	switch sa {
	case prOutRegister, prOutRegisterIgnore:
		if flags&(specIPT|allTgtPT|aptpl) != 0 {
			return nil, errInvalidFieldParam()
		}
		if me < 0 {
			if sa == prOutRegister && resKey != 0 {
				return nil, errConflict
			}
			if saKey == 0 {
				return nil, nil
			}
			p.regs = append(p.regs, registration{nexus: n, key: saKey})
			p.generation++
			return nil, nil
		}
		if sa == prOutRegister && resKey != p.regs[me].key {
			return nil, errConflict
		}
		if saKey == 0 {
			lu.tellLocked(p.unregister(me), n, uaReservationsReleased)
		} else {
			p.regs[me].key = saKey
		}
		p.generation++
		return nil, nil
	}
	// Every other service action needs a registered nexus with its key.
	if me < 0 || p.regs[me].key != resKey {
		return nil, errConflict
	}
	switch sa {
	case prOutReserve:
		if scope != 0 || !validPRType(typ) {
			return nil, errInvalidFieldCDB()
		}
		if p.resType == 0 {
			p.resType, p.holder = typ, n
			return nil, nil
		}
		if p.isHolder(n) && p.resType == typ {
			return nil, nil
		}
		return nil, errConflict
	case prOutRelease:
		if p.resType == 0 || !p.isHolder(n) {
			return nil, nil
		}
		if scope != 0 || typ != p.resType {
			return nil, errInvalidRelease()
		}
		t := p.resType
		p.resType, p.holder = 0, Nexus{}
		if t != prTypeWE && t != prTypeEA {
			for _, reg := range p.regs {
				if reg.nexus != n {
					lu.addUALocked(reg.nexus, uaReservationsReleased)
				}
			}
		}
		return nil, nil
	case prOutClear:
		for _, reg := range p.regs {
			if reg.nexus != n {
				lu.addUALocked(reg.nexus, uaReservationsPreempted)
			}
		}
		p.regs = nil
		p.resType, p.holder = 0, Nexus{}
		p.generation++
		return nil, nil
	case prOutPreempt, prOutPreemptAbort:
		if scope != 0 || !validPRType(typ) {
			return nil, errInvalidFieldCDB()
		}
		return nil, lu.preemptLocked(n, saKey, typ)
	}
	return nil, errInvalidFieldCDB()
}

// preemptLocked is PREEMPT (and PREEMPT AND ABORT; aborting the preempted
// nexuses' tasks is the transport's business) per SPC-4 5.13.11.4.
func (lu *LogicalUnit) preemptLocked(n Nexus, saKey uint64, typ byte) error {
	p := &lu.pr
	// removeKey drops every registration (but n's) with the key, telling
	// each one; it reports whether any existed.
	removeKey := func(key uint64, all bool) bool {
		found := false
		kept := p.regs[:0]
		for _, reg := range p.regs {
			if reg.nexus != n && (all || reg.key == key) {
				found = true
				lu.addUALocked(reg.nexus, uaRegistrationsPreempted)
				continue
			}
			kept = append(kept, reg)
		}
		p.regs = kept
		return found
	}
	switch {
	case p.resType == 0:
		if saKey == 0 {
			return errInvalidFieldParam()
		}
		if !removeKey(saKey, false) {
			return errConflict
		}
	case allRegistrants(p.resType):
		if saKey == 0 {
			removeKey(0, true)
			p.resType, p.holder = typ, n
		} else if !removeKey(saKey, false) {
			return errConflict
		}
	default:
		holderKey := uint64(0)
		if i := p.find(p.holder); i >= 0 {
			holderKey = p.regs[i].key
		}
		if saKey == holderKey {
			removeKey(saKey, false)
			if typ != p.resType {
				// The reservation changed type: those still
				// registered are told it was released.
				for _, reg := range p.regs {
					if reg.nexus != n {
						lu.addUALocked(reg.nexus, uaReservationsReleased)
					}
				}
			}
			p.resType, p.holder = typ, n
		} else {
			if saKey == 0 {
				return errInvalidFieldParam()
			}
			if !removeKey(saKey, false) {
				return errConflict
			}
		}
	}
	p.generation++
	return nil
}

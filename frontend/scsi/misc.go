package scsi

// Commands about the unit rather than its data: TEST UNIT READY, REQUEST
// SENSE, REPORT LUNS, START STOP UNIT and PREVENT ALLOW MEDIUM REMOVAL.

func (lu *LogicalUnit) testUnitReady(r *request) ([]byte, error) { return nil, nil }

// requestSense returns (and clears) a pending unit attention of the nexus
// as sense data, or NO SENSE. Only fixed-format sense is supported.
func (lu *LogicalUnit) requestSense(r *request) ([]byte, error) {
	if r.cdb[1]&0x01 != 0 {
		return nil, errInvalidFieldCDB()
	}
	alloc := int(r.cdb[4])
	var sense []byte
	if u, ok := lu.popUA(r.nexus); ok {
		sense = u.condition().Sense()
	} else {
		sense = cond(SenseNoSense, 0, 0).Sense()
	}
	return clip(sense, alloc), nil
}

// encodeLUN returns the 8-byte LUN for lun (SAM-5 4.7: peripheral device
// addressing below 256, flat space addressing up to 16383).
func encodeLUN(lun uint64) []byte {
	out := make([]byte, 8)
	switch {
	case lun < 256:
		out[1] = byte(lun)
	case lun < 1<<14:
		out[0] = 0x40 | byte(lun>>8)
		out[1] = byte(lun)
	default:
		put64(out, lun)
	}
	return out
}

func (lu *LogicalUnit) reportLUNs(r *request) ([]byte, error) {
	sel := r.cdb[2]
	alloc := int(be32(r.cdb[6:10]))
	if alloc < 16 {
		return nil, errInvalidFieldCDB()
	}
	out := make([]byte, 8, 16)
	switch sel {
	case 0x00, 0x02, 0x11:
		out = append(out, encodeLUN(lu.opts.LUN)...)
	case 0x01, 0x10, 0x12:
		// Well-known LUNs / administrative LUN lists: none here.
	default:
		return nil, errInvalidFieldCDB()
	}
	put32(out, uint32(len(out)-8))
	return clip(out, alloc), nil
}

// startStopUnit is START STOP UNIT. The medium is not removable, so an eject
// or load (LOEJ) is refused; power-condition changes and start/stop are
// accepted and have no effect (the unit is always ready).
func (lu *LogicalUnit) startStopUnit(r *request) ([]byte, error) {
	pc := r.cdb[4] >> 4
	loej := r.cdb[4]&0x02 != 0
	if pc == 0 && loej {
		return nil, errInvalidFieldCDB()
	}
	switch pc {
	case 0x0, 0x1, 0x2, 0x3, 0x7, 0xA, 0xB:
	default:
		return nil, errInvalidFieldCDB()
	}
	return nil, nil
}

// preventAllow is PREVENT ALLOW MEDIUM REMOVAL. The state is kept per nexus
// (released by reset and nexus loss) though the medium cannot be removed.
func (lu *LogicalUnit) preventAllow(r *request) ([]byte, error) {
	prevent := r.cdb[4] & 0x03
	if prevent > 1 {
		// 10b/11b are obsolete or for medium changers.
		return nil, errInvalidFieldCDB()
	}
	lu.mu.Lock()
	lu.nexusLocked(r.nexus).prevent = prevent == 1
	lu.mu.Unlock()
	return nil, nil
}

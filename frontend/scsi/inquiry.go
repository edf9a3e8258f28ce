package scsi

// INQUIRY (SPC-4 6.6) and the vital product data pages (SPC-4 7.8, SBC-3
// 6.5).

// VPD page codes.
const (
	vpdSupported       = 0x00
	vpdSerial          = 0x80
	vpdDeviceID        = 0x83
	vpdBlockLimits     = 0xB0
	vpdBlockDevChars   = 0xB1
	vpdProvisioning    = 0xB2
	protocolIDISCSI    = 0x5
	versionSAM5        = 0x00A0
	versionSPC4        = 0x0460
	versionSBC3        = 0x04C0
	versionISCSI       = 0x0960
	standardInquiryLen = 96
)

// ascii returns s cut or space-padded to n bytes, with bytes outside the
// printable ASCII range replaced by spaces.
func ascii(s string, n int) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = ' '
		if i < len(s) && s[i] >= 0x20 && s[i] < 0x7F {
			out[i] = s[i]
		}
	}
	return out
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func (lu *LogicalUnit) inquiry(r *request) ([]byte, error) {
	evpd := r.cdb[1]&0x01 != 0
	if r.cdb[1]&0x02 != 0 { // CMDDT (obsolete)
		return nil, errInvalidFieldCDB()
	}
	page := r.cdb[2]
	alloc := allocLen16(r.cdb[3:5])
	if !evpd {
		if page != 0 {
			return nil, errInvalidFieldCDB()
		}
		return clip(lu.standardInquiry(), alloc), nil
	}
	var body []byte
	switch page {
	case vpdSupported:
		body = []byte{vpdSupported, vpdSerial, vpdDeviceID, vpdBlockLimits, vpdBlockDevChars, vpdProvisioning}
	case vpdSerial:
		s := orDefault(lu.opts.SerialNumber, lu.hexID())
		body = ascii(s, len(s))
	case vpdDeviceID:
		body = lu.deviceIdentification(r.nexus)
	case vpdBlockLimits:
		body = lu.blockLimits()
	case vpdBlockDevChars:
		body = make([]byte, 0x3C)
		put16(body[0:], 0x0001) // non-rotating medium
	case vpdProvisioning:
		body = make([]byte, 4)
		body[1] = 0x80 | 0x40 | 0x20 | 0x04 // LBPU LBPWS LBPWS10 LBPRZ
		body[2] = 0x02                      // thin provisioned
	default:
		return nil, errInvalidFieldCDB()
	}
	out := make([]byte, 4, 4+len(body))
	out[1] = page
	put16(out[2:], uint16(len(body)))
	return clip(append(out, body...), alloc), nil
}

func (lu *LogicalUnit) standardInquiry() []byte {
	d := make([]byte, standardInquiryLen)
	d[0] = 0x00 // connected direct-access block device
	d[2] = 0x06 // SPC-4
	d[3] = 0x10 | 0x02
	d[4] = standardInquiryLen - 5
	d[7] = 0x02 // CMDQUE
	copy(d[8:16], ascii(orDefault(lu.opts.VendorID, "WEEDBLK"), 8))
	copy(d[16:32], ascii(orDefault(lu.opts.ProductID, "VOLUME"), 16))
	copy(d[32:36], ascii(orDefault(lu.opts.ProductRev, "0001"), 4))
	for i, v := range []uint16{versionSAM5, versionISCSI, versionSPC4, versionSBC3} {
		put16(d[58+2*i:], v)
	}
	return d
}

// hexID is the NAA identifier in hex, used as default serial number.
func (lu *LogicalUnit) hexID() string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(lu.naa))
	for _, c := range lu.naa {
		out = append(out, digits[c>>4], digits[c&0x0f])
	}
	return string(out)
}

// designator builds one identification descriptor (SPC-4 7.8.6.1).
func designator(protocol, codeSet, assoc, typ byte, piv bool, id []byte) []byte {
	d := make([]byte, 4, 4+len(id))
	d[0] = protocol<<4 | codeSet
	d[1] = assoc<<4 | typ
	if piv {
		d[1] |= 0x80
	}
	d[3] = byte(len(id))
	return append(d, id...)
}

// scsiName pads a SCSI name string with NULs to a multiple of 4 bytes
// (at least one NUL).
func scsiName(s string) []byte {
	n := len(s) + 1
	n = (n + 3) &^ 3
	if n > 252 {
		n = 252
		s = s[:251]
	}
	out := make([]byte, n)
	copy(out, s)
	return out
}

// deviceIdentification is VPD page 83h: the NAA and T10 vendor designators
// of the logical unit, and the relative target port and target port name
// of the nexus asking.
func (lu *LogicalUnit) deviceIdentification(n Nexus) []byte {
	const (
		codeBinary = 1
		codeASCII  = 2
		codeUTF8   = 3
		assocLU    = 0
		assocPort  = 1
		assocDev   = 2
		typeT10    = 1
		typeNAA    = 3
		typeRelTP  = 4
		typeName   = 8
	)
	var out []byte
	out = append(out, designator(0, codeBinary, assocLU, typeNAA, false, lu.naa)...)
	t10 := append(ascii(orDefault(lu.opts.VendorID, "WEEDBLK"), 8), []byte(orDefault(lu.opts.VolumeName, lu.hexID()))...)
	if len(t10) > 252 {
		t10 = t10[:252]
	}
	out = append(out, designator(0, codeASCII, assocLU, typeT10, false, t10)...)
	if n.RelativeTargetPortID != 0 {
		rel := make([]byte, 4)
		put16(rel[2:], n.RelativeTargetPortID)
		out = append(out, designator(protocolIDISCSI, codeBinary, assocPort, typeRelTP, true, rel)...)
	}
	if n.TargetPort != "" {
		out = append(out, designator(protocolIDISCSI, codeUTF8, assocPort, typeName, true, scsiName(n.TargetPort))...)
	}
	if lu.opts.DeviceName != "" {
		out = append(out, designator(protocolIDISCSI, codeUTF8, assocDev, typeName, true, scsiName(lu.opts.DeviceName))...)
	}
	return out
}

// blockLimits is VPD page B0h (SBC-3 6.5.3).
func (lu *LogicalUnit) blockLimits() []byte {
	d := make([]byte, 0x3C)
	// Offsets below are page offsets minus the 4-byte header.
	d[1] = maxCompareAndWriteBlocks // byte 5
	put16(d[2:], 1)                 // byte 6: optimal transfer length granularity
	put32(d[4:], lu.maxXfer)        // byte 8: maximum transfer length
	opt := uint32((1 << 20) / int(lu.bs))
	if opt > lu.maxXfer {
		opt = lu.maxXfer
	}
	put32(d[8:], opt)               // byte 12: optimal transfer length
	put32(d[12:], lu.maxXfer)       // byte 16: maximum prefetch length
	put32(d[16:], lu.maxUnmap)      // byte 20: maximum unmap LBA count
	put32(d[20:], lu.maxDescs)      // byte 24: maximum unmap block descriptor count
	put32(d[24:], 1)                // byte 28: optimal unmap granularity
	put32(d[28:], 0x80000000)       // byte 32: UGAVALID, alignment 0
	put64(d[32:], uint64(lu.maxWS)) // byte 36: maximum write same length
	return d
}

package scsi

// MODE SENSE / MODE SELECT (SPC-4 6.11-6.14) with the caching (08h),
// control (0Ah) and informational exceptions control (1Ch) pages. Only WCE
// in the caching page can be changed; changes last until a reset (saving is
// not supported).

const (
	pageCaching     = 0x08
	pageControl     = 0x0A
	pageInfoExcept  = 0x1C
	pageAll         = 0x3F
	pcCurrent       = 0
	pcChangeable    = 1
	pcDefault       = 2
	devSpecWP       = 0x80
	devSpecDPOFUA   = 0x10
	cachingWCE      = 0x04
	modeHeader6Len  = 4
	modeHeader10Len = 8
)

// modePage returns page code's contents for page control pc.
func (lu *LogicalUnit) modePage(code byte, pc byte) []byte {
	switch code {
	case pageCaching:
		p := make([]byte, 20)
		p[0], p[1] = pageCaching, 18
		switch pc {
		case pcChangeable:
			p[2] = cachingWCE
		case pcDefault:
			p[2] = cachingWCE
		default:
			if lu.wce.Load() {
				p[2] = cachingWCE
			}
		}
		return p
	case pageControl:
		p := make([]byte, 12)
		p[0], p[1] = pageControl, 10
		if pc != pcChangeable {
			p[3] = 0x10 // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
			put16(p[8:], 0xFFFF)
		}
		return p
	case pageInfoExcept:
		p := make([]byte, 12)
		p[0], p[1] = pageInfoExcept, 10
		return p
	}
	return nil
}

// modeSense is MODE SENSE (6) and (10).
func (lu *LogicalUnit) modeSense(r *request) ([]byte, error) {
	cdb := r.cdb
	ten := cdb[0] == opModeSense10
	dbd := cdb[1]&0x08 != 0
	llbaa := ten && cdb[1]&0x10 != 0
	pc := cdb[2] >> 6
	code := cdb[2] & 0x3F
	sub := cdb[3]
	alloc := int(cdb[4])
	if ten {
		alloc = allocLen16(cdb[7:9])
	}
	var pages []byte
	switch {
	case code == pageAll && (sub == 0 || sub == 0xFF):
		for _, c := range []byte{pageCaching, pageControl, pageInfoExcept} {
			pages = append(pages, lu.modePage(c, pc)...)
		}
	case sub != 0:
		return nil, errInvalidFieldCDB()
	default:
		p := lu.modePage(code, pc)
		if p == nil {
			return nil, errInvalidFieldCDB()
		}
		pages = p
	}
	var desc []byte
	if !dbd {
		if llbaa {
			desc = make([]byte, 16)
			put64(desc[0:], lu.nblocks())
			put32(desc[12:], lu.bs)
		} else {
			desc = make([]byte, 8)
			n := lu.nblocks()
			if n > 0xFFFFFFFF {
				n = 0xFFFFFFFF
			}
			put32(desc[0:], uint32(n))
			desc[5], desc[6], desc[7] = byte(lu.bs>>16), byte(lu.bs>>8), byte(lu.bs)
		}
	}
	devSpec := byte(devSpecDPOFUA)
	if lu.opts.ReadOnly {
		devSpec |= devSpecWP
	}
	var hdr []byte
	if ten {
		hdr = make([]byte, modeHeader10Len)
		put16(hdr[0:], uint16(modeHeader10Len-2+len(desc)+len(pages)))
		hdr[3] = devSpec
		if llbaa && !dbd {
			hdr[4] = 0x01
		}
		put16(hdr[6:], uint16(len(desc)))
	} else {
		hdr = make([]byte, modeHeader6Len)
		hdr[0] = byte(modeHeader6Len - 1 + len(desc) + len(pages))
		hdr[2] = devSpec
		hdr[3] = byte(len(desc))
	}
	return clip(cat(hdr, desc, pages), alloc), nil
}

// modeSelect is MODE SELECT (6) and (10). Every page sent must be one this
// unit has, with its exact length, and differ from the current values only
// in changeable bits; otherwise nothing changes.
func (lu *LogicalUnit) modeSelect(r *request) ([]byte, error) {
	cdb := r.cdb
	ten := cdb[0] == opModeSelect10
	if cdb[1]&0x01 != 0 { // SP: saving pages is not supported
		return nil, errInvalidFieldCDB()
	}
	plen := int(cdb[4])
	hlen := modeHeader6Len
	if ten {
		plen = allocLen16(cdb[7:9])
		hlen = modeHeader10Len
	}
	if plen == 0 {
		return nil, nil
	}
	data := r.cmd.DataOut
	if len(data) < plen {
		return nil, errParamListLength()
	}
	data = data[:plen]
	if plen < hlen {
		return nil, errParamListLength()
	}
	var bdl int
	long := false
	if ten {
		bdl = int(be16(data[6:8]))
		long = data[4]&0x01 != 0
	} else {
		bdl = int(data[3])
	}
	if hlen+bdl > plen {
		return nil, errParamListLength()
	}
	switch {
	case bdl == 0:
	case !long && bdl == 8:
		d := data[hlen : hlen+8]
		if bl := uint32(d[5])<<16 | uint32(d[6])<<8 | uint32(d[7]); bl != lu.bs {
			return nil, errInvalidFieldParam()
		}
		if nb := be32(d[0:4]); nb != 0 && uint64(nb) != lu.nblocks() && !(nb == 0xFFFFFFFF && lu.nblocks() > 0xFFFFFFFF) {
			return nil, errInvalidFieldParam()
		}
	case long && bdl == 16:
		d := data[hlen : hlen+16]
		if be32(d[12:16]) != lu.bs {
			return nil, errInvalidFieldParam()
		}
		if nb := be64(d[0:8]); nb != 0 && nb != lu.nblocks() {
			return nil, errInvalidFieldParam()
		}
	default:
		return nil, errInvalidFieldParam()
	}
	rest := data[hlen+bdl:]
	newWCE := lu.wce.Load()
	changed := false
	for len(rest) > 0 {
		if len(rest) < 2 {
			return nil, errParamListLength()
		}
		if rest[0]&0x40 != 0 { // SPF: no subpages here
			return nil, errInvalidFieldParam()
		}
		code := rest[0] & 0x3F
		cur := lu.modePage(code, pcCurrent)
		if cur == nil {
			return nil, errInvalidFieldParam()
		}
		if int(rest[1]) != len(cur)-2 {
			return nil, errInvalidFieldParam()
		}
		if len(rest) < len(cur) {
			return nil, errParamListLength()
		}
		page := rest[:len(cur)]
		mask := lu.modePage(code, pcChangeable)
		for i := 2; i < len(cur); i++ {
			if (page[i]^cur[i])&^mask[i] != 0 {
				return nil, errInvalidFieldParam()
			}
		}
		if code == pageCaching {
			w := page[2]&cachingWCE != 0
			if w != newWCE {
				newWCE = w
				changed = true
			}
		}
		rest = rest[len(cur):]
	}
	if changed {
		lu.wce.Store(newWCE)
		lu.mu.Lock()
		for n := range lu.nexuses {
			if n != r.nexus {
				lu.addUALocked(n, uaModeChanged)
			}
		}
		lu.mu.Unlock()
	}
	return nil, nil
}

package iscsi

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// textExchange is the state of a Text request/response exchange that spans
// several PDUs (C bit on requests, or a response longer than the
// initiator's MaxRecvDataSegmentLength).
type textExchange struct {
	active  bool
	itt     uint32
	ttt     uint32
	reqText []byte // request text gathered so far
	resp    []byte // response text not yet sent
}

// handleText answers Text requests: SendTargets in discovery and normal
// sessions; other keys are answered NotUnderstood or Irrelevant.
func (c *conn) handleText(h *bhs) error {
	data, err := c.rd.readDataScratch()
	if err != nil {
		return err
	}
	immediate := h.immediate()
	if !c.sess.admit(h.u32(24), immediate) {
		return nil
	}
	if !immediate {
		defer c.sess.release()
	}
	itt := h.itt()
	ttt := h.u32(20)
	flags := h.flags()
	final := flags&flagFinal != 0
	cont := flags&0x40 != 0
	if final && cont {
		return protoErr(rejectProtocolError, "Text request with F and C set")
	}
	x := &c.text
	if ttt != reservedTag {
		// Continuation of an exchange we started.
		if !x.active || ttt != x.ttt || itt != x.itt {
			return protoErr(rejectInvalidPDUField, "Text request with unknown TTT %#x", ttt)
		}
		if len(data) > 0 && x.resp != nil {
			return protoErr(rejectProtocolError, "text data while the target is still answering")
		}
	} else {
		if x.active && x.itt == itt && x.reqText != nil {
			// Continued request without our TTT: allowed only as the
			// answer to our empty response, which carried a TTT.
			return protoErr(rejectProtocolError, "continued Text request without TTT")
		}
		*x = textExchange{}
	}
	if x.resp == nil {
		if len(x.reqText)+len(data) > maxTextLen {
			*x = textExchange{}
			return protoErr(rejectProtocolError, "text request longer than %d bytes", maxTextLen)
		}
		x.reqText = append(x.reqText, data...)
		if cont {
			// More request text follows: acknowledge with an empty response.
			x.active, x.itt = true, itt
			x.ttt = c.allocTTT()
			c.sendText(itt, x.ttt, false, nil)
			return nil
		}
		kvs, err := parseText(x.reqText)
		if err != nil {
			*x = textExchange{}
			return protoErr(rejectProtocolError, "%v", err)
		}
		x.resp = c.textAnswer(kvs)
		x.reqText = nil
		if x.resp == nil {
			x.resp = []byte{}
		}
	}
	// Send (the next part of) the response.
	limit := int(c.maxSendDSL)
	if limit <= 0 {
		limit = 8192
	}
	if len(x.resp) <= limit {
		resp := x.resp
		*x = textExchange{}
		c.sendText(itt, reservedTag, true, resp)
		return nil
	}
	// Cut at a pair boundary when possible.
	cut := limit
	if i := strings.LastIndexByte(string(x.resp[:limit]), 0); i > 0 {
		cut = i + 1
	}
	part := x.resp[:cut]
	x.resp = x.resp[cut:]
	x.active, x.itt = true, itt
	x.ttt = c.allocTTT()
	c.sendTextCont(itt, x.ttt, part)
	return nil
}

func (c *conn) sendText(itt, ttt uint32, final bool, data []byte) {
	p := c.newPDU()
	p.hdr[0] = opTextRsp
	if final {
		p.hdr[1] = flagFinal
	}
	p.hdr.putU32(16, itt)
	p.hdr.putU32(20, ttt)
	p.data = append([]byte(nil), data...)
	p.status = true
	c.send(p)
}

func (c *conn) sendTextCont(itt, ttt uint32, data []byte) {
	p := c.newPDU()
	p.hdr[0] = opTextRsp
	p.hdr[1] = 0x40 // C: more response text follows
	p.hdr.putU32(16, itt)
	p.hdr.putU32(20, ttt)
	p.data = append([]byte(nil), data...)
	p.status = true
	c.send(p)
}

// textAnswer builds the response to a complete Text request.
func (c *conn) textAnswer(kvs []kv) []byte {
	var t textBuf
	for _, p := range kvs {
		switch p.key {
		case "SendTargets":
			c.sendTargets(&t, p.value)
		default:
			if strings.HasPrefix(p.key, "X-") || strings.HasPrefix(p.key, "X#") {
				t.add(p.key, valNotUnderstood)
				continue
			}
			if _, known := operationalKeys[p.key]; known {
				// Renegotiation in full-feature phase is not supported.
				t.add(p.key, valReject)
				continue
			}
			t.add(p.key, valNotUnderstood)
		}
	}
	return t.bytes()
}

var operationalKeys = map[string]struct{}{
	"HeaderDigest": {}, "DataDigest": {}, "MaxConnections": {}, "InitialR2T": {},
	"ImmediateData": {}, "MaxRecvDataSegmentLength": {}, "MaxBurstLength": {},
	"FirstBurstLength": {}, "DefaultTime2Wait": {}, "DefaultTime2Retain": {},
	"MaxOutstandingR2T": {}, "DataPDUInOrder": {}, "DataSequenceInOrder": {},
	"ErrorRecoveryLevel": {}, "SessionType": {}, "TargetName": {}, "InitiatorName": {},
	"TargetAlias": {}, "InitiatorAlias": {}, "TargetAddress": {}, "TargetPortalGroupTag": {},
	"AuthMethod": {}, "OFMarker": {}, "IFMarker": {}, "OFMarkInt": {}, "IFMarkInt": {},
}

// sendTargets appends TargetName/TargetAddress records. In a discovery
// session "All" (or empty) lists every target and a name lists that one;
// in a normal session only the session's target is listed.
func (c *conn) sendTargets(t *textBuf, v string) {
	var names []string
	switch {
	case c.sess.discovery && (v == "All" || v == ""):
		names = c.srv.Targets()
	case c.sess.discovery:
		if c.srv.lookupTarget(v) != nil {
			names = []string{v}
		}
	default:
		own := c.sess.target.Name
		if v == "" || v == "All" || v == own {
			names = []string{own}
		}
	}
	addrs := c.portalAddrs()
	for _, n := range names {
		t.add("TargetName", n)
		for _, a := range addrs {
			t.add("TargetAddress", a)
		}
	}
}

// portalAddrs returns "host:port,tpgt" for every advertised portal.
func (c *conn) portalAddrs() []string {
	tpgt := strconv.Itoa(int(c.srv.cfg.TPGT))
	if len(c.srv.cfg.Portals) > 0 {
		out := make([]string, 0, len(c.srv.cfg.Portals))
		for _, p := range c.srv.cfg.Portals {
			out = append(out, p+","+tpgt)
		}
		return out
	}
	return []string{formatPortal(c.nc.LocalAddr()) + "," + tpgt}
}

func formatPortal(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return net.JoinHostPort(ta.IP.String(), strconv.Itoa(ta.Port))
	}
	return fmt.Sprint(a)
}

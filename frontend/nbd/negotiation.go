package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

const (
	// maxOptionData is the largest option payload the server reads; larger
	// ones are answered with NBD_REP_ERR_TOO_BIG.
	maxOptionData = 64 << 10
	// maxOptionSkip is the largest oversized option payload the server
	// discards to stay in sync; beyond it the connection is closed.
	maxOptionSkip = 1 << 20
	// maxOptions bounds the number of options one client may send.
	maxOptions = 1024
)

// errAborted: the client ended negotiation with NBD_OPT_ABORT.
var errAborted = errors.New("nbd: client aborted negotiation")

// negotiate runs the fixed newstyle handshake and option haggling. It
// returns the export to serve once the client sent NBD_OPT_GO or
// NBD_OPT_EXPORT_NAME, or an error (the connection is then closed).
func (c *conn) negotiate() (*export, error) {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:8], magicNBD)
	binary.BigEndian.PutUint64(hello[8:16], magicOption)
	binary.BigEndian.PutUint16(hello[16:18], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.bw.Write(hello[:]); err != nil {
		return nil, fmt.Errorf("send greeting: %w", err)
	}
	if err := c.bw.Flush(); err != nil {
		return nil, fmt.Errorf("send greeting: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return nil, fmt.Errorf("read client flags: %w", err)
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&^clientKnown != 0 {
		return nil, fmt.Errorf("unknown client flags %#x", flags)
	}
	if flags&clientFixedNewstyle == 0 {
		return nil, fmt.Errorf("client flags %#x: fixed newstyle required", flags)
	}
	c.noZeroes = flags&clientNoZeroes != 0

	var hb [optionHeaderLen]byte
	for range maxOptions {
		if _, err := io.ReadFull(c.br, hb[:]); err != nil {
			return nil, fmt.Errorf("read option header: %w", err)
		}
		h, err := parseOptionHeader(hb[:])
		if err != nil {
			return nil, err
		}
		if h.length > maxOptionData {
			if h.length > maxOptionSkip {
				return nil, fmt.Errorf("option %d with %d bytes of data: too big to skip", h.opt, h.length)
			}
			if _, err := io.CopyN(io.Discard, c.br, int64(h.length)); err != nil {
				return nil, fmt.Errorf("skip option %d data: %w", h.opt, err)
			}
			if err := c.optError(h.opt, repErrTooBig, "option data too large"); err != nil {
				return nil, err
			}
			continue
		}
		data := make([]byte, h.length)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return nil, fmt.Errorf("read option %d data: %w", h.opt, err)
		}
		e, err := c.handleOption(h.opt, data)
		if err != nil || e != nil {
			return e, err
		}
	}
	return nil, fmt.Errorf("more than %d options", maxOptions)
}

// handleOption answers one option. It returns a non-nil export when
// transmission starts, an error when the connection must close, and
// (nil, nil) to keep negotiating.
func (c *conn) handleOption(opt uint32, data []byte) (*export, error) {
	switch opt {
	case optExportName:
		e := c.srv.bind(c, string(data))
		if e == nil {
			return nil, fmt.Errorf("NBD_OPT_EXPORT_NAME: unknown export %q", data)
		}
		if c.baseAllocation && c.metaExport != string(data) {
			c.baseAllocation = false
		}
		var b [10 + 124]byte
		binary.BigEndian.PutUint64(b[0:8], uint64(e.dev.Size()))
		binary.BigEndian.PutUint16(b[8:10], c.transmissionFlags())
		out := b[:]
		if c.noZeroes {
			out = b[:10]
		}
		if _, err := c.bw.Write(out); err != nil {
			return nil, fmt.Errorf("NBD_OPT_EXPORT_NAME reply: %w", err)
		}
		if err := c.bw.Flush(); err != nil {
			return nil, fmt.Errorf("NBD_OPT_EXPORT_NAME reply: %w", err)
		}
		return e, nil

	case optGo, optInfo:
		req, err := parseInfoRequest(data)
		if err != nil {
			return nil, c.optError(opt, repErrInvalid, err.Error())
		}
		var e *export
		if opt == optGo {
			e = c.srv.bind(c, req.name)
			if c.baseAllocation && c.metaExport != req.name {
				c.baseAllocation = false // negotiated for another export
			}
		} else {
			e = c.srv.lookup(req.name)
		}
		if e == nil {
			return nil, c.optError(opt, repErrUnknown, fmt.Sprintf("unknown export %q", req.name))
		}
		if err := c.sendInfo(opt, e, req); err != nil {
			return nil, err
		}
		if opt == optGo {
			return e, nil
		}
		return nil, nil

	case optList:
		if len(data) != 0 {
			return nil, c.optError(opt, repErrInvalid, "NBD_OPT_LIST takes no data")
		}
		for _, e := range c.srv.exportList() {
			b := binary.BigEndian.AppendUint32(nil, uint32(len(e.name)))
			b = append(b, e.name...)
			b = append(b, e.description...)
			if err := c.optReply(opt, repServer, b, false); err != nil {
				return nil, err
			}
		}
		return nil, c.optReply(opt, repAck, nil, true)

	case optStructuredReply:
		if len(data) != 0 {
			return nil, c.optError(opt, repErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
		}
		c.structured = true
		return nil, c.optReply(opt, repAck, nil, true)

	case optListMetaContext, optSetMetaContext:
		return nil, c.metaContext(opt, data)

	case optAbort:
		// The client may hang up without reading the ack; ignore errors.
		_ = c.optReply(opt, repAck, nil, true)
		return nil, errAborted

	default:
		return nil, c.optError(opt, repErrUnsup, fmt.Sprintf("option %d not supported", opt))
	}
}

// metaContext answers NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT. Only base:allocation exists.
func (c *conn) metaContext(opt uint32, data []byte) error {
	if opt == optSetMetaContext && !c.structured {
		return c.optError(opt, repErrInvalid, "NBD_OPT_SET_META_CONTEXT needs structured replies first")
	}
	req, err := parseMetaContextRequest(data)
	if err != nil {
		return c.optError(opt, repErrInvalid, err.Error())
	}
	if c.srv.lookup(req.name) == nil {
		return c.optError(opt, repErrUnknown, fmt.Sprintf("unknown export %q", req.name))
	}
	match := opt == optListMetaContext && len(req.queries) == 0
	for _, q := range req.queries {
		if q == metaBaseAllocation || (opt == optListMetaContext && q == "base:") {
			match = true
		}
	}
	if opt == optSetMetaContext {
		c.baseAllocation, c.metaExport = match, req.name
	}
	if match {
		b := binary.BigEndian.AppendUint32(nil, metaBaseAllocationID)
		b = append(b, metaBaseAllocation...)
		if err := c.optReply(opt, repMetaContext, b, false); err != nil {
			return err
		}
	}
	return c.optReply(opt, repAck, nil, true)
}

// sendInfo answers NBD_OPT_INFO / NBD_OPT_GO for export e, then acks.
func (c *conn) sendInfo(opt uint32, e *export, req infoRequest) error {
	var b []byte
	b = binary.BigEndian.AppendUint16(b[:0], infoExport)
	b = binary.BigEndian.AppendUint64(b, uint64(e.dev.Size()))
	b = binary.BigEndian.AppendUint16(b, c.transmissionFlags())
	if err := c.optReply(opt, repInfo, b, false); err != nil {
		return err
	}
	if req.wants(infoName) {
		b = binary.BigEndian.AppendUint16(b[:0], infoName)
		b = append(b, e.name...)
		if err := c.optReply(opt, repInfo, b, false); err != nil {
			return err
		}
	}
	if req.wants(infoDescription) {
		b = binary.BigEndian.AppendUint16(b[:0], infoDescription)
		b = append(b, e.description...)
		if err := c.optReply(opt, repInfo, b, false); err != nil {
			return err
		}
	}
	// Block sizes are sent whether or not the client asked: clients that
	// do not understand them ignore the reply.
	minBS, prefBS, maxBS := c.srv.blockSizes(e.dev.BlockSize())
	b = binary.BigEndian.AppendUint16(b[:0], infoBlockSize)
	b = binary.BigEndian.AppendUint32(b, minBS)
	b = binary.BigEndian.AppendUint32(b, prefBS)
	b = binary.BigEndian.AppendUint32(b, maxBS)
	if err := c.optReply(opt, repInfo, b, false); err != nil {
		return err
	}
	return c.optReply(opt, repAck, nil, true)
}

// blockSizes returns the advertised minimum, preferred and maximum block
// sizes for a device with block size bs.
func (s *Server) blockSizes(bs int) (minBS, prefBS, maxBS uint32) {
	maxP := s.opts.MaxPayload / bs * bs
	pref := s.opts.PreferredBlockSize
	if pref < bs || pref&(pref-1) != 0 {
		pref = max(bs, defaultPreferredBlock)
	}
	if pref > maxP {
		pref = bs
	}
	return uint32(bs), uint32(pref), uint32(maxP)
}

// transmissionFlags are the flags sent with the export during negotiation.
func (c *conn) transmissionFlags() uint16 {
	f := tflagHasFlags | tflagSendFlush | tflagSendFUA | tflagSendTrim |
		tflagSendWriteZeros | tflagCanMultiConn | tflagSendFastZero
	if c.structured {
		f |= tflagSendDF
	}
	return f
}

// optReply sends one option reply; flush pushes it (and anything queued
// before it) to the client.
func (c *conn) optReply(opt, typ uint32, data []byte, flush bool) error {
	c.scratch = appendOptReply(c.scratch[:0], opt, typ, data)
	if _, err := c.bw.Write(c.scratch); err != nil {
		return fmt.Errorf("option %d reply: %w", opt, err)
	}
	if flush {
		if err := c.bw.Flush(); err != nil {
			return fmt.Errorf("option %d reply: %w", opt, err)
		}
	}
	return nil
}

// optError sends an error reply with a human-readable message.
func (c *conn) optError(opt, typ uint32, msg string) error {
	return c.optReply(opt, typ, []byte(msg), true)
}

package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Wire constants of the NBD protocol (fixed newstyle negotiation).
const (
	magicNBD        uint64 = 0x4e42444d41474943 // "NBDMAGIC"
	magicOption     uint64 = 0x49484156454f5054 // "IHAVEOPT"
	magicOptReply   uint64 = 0x0003e889045565a9
	magicRequest    uint32 = 0x25609513
	magicSimple     uint32 = 0x67446698
	magicStructured uint32 = 0x668e33ef
)

// Handshake flags (server → client) and client flags (client → server).
const (
	flagFixedNewstyle uint16 = 1 << 0
	flagNoZeroes      uint16 = 1 << 1

	clientFixedNewstyle uint32 = 1 << 0
	clientNoZeroes      uint32 = 1 << 1
	clientKnown                = clientFixedNewstyle | clientNoZeroes
)

// Transmission flags.
const (
	tflagHasFlags       uint16 = 1 << 0
	tflagReadOnly       uint16 = 1 << 1
	tflagSendFlush      uint16 = 1 << 2
	tflagSendFUA        uint16 = 1 << 3
	tflagRotational     uint16 = 1 << 4
	tflagSendTrim       uint16 = 1 << 5
	tflagSendWriteZeros uint16 = 1 << 6
	tflagSendDF         uint16 = 1 << 7
	tflagCanMultiConn   uint16 = 1 << 8
	tflagSendFastZero   uint16 = 1 << 11
)

// Options.
const (
	optExportName       uint32 = 1
	optAbort            uint32 = 2
	optList             uint32 = 3
	optStartTLS         uint32 = 5
	optInfo             uint32 = 6
	optGo               uint32 = 7
	optStructuredReply  uint32 = 8
	optListMetaContext  uint32 = 9
	optSetMetaContext   uint32 = 10
	optExtendedHeaders  uint32 = 11
	repFlagError        uint32 = 1 << 31
	repAck              uint32 = 1
	repServer           uint32 = 2
	repInfo             uint32 = 3
	repMetaContext      uint32 = 4
	repErrUnsup                = repFlagError | 1
	repErrPolicy               = repFlagError | 2
	repErrInvalid              = repFlagError | 3
	repErrPlatform             = repFlagError | 4
	repErrTLSReqd              = repFlagError | 5
	repErrUnknown              = repFlagError | 6
	repErrShutdown             = repFlagError | 7
	repErrBlockSizeReqd        = repFlagError | 8
	repErrTooBig               = repFlagError | 9
	infoExport          uint16 = 0
	infoName            uint16 = 1
	infoDescription     uint16 = 2
	infoBlockSize       uint16 = 3
)

// Commands and command flags.
const (
	cmdRead        uint16 = 0
	cmdWrite       uint16 = 1
	cmdDisc        uint16 = 2
	cmdFlush       uint16 = 3
	cmdTrim        uint16 = 4
	cmdCache       uint16 = 5
	cmdWriteZeroes uint16 = 6
	cmdBlockStatus uint16 = 7

	cmdFlagFUA      uint16 = 1 << 0
	cmdFlagNoHole   uint16 = 1 << 1
	cmdFlagDF       uint16 = 1 << 2
	cmdFlagReqOne   uint16 = 1 << 3
	cmdFlagFastZero uint16 = 1 << 4
)

// Structured reply chunk types and flags.
const (
	replyFlagDone       uint16 = 1 << 0
	replyTypeNone       uint16 = 0
	replyTypeOffsetData uint16 = 1
	replyTypeBlockStat  uint16 = 5
	replyTypeError      uint16 = 1<<15 | 1
)

// NBD errno values (the protocol fixes these numbers, independent of the
// host's errno).
const (
	errnoPerm     uint32 = 1
	errnoIO       uint32 = 5
	errnoNoMem    uint32 = 12
	errnoInval    uint32 = 22
	errnoNoSpc    uint32 = 28
	errnoOverflow uint32 = 75
	errnoNotSup   uint32 = 95
	errnoShutdown uint32 = 108
)

// Sizes of fixed wire structures.
const (
	requestHeaderLen    = 28
	optionHeaderLen     = 16
	simpleReplyLen      = 16
	structuredHeaderLen = 20
	// maxNameLen bounds export names and other strings in options (the
	// protocol says 4096 bytes at most).
	maxNameLen = 4096
)

// The one metadata context served: base:allocation, reporting every block
// as allocated data (a Device has no extent query).
const (
	metaBaseAllocation   = "base:allocation"
	metaBaseAllocationID = 1
)

// errMalformed marks option data that does not parse; the server answers it
// with NBD_REP_ERR_INVALID.
var errMalformed = errors.New("nbd: malformed option data")

// requestHeader is a decoded transmission request.
type requestHeader struct {
	flags  uint16
	typ    uint16
	cookie uint64
	offset uint64
	length uint32
}

// parseRequestHeader decodes a 28-byte request header. It fails only on a bad
// magic, after which the stream cannot be resynchronised.
func parseRequestHeader(b []byte) (requestHeader, error) {
	if len(b) < requestHeaderLen {
		return requestHeader{}, fmt.Errorf("nbd: request header of %d bytes, want %d", len(b), requestHeaderLen)
	}
	if m := binary.BigEndian.Uint32(b[0:4]); m != magicRequest {
		return requestHeader{}, fmt.Errorf("nbd: bad request magic %#x", m)
	}
	return requestHeader{
		flags:  binary.BigEndian.Uint16(b[4:6]),
		typ:    binary.BigEndian.Uint16(b[6:8]),
		cookie: binary.BigEndian.Uint64(b[8:16]),
		offset: binary.BigEndian.Uint64(b[16:24]),
		length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

// optionHeader is a decoded option request header (before its data).
type optionHeader struct {
	opt    uint32
	length uint32
}

func parseOptionHeader(b []byte) (optionHeader, error) {
	if len(b) < optionHeaderLen {
		return optionHeader{}, fmt.Errorf("nbd: option header of %d bytes, want %d", len(b), optionHeaderLen)
	}
	if m := binary.BigEndian.Uint64(b[0:8]); m != magicOption {
		return optionHeader{}, fmt.Errorf("nbd: bad option magic %#x", m)
	}
	return optionHeader{
		opt:    binary.BigEndian.Uint32(b[8:12]),
		length: binary.BigEndian.Uint32(b[12:16]),
	}, nil
}

// infoRequest is the data of NBD_OPT_INFO and NBD_OPT_GO: an export name and
// the information types the client asks for.
type infoRequest struct {
	name  string
	infos []uint16
}

// parseInfoRequest decodes NBD_OPT_INFO / NBD_OPT_GO data:
// u32 name length, name, u16 count, count × u16 info type.
func parseInfoRequest(b []byte) (infoRequest, error) {
	if len(b) < 6 {
		return infoRequest{}, fmt.Errorf("%w: info request of %d bytes", errMalformed, len(b))
	}
	n := binary.BigEndian.Uint32(b[0:4])
	if n > maxNameLen || uint64(n) > uint64(len(b)-6) {
		return infoRequest{}, fmt.Errorf("%w: export name length %d in %d bytes", errMalformed, n, len(b))
	}
	req := infoRequest{name: string(b[4 : 4+n])}
	rest := b[4+n:]
	count := int(binary.BigEndian.Uint16(rest[0:2]))
	rest = rest[2:]
	if len(rest) != 2*count {
		return infoRequest{}, fmt.Errorf("%w: %d info requests in %d bytes", errMalformed, count, len(rest))
	}
	req.infos = make([]uint16, count)
	for i := range req.infos {
		req.infos[i] = binary.BigEndian.Uint16(rest[2*i:])
	}
	return req, nil
}

func (r infoRequest) wants(info uint16) bool {
	for _, i := range r.infos {
		if i == info {
			return true
		}
	}
	return false
}

// appendOptReply appends an option reply header followed by data.
func appendOptReply(dst []byte, opt, typ uint32, data []byte) []byte {
	dst = binary.BigEndian.AppendUint64(dst, magicOptReply)
	dst = binary.BigEndian.AppendUint32(dst, opt)
	dst = binary.BigEndian.AppendUint32(dst, typ)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(data)))
	return append(dst, data...)
}

// putSimpleReply encodes a simple reply header into b (16 bytes).
func putSimpleReply(b []byte, errno uint32, cookie uint64) {
	binary.BigEndian.PutUint32(b[0:4], magicSimple)
	binary.BigEndian.PutUint32(b[4:8], errno)
	binary.BigEndian.PutUint64(b[8:16], cookie)
}

// putStructuredHeader encodes a structured reply chunk header into b (20 bytes).
func putStructuredHeader(b []byte, flags, typ uint16, cookie uint64, length uint32) {
	binary.BigEndian.PutUint32(b[0:4], magicStructured)
	binary.BigEndian.PutUint16(b[4:6], flags)
	binary.BigEndian.PutUint16(b[6:8], typ)
	binary.BigEndian.PutUint64(b[8:16], cookie)
	binary.BigEndian.PutUint32(b[16:20], length)
}

// metaContextRequest is the data of NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT: an export name and context queries.
type metaContextRequest struct {
	name    string
	queries []string
}

// parseMetaContextRequest decodes u32 name length, name, u32 query count,
// then per query u32 length and the query string.
func parseMetaContextRequest(b []byte) (metaContextRequest, error) {
	str := func() (string, bool) {
		if len(b) < 4 {
			return "", false
		}
		n := binary.BigEndian.Uint32(b)
		if n > maxNameLen || uint64(n) > uint64(len(b)-4) {
			return "", false
		}
		v := string(b[4 : 4+n])
		b = b[4+n:]
		return v, true
	}
	var req metaContextRequest
	var ok bool
	if req.name, ok = str(); !ok || len(b) < 4 {
		return req, fmt.Errorf("%w: bad export name in meta context request", errMalformed)
	}
	count := binary.BigEndian.Uint32(b)
	b = b[4:]
	if uint64(count)*4 > uint64(len(b)) {
		return req, fmt.Errorf("%w: %d meta context queries in %d bytes", errMalformed, count, len(b))
	}
	req.queries = make([]string, 0, count)
	for range count {
		q, ok := str()
		if !ok {
			return req, fmt.Errorf("%w: bad meta context query", errMalformed)
		}
		req.queries = append(req.queries, q)
	}
	if len(b) != 0 {
		return req, fmt.Errorf("%w: %d trailing bytes in meta context request", errMalformed, len(b))
	}
	return req, nil
}

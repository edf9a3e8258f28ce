package iscsi

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
)

// Opcodes (RFC 7143 §11.1.1).
const (
	opNopOut      = 0x00
	opSCSICmd     = 0x01
	opTaskMgmtReq = 0x02
	opLoginReq    = 0x03
	opTextReq     = 0x04
	opDataOut     = 0x05
	opLogoutReq   = 0x06
	opSNACKReq    = 0x10

	opNopIn       = 0x20
	opSCSIResp    = 0x21
	opTaskMgmtRsp = 0x22
	opLoginRsp    = 0x23
	opTextRsp     = 0x24
	opDataIn      = 0x25
	opLogoutRsp   = 0x26
	opR2T         = 0x31
	opAsyncMsg    = 0x32
	opReject      = 0x3f
)

const (
	bhsLen        = 48
	digestLen     = 4
	reservedTag   = 0xffffffff
	flagFinal     = 0x80
	flagImmediate = 0x40
	// maxAHSLen is the largest AHS a BHS can announce (255 words).
	maxAHSLen = 255 * 4
)

// Reject reasons (RFC 7143 §11.17.1).
const (
	rejectDigestError      = 0x02
	rejectSNACK            = 0x03
	rejectProtocolError    = 0x04
	rejectCmdNotSupported  = 0x05
	rejectImmCmdReject     = 0x06
	rejectTaskInProgress   = 0x07
	rejectInvalidDataAck   = 0x08
	rejectInvalidPDUField  = 0x09
	rejectLongOpReject     = 0x0a
	rejectWaitingForLogout = 0x0c
)

// Errors the PDU reader returns; the connection is closed on any of them.
var (
	ErrDigest       = errors.New("iscsi: digest mismatch")
	ErrSegmentLimit = errors.New("iscsi: data segment exceeds MaxRecvDataSegmentLength")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc32c(p ...[]byte) uint32 {
	var c uint32
	for _, b := range p {
		c = crc32.Update(c, castagnoli, b)
	}
	return c
}

// bhs is a Basic Header Segment with accessors for the common fields.
type bhs [bhsLen]byte

func (h *bhs) opcode() byte       { return h[0] & 0x3f }
func (h *bhs) immediate() bool    { return h[0]&flagImmediate != 0 }
func (h *bhs) flags() byte        { return h[1] }
func (h *bhs) final() bool        { return h[1]&flagFinal != 0 }
func (h *bhs) ahsLen() int        { return int(h[4]) * 4 }
func (h *bhs) dataLen() int       { return int(h[5])<<16 | int(h[6])<<8 | int(h[7]) }
func (h *bhs) itt() uint32        { return binary.BigEndian.Uint32(h[16:20]) }
func (h *bhs) u32(off int) uint32 { return binary.BigEndian.Uint32(h[off : off+4]) }
func (h *bhs) u16(off int) uint16 { return binary.BigEndian.Uint16(h[off : off+2]) }
func (h *bhs) lun() uint64        { return binary.BigEndian.Uint64(h[8:16]) }
func (h *bhs) putU32(off int, v uint32) {
	binary.BigEndian.PutUint32(h[off:off+4], v)
}
func (h *bhs) putU16(off int, v uint16) {
	binary.BigEndian.PutUint16(h[off:off+2], v)
}
func (h *bhs) setDataLen(n int) {
	h[5], h[6], h[7] = byte(n>>16), byte(n>>8), byte(n)
}

func pad4(n int) int { return (4 - n&3) & 3 }

// pduReader reads PDUs from a connection. Header and data are read in two
// steps so that Data-Out payloads can land directly in a command's buffer.
type pduReader struct {
	r             *bufio.Reader
	headerDigest  bool
	dataDigest    bool
	maxRecvDSL    int // 0: no limit beyond the 24-bit field
	hdr           bhs
	ahs           [maxAHSLen]byte
	nAHS          int
	scratch       []byte
	digestScratch [digestLen]byte
	padScratch    [4]byte
}

func newPDUReader(r io.Reader, size int) *pduReader {
	return &pduReader{r: bufio.NewReaderSize(r, size)}
}

// readHeader reads the BHS, AHS and header digest of the next PDU and
// checks the announced data segment length against the negotiated limit.
func (pr *pduReader) readHeader() error {
	if _, err := io.ReadFull(pr.r, pr.hdr[:]); err != nil {
		return err
	}
	pr.nAHS = pr.hdr.ahsLen()
	if pr.nAHS > 0 {
		if _, err := io.ReadFull(pr.r, pr.ahs[:pr.nAHS]); err != nil {
			return truncated(err)
		}
	}
	if pr.headerDigest {
		if _, err := io.ReadFull(pr.r, pr.digestScratch[:]); err != nil {
			return truncated(err)
		}
		want := crc32c(pr.hdr[:], pr.ahs[:pr.nAHS])
		if got := binary.LittleEndian.Uint32(pr.digestScratch[:]); got != want {
			return fmt.Errorf("header of opcode %#x: %w", pr.hdr.opcode(), ErrDigest)
		}
	}
	if n := pr.hdr.dataLen(); pr.maxRecvDSL > 0 && n > pr.maxRecvDSL {
		return fmt.Errorf("opcode %#x announces %d bytes, limit %d: %w",
			pr.hdr.opcode(), n, pr.maxRecvDSL, ErrSegmentLimit)
	}
	return nil
}

// nextBuffered reports whether the whole next PDU (header, data, padding
// and digests) is already buffered, so that reading it will not block.
func (pr *pduReader) nextBuffered() bool {
	n := pr.r.Buffered()
	if n < bhsLen {
		return false
	}
	b, err := pr.r.Peek(bhsLen)
	if err != nil {
		return false
	}
	h := (*bhs)(b)
	total := bhsLen + h.ahsLen()
	if pr.headerDigest {
		total += digestLen
	}
	if d := h.dataLen(); d > 0 {
		total += d + pad4(d)
		if pr.dataDigest {
			total += digestLen
		}
	}
	return total <= n
}

// readData reads the data segment (plus padding and digest) of the PDU
// whose header was just read into dst, which must be exactly dataLen bytes.
func (pr *pduReader) readData(dst []byte) error {
	n := len(dst)
	if n == 0 {
		return nil
	}
	if _, err := io.ReadFull(pr.r, dst); err != nil {
		return truncated(err)
	}
	p := pad4(n)
	if p > 0 {
		if _, err := io.ReadFull(pr.r, pr.padScratch[:p]); err != nil {
			return truncated(err)
		}
	}
	if pr.dataDigest {
		if _, err := io.ReadFull(pr.r, pr.digestScratch[:]); err != nil {
			return truncated(err)
		}
		want := crc32c(dst, pr.padScratch[:p])
		if got := binary.LittleEndian.Uint32(pr.digestScratch[:]); got != want {
			return fmt.Errorf("data of opcode %#x: %w", pr.hdr.opcode(), ErrDigest)
		}
	}
	return nil
}

// readDataScratch reads the data segment into a reusable buffer, valid until
// the next read.
func (pr *pduReader) readDataScratch() ([]byte, error) {
	n := pr.hdr.dataLen()
	if cap(pr.scratch) < n {
		pr.scratch = make([]byte, n)
	}
	d := pr.scratch[:n]
	return d, pr.readData(d)
}

// discardData skips the data segment of the current PDU.
func (pr *pduReader) discardData() error {
	_, err := pr.readDataScratch()
	return err
}

func truncated(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// outPDU is one PDU queued for the connection writer.
type outPDU struct {
	hdr  bhs
	data []byte
	// status: the PDU carries status, so the writer assigns it the next
	// StatSN; otherwise it carries the current StatSN without advancing it.
	status bool
	// done, if set, is called by the writer once the PDU's bytes were
	// handed to the socket (or failed to be); not at all if the PDU was
	// dropped because the connection closed first.
	done func()
}

// pduWriter encodes PDUs into a batch that one flush sends with a single
// writev: headers and small payloads are copied into an arena, payloads of
// directMin bytes or more are referenced in place (no copy). Referenced
// payloads must stay unchanged until flush returns.
type pduWriter struct {
	w            io.Writer
	headerDigest bool
	dataDigest   bool
	arena        []byte
	segStart     int
	vecs         net.Buffers
	pending      int
	zero         [4]byte
}

const (
	directMin  = 8 * 1024
	maxPending = 1 << 20
)

func newPDUWriter(w io.Writer, size int) *pduWriter {
	return &pduWriter{w: w, arena: make([]byte, 0, max(size, 4*bhsLen+directMin))}
}

// write queues hdr and data (the header's DataSegmentLength is set from
// len(data)). It flushes by itself only when the batch is large.
func (pw *pduWriter) write(hdr *bhs, data []byte) error {
	hdr[4] = 0
	hdr.setDataLen(len(data))
	p := pad4(len(data))
	direct := len(data) >= directMin
	need := bhsLen + 3*digestLen
	if !direct {
		need += len(data)
	}
	if len(pw.arena)+need > cap(pw.arena) {
		if err := pw.flush(); err != nil {
			return err
		}
	}
	pw.arena = append(pw.arena, hdr[:]...)
	if pw.headerDigest {
		pw.arena = binary.LittleEndian.AppendUint32(pw.arena, crc32c(hdr[:]))
	}
	if len(data) > 0 {
		if direct {
			pw.vecs = append(pw.vecs, pw.arena[pw.segStart:], data)
			pw.segStart = len(pw.arena)
		} else {
			pw.arena = append(pw.arena, data...)
		}
		pw.arena = append(pw.arena, pw.zero[:p]...)
		if pw.dataDigest {
			pw.arena = binary.LittleEndian.AppendUint32(pw.arena, crc32c(data, pw.zero[:p]))
		}
	}
	pw.pending += bhsLen + len(data)
	if pw.pending >= maxPending {
		return pw.flush()
	}
	return nil
}

// flush sends everything queued.
func (pw *pduWriter) flush() error {
	if pw.segStart < len(pw.arena) {
		pw.vecs = append(pw.vecs, pw.arena[pw.segStart:])
	}
	var err error
	if len(pw.vecs) == 1 {
		_, err = pw.w.Write(pw.vecs[0])
	} else if len(pw.vecs) > 1 {
		v := pw.vecs
		_, err = v.WriteTo(pw.w)
	}
	clear(pw.vecs)
	pw.vecs = pw.vecs[:0]
	pw.arena = pw.arena[:0]
	pw.segStart = 0
	pw.pending = 0
	return err
}

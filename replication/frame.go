package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// A frame is [type u8][length u32][crc32c u32][payload]: length counts
// the payload only, and the CRC32C (Castagnoli) covers the payload.
const (
	frameHeaderSize = 9
	// MaxFrameSize is the largest payload a frame may carry. It bounds
	// what a reader allocates for one frame; records larger than this
	// (more than 32 MiB of data) cannot be shipped.
	MaxFrameSize = 32<<20 + 64
)

// ErrBadFrame: bytes from the network do not form a valid frame or message.
var ErrBadFrame = errors.New("replication: bad frame")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// frameType names a message.
type frameType uint8

const (
	typeHello      frameType = 1 // primary → replica: epoch, volume name
	typeHelloOK    frameType = 2 // replica → primary: epoch, head, durable
	typeRecord     frameType = 3 // primary → replica: epoch, one WAL record
	typeAck        frameType = 4 // replica → primary: applied (head)
	typeBarrier    frameType = 5 // primary → replica: epoch, lsn
	typeBarrierAck frameType = 6 // replica → primary: lsn, durable
	typeError      frameType = 7 // replica → primary: code, message
)

func (t frameType) String() string {
	switch t {
	case typeHello:
		return "hello"
	case typeHelloOK:
		return "hello-ok"
	case typeRecord:
		return "record"
	case typeAck:
		return "ack"
	case typeBarrier:
		return "barrier"
	case typeBarrierAck:
		return "barrier-ack"
	case typeError:
		return "error"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// frameReader reads frames from a stream, reusing one buffer: a payload is
// only valid until the next call.
type frameReader struct {
	r   io.Reader
	hdr [frameHeaderSize]byte
	buf []byte
}

func newFrameReader(r io.Reader) *frameReader { return &frameReader{r: r} }

// next reads one frame. A clean end of stream before a header is io.EOF;
// anything else malformed wraps ErrBadFrame.
func (fr *frameReader) next() (frameType, []byte, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		return 0, nil, err
	}
	t := frameType(fr.hdr[0])
	n := binary.BigEndian.Uint32(fr.hdr[1:5])
	sum := binary.BigEndian.Uint32(fr.hdr[5:9])
	if t < typeHello || t > typeError {
		return 0, nil, fmt.Errorf("%w: unknown type %d", ErrBadFrame, fr.hdr[0])
	}
	if n > MaxFrameSize {
		return 0, nil, fmt.Errorf("%w: %v payload of %d bytes exceeds %d", ErrBadFrame, t, n, MaxFrameSize)
	}
	if cap(fr.buf) < int(n) {
		fr.buf = make([]byte, n)
	}
	p := fr.buf[:n]
	if _, err := io.ReadFull(fr.r, p); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, fmt.Errorf("read %v payload: %w", t, err)
	}
	if got := crc32.Checksum(p, castagnoli); got != sum {
		return 0, nil, fmt.Errorf("%w: %v payload crc %08x, header says %08x", ErrBadFrame, t, got, sum)
	}
	return t, p, nil
}

// writeFrame writes one frame whose payload is the concatenation of parts.
func writeFrame(w io.Writer, t frameType, parts ...[]byte) error {
	var n int
	var sum uint32
	for _, p := range parts {
		n += len(p)
		sum = crc32.Update(sum, castagnoli, p)
	}
	if n > MaxFrameSize {
		return fmt.Errorf("write %v: payload of %d bytes exceeds %d", t, n, MaxFrameSize)
	}
	var hdr [frameHeaderSize]byte
	hdr[0] = byte(t)
	binary.BigEndian.PutUint32(hdr[1:5], uint32(n))
	binary.BigEndian.PutUint32(hdr[5:9], sum)
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	for _, p := range parts {
		if _, err := w.Write(p); err != nil {
			return err
		}
	}
	return nil
}

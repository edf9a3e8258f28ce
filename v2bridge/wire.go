package v2bridge

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/weedblock/weedblock/blockvol"
)

// A frame is [length u32][crc32c u32][payload]; the CRC (Castagnoli) covers
// the payload.
const (
	frameHeader = 8
	// maxFrame bounds what a reader allocates for one frame.
	maxFrame = 48 << 20
	// maxBatchBytes bounds the record data of one apply request.
	maxBatchBytes = 16 << 20
)

// socketBuffer is the kernel socket buffer a Peer asks for its sends and a
// Service for its receives: base chunks of a MiB then go in fewer, larger
// steps (fewer wake-ups of either end).
const socketBuffer = 4 << 20

// ErrBadFrame: bytes from the network do not form a valid message.
var ErrBadFrame = errors.New("v2bridge: bad frame")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// op is what a request asks the replica to do.
type op uint8

const (
	opHello    op = iota + 1 // report the replica's position; B&helloTerms: with its term history
	opApply                  // append Recs; B = 1: then fsync; report durable
	opTruncate               // drop records after A
	opBegin                  // durably untrusted, WAL dropped
	opBase                   // base chunk: Data at offset A; manifest B = base LSN, C = size
	opVerify                 // A = base LSN, C = size, Sum = the base's digest (baseDigest); Data = the base's terms (optional)
	opCommit                 // A = achieved: checkpoint and clear untrusted
	opZero                   // base zero range: D bytes of zeros at A; manifest as opBase
)

func (o op) String() string {
	switch o {
	case opHello:
		return "hello"
	case opApply:
		return "apply"
	case opTruncate:
		return "truncate"
	case opBegin:
		return "begin-rebuild"
	case opBase:
		return "base"
	case opVerify:
		return "verify"
	case opCommit:
		return "commit"
	case opZero:
		return "base-zero"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

type request struct {
	Op      op
	Volume  string
	Epoch   uint64
	Attempt uint64
	A, B, C uint64
	D       uint64
	Sum     [32]byte
	Recs    []blockvol.Record
	Data    []byte
}

// Answer codes.
const (
	codeOK uint8 = iota
	codeStaleEpoch
	codeEpochAhead
	codeStaleAttempt
	codeUnknownVolume
	codeTruncationUnsafe
	codeBaseMismatch
	codeOther
)

type response struct {
	Code       uint8
	Msg        string
	Head       uint64
	Durable    uint64
	Checkpoint uint64
	Epoch      uint64
	Untrusted  bool
	// EpochUnknown: Epoch is the assigned epoch, not the last record's.
	EpochUnknown bool
	// HasTerms: Terms is the replica's term history up to Durable (only
	// in answers to a hello that asked for it, so that a peer which does
	// not know the field never receives it).
	HasTerms bool
	Terms    []blockvol.Term
}

// helloTerms in a hello's B asks for the replica's term history.
const helloTerms = 1

// maxWireTerms bounds the terms a message may carry.
const maxWireTerms = 1024

// appendTerms appends a term list: count u32, then {epoch, first} u64s.
func appendTerms(b []byte, ts []blockvol.Term) []byte {
	b = putU32(b, uint32(len(ts)))
	for _, t := range ts {
		b = putU64(b, t.Epoch)
		b = putU64(b, t.First)
	}
	return b
}

// terms reads a term list written by appendTerms: at most maxWireTerms,
// First ascending from 1.
func (d *decoder) terms() []blockvol.Term {
	n := d.u32()
	if d.err != nil {
		return nil
	}
	if n > maxWireTerms || uint64(n)*16 > uint64(len(d.b)) {
		d.err = fmt.Errorf("%w: %d terms in %d bytes", ErrBadFrame, n, len(d.b))
		return nil
	}
	ts := make([]blockvol.Term, n)
	for i := range ts {
		ts[i].Epoch, ts[i].First = d.u64(), d.u64()
		if ts[i].First == 0 || (i > 0 && ts[i].First <= ts[i-1].First) {
			d.err = fmt.Errorf("%w: terms not ascending from lsn 1", ErrBadFrame)
			return nil
		}
	}
	return ts
}

// decodeTerms decodes a whole payload that is one term list.
func decodeTerms(p []byte) ([]blockvol.Term, error) {
	d := decoder{b: p}
	ts := d.terms()
	if err := d.done(); err != nil {
		return nil, fmt.Errorf("decode terms: %w", err)
	}
	return ts, nil
}

func putU64(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }
func putU32(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }
func putBytes(b, p []byte) []byte      { return append(putU32(b, uint32(len(p))), p...) }

// encode appends r's payload to b.
func (r *request) encode(b []byte) []byte {
	return append(r.encodeHead(b), r.Data...)
}

// encodeHead appends r's payload except the bytes of r.Data (which end
// it): the frame is then written from both parts without copying Data.
func (r *request) encodeHead(b []byte) []byte {
	b = r.encodeFixed(b)
	b = putU32(b, uint32(len(r.Recs)))
	for i := range r.Recs {
		b = appendRecord(b, &r.Recs[i])
	}
	return putU32(b, uint32(len(r.Data)))
}

// encodeFixed appends the fields before the record count.
func (r *request) encodeFixed(b []byte) []byte {
	b = append(b, byte(r.Op))
	b = putBytes(b, []byte(r.Volume))
	b = putU64(b, r.Epoch)
	b = putU64(b, r.Attempt)
	b = putU64(b, r.A)
	b = putU64(b, r.B)
	b = putU64(b, r.C)
	b = putU64(b, r.D)
	return append(b, r.Sum[:]...)
}

// appendRecord appends one record of an apply request.
func appendRecord(b []byte, rec *blockvol.Record) []byte {
	b = putU64(b, rec.LSN)
	b = putU64(b, rec.Epoch)
	b = append(b, byte(rec.Kind))
	b = putU64(b, rec.LBA)
	b = putU32(b, rec.Blocks)
	return putBytes(b, rec.Data)
}

func (r *response) encode(b []byte) []byte {
	b = append(b, r.Code)
	b = putBytes(b, []byte(r.Msg))
	b = putU64(b, r.Head)
	b = putU64(b, r.Durable)
	b = putU64(b, r.Checkpoint)
	b = putU64(b, r.Epoch)
	u := byte(0)
	if r.Untrusted {
		u |= 1
	}
	if r.EpochUnknown {
		u |= 2
	}
	if r.HasTerms {
		u |= 4
		return appendTerms(append(b, u), r.Terms)
	}
	return append(b, u)
}

// decoder reads a payload; the first short read sticks as its error.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.err = fmt.Errorf("%w: need %d bytes, %d left", ErrBadFrame, n, len(d.b))
		return nil
	}
	p := d.b[:n:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) u8() uint8 {
	if p := d.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if p := d.take(4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if p := d.take(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

func (d *decoder) bytes() []byte { return d.take(int(d.u32())) }

func (d *decoder) done() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%w: %d trailing bytes", ErrBadFrame, len(d.b))
	}
	return d.err
}

func decodeRequest(p []byte) (request, error) {
	d := decoder{b: p}
	var r request
	r.Op = op(d.u8())
	r.Volume = string(d.bytes())
	r.Epoch = d.u64()
	r.Attempt = d.u64()
	r.A, r.B, r.C, r.D = d.u64(), d.u64(), d.u64(), d.u64()
	copy(r.Sum[:], d.take(32))
	n := d.u32()
	// Every record takes at least 33 bytes: bound n before allocating.
	if d.err == nil && uint64(n)*33 > uint64(len(d.b)) {
		return r, fmt.Errorf("%w: %d records in %d bytes", ErrBadFrame, n, len(d.b))
	}
	if n > 0 {
		r.Recs = make([]blockvol.Record, 0, n)
	}
	for i := uint32(0); i < n && d.err == nil; i++ {
		var rec blockvol.Record
		rec.LSN = d.u64()
		rec.Epoch = d.u64()
		rec.Kind = blockvol.Kind(d.u8())
		rec.LBA = d.u64()
		rec.Blocks = d.u32()
		rec.Data = d.bytes()
		r.Recs = append(r.Recs, rec)
	}
	r.Data = d.bytes()
	if err := d.done(); err != nil {
		return request{}, fmt.Errorf("decode request: %w", err)
	}
	if r.Op < opHello || r.Op > opZero {
		return request{}, fmt.Errorf("decode request: %w: unknown op %d", ErrBadFrame, r.Op)
	}
	return r, nil
}

func decodeResponse(p []byte) (response, error) {
	d := decoder{b: p}
	var r response
	r.Code = d.u8()
	r.Msg = string(d.bytes())
	r.Head, r.Durable, r.Checkpoint, r.Epoch = d.u64(), d.u64(), d.u64(), d.u64()
	flags := d.u8()
	r.Untrusted, r.EpochUnknown, r.HasTerms = flags&1 != 0, flags&2 != 0, flags&4 != 0
	if r.HasTerms {
		r.Terms = d.terms()
	}
	if err := d.done(); err != nil {
		return response{}, fmt.Errorf("decode response: %w", err)
	}
	return r, nil
}

// writeFrame writes one frame and flushes w.
func writeFrame(w *bufio.Writer, payload []byte) error {
	if _, err := writeFrameParts(w, payload, nil); err != nil {
		return err
	}
	return w.Flush()
}

// frameCRC is the CRC32C of the payload head then data.
func frameCRC(head, data []byte) uint32 {
	return crc32.Update(crc32.Checksum(head, castagnoli), castagnoli, data)
}

// writeFrameParts writes one frame whose payload is head then data,
// without flushing w, and returns the payload's CRC32C.
func writeFrameParts(w *bufio.Writer, head, data []byte) (uint32, error) {
	h, crc, err := encodeFrameHeader(head, data)
	if err != nil {
		return 0, err
	}
	if _, err := w.Write(h[:]); err != nil {
		return 0, err
	}
	if _, err := w.Write(head); err != nil {
		return 0, err
	}
	_, err = w.Write(data)
	return crc, err
}

// encodeFrameHeader returns the header of a frame whose payload is head
// then data, and the payload's CRC32C.
func encodeFrameHeader(head, data []byte) (h [frameHeader]byte, crc uint32, err error) {
	n := len(head) + len(data)
	if n > maxFrame {
		return h, 0, fmt.Errorf("write frame: %d bytes exceed the %d byte limit", n, maxFrame)
	}
	crc = frameCRC(head, data)
	binary.BigEndian.PutUint32(h[0:4], uint32(n))
	binary.BigEndian.PutUint32(h[4:8], crc)
	return h, crc, nil
}

// readFrame reads one frame into buf (grown as needed) and returns the
// payload.
func readFrame(r io.Reader, buf []byte) ([]byte, error) {
	p, _, err := readFrameCRC(r, buf)
	return p, err
}

// readFrameCRC is readFrame that also returns the payload's CRC32C
// (checked).
func readFrameCRC(r io.Reader, buf []byte) ([]byte, uint32, error) {
	var h [frameHeader]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, 0, err
	}
	n := binary.BigEndian.Uint32(h[0:4])
	if n > maxFrame {
		return nil, 0, fmt.Errorf("%w: %d byte payload exceeds the %d byte limit", ErrBadFrame, n, maxFrame)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	p := buf[:n]
	if _, err := io.ReadFull(r, p); err != nil {
		return nil, 0, fmt.Errorf("read frame payload: %w", err)
	}
	crc := binary.BigEndian.Uint32(h[4:8])
	if crc32.Checksum(p, castagnoli) != crc {
		return nil, 0, fmt.Errorf("%w: CRC mismatch", ErrBadFrame)
	}
	return p, crc, nil
}

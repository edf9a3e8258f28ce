package replication

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/weedblock/weedblock/blockvol"
)

// maxNameLen bounds a volume name in a hello.
const maxNameLen = 1024

// helloMsg opens a connection for one volume at the sender's epoch.
// WantHeadEpoch asks the replica to say the epoch of its head record in
// its answer; it travels as an optional trailing flags byte (bit 0), which
// older replicas refuse as a malformed hello (the sender then says hello
// again without it). The byte is exactly 1 when present: any other value
// is refused, so a later flag is refused the same way by this version.
type helloMsg struct {
	Epoch         uint64
	Volume        string
	WantHeadEpoch bool
}

// helloOKMsg is the replica's position when it accepts a hello. HeadEpoch
// (valid when HeadEpochKnown) is the epoch of the record at Head from the
// replica's term history; it is sent only to a hello that asked for it, as
// a trailing field (epoch, flags byte with bit 0 = known). An answer
// without it decodes as unknown.
type helloOKMsg struct {
	Epoch          uint64
	Head           uint64
	Durable        uint64
	HeadEpoch      uint64
	HeadEpochKnown bool
	// extended: the trailing field was (is to be) sent.
	extended bool
}

// Sizes of a hello-ok without and with the head epoch.
const (
	helloOKBase     = 24
	helloOKExtended = helloOKBase + 8 + 1
)

// helloFlagHeadEpoch is the hello flag asking for the head epoch, and
// the hello-ok flag saying it is known.
const helloFlagHeadEpoch = 1

// recordMsg carries one WAL record at the sender's epoch.
type recordMsg struct {
	Epoch uint64 // sender's (primary's) epoch
	Rec   blockvol.Record
}

// barrierMsg asks the replica to make everything up to LSN durable.
type barrierMsg struct {
	Epoch uint64
	LSN   uint64
}

// barrierAckMsg answers a barrier with the durable LSN after the fsync.
type barrierAckMsg struct {
	LSN     uint64
	Durable uint64
}

// Error codes carried by an error frame.
const (
	codeInternal      uint16 = 1
	codeStaleEpoch    uint16 = 2
	codeEpochAhead    uint16 = 3
	codeUnknownVolume uint16 = 4
	codeNotReplica    uint16 = 5
	codeApply         uint16 = 6
	codeProtocol      uint16 = 7
)

type errorMsg struct {
	Code uint16
	Msg  string
}

const recordFixed = 8 + 8 + 8 + 1 + 8 + 4

func encodeHello(m helloMsg) []byte {
	n := 10 + len(m.Volume)
	b := make([]byte, n, n+1)
	binary.BigEndian.PutUint64(b[0:], m.Epoch)
	binary.BigEndian.PutUint16(b[8:], uint16(len(m.Volume)))
	copy(b[10:], m.Volume)
	if m.WantHeadEpoch {
		b = append(b, helloFlagHeadEpoch)
	}
	return b
}

func decodeHello(p []byte) (helloMsg, error) {
	if len(p) < 10 {
		return helloMsg{}, fmt.Errorf("%w: hello of %d bytes", ErrBadFrame, len(p))
	}
	n := int(binary.BigEndian.Uint16(p[8:]))
	if n == 0 || n > maxNameLen || (len(p) != 10+n && len(p) != 11+n) {
		return helloMsg{}, fmt.Errorf("%w: hello name of %d bytes in %d", ErrBadFrame, n, len(p))
	}
	m := helloMsg{Epoch: binary.BigEndian.Uint64(p), Volume: string(p[10 : 10+n])}
	if len(p) == 11+n {
		if f := p[10+n]; f != helloFlagHeadEpoch {
			return helloMsg{}, fmt.Errorf("%w: hello flags %#x", ErrBadFrame, f)
		}
		m.WantHeadEpoch = true
	}
	return m, nil
}

func encodeU64s(vs ...uint64) []byte {
	b := make([]byte, 8*len(vs))
	for i, v := range vs {
		binary.BigEndian.PutUint64(b[8*i:], v)
	}
	return b
}

func decodeU64s(p []byte, what string, vs ...*uint64) error {
	if len(p) != 8*len(vs) {
		return fmt.Errorf("%w: %s of %d bytes, want %d", ErrBadFrame, what, len(p), 8*len(vs))
	}
	for i, v := range vs {
		*v = binary.BigEndian.Uint64(p[8*i:])
	}
	return nil
}

// encodeHelloOK encodes m, with the head epoch when m.extended.
func encodeHelloOK(m helloOKMsg) []byte {
	if !m.extended {
		return encodeU64s(m.Epoch, m.Head, m.Durable)
	}
	b := make([]byte, helloOKExtended)
	binary.BigEndian.PutUint64(b[0:], m.Epoch)
	binary.BigEndian.PutUint64(b[8:], m.Head)
	binary.BigEndian.PutUint64(b[16:], m.Durable)
	if m.HeadEpochKnown {
		binary.BigEndian.PutUint64(b[24:], m.HeadEpoch)
		b[32] = helloFlagHeadEpoch
	}
	return b
}

// decodeHelloOK accepts the answer with or without the head epoch; in
// the extended form the flags byte is 0 or 1 and an unknown head epoch
// is 0.
func decodeHelloOK(p []byte) (m helloOKMsg, err error) {
	switch len(p) {
	case helloOKBase:
		err = decodeU64s(p, "hello-ok", &m.Epoch, &m.Head, &m.Durable)
		return m, err
	case helloOKExtended:
	default:
		return helloOKMsg{}, fmt.Errorf("%w: hello-ok of %d bytes, want %d or %d", ErrBadFrame, len(p), helloOKBase, helloOKExtended)
	}
	m = helloOKMsg{
		Epoch:     binary.BigEndian.Uint64(p[0:]),
		Head:      binary.BigEndian.Uint64(p[8:]),
		Durable:   binary.BigEndian.Uint64(p[16:]),
		HeadEpoch: binary.BigEndian.Uint64(p[24:]),
		extended:  true,
	}
	switch f := p[32]; {
	case f == helloFlagHeadEpoch:
		m.HeadEpochKnown = true
	case f != 0:
		return helloOKMsg{}, fmt.Errorf("%w: hello-ok head-epoch flags %#x", ErrBadFrame, f)
	case m.HeadEpoch != 0:
		return helloOKMsg{}, fmt.Errorf("%w: hello-ok with unknown head epoch %d", ErrBadFrame, m.HeadEpoch)
	}
	return m, nil
}

// encodeRecordHeader fills dst (recordFixed bytes) with the fixed part of
// a record message; the data follows it in the frame.
func encodeRecordHeader(dst []byte, epoch uint64, r *blockvol.Record) []byte {
	dst = dst[:recordFixed]
	binary.BigEndian.PutUint64(dst[0:], epoch)
	binary.BigEndian.PutUint64(dst[8:], r.LSN)
	binary.BigEndian.PutUint64(dst[16:], r.Epoch)
	dst[24] = byte(r.Kind)
	binary.BigEndian.PutUint64(dst[25:], r.LBA)
	binary.BigEndian.PutUint32(dst[33:], r.Blocks)
	return dst
}

// decodeRecord parses a record message. Rec.Data aliases p. Only the
// shape is checked here; the volume validates the record itself.
func decodeRecord(p []byte) (recordMsg, error) {
	if len(p) < recordFixed {
		return recordMsg{}, fmt.Errorf("%w: record of %d bytes", ErrBadFrame, len(p))
	}
	m := recordMsg{Epoch: binary.BigEndian.Uint64(p[0:])}
	m.Rec.LSN = binary.BigEndian.Uint64(p[8:])
	m.Rec.Epoch = binary.BigEndian.Uint64(p[16:])
	m.Rec.Kind = blockvol.Kind(p[24])
	m.Rec.LBA = binary.BigEndian.Uint64(p[25:])
	m.Rec.Blocks = binary.BigEndian.Uint32(p[33:])
	if len(p) > recordFixed {
		m.Rec.Data = p[recordFixed:]
	}
	switch m.Rec.Kind {
	case blockvol.KindWrite:
		if m.Rec.Blocks == 0 || len(m.Rec.Data) == 0 || len(m.Rec.Data)%int(m.Rec.Blocks) != 0 {
			return recordMsg{}, fmt.Errorf("%w: write record lsn %d: %d blocks, %d data bytes", ErrBadFrame, m.Rec.LSN, m.Rec.Blocks, len(m.Rec.Data))
		}
	case blockvol.KindTrim, blockvol.KindZero:
		if m.Rec.Blocks == 0 || len(m.Rec.Data) != 0 {
			return recordMsg{}, fmt.Errorf("%w: %v record lsn %d: %d blocks, %d data bytes", ErrBadFrame, m.Rec.Kind, m.Rec.LSN, m.Rec.Blocks, len(m.Rec.Data))
		}
	default:
		return recordMsg{}, fmt.Errorf("%w: record lsn %d: kind %d", ErrBadFrame, m.Rec.LSN, p[24])
	}
	if m.Rec.LSN == 0 {
		return recordMsg{}, fmt.Errorf("%w: record with lsn 0", ErrBadFrame)
	}
	return m, nil
}

func encodeBarrier(m barrierMsg) []byte { return encodeU64s(m.Epoch, m.LSN) }

func decodeBarrier(p []byte) (m barrierMsg, err error) {
	err = decodeU64s(p, "barrier", &m.Epoch, &m.LSN)
	return
}

func encodeBarrierAck(m barrierAckMsg) []byte { return encodeU64s(m.LSN, m.Durable) }

func decodeBarrierAck(p []byte) (m barrierAckMsg, err error) {
	err = decodeU64s(p, "barrier-ack", &m.LSN, &m.Durable)
	return
}

func encodeAck(applied uint64) []byte { return encodeU64s(applied) }

func decodeAck(p []byte) (applied uint64, err error) {
	err = decodeU64s(p, "ack", &applied)
	return
}

// maxErrorMsg bounds the text of an error frame.
const maxErrorMsg = 4096

func encodeError(m errorMsg) []byte {
	msg := m.Msg
	if len(msg) > maxErrorMsg {
		msg = msg[:maxErrorMsg]
	}
	b := make([]byte, 2+len(msg))
	binary.BigEndian.PutUint16(b, m.Code)
	copy(b[2:], msg)
	return b
}

func decodeError(p []byte) (errorMsg, error) {
	if len(p) < 2 || len(p) > 2+maxErrorMsg {
		return errorMsg{}, fmt.Errorf("%w: error frame of %d bytes", ErrBadFrame, len(p))
	}
	return errorMsg{Code: binary.BigEndian.Uint16(p), Msg: string(p[2:])}, nil
}

// Errors a sender sees when the replica refuses a request (from an error
// frame), wrapped in a *RemoteError with the replica's message.
var (
	// ErrStaleEpoch: the sender's epoch is lower than the replica's.
	ErrStaleEpoch = errors.New("replication: stale epoch")
	// ErrEpochAhead: the sender's epoch is higher than the replica was
	// assigned; the master must assign it first.
	ErrEpochAhead = errors.New("replication: epoch not yet assigned to the replica")
	// ErrUnknownVolume: the replica's server has no such volume registered.
	ErrUnknownVolume = errors.New("replication: unknown volume")
	// ErrNotReplica: the replica volume is fenced or not in RoleReplica.
	ErrNotReplica = errors.New("replication: volume is not an unfenced replica")
	// ErrApply: the replica could not append a record (LSN gap, conflict,
	// bad record, I/O error).
	ErrApply = errors.New("replication: replica refused a record")
	// ErrRemote: any other refusal by the replica.
	ErrRemote = errors.New("replication: replica error")
)

// RemoteError is an error frame received from a replica.
type RemoteError struct {
	Code uint16
	Msg  string
}

func (e *RemoteError) Error() string { return fmt.Sprintf("replica: %s", e.Msg) }

// Unwrap maps the code to its sentinel so errors.Is works.
func (e *RemoteError) Unwrap() error {
	switch e.Code {
	case codeStaleEpoch:
		return ErrStaleEpoch
	case codeEpochAhead:
		return ErrEpochAhead
	case codeUnknownVolume:
		return ErrUnknownVolume
	case codeNotReplica:
		return ErrNotReplica
	case codeApply:
		return ErrApply
	}
	return ErrRemote
}

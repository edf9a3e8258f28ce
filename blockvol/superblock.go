package blockvol

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// File layout: superblock copy A at 0, copy B at superblockSize, the WAL
// region from walOffset (walSize bytes), then the extent (size bytes).
// Every region starts 4 KiB aligned.
const (
	superblockSize   = 4096
	superblockCopies = 2
	walOffset        = superblockSize * superblockCopies
	// formatVersion 2 added the term history; version 1 superblocks
	// still open (with an empty history) and are rewritten as version 2.
	formatVersion    = 2
	minFormatVersion = 1
	// MaxConfigSize is the largest config blob the superblock holds.
	MaxConfigSize = 3072
)

var superblockMagic = [8]byte{'W', 'E', 'E', 'D', 'B', 'L', 'K', 0}

// Role is what the volume is in its replica set.
type Role uint8

const (
	RoleNone    Role = 0
	RolePrimary Role = 1
	RoleReplica Role = 2
)

func (r Role) String() string {
	switch r {
	case RoleNone:
		return "none"
	case RolePrimary:
		return "primary"
	case RoleReplica:
		return "replica"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// superblock is the persisted state. Layout (little endian, 4096 bytes):
//
//	0    magic [8]
//	8    version u32, 4 reserved
//	16   seq u64
//	24   size u64
//	32   blockSize u32
//	36   flags u32 (bit 0: untrusted)
//	40   walOffset u64
//	48   walSize u64
//	56   extentOffset u64
//	64   checkpoint u64 (highest LSN whose effects are all in the extent)
//	72   tailLSN u64 (LSN of the oldest record still in the WAL)
//	80   tailPos u64 (byte offset of that record inside the WAL region)
//	88   generation u64
//	96   epoch u64
//	104  role u8, 3 reserved
//	108  configLen u32
//	112  config [configLen]
//	3184 termCount u32 (version ≥ 2), 4 reserved
//	3192 terms [termCount] {epoch u64, first u64} (at most MaxTerms)
//	4080 cleanHead u64 (head at the last clean Close; flags bit 1: clean)
//	4092 crc u32 (CRC32C of bytes 0..4092)
type superblock struct {
	version      uint32
	seq          uint64
	size         uint64
	blockSize    uint32
	untrusted    bool
	walOffset    uint64
	walSize      uint64
	extentOffset uint64
	checkpoint   uint64
	tailLSN      uint64
	tailPos      uint64
	generation   uint64
	epoch        uint64
	role         Role
	config       []byte
	// clean: written by Close after everything up to cleanHead was synced.
	// A recovery that does not end exactly there was a crash.
	clean     bool
	cleanHead uint64
	// terms: the term history of the records ≤ checkpoint (term.go).
	terms []Term
}

const (
	termsOffset = 3184
	termsData   = termsOffset + 8
)

// The terms fit between the config and cleanHead.
var _ [4080 - termsData - 16*MaxTerms]byte

const (
	flagUntrusted = 1
	flagClean     = 2
)

func (s *superblock) encode(b []byte) {
	_ = b[superblockSize-1]
	for i := range b[:superblockSize] {
		b[i] = 0
	}
	copy(b[0:8], superblockMagic[:])
	binary.LittleEndian.PutUint32(b[8:], s.version)
	binary.LittleEndian.PutUint64(b[16:], s.seq)
	binary.LittleEndian.PutUint64(b[24:], s.size)
	binary.LittleEndian.PutUint32(b[32:], s.blockSize)
	var flags uint32
	if s.untrusted {
		flags |= flagUntrusted
	}
	if s.clean {
		flags |= flagClean
	}
	binary.LittleEndian.PutUint32(b[36:], flags)
	binary.LittleEndian.PutUint64(b[40:], s.walOffset)
	binary.LittleEndian.PutUint64(b[48:], s.walSize)
	binary.LittleEndian.PutUint64(b[56:], s.extentOffset)
	binary.LittleEndian.PutUint64(b[64:], s.checkpoint)
	binary.LittleEndian.PutUint64(b[72:], s.tailLSN)
	binary.LittleEndian.PutUint64(b[80:], s.tailPos)
	binary.LittleEndian.PutUint64(b[88:], s.generation)
	binary.LittleEndian.PutUint64(b[96:], s.epoch)
	b[104] = byte(s.role)
	binary.LittleEndian.PutUint32(b[108:], uint32(len(s.config)))
	copy(b[112:], s.config)
	if s.version >= 2 {
		binary.LittleEndian.PutUint32(b[termsOffset:], uint32(len(s.terms)))
		for i, t := range s.terms {
			binary.LittleEndian.PutUint64(b[termsData+16*i:], t.Epoch)
			binary.LittleEndian.PutUint64(b[termsData+16*i+8:], t.First)
		}
	}
	binary.LittleEndian.PutUint64(b[4080:], s.cleanHead)
	binary.LittleEndian.PutUint32(b[4092:], crc32c(b[:4092]))
}

// decodeSuperblock validates one copy: magic, CRC, then (for the current
// version) geometry. A copy with a valid CRC but another version decodes
// its version and seq and returns a *VersionError.
func decodeSuperblock(b []byte) (superblock, error) {
	var s superblock
	if len(b) < superblockSize {
		return s, fmt.Errorf("%w: %d bytes, need %d", ErrBadSuperblock, len(b), superblockSize)
	}
	if string(b[0:8]) != string(superblockMagic[:]) {
		return s, fmt.Errorf("%w: bad magic", ErrBadSuperblock)
	}
	if want, got := crc32c(b[:4092]), binary.LittleEndian.Uint32(b[4092:]); want != got {
		return s, fmt.Errorf("%w: crc %#x, computed %#x", ErrBadSuperblock, got, want)
	}
	s.version = binary.LittleEndian.Uint32(b[8:])
	s.seq = binary.LittleEndian.Uint64(b[16:])
	if s.version < minFormatVersion || s.version > formatVersion {
		return s, &VersionError{Got: s.version, Want: formatVersion}
	}
	s.size = binary.LittleEndian.Uint64(b[24:])
	s.blockSize = binary.LittleEndian.Uint32(b[32:])
	flags := binary.LittleEndian.Uint32(b[36:])
	s.untrusted = flags&flagUntrusted != 0
	s.clean = flags&flagClean != 0
	s.cleanHead = binary.LittleEndian.Uint64(b[4080:])
	s.walOffset = binary.LittleEndian.Uint64(b[40:])
	s.walSize = binary.LittleEndian.Uint64(b[48:])
	s.extentOffset = binary.LittleEndian.Uint64(b[56:])
	s.checkpoint = binary.LittleEndian.Uint64(b[64:])
	s.tailLSN = binary.LittleEndian.Uint64(b[72:])
	s.tailPos = binary.LittleEndian.Uint64(b[80:])
	s.generation = binary.LittleEndian.Uint64(b[88:])
	s.epoch = binary.LittleEndian.Uint64(b[96:])
	s.role = Role(b[104])
	n := binary.LittleEndian.Uint32(b[108:])
	if n > MaxConfigSize {
		return s, fmt.Errorf("%w: config length %d", ErrBadSuperblock, n)
	}
	if n > 0 {
		s.config = append([]byte(nil), b[112:112+n]...)
	}
	if s.version >= 2 {
		nt := binary.LittleEndian.Uint32(b[termsOffset:])
		if nt > MaxTerms {
			return s, fmt.Errorf("%w: %d terms, at most %d", ErrBadSuperblock, nt, MaxTerms)
		}
		if nt > 0 {
			s.terms = make([]Term, nt)
			for i := range s.terms {
				s.terms[i].Epoch = binary.LittleEndian.Uint64(b[termsData+16*i:])
				s.terms[i].First = binary.LittleEndian.Uint64(b[termsData+16*i+8:])
			}
		}
	}
	if err := s.validate(); err != nil {
		return s, err
	}
	return s, nil
}

// validate checks the geometry is one this code could have written.
func (s *superblock) validate() error {
	bs := uint64(s.blockSize)
	switch {
	case bs < 512 || bs > 1<<20 || bs&(bs-1) != 0:
		return fmt.Errorf("%w: block size %d", ErrBadSuperblock, s.blockSize)
	case s.size == 0 || s.size%bs != 0 || s.size > 1<<50:
		return fmt.Errorf("%w: size %d", ErrBadSuperblock, s.size)
	case s.walOffset != walOffset:
		return fmt.Errorf("%w: wal offset %d", ErrBadSuperblock, s.walOffset)
	case s.walSize < minWALSize || s.walSize%4096 != 0 || s.walSize > 1<<40:
		return fmt.Errorf("%w: wal size %d", ErrBadSuperblock, s.walSize)
	case s.extentOffset != extentOffsetFor(s.walSize, s.blockSize):
		return fmt.Errorf("%w: extent offset %d", ErrBadSuperblock, s.extentOffset)
	case s.tailPos >= s.walSize || s.tailPos%recordAlign != 0:
		return fmt.Errorf("%w: tail position %d", ErrBadSuperblock, s.tailPos)
	case s.tailLSN == 0 || s.tailLSN > s.checkpoint+1:
		return fmt.Errorf("%w: tail lsn %d with checkpoint %d", ErrBadSuperblock, s.tailLSN, s.checkpoint)
	case s.role > RoleReplica:
		return fmt.Errorf("%w: role %d", ErrBadSuperblock, s.role)
	}
	if err := checkTerms(s.terms, s.checkpoint); err != nil {
		return fmt.Errorf("%w: %v", ErrBadSuperblock, err)
	}
	return nil
}

func alignUp64(x, a uint64) uint64 { return (x + a - 1) / a * a }

// extentOffsetFor places the extent right after the WAL, aligned to 4 KiB
// and to the block size.
func extentOffsetFor(walSize uint64, blockSize uint32) uint64 {
	a := uint64(4096)
	if uint64(blockSize) > a {
		a = uint64(blockSize)
	}
	return alignUp64(walOffset+walSize, a)
}

// pickSuperblock decodes both copies and returns the valid one with the
// highest sequence number, and the slot it came from.
func pickSuperblock(a, b []byte) (superblock, int, error) {
	var best superblock
	slot := -1
	var errs [2]error
	var verErr error
	var verSeq uint64
	for i, buf := range [][]byte{a, b} {
		s, err := decodeSuperblock(buf)
		if err != nil {
			errs[i] = err
			var ve *VersionError
			if errors.As(err, &ve) && (verErr == nil || s.seq > verSeq) {
				verErr, verSeq = err, s.seq
			}
			continue
		}
		if slot < 0 || s.seq > best.seq {
			best, slot = s, i
		}
	}
	// A copy written by another format version that is newer than every
	// valid copy means this build must not touch the file.
	if verErr != nil && (slot < 0 || verSeq > best.seq) {
		return superblock{}, -1, verErr
	}
	if slot < 0 {
		return superblock{}, -1, fmt.Errorf("%w: copy A: %v; copy B: %v", ErrSuperblockCorrupt, errs[0], errs[1])
	}
	return best, slot, nil
}

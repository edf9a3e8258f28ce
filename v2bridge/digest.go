package v2bridge

import (
	"crypto/sha256"
	"encoding/binary"
	"hash"
)

// baseDigest is the end-to-end digest of a base transfer (wire version 2,
// Preface "WBRECV02"): a SHA-256 over the manifest and then, for every base
// request in the order it was sent (primary) or applied (replica), its kind,
// offset, length and the CRC32C of its frame's payload. Both sides compute
// it from values they already hold (the sender computes each frame's CRC as
// it writes the frame, the receiver checks it as it reads the frame), so no
// base byte is hashed twice: the frame CRC covers every byte of the payload
// (a bit flip fails the frame), and the digest covers the sequence (a frame
// lost, duplicated, reordered or applied at another offset changes it). It
// is not the SHA-256 of the image: a snapshot's image is still checked
// against its manifest by the primary, which hashes the bytes it reads.
type baseDigest struct {
	h   hash.Hash
	rec [1 + 8 + 8 + 4]byte
}

// baseDigestDomain starts every digest, so it is never taken for another.
const baseDigestDomain = "weedblock v2bridge base digest 2\x00"

// newBaseDigest starts the digest of a base at lsn of size bytes.
func newBaseDigest(lsn, size uint64) *baseDigest {
	d := &baseDigest{h: sha256.New()}
	d.h.Write([]byte(baseDigestDomain))
	var m [16]byte
	binary.BigEndian.PutUint64(m[0:8], lsn)
	binary.BigEndian.PutUint64(m[8:16], size)
	d.h.Write(m[:])
	return d
}

// add counts one base request: kind (opBase or opZero), n bytes at off, and
// its frame payload's CRC32C.
func (d *baseDigest) add(kind op, off, n uint64, crc uint32) {
	d.rec[0] = byte(kind)
	binary.BigEndian.PutUint64(d.rec[1:9], off)
	binary.BigEndian.PutUint64(d.rec[9:17], n)
	binary.BigEndian.PutUint32(d.rec[17:21], crc)
	d.h.Write(d.rec[:])
}

// sum is the digest so far.
func (d *baseDigest) sum() [32]byte {
	var s [32]byte
	d.h.Sum(s[:0])
	return s
}

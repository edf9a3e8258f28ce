package iscsi

import (
	"crypto/md5"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// CHAP with MD5 (RFC 1994, RFC 7143 §12.1.3).

const (
	chapMD5          = "5"
	chapChallengeLen = 16
)

// chapResponse computes MD5(id || secret || challenge).
func chapResponse(id byte, secret string, challenge []byte) []byte {
	h := md5.New()
	h.Write([]byte{id})
	h.Write([]byte(secret))
	h.Write(challenge)
	return h.Sum(nil)
}

// decodeCHAPBinary decodes a binary value in 0x-hex or 0b-base64 form.
func decodeCHAPBinary(v string) ([]byte, error) {
	switch {
	case strings.HasPrefix(v, "0x") || strings.HasPrefix(v, "0X"):
		s := v[2:]
		if len(s)%2 == 1 {
			s = "0" + s
		}
		b, err := hex.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("hex value: %w", err)
		}
		return b, nil
	case strings.HasPrefix(v, "0b") || strings.HasPrefix(v, "0B"):
		b, err := base64.StdEncoding.DecodeString(v[2:])
		if err != nil {
			return nil, fmt.Errorf("base64 value: %w", err)
		}
		return b, nil
	}
	return nil, fmt.Errorf("binary value %q lacks 0x or 0b prefix", v)
}

func encodeCHAPBinary(b []byte) string { return "0x" + hex.EncodeToString(b) }

func parseCHAPID(v string) (byte, error) {
	n, err := strconv.ParseUint(v, 10, 8)
	if err != nil {
		return 0, fmt.Errorf("CHAP_I %q: %w", v, err)
	}
	return byte(n), nil
}

// newCHAPChallenge returns a random identifier and challenge.
func newCHAPChallenge() (byte, []byte, error) {
	b := make([]byte, 1+chapChallengeLen)
	if _, err := rand.Read(b); err != nil {
		return 0, nil, fmt.Errorf("chap challenge: %w", err)
	}
	return b[0], b[1:], nil
}

func chapEqual(a, b []byte) bool { return subtle.ConstantTimeCompare(a, b) == 1 }

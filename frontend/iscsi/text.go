package iscsi

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Limits on text keys and values (RFC 7143 §6.1).
const (
	maxKeyLen   = 63
	maxValueLen = 8192
	// maxTextLen bounds the text accumulated over continued (C bit) PDUs.
	maxTextLen = 64 * 1024
)

// ErrText is wrapped by every text-parsing error.
var ErrText = errors.New("iscsi: malformed text")

// kv is one key=value pair in the order it appeared.
type kv struct{ key, value string }

// parseText splits a data segment of NUL-terminated key=value pairs.
// Trailing bytes without a NUL are accepted as a last pair (some initiators
// omit the final NUL); duplicate keys are an error.
func parseText(data []byte) ([]kv, error) { return parseTextPairs(data, false) }

// parseTextPairs is parseText, optionally allowing repeated keys (as in a
// SendTargets response).
func parseTextPairs(data []byte, allowDup bool) ([]kv, error) {
	var out []kv
	for len(data) > 0 {
		var item []byte
		if i := bytes.IndexByte(data, 0); i >= 0 {
			item, data = data[:i], data[i+1:]
		} else {
			item, data = data, nil
		}
		if len(item) == 0 {
			continue // padding or stray NULs
		}
		eq := bytes.IndexByte(item, '=')
		if eq <= 0 {
			return nil, fmt.Errorf("pair %q has no key=value: %w", truncateForLog(item), ErrText)
		}
		k, v := string(item[:eq]), string(item[eq+1:])
		if len(k) > maxKeyLen {
			return nil, fmt.Errorf("key %q too long: %w", truncateForLog(item[:eq]), ErrText)
		}
		if len(v) > maxValueLen {
			return nil, fmt.Errorf("value of %s too long (%d bytes): %w", k, len(v), ErrText)
		}
		for _, p := range out {
			if !allowDup && p.key == k {
				return nil, fmt.Errorf("key %s sent twice: %w", k, ErrText)
			}
		}
		out = append(out, kv{k, v})
	}
	return out, nil
}

func truncateForLog(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "..."
	}
	return string(b)
}

// textBuf builds a data segment of key=value pairs.
type textBuf struct{ b []byte }

func (t *textBuf) add(k, v string) {
	t.b = append(t.b, k...)
	t.b = append(t.b, '=')
	t.b = append(t.b, v...)
	t.b = append(t.b, 0)
}

func (t *textBuf) bytes() []byte { return t.b }

// Special values (RFC 7143 §6.2, §6.3).
const (
	valNotUnderstood = "NotUnderstood"
	valIrrelevant    = "Irrelevant"
	valReject        = "Reject"
)

// parseNumber parses a decimal, 0x-hex or 0b-base64-free numeric value.
func parseNumber(v string) (uint64, error) {
	if v == "" {
		return 0, fmt.Errorf("empty number: %w", ErrText)
	}
	if strings.HasPrefix(v, "0x") || strings.HasPrefix(v, "0X") {
		return strconv.ParseUint(v[2:], 16, 64)
	}
	return strconv.ParseUint(v, 10, 64)
}

func parseBool(v string) (bool, bool) {
	switch v {
	case "Yes":
		return true, true
	case "No":
		return false, true
	}
	return false, false
}

func boolStr(b bool) string {
	if b {
		return "Yes"
	}
	return "No"
}

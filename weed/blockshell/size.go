package blockshell

import (
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"

	"github.com/dustin/go-humanize"
)

// ErrBadSize is wrapped by every size that ParseSize cannot read.
var ErrBadSize = errors.New("not a size")

// sizeUnits maps a lower-case suffix to its multiplier. Single letters and
// the IEC forms are binary, as disk tools (qemu-img, truncate) read them:
// 1G is 1 GiB. Only the SI forms with a 'b' (kb, mb, gb, ...) are decimal.
var sizeUnits = map[string]uint64{
	"": 1, "b": 1,
	"k": 1 << 10, "ki": 1 << 10, "kib": 1 << 10, "kb": 1e3,
	"m": 1 << 20, "mi": 1 << 20, "mib": 1 << 20, "mb": 1e6,
	"g": 1 << 30, "gi": 1 << 30, "gib": 1 << 30, "gb": 1e9,
	"t": 1 << 40, "ti": 1 << 40, "tib": 1 << 40, "tb": 1e12,
	"p": 1 << 50, "pi": 1 << 50, "pib": 1 << 50, "pb": 1e15,
}

// ParseSize reads a byte count such as "20GiB", "512MiB", "1G", "4096",
// "1.5GiB" or "10GB" (decimal). Suffixes are case-insensitive; a fraction
// must come out as a whole number of bytes. Errors wrap ErrBadSize.
func ParseSize(s string) (uint64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	mult, ok := sizeUnits[unit]
	if num == "" || !ok {
		return 0, fmt.Errorf("%q: %w (want a number with an optional unit: 512MiB, 20GiB, 1G, 1TiB)", s, ErrBadSize)
	}
	whole, frac, hasFrac := strings.Cut(num, ".")
	if strings.Contains(frac, ".") || whole == "" && frac == "" {
		return 0, fmt.Errorf("%q: %w", s, ErrBadSize)
	}
	if whole == "" {
		whole = "0"
	}
	w, err := strconv.ParseUint(whole, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q: %w (too large)", s, ErrBadSize)
	}
	hi, n := bits.Mul64(w, mult)
	if hi != 0 {
		return 0, fmt.Errorf("%q: %w (too large)", s, ErrBadSize)
	}
	if hasFrac && frac != "" {
		frac = strings.TrimRight(frac, "0")
		if len(frac) > 18 {
			return 0, fmt.Errorf("%q: %w (too many decimals)", s, ErrBadSize)
		}
		if frac != "" {
			f, _ := strconv.ParseUint(frac, 10, 64) // digits only, ≤ 18 of them
			den := uint64(1)
			for range len(frac) {
				den *= 10
			}
			fhi, flo := bits.Mul64(f, mult)
			if fhi >= den {
				return 0, fmt.Errorf("%q: %w (too large)", s, ErrBadSize)
			}
			q, r := bits.Div64(fhi, flo, den)
			if r != 0 {
				return 0, fmt.Errorf("%q: %w (not a whole number of bytes)", s, ErrBadSize)
			}
			var carry uint64
			n, carry = bits.Add64(n, q, 0)
			if carry != 0 {
				return 0, fmt.Errorf("%q: %w (too large)", s, ErrBadSize)
			}
		}
	}
	return n, nil
}

// FormatSize renders n for people: "256 MiB", "1 GiB", "1.5 GiB", "512 B".
// A whole number of a unit prints without decimals.
func FormatSize(n uint64) string {
	units := []string{"PiB", "TiB", "GiB", "MiB", "KiB"}
	for i, u := range units {
		shift := uint(10 * (len(units) - i))
		if n < 1<<shift {
			continue
		}
		if n%(1<<shift) == 0 {
			return fmt.Sprintf("%d %s", n>>shift, u)
		}
		break
	}
	return humanize.IBytes(n)
}

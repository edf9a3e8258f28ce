package v2bridge

import "testing"

// TestBaseDigestSensitive: the digest changes with the manifest and with
// every field, the order, the count of the requests it counts.
func TestBaseDigestSensitive(t *testing.T) {
	type entry struct {
		kind   op
		off, n uint64
		crc    uint32
	}
	sum := func(lsn, size uint64, es ...entry) [32]byte {
		d := newBaseDigest(lsn, size)
		for _, e := range es {
			d.add(e.kind, e.off, e.n, e.crc)
		}
		return d.sum()
	}
	a := entry{opBase, 0, 1 << 20, 0x1234}
	b := entry{opBase, 1 << 20, 1 << 20, 0x5678}
	want := sum(7, 2<<20, a, b)
	if sum(7, 2<<20, a, b) != want {
		t.Fatal("the digest is not deterministic")
	}
	for name, got := range map[string][32]byte{
		"other base lsn":   sum(8, 2<<20, a, b),
		"other size":       sum(7, 3<<20, a, b),
		"dropped":          sum(7, 2<<20, a),
		"duplicated":       sum(7, 2<<20, a, a, b),
		"reordered":        sum(7, 2<<20, b, a),
		"other offset":     sum(7, 2<<20, a, entry{opBase, 1<<20 + bs, 1 << 20, 0x5678}),
		"other length":     sum(7, 2<<20, a, entry{opBase, 1 << 20, 1<<20 - bs, 0x5678}),
		"other crc":        sum(7, 2<<20, a, entry{opBase, 1 << 20, 1 << 20, 0x5679}),
		"zeros, not data":  sum(7, 2<<20, a, entry{opZero, 1 << 20, 1 << 20, 0x5678}),
		"nothing received": sum(7, 2<<20),
	} {
		if got == want {
			t.Errorf("%s: same digest", name)
		}
	}
}

package blockmaster

import (
	"errors"
	"testing"
)

// FuzzRegistryDecode: whatever bytes sit in the registry file, decoding
// never panics, and what it accepts survives an encode/decode round trip
// unchanged.
func FuzzRegistryDecode(f *testing.F) {
	good := newRegistry("")
	good.volumes["a"] = testRecord("a", 3)
	good.indexAdd(good.volumes["a"])
	good.tombstones["b"] = 7
	b, err := good.encode()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"format":1,"volumes":[]}`))
	f.Add([]byte(`{"format":1,"volumes":[{"spec":{"name":"a"},"config":{"epoch":"1"},"first_epoch":1}],"tombstones":{"z":2}}`))
	f.Add([]byte(`{"format":1,"volumes":[{"spec":null,"config":null}]}`))
	f.Add([]byte(`{"format":1,"volumes":[{"spec":{"name":"a"},"config":{"epoch":"1","members":[{"server":null}]},"first_epoch":1}]}`))
	f.Add([]byte("\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := newRegistry("")
		if err := r.decode(data); err != nil {
			if !errors.Is(err, ErrCorruptRegistry) {
				t.Fatalf("decode error without ErrCorruptRegistry: %v", err)
			}
			return
		}
		out, err := r.encode()
		if err != nil {
			t.Fatalf("encode of a decoded registry: %v", err)
		}
		r2 := newRegistry("")
		if err := r2.decode(out); err != nil {
			t.Fatalf("re-decode: %v\n%s", err, out)
		}
		out2, err := r2.encode()
		if err != nil || string(out) != string(out2) {
			t.Fatalf("round trip differs:\n%s\n%s", out, out2)
		}
	})
}

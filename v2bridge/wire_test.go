package v2bridge

import (
	"bufio"
	"bytes"
	"errors"
	"math/rand"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol"
)

func TestRequestRoundTrip(t *testing.T) {
	in := request{Op: opApply, Volume: "v", Epoch: 7, Attempt: 9, A: 1, B: 2, C: 3,
		Recs: []blockvol.Record{{LSN: 4, Epoch: 7, Kind: blockvol.KindWrite, LBA: 5, Blocks: 1, Data: []byte("abcd")},
			{LSN: 5, Epoch: 7, Kind: blockvol.KindTrim, LBA: 8, Blocks: 3}},
		Data: []byte("xyz")}
	in.Sum[3] = 9
	out, err := decodeRequest(in.encode(nil))
	if err != nil {
		t.Fatal(err)
	}
	if out.Op != in.Op || out.Volume != in.Volume || out.Epoch != 7 || out.Attempt != 9 || out.A != 1 || out.B != 2 || out.C != 3 ||
		out.Sum != in.Sum || len(out.Recs) != 2 || !bytes.Equal(out.Recs[0].Data, []byte("abcd")) ||
		out.Recs[1].Kind != blockvol.KindTrim || out.Recs[1].Blocks != 3 || !bytes.Equal(out.Data, []byte("xyz")) {
		t.Fatalf("round trip: %+v", out)
	}
	r := response{Code: codeBaseMismatch, Msg: "m", Head: 1, Durable: 2, Checkpoint: 3, Epoch: 4, Untrusted: true, EpochUnknown: true}
	got, err := decodeResponse(r.encode(nil))
	if err != nil || !reflect.DeepEqual(got, r) {
		t.Fatalf("response round trip: %+v, %v", got, err)
	}
	r.HasTerms, r.Terms = true, []blockvol.Term{{Epoch: 2, First: 1}, {Epoch: 4, First: 9}}
	if got, err = decodeResponse(r.encode(nil)); err != nil || !reflect.DeepEqual(got, r) {
		t.Fatalf("response with terms round trip: %+v, %v", got, err)
	}
	r.Terms = []blockvol.Term{}
	if got, err = decodeResponse(r.encode(nil)); err != nil || !got.HasTerms || len(got.Terms) != 0 {
		t.Fatalf("response with an empty history: %+v, %v", got, err)
	}
}

// TestTermsWire: a term list round-trips; an answer without the terms
// section (an older replica) still decodes (no terms); malformed lists
// (unordered, LSN 0, a count beyond the bytes or the bound, trailing bytes,
// truncation anywhere) are ErrBadFrame, never a panic.
func TestTermsWire(t *testing.T) {
	ts := []blockvol.Term{{Epoch: 1, First: 1}, {Epoch: 3, First: 40}, {Epoch: 7, First: 41}}
	got, err := decodeTerms(appendTerms(nil, ts))
	if err != nil || !reflect.DeepEqual(got, ts) {
		t.Fatalf("round trip: %v %v", got, err)
	}
	old := response{Code: codeOK, Durable: 5, Epoch: 3}
	if got, err := decodeResponse(old.encode(nil)); err != nil || got.HasTerms || got.Terms != nil {
		t.Fatalf("answer without terms: %+v %v", got, err)
	}
	bad := map[string][]byte{
		"unordered":     appendTerms(nil, []blockvol.Term{{Epoch: 1, First: 5}, {Epoch: 2, First: 5}}),
		"lsn 0":         appendTerms(nil, []blockvol.Term{{Epoch: 1, First: 0}}),
		"count":         putU32(nil, 3),
		"huge count":    append(putU32(nil, 1<<31), make([]byte, 64)...),
		"beyond bound":  append(putU32(nil, maxWireTerms+1), make([]byte, 16*(maxWireTerms+1))...),
		"trailing":      append(appendTerms(nil, ts), 0),
		"short":         appendTerms(nil, ts)[:20],
		"empty payload": {},
	}
	for name, p := range bad {
		if _, err := decodeTerms(p); !errors.Is(err, ErrBadFrame) {
			t.Fatalf("%s: %v", name, err)
		}
	}
	full := (&response{Code: codeOK, HasTerms: true, Terms: ts}).encode(nil)
	for n := 0; n < len(full); n++ {
		if _, err := decodeResponse(full[:n]); err == nil {
			t.Fatalf("answer cut at %d of %d bytes decoded", n, len(full))
		}
	}
	head := (&response{Code: codeOK, HasTerms: true}).encode(nil)
	head = head[:len(head)-4] // without its (empty) term list
	if _, err := decodeResponse(appendTerms(head, []blockvol.Term{{Epoch: 1, First: 9}, {Epoch: 2, First: 3}})); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("unordered terms in an answer: %v", err)
	}
}

func TestBadBytesAreErrors(t *testing.T) {
	good := (&request{Op: opApply, Volume: "v", Recs: []blockvol.Record{{LSN: 1, Kind: blockvol.KindWrite, Blocks: 1, Data: make([]byte, 64)}}}).encode(nil)
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 20000; i++ {
		p := append([]byte(nil), good...)
		switch i % 3 {
		case 0:
			p = p[:rng.Intn(len(p))]
		case 1:
			p[rng.Intn(len(p))] ^= byte(1 + rng.Intn(255))
		default:
			p = make([]byte, rng.Intn(200))
			rng.Read(p)
		}
		if _, err := decodeRequest(p); err == nil && i%3 == 0 {
			t.Fatalf("truncated request of %d bytes decoded", len(p))
		}
		decodeResponse(p)
	}
	// A huge record count in a small frame is refused before allocating.
	p := append([]byte(nil), good[:1+4+1+8*6+32]...)
	p = append(p, 0xff, 0xff, 0xff, 0xff)
	if _, err := decodeRequest(p); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("huge record count: %v", err)
	}
}

func TestServiceRefusesCorruptFrames(t *testing.T) {
	svc, addr := startService(t)
	rep := newReplicaVol(t, "r.vol", 1, volOpts{})
	svc.Register("vol1", rep)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte(Preface))
	// A frame whose CRC does not match: refused with the reason, then the
	// connection ends (nothing after it is read).
	payload := (&request{Op: opHello, Volume: "vol1", Epoch: 1}).encode(nil)
	var fr bytes.Buffer
	w := bufio.NewWriter(&fr)
	writeFrame(w, payload)
	b := fr.Bytes()
	b[len(b)-1] ^= 1
	c.Write(b)
	wantRefusedThenEnd(t, c, "CRC mismatch")
	// A well-framed request that does not decode gets an error answer.
	c2, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.SetDeadline(time.Now().Add(10 * time.Second))
	bw := bufio.NewWriter(c2)
	bw.WriteString(Preface)
	writeFrame(bw, []byte{99, 1, 2})
	p, err := readFrame(c2, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := decodeResponse(p)
	if err != nil || r.Code != codeOther {
		t.Fatalf("answer %+v, %v", r, err)
	}
	// An oversized length is refused without reading it.
	c3, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	c3.SetDeadline(time.Now().Add(10 * time.Second))
	c3.Write([]byte(Preface))
	c3.Write([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
	wantRefusedThenEnd(t, c3, "exceeds")
	if st := rep.Status(); st.Head != 0 || !st.Healthy {
		t.Fatalf("replica changed: %+v", st)
	}
}

// wantRefusedThenEnd reads a refusal saying why from c, then the end of
// the connection.
func wantRefusedThenEnd(t *testing.T, c net.Conn, why string) {
	t.Helper()
	p, err := readFrame(c, nil)
	if err != nil {
		t.Fatalf("no refusal: %v", err)
	}
	r, err := decodeResponse(p)
	if err != nil || r.Code != codeOther || !strings.Contains(r.Msg, why) {
		t.Fatalf("answer %+v, %v: want a refusal saying %q", r, err, why)
	}
	if _, err := readFrame(c, nil); err == nil {
		t.Fatal("the service answered after a bad frame")
	}
}

// FuzzWire: any bytes decode to a request, a response and a frame or to
// an error, never a panic; what decodes encodes to bytes that decode to
// the same message.
func FuzzWire(f *testing.F) {
	f.Add((&request{Op: opApply, Volume: "v", Epoch: 3, Attempt: 2, B: 1,
		Recs: []blockvol.Record{{LSN: 1, Epoch: 3, Kind: blockvol.KindWrite, Blocks: 1, Data: make([]byte, 64)},
			{LSN: 2, Epoch: 3, Kind: blockvol.KindTrim, LBA: 9, Blocks: 4}}}).encode(nil))
	f.Add((&request{Op: opVerify, Volume: "v", A: 7, C: 1 << 20, Sum: [32]byte{1, 2}, Data: []byte{0, 0, 0, 1}}).encode(nil))
	f.Add((&response{Code: codeOK, Head: 9, Durable: 8, Checkpoint: 4, Epoch: 3, HasTerms: true,
		Terms: []blockvol.Term{{Epoch: 1, First: 1}, {Epoch: 3, First: 5}}}).encode(nil))
	f.Add((&response{Code: codeStaleEpoch, Msg: "stale", Untrusted: true, EpochUnknown: true}).encode(nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		if req, err := decodeRequest(p); err == nil {
			again, err := decodeRequest(req.encode(nil))
			if err != nil {
				t.Fatalf("re-encoded request does not decode: %v", err)
			}
			if !reflect.DeepEqual(normalRequest(again), normalRequest(req)) {
				t.Fatalf("request round trip:\n%+v\n%+v", req, again)
			}
		}
		if resp, err := decodeResponse(p); err == nil {
			again, err := decodeResponse(resp.encode(nil))
			if err != nil {
				t.Fatalf("re-encoded response does not decode: %v", err)
			}
			if !reflect.DeepEqual(normalResponse(again), normalResponse(resp)) {
				t.Fatalf("response round trip:\n%+v\n%+v", resp, again)
			}
		}
		if fr, err := readFrame(bytes.NewReader(p), nil); err == nil && len(fr) > len(p) {
			t.Fatalf("frame of %d bytes from %d", len(fr), len(p))
		}
	})
}

// normalRequest and normalResponse make empty and nil slices equal.
func normalRequest(r request) request {
	if len(r.Data) == 0 {
		r.Data = nil
	}
	if len(r.Recs) == 0 {
		r.Recs = nil
	}
	for i := range r.Recs {
		if len(r.Recs[i].Data) == 0 {
			r.Recs[i].Data = nil
		}
	}
	return r
}

func normalResponse(r response) response {
	if len(r.Terms) == 0 {
		r.Terms = nil
	}
	return r
}

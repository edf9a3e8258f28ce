package v2bridge

import (
	"context"
	"encoding/binary"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/weedblock/weedblock/engine"
	"github.com/weedblock/weedblock/executor"
)

// tamperConn is a Peer's connection that rewrites the base requests it
// carries (the requests a broken network or a buggy sender could deliver):
// it parses the outgoing frames and hands each base request (opBase or
// opZero), numbered k from 0, to mutate, which returns the frames to send
// in its place.
type tamperConn struct {
	net.Conn
	mutate func(tc *tamperConn, k int, req request, payload []byte) []outFrame

	mu      sync.Mutex
	preface int // preface bytes still to pass
	buf     []byte
	k       int
	held    [][]byte // payloads a mutation keeps for later
}

// outFrame is a frame to send: its payload, and a CRC to write instead of
// the payload's (0: the payload's).
type outFrame struct {
	payload []byte
	crc     uint32
}

func (tc *tamperConn) Write(p []byte) (int, error) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	total := len(p)
	var out []byte
	if tc.preface > 0 {
		n := min(tc.preface, len(p))
		out = append(out, p[:n]...)
		tc.preface -= n
		p = p[n:]
	}
	tc.buf = append(tc.buf, p...)
	for len(tc.buf) >= frameHeader {
		n := int(binary.BigEndian.Uint32(tc.buf[0:4]))
		if len(tc.buf) < frameHeader+n {
			break
		}
		payload := append([]byte(nil), tc.buf[frameHeader:frameHeader+n]...)
		tc.buf = tc.buf[frameHeader+n:]
		frames := []outFrame{{payload: payload}}
		if req, err := decodeRequest(payload); err == nil && (req.Op == opBase || req.Op == opZero) {
			frames = tc.mutate(tc, tc.k, req, payload)
			tc.k++
		}
		for _, f := range frames {
			crc := f.crc
			if crc == 0 {
				crc = frameCRC(f.payload, nil)
			}
			out = binary.BigEndian.AppendUint32(out, uint32(len(f.payload)))
			out = binary.BigEndian.AppendUint32(out, crc)
			out = append(out, f.payload...)
		}
	}
	if _, err := tc.Conn.Write(out); err != nil {
		return 0, err
	}
	return total, nil
}

// tamperDialer dials TCP and wraps the connection in a tamperConn.
func tamperDialer(mutate func(tc *tamperConn, k int, req request, payload []byte) []outFrame) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return &tamperConn{Conn: c, mutate: mutate, preface: len(Preface)}, nil
	}
}

// TestTamperedBaseRefused runs full rebuilds over a connection that loses,
// duplicates, reorders, misplaces or corrupts one base request: each must
// fail (never in sync), leave the replica untrusted with nothing installed,
// release every pin, and say why; a rebuild over a clean connection then
// succeeds. Requests re-framed by the tamperer carry a valid CRC, so the
// cases the frame CRC cannot see (data swapped between offsets, data
// turned into zeros) are caught by the base's digest (ErrBaseMismatch).
func TestTamperedBaseRefused(t *testing.T) {
	keep := func(p []byte) []outFrame { return []outFrame{{payload: p}} }
	reencode := func(r request) []byte { return r.encode(nil) }
	cases := []struct {
		name   string
		mutate func(tc *tamperConn, k int, req request, payload []byte) []outFrame
		reason string // in the outcome's reason
		digest bool   // only the digest can catch it: ErrBaseMismatch
	}{
		{"dropped", func(tc *tamperConn, k int, req request, p []byte) []outFrame {
			if k != 1 {
				return keep(p)
			}
			// A hello in its place keeps the answers in step.
			return keep(reencode(request{Op: opHello, Volume: req.Volume, Epoch: req.Epoch, Attempt: req.Attempt}))
		}, "expected", false},
		{"duplicated", func(tc *tamperConn, k int, req request, p []byte) []outFrame {
			switch k {
			case 1:
				tc.held = [][]byte{p}
			case 2:
				return keep(tc.held[0]) // the one before, again, instead of this one
			}
			return keep(p)
		}, "expected", false},
		{"reordered", func(tc *tamperConn, k int, req request, p []byte) []outFrame {
			switch k {
			case 1:
				tc.held = [][]byte{p}
				return nil
			case 2:
				return []outFrame{{payload: p}, {payload: tc.held[0]}}
			}
			return keep(p)
		}, "expected", false},
		{"wrong offset", func(tc *tamperConn, k int, req request, p []byte) []outFrame {
			if k == 1 {
				req.A += bs
				return keep(reencode(req))
			}
			return keep(p)
		}, "expected", false},
		{"data swapped between offsets", func(tc *tamperConn, k int, req request, p []byte) []outFrame {
			switch k {
			case 1:
				tc.held = [][]byte{p}
				return nil
			case 2:
				first, err := decodeRequest(tc.held[0])
				if err != nil || len(first.Data) != len(req.Data) {
					panic("tamper: chunks 1 and 2 differ in size")
				}
				first.Data, req.Data = req.Data, first.Data
				return []outFrame{{payload: reencode(first)}, {payload: reencode(req)}}
			}
			return keep(p)
		}, "digest", true},
		{"data delivered as zeros", func(tc *tamperConn, k int, req request, p []byte) []outFrame {
			if k == 1 && req.Op == opBase {
				z := req
				z.Op, z.D, z.Data = opZero, uint64(len(req.Data)), nil
				return keep(reencode(z))
			}
			return keep(p)
		}, "digest", true},
		{"bit flipped", func(tc *tamperConn, k int, req request, p []byte) []outFrame {
			if k != 1 {
				return keep(p)
			}
			crc := frameCRC(p, nil)
			p[len(p)-100] ^= 0x10 // in the data; the CRC is the original's
			return []outFrame{{payload: p, crc: crc}}
		}, "CRC mismatch", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			svc, addr := startService(t)
			prim := primaryVol(t, 1, volOpts{})
			fillVolume(t, prim, 41) // no zero blocks: 1 MiB data chunks
			rep := newReplicaVol(t, "r.vol", 1, volOpts{})
			svc.Register("vol1", rep)
			slots := engine.NewSlots()
			rc := newRecovery(t, slots, prim, "s2", addr, PeerOptions{Dialer: tamperDialer(c.mutate)})
			out := rc.recover(engine.NeedsRebuild, engine.Rebuild, executor.Config{BatchBytes: 2 << 20})
			if out.Kind == engine.OutcomeInSync {
				t.Fatalf("a tampered base ended in sync: %v", out)
			}
			if !strings.Contains(out.Reason, c.reason) {
				t.Fatalf("outcome %v: the reason does not say %q", out, c.reason)
			}
			if c.digest && (out.Kind != engine.OutcomeNeedsRebuild || !strings.Contains(out.Reason, executor.ErrBaseMismatch.Error())) {
				t.Fatalf("outcome %v: want needs-rebuild for a base mismatch", out)
			}
			t.Logf("%s: %v", c.name, out)
			st := rep.Status()
			if !st.Untrusted || st.Checkpoint != 0 {
				t.Fatalf("replica after a tampered base: %+v", st)
			}
			// Over a clean connection the next rebuild succeeds.
			clean := newRecovery(t, slots, prim, "s2", addr, PeerOptions{})
			wantInSync(t, clean.recover(engine.NeedsRebuild, engine.Rebuild, executor.Config{}), prim.Status().Durable)
			sameDevice(t, prim, rep)
		})
	}
}

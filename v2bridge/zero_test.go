package v2bridge

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"math/rand"
	"net"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/engine"
	"github.com/weedblock/weedblock/executor"
	"github.com/weedblock/weedblock/replication"
)

// rawClient speaks the recovery wire to a Service directly.
type rawClient struct {
	t  *testing.T
	c  net.Conn
	bw *bufio.Writer
	// crc: the CRC32C of the last request's frame payload (its entry in a
	// base's digest)
	crc uint32
}

func dialRawService(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	bw := bufio.NewWriter(c)
	bw.WriteString(Preface)
	return &rawClient{t: t, c: c, bw: bw}
}

// do sends req (volume vol1, epoch 1, attempt 1) and returns the answer.
func (rc *rawClient) do(req request) response {
	rc.t.Helper()
	req.Volume, req.Epoch, req.Attempt = "vol1", 1, 1
	crc, err := writeFrameParts(rc.bw, req.encode(nil), nil)
	if err == nil {
		err = rc.bw.Flush()
	}
	if err != nil {
		rc.t.Fatal(err)
	}
	rc.crc = crc
	p, err := readFrame(rc.c, nil)
	if err != nil {
		rc.t.Fatal(err)
	}
	r, err := decodeResponse(p)
	if err != nil {
		rc.t.Fatal(err)
	}
	return r
}

// junkReplica is a replica volume of size bytes, all written with random
// data (as a primary first) and checkpointed.
func junkReplica(t *testing.T, size int64, seed int64) *blockvol.Volume {
	t.Helper()
	v := createVol(t, "r.vol", volOpts{size: size})
	if err := v.Unfence(1, blockvol.RolePrimary, time.Time{}); err != nil {
		t.Fatal(err)
	}
	junk := make([]byte, 1<<20)
	rng := rand.New(rand.NewSource(seed))
	for off := int64(0); off < size; off += int64(len(junk)) {
		rng.Read(junk)
		if err := v.WriteAt(junk[:min(int64(len(junk)), size-off)], off, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	v.Fence()
	if err := v.Unfence(1, blockvol.RoleReplica, time.Time{}); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestZeroRangeRoundTrip(t *testing.T) {
	in := request{Op: opZero, Volume: "v", Epoch: 3, Attempt: 4, A: 8192, B: 7, C: 1 << 20, D: 65536}
	out, err := decodeRequest(in.encode(nil))
	if err != nil || out.Op != opZero || out.A != 8192 || out.B != 7 || out.C != 1<<20 || out.D != 65536 || len(out.Data) != 0 {
		t.Fatalf("round trip: %+v, %v", out, err)
	}
	if opZero.String() != "base-zero" {
		t.Fatal(opZero.String())
	}
}

func TestZeroRangesMalformedRefused(t *testing.T) {
	svc, addr := startService(t)
	// Old data on the replica that the zero ranges must remove.
	rep := junkReplica(t, 1<<20, 30)
	svc.Register("vol1", rep)
	rc := dialRawService(t, addr)
	size := uint64(rep.Size())
	const lsn = 5
	// Before a rebuild began, a zero range is refused.
	if r := rc.do(request{Op: opZero, A: 0, B: lsn, C: size, D: bs}); r.Code == codeOK {
		t.Fatal("zero range without a rebuild accepted")
	}
	if r := rc.do(request{Op: opBegin}); r.Code != codeOK {
		t.Fatalf("begin: %+v", r)
	}
	for _, c := range []struct {
		what string
		req  request
	}{
		{"not at 0 first (no manifest)", request{Op: opZero, A: bs, B: lsn, C: size, D: bs}},
		{"manifest of another size", request{Op: opZero, A: 0, B: lsn, C: size + bs, D: bs}},
		{"empty", request{Op: opZero, A: 0, B: lsn, C: size, D: 0}},
		{"past the end", request{Op: opZero, A: 0, B: lsn, C: size, D: size + bs}},
		{"huge", request{Op: opZero, A: 0, B: lsn, C: size, D: ^uint64(0) - 10}},
		{"not whole blocks", request{Op: opZero, A: 0, B: lsn, C: size, D: 100}},
	} {
		if r := rc.do(c.req); r.Code == codeOK {
			t.Fatalf("%s: accepted", c.what)
		}
	}
	// A valid transfer: zeros, data, zeros; then ranges out of order.
	data := make([]byte, 4*bs)
	rand.New(rand.NewSource(31)).Read(data)
	// The digest of the requests sent, and one that leaves the zero
	// ranges out.
	sum, noZeros := newBaseDigest(lsn, size), newBaseDigest(lsn, size)
	steps := []request{
		{Op: opZero, A: 0, B: lsn, C: size, D: 8 * bs},
		{Op: opBase, A: 8 * bs, B: lsn, C: size, Data: data},
	}
	for _, s := range steps {
		if r := rc.do(s); r.Code != codeOK {
			t.Fatalf("%s at %d: %+v", s.Op, s.A, r)
		}
		if s.Op == opZero {
			sum.add(opZero, s.A, s.D, rc.crc)
		} else {
			sum.add(opBase, s.A, uint64(len(s.Data)), rc.crc)
			noZeros.add(opBase, s.A, uint64(len(s.Data)), rc.crc)
		}
	}
	for _, bad := range []request{
		{Op: opZero, A: 4 * bs, B: lsn, C: size, D: bs},          // behind
		{Op: opZero, A: 20 * bs, B: lsn, C: size, D: bs},         // ahead
		{Op: opZero, A: 12 * bs, B: lsn + 1, C: size, D: bs},     // another base
		{Op: opZero, A: 12 * bs, B: lsn, C: size, D: size},       // overruns
		{Op: opZero, A: 12*bs + 512, B: lsn, C: size, D: 2 * bs}, // misaligned
	} {
		if r := rc.do(bad); r.Code == codeOK {
			t.Fatalf("zero range %+v accepted", bad)
		}
	}
	rest := size - 12*bs
	if r := rc.do(request{Op: opZero, A: 12 * bs, B: lsn, C: size, D: rest}); r.Code != codeOK {
		t.Fatalf("last zero range: %+v", r)
	}
	sum.add(opZero, 12*bs, rest, rc.crc)
	// A digest that leaves out the zeros does not match.
	if r := rc.do(request{Op: opVerify, A: lsn, C: size, Sum: noZeros.sum()}); r.Code != codeBaseMismatch {
		t.Fatalf("verify with zeros left out of the digest: %+v", r)
	}
	// Nor does the plain SHA-256 of the image (version 1's digest).
	img := make([]byte, size)
	copy(img[8*bs:], data)
	if r := rc.do(request{Op: opVerify, A: lsn, C: size, Sum: sha256.Sum256(img)}); r.Code != codeBaseMismatch {
		t.Fatalf("verify with the image's SHA-256: %+v", r)
	}
	if r := rc.do(request{Op: opVerify, A: lsn, C: size, Sum: sum.sum()}); r.Code != codeOK {
		t.Fatalf("verify: %+v", r)
	}
	got := make([]byte, size)
	if err := rep.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	for i, c := range got {
		in := i >= 8*bs && i < 12*bs
		if in && c != data[i-8*bs] || !in && c != 0 {
			t.Fatalf("replica byte %d is %d after the base", i, c)
		}
	}
}

func TestBaseRequestsSplit(t *testing.T) {
	p := &Peer{vol: primaryVol(t, 1, volOpts{})}
	base := executor.Base{LSN: 9, Size: 64 << 20}
	// 16 data blocks, 32 zero blocks (a zero range), 1 data, 3 zero (kept
	// inside the data), 300 data (cut at applyChunk), 20 zero at the end.
	layout := []struct {
		zero   bool
		blocks int
	}{{false, 16}, {true, 32}, {false, 1}, {true, 3}, {false, 300}, {true, 20}}
	var buf []byte
	rng := rand.New(rand.NewSource(40))
	for _, l := range layout {
		b := make([]byte, l.blocks*bs)
		if !l.zero {
			rng.Read(b)
			for i := 0; i < len(b); i += bs {
				b[i] |= 1 // no data block is all zero
			}
		}
		buf = append(buf, b...)
	}
	reqs := p.baseRequests(buf, 1<<20, base)
	type span struct {
		op   op
		a, n uint64
	}
	var got []span
	next := uint64(1 << 20)
	for _, r := range reqs {
		n := r.D
		if r.Op == opBase {
			n = uint64(len(r.Data))
		}
		if r.A != next || r.B != 9 || r.C != 64<<20 {
			t.Fatalf("request %+v does not follow at %d", r, next)
		}
		next += n
		got = append(got, span{r.Op, r.A - 1<<20, n / bs})
	}
	want := []span{{opBase, 0, 16}, {opZero, 16 * bs, 32}, {opBase, 48 * bs, 256}, {opBase, 304 * bs, 48}, {opZero, 352 * bs, 20}}
	if len(got) != len(want) {
		t.Fatalf("split %v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("split %v, want %v", got, want)
		}
	}
}

func TestSparseRebuildEqualsPrimary(t *testing.T) {
	svc, addr := startService(t)
	svc.writeBehind = 64 << 10 // write-behind windows on the way
	prim := primaryVol(t, 1, volOpts{size: 8 << 20})
	// The replica holds old data everywhere; the primary only a little.
	rep := junkReplica(t, 8<<20, 41)
	svc.Register("vol1", rep)
	rng := rand.New(rand.NewSource(42))
	writeRandom(t, prim, rng, 30, 0, prim.Size()/bs)
	if err := prim.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	rc := newRecovery(t, engine.NewSlots(), prim, "s2", addr, PeerOptions{})
	out := rc.recover(engine.NeedsRebuild, engine.Rebuild, executor.Config{BatchBytes: 3 << 20})
	wantInSync(t, out, prim.Status().Durable)
	sameDevice(t, prim, rep)
}

func TestBaseRefusalSurfacesLater(t *testing.T) {
	svc, addr := startService(t)
	prim := primaryVol(t, 1, volOpts{size: 8 << 20})
	rep := newReplicaVol(t, "r.vol", 1, volOpts{size: 8 << 20})
	svc.Register("vol1", rep)
	writeRandom(t, prim, rand.New(rand.NewSource(43)), 200, 0, prim.Size()/bs)
	slots := engine.NewSlots()
	tok, _ := slots.Acquire(engine.ReplicaID{Volume: "vol1", Server: "s2"}, 1, addr)
	defer slots.Release(tok)
	p := NewPeer(slots, prim, PeerOptions{Name: "vol1", Addr: addr})
	defer p.Close()
	if err := p.MarkUntrusted(tok); err != nil {
		t.Fatal(err)
	}
	base, err := p.PinBase(tok, engine.Full, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	off, err := p.TransferBase(ctx, tok, base, 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	// The replica stops serving the volume: the chunks sent from now on
	// are refused, which TransferBase (not waiting for each answer) or at
	// the latest VerifyBase reports.
	svc.Unregister("vol1")
	var terr error
	for off < base.Size && terr == nil {
		var n int64
		n, terr = p.TransferBase(ctx, tok, base, off, 1<<20)
		off += n
	}
	verr := p.VerifyBase(tok, base)
	if !errors.Is(verr, replication.ErrUnknownVolume) {
		t.Fatalf("verify after refused chunks: %v (transfer: %v)", verr, terr)
	}
	if terr != nil && !errors.Is(terr, replication.ErrUnknownVolume) {
		t.Fatalf("transfer: %v", terr)
	}
	if st := rep.Status(); !st.Untrusted {
		t.Fatalf("replica trusted after a refused base: %+v", st)
	}
	// Releasing the pin forgets the refusal; a new transfer works.
	base.Pin.Release()
	svc.Register("vol1", rep)
	if err := p.MarkUntrusted(tok); err != nil {
		t.Fatal(err)
	}
	if base, err = p.PinBase(tok, engine.Full, 0); err != nil {
		t.Fatal(err)
	}
	defer base.Pin.Release()
	for off := int64(0); off < base.Size; {
		n, err := p.TransferBase(ctx, tok, base, off, 3<<20)
		if err != nil {
			t.Fatal(err)
		}
		off += n
	}
	if err := p.VerifyBase(tok, base); err != nil {
		t.Fatal(err)
	}
}

func TestReplayDurableOnlyAtCommit(t *testing.T) {
	svc, addr := startService(t)
	prim := primaryVol(t, 1, volOpts{manual: true})
	// A replica whose flusher never runs by itself: nothing makes its
	// records durable but an fsync asked for.
	rep := newReplicaVol(t, "r.vol", 1, volOpts{manual: true})
	svc.Register("vol1", rep)
	rng := rand.New(rand.NewSource(44))
	writeRandom(t, prim, rng, 50, 0, testSize/bs)
	slots := engine.NewSlots()
	tok, _ := slots.Acquire(engine.ReplicaID{Volume: "vol1", Server: "s2"}, 1, addr)
	defer slots.Release(tok)
	p := NewPeer(slots, prim, PeerOptions{Name: "vol1", Addr: addr})
	defer p.Close()
	ctx := context.Background()
	if err := p.MarkUntrusted(tok); err != nil {
		t.Fatal(err)
	}
	hold, err := prim.Hold(prim.Status().Durable+1, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Release()
	base, err := p.PinBase(tok, engine.Full, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer base.Pin.Release()
	for off := int64(0); off < base.Size; {
		n, err := p.TransferBase(ctx, tok, base, off, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		off += n
	}
	if err := p.VerifyBase(tok, base); err != nil {
		t.Fatal(err)
	}
	// Writes after the base: the replay ships them without an fsync.
	writeRandom(t, prim, rng, 40, 0, testSize/bs)
	target := prim.Status().Durable
	pr, err := p.StreamWAL(ctx, tok, base.LSN, target)
	if err != nil {
		t.Fatal(err)
	}
	st := rep.Status()
	if pr.Achieved != target || st.Head != target || !st.Untrusted {
		t.Fatalf("replay reached %d, replica %+v, want head %d untrusted", pr.Achieved, st, target)
	}
	if st.Durable >= target {
		t.Fatalf("the replay fsynced the untrusted replica (durable %d)", st.Durable)
	}
	if err := p.Commit(tok, pr.Achieved); err != nil {
		t.Fatal(err)
	}
	if st := rep.Status(); st.Untrusted || st.Durable < target {
		t.Fatalf("after commit: %+v", st)
	}
	sameDevice(t, prim, rep)
	// A catch-up after the commit fsyncs again before it reports.
	writeRandom(t, prim, rng, 10, 0, testSize/bs)
	target2 := prim.Status().Durable
	pr, err = p.StreamWAL(ctx, tok, target, target2)
	if err != nil {
		t.Fatal(err)
	}
	if st := rep.Status(); pr.Achieved != target2 || st.Durable < target2 {
		t.Fatalf("catch-up reached %d, replica durable %d", pr.Achieved, st.Durable)
	}
}

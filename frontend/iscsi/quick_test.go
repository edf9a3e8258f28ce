package iscsi

import (
	"bytes"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weedblock/weedblock/frontend/scsi"
)

// quickLU is a memLU whose READ(10) and blocking vendor opcode 0xC0 are
// quick (QuickChecker). It records how many commands ran at once, and a
// READ(10) of LBA slowLBA takes slowFor.
type quickLU struct {
	*memLU
	running, maxRunning atomic.Int32
	slowLBA             uint32
	slowFor             time.Duration
}

func (q *quickLU) Quick(c *scsi.Command) bool { return c.CDB[0] == 0x28 || c.CDB[0] == 0xc0 }

func (q *quickLU) Execute(c *scsi.Command) *scsi.Response {
	n := q.running.Add(1)
	defer q.running.Add(-1)
	for {
		m := q.maxRunning.Load()
		if n <= m || q.maxRunning.CompareAndSwap(m, n) {
			break
		}
	}
	if c.CDB[0] == 0x28 && binary.BigEndian.Uint32(c.CDB[2:6]) == q.slowLBA {
		time.Sleep(q.slowFor)
	}
	return q.memLU.Execute(c)
}

func startQuickServer(t *testing.T) (*testServer, *quickLU) {
	q := &quickLU{slowLBA: 1000, slowFor: 5 * time.Millisecond}
	ts := startServer(t, Config{}, func(tg *Target) {
		q.memLU = tg.LU.(*memLU)
		tg.LU = q
	})
	return ts, q
}

// Quick reads sent together are run by the reader one after the other
// (never two at once) and answered in order, each with its own data.
func TestQuickReadsRunOnReader(t *testing.T) {
	ts, q := startQuickServer(t)
	for i := range ts.lu.data {
		ts.lu.data[i] = byte(i / 512)
	}
	in := dialInit(t, ts.addr)
	in.login(ts.name, defaultOpKeys())
	const n = 16
	itts := make([]uint32, n)
	for k := range n {
		h := in.scsiCmdHeader(read10(uint32(k), 1), true, false, 512, true)
		itts[k] = h.itt()
		if err := in.wr.write(&h, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := in.wr.flush(); err != nil {
		t.Fatal(err)
	}
	for k := range n {
		res := in.collect(itts[k], nil)
		must(t, res.status == 0 && len(res.dataIn) == 512 && bytes.Equal(res.dataIn, bytes.Repeat([]byte{byte(k)}, 512)),
			"read %d: status %#x, %d bytes", k, res.status, len(res.dataIn))
	}
	must(t, q.maxRunning.Load() == 1, "%d quick reads ran at once", q.maxRunning.Load())
	for k := 0; k < 100 && ts.lu.released.Load() < n; k++ {
		time.Sleep(10 * time.Millisecond)
	}
	must(t, ts.lu.released.Load() == n, "ReleaseDataIn called %d times, want %d", ts.lu.released.Load(), n)
}

// A quick command that was slow makes the reader hand the next quick ones
// to goroutines: a quick command that blocks (0xC0) then does not stop
// the reader, so a read sent after it is answered first.
func TestSlowQuickCommandHandsOff(t *testing.T) {
	ts, _ := startQuickServer(t)
	// Released on failure too, so the server can close.
	var once sync.Once
	release := func() { once.Do(func() { close(ts.lu.block) }) }
	t.Cleanup(release)
	in := dialInit(t, ts.addr)
	in.login(ts.name, defaultOpKeys())
	res := in.do(read10(1000, 1), true, nil, 512, 0)
	must(t, res.status == 0, "slow read: status %#x", res.status)

	blocked := in.scsiCmdHeader([]byte{0xc0, 0, 0, 0, 0, 0}, false, false, 0, true)
	in.send(&blocked, nil)
	select {
	case <-ts.lu.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("blocking command never started")
	}
	h := in.scsiCmdHeader(read10(2, 1), true, false, 512, true)
	in.send(&h, nil)
	r, _, err := in.tryRecv(5 * time.Second)
	if err != nil {
		t.Fatalf("read behind a blocked quick command not answered: %v", err)
	}
	must(t, r.itt() == h.itt(), "first answer for ITT %#x, want the read's %#x", r.itt(), h.itt())
	release()
	r, _ = in.recv()
	must(t, r.itt() == blocked.itt() && r.opcode() == opSCSIResp && r[3] == 0,
		"blocked command: opcode %#x ITT %#x status %#x", r.opcode(), r.itt(), r[3])
}

// nextBuffered is true only once a whole PDU (with padding and digests)
// can be read without waiting.
func TestNextBuffered(t *testing.T) {
	var h bhs
	h[0] = opSCSICmd
	h.setDataLen(5)
	pdu := append(append(h[:], 1, 2, 3, 4, 5, 0, 0, 0), 9, 9, 9, 9) // data, pad, data digest
	for _, c := range []struct {
		name         string
		have         int
		dataDigest   bool
		wantBuffered bool
	}{
		{"header only", bhsLen, false, false},
		{"without padding", bhsLen + 5, false, false},
		{"whole", bhsLen + 8, false, true},
		{"without digest", bhsLen + 8, true, false},
		{"whole with digest", bhsLen + 12, true, true},
		{"partial header", 20, false, false},
	} {
		pr := newPDUReader(bytes.NewReader(pdu[:c.have]), 4096)
		pr.dataDigest = c.dataDigest
		pr.r.Peek(c.have) // fill the buffer as a socket read would
		if got := pr.nextBuffered(); got != c.wantBuffered {
			t.Errorf("%s: nextBuffered = %v, want %v", c.name, got, c.wantBuffered)
		}
	}
}

package replication

import (
	"bufio"
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol"
)

// rawReplicaConn says hello to n for volName at epoch 1 over a plain
// socket and returns it with a frame reader.
func rawReplicaConn(t *testing.T, n *node) (net.Conn, *frameReader) {
	t.Helper()
	c, err := net.Dial("tcp", n.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := writeFrame(c, typeHello, encodeHello(helloMsg{Epoch: 1, Volume: volName})); err != nil {
		t.Fatal(err)
	}
	fr := newFrameReader(bufio.NewReader(c))
	if typ, _, err := fr.next(); err != nil || typ != typeHelloOK {
		t.Fatalf("hello: %v %v", typ, err)
	}
	return c, fr
}

// recordFrames appends record frames for lsns [from, to] (one 4 KiB block
// each, at LBA lsn) to buf.
func recordFrames(t *testing.T, buf *bytes.Buffer, from, to uint64) {
	t.Helper()
	var hdr [recordFixed]byte
	for lsn := from; lsn <= to; lsn++ {
		rec := blockvol.Record{LSN: lsn, Epoch: 1, Kind: blockvol.KindWrite, LBA: lsn, Blocks: 1, Data: bytes.Repeat([]byte{byte(lsn)}, 4096)}
		if err := writeFrame(buf, typeRecord, encodeRecordHeader(hdr[:], 1, &rec), rec.Data); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBarrierAnswersRecordsBeforeIt: records that arrive together with a
// barrier are applied and made durable by it, and answered by its
// barrier-ack alone (no ack frame of their own); records with no barrier
// behind them are acknowledged.
func TestBarrierAnswersRecordsBeforeIt(t *testing.T) {
	n := newReplicaNode(t, t.TempDir(), "r1", 1<<20, 1<<20, 1)
	defer n.close(t)
	c, fr := rawReplicaConn(t, n)

	var buf bytes.Buffer
	recordFrames(t, &buf, 1, 3)
	if err := writeFrame(&buf, typeBarrier, encodeBarrier(barrierMsg{Epoch: 1, LSN: 3})); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(buf.Bytes()); err != nil { // one segment on loopback
		t.Fatal(err)
	}
	typ, p, err := fr.next()
	if err != nil || typ != typeBarrierAck {
		t.Fatalf("answer to records+barrier: %v %v (want only a barrier-ack)", typ, err)
	}
	if m, err := decodeBarrierAck(p); err != nil || m.LSN != 3 || m.Durable < 3 {
		t.Fatalf("barrier-ack %+v %v, want lsn 3 durable ≥ 3", m, err)
	}
	if st := n.vol.Status(); st.Durable < 3 {
		t.Fatalf("replica durable %d after the barrier-ack", st.Durable)
	}

	buf.Reset()
	recordFrames(t, &buf, 4, 5)
	if _, err := c.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	typ, p, err = fr.next()
	if err != nil || typ != typeAck {
		t.Fatalf("answer to records alone: %v %v (want an ack)", typ, err)
	}
	if a, err := decodeAck(p); err != nil || a != 5 {
		t.Fatalf("ack %d %v, want 5", a, err)
	}
	if err := writeFrame(c, typeBarrier, encodeBarrier(barrierMsg{Epoch: 1, LSN: 5})); err != nil {
		t.Fatal(err)
	}
	typ, p, err = fr.next()
	if err != nil || typ != typeBarrierAck {
		t.Fatalf("answer to a barrier: %v %v", typ, err)
	}
	if m, err := decodeBarrierAck(p); err != nil || m.LSN != 5 || m.Durable < 5 {
		t.Fatalf("barrier-ack %+v %v, want lsn 5 durable ≥ 5", m, err)
	}
	got := make([]byte, 4096)
	for lsn := uint64(1); lsn <= 5; lsn++ {
		if err := n.vol.ReadAt(got, int64(lsn)*4096); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, bytes.Repeat([]byte{byte(lsn)}, 4096)) {
			t.Fatalf("replica block %d does not hold record %d", lsn, lsn)
		}
	}
}

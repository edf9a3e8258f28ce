package iscsi

import (
	"fmt"
	"net"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/weedblock/weedblock/frontend/scsi"
)

// nullLU answers reads with zeros and accepts writes: it isolates the
// transport's cost.
type nullLU struct{ zeros []byte }

func (n *nullLU) Execute(c *scsi.Command) *scsi.Response {
	if c.Read {
		return &scsi.Response{DataIn: n.zeros[:min(int(c.ExpectedInLength), len(n.zeros))]}
	}
	return &scsi.Response{}
}

func benchServer(b *testing.B, lu LogicalUnit) (addr, name string) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	s := NewServer(Config{})
	name = IQN("bench")
	if err := s.AddTarget(Target{Name: name, LU: lu}); err != nil {
		b.Fatal(err)
	}
	go s.Serve(l)
	b.Cleanup(func() { s.Close() })
	return l.Addr().String(), name
}

// BenchmarkTransport drives the target with the test initiator at a fixed
// queue depth; figures are MB/s and IOPS over loopback TCP.
func BenchmarkTransport(b *testing.B) {
	for _, lu := range []string{"null", "scsi-mem"} {
		for _, op := range []string{"read", "write"} {
			for _, size := range []int{4096, 65536} {
				for _, qd := range []int{1, 16} {
					b.Run(fmt.Sprintf("%s/%s/%dk/qd%d", lu, op, size/1024, qd), func(b *testing.B) {
						benchIO(b, lu, op == "write", size, qd)
					})
				}
			}
		}
	}
}

func benchIO(b *testing.B, luKind string, write bool, size, qd int) {
	var lu LogicalUnit
	switch luKind {
	case "null":
		lu = &nullLU{zeros: make([]byte, 1<<20)}
	default:
		dev := mustMem(b, 256<<20)
		lu = scsi.NewLogicalUnit(dev, scsi.Options{VolumeName: "bench"})
	}
	addr, name := benchServer(b, lu)
	in := dialInit(b, addr)
	o := defaultOpKeys()
	o.fbl = "262144"
	in.login(name, o)
	in.nc.SetDeadline(time.Time{})
	blocks := uint16(size / 512)
	data := pattern(size, 1)
	lbas := uint32(256 << 20 / size)
	inflight := 0
	received := 0
	b.SetBytes(int64(size))
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N || inflight > 0; {
		if i < b.N && inflight < qd {
			lba := uint32(i) % lbas * uint32(blocks)
			var h bhs
			if write {
				h = in.scsiCmdHeader(write10(lba, blocks), false, true, uint32(size), true)
				in.wr.write(&h, data)
			} else {
				h = in.scsiCmdHeader(read10(lba, blocks), true, false, uint32(size), true)
				in.wr.write(&h, nil)
			}
			i++
			inflight++
			if inflight < qd && i < b.N {
				continue // batch the sends
			}
			if err := in.wr.flush(); err != nil {
				b.Fatal(err)
			}
		}
		r, _, err := in.tryRecv(10 * time.Second)
		if err != nil {
			b.Fatal(err)
		}
		switch {
		case r.opcode() == opSCSIResp, r.opcode() == opDataIn && r.flags()&flagStatus != 0:
			if r[3] != 0 {
				b.Fatalf("status %#x", r[3])
			}
			inflight--
			received++
		case r.opcode() == opDataIn:
		default:
			b.Fatalf("opcode %#x", r.opcode())
		}
	}
	el := time.Since(start)
	b.ReportMetric(float64(received)/el.Seconds(), "IOPS")
}

// BenchmarkIscsiPerf runs libiscsi's iscsi-perf (sequential reads of -b
// blocks at queue depth -m) against the target over the real SCSI
// logical unit for a few seconds and reports its last IOPS/MB/s figures.
// b.N is ignored: one run per benchmark.
func BenchmarkIscsiPerf(b *testing.B) {
	for _, c := range []struct {
		name   string
		blocks string
		qd     string
	}{{"4k-qd32", "8", "32"}, {"64k-qd16", "128", "16"}} {
		b.Run(c.name, func(b *testing.B) {
			rs := startRealServer(b, Config{}, 256<<20, nil)
			out, _ := runTool(b, 8*time.Second, "iscsi-perf", "-m", c.qd, "-b", c.blocks, "-t", "5", rs.url())
			iops, mbs, ok := parseIscsiPerf(out)
			if !ok {
				b.Fatalf("no figures in iscsi-perf output:\n%s", tail(out, 2000))
			}
			b.ReportMetric(iops, "IOPS")
			b.ReportMetric(mbs, "MB/s")
		})
	}
}

var perfAverageRe = regexp.MustCompile(`iops average (\d+) \((\d+) MB/s\)`)

// parseIscsiPerf returns the last "iops average N (M MB/s)" of iscsi-perf.
func parseIscsiPerf(out string) (iops, mbs float64, ok bool) {
	m := perfAverageRe.FindAllStringSubmatch(out, -1)
	if len(m) == 0 {
		return 0, 0, false
	}
	last := m[len(m)-1]
	iops, _ = strconv.ParseFloat(last[1], 64)
	mbs, _ = strconv.ParseFloat(last[2], 64)
	return iops, mbs, true
}

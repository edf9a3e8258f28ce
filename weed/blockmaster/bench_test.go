package blockmaster

import (
	"fmt"
	"testing"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// BenchmarkApplyHeartbeat measures the master's work per block heartbeat
// (under its mutex) with many volumes registered across many servers: every
// server heartbeats every pulse, so this bounds how many servers and volumes
// one master can follow.
func BenchmarkApplyHeartbeat(b *testing.B) {
	for _, nvol := range []int{100, 10000} {
		b.Run(fmt.Sprintf("volumes=%d", nvol), func(b *testing.B) {
			const nserv = 100
			m, err := New(Options{Dir: b.TempDir(), DialVolume: (&harness{}).dial})
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			for i := 0; i < nserv; i++ {
				id := fmt.Sprintf("s%03d", i)
				m.servers[id] = &serverState{endpoints: &blockpb.ServerEndpoints{ServerId: id}, reports: map[string]*blockpb.VolumeReport{}, stream: uint64(i + 1)}
			}
			// Registry built in memory (one save at the end, not per add).
			for i := 0; i < nvol; i++ {
				rec := testRecord(fmt.Sprintf("vol%05d", i), 1)
				id := fmt.Sprintf("s%03d", i%nserv)
				rec.config.PrimaryServerId = id
				rec.config.Members[0].Server.ServerId = id
				rec.addHomes(rec.config)
				m.reg.volumes[rec.spec.Name] = rec
				m.reg.indexAdd(rec)
			}
			hb := &blockpb.BlockHeartbeat{Server: &blockpb.ServerEndpoints{ServerId: "s007"}, Seq: 1}
			for i := 7; i < nvol; i += nserv {
				hb.Volumes = append(hb.Volumes, primaryReport(fmt.Sprintf("vol%05d", i), 1, false))
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				resp, _ := m.applyHeartbeat("s007", 8, hb)
				if len(resp.Assignments) != 0 || len(resp.Deletes) != 0 {
					b.Fatalf("unexpected work: %d assignments %d deletes", len(resp.Assignments), len(resp.Deletes))
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/heartbeat")
		})
	}
}

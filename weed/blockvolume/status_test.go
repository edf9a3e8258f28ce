package blockvolume

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

func TestStatusHTTP(t *testing.T) {
	f := startFakeMaster(t)
	f.setRespond(confirm(5000))
	m := startManager(t, "", withMasters(f.addr))
	allocate(t, m, "s1", 1<<20, epochConfig(1, testServerID))
	allocate(t, m, "s2", 2<<20, epochConfig(3, testServerID))
	c := dialNBD(t, m.Endpoints().GetNbdAddress(), "s1")
	eventually(t, 5*time.Second, "writable", func() bool { return c.write(0, make([]byte, 4096)) == 0 })

	mux := http.NewServeMux()
	mux.Handle("/block/", m.HTTPHandler())
	hs := httptest.NewServer(mux)
	defer hs.Close()
	get := func(path string) (int, []byte) {
		resp, err := http.Get(hs.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}

	code, body := get("/block/status")
	if code != 200 {
		t.Fatalf("GET /block/status: %d %s", code, body)
	}
	var doc struct {
		ServerID  string `json:"server_id"`
		Endpoints struct {
			ServerID string `json:"server_id"`
			NBD      string `json:"nbd_address"`
			ISCSI    string `json:"iscsi_address"`
		} `json:"endpoints"`
		Heartbeat struct {
			Master    string `json:"master"`
			Connected bool   `json:"connected"`
			LeaseMs   int64  `json:"lease_ms"`
		} `json:"heartbeat"`
		Volumes []struct {
			Name     string `json:"name"`
			Epoch    string `json:"epoch"` // protojson writes uint64 as a string
			Role     string `json:"role"`
			Fenced   bool   `json:"fenced"`
			Sessions int    `json:"attached_sessions"`
			Size     string `json:"size_bytes"`
		} `json:"volumes"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, body)
	}
	if doc.ServerID != testServerID || doc.Endpoints.ServerID != testServerID || doc.Endpoints.NBD != m.Endpoints().GetNbdAddress() || doc.Endpoints.ISCSI == "" {
		t.Fatalf("status server part: %s", body)
	}
	if doc.Heartbeat.Master != f.addr || !doc.Heartbeat.Connected || doc.Heartbeat.LeaseMs != 5000 {
		t.Fatalf("status heartbeat part: %s", body)
	}
	if len(doc.Volumes) != 2 || doc.Volumes[0].Name != "s1" || doc.Volumes[1].Name != "s2" {
		t.Fatalf("status volumes: %s", body)
	}
	v1, v2 := doc.Volumes[0], doc.Volumes[1]
	if v1.Epoch != "1" || v1.Role != "ROLE_PRIMARY" || v1.Fenced || v1.Sessions != 1 || v1.Size != "1048576" {
		t.Fatalf("s1 status: %+v", v1)
	}
	if v2.Epoch != "3" || v2.Sessions != 0 || v2.Size != "2097152" {
		t.Fatalf("s2 status: %+v", v2)
	}

	code, body = get("/block/status?name=s2")
	if code != 200 || !strings.Contains(string(body), `"name": "s2"`) || strings.Contains(string(body), `"name": "s1"`) {
		t.Fatalf("GET ?name=s2: %d %s", code, body)
	}
	if code, body = get("/block/status?name=nope"); code != 404 {
		t.Fatalf("GET ?name=nope: %d %s", code, body)
	}
	if code, _ = get("/block/other"); code != 404 {
		t.Fatalf("GET /block/other: %d", code)
	}
	resp, err := http.Post(hs.URL+"/block/status", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", resp.StatusCode)
	}
}

func TestMetrics(t *testing.T) {
	f := startFakeMaster(t)
	f.setRespond(confirm(5000))
	m := startManager(t, "", withMasters(f.addr))
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m.Collectors()...)
	allocate(t, m, "mv", 1<<20, epochConfig(2, testServerID))
	c := dialNBD(t, m.Endpoints().GetNbdAddress(), "mv")
	eventually(t, 5*time.Second, "writable", func() bool { return c.write(0, make([]byte, 4096)) == 0 })
	for range 3 {
		if e := c.write(8192, bytes.Repeat([]byte{1}, 8192)); e != 0 {
			t.Fatalf("write errno %d", e)
		}
	}
	if e, _ := c.read(0, 4096); e != 0 {
		t.Fatalf("read errno %d", e)
	}
	c.flush()

	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP weedblock_volume_epoch Persisted epoch of the volume.
# TYPE weedblock_volume_epoch gauge
weedblock_volume_epoch{volume="mv"} 2
# HELP weedblock_volume_attached_sessions Open NBD connections plus iSCSI sessions.
# TYPE weedblock_volume_attached_sessions gauge
weedblock_volume_attached_sessions{volume="mv"} 1
# HELP weedblock_volume_fenced 1 when the volume refuses frontend writes (fenced, not primary, lease expired or unhealthy).
# TYPE weedblock_volume_fenced gauge
weedblock_volume_fenced{volume="mv"} 0
# HELP weedblock_volume_server_volumes Block volumes open on this server.
# TYPE weedblock_volume_server_volumes gauge
weedblock_volume_server_volumes 1
# HELP weedblock_volume_server_master_connected 1 while a heartbeat stream to the master leader is up.
# TYPE weedblock_volume_server_master_connected gauge
weedblock_volume_server_master_connected 1
`), "weedblock_volume_epoch", "weedblock_volume_attached_sessions", "weedblock_volume_fenced",
		"weedblock_volume_server_volumes", "weedblock_volume_server_master_connected"); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	find := func(name, op string) *dto.Metric {
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, mm := range mf.GetMetric() {
				for _, l := range mm.GetLabel() {
					if l.GetName() == "op" && l.GetValue() == op {
						return mm
					}
				}
				if op == "" {
					return mm
				}
			}
		}
		t.Fatalf("metric %s{op=%q} missing", name, op)
		return nil
	}
	// The first writes before the lease was granted failed (counted as errors).
	if w := find("weedblock_volume_ops_total", "write").GetCounter().GetValue(); w < 4 {
		t.Fatalf("write ops %v, want ≥ 4", w)
	}
	if b := find("weedblock_volume_bytes_total", "write").GetCounter().GetValue(); b != 4096+3*8192 {
		t.Fatalf("written bytes %v", b)
	}
	if b := find("weedblock_volume_bytes_total", "read").GetCounter().GetValue(); b != 4096 {
		t.Fatalf("read bytes %v", b)
	}
	if h := find("weedblock_volume_op_duration_seconds", "flush").GetHistogram().GetSampleCount(); h != 1 {
		t.Fatalf("flush latency samples %v", h)
	}
	if v := find("weedblock_volume_lease_remaining_seconds", "").GetGauge().GetValue(); v <= 0 || v > 5 {
		t.Fatalf("lease remaining %v", v)
	}
	if v := find("weedblock_volume_wal_size_bytes", "").GetGauge().GetValue(); v != 256<<10 {
		t.Fatalf("WAL size %v", v)
	}
	if v := find("weedblock_volume_server_heartbeats_total", "").GetCounter().GetValue(); v < 1 {
		t.Fatalf("heartbeats %v", v)
	}

	// A deleted volume's series go away.
	c.nc.Close()
	eventually(t, 5*time.Second, "detached", func() bool { return m.sessions("mv") == 0 })
	if _, err := m.GRPCService().DeleteVolume(t.Context(), &blockpb.DeleteLocalVolumeRequest{Name: "mv"}); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(m.metrics.ops); n != 0 {
		t.Fatalf("%d op series left after delete", n)
	}
}

package blockmaster

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

func httpGet(t *testing.T, method, url string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if method == http.MethodGet && resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("%s: content type %q", url, resp.Header.Get("Content-Type"))
	}
	return resp.StatusCode, b
}

func TestHTTPHandler(t *testing.T) {
	h := newHarness(t, nil)
	_, hb := h.server("a", "r1", 100*gib)
	for _, n := range []string{"db2", "db1"} {
		if _, err := h.create(spec(n, 1<<20, 1)); err != nil {
			t.Fatal(err)
		}
	}
	hb.beat(primaryReport("db1", 1, false), primaryReport("db2", 1, true))
	mux := http.NewServeMux()
	mux.Handle("/block/", h.m.HTTPHandler())
	srv := httptest.NewServer(mux)
	defer srv.Close()

	code, body := httpGet(t, http.MethodGet, srv.URL+"/block/volumes")
	if code != http.StatusOK {
		t.Fatalf("list: %d %s", code, body)
	}
	var list blockpb.ListVolumesResponse
	if err := protojson.Unmarshal(body, &list); err != nil {
		t.Fatalf("list body %s: %v", body, err)
	}
	if len(list.Volumes) != 2 || list.Volumes[0].Spec.Name != "db1" || list.Volumes[1].Spec.Name != "db2" {
		t.Fatalf("list %v", list.Volumes)
	}
	if list.Volumes[0].State != StateOK || list.Volumes[1].State != StateAssigning {
		t.Fatalf("states %s %s", list.Volumes[0].State, list.Volumes[1].State)
	}

	code, body = httpGet(t, http.MethodGet, srv.URL+"/block/volume/db1")
	var info blockpb.VolumeInfo
	if code != http.StatusOK || protojson.Unmarshal(body, &info) != nil || info.Spec.Name != "db1" || info.NbdUri != "nbd://127.0.0.1:10809/db1" {
		t.Fatalf("volume: %d %s", code, body)
	}

	code, body = httpGet(t, http.MethodGet, srv.URL+"/block/servers")
	var servers struct{ Servers []ServerStatus }
	if code != http.StatusOK || json.Unmarshal(body, &servers) != nil || len(servers.Servers) != 1 {
		t.Fatalf("servers: %d %s", code, body)
	}
	if s := servers.Servers[0]; s.ID != "a" || !s.Alive || s.FreeBytes != 100*gib || strings.Join(s.Volumes, ",") != "db1,db2" || s.Endpoints.GetRack() != "r1" {
		t.Fatalf("server status %+v", s)
	}

	errCase := func(method, path string, want int, fragment string) {
		t.Helper()
		code, body := httpGet(t, method, srv.URL+path)
		var e struct{ Error, Leader string }
		if code != want {
			t.Fatalf("%s %s: %d %s, want %d", method, path, code, body, want)
		}
		if method == http.MethodHead {
			return
		}
		if err := json.Unmarshal(body, &e); err != nil || !strings.Contains(e.Error, fragment) {
			t.Fatalf("%s %s: body %s, want error with %q", method, path, body, fragment)
		}
	}
	errCase(http.MethodGet, "/block/volume/nosuch", http.StatusNotFound, `volume "nosuch" not found`)
	errCase(http.MethodGet, "/block/volume/BAD", http.StatusBadRequest, "bad volume name")
	errCase(http.MethodGet, "/block/volume/", http.StatusBadRequest, "bad volume name")
	errCase(http.MethodGet, "/block/nothing", http.StatusNotFound, "no such path")
	errCase(http.MethodPost, "/block/volumes", http.StatusMethodNotAllowed, "not allowed")
	errCase(http.MethodDelete, "/block/volume/db1", http.StatusMethodNotAllowed, "not allowed")

	h.leader.Store(false)
	code, body = httpGet(t, http.MethodGet, srv.URL+"/block/volumes")
	var e struct{ Error, Leader string }
	if code != http.StatusServiceUnavailable || json.Unmarshal(body, &e) != nil || e.Leader != "m2:9333" || !strings.Contains(e.Error, "not leader") {
		t.Fatalf("follower: %d %s", code, body)
	}
}

func gather(t *testing.T, m *Master) map[string][]*dto.Metric {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(m.Collectors()[0]); err != nil {
		t.Fatal(err)
	}
	for _, c := range m.Collectors()[1:] {
		reg.MustRegister(c)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]*dto.Metric{}
	for _, f := range fams {
		out[f.GetName()] = f.Metric
	}
	return out
}

func metricValue(ms []*dto.Metric, label, value string) (float64, bool) {
	for _, m := range ms {
		match := label == ""
		for _, l := range m.Label {
			if l.GetName() == label && l.GetValue() == value {
				match = true
			}
		}
		if !match {
			continue
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		}
	}
	return 0, false
}

func TestCollectors(t *testing.T) {
	h := newHarness(t, nil)
	_, hb := h.server("a", "r1", 100*gib)
	if _, err := h.create(spec("v", 1<<20, 1)); err != nil {
		t.Fatal(err)
	}
	hb.beat(primaryReport("v", 1, false))
	g := gather(t, h.m)
	want := []struct {
		metric, label, value string
		v                    float64
	}{
		{"weedblock_master_is_leader", "", "", 1},
		{"weedblock_master_volumes", "state", StateOK, 1},
		{"weedblock_master_volumes", "state", StateUnavailable, 0},
		{"weedblock_master_volume_epoch", "volume", "v", 1},
		{"weedblock_master_servers", "alive", "true", 1},
		{"weedblock_master_servers", "alive", "false", 0},
		{"weedblock_master_heartbeats_total", "", "", 2},
	}
	for _, w := range want {
		got, ok := metricValue(g[w.metric], w.label, w.value)
		if !ok || got != w.v {
			t.Fatalf("%s{%s=%q} = %v (found %v), want %v", w.metric, w.label, w.value, got, ok, w.v)
		}
	}
	lease, ok := metricValue(g["weedblock_master_volume_lease_remaining_seconds"], "volume", "v")
	if !ok || lease < 3 || lease > 3.5 {
		t.Fatalf("lease remaining %v (%v), want 3..3.5 s", lease, ok)
	}
	if err := h.del("v", true); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(silentPulses*h.opts.Pulse + 1)
	g = gather(t, h.m)
	if _, ok := metricValue(g["weedblock_master_volume_epoch"], "volume", "v"); ok {
		t.Fatal("deleted volume still has an epoch series")
	}
	if got, _ := metricValue(g["weedblock_master_servers"], "alive", "false"); got != 1 {
		t.Fatalf("dead servers %v, want 1", got)
	}
}

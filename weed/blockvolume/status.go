package blockvolume

import (
	"encoding/json"
	"net/http"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
)

// StatusPath is where HTTPHandler answers; mount the handler under
// "/block/" (or at StatusPath) on the volume server's HTTP port.
const StatusPath = "/block/status"

// StatusReport is the JSON document GET /block/status returns.
type StatusReport struct {
	ServerID  string          `json:"server_id"`
	Dir       string          `json:"dir"`
	Endpoints json.RawMessage `json:"endpoints"` // blockpb.ServerEndpoints in protojson (proto field names)
	Heartbeat HeartbeatStatus `json:"heartbeat"`
	// Volumes holds one blockpb.VolumeReport per volume in protojson
	// (proto field names, every field present), sorted by name.
	Volumes []json.RawMessage `json:"volumes"`
}

var jsonOpts = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}

// HTTPHandler serves GET /block/status (every volume) and
// /block/status?name=NAME (one volume; 404 when unknown) as JSON.
func (m *Manager) HTTPHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.TrimSuffix(r.URL.Path, "/") != StatusPath {
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		doc, err := m.statusReport(r.URL.Query().Get("name"))
		if err != nil {
			code := http.StatusInternalServerError
			if status.Code(err) == codes.NotFound {
				code = http.StatusNotFound
			}
			http.Error(w, status.Convert(err).Message(), code)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(doc)
	})
}

func (m *Manager) statusReport(name string) (*StatusReport, error) {
	reps, err := m.reports(name)
	if err != nil {
		return nil, err
	}
	ep, err := jsonOpts.Marshal(m.endpoints)
	if err != nil {
		return nil, err
	}
	doc := &StatusReport{
		ServerID:  m.serverID,
		Dir:       m.opts.Dir,
		Endpoints: ep,
		Heartbeat: m.hb.snapshot(),
		Volumes:   []json.RawMessage{},
	}
	for _, r := range reps {
		b, err := jsonOpts.Marshal(r)
		if err != nil {
			return nil, err
		}
		doc.Volumes = append(doc.Volumes, b)
	}
	return doc, nil
}

package blockmaster

import (
	"encoding/json"
	"net/http"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// HTTPHandler serves the registry as JSON, read-only:
//
//	GET /block/volumes       -> {"volumes": [VolumeInfo...]} (ListVolumesResponse)
//	GET /block/volume/NAME   -> VolumeInfo
//	GET /block/servers       -> {"servers": [ServerStatus...]}
//
// Mount it under "/block/" (the paths include that prefix). Errors are
// {"error": "...", "leader": "..."} with 400 (bad name), 404 (unknown
// volume or path), 405 (not GET/HEAD), 503 (not the leader, shutting down).
// Messages use protobuf's canonical JSON (lowerCamelCase field names,
// 64-bit integers as strings).
func (m *Master) HTTPHandler() http.Handler {
	return http.HandlerFunc(m.serveHTTP)
}

func (m *Master) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeHTTPError(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed", "")
		return
	}
	if err := m.checkServing(); err != nil {
		leader := ""
		if status.Code(err) == codes.FailedPrecondition {
			leader = m.leaderName()
		}
		writeHTTPError(w, http.StatusServiceUnavailable, status.Convert(err).Message(), leader)
		return
	}
	path := r.URL.Path
	switch {
	case path == "/block/volumes" || path == "/block/volumes/":
		writeHTTPProto(w, &blockpb.ListVolumesResponse{Volumes: m.list()})
	case path == "/block/servers" || path == "/block/servers/":
		b, err := json.MarshalIndent(struct {
			Servers []ServerStatus `json:"servers"`
		}{m.Servers()}, "", "  ")
		if err != nil {
			writeHTTPError(w, http.StatusInternalServerError, "encode: "+err.Error(), "")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(append(b, '\n'))
	case strings.HasPrefix(path, "/block/volume/"):
		info, err := m.lookup(strings.TrimPrefix(path, "/block/volume/"))
		if err != nil {
			code := http.StatusInternalServerError
			switch status.Code(err) {
			case codes.InvalidArgument:
				code = http.StatusBadRequest
			case codes.NotFound:
				code = http.StatusNotFound
			}
			writeHTTPError(w, code, status.Convert(err).Message(), "")
			return
		}
		writeHTTPProto(w, info)
	default:
		writeHTTPError(w, http.StatusNotFound, "no such path "+path+"; try /block/volumes, /block/volume/NAME or /block/servers", "")
	}
}

func writeHTTPProto(w http.ResponseWriter, msg proto.Message) {
	b, err := protojson.MarshalOptions{EmitUnpopulated: true, Indent: "  "}.Marshal(msg)
	if err != nil {
		writeHTTPError(w, http.StatusInternalServerError, "encode: "+err.Error(), "")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(b, '\n'))
}

func writeHTTPError(w http.ResponseWriter, code int, msg, leader string) {
	body := struct {
		Error  string `json:"error"`
		Leader string `json:"leader,omitempty"`
	}{msg, leader}
	b, _ := json.Marshal(body)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

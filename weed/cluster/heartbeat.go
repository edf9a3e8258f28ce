package cluster

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/seaweedfs/seaweedfs/weed/glog"
	"github.com/seaweedfs/seaweedfs/weed/pb"
	"github.com/seaweedfs/seaweedfs/weed/pb/master_pb"
	weed_server "github.com/seaweedfs/seaweedfs/weed/server"
	"github.com/seaweedfs/seaweedfs/weed/server/constants"
	"github.com/seaweedfs/seaweedfs/weed/util"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// defaultHeartbeatSilence fails an upstream heartbeat stream after three
// missed volume-server pulses. Upstream alone notices a silent peer only
// through gRPC keepalive (about 80 s).
const defaultHeartbeatSilence = 3 * constants.VolumePulsePeriod

// membershipSink receives servers joining and leaving.
type membershipSink interface {
	ServerJoined(ServerInfo)
	ServerLeft(id string)
}

// heartbeatWatch is upstream's master gRPC service with SendHeartbeat
// wrapped: each stream is observed (join on its first identified heartbeat
// while this master leads, leave when it ends) and fails when silent for
// longer than silence. Streams are counted per server, as upstream counts
// them, so a reconnect racing the old stream's end does not report a leave.
type heartbeatWatch struct {
	*weed_server.MasterServer
	silence time.Duration
	sink    membershipSink // nil: observe only

	mu      sync.Mutex
	streams map[string]int
	closed  bool
}

func newHeartbeatWatch(ms *weed_server.MasterServer, silence time.Duration, sink membershipSink) *heartbeatWatch {
	w := &heartbeatWatch{MasterServer: ms, silence: silence, streams: map[string]int{}}
	if sink != nil {
		w.sink = sink
	}
	return w
}

// close stops reporting to the sink (the block master is closing).
func (w *heartbeatWatch) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}

// SendHeartbeat overrides upstream's handler: it delegates to it with a
// stream whose Recv fails after w.silence without a message.
func (w *heartbeatWatch) SendHeartbeat(st master_pb.Seaweed_SendHeartbeatServer) error {
	ws := &watchedStream{
		Seaweed_SendHeartbeatServer: st,
		watch:                       w,
		msgs:                        make(chan recvResult),
		done:                        make(chan struct{}),
	}
	go ws.pump()
	err := w.MasterServer.SendHeartbeat(ws)
	close(ws.done)
	ws.leave()
	return err
}

func (w *heartbeatWatch) joined(info ServerInfo) {
	w.mu.Lock()
	w.streams[info.ID]++
	first := w.streams[info.ID] == 1
	sink, closed := w.sink, w.closed
	w.mu.Unlock()
	glog.V(1).Infof("heartbeat: volume server %s (%s) joined, first stream %v", info.ID, info.Address, first)
	if first && sink != nil && !closed {
		sink.ServerJoined(info)
	}
}

func (w *heartbeatWatch) left(id string) {
	w.mu.Lock()
	w.streams[id]--
	last := w.streams[id] <= 0
	if last {
		delete(w.streams, id)
	}
	sink, closed := w.sink, w.closed
	w.mu.Unlock()
	glog.V(1).Infof("heartbeat: volume server %s stream ended, last %v", id, last)
	if last && sink != nil && !closed {
		sink.ServerLeft(id)
	}
}

// streamCount is the number of live streams of a server (tests).
func (w *heartbeatWatch) streamCount(id string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.streams[id]
}

type recvResult struct {
	hb  *master_pb.Heartbeat
	err error
}

// watchedStream is one heartbeat stream. Only pump calls the real Recv;
// only upstream's handler calls Recv here and Send (on the embedded
// stream), as gRPC requires.
type watchedStream struct {
	master_pb.Seaweed_SendHeartbeatServer
	watch *heartbeatWatch
	msgs  chan recvResult
	done  chan struct{} // closed when upstream's handler returned

	id string // set once joined
}

// pump reads the real stream until it fails or the handler returned (then
// gRPC has cancelled the stream, which ends the blocked Recv).
func (s *watchedStream) pump() {
	for {
		hb, err := s.Seaweed_SendHeartbeatServer.Recv()
		select {
		case s.msgs <- recvResult{hb, err}:
		case <-s.done:
			return
		}
		if err != nil {
			return
		}
	}
}

// Recv returns the next heartbeat, or an error when the stream failed or
// stayed silent too long.
func (s *watchedStream) Recv() (*master_pb.Heartbeat, error) {
	t := time.NewTimer(s.watch.silence)
	defer t.Stop()
	select {
	case r := <-s.msgs:
		if r.err == nil {
			s.observe(r.hb)
		}
		return r.hb, r.err
	case <-t.C:
		who := s.id
		if who == "" {
			who = "unidentified volume server"
		}
		glog.Warningf("heartbeat: %s silent for %v; dropping its stream", who, s.watch.silence)
		return nil, status.Error(codes.DeadlineExceeded, fmt.Sprintf("no heartbeat for %v", s.watch.silence))
	case <-s.Context().Done():
		return nil, s.Context().Err()
	}
}

// observe records the join: the first heartbeat that identifies its server
// while this master leads (a follower only redirects the stream).
func (s *watchedStream) observe(hb *master_pb.Heartbeat) {
	if s.id != "" || hb.GetIp() == "" || !raftIsLeader(s.watch.Topo) {
		return
	}
	info := ServerInfo{
		ID:          util.GetVolumeServerId(hb.GetId(), hb.GetIp(), int(hb.GetPort())),
		Address:     util.JoinHostPort(hb.GetIp(), int(hb.GetPort())),
		GrpcAddress: pb.NewServerAddress(hb.GetIp(), int(hb.GetPort()), int(hb.GetGrpcPort())).ToGrpcAddress(),
		DataCenter:  hb.GetDataCenter(),
		Rack:        hb.GetRack(),
	}
	s.id = info.ID
	s.watch.joined(info)
}

func (s *watchedStream) leave() {
	if s.id != "" {
		s.watch.left(s.id)
	}
}

// Context is the real stream's context.
func (s *watchedStream) Context() context.Context { return s.Seaweed_SendHeartbeatServer.Context() }

package cluster

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/seaweedfs/seaweedfs/weed/glog"
	"github.com/seaweedfs/seaweedfs/weed/pb"
	"github.com/seaweedfs/seaweedfs/weed/security"
	"github.com/seaweedfs/seaweedfs/weed/stats"
	"github.com/seaweedfs/seaweedfs/weed/util"
	"google.golang.org/grpc"
)

// ServerInfo is a volume server as upstream's heartbeat shows it.
type ServerInfo struct {
	ID          string // upstream volume server id (-id, default ip:port)
	Address     string // ip:port of its HTTP
	GrpcAddress string // host:port of its gRPC (where the block service is)
	DataCenter  string
	Rack        string
}

// TopologyServer is one volume server of the master's topology snapshot.
type TopologyServer struct {
	ServerInfo
	FreeBytes  uint64 // free bytes on its disks (0 when not reported)
	TotalBytes uint64
	// FreeSlots is upstream's free volume count (max - used), over all disks.
	FreeSlots int64
}

// MasterPluginEnv is what the launcher hands the block master.
type MasterPluginEnv struct {
	// MetaDir is the master's -mdir (resolved); the block registry lives
	// under MetaDir/block.
	MetaDir string
	// IsLeader reports whether this master is the raft leader now.
	IsLeader func() bool
	// Leader is the leader's gRPC address (host:port), "" when unknown.
	Leader func() string
	// Topology is a fresh snapshot of upstream's topology: the volume
	// servers with a live upstream heartbeat stream, sorted by id.
	Topology func() []TopologyServer
	// DialVolume opens a gRPC connection to a volume server (the caller
	// closes it), with the master's client TLS settings.
	DialVolume func(ctx context.Context, grpcAddr string) (*grpc.ClientConn, error)
}

// MasterPlugin is the block master as the launcher sees it.
type MasterPlugin interface {
	// Register adds the block gRPC services to the master's gRPC server.
	Register(grpc.ServiceRegistrar)
	// HTTPHandler serves /block/... on the master's HTTP port.
	HTTPHandler() http.Handler
	// Collectors are registered on upstream's metrics registry.
	Collectors() []prometheus.Collector
	// ServerJoined / ServerLeft follow upstream's heartbeat streams on the
	// leader (a stream silent for too long counts as gone).
	ServerJoined(ServerInfo)
	ServerLeft(id string)
	// Close stops the plugin; idempotent.
	Close()
}

// MasterPluginFactory builds the block master for one master process.
type MasterPluginFactory func(MasterPluginEnv) (MasterPlugin, error)

// VolumePluginEnv is what the launcher hands the block side of a volume
// server.
type VolumePluginEnv struct {
	Dir         string // -block.dir
	ServerID    string // upstream volume server id
	GrpcAddr    string // advertised host:port of the volume server's gRPC
	HTTPAddr    string // advertised host:port of its HTTP
	NBDAddr     string // -block.nbd listen address ("" disables)
	ISCSIAddr   string // -block.iscsi listen address ("" disables)
	ReplAddr    string // -block.repl listen address
	AdvertiseIP string // the server's -ip, for listen addresses without a host
	DataCenter  string
	Rack        string
	// Masters is the current list of master gRPC addresses (host:port).
	Masters func() []string
	// Dial opens a gRPC connection with the volume server's client TLS.
	Dial func(ctx context.Context, addr string) (*grpc.ClientConn, error)
	// SnapshotInterval is -block.snapshotInterval (0: no base snapshots).
	SnapshotInterval time.Duration
}

// VolumePlugin is the block side of a volume server.
type VolumePlugin interface {
	Register(grpc.ServiceRegistrar)
	HTTPHandler() http.Handler
	Collectors() []prometheus.Collector
	// Start begins serving block traffic and heartbeating to the master.
	Start() error
	// Close flushes and closes every block volume; idempotent.
	Close()
}

// VolumePluginFactory builds the block side of one volume server.
type VolumePluginFactory func(VolumePluginEnv) (VolumePlugin, error)

// dialFunc dials gRPC with the client TLS of a component (grpc.master,
// grpc.volume).
func dialFunc(component string) func(ctx context.Context, addr string) (*grpc.ClientConn, error) {
	return func(ctx context.Context, addr string) (*grpc.ClientConn, error) {
		return pb.GrpcDial(ctx, addr, false, security.LoadClientTLS(util.GetViper(), component))
	}
}

// registerCollectors publishes collectors on upstream's registry (the one
// its -metricsPort endpoint and pushes serve). A duplicate is logged, not
// fatal: metrics must not take a server down.
func registerCollectors(what string, cs []prometheus.Collector) {
	for _, c := range cs {
		if err := stats.Gather.Register(c); err != nil {
			glog.Warningf("%s metrics: %v", what, err)
		}
	}
}

package cluster

import (
	"fmt"
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/seaweedfs/seaweedfs/weed/glog"
	"google.golang.org/grpc"

	"github.com/weedblock/weedblock/weed/blockmaster"
	"github.com/weedblock/weedblock/weed/blockvolume"
	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// BlockHooks are the block plugins of this build: package blockmaster on
// masters, package blockvolume on volume servers.
func BlockHooks() Hooks {
	return Hooks{Master: newBlockMaster, Volume: newBlockVolume}
}

// blockMasterPlugin adapts *blockmaster.Master to MasterPlugin.
type blockMasterPlugin struct {
	m    *blockmaster.Master
	once sync.Once
}

func newBlockMaster(env MasterPluginEnv) (MasterPlugin, error) {
	m, err := blockmaster.New(blockmaster.Options{
		Dir:      env.MetaDir,
		IsLeader: env.IsLeader,
		Leader:   env.Leader,
		Topology: topologyAdapter(env.Topology),
		DialConn: env.DialVolume,
	})
	if err != nil {
		return nil, err
	}
	return &blockMasterPlugin{m: m}, nil
}

func (p *blockMasterPlugin) Register(s grpc.ServiceRegistrar)   { p.m.Register(s) }
func (p *blockMasterPlugin) HTTPHandler() http.Handler          { return p.m.HTTPHandler() }
func (p *blockMasterPlugin) Collectors() []prometheus.Collector { return p.m.Collectors() }
func (p *blockMasterPlugin) ServerJoined(s ServerInfo)          { p.m.ServerJoined(s.ID) }
func (p *blockMasterPlugin) ServerLeft(id string)               { p.m.ServerLeft(id) }
func (p *blockMasterPlugin) Close() {
	p.once.Do(func() {
		if err := p.m.Close(); err != nil {
			glog.Errorf("block master close: %v", err)
		}
	})
}

// topologyAdapter gives blockmaster upstream's topology: every server in
// the snapshot has a live upstream heartbeat stream.
type topologyAdapter func() []TopologyServer

func (t topologyAdapter) Servers() []blockmaster.TopologyServer {
	snap := t()
	out := make([]blockmaster.TopologyServer, 0, len(snap))
	for _, s := range snap {
		out = append(out, blockmaster.TopologyServer{
			ID: s.ID, DataCenter: s.DataCenter, Rack: s.Rack, FreeBytes: s.FreeBytes, Alive: true,
		})
	}
	return out
}

// blockVolumePlugin adapts *blockvolume.Manager to VolumePlugin.
type blockVolumePlugin struct {
	m    *blockvolume.Manager
	once sync.Once
}

func newBlockVolume(env VolumePluginEnv) (VolumePlugin, error) {
	m, err := blockvolume.New(blockvolume.Options{
		Dir:      env.Dir,
		ServerID: env.ServerID,
		Endpoints: &blockpb.ServerEndpoints{
			ServerId:    env.ServerID,
			GrpcAddress: env.GrpcAddr,
			HttpAddress: env.HTTPAddr,
			DataCenter:  env.DataCenter,
			Rack:        env.Rack,
		},
		NBDAddr:   env.NBDAddr,
		ISCSIAddr: env.ISCSIAddr,
		ReplAddr:  env.ReplAddr,
		Masters:   env.Masters,
		Dial:      env.Dial,

		SnapshotInterval: env.SnapshotInterval,
	})
	if err != nil {
		return nil, fmt.Errorf("block volumes in %s: %w", env.Dir, err)
	}
	return &blockVolumePlugin{m: m}, nil
}

func (p *blockVolumePlugin) Register(s grpc.ServiceRegistrar) {
	blockpb.RegisterBlockVolumeServer(s, p.m.GRPCService())
}
func (p *blockVolumePlugin) HTTPHandler() http.Handler          { return p.m.HTTPHandler() }
func (p *blockVolumePlugin) Collectors() []prometheus.Collector { return p.m.Collectors() }
func (p *blockVolumePlugin) Start() error                       { return p.m.Start() }
func (p *blockVolumePlugin) Close() {
	p.once.Do(func() {
		if err := p.m.Close(); err != nil {
			glog.Errorf("block volumes close: %v", err)
		}
	})
}

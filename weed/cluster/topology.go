package cluster

import (
	"sort"

	"github.com/seaweedfs/seaweedfs/weed/pb"
	"github.com/seaweedfs/seaweedfs/weed/topology"
)

// topologySnapshot lists the volume servers of upstream's topology (one
// consistent protobuf snapshot, without volume lists), sorted by id.
func topologySnapshot(t *topology.Topology) []TopologyServer {
	info := t.ToTopologyInfo(topology.NoVolumes())
	var out []TopologyServer
	for _, dc := range info.GetDataCenterInfos() {
		for _, rack := range dc.GetRackInfos() {
			for _, dn := range rack.GetDataNodeInfos() {
				s := TopologyServer{ServerInfo: ServerInfo{
					ID:         dn.GetId(),
					Address:    dn.GetAddress(),
					DataCenter: dc.GetId(),
					Rack:       rack.GetId(),
				}}
				if dn.GetAddress() != "" {
					// grpc port 0 means upstream's default, port+10000.
					s.GrpcAddress = pb.NewServerAddressWithGrpcPort(dn.GetAddress(), int(dn.GetGrpcPort())).ToGrpcAddress()
				}
				for _, d := range dn.GetDiskInfos() {
					s.FreeBytes += d.GetDiskFreeBytes()
					s.TotalBytes += d.GetDiskTotalBytes()
					s.FreeSlots += d.GetMaxVolumeCount() - d.GetVolumeCount()
				}
				out = append(out, s)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

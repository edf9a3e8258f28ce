package blockmaster

import (
	"context"
	"errors"
	"strings"
	"sync"

	"github.com/golang/glog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

const (
	stateCreating = "creating"
	stateDeleting = "deleting"
)

// CreateVolume validates the spec, places the volume, persists its first
// epoch, allocates it on every member and returns its info. On an
// allocation failure the members that got it are told to delete it and the
// registry forgets it.
func (m *Master) CreateVolume(ctx context.Context, req *blockpb.CreateVolumeRequest) (*blockpb.CreateVolumeResponse, error) {
	if err := m.checkServing(); err != nil {
		return nil, err
	}
	spec, err := normalizeSpec(req.GetSpec())
	if err != nil {
		return nil, err
	}
	name := spec.Name

	m.mu.Lock()
	if m.reg.get(name) != nil || m.pending[name] != "" {
		m.mu.Unlock()
		return nil, status.Errorf(codes.AlreadyExists, "volume %q already exists", name)
	}
	now := m.clock.Now()
	var cands []candidate
	for _, c := range m.candidatesLocked(now) {
		if !m.holdsCopyLocked(c.ID, name) {
			cands = append(cands, c)
		}
	}
	chosen, err := place(cands, int(spec.ReplicationFactor), bytesNeeded(spec))
	if err != nil {
		m.mu.Unlock()
		return nil, err
	}
	cfg := &blockpb.EpochConfig{
		Epoch:           m.reg.nextFirstEpoch(name),
		PrimaryServerId: chosen[0].ID,
		Durability:      spec.Durability,
		CreatedUnixMs:   now.UnixMilli(),
		Reason:          "create",
	}
	for i, c := range chosen {
		role := blockpb.Role_ROLE_REPLICA
		if i == 0 {
			role = blockpb.Role_ROLE_PRIMARY
		}
		ep := proto.Clone(m.servers[c.ID].endpoints).(*blockpb.ServerEndpoints)
		cfg.Members = append(cfg.Members, &blockpb.Member{Server: ep, Role: role})
	}
	rec := &volumeRecord{spec: spec, config: cfg, firstEpoch: cfg.Epoch, createdUnixMs: now.UnixMilli()}
	if err := m.reg.add(rec); err != nil {
		m.mu.Unlock()
		glog.Errorf("blockmaster: create %q: %v", name, err)
		return nil, status.Errorf(codes.Internal, "create %q: %v", name, err)
	}
	m.pending[name] = stateCreating
	m.mu.Unlock()
	glog.Infof("blockmaster: create %q epoch %d on %v (%d bytes, rf=%d, %s)", name, cfg.Epoch, memberIDs(cfg), spec.SizeBytes, spec.ReplicationFactor, durabilityName(spec.Durability))

	errs := m.forEachMember(ctx, cfg, func(ctx context.Context, c blockpb.BlockVolumeClient, mem *blockpb.Member) error {
		_, err := c.AllocateVolume(ctx, &blockpb.AllocateVolumeRequest{Spec: spec, Config: cfg})
		return err
	})
	if err := firstError(cfg, errs); err != nil {
		m.rollbackCreate(name, cfg)
		return nil, err
	}

	m.mu.Lock()
	delete(m.pending, name)
	info := m.volumeInfoLocked(m.reg.get(name), m.clock.Now())
	m.mu.Unlock()
	return &blockpb.CreateVolumeResponse{Volume: info}, nil
}

// rollbackCreate undoes a create whose allocation failed somewhere: every
// member is asked to delete its copy (a server that cannot be reached gets
// the delete through its heartbeat later) and the registry forgets it.
func (m *Master) rollbackCreate(name string, cfg *blockpb.EpochConfig) {
	ctx, cancel := context.WithTimeout(context.Background(), m.opts.RPCTimeout)
	defer cancel()
	errs := m.forEachMember(ctx, cfg, func(ctx context.Context, c blockpb.BlockVolumeClient, mem *blockpb.Member) error {
		_, err := c.DeleteVolume(ctx, &blockpb.DeleteLocalVolumeRequest{Name: name, Epoch: cfg.Epoch, Force: true})
		return err
	})
	for i, err := range errs {
		if err != nil && status.Code(err) != codes.NotFound {
			glog.Warningf("blockmaster: roll back %q on %s: %v", name, cfg.Members[i].GetServer().GetServerId(), err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.pending, name)
	if err := m.reg.remove(name); err != nil {
		glog.Errorf("blockmaster: roll back %q: %v", name, err)
	}
}

// DeleteVolume deletes a volume on its members and then from the registry.
// It refuses while the primary reports attached sessions unless force. A
// member that cannot be reached gets the delete through its heartbeat once
// it is back.
func (m *Master) DeleteVolume(ctx context.Context, req *blockpb.DeleteVolumeRequest) (*blockpb.DeleteVolumeResponse, error) {
	if err := m.checkServing(); err != nil {
		return nil, err
	}
	name := req.GetName()
	if !validName(name) {
		return nil, badName(name)
	}
	m.mu.Lock()
	rec := m.reg.get(name)
	if rec == nil {
		m.mu.Unlock()
		return nil, status.Errorf(codes.NotFound, "volume %q not found", name)
	}
	if p := m.pending[name]; p != "" {
		m.mu.Unlock()
		return nil, status.Errorf(codes.FailedPrecondition, "volume %q is %s; try again", name, p)
	}
	cfg := proto.Clone(rec.config).(*blockpb.EpochConfig)
	if !req.GetForce() {
		if rep := m.reportLocked(cfg.PrimaryServerId, name); rep != nil && rep.AttachedSessions > 0 {
			m.mu.Unlock()
			return nil, status.Errorf(codes.FailedPrecondition, "volume %q has %d attached sessions on %s; detach first or use force", name, rep.AttachedSessions, cfg.PrimaryServerId)
		}
	}
	m.pending[name] = stateDeleting
	m.mu.Unlock()

	errs := m.forEachMember(ctx, cfg, func(ctx context.Context, c blockpb.BlockVolumeClient, mem *blockpb.Member) error {
		_, err := c.DeleteVolume(ctx, &blockpb.DeleteLocalVolumeRequest{Name: name, Epoch: cfg.Epoch, Force: req.GetForce()})
		return err
	})
	for i, err := range errs {
		id := cfg.Members[i].GetServer().GetServerId()
		switch status.Code(err) {
		case codes.OK, codes.NotFound:
		case codes.Unavailable, codes.DeadlineExceeded:
			glog.Warningf("blockmaster: delete %q on %s deferred to its heartbeat: %v", name, id, err)
		default:
			m.mu.Lock()
			delete(m.pending, name)
			m.mu.Unlock()
			return nil, status.Errorf(status.Code(err), "delete %q on %s: %v", name, id, status.Convert(err).Message())
		}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.pending, name)
	if err := m.reg.remove(name); err != nil {
		glog.Errorf("blockmaster: delete %q: %v", name, err)
		return nil, status.Errorf(codes.Internal, "delete %q: %v", name, err)
	}
	delete(m.leases, name)
	delete(m.lost, name)
	delete(m.fenceUntil, name)
	delete(m.pauseFrom, name)
	delete(m.lastPause, name)
	for key := range m.allocNext {
		if strings.HasPrefix(key, name+"\x00") {
			delete(m.allocNext, key)
		}
	}
	glog.Infof("blockmaster: deleted %q (last epoch %d)", name, cfg.Epoch)
	return &blockpb.DeleteVolumeResponse{}, nil
}

// LookupVolume returns the master's view of one volume.
func (m *Master) LookupVolume(ctx context.Context, req *blockpb.LookupVolumeRequest) (*blockpb.LookupVolumeResponse, error) {
	if err := m.checkServing(); err != nil {
		return nil, err
	}
	info, err := m.lookup(req.GetName())
	if err != nil {
		return nil, err
	}
	return &blockpb.LookupVolumeResponse{Volume: info}, nil
}

func (m *Master) lookup(name string) (*blockpb.VolumeInfo, error) {
	if !validName(name) {
		return nil, badName(name)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	rec := m.reg.get(name)
	if rec == nil {
		return nil, status.Errorf(codes.NotFound, "volume %q not found", name)
	}
	return m.volumeInfoLocked(rec, m.clock.Now()), nil
}

// ListVolumes returns every volume, sorted by name.
func (m *Master) ListVolumes(ctx context.Context, req *blockpb.ListVolumesRequest) (*blockpb.ListVolumesResponse, error) {
	if err := m.checkServing(); err != nil {
		return nil, err
	}
	return &blockpb.ListVolumesResponse{Volumes: m.list()}, nil
}

func (m *Master) list() []*blockpb.VolumeInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.clock.Now()
	out := []*blockpb.VolumeInfo{}
	for _, n := range m.reg.names() {
		out = append(out, m.volumeInfoLocked(m.reg.get(n), now))
	}
	return out
}

// forEachMember calls fn on every member of cfg in parallel, each with its
// own RPC timeout, and returns the errors in member order.
func (m *Master) forEachMember(ctx context.Context, cfg *blockpb.EpochConfig,
	fn func(context.Context, blockpb.BlockVolumeClient, *blockpb.Member) error) []error {
	errs := make([]error, len(cfg.Members))
	var wg sync.WaitGroup
	for i, mem := range cfg.Members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, m.opts.RPCTimeout)
			defer cancel()
			addr := m.grpcAddress(mem)
			if addr == "" {
				errs[i] = status.Errorf(codes.Unavailable, "server %s has no known gRPC address", mem.GetServer().GetServerId())
				return
			}
			c, release, err := m.dial(cctx, addr)
			if err != nil {
				errs[i] = status.Errorf(codes.Unavailable, "dial %s: %v", addr, err)
				return
			}
			defer release()
			errs[i] = fn(cctx, c, mem)
		}()
	}
	wg.Wait()
	return errs
}

// grpcAddress is the member's latest known gRPC address: from its live
// heartbeat if any, else the one recorded in the config.
func (m *Master) grpcAddress(mem *blockpb.Member) string {
	id := mem.GetServer().GetServerId()
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.servers[id]; s != nil && s.endpoints.GetGrpcAddress() != "" {
		return s.endpoints.GetGrpcAddress()
	}
	return mem.GetServer().GetGrpcAddress()
}

// firstError turns the first failed member call into a gRPC status naming
// the server; nil when all succeeded.
func firstError(cfg *blockpb.EpochConfig, errs []error) error {
	for i, err := range errs {
		if err == nil {
			continue
		}
		st := status.Convert(err)
		code := st.Code()
		if code == codes.Unknown || errors.Is(err, context.Canceled) {
			code = codes.Unavailable
		}
		return status.Errorf(code, "allocate on %s: %s", cfg.Members[i].GetServer().GetServerId(), st.Message())
	}
	return nil
}

func memberIDs(cfg *blockpb.EpochConfig) []string {
	out := make([]string, len(cfg.Members))
	for i, mem := range cfg.Members {
		out[i] = mem.GetServer().GetServerId()
	}
	return out
}

// reportLocked is server id's latest report of volume name, or nil.
func (m *Master) reportLocked(id, name string) *blockpb.VolumeReport {
	if s := m.servers[id]; s != nil {
		return s.reports[name]
	}
	return nil
}

// holdsCopyLocked reports whether server id reports a local volume called
// name (a leftover that must be deleted before the name can live there).
func (m *Master) holdsCopyLocked(id, name string) bool { return m.reportLocked(id, name) != nil }

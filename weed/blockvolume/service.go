package blockvolume

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/golang/glog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// maxBlockSize is the largest block size a volume server serves (the NBD
// frontend's limit).
const maxBlockSize = 64 << 10

// GRPCService returns the BlockVolume gRPC service (called by the master)
// to register on the volume server's gRPC server.
func (m *Manager) GRPCService() blockpb.BlockVolumeServer { return &service{m: m} }

// Register registers the BlockVolume service on a gRPC server.
func (m *Manager) Register(r grpc.ServiceRegistrar) {
	blockpb.RegisterBlockVolumeServer(r, m.GRPCService())
}

type service struct {
	blockpb.UnimplementedBlockVolumeServer
	m *Manager
}

// AllocateVolume creates NAME.blk for the spec in the given epoch and
// leaves it fenced (the lease comes with the heartbeat). Idempotent: the
// same name and geometry succeed again (an equal or newer config is
// applied). Errors: InvalidArgument (bad spec or config), AlreadyExists
// (same name, other geometry), FailedPrecondition (this server is not a
// member; stale epoch), ResourceExhausted (not enough free space).
func (s *service) AllocateVolume(ctx context.Context, req *blockpb.AllocateVolumeRequest) (*blockpb.AllocateVolumeResponse, error) {
	m := s.m
	m.opMu.Lock()
	defer m.opMu.Unlock()
	if err := m.checkOpen(); err != nil {
		return nil, err
	}
	mode := allocMember
	if req.GetRecoveryCopy() {
		mode = allocRecoveryCopy
	}
	rep, err := m.allocateLocked(req.GetSpec(), req.GetConfig(), mode)
	if err != nil {
		return nil, err
	}
	if v := m.lookup(req.GetSpec().GetName()); v != nil {
		v.setRF(req.GetSpec().GetReplicationFactor())
		m.syncReplLocked(v) // a replica follows its primary at once
	}
	return &blockpb.AllocateVolumeResponse{Volume: rep}, nil
}

func (m *Manager) checkOpen() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || !m.started {
		return status.Error(codes.Unavailable, "block volume manager is not running")
	}
	return nil
}

// geometry is a spec with the defaults filled in.
type geometry struct {
	size      int64
	blockSize int
	walSize   int64
}

func specGeometry(spec *blockpb.VolumeSpec) (geometry, error) {
	g := geometry{size: int64(spec.GetSizeBytes()), blockSize: int(spec.GetBlockSize()), walSize: int64(spec.GetWalSizeBytes())}
	if g.blockSize == 0 {
		g.blockSize = blockvol.DefaultBlockSize
	}
	if g.walSize == 0 {
		g.walSize = blockvol.DefaultWALSize
	}
	switch {
	case !ValidName(spec.GetName()):
		return g, fmt.Errorf("volume name %q: want lower-case letters, digits, '.' and '-' (starting with a letter or digit), at most 63", spec.GetName())
	case g.blockSize < 512 || g.blockSize > maxBlockSize || g.blockSize&(g.blockSize-1) != 0:
		return g, fmt.Errorf("block size %d: want a power of two from 512 to %d", g.blockSize, maxBlockSize)
	case spec.GetSizeBytes() == 0 || spec.GetSizeBytes() > 1<<62:
		return g, fmt.Errorf("size %d bytes: must be positive (and below 4 EiB)", spec.GetSizeBytes())
	case g.size%int64(g.blockSize) != 0:
		return g, fmt.Errorf("size %d is not a multiple of the block size %d", g.size, g.blockSize)
	case g.walSize < 64<<10 || g.walSize%4096 != 0 || spec.GetWalSizeBytes() > 1<<40:
		return g, fmt.Errorf("WAL size %d: want a multiple of 4096, at least 64 KiB", g.walSize)
	}
	return g, nil
}

// allocMode says what kind of copy allocateLocked creates.
type allocMode int

const (
	// allocMember: AllocateVolume of a member of cfg; a trusted, empty
	// (all zero) copy of a new volume.
	allocMember allocMode = iota
	// allocLost: an assignment names this server a member of a volume it
	// does not have (its file was lost): the copy is created durably
	// untrusted, stays fenced and waits for a rebuild. An assignment
	// never creates a trusted copy.
	allocLost
	// allocRecoveryCopy: AllocateVolume with recovery_copy: like
	// allocLost, for a server that need not be a member of cfg; an
	// existing copy is left as it is.
	allocRecoveryCopy
)

// allocateLocked is AllocateVolume under opMu; errors are gRPC statuses.
func (m *Manager) allocateLocked(spec *blockpb.VolumeSpec, cfg *blockpb.EpochConfig, mode allocMode) (*blockpb.VolumeReport, error) {
	if spec == nil || cfg == nil {
		return nil, status.Error(codes.InvalidArgument, "allocate: spec and config are required")
	}
	g, err := specGeometry(spec)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "allocate: %v", err)
	}
	name := spec.GetName()
	if cfg.GetEpoch() == 0 {
		return nil, status.Errorf(codes.InvalidArgument, "allocate %s: config epoch must be at least 1", name)
	}
	if mode != allocRecoveryCopy && roleIn(cfg, m.serverID) == blockpb.Role_ROLE_NONE {
		return nil, status.Errorf(codes.FailedPrecondition, "allocate %s: server %q is not a member of epoch %d", name, m.serverID, cfg.GetEpoch())
	}
	if v := m.lookup(name); v != nil {
		st := v.vol.Status()
		if st.Size != g.size || st.BlockSize != g.blockSize || st.WALSize != g.walSize {
			return nil, status.Errorf(codes.AlreadyExists,
				"allocate %s: a volume of that name exists with another geometry (size %d, block %d, WAL %d; asked size %d, block %d, WAL %d)",
				name, st.Size, st.BlockSize, st.WALSize, g.size, g.blockSize, g.walSize)
		}
		if mode == allocRecoveryCopy {
			return v.report(m.serverID, m.sessions(name)), nil // left as it is
		}
		if cfg.GetEpoch() < st.Epoch {
			return nil, status.Errorf(codes.FailedPrecondition, "allocate %s: epoch %d is older than the volume's epoch %d", name, cfg.GetEpoch(), st.Epoch)
		}
		if err := m.applyConfigLocked(v, cfg, time.Time{}, false); err != nil {
			return nil, status.Errorf(codes.Internal, "allocate %s: %v", name, err)
		}
		return v.report(m.serverID, m.sessions(name)), nil
	}
	path := filepath.Join(m.opts.Dir, name+FileExt)
	if _, err := os.Stat(path); err == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "allocate %s: %s exists but is not open (it failed to open at start; see the log)", name, path)
	}
	need := uint64(g.size + g.walSize + 1<<20)
	if free := freeBytes(m.opts.Dir); free < need {
		return nil, status.Errorf(codes.ResourceExhausted, "allocate %s: %d bytes free under %s, the volume needs %d", name, free, m.opts.Dir, need)
	}
	vol, err := blockvol.Create(path, g.size, blockvol.Options{BlockSize: g.blockSize, WALSize: g.walSize, FlushInterval: m.opts.FlushInterval})
	if err != nil {
		removeFiles(path)
		return nil, status.Errorf(codes.Internal, "allocate %s: %v", name, err)
	}
	undo := func(err error) error {
		vol.Close()
		removeFiles(path)
		return status.Errorf(codes.Internal, "allocate %s: %v", name, err)
	}
	untrusted := mode != allocMember
	if untrusted {
		// Durably untrusted before anything else sees the copy: it holds
		// no data of the volume until a rebuild commits.
		if err := vol.SetUntrusted(true); err != nil {
			return nil, undo(err)
		}
	}
	if err := vol.FenceEpoch(cfg.GetEpoch()); err != nil {
		return nil, undo(err)
	}
	v := newVolume(name, vol, m.metrics)
	v.dev.untrusted.Store(untrusted)
	if err := v.setConfig(cfg); err != nil {
		m.metrics.forget(name)
		return nil, undo(err)
	}
	if err := m.addVolume(v); err != nil {
		m.metrics.forget(name)
		return nil, undo(err)
	}
	if untrusted {
		glog.Warningf("blockvolume: created %s empty and untrusted in epoch %d (a lost copy): fenced until the primary rebuilds it", path, cfg.GetEpoch())
	} else {
		glog.Infof("blockvolume: allocated %s (%d bytes, %d-byte blocks, WAL %d) in epoch %d, fenced", path, g.size, g.blockSize, g.walSize, cfg.GetEpoch())
	}
	return m.lookup(name).report(m.serverID, 0), nil
}

// DeleteVolume closes and removes a local volume. It is refused while the
// volume has attached sessions unless force, and when epoch (if not 0) is
// older than the volume's. Deleting an unknown volume succeeds.
func (s *service) DeleteVolume(ctx context.Context, req *blockpb.DeleteLocalVolumeRequest) (*blockpb.DeleteLocalVolumeResponse, error) {
	m := s.m
	m.opMu.Lock()
	defer m.opMu.Unlock()
	if err := m.checkOpen(); err != nil {
		return nil, err
	}
	name := req.GetName()
	v := m.lookup(name)
	if v == nil {
		return &blockpb.DeleteLocalVolumeResponse{}, nil
	}
	if e, cur := req.GetEpoch(), v.vol.Status().Epoch; e != 0 && e < cur {
		return nil, status.Errorf(codes.FailedPrecondition, "delete %s: epoch %d is older than the volume's epoch %d", name, e, cur)
	}
	if n := m.sessions(name); n > 0 && !req.GetForce() {
		return nil, status.Errorf(codes.FailedPrecondition, "delete %s: volume is attached (%d session(s)); detach it or force", name, n)
	}
	if err := m.removeVolume(v, true); err != nil {
		return nil, status.Errorf(codes.Internal, "delete %s: %v", name, err)
	}
	glog.Infof("blockvolume: deleted %s", name)
	return &blockpb.DeleteLocalVolumeResponse{}, nil
}

// VolumeStatus reports one volume (NotFound if unknown) or, for an empty
// name, all of them.
func (s *service) VolumeStatus(ctx context.Context, req *blockpb.LocalVolumeStatusRequest) (*blockpb.LocalVolumeStatusResponse, error) {
	m := s.m
	if err := m.checkOpen(); err != nil {
		return nil, err
	}
	reps, err := m.reports(req.GetName())
	if err != nil {
		return nil, err
	}
	return &blockpb.LocalVolumeStatusResponse{Volumes: reps}, nil
}

// reports returns the report of volume name (NotFound status if unknown),
// or of every volume when name is empty.
func (m *Manager) reports(name string) ([]*blockpb.VolumeReport, error) {
	if name != "" {
		v := m.lookup(name)
		if v == nil {
			return nil, status.Errorf(codes.NotFound, "volume %q not found on this server", name)
		}
		return []*blockpb.VolumeReport{v.report(m.serverID, m.sessions(name))}, nil
	}
	var out []*blockpb.VolumeReport
	for _, v := range m.snapshot() {
		out = append(out, v.report(m.serverID, m.sessions(v.name)))
	}
	return out, nil
}

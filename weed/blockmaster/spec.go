package blockmaster

import (
	"fmt"
	"regexp"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// Limits and defaults of a volume spec.
const (
	DefaultBlockSize  = 4096
	MinBlockSize      = 512
	MaxBlockSize      = 64 << 10
	DefaultWALSize    = 64 << 20
	MinWALSize        = 64 << 10
	walAlign          = 4096
	MaxVolumeSize     = 1 << 50 // 1 PiB
	MaxReplication    = 3
	fileOverheadBytes = 1 << 20 // superblock copies and alignment, rounded up
)

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,62}$`)

func validName(name string) bool { return nameRE.MatchString(name) }

func badName(name string) error {
	return status.Errorf(codes.InvalidArgument, "bad volume name %q: want 1-63 characters of a-z, 0-9, '.', '-', starting with a letter or digit ('_' cannot be part of an iSCSI name)", name)
}

// normalizeSpec validates a create request's spec and returns a copy with
// the defaults filled in (block size 4096, WAL 64 MiB, rf 1, sync). Every
// error is a gRPC status with code InvalidArgument.
func normalizeSpec(in *blockpb.VolumeSpec) (*blockpb.VolumeSpec, error) {
	if in == nil {
		return nil, status.Error(codes.InvalidArgument, "missing volume spec")
	}
	s := proto.Clone(in).(*blockpb.VolumeSpec)
	if !validName(s.Name) {
		return nil, badName(s.Name)
	}
	if s.BlockSize == 0 {
		s.BlockSize = DefaultBlockSize
	}
	if s.BlockSize < MinBlockSize || s.BlockSize > MaxBlockSize || s.BlockSize&(s.BlockSize-1) != 0 {
		return nil, status.Errorf(codes.InvalidArgument, "bad block size %d: want a power of two from %d to %d", s.BlockSize, MinBlockSize, MaxBlockSize)
	}
	switch {
	case s.SizeBytes == 0:
		return nil, status.Error(codes.InvalidArgument, "size must be > 0")
	case s.SizeBytes%uint64(s.BlockSize) != 0:
		return nil, status.Errorf(codes.InvalidArgument, "size %d is not a multiple of the block size %d", s.SizeBytes, s.BlockSize)
	case s.SizeBytes > MaxVolumeSize:
		return nil, status.Errorf(codes.InvalidArgument, "size %d is above the limit %d (1 PiB)", s.SizeBytes, uint64(MaxVolumeSize))
	}
	if s.WalSizeBytes == 0 {
		s.WalSizeBytes = DefaultWALSize
	}
	if s.WalSizeBytes < MinWALSize || s.WalSizeBytes%walAlign != 0 || s.WalSizeBytes > MaxVolumeSize {
		return nil, status.Errorf(codes.InvalidArgument, "bad WAL size %d: want a multiple of %d, at least %d", s.WalSizeBytes, walAlign, MinWALSize)
	}
	if s.ReplicationFactor == 0 {
		s.ReplicationFactor = 1
	}
	if s.ReplicationFactor > MaxReplication {
		return nil, status.Errorf(codes.InvalidArgument, "bad replication factor %d: want 1 to %d", s.ReplicationFactor, MaxReplication)
	}
	switch s.Durability {
	case blockpb.Durability_DURABILITY_UNSPECIFIED:
		s.Durability = blockpb.Durability_DURABILITY_SYNC
	case blockpb.Durability_DURABILITY_SYNC, blockpb.Durability_DURABILITY_ASYNC:
	case blockpb.Durability_DURABILITY_QUORUM:
		if s.ReplicationFactor < 3 {
			return nil, status.Errorf(codes.InvalidArgument, "durability quorum needs rf >= 3, got rf=%d", s.ReplicationFactor)
		}
	default:
		return nil, status.Errorf(codes.InvalidArgument, "unknown durability %d", int32(s.Durability))
	}
	return s, nil
}

// bytesNeeded is how much free space a server needs to hold one copy.
func bytesNeeded(s *blockpb.VolumeSpec) uint64 {
	return s.SizeBytes + s.WalSizeBytes + fileOverheadBytes
}

// durabilityName is the lower-case name used in messages and metrics.
func durabilityName(d blockpb.Durability) string {
	switch d {
	case blockpb.Durability_DURABILITY_SYNC:
		return "sync"
	case blockpb.Durability_DURABILITY_QUORUM:
		return "quorum"
	case blockpb.Durability_DURABILITY_ASYNC:
		return "async"
	}
	return fmt.Sprintf("durability(%d)", int32(d))
}

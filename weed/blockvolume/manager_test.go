package blockvolume

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/weedblock/weedblock/blockdev"
	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/frontend/iscsi"
	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// TestStartOpensExistingVolumesFenced: files already in the directory are
// opened at Start and exported, fenced: reads return their data, writes
// are refused with NBD EPERM and SCSI DATA PROTECT / WRITE PROTECTED. A
// file that does not open is left alone.
func TestStartOpensExistingVolumesFenced(t *testing.T) {
	dir := t.TempDir()
	// A volume written standalone before this server existed.
	pat := bytes.Repeat([]byte{0xc3}, 4096)
	vol, err := blockvol.Create(filepath.Join(dir, "old"+FileExt), 1<<20, blockvol.Options{WALSize: 256 << 10, Standalone: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := vol.WriteAt(pat, 8192, true); err != nil {
		t.Fatal(err)
	}
	if err := vol.Close(); err != nil {
		t.Fatal(err)
	}
	junk := []byte("not a volume")
	os.WriteFile(filepath.Join(dir, "junk"+FileExt), junk, 0o644)
	os.WriteFile(filepath.Join(dir, "Bad_Name"+FileExt), junk, 0o644)
	os.WriteFile(filepath.Join(dir, "notes.txt"), junk, 0o644)

	m := startManager(t, dir, nil)
	if got := m.names(); len(got) != 1 || got[0] != "old" {
		t.Fatalf("volumes = %v, want [old]", got)
	}
	for _, f := range []string{"junk" + FileExt, "Bad_Name" + FileExt, "notes.txt"} {
		if b, err := os.ReadFile(filepath.Join(dir, f)); err != nil || !bytes.Equal(b, junk) {
			t.Fatalf("%s was touched: %q %v", f, b, err)
		}
	}
	c := dialNBD(t, m.Endpoints().GetNbdAddress(), "old")
	if c.size != 1<<20 {
		t.Fatalf("nbd size %d", c.size)
	}
	if e, data := c.read(8192, 4096); e != 0 || !bytes.Equal(data, pat) {
		t.Fatalf("read of a fenced volume: errno %d, data ok %v", e, bytes.Equal(data, pat))
	}
	if e := c.write(0, pat); e != nbdEPERM {
		t.Fatalf("write to a fenced volume: errno %d, want EPERM", e)
	}

	// The iSCSI LU over the same device: WRITE(10) → DATA PROTECT,
	// ASC 27h (WRITE PROTECTED).
	if r := scsiWrite(m, "old"); !writeProtected(r) {
		t.Fatalf("SCSI write to a fenced volume: status %#x sense %x, want DATA PROTECT/27h", r.Status, r.Sense)
	}

	// A real iSCSI initiator sees the target, and cannot write.
	requireTool(t, "iscsi-ls")
	out, err := exec.Command("iscsi-ls", "iscsi://"+m.Endpoints().GetIscsiAddress()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), iscsi.IQN("old")) {
		t.Fatalf("iscsi-ls: %v\n%s", err, out)
	}
	if out, ok := qemuWrite(t, iscsiURI(m, "old"), 0); ok {
		t.Fatalf("qemu-io wrote to a fenced volume over iSCSI:\n%s", out)
	}

	// The iSCSI session of qemu-io ends shortly after it exits.
	eventually(t, 10*time.Second, "the iSCSI session is gone", func() bool { return m.sessions("old") == 1 })
	r, err := m.reports("old")
	if err != nil {
		t.Fatal(err)
	}
	if !r[0].GetFenced() || r[0].GetRole() != blockpb.Role_ROLE_NONE || r[0].GetLeaseRemainingMs() != 0 || r[0].GetAttachedSessions() != 1 {
		t.Fatalf("report of a fenced volume with one NBD client: %v", r[0])
	}
}

func TestAllocate(t *testing.T) {
	dir := t.TempDir()
	m := startManager(t, dir, nil)
	ctx := context.Background()
	svc := m.GRPCService()
	cfg := epochConfig(1, testServerID)

	rep := allocate(t, m, "vol-a", 1<<20, cfg)
	if rep.GetEpoch() != 1 || !rep.GetFenced() || rep.GetRole() != blockpb.Role_ROLE_PRIMARY || rep.GetSizeBytes() != 1<<20 || rep.GetWalSizeBytes() != 256<<10 {
		t.Fatalf("allocate report: %v", rep)
	}
	path := filepath.Join(dir, "vol-a"+FileExt)
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
	// Served at once, fenced.
	c := dialNBD(t, m.Endpoints().GetNbdAddress(), "vol-a")
	if e := c.write(0, make([]byte, 4096)); e != nbdEPERM {
		t.Fatalf("write to a freshly allocated volume: errno %d, want EPERM", e)
	}

	// Idempotent for the same spec.
	if rep2 := allocate(t, m, "vol-a", 1<<20, cfg); rep2.GetEpoch() != 1 {
		t.Fatalf("second allocate: %v", rep2)
	}
	// Conflicts and bad requests.
	_, err := svc.AllocateVolume(ctx, &blockpb.AllocateVolumeRequest{Spec: spec("vol-a", 2<<20), Config: cfg})
	wantCode(t, err, codes.AlreadyExists, "same name, other size")
	_, err = svc.AllocateVolume(ctx, &blockpb.AllocateVolumeRequest{Spec: spec("vol-b", 1<<20), Config: epochConfig(1, "someone-else")})
	wantCode(t, err, codes.FailedPrecondition, "not a member")
	for _, bad := range []*blockpb.VolumeSpec{
		spec("Bad_Name", 1<<20),
		spec("", 1<<20),
		spec("x", 0),
		spec("x", 4096+512),
		{Name: "x", SizeBytes: 1 << 20, BlockSize: 3000},
		{Name: "x", SizeBytes: 1 << 20, WalSizeBytes: 1000},
	} {
		_, err = svc.AllocateVolume(ctx, &blockpb.AllocateVolumeRequest{Spec: bad, Config: cfg})
		wantCode(t, err, codes.InvalidArgument, "bad spec "+bad.String())
	}
	_, err = svc.AllocateVolume(ctx, &blockpb.AllocateVolumeRequest{Spec: spec("x", 1<<20)})
	wantCode(t, err, codes.InvalidArgument, "no config")
	_, err = svc.AllocateVolume(ctx, &blockpb.AllocateVolumeRequest{Spec: spec("x", 1<<20), Config: epochConfig(0, testServerID)})
	wantCode(t, err, codes.InvalidArgument, "epoch 0")
	_, err = svc.AllocateVolume(ctx, &blockpb.AllocateVolumeRequest{Spec: spec("huge", 1<<60), Config: cfg})
	wantCode(t, err, codes.ResourceExhausted, "larger than the disk")
	if _, err := os.Stat(filepath.Join(dir, "huge"+FileExt)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused allocation left a file: %v", err)
	}

	// A newer epoch through allocate is applied; an older one refused.
	cfg3 := epochConfig(3, testServerID)
	if rep := allocate(t, m, "vol-a", 1<<20, cfg3); rep.GetEpoch() != 3 {
		t.Fatalf("allocate at epoch 3: %v", rep)
	}
	_, err = svc.AllocateVolume(ctx, &blockpb.AllocateVolumeRequest{Spec: spec("vol-a", 1<<20), Config: cfg})
	wantCode(t, err, codes.FailedPrecondition, "older epoch")

	st, err := svc.VolumeStatus(ctx, &blockpb.LocalVolumeStatusRequest{})
	if err != nil || len(st.GetVolumes()) != 1 || st.GetVolumes()[0].GetName() != "vol-a" {
		t.Fatalf("VolumeStatus all: %v %v", st, err)
	}
	_, err = svc.VolumeStatus(ctx, &blockpb.LocalVolumeStatusRequest{Name: "nope"})
	wantCode(t, err, codes.NotFound, "status of unknown volume")

	// Epoch and config survive a restart; the volume comes back fenced.
	c.nc.Close()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_, err = svc.AllocateVolume(ctx, &blockpb.AllocateVolumeRequest{Spec: spec("vol-c", 1<<20), Config: cfg})
	wantCode(t, err, codes.Unavailable, "allocate after Close")
	m2 := startManager(t, dir, nil)
	v := m2.lookup("vol-a")
	if v == nil {
		t.Fatal("vol-a not reopened")
	}
	if got := v.config(); !proto.Equal(got, cfg3) {
		t.Fatalf("persisted config %v, want %v", got, cfg3)
	}
	if st := v.vol.Status(); st.Epoch != 3 || !st.Fenced {
		t.Fatalf("reopened volume: epoch %d fenced %v", st.Epoch, st.Fenced)
	}
}

func TestDelete(t *testing.T) {
	dir := t.TempDir()
	m := startManager(t, dir, nil)
	ctx := context.Background()
	svc := m.GRPCService()
	allocate(t, m, "d1", 1<<20, epochConfig(2, testServerID))
	path := filepath.Join(dir, "d1"+FileExt)

	c := dialNBD(t, m.Endpoints().GetNbdAddress(), "d1")
	eventually(t, 5*time.Second, "one attached session", func() bool { return m.sessions("d1") == 1 })
	_, err := svc.DeleteVolume(ctx, &blockpb.DeleteLocalVolumeRequest{Name: "d1", Epoch: 2})
	wantCode(t, err, codes.FailedPrecondition, "delete while attached")
	_, err = svc.DeleteVolume(ctx, &blockpb.DeleteLocalVolumeRequest{Name: "d1", Epoch: 1, Force: true})
	wantCode(t, err, codes.FailedPrecondition, "delete with a stale epoch")
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("refused delete removed the file: %v", err)
	}
	if _, err := svc.DeleteVolume(ctx, &blockpb.DeleteLocalVolumeRequest{Name: "d1", Epoch: 2, Force: true}); err != nil {
		t.Fatalf("forced delete: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("file still there after delete: %v", err)
	}
	// The attached client was disconnected.
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.br.ReadByte(); err == nil {
		t.Fatal("NBD connection still open after forced delete")
	}
	if m.lookup("d1") != nil || len(m.nbdSrv.Exports()) != 0 || len(m.iscsiSrv.Targets()) != 0 {
		t.Fatalf("volume still exported: nbd %v iscsi %v", m.nbdSrv.Exports(), m.iscsiSrv.Targets())
	}
	// Unknown: idempotent success. Unattached: no force needed.
	if _, err := svc.DeleteVolume(ctx, &blockpb.DeleteLocalVolumeRequest{Name: "d1"}); err != nil {
		t.Fatalf("delete of an unknown volume: %v", err)
	}
	allocate(t, m, "d2", 1<<20, epochConfig(1, testServerID))
	if _, err := svc.DeleteVolume(ctx, &blockpb.DeleteLocalVolumeRequest{Name: "d2"}); err != nil {
		t.Fatalf("delete of an unattached volume: %v", err)
	}
	// A deleted name can be allocated again.
	allocate(t, m, "d1", 2<<20, epochConfig(5, testServerID))
}

// TestMeteredDeviceIsTheVolume: the device the frontends serve passes
// errors through unchanged (frontends branch on them).
func TestMeteredDeviceIsTheVolume(t *testing.T) {
	m := startManager(t, "", nil)
	allocate(t, m, "e", 1<<20, epochConfig(1, testServerID))
	d := m.lookup("e").dev
	if err := d.WriteAt(make([]byte, 4096), 0, false); !errors.Is(err, blockdev.ErrReadOnly) {
		t.Fatalf("fenced write: %v", err)
	}
	if err := d.ReadAt(make([]byte, 512), 0); !errors.Is(err, blockdev.ErrUnaligned) {
		t.Fatalf("unaligned read: %v", err)
	}
	var _ blockdev.Device = d
}

// TestAdvertisedAddresses: listeners on an unspecified host advertise the
// host of the gRPC address; explicit endpoints are kept.
func TestAdvertisedAddresses(t *testing.T) {
	m := startManager(t, "", func(o *Options) {
		o.NBDAddr = "0.0.0.0:0"
		o.ISCSIAddr = "127.0.0.1:0"
		o.ReplAddr = ":0"
		o.Endpoints = &blockpb.ServerEndpoints{GrpcAddress: "127.0.0.1:18080", IscsiAddress: "portal.example:3260"}
	})
	ep := m.Endpoints()
	if !strings.HasPrefix(ep.GetNbdAddress(), "127.0.0.1:") || strings.HasSuffix(ep.GetNbdAddress(), ":0") {
		t.Fatalf("nbd address %q", ep.GetNbdAddress())
	}
	if ep.GetIscsiAddress() != "portal.example:3260" || ep.GetServerId() != testServerID ||
		!strings.HasPrefix(ep.GetReplAddress(), "127.0.0.1:") || strings.HasSuffix(ep.GetReplAddress(), ":0") {
		t.Fatalf("endpoints %v", ep)
	}
	nc, err := net.DialTimeout("tcp", ep.GetNbdAddress(), 5*time.Second)
	if err != nil {
		t.Fatalf("advertised NBD address does not answer: %v", err)
	}
	nc.Close()
}

package blockmaster

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

func testRecord(name string, epoch uint64) *volumeRecord {
	return &volumeRecord{
		spec: &blockpb.VolumeSpec{Name: name, SizeBytes: 1 << 20, BlockSize: 4096, WalSizeBytes: 1 << 20, ReplicationFactor: 1, Durability: blockpb.Durability_DURABILITY_SYNC},
		config: &blockpb.EpochConfig{Epoch: epoch, PrimaryServerId: "s1", Durability: blockpb.Durability_DURABILITY_SYNC,
			Members: []*blockpb.Member{{Server: &blockpb.ServerEndpoints{ServerId: "s1", GrpcAddress: "127.0.0.1:1"}, Role: blockpb.Role_ROLE_PRIMARY}}},
		firstEpoch:    epoch,
		createdUnixMs: 1234,
	}
}

func mustLoad(t *testing.T, dir string) *registry {
	t.Helper()
	r, err := loadRegistry(dir)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	return r
}

func TestRegistryRoundTrip(t *testing.T) {
	dir := t.TempDir()
	r := mustLoad(t, dir)
	if len(r.volumes) != 0 {
		t.Fatalf("fresh registry has %d volumes", len(r.volumes))
	}
	if err := r.add(testRecord("b", 1)); err != nil {
		t.Fatal(err)
	}
	if err := r.add(testRecord("a", 1)); err != nil {
		t.Fatal(err)
	}
	if err := r.add(testRecord("a", 1)); err == nil {
		t.Fatal("second add of the same name succeeded")
	}
	cfg2 := proto.Clone(r.get("a").config).(*blockpb.EpochConfig)
	cfg2.Epoch = 2
	cfg2.Reason = "test"
	if err := r.setConfig("a", cfg2); err != nil {
		t.Fatal(err)
	}

	r2 := mustLoad(t, dir)
	if got := r2.names(); strings.Join(got, ",") != "a,b" {
		t.Fatalf("names after reload %v", got)
	}
	for _, n := range r.names() {
		a, b := r.get(n), r2.get(n)
		if !proto.Equal(a.spec, b.spec) || !proto.Equal(a.config, b.config) || a.firstEpoch != b.firstEpoch || a.createdUnixMs != b.createdUnixMs || len(a.history) != len(b.history) {
			t.Fatalf("volume %q differs after reload:\n%v\n%v", n, a.config, b.config)
		}
	}
	if h := r2.get("a").history; len(h) != 1 || h[0].Epoch != 1 {
		t.Fatalf("history after reload %v", h)
	}
}

func TestRegistryLeftoverTempFilesIgnored(t *testing.T) {
	dir := t.TempDir()
	r := mustLoad(t, dir)
	if err := r.add(testRecord("vol1", 1)); err != nil {
		t.Fatal(err)
	}
	// A crash during a later save leaves a torn or garbage temp file.
	good, err := os.ReadFile(filepath.Join(dir, registryFile))
	if err != nil {
		t.Fatal(err)
	}
	leftovers := map[string][]byte{
		registryTempPrefix + "123":  good[:len(good)/2],                  // torn copy
		registryTempPrefix + "456":  []byte("\x00\xff garbage \x01"),     // garbage
		registryTempPrefix + "789":  append([]byte(nil), good[:0]...),    // empty
		registryTempPrefix + "full": []byte(`{"format":1,"volumes":[]}`), // a complete but unrenamed save
	}
	for n, b := range leftovers {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r2 := mustLoad(t, dir)
	if r2.get("vol1") == nil || len(r2.volumes) != 1 {
		t.Fatalf("reload saw %v, want just vol1", r2.names())
	}
	for n := range leftovers {
		if _, err := os.Stat(filepath.Join(dir, n)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("leftover %s not removed: %v", n, err)
		}
	}

	// A torn temp file with no registry at all: a fresh, empty registry.
	dir2 := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir2, registryTempPrefix+"1"), good[:10], 0o644); err != nil {
		t.Fatal(err)
	}
	if r3 := mustLoad(t, dir2); len(r3.volumes) != 0 {
		t.Fatalf("registry from a temp file: %v", r3.names())
	}
}

func TestRegistryCorruptFileRefused(t *testing.T) {
	valid := func() []byte {
		dir := t.TempDir()
		r := mustLoad(t, dir)
		if err := r.add(testRecord("vol1", 3)); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, registryFile))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}()
	cases := map[string]string{
		"garbage":        "\x00\x01 not json",
		"torn":           string(valid[:len(valid)/2]),
		"empty":          "",
		"wrong format":   `{"format":99,"volumes":[]}`,
		"bad name":       `{"format":1,"volumes":[{"spec":{"name":"BAD"},"config":{"epoch":"1"},"first_epoch":1}]}`,
		"epoch zero":     `{"format":1,"volumes":[{"spec":{"name":"a"},"config":{"epoch":"0"},"first_epoch":1}]}`,
		"duplicate":      `{"format":1,"volumes":[{"spec":{"name":"a"},"config":{"epoch":"1"},"first_epoch":1},{"spec":{"name":"a"},"config":{"epoch":"1"},"first_epoch":1}]}`,
		"below tomb":     `{"format":1,"volumes":[{"spec":{"name":"a"},"config":{"epoch":"2"},"first_epoch":2}],"tombstones":{"a":5}}`,
		"bad spec field": `{"format":1,"volumes":[{"spec":{"name":"a","nosuch":1},"config":{"epoch":"1"},"first_epoch":1}]}`,
	}
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, registryFile), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := loadRegistry(dir)
			if !errors.Is(err, ErrCorruptRegistry) {
				t.Fatalf("load of %s: %v, want ErrCorruptRegistry", name, err)
			}
		})
	}
}

func TestNewRefusesCorruptRegistry(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "block"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "block", registryFile), []byte("{torn"), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := New(Options{Dir: dir, DialVolume: (&harness{}).dial})
	if !errors.Is(err, ErrCorruptRegistry) {
		if m != nil {
			m.Close()
		}
		t.Fatalf("New on a corrupt registry: %v, want ErrCorruptRegistry", err)
	}
}

func TestRegistryEpochsNeverGoBack(t *testing.T) {
	dir := t.TempDir()
	r := mustLoad(t, dir)
	if got := r.nextFirstEpoch("v"); got != 1 {
		t.Fatalf("fresh name starts at %d, want 1", got)
	}
	if err := r.add(testRecord("v", 1)); err != nil {
		t.Fatal(err)
	}
	for _, e := range []uint64{2, 3, 7} {
		c := proto.Clone(r.get("v").config).(*blockpb.EpochConfig)
		c.Epoch = e
		if err := r.setConfig("v", c); err != nil {
			t.Fatalf("epoch %d: %v", e, err)
		}
	}
	r = mustLoad(t, dir) // restart
	if got := r.get("v").config.Epoch; got != 7 {
		t.Fatalf("epoch after reload %d, want 7", got)
	}
	for _, e := range []uint64{0, 1, 6, 7} {
		c := proto.Clone(r.get("v").config).(*blockpb.EpochConfig)
		c.Epoch = e
		if err := r.setConfig("v", c); !errors.Is(err, ErrStaleEpoch) {
			t.Fatalf("setConfig epoch %d after 7: %v, want ErrStaleEpoch", e, err)
		}
	}
	if got := r.get("v").config.Epoch; got != 7 {
		t.Fatalf("refused setConfig changed the epoch to %d", got)
	}
	if err := r.remove("v"); err != nil {
		t.Fatal(err)
	}
	r = mustLoad(t, dir) // restart after delete
	if r.get("v") != nil {
		t.Fatal("deleted volume back after reload")
	}
	if got := r.nextFirstEpoch("v"); got != 8 {
		t.Fatalf("re-created name would start at %d, want 8", got)
	}
	if err := r.add(testRecord("v", 5)); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("add below the tombstone: %v, want ErrStaleEpoch", err)
	}
	if err := r.add(testRecord("v", 8)); err != nil {
		t.Fatal(err)
	}
	r = mustLoad(t, dir)
	if got := r.get("v"); got == nil || got.config.Epoch != 8 || got.firstEpoch != 8 {
		t.Fatalf("re-created volume after reload: %+v", got)
	}
}

func TestRegistryHistoryBounded(t *testing.T) {
	r := mustLoad(t, t.TempDir())
	if err := r.add(testRecord("v", 1)); err != nil {
		t.Fatal(err)
	}
	for e := uint64(2); e <= maxHistory+10; e++ {
		c := proto.Clone(r.get("v").config).(*blockpb.EpochConfig)
		c.Epoch = e
		if err := r.setConfig("v", c); err != nil {
			t.Fatal(err)
		}
	}
	h := r.get("v").history
	if len(h) != maxHistory || h[len(h)-1].Epoch != maxHistory+9 || h[0].Epoch != 10 {
		t.Fatalf("history: %d entries, first %d last %d", len(h), h[0].Epoch, h[len(h)-1].Epoch)
	}
}

// A save that fails changes nothing, in memory or on disk.
func TestRegistrySaveFailureChangesNothing(t *testing.T) {
	dir := t.TempDir()
	r := mustLoad(t, dir)
	if err := r.add(testRecord("keep", 1)); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, registryFile))
	r.dir = filepath.Join(dir, "gone") // every write now fails
	if err := r.add(testRecord("new", 1)); err == nil {
		t.Fatal("add with a failing save succeeded")
	}
	if r.get("new") != nil {
		t.Fatal("failed add left the volume in memory")
	}
	c := proto.Clone(r.get("keep").config).(*blockpb.EpochConfig)
	c.Epoch = 2
	if err := r.setConfig("keep", c); err == nil {
		t.Fatal("setConfig with a failing save succeeded")
	}
	if got := r.get("keep").config.Epoch; got != 1 {
		t.Fatalf("failed setConfig left epoch %d in memory", got)
	}
	if err := r.remove("keep"); err == nil {
		t.Fatal("remove with a failing save succeeded")
	}
	if r.get("keep") == nil || r.tombstones["keep"] != 0 {
		t.Fatal("failed remove changed memory")
	}
	after, _ := os.ReadFile(filepath.Join(dir, registryFile))
	if string(before) != string(after) {
		t.Fatal("registry file changed by failed saves")
	}
}

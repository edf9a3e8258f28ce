package cluster

import (
	"testing"
	"time"

	"github.com/seaweedfs/seaweedfs/weed/command"
	flag "github.com/seaweedfs/seaweedfs/weed/util/fla9"
)

// findCommand returns upstream's command with its flags back at their
// defaults (tests share the process-wide command list and parse into it).
func findCommand(t *testing.T, name string) *command.Command {
	t.Helper()
	for _, c := range command.Commands {
		if c.Name() == name {
			c.Flag.VisitAll(func(f *flag.Flag) {
				if err := f.Value.Set(f.DefValue); err != nil {
					t.Fatalf("%s: reset -%s: %v", name, f.Name, err)
				}
			})
			return c
		}
	}
	t.Fatalf("upstream command %q missing", name)
	return nil
}

// TestInstallKeepsUpstreamFlags replaces the Run of upstream's commands and
// reads every upstream flag the launchers need: an upstream upgrade that
// renames or retypes one fails here.
func TestInstallKeepsUpstreamFlags(t *testing.T) {
	if err := Install(command.Commands, Hooks{}); err != nil {
		t.Fatal(err)
	}
	if err := Install(command.Commands, Hooks{}); err != nil { // a second install must not redefine flags
		t.Fatal(err)
	}

	master := findCommand(t, "master")
	if err := master.Flag.Parse([]string{"-port=19333", "-mdir=/tmp/x", "-peers=none", "-electionTimeout=3s"}); err != nil {
		t.Fatal(err)
	}
	mc, err := masterConfigFromFlags(&master.Flag)
	if err != nil {
		t.Fatal(err)
	}
	if mc.Port != 19333 || mc.MetaDir != "/tmp/x" || mc.Peers != "none" || mc.ElectionTimeout != 3*time.Second ||
		mc.VolumeSizeLimitMB == 0 || mc.GarbageThreshold != 0.3 || !mc.Telemetry || mc.VacuumIntervalSeconds != 840 {
		t.Errorf("master config %+v", mc)
	}

	volume := findCommand(t, "volume")
	if err := volume.Flag.Parse([]string{"-port=18080", "-dir=/a,/b", "-max=3", "-master=m1:9333,m2:9333",
		"-block.dir=/blk", "-block.nbd=:11000", "-block.snapshotInterval=1h", "-rack=r2"}); err != nil {
		t.Fatal(err)
	}
	vc, err := volumeConfigFromFlags(&volume.Flag)
	if err != nil {
		t.Fatal(err)
	}
	if vc.Port != 18080 || vc.Dirs != "/a,/b" || vc.Max != "3" || vc.Masters != "m1:9333,m2:9333" ||
		vc.BlockDir != "/blk" || vc.BlockNBD != ":11000" || vc.BlockISCSI != ":3260" || vc.Rack != "r2" ||
		vc.ReadMode != "proxy" || vc.FsyncBatchWait != 500*time.Microsecond || vc.PreStopSeconds != 10 ||
		vc.BlockSnapshotInterval != time.Hour {
		t.Errorf("volume config %+v", vc)
	}

	server := findCommand(t, "server")
	if err := server.Flag.Parse([]string{"-dir=/d1", "-master.port=19334", "-volume.port=18081",
		"-volume.block.dir=/blk2", "-volume.block.snapshotInterval=30m", "-rack=r3"}); err != nil {
		t.Fatal(err)
	}
	smc, svc, err := serverConfigs(&server.Flag)
	if err != nil {
		t.Fatal(err)
	}
	if smc.Port != 19334 || smc.MetaDir != "/d1" || svc.Port != 18081 || svc.Dirs != "/d1" ||
		svc.BlockDir != "/blk2" || svc.Rack != "r3" || svc.Max != "8" || svc.BlockSnapshotInterval != 30*time.Minute {
		t.Errorf("server configs %+v %+v", smc, svc)
	}
}

func TestMasterPeers(t *testing.T) {
	self, peers, err := masterPeers("10.0.0.1", 9333, 19333, "none")
	if err != nil || self != "10.0.0.1:9333.19333" || len(peers) != 1 || peers[0] != self {
		t.Fatalf("none: %v %v %v", self, peers, err)
	}
	_, peers, err = masterPeers("10.0.0.1", 9333, 19333, "10.0.0.1:9333,10.0.0.2:9333,10.0.0.3:9333,10.0.0.2:9333")
	if err != nil || len(peers) != 3 {
		t.Fatalf("three: %v %v", peers, err)
	}
	if peers[0] != "10.0.0.1:9333.19333" || peers[1] != "10.0.0.2:9333.19333" {
		t.Errorf("peers not normalized: %v", peers)
	}
	if _, _, err := masterPeers("10.0.0.1", 9333, 19333, "10.0.0.2:9333"); err == nil {
		t.Errorf("two masters accepted")
	}
	if _, peers, err := masterPeers("10.0.0.1", 9333, 19333, ""); err != nil || len(peers) != 1 {
		t.Errorf("empty peers: %v %v", peers, err)
	}
}

func TestVolumeTagsAndPerDir(t *testing.T) {
	if got := volumeTags("fast:ssd", 2); len(got) != 2 || len(got[1]) != 2 {
		t.Errorf("one entry for two dirs: %v", got)
	}
	if got := volumeTags("a,b", 3); len(got[2]) != 0 || got[1][0] != "b" {
		t.Errorf("per dir: %v", got)
	}
	if _, err := perDir([]int32{1, 2}, 3, "-max"); err == nil {
		t.Errorf("2 values for 3 dirs accepted")
	}
	if v, err := perDir([]int32{7}, 3, "-max"); err != nil || len(v) != 3 || v[2] != 7 {
		t.Errorf("repeat: %v %v", v, err)
	}
}

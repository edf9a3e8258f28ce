package cluster

import (
	"fmt"
	"os"

	"github.com/seaweedfs/seaweedfs/weed/command"
	"github.com/seaweedfs/seaweedfs/weed/glog"
	"github.com/seaweedfs/seaweedfs/weed/stats"
	"github.com/seaweedfs/seaweedfs/weed/util"
	"github.com/seaweedfs/seaweedfs/weed/util/grace"
)

// Hooks are the block plugins the launchers install; a nil factory runs
// the plain upstream server.
type Hooks struct {
	Master MasterPluginFactory
	Volume VolumePluginFactory
}

// Install replaces the Run of upstream's master, volume and server
// commands in cmds with this package's launchers, keeping their flag sets
// and adding the block flags. It fails when one of them is missing (an
// upstream upgrade renamed it). The commands are shared pointers, so a
// second Install (of the same list or a clone) changes nothing.
func Install(cmds []*command.Command, hooks Hooks) error {
	find := func(name string) *command.Command {
		for _, c := range cmds {
			if c.Name() == name {
				return c
			}
		}
		return nil
	}
	master, volume, server := find("master"), find("volume"), find("server")
	if master == nil || volume == nil || server == nil {
		return fmt.Errorf("upstream commands master/volume/server not all found")
	}
	if volume.Flag.Lookup(flagBlockDir) != nil {
		return nil // installed already
	}
	addBlockVolumeFlags(&volume.Flag, "")
	addBlockVolumeFlags(&server.Flag, "volume.")
	master.Run = func(cmd *command.Command, _ []string) bool { return runMaster(cmd, hooks) }
	volume.Run = func(cmd *command.Command, _ []string) bool { return runVolume(cmd, hooks) }
	upstreamServer := server.Run
	server.Run = func(cmd *command.Command, args []string) bool {
		return runServer(cmd, args, hooks, upstreamServer)
	}
	return nil
}

// fatal ends a launcher: upstream's launchers glog.Fatal on start errors.
func fatal(format string, args ...any) bool {
	glog.Errorf(format, args...)
	fmt.Fprintf(os.Stderr, "weed: "+format+"\n", args...)
	glog.Flush()
	os.Exit(1)
	return false
}

// metricsIP is upstream's choice of metrics listen ip: -metricsIp, else
// -ip.bind, else -ip.
func metricsIP(ip, bind, explicit string) string {
	switch {
	case explicit != "":
		return explicit
	case bind != "":
		return bind
	}
	return ip
}

func runMaster(cmd *command.Command, hooks Hooks) bool {
	r := &flagValues{fs: &cmd.Flag}
	if r.bool("debug") {
		grace.StartDebugServer(r.int("debug.port"))
	}
	util.LoadSecurityConfiguration()
	util.LoadConfiguration("master", false)
	c, err := masterConfigFromFlags(&cmd.Flag)
	if err != nil {
		return fatal("master flags: %v", err)
	}
	if v := util.GetViper().GetString("master.mdir"); v != "" {
		c.MetaDir = v
	}
	grace.SetupProfiling(util.ResolvePath(r.str("cpuprofile")), util.ResolvePath(r.str("memprofile")))
	c.Block = hooks.Master
	ip := metricsIP(c.IP, c.BindIP, r.str("metricsIp"))
	go stats.StartMetricsServer(ip, r.int("metricsPort"))
	go stats.LoopPushingMetric("masterServer", util.JoinHostPort(c.IP, c.Port), c.MetricsAddress, c.MetricsIntervalSec)
	m, err := StartMaster(c)
	if err != nil {
		return fatal("master: %v", err)
	}
	grace.OnInterrupt(m.Stop)
	grace.OnReload(m.Server.Reload)
	select {}
}

func runVolume(cmd *command.Command, hooks Hooks) bool {
	r := &flagValues{fs: &cmd.Flag}
	if r.bool("debug") {
		grace.StartDebugServer(r.int("debug.port"))
	}
	util.LoadSecurityConfiguration()
	util.LoadConfiguration("volume", false)
	c, err := volumeConfigFromFlags(&cmd.Flag)
	if err != nil {
		return fatal("volume flags: %v", err)
	}
	if !c.Pprof {
		grace.SetupProfiling(util.ResolvePath(r.str("cpuprofile")), util.ResolvePath(r.str("memprofile")))
	}
	c.Block = hooks.Volume
	go stats.StartMetricsServer(metricsIP(c.IP, c.BindIP, r.str("metricsIp")), r.int("metricsPort"))
	v, err := StartVolume(c)
	if err != nil {
		return fatal("volume: %v", err)
	}
	grace.OnReload(v.Server.LoadNewVolumes)
	grace.OnReload(v.Server.Reload)
	grace.OnInterrupt(v.Stop)
	select {}
}

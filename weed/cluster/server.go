package cluster

import (
	"strings"

	"github.com/seaweedfs/seaweedfs/weed/command"
	"github.com/seaweedfs/seaweedfs/weed/pb"
	"github.com/seaweedfs/seaweedfs/weed/stats"
	"github.com/seaweedfs/seaweedfs/weed/util"
	flag "github.com/seaweedfs/seaweedfs/weed/util/fla9"
	"github.com/seaweedfs/seaweedfs/weed/util/grace"
)

// serverAddOns are the `weed server` components this package does not
// start itself; when one is requested, upstream's own Run starts them
// (with its master and volume server switched off, pointed at ours).
var serverAddOns = []string{"filer", "s3", "sftp", "iam", "webdav", "mq.broker", "mq.agent"}

// serverConfigs reads upstream's `weed server` flag set into the master
// and volume configs of the servers it runs in this process.
func serverConfigs(fs *flag.FlagSet) (MasterConfig, VolumeConfig, error) {
	r := &flagValues{fs: fs}
	ip, bind := r.str("ip"), r.str("ip.bind")
	dirs := util.ResolveCommaSeparatedPaths(r.str("dir"))
	mc := MasterConfig{
		IP:                            ip,
		BindIP:                        bind,
		Port:                          r.int("master.port"),
		GrpcPort:                      r.int("master.port.grpc"),
		MetaDir:                       r.str("master.dir"),
		Peers:                         r.str("master.peers"),
		VolumeSizeLimitMB:             r.uint("master.volumeSizeLimitMB"),
		FileSizeLimitMB:               r.int("volume.fileSizeLimitMB"),
		VolumePreallocate:             r.bool("master.volumePreallocate"),
		MaxParallelVacuumPerServer:    r.int("master.maxParallelVacuumPerServer"),
		VacuumIntervalSeconds:         r.int("master.vacuumIntervalSeconds"),
		VacuumDeleteEmptyAfterSeconds: r.int("master.vacuumDeleteEmptyAfterSeconds"),
		DefaultReplication:            r.str("master.defaultReplication"),
		GarbageThreshold:              r.float("master.garbageThreshold"),
		WhiteList:                     util.StringSplit(r.str("whiteList"), ","),
		DisableHTTP:                   r.bool("disableHttp"),
		MetricsAddress:                r.str("master.metrics.address"),
		MetricsIntervalSec:            r.int("master.metrics.intervalSeconds"),
		ResumeState:                   r.bool("master.resumeState"),
		HeartbeatInterval:             r.duration("master.heartbeatInterval"),
		ElectionTimeout:               r.duration("master.electionTimeout"),
		RaftHashicorp:                 r.bool("master.raftHashicorp"),
		TelemetryURL:                  r.str("master.telemetry.url"),
		Telemetry:                     r.bool("master.telemetry"),
	}
	if mc.MetaDir == "" {
		mc.MetaDir = strings.Split(dirs, ",")[0]
	}
	mc.MetaDir = util.ResolvePath(mc.MetaDir)
	vc := VolumeConfig{
		IP:                        ip,
		BindIP:                    bind,
		Port:                      r.int("volume.port"),
		GrpcPort:                  r.int("volume.port.grpc"),
		PublicPort:                r.int("volume.port.public"),
		ID:                        r.str("volume.id"),
		PublicURL:                 r.str("volume.publicUrl"),
		PreStopSeconds:            r.int("volume.preStopSeconds"),
		IdleTimeoutSeconds:        r.int("idleTimeout"),
		DataCenter:                r.str("dataCenter"),
		Rack:                      r.str("rack"),
		Index:                     r.str("volume.index"),
		DiskType:                  r.str("volume.disk"),
		Tags:                      r.str("volume.tags"),
		FixJpgOrientation:         r.bool("volume.images.fix.orientation"),
		ReadMode:                  r.str("volume.readMode"),
		CompactionMBps:            r.int("volume.compactionMBps"),
		MaintenanceMBps:           r.int("volume.maintenanceMBps"),
		CompactionMaxParallel:     r.int("volume.compactionMaxParallelCommits"),
		FileSizeLimitMB:           r.int("volume.fileSizeLimitMB"),
		LevelDBTimeout:            r.int64("volume.index.leveldbTimeout"),
		ConcurrentUploadLimitMB:   r.int("volume.concurrentUploadLimitMB"),
		ConcurrentDownloadLimitMB: r.int("volume.concurrentDownloadLimitMB"),
		Pprof:                     r.bool("volume.pprof"),
		IdxDir:                    r.str("volume.dir.idx"),
		InflightUploadTimeout:     r.duration("volume.inflightUploadDataTimeout"),
		InflightDownloadTimeout:   r.duration("volume.inflightDownloadDataTimeout"),
		HasSlowRead:               r.bool("volume.hasSlowRead"),
		ReadBufferSizeMB:          r.int("volume.readBufferSizeMB"),
		AllowUntrustedRemote:      r.bool("volume.allowUntrustedRemoteEndpoints"),
		FsyncMinBatchBytes:        r.int64("volume.fsyncMinBatchBytes"),
		FsyncMinBatchRequests:     r.int("volume.fsyncMinBatchRequests"),
		FsyncBatchWait:            r.duration("volume.fsyncBatchWait"),
		Dirs:                      dirs,
		Max:                       r.str("volume.max"),
		WhiteList:                 r.str("whiteList"),
		MinFreeSpacePercent:       r.str("volume.minFreeSpacePercent"),
		MinFreeSpace:              r.str("volume.minFreeSpace"),
		BlockDir:                  r.str("volume." + flagBlockDir),
		BlockNBD:                  r.str("volume." + flagBlockNBD),
		BlockISCSI:                r.str("volume." + flagBlockISCSI),
		BlockRepl:                 r.str("volume." + flagBlockRepl),
		BlockSnapshotInterval:     r.duration("volume." + flagBlockSnapshotInterval),
	}
	return mc, vc, r.err
}

// runServer is `weed server`: our master and volume server in this
// process (with block support), then upstream's Run for any filer, S3,
// ... component requested, pointed at our master.
func runServer(cmd *command.Command, args []string, hooks Hooks, upstream func(*command.Command, []string) bool) bool {
	r := &flagValues{fs: &cmd.Flag}
	startMaster, startVolume := r.bool("master"), r.bool("volume")
	addOns := false
	for _, name := range serverAddOns {
		if r.bool(name) {
			addOns = true
		}
	}
	if r.err != nil {
		return fatal("server flags: %v", r.err)
	}
	if !startMaster && !startVolume {
		return upstream(cmd, args)
	}
	util.LoadSecurityConfiguration()
	util.LoadConfiguration("master", false)
	util.LoadConfiguration("volume", false)
	mc, vc, err := serverConfigs(&cmd.Flag)
	if err != nil {
		return fatal("server flags: %v", err)
	}
	if r.bool("debug") {
		grace.StartDebugServer(r.int("debug.port"))
	}
	grace.SetupProfiling(util.ResolvePath(r.str("cpuprofile")), util.ResolvePath(r.str("memprofile")))

	var masters string
	if startMaster {
		self, peers, err := masterPeers(mc.IP, mc.Port, orDefault(mc.GrpcPort, mc.Port+10000), mc.Peers)
		if err != nil {
			return fatal("server: %v", err)
		}
		_ = self
		masters = strings.Join(pb.ToAddressStrings(peers), ",")
		if len(peers) == 1 && startVolume {
			mc.ExpectedReporterAddr = util.JoinHostPort(mc.IP, vc.Port)
		}
		mc.Block = hooks.Master
		m, err := StartMaster(mc)
		if err != nil {
			return fatal("server master: %v", err)
		}
		grace.OnInterrupt(m.Stop)
		grace.OnReload(m.Server.Reload)
	} else {
		masters = mc.Peers
		if masters == "" || singleMaster(masters) {
			return fatal("server: -master=false needs -master.peers with the masters' addresses")
		}
	}
	if startVolume {
		vc.Masters = masters
		vc.Block = hooks.Volume
		v, err := StartVolume(vc)
		if err != nil {
			return fatal("server volume: %v", err)
		}
		grace.OnReload(v.Server.LoadNewVolumes)
		grace.OnReload(v.Server.Reload)
		grace.OnInterrupt(v.Stop) // LIFO: volume stops before the master
	}
	if addOns {
		// Upstream starts the metrics server and the add-ons, then blocks.
		for name, val := range map[string]string{"master": "false", "volume": "false", "master.peers": masters} {
			if err := cmd.Flag.Set(name, val); err != nil {
				return fatal("server: set -%s: %v", name, err)
			}
		}
		return upstream(cmd, args)
	}
	ip := metricsIP(mc.IP, mc.BindIP, r.str("metricsIp"))
	go stats.StartMetricsServer(ip, r.int("metricsPort"))
	select {}
}

func orDefault(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

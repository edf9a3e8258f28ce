package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	httppprof "net/http/pprof"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/seaweedfs/seaweedfs/weed/glog"
	"github.com/seaweedfs/seaweedfs/weed/pb"
	"github.com/seaweedfs/seaweedfs/weed/pb/volume_server_pb"
	"github.com/seaweedfs/seaweedfs/weed/security"
	weed_server "github.com/seaweedfs/seaweedfs/weed/server"
	"github.com/seaweedfs/seaweedfs/weed/server/constants"
	"github.com/seaweedfs/seaweedfs/weed/stats"
	"github.com/seaweedfs/seaweedfs/weed/storage"
	"github.com/seaweedfs/seaweedfs/weed/storage/types"
	"github.com/seaweedfs/seaweedfs/weed/util"
	flag "github.com/seaweedfs/seaweedfs/weed/util/fla9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/reflection"
)

// Names of the block flags added to `weed volume` and `weed server`.
const (
	flagBlockDir   = "block.dir"
	flagBlockNBD   = "block.nbd"
	flagBlockISCSI = "block.iscsi"
	flagBlockRepl  = "block.repl"
	// flagBlockSnapshotInterval: how often each block primary takes a
	// base snapshot (0: never).
	flagBlockSnapshotInterval = "block.snapshotInterval"
)

// httpStopTimeout bounds the graceful stop of a volume server's HTTP.
const httpStopTimeout = 30 * time.Second

// VolumeConfig is everything a volume server launch needs: upstream's
// `weed volume` flags, by meaning, plus the block flags and hooks.
type VolumeConfig struct {
	IP, BindIP                 string
	Port, GrpcPort, PublicPort int // 0: Port+10000 / Port
	ID, PublicURL              string
	Masters                    string // comma-separated master addresses
	PreStopSeconds             int
	IdleTimeoutSeconds         int
	DataCenter, Rack           string
	Index                      string // memory | leveldb | leveldbMedium | leveldbLarge
	DiskType                   string
	Tags                       string
	FixJpgOrientation          bool
	ReadMode                   string
	CompactionMBps             int
	MaintenanceMBps            int
	CompactionMaxParallel      int
	FileSizeLimitMB            int
	LevelDBTimeout             int64
	ConcurrentUploadLimitMB    int
	ConcurrentDownloadLimitMB  int
	Pprof                      bool
	IdxDir                     string
	InflightUploadTimeout      time.Duration
	InflightDownloadTimeout    time.Duration
	HasSlowRead                bool
	ReadBufferSizeMB           int
	AllowUntrustedRemote       bool
	FsyncMinBatchBytes         int64
	FsyncMinBatchRequests      int
	FsyncBatchWait             time.Duration
	Dirs                       string // -dir, comma-separated
	Max                        string // -max, comma-separated
	WhiteList                  string
	MinFreeSpacePercent        string
	MinFreeSpace               string

	// Block flags: BlockDir "" leaves block support off.
	BlockDir, BlockNBD, BlockISCSI, BlockRepl string
	BlockSnapshotInterval                     time.Duration
	// Block builds the block side; nil or BlockDir "": none.
	Block VolumePluginFactory
}

// volumeConfigFromFlags reads upstream's `weed volume` flag set (with our
// block flags added to it).
func volumeConfigFromFlags(fs *flag.FlagSet) (VolumeConfig, error) {
	r := &flagValues{fs: fs}
	c := VolumeConfig{
		IP:                        r.str("ip"),
		BindIP:                    r.str("ip.bind"),
		Port:                      r.int("port"),
		GrpcPort:                  r.int("port.grpc"),
		PublicPort:                r.int("port.public"),
		ID:                        r.str("id"),
		PublicURL:                 r.str("publicUrl"),
		Masters:                   r.str("master"),
		PreStopSeconds:            r.int("preStopSeconds"),
		IdleTimeoutSeconds:        r.int("idleTimeout"),
		DataCenter:                r.str("dataCenter"),
		Rack:                      r.str("rack"),
		Index:                     r.str("index"),
		DiskType:                  r.str("disk"),
		Tags:                      r.str("tags"),
		FixJpgOrientation:         r.bool("images.fix.orientation"),
		ReadMode:                  r.str("readMode"),
		CompactionMBps:            r.int("compactionMBps"),
		MaintenanceMBps:           r.int("maintenanceMBps"),
		CompactionMaxParallel:     r.int("compactionMaxParallelCommits"),
		FileSizeLimitMB:           r.int("fileSizeLimitMB"),
		LevelDBTimeout:            r.int64("index.leveldbTimeout"),
		ConcurrentUploadLimitMB:   r.int("concurrentUploadLimitMB"),
		ConcurrentDownloadLimitMB: r.int("concurrentDownloadLimitMB"),
		Pprof:                     r.bool("pprof"),
		IdxDir:                    r.str("dir.idx"),
		InflightUploadTimeout:     r.duration("inflightUploadDataTimeout"),
		InflightDownloadTimeout:   r.duration("inflightDownloadDataTimeout"),
		HasSlowRead:               r.bool("hasSlowRead"),
		ReadBufferSizeMB:          r.int("readBufferSizeMB"),
		AllowUntrustedRemote:      r.bool("volume.allowUntrustedRemoteEndpoints"),
		FsyncMinBatchBytes:        r.int64("fsyncMinBatchBytes"),
		FsyncMinBatchRequests:     r.int("fsyncMinBatchRequests"),
		FsyncBatchWait:            r.duration("fsyncBatchWait"),
		Dirs:                      r.str("dir"),
		Max:                       r.str("max"),
		WhiteList:                 r.str("whiteList"),
		MinFreeSpacePercent:       r.str("minFreeSpacePercent"),
		MinFreeSpace:              r.str("minFreeSpace"),
		BlockDir:                  r.str(flagBlockDir),
		BlockNBD:                  r.str(flagBlockNBD),
		BlockISCSI:                r.str(flagBlockISCSI),
		BlockRepl:                 r.str(flagBlockRepl),
		BlockSnapshotInterval:     r.duration(flagBlockSnapshotInterval),
	}
	if mserver := r.str("mserver"); mserver != "" {
		c.Masters = mserver // upstream's deprecated alias wins when set
	}
	return c, r.err
}

// addBlockVolumeFlags adds the block flags to a volume (or server) flag set.
func addBlockVolumeFlags(fs *flag.FlagSet, prefix string) {
	fs.String(prefix+flagBlockDir, "", "directory of block volume files; empty disables block volumes on this server")
	fs.String(prefix+flagBlockNBD, ":10809", "NBD listen address of the block volumes (host:port); empty disables NBD")
	fs.String(prefix+flagBlockISCSI, ":3260", "iSCSI portal listen address of the block volumes (host:port); empty disables iSCSI")
	fs.String(prefix+flagBlockRepl, ":10810", "block replication listen address (host:port)")
	fs.Duration(prefix+flagBlockSnapshotInterval, 0, "how often each block volume this server is primary of takes a base snapshot, "+
		"so that a copy too far behind for a catch-up from the WAL is rebuilt from the snapshot plus the WAL after it; "+
		"each snapshot takes up to the volume's allocated size of disk beside the volume file and holds up to half its WAL; "+
		"0 disables snapshots (and deletes existing ones at start)")
}

// Volume is a running volume server: upstream's VolumeServer, its gRPC and
// HTTP servers, and the block side plugged into them.
type Volume struct {
	Server   *weed_server.VolumeServer
	ID       string
	HTTPAddr string // bound host:port
	GRPCAddr string // bound host:port

	preStop    time.Duration
	grpcServer *grpc.Server
	httpServer []*http.Server
	block      VolumePlugin
	stopOnce   sync.Once
}

// volumeLayout is the expanded and validated -dir/-max/-disk/... flags.
type volumeLayout struct {
	dirs      []string
	max       []int32
	minFree   []util.MinFreeSpace
	diskTypes []types.DiskType
	tags      [][]string
}

func expandVolumeLayout(c VolumeConfig) (volumeLayout, error) {
	var l volumeLayout
	var seen []os.FileInfo
	for _, d := range strings.Split(c.Dirs, ",") {
		d = util.ResolvePath(d)
		if err := util.TestFolderWritable(d); err != nil {
			return l, fmt.Errorf("volume -dir %s: %w", d, err)
		}
		fi, err := os.Stat(d)
		if err != nil {
			return l, fmt.Errorf("volume -dir %s: %w", d, err)
		}
		for i, s := range seen {
			if os.SameFile(s, fi) {
				return l, fmt.Errorf("volume -dir %s and %s are the same directory", l.dirs[i], d)
			}
		}
		seen = append(seen, fi)
		l.dirs = append(l.dirs, d)
	}
	n := len(l.dirs)
	for _, s := range strings.Split(c.Max, ",") {
		v, err := strconv.ParseInt(strings.TrimSpace(s), 10, 32)
		if err != nil {
			return l, fmt.Errorf("volume -max %q: %w", s, err)
		}
		l.max = append(l.max, int32(v))
	}
	var err error
	if l.max, err = perDir(l.max, n, "-max"); err != nil {
		return l, err
	}
	// Upstream's parser exits the process on a bad value, as `weed volume` does.
	minFree := util.MustParseMinFreeSpace(c.MinFreeSpace, c.MinFreeSpacePercent)
	if l.minFree, err = perDir(minFree, n, "-minFreeSpace"); err != nil {
		return l, err
	}
	var dts []types.DiskType
	for _, s := range strings.Split(c.DiskType, ",") {
		dts = append(dts, types.ToDiskType(s))
	}
	if l.diskTypes, err = perDir(dts, n, "-disk"); err != nil {
		return l, err
	}
	l.tags = volumeTags(c.Tags, n)
	return l, nil
}

// perDir repeats a single value for every directory, or requires one per
// directory.
func perDir[T any](vals []T, n int, name string) ([]T, error) {
	if len(vals) == 1 && n > 1 {
		for len(vals) < n {
			vals = append(vals, vals[0])
		}
	}
	if len(vals) != n {
		return nil, fmt.Errorf("volume %s: %d values for %d directories", name, len(vals), n)
	}
	return vals, nil
}

// volumeTags splits -tags: one entry applies to every directory, several
// are per directory (colon-separated tags inside an entry).
func volumeTags(arg string, n int) [][]string {
	var entries []string
	if strings.TrimSpace(arg) != "" {
		entries = strings.Split(arg, ",")
	}
	out := make([][]string, n)
	for i := range out {
		switch {
		case len(entries) == 1:
			out[i] = util.NormalizeTagList(strings.Split(entries[0], ":"))
		case i < len(entries):
			out[i] = util.NormalizeTagList(strings.Split(entries[i], ":"))
		default:
			out[i] = []string{}
		}
	}
	return out
}

func needleMapKind(index string) storage.NeedleMapKind {
	switch index {
	case "leveldb":
		return storage.NeedleMapLevelDb
	case "leveldbMedium":
		return storage.NeedleMapLevelDbMedium
	case "leveldbLarge":
		return storage.NeedleMapLevelDbLarge
	}
	return storage.NeedleMapInMemory
}

// diskProbeConfig is upstream's disk I/O probe configuration: its defaults,
// overridden by volume.disk.io.* in volume.toml (there are no flags).
func diskProbeConfig() stats.DiskIOProbeConfig {
	v := util.GetViper()
	dur := func(key string, def time.Duration) time.Duration {
		if v.IsSet(key) {
			return v.GetDuration(key)
		}
		return def
	}
	num := func(key string, def float64) float64 {
		if v.IsSet(key) {
			return v.GetFloat64(key)
		}
		return def
	}
	count := func(key string, def int) int {
		if v.IsSet(key) {
			return v.GetInt(key)
		}
		return def
	}
	hdd := dur("volume.disk.io.slow.latency.hdd", 500*time.Millisecond)
	return stats.DiskIOProbeConfig{
		Enabled:     v.IsSet("volume.disk.io.probe") && v.GetBool("volume.disk.io.probe"),
		Timeout:     dur("volume.disk.io.timeout", 2*time.Second),
		Interval:    dur("volume.disk.io.interval", time.Minute),
		SlowLatency: hdd,
		SlowLatencyByDiskType: map[string]time.Duration{
			types.HddType:  hdd,
			types.SsdType:  dur("volume.disk.io.slow.latency.ssd", 100*time.Millisecond),
			types.NvmeType: dur("volume.disk.io.slow.latency.nvme", 50*time.Millisecond),
		},
		Window:          dur("volume.disk.io.window", time.Minute),
		MinSamples:      count("volume.disk.io.min.samples", 10),
		SlowPercent:     num("volume.disk.io.slow.percent", 20),
		ErrorPercent:    num("volume.disk.io.error.percent", 10),
		MaxStatFailures: count("volume.disk.io.max.stat.failures", 5),
		RecoveryCoef:    num("volume.disk.io.recovery.coef", 0.5),
	}
}

// StartVolume starts a volume server as upstream's `weed volume` does. It
// blocks until a master answers (upstream's constructor waits for one).
func StartVolume(c VolumeConfig) (*Volume, error) {
	layout, err := expandVolumeLayout(c)
	if err != nil {
		return nil, err
	}
	if c.IP == "" {
		c.IP = util.DetectedHostAddress()
	}
	alsoLocalhost := c.BindIP == ""
	if c.BindIP == "" {
		c.BindIP = c.IP
	}
	util.SetOutboundLocalIP(c.BindIP)
	if c.PublicPort == 0 {
		c.PublicPort = c.Port
	}
	if c.GrpcPort == 0 {
		c.GrpcPort = c.Port + 10000
	}
	if c.PublicURL == "" {
		c.PublicURL = util.JoinHostPort(c.IP, c.PublicPort)
	}
	masters := pb.ServerAddresses(c.Masters).ToAddresses()
	if len(masters) == 0 {
		return nil, fmt.Errorf("volume -master: no master address")
	}
	idle := time.Duration(max(c.IdleTimeoutSeconds, 0)) * time.Second

	adminMux := http.NewServeMux()
	publicMux := adminMux
	separatePublic := c.PublicPort != c.Port
	if separatePublic {
		publicMux = http.NewServeMux()
	}
	if c.Pprof {
		adminMux.HandleFunc("/debug/pprof/", httppprof.Index)
		adminMux.HandleFunc("/debug/pprof/cmdline", httppprof.Cmdline)
		adminMux.HandleFunc("/debug/pprof/profile", httppprof.Profile)
		adminMux.HandleFunc("/debug/pprof/symbol", httppprof.Symbol)
		adminMux.HandleFunc("/debug/pprof/trace", httppprof.Trace)
	}

	// Listen before the constructor so a taken port fails fast.
	httpL, httpLocalL, err := util.NewIpAndLocalListeners(c.BindIP, c.Port, idle, alsoLocalhost)
	if err != nil {
		return nil, fmt.Errorf("volume http listen %s:%d: %w", c.BindIP, c.Port, err)
	}
	grpcL, grpcLocalL, err := util.NewIpAndLocalListeners(c.BindIP, c.GrpcPort, 0, alsoLocalhost)
	if err != nil {
		closeListeners(httpL, httpLocalL)
		return nil, fmt.Errorf("volume grpc listen %s:%d: %w", c.BindIP, c.GrpcPort, err)
	}
	var pubL, pubLocalL net.Listener
	if separatePublic {
		if pubL, pubLocalL, err = util.NewIpAndLocalListeners(c.BindIP, c.PublicPort, idle, alsoLocalhost); err != nil {
			closeListeners(httpL, httpLocalL, grpcL, grpcLocalL)
			return nil, fmt.Errorf("volume public http listen %s:%d: %w", c.BindIP, c.PublicPort, err)
		}
	}

	id := util.GetVolumeServerId(c.ID, c.IP, c.Port)
	v := &Volume{ID: id, HTTPAddr: httpL.Addr().String(), GRPCAddr: grpcL.Addr().String(),
		preStop: time.Duration(max(c.PreStopSeconds, 0)) * time.Second}

	if c.BlockDir != "" && c.Block != nil {
		plugin, err := c.Block(VolumePluginEnv{
			Dir:         util.ResolvePath(c.BlockDir),
			ServerID:    id,
			GrpcAddr:    util.JoinHostPort(c.IP, c.GrpcPort),
			HTTPAddr:    util.JoinHostPort(c.IP, c.Port),
			NBDAddr:     c.BlockNBD,
			ISCSIAddr:   c.BlockISCSI,
			ReplAddr:    c.BlockRepl,
			AdvertiseIP: c.IP,
			DataCenter:  c.DataCenter,
			Rack:        c.Rack,
			Masters:     func() []string { return grpcAddresses(masters) },
			Dial:        dialFunc("grpc.volume"),

			SnapshotInterval: c.BlockSnapshotInterval,
		})
		if err != nil {
			closeListeners(httpL, httpLocalL, grpcL, grpcLocalL, pubL, pubLocalL)
			return nil, fmt.Errorf("block volume server: %w", err)
		}
		v.block = plugin
		adminMux.Handle("/block/", plugin.HTTPHandler())
		registerCollectors("block volume", plugin.Collectors())
	}

	syncBatch := storage.DefaultSyncBatchOption
	syncBatch.MinBytes = c.FsyncMinBatchBytes
	syncBatch.MinRequests = c.FsyncMinBatchRequests
	syncBatch.Wait = c.FsyncBatchWait
	v.Server = weed_server.NewVolumeServer(adminMux, publicMux,
		c.IP, c.Port, c.GrpcPort, c.PublicURL, id,
		layout.dirs, layout.max, layout.minFree, layout.diskTypes, layout.tags,
		util.ResolvePath(c.IdxDir), needleMapKind(c.Index),
		masters, constants.VolumePulsePeriod, c.DataCenter, c.Rack,
		util.StringSplit(c.WhiteList, ","),
		c.FixJpgOrientation, c.ReadMode,
		c.CompactionMBps, c.MaintenanceMBps, c.CompactionMaxParallel, c.FileSizeLimitMB,
		int64(c.ConcurrentUploadLimitMB)*1024*1024, int64(c.ConcurrentDownloadLimitMB)*1024*1024,
		c.InflightUploadTimeout, c.InflightDownloadTimeout,
		c.HasSlowRead, c.ReadBufferSizeMB, c.LevelDBTimeout, c.AllowUntrustedRemote,
		diskProbeConfig(), syncBatch)

	v.grpcServer = pb.NewGrpcServer(security.LoadServerTLS(util.GetViper(), "grpc.volume"))
	volume_server_pb.RegisterVolumeServerServer(v.grpcServer, v.Server)
	if v.block != nil {
		v.block.Register(v.grpcServer)
	}
	reflection.Register(v.grpcServer)
	for _, l := range []net.Listener{grpcL, grpcLocalL} {
		if l != nil {
			go func() {
				if err := v.grpcServer.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
					glog.Errorf("volume grpc on %s: %v", l.Addr(), err)
				}
			}()
		}
	}

	tlsConfig, _, err := httpsConfig("volume")
	if err != nil {
		v.grpcServer.Stop()
		v.Server.Shutdown()
		closeListeners(httpL, httpLocalL, pubL, pubLocalL)
		return nil, err
	}
	useTLS := tlsConfig != nil && tlsConfig.GetCertificate != nil
	for _, l := range []net.Listener{httpL, httpLocalL} {
		if l != nil {
			s := &http.Server{Handler: adminMux, TLSConfig: tlsConfig}
			v.httpServer = append(v.httpServer, s)
			go serveHTTP(s, l, useTLS)
		}
	}
	for _, l := range []net.Listener{pubL, pubLocalL} {
		if l != nil {
			s := &http.Server{Handler: publicMux}
			v.httpServer = append(v.httpServer, s)
			go serveHTTP(s, l, false)
		}
	}
	if v.block != nil {
		if err := v.block.Start(); err != nil {
			v.Stop()
			return nil, fmt.Errorf("block volume server start: %w", err)
		}
	}
	glog.V(0).Infof("volume server %s: http %s grpc %s block %v", id, v.HTTPAddr, v.GRPCAddr, v.block != nil)
	return v, nil
}

func grpcAddresses(as []pb.ServerAddress) []string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		out = append(out, a.ToGrpcAddress())
	}
	return out
}

// Stop shuts the volume server down in upstream's order, with the block
// volumes first (flushed and closed while everything else still runs):
// block, heartbeat (then -preStopSeconds so the master stops routing
// here), HTTP, gRPC, store. Idempotent.
func (v *Volume) Stop() {
	v.stopOnce.Do(func() {
		if v.block != nil {
			v.block.Close()
		}
		if !v.Server.StopHeartbeat() {
			v.Server.SetStopping()
			time.Sleep(v.preStop)
		}
		ctx, cancel := context.WithTimeout(context.Background(), httpStopTimeout)
		defer cancel()
		for _, s := range v.httpServer {
			if err := s.Shutdown(ctx); err != nil {
				_ = s.Close()
			}
		}
		stopped := make(chan struct{})
		go func() { v.grpcServer.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-ctx.Done():
			v.grpcServer.Stop()
		}
		v.Server.Shutdown()
	})
}

package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/mux"
	"github.com/seaweedfs/raft/protobuf"
	"github.com/seaweedfs/seaweedfs/weed/glog"
	"github.com/seaweedfs/seaweedfs/weed/pb"
	"github.com/seaweedfs/seaweedfs/weed/pb/master_pb"
	"github.com/seaweedfs/seaweedfs/weed/security"
	weed_server "github.com/seaweedfs/seaweedfs/weed/server"
	"github.com/seaweedfs/seaweedfs/weed/storage/backend"
	"github.com/seaweedfs/seaweedfs/weed/util"
	flag "github.com/seaweedfs/seaweedfs/weed/util/fla9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/reflection"
)

// bootstrapRetry is how often a master of a multi-master cluster without
// raft state checks whether it must mint the cluster or wait to be admitted.
const bootstrapRetry = 1500 * time.Millisecond

// MasterConfig is everything a master launch needs: upstream's `weed
// master` flags, by meaning, plus the block hooks.
type MasterConfig struct {
	IP, BindIP     string
	Port, GrpcPort int // GrpcPort 0: Port+10000
	MetaDir        string
	Peers          string // "none": single master; "": this master alone, raft quorum of one

	VolumeSizeLimitMB             uint
	FileSizeLimitMB               int
	VolumePreallocate             bool
	MaxParallelVacuumPerServer    int
	VacuumIntervalSeconds         int
	VacuumDeleteEmptyAfterSeconds int
	DefaultReplication            string
	GarbageThreshold              float64
	WhiteList                     []string
	DisableHTTP                   bool
	MetricsAddress                string
	MetricsIntervalSec            int
	ResumeState                   bool
	HeartbeatInterval             time.Duration
	ElectionTimeout               time.Duration
	RaftHashicorp                 bool
	TelemetryURL                  string
	Telemetry                     bool
	// ExpectedReporterAddr is set by `weed server` (single master with an
	// embedded volume server): upstream's allocation hold waits for it.
	ExpectedReporterAddr string

	// HeartbeatSilence fails an upstream heartbeat stream that sent nothing
	// for this long (0: 3 volume pulses).
	HeartbeatSilence time.Duration
	// Block builds the block master plugged into this master; nil: none.
	Block MasterPluginFactory
}

// masterConfigFromFlags reads upstream's `weed master` flag set.
func masterConfigFromFlags(fs *flag.FlagSet) (MasterConfig, error) {
	r := &flagValues{fs: fs}
	c := MasterConfig{
		IP:                            r.str("ip"),
		BindIP:                        r.str("ip.bind"),
		Port:                          r.int("port"),
		GrpcPort:                      r.int("port.grpc"),
		MetaDir:                       r.str("mdir"),
		Peers:                         r.str("peers"),
		VolumeSizeLimitMB:             r.uint("volumeSizeLimitMB"),
		FileSizeLimitMB:               r.int("fileSizeLimitMB"),
		VolumePreallocate:             r.bool("volumePreallocate"),
		MaxParallelVacuumPerServer:    r.int("maxParallelVacuumPerServer"),
		VacuumIntervalSeconds:         r.int("vacuumIntervalSeconds"),
		VacuumDeleteEmptyAfterSeconds: r.int("vacuumDeleteEmptyAfterSeconds"),
		DefaultReplication:            r.str("defaultReplication"),
		GarbageThreshold:              r.float("garbageThreshold"),
		WhiteList:                     util.StringSplit(r.str("whiteList"), ","),
		DisableHTTP:                   r.bool("disableHttp"),
		MetricsAddress:                r.str("metrics.address"),
		MetricsIntervalSec:            r.int("metrics.intervalSeconds"),
		ResumeState:                   r.bool("resumeState"),
		HeartbeatInterval:             r.duration("heartbeatInterval"),
		ElectionTimeout:               r.duration("electionTimeout"),
		RaftHashicorp:                 r.bool("raftHashicorp"),
		TelemetryURL:                  r.str("telemetry.url"),
		Telemetry:                     r.bool("telemetry"),
	}
	return c, r.err
}

// singleMaster reports whether peers selects upstream's single-master mode.
func singleMaster(peers string) bool {
	return strings.EqualFold(strings.TrimSpace(peers), "none")
}

// Master is a running master: upstream's MasterServer with its raft,
// gRPC and HTTP servers, and the block master plugged into them.
type Master struct {
	Server   *weed_server.MasterServer
	Address  pb.ServerAddress // ip:port.grpcPort, this master's identity
	HTTPAddr string           // bound host:port
	GRPCAddr string           // bound host:port

	grpcServer *grpc.Server
	httpServer []*http.Server
	block      MasterPlugin
	watch      *heartbeatWatch
	stopOnce   sync.Once
	stopBoot   chan struct{}
	bootDone   chan struct{}
}

// StartMaster starts a master as upstream's `weed master` does and returns
// once it serves gRPC and HTTP. Upstream's background goroutines (vacuum,
// volume growth, telemetry) have no stop, so one process hosts one master.
func StartMaster(c MasterConfig) (*Master, error) {
	backend.LoadConfiguration(util.GetViper())
	if c.GrpcPort == 0 {
		c.GrpcPort = c.Port + 10000
	}
	if c.VolumeSizeLimitMB > util.MaxVolumeSizeLimitMB {
		return nil, fmt.Errorf("volumeSizeLimitMB %d exceeds %d", c.VolumeSizeLimitMB, util.MaxVolumeSizeLimitMB)
	}
	alsoLocalhost := c.BindIP == ""
	if c.BindIP == "" {
		c.BindIP = c.IP
	}
	util.SetOutboundLocalIP(c.BindIP)
	metaRoot := util.ResolvePath(c.MetaDir)
	if err := os.MkdirAll(metaRoot, 0o755); err != nil {
		return nil, fmt.Errorf("master -mdir %s: %w", metaRoot, err)
	}
	if err := util.TestFolderWritable(metaRoot); err != nil {
		return nil, fmt.Errorf("master -mdir %s: %w", metaRoot, err)
	}
	if util.IsReadOnlyMount(metaRoot) {
		return nil, fmt.Errorf("master -mdir %s is on a read-only filesystem", metaRoot)
	}

	self, peers, err := masterPeers(c.IP, c.Port, c.GrpcPort, c.Peers)
	if err != nil {
		return nil, err
	}
	peerMap := make(map[string]pb.ServerAddress, len(peers))
	for _, p := range peers {
		peerMap[string(p)] = p
	}

	m := &Master{Address: self, stopBoot: make(chan struct{}), bootDone: make(chan struct{})}
	router := mux.NewRouter()
	// Our routes go first: gorilla/mux takes the first match and upstream
	// ends its list with a catch-all /{fileId}.
	blockRoute := &lateHandler{}
	router.PathPrefix("/block/").Handler(blockRoute)

	ms := weed_server.NewMasterServer(router, &weed_server.MasterOption{
		Master:                        self,
		MetaFolder:                    metaRoot,
		VolumeSizeLimitMB:             uint32(c.VolumeSizeLimitMB),
		FileSizeLimitMB:               c.FileSizeLimitMB,
		VolumePreallocate:             c.VolumePreallocate,
		MaxParallelVacuumPerServer:    c.MaxParallelVacuumPerServer,
		VacuumIntervalSeconds:         c.VacuumIntervalSeconds,
		VacuumDeleteEmptyAfterSeconds: c.VacuumDeleteEmptyAfterSeconds,
		DefaultReplicaPlacement:       c.DefaultReplication,
		GarbageThreshold:              c.GarbageThreshold,
		WhiteList:                     c.WhiteList,
		DisableHttp:                   c.DisableHTTP,
		MetricsAddress:                c.MetricsAddress,
		MetricsIntervalSec:            c.MetricsIntervalSec,
		TelemetryUrl:                  c.TelemetryURL,
		TelemetryEnabled:              c.Telemetry,
		SingleMaster:                  singleMaster(c.Peers),
		ExpectedReporterAddr:          c.ExpectedReporterAddr,
	}, peerMap)
	m.Server = ms

	httpL, httpLocalL, err := util.NewIpAndLocalListeners(c.BindIP, c.Port, 0, alsoLocalhost)
	if err != nil {
		return nil, fmt.Errorf("master http listen %s:%d: %w", c.BindIP, c.Port, err)
	}
	m.HTTPAddr = httpL.Addr().String()

	raftOpt := &weed_server.RaftServerOption{
		GrpcDialOption:    security.LoadClientTLS(util.GetViper(), "grpc.master"),
		Peers:             peerMap,
		ServerAddr:        self,
		DataDir:           filepath.Join(metaRoot, fmt.Sprintf("m%d", c.Port)),
		Topo:              ms.Topo,
		RaftResumeState:   c.ResumeState,
		SingleMaster:      singleMaster(c.Peers),
		HeartbeatInterval: c.HeartbeatInterval,
		ElectionTimeout:   c.ElectionTimeout,
	}
	var raftServer *weed_server.RaftServer
	if c.RaftHashicorp {
		raftServer, err = weed_server.NewHashicorpRaftServer(raftOpt)
	} else {
		raftServer, err = weed_server.NewRaftServer(raftOpt)
	}
	if raftServer == nil || err != nil {
		closeListeners(httpL, httpLocalL)
		return nil, fmt.Errorf("master raft in %s: %v", raftOpt.DataDir, err)
	}
	if singleMaster(c.Peers) && !raftServer.HasExistingState() {
		if err := raftServer.Bootstrap(); err != nil {
			glog.Errorf("master: bootstrap single-master raft: %v", err)
		}
	}
	ms.SetRaftServer(raftServer)
	router.HandleFunc("/cluster/status", raftServer.StatusHandler).Methods(http.MethodGet, http.MethodHead)
	router.HandleFunc("/cluster/healthz", raftServer.HealthzHandler).Methods(http.MethodGet, http.MethodHead)
	if c.RaftHashicorp {
		router.HandleFunc("/raft/stats", raftServer.StatsRaftHandler).Methods(http.MethodGet)
	}

	grpcL, grpcLocalL, err := util.NewIpAndLocalListeners(c.BindIP, c.GrpcPort, 0, alsoLocalhost)
	if err != nil {
		closeListeners(httpL, httpLocalL)
		return nil, fmt.Errorf("master grpc listen %s:%d: %w", c.BindIP, c.GrpcPort, err)
	}
	m.GRPCAddr = grpcL.Addr().String()

	if c.Block != nil {
		plugin, err := c.Block(MasterPluginEnv{
			MetaDir:    metaRoot,
			IsLeader:   func() bool { return raftIsLeader(ms.Topo) },
			Leader:     func() string { return masterLeader(ms) },
			Topology:   func() []TopologyServer { return topologySnapshot(ms.Topo) },
			DialVolume: dialFunc("grpc.master"),
		})
		if err != nil {
			closeListeners(httpL, httpLocalL, grpcL, grpcLocalL)
			return nil, fmt.Errorf("block master: %w", err)
		}
		m.block = plugin
		blockRoute.set(plugin.HTTPHandler())
		registerCollectors("block master", plugin.Collectors())
	}
	silence := c.HeartbeatSilence
	if silence <= 0 {
		silence = defaultHeartbeatSilence
	}
	m.watch = newHeartbeatWatch(ms, silence, m.block)

	m.grpcServer = pb.NewGrpcServer(security.LoadServerTLS(util.GetViper(), "grpc.master"))
	master_pb.RegisterSeaweedServer(m.grpcServer, m.watch)
	if c.RaftHashicorp {
		raftServer.TransportManager.Register(m.grpcServer)
	} else {
		protobuf.RegisterRaftServer(m.grpcServer, raftServer)
	}
	if m.block != nil {
		m.block.Register(m.grpcServer)
	}
	reflection.Register(m.grpcServer)
	for _, l := range []net.Listener{grpcL, grpcLocalL} {
		if l != nil {
			go m.serveGRPC(l)
		}
	}

	if singleMaster(c.Peers) {
		close(m.bootDone)
	} else {
		go m.bootstrapLoop(raftServer, self, peers)
	}
	go ms.MasterClient.KeepConnectedToMaster(context.Background())

	tlsConfig, certClose, err := httpsConfig("master")
	if err != nil {
		m.Stop()
		closeListeners(httpL, httpLocalL)
		return nil, err
	}
	_ = certClose // lives as long as the process, like upstream's
	if httpLocalL != nil {
		s := &http.Server{Handler: router}
		m.httpServer = append(m.httpServer, s)
		go serveHTTP(s, httpLocalL, false)
	}
	s := &http.Server{Handler: router, TLSConfig: tlsConfig}
	m.httpServer = append(m.httpServer, s)
	go serveHTTP(s, httpL, tlsConfig != nil && tlsConfig.GetCertificate != nil)
	glog.V(0).Infof("master %s: http %s grpc %s block %v", self, m.HTTPAddr, m.GRPCAddr, m.block != nil)
	return m, nil
}

func (m *Master) serveGRPC(l net.Listener) {
	if err := m.grpcServer.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		glog.Errorf("master grpc on %s: %v", l.Addr(), err)
	}
}

// Stop closes the block master, stops raft, gRPC and HTTP. Upstream's own
// background goroutines keep running (they have no stop); the process is
// expected to exit soon after. Idempotent.
func (m *Master) Stop() {
	m.stopOnce.Do(func() {
		close(m.stopBoot)
		<-m.bootDone
		if m.watch != nil {
			m.watch.close()
		}
		if m.block != nil {
			m.block.Close()
		}
		for _, s := range m.httpServer {
			_ = s.Close()
		}
		m.Server.Shutdown()
		m.grpcServer.Stop()
	})
}

// bootstrapLoop makes a multi-master cluster exist: a master without raft
// state waits to be admitted by a leader; when nobody has a leader, only
// the first peer (sorted by address) mints the cluster, so a partition
// cannot mint two.
func (m *Master) bootstrapLoop(rs *weed_server.RaftServer, self pb.ServerAddress, peers []pb.ServerAddress) {
	defer close(m.bootDone)
	idx := slices.IndexFunc(sortedPeers(peers), func(p pb.ServerAddress) bool {
		return p.ToHttpAddress() == self.ToHttpAddress()
	})
	wait := time.Duration(float64(bootstrapRetry) * (1 + rand.Float64()/4) * float64(idx+1))
	for {
		select {
		case <-m.stopBoot:
			return
		case <-time.After(wait):
		}
		wait = bootstrapRetry
		if rs.HasExistingState() {
			return
		}
		if leader, err := m.Server.Topo.MaybeLeader(); err == nil && leader != "" {
			return
		}
		if leader := m.Server.MasterClient.FindLeaderFromOtherPeers(self); leader != "" {
			glog.V(0).Infof("master %s: waiting to be admitted by leader %s", self, leader)
			continue
		}
		if idx == 0 {
			if err := rs.Bootstrap(); err != nil {
				glog.Errorf("master %s: bootstrap raft: %v", self, err)
			}
		}
	}
}

func sortedPeers(peers []pb.ServerAddress) []pb.ServerAddress {
	s := slices.Clone(peers)
	slices.SortFunc(s, func(a, b pb.ServerAddress) int {
		return strings.Compare(a.ToHttpAddress(), b.ToHttpAddress())
	})
	return s
}

// masterPeers returns this master's address and the cleaned peer list:
// every peer with an explicit gRPC port, no duplicates, self included. An
// even number of masters is refused (raft needs a strict majority).
func masterPeers(ip string, port, grpcPort int, peers string) (pb.ServerAddress, []pb.ServerAddress, error) {
	self := pb.NewServerAddress(ip, port, grpcPort)
	if singleMaster(peers) {
		return self, []pb.ServerAddress{self}, nil
	}
	var out []pb.ServerAddress
	seen := map[string]bool{}
	hasSelf := false
	for _, p := range pb.ServerAddresses(strings.TrimSpace(peers)).ToAddresses() {
		if p.ToHttpAddress() == self.ToHttpAddress() {
			p = self
			hasSelf = true
		} else if _, gp, err := net.SplitHostPort(p.ToGrpcAddress()); err == nil {
			if n, err := strconv.Atoi(gp); err == nil {
				p = pb.NewServerAddressWithGrpcPort(p.ToHttpAddress(), n)
			}
		}
		if seen[string(p)] {
			continue
		}
		seen[string(p)] = true
		out = append(out, p)
	}
	if !hasSelf {
		out = append(out, self)
	}
	if len(out)%2 == 0 {
		return "", nil, fmt.Errorf("master -peers: %d masters %v; only an odd number is supported", len(out), out)
	}
	return self, out, nil
}

// httpsConfig builds the TLS config of upstream's https.<component>.*
// settings; nil when HTTPS is not configured.
func httpsConfig(component string) (*tls.Config, func(), error) {
	v := util.GetViper()
	var cfg *tls.Config
	if ca := v.GetString("https." + component + ".ca"); ca != "" {
		cfg = security.LoadClientTLSHTTP(ca)
		if err := security.FixTlsConfig(v, cfg); err != nil {
			return nil, nil, fmt.Errorf("https.%s.ca: %w", component, err)
		}
	}
	key, cert := v.GetString("https."+component+".key"), v.GetString("https."+component+".cert")
	if key == "" {
		return cfg, nil, nil
	}
	getCert, provider, err := security.NewReloadingServerCertificate(cert, key)
	if err != nil {
		return nil, nil, fmt.Errorf("https.%s certificate: %w", component, err)
	}
	if cfg == nil {
		cfg = &tls.Config{}
	}
	cfg.GetCertificate = getCert
	return cfg, provider.Close, nil
}

func serveHTTP(s *http.Server, l net.Listener, useTLS bool) {
	var err error
	if useTLS {
		err = s.ServeTLS(l, "", "")
	} else {
		err = s.Serve(l)
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		glog.Errorf("http on %s: %v", l.Addr(), err)
	}
}

func closeListeners(ls ...net.Listener) {
	for _, l := range ls {
		if l != nil {
			_ = l.Close()
		}
	}
}

// lateHandler is a route whose handler is installed after the router was
// built (the block master needs the topology, which exists only after the
// upstream master server is constructed on the router).
type lateHandler struct {
	mu sync.RWMutex
	h  http.Handler
}

func (l *lateHandler) set(h http.Handler) {
	l.mu.Lock()
	l.h = h
	l.mu.Unlock()
}

func (l *lateHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	l.mu.RLock()
	h := l.h
	l.mu.RUnlock()
	if h == nil {
		http.Error(w, "block service not enabled on this server", http.StatusNotFound)
		return
	}
	h.ServeHTTP(w, r)
}

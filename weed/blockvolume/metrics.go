package blockvolume

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weedblock/weedblock/blockdev"
	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/replication"
)

// Metric names all start with this; the master side uses weedblock_master_.
const metricPrefix = "weedblock_volume_"

// Operations the metered device counts (label op).
const (
	opRead  = "read"
	opWrite = "write"
	opTrim  = "trim"
	opZero  = "write_zeroes"
	opFlush = "flush"
)

// metrics holds one Manager's Prometheus metrics (no package-level
// state: two managers in one process have separate metrics).
type metrics struct {
	ops     *prometheus.CounterVec
	bytes   *prometheus.CounterVec
	errs    *prometheus.CounterVec
	latency *prometheus.HistogramVec

	heartbeats  prometheus.Counter
	hbErrors    prometheus.Counter
	leaseGrants prometheus.Counter

	// Recoveries this server ran as primary (label kind: the plan kind;
	// outcome: in-sync, needs-rebuild, aborted).
	recStarted  *prometheus.CounterVec
	recFinished *prometheus.CounterVec
	recBytes    *prometheus.CounterVec
	recActive   prometheus.Gauge
	recDuration *prometheus.HistogramVec

	// Base snapshots this server took as primary (snapshot.go), by volume
	// and outcome (taken, failed, aborted), and the LSN of the last one.
	snapTaken *prometheus.CounterVec
	snapLSN   *prometheus.GaugeVec
}

func newMetrics() *metrics {
	return &metrics{
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricPrefix + "ops_total",
			Help: "Block I/O operations served by NBD and iSCSI, by volume and operation.",
		}, []string{"volume", "op"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricPrefix + "bytes_total",
			Help: "Bytes read or written (including trimmed and zeroed ranges), by volume and operation.",
		}, []string{"volume", "op"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricPrefix + "errors_total",
			Help: "Block I/O operations that failed (including writes refused while fenced).",
		}, []string{"volume", "op"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    metricPrefix + "op_duration_seconds",
			Help:    "Latency of block I/O operations as the device sees them.",
			Buckets: prometheus.ExponentialBuckets(20e-6, 2.5, 14), // 20µs .. ~1.5 s
		}, []string{"volume", "op"}),
		heartbeats: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricPrefix + "server_heartbeats_total",
			Help: "Block heartbeats sent to the master leader.",
		}),
		hbErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricPrefix + "server_heartbeat_stream_errors_total",
			Help: "Heartbeat streams that ended with an error (master down, not leader, ...).",
		}),
		leaseGrants: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricPrefix + "server_lease_grants_total",
			Help: "Heartbeat responses that granted or renewed a lease.",
		}),
		recStarted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricPrefix + "recoveries_started_total",
			Help: "Recovery attempts this server started as primary, by plan kind (zero-gap, catch-up, truncate, rebuild).",
		}, []string{"kind"}),
		recFinished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricPrefix + "recoveries_finished_total",
			Help: "Recovery attempts finished, by plan kind and outcome (in-sync, needs-rebuild, aborted).",
		}, []string{"kind", "outcome"}),
		recBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricPrefix + "recovery_bytes_total",
			Help: "Bytes sent to recovering copies (WAL records and base images), by plan kind.",
		}, []string{"kind"}),
		recActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: metricPrefix + "recoveries_active",
			Help: "Recovery attempts running now.",
		}),
		recDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    metricPrefix + "recovery_duration_seconds",
			Help:    "Duration of recovery attempts, by plan kind.",
			Buckets: prometheus.ExponentialBuckets(0.01, 3, 12), // 10 ms .. ~30 min
		}, []string{"kind"}),
		snapTaken: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricPrefix + "snapshots_total",
			Help: "Base snapshots attempted by the -block.snapshotInterval loop, by volume and outcome (taken, failed, aborted).",
		}, []string{"volume", "outcome"}),
		snapLSN: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: metricPrefix + "snapshot_lsn",
			Help: "LSN of the last base snapshot taken of the volume by this server.",
		}, []string{"volume"}),
	}
}

// forget drops every series of volume name (it was deleted).
func (mt *metrics) forget(name string) {
	l := prometheus.Labels{"volume": name}
	mt.ops.DeletePartialMatch(l)
	mt.bytes.DeletePartialMatch(l)
	mt.errs.DeletePartialMatch(l)
	mt.latency.DeletePartialMatch(l)
	mt.snapTaken.DeletePartialMatch(l)
	mt.snapLSN.DeletePartialMatch(l)
}

// opMetrics are the resolved series of one (volume, op).
type opMetrics struct {
	ops, bytes, errs prometheus.Counter
	latency          prometheus.Observer
}

func (mt *metrics) op(name, op string) opMetrics {
	return opMetrics{
		ops:     mt.ops.WithLabelValues(name, op),
		bytes:   mt.bytes.WithLabelValues(name, op),
		errs:    mt.errs.WithLabelValues(name, op),
		latency: mt.latency.WithLabelValues(name, op),
	}
}

func (o opMetrics) done(start time.Time, n int64, err error) {
	o.ops.Inc()
	o.latency.Observe(time.Since(start).Seconds())
	if err != nil {
		o.errs.Inc()
		return
	}
	if n > 0 {
		o.bytes.Add(float64(n))
	}
}

// meteredDevice is the blockdev.Device the frontends serve: the volume,
// with every call counted and timed. While the volume is a primary with
// replicas, writes and flushes go through the replication.Volume in repl
// instead, so a FLUSH (or FUA) waits for the durability mode's commit.
type meteredDevice struct {
	*blockvol.Volume
	repl      atomic.Pointer[replication.Volume]
	notMember atomic.Bool // reads fail with ErrNotMember
	untrusted atomic.Bool // reads fail with ErrUntrusted
	// wantRepl: writes must go through repl (a primary with members);
	// until it is installed they are refused as if fenced.
	wantRepl                       atomic.Bool
	read, write, trim, zero, flush opMetrics
}

// writer is what writes and flushes go to now.
func (d *meteredDevice) writer() blockdev.Device {
	if r := d.repl.Load(); r != nil {
		return r
	}
	if d.wantRepl.Load() {
		return replPending{d.Volume}
	}
	return d.Volume
}

// replPending refuses writes (read-only, like a fenced volume) in the
// moment between a primary with members being unfenced and its
// replication starting, so no acknowledged write escapes replication.
type replPending struct{ *blockvol.Volume }

var errReplPending = fmt.Errorf("replication is starting: %w", blockdev.ErrReadOnly)

func (replPending) WriteAt([]byte, int64, bool) error    { return errReplPending }
func (replPending) Trim(int64, int64) error              { return errReplPending }
func (replPending) WriteZeroes(int64, int64, bool) error { return errReplPending }

func (mt *metrics) device(name string, vol *blockvol.Volume) *meteredDevice {
	return &meteredDevice{
		Volume: vol,
		read:   mt.op(name, opRead),
		write:  mt.op(name, opWrite),
		trim:   mt.op(name, opTrim),
		zero:   mt.op(name, opZero),
		flush:  mt.op(name, opFlush),
	}
}

func (d *meteredDevice) ReadAt(p []byte, off int64) error {
	start := time.Now()
	var err error
	switch {
	case d.untrusted.Load():
		err = fmt.Errorf("read %d@%d: %w", len(p), off, ErrUntrusted)
	case d.notMember.Load():
		err = fmt.Errorf("read %d@%d: %w", len(p), off, ErrNotMember)
	default:
		err = d.Volume.ReadAt(p, off)
	}
	d.read.done(start, int64(len(p)), err)
	return err
}

func (d *meteredDevice) WriteAt(p []byte, off int64, fua bool) error {
	start := time.Now()
	err := d.writer().WriteAt(p, off, fua)
	d.write.done(start, int64(len(p)), err)
	return err
}

func (d *meteredDevice) Trim(off, length int64) error {
	start := time.Now()
	err := d.writer().Trim(off, length)
	d.trim.done(start, length, err)
	return err
}

func (d *meteredDevice) WriteZeroes(off, length int64, fua bool) error {
	start := time.Now()
	err := d.writer().WriteZeroes(off, length, fua)
	d.zero.done(start, length, err)
	return err
}

func (d *meteredDevice) Flush() error {
	start := time.Now()
	err := d.writer().Flush()
	d.flush.done(start, 0, err)
	return err
}

// stateCollector exports per-volume state gauges read from the volumes at
// scrape time.
type stateCollector struct {
	m *Manager

	once  sync.Once
	descs map[string]*prometheus.Desc
}

var stateGauges = []struct{ name, help string }{
	{"epoch", "Persisted epoch of the volume."},
	{"role", "Role in the persisted epoch config: 0 none, 1 primary, 2 replica."},
	{"fenced", "1 when the volume refuses frontend writes (fenced, not primary, lease expired or unhealthy)."},
	{"lease_remaining_seconds", "Seconds left on the primary's lease (0 when none)."},
	{"healthy", "0 once an I/O failed and the volume went read-only."},
	{"size_bytes", "Capacity of the volume."},
	{"wal_size_bytes", "Size of the write-ahead log."},
	{"wal_used_bytes", "Write-ahead log bytes between tail and head."},
	{"head_lsn", "Highest LSN appended."},
	{"durable_lsn", "Highest LSN fsynced."},
	{"checkpoint_lsn", "Highest LSN whose effects are in the extent."},
	{"attached_sessions", "Open NBD connections plus iSCSI sessions."},
}

func (c *stateCollector) init() {
	c.once.Do(func() {
		c.descs = map[string]*prometheus.Desc{}
		for _, g := range stateGauges {
			c.descs[g.name] = prometheus.NewDesc(metricPrefix+g.name, g.help, []string{"volume"}, nil)
		}
		c.descs["volumes"] = prometheus.NewDesc(metricPrefix+"server_volumes", "Block volumes open on this server.", nil, nil)
		c.descs["connected"] = prometheus.NewDesc(metricPrefix+"server_master_connected", "1 while a heartbeat stream to the master leader is up.", nil, nil)
	})
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	c.init()
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	c.init()
	vols := c.m.snapshot()
	ch <- prometheus.MustNewConstMetric(c.descs["volumes"], prometheus.GaugeValue, float64(len(vols)))
	connected := 0.0
	if c.m.hb.snapshot().Connected {
		connected = 1
	}
	ch <- prometheus.MustNewConstMetric(c.descs["connected"], prometheus.GaugeValue, connected)
	for _, v := range vols {
		r := v.report(c.m.serverID, c.m.sessions(v.name))
		lease := 0.0
		if !r.Fenced && r.LeaseRemainingMs > 0 {
			lease = float64(r.LeaseRemainingMs) / 1000
		}
		vals := map[string]float64{
			"epoch":                   float64(r.Epoch),
			"role":                    float64(r.Role),
			"fenced":                  b2f(r.Fenced),
			"lease_remaining_seconds": lease,
			"healthy":                 b2f(r.Healthy),
			"size_bytes":              float64(r.SizeBytes),
			"wal_size_bytes":          float64(r.WalSizeBytes),
			"wal_used_bytes":          float64(r.WalUsedBytes),
			"head_lsn":                float64(r.HeadLsn),
			"durable_lsn":             float64(r.DurableLsn),
			"checkpoint_lsn":          float64(r.CheckpointLsn),
			"attached_sessions":       float64(r.AttachedSessions),
		}
		for _, g := range stateGauges {
			ch <- prometheus.MustNewConstMetric(c.descs[g.name], prometheus.GaugeValue, vals[g.name], v.name)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Collectors returns the Manager's Prometheus collectors, to register once
// on a registry (upstream's stats.Gather in the weed binary). Every name
// starts with weedblock_volume_.
func (m *Manager) Collectors() []prometheus.Collector {
	return []prometheus.Collector{
		m.metrics.ops, m.metrics.bytes, m.metrics.errs, m.metrics.latency,
		m.metrics.heartbeats, m.metrics.hbErrors, m.metrics.leaseGrants,
		m.metrics.recStarted, m.metrics.recFinished, m.metrics.recBytes, m.metrics.recActive, m.metrics.recDuration,
		m.metrics.snapTaken, m.metrics.snapLSN,
		&stateCollector{m: m},
	}
}

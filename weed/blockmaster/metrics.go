package blockmaster

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// Collectors returns the master's Prometheus collectors. They compute their
// values at scrape time from the master's state, so a deleted volume's series
// disappear with it. Register them once per process.
//
//	weedblock_master_is_leader                          1 when this master leads
//	weedblock_master_volumes{state}                     volumes per state
//	weedblock_master_volume_epoch{volume}               current epoch
//	weedblock_master_volume_lease_remaining_seconds{volume}  master's view (<0: lapsed)
//	weedblock_master_servers{alive}                     block servers known, alive or not
//	weedblock_master_heartbeats_total                   block heartbeats received
//	weedblock_master_orphan_volumes                     copies of names the registry never had
//	weedblock_master_failovers_total                    promotions (automatic + manual) by this process
//	weedblock_master_epoch_changes_total                epochs made after create by this process
//	weedblock_master_volume_failovers{volume}           promotions of a volume (persisted)
//	weedblock_master_last_failover_pause_seconds{volume} primary lost -> new primary serving
//	weedblock_master_repairs_requested_total            copies named by RepairVolume (block.repair)
//	weedblock_master_copies_lost_total{reason}          members dropped: copy "lost" or "untrusted"
//	weedblock_master_recovery_copies_total              empty recovery copies created on homes
//	weedblock_master_volume_recoveries_running{volume}  recoveries the primary reports running
func (m *Master) Collectors() []prometheus.Collector {
	return []prometheus.Collector{&collector{m: m}}
}

var (
	descLeader = prometheus.NewDesc("weedblock_master_is_leader",
		"1 when this master is the block registry leader.", nil, nil)
	descVolumes = prometheus.NewDesc("weedblock_master_volumes",
		"Block volumes in the registry, by state.", []string{"state"}, nil)
	descEpoch = prometheus.NewDesc("weedblock_master_volume_epoch",
		"Current epoch of a block volume.", []string{"volume"}, nil)
	descLease = prometheus.NewDesc("weedblock_master_volume_lease_remaining_seconds",
		"Master's conservative view of the time left on the primary's lease (negative: lapsed).", []string{"volume"}, nil)
	descServers = prometheus.NewDesc("weedblock_master_servers",
		"Block volume servers known to this master.", []string{"alive"}, nil)
	descHeartbeats = prometheus.NewDesc("weedblock_master_heartbeats_total",
		"Block heartbeats received.", nil, nil)
	descOrphans = prometheus.NewDesc("weedblock_master_orphan_volumes",
		"Volume copies servers report that the registry never had (left alone).", nil, nil)
	descFailovers = prometheus.NewDesc("weedblock_master_failovers_total",
		"Primary promotions (automatic failover and PromoteVolume) made by this master.", nil, nil)
	descEpochChanges = prometheus.NewDesc("weedblock_master_epoch_changes_total",
		"New epochs of existing volumes (failover, promote, member removed, member caught up) made by this master.", nil, nil)
	descVolumeFailovers = prometheus.NewDesc("weedblock_master_volume_failovers",
		"Primary promotions of a block volume since it was created.", []string{"volume"}, nil)
	descRepairs = prometheus.NewDesc("weedblock_master_repairs_requested_total",
		"Copies named by RepairVolume (block.repair) on this master.", nil, nil)
	descCopiesLost = prometheus.NewDesc("weedblock_master_copies_lost_total",
		"Members dropped from their epoch by this master because their copy was lost or untrusted.", []string{"reason"}, nil)
	descRecoveryCopies = prometheus.NewDesc("weedblock_master_recovery_copies_total",
		"Empty recovery copies created by this master on servers that had lost theirs.", nil, nil)
	descRecoveries = prometheus.NewDesc("weedblock_master_volume_recoveries_running",
		"Recoveries of copies the primary of a block volume reports running.", []string{"volume"}, nil)
	descPause = prometheus.NewDesc("weedblock_master_last_failover_pause_seconds",
		"Time from losing the primary to the new primary's first serving report, last failover of the volume.", []string{"volume"}, nil)
)

type collector struct{ m *Master }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLeader, descVolumes, descEpoch, descLease, descServers, descHeartbeats, descOrphans, descFailovers, descEpochChanges, descVolumeFailovers, descPause,
		descRepairs, descCopiesLost, descRecoveryCopies, descRecoveries} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	leader := 0.0
	if m.isLeader() {
		leader = 1
	}
	ch <- prometheus.MustNewConstMetric(descLeader, prometheus.GaugeValue, leader)

	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.clock.Now()
	states := map[string]int{}
	for _, name := range m.reg.names() {
		rec := m.reg.get(name)
		info := m.volumeInfoLocked(rec, now)
		states[info.State]++
		ch <- prometheus.MustNewConstMetric(descEpoch, prometheus.GaugeValue, float64(rec.config.GetEpoch()), name)
		exp, _ := m.leaseExpiryLocked(name)
		ch <- prometheus.MustNewConstMetric(descLease, prometheus.GaugeValue, exp.Sub(now).Seconds(), name)
		ch <- prometheus.MustNewConstMetric(descVolumeFailovers, prometheus.GaugeValue, float64(rec.failovers), name)
		if p, ok := m.lastPause[name]; ok {
			ch <- prometheus.MustNewConstMetric(descPause, prometheus.GaugeValue, p.Seconds(), name)
		}
		running := 0
		for _, r := range info.Recoveries {
			if recovering([]*blockpb.RecoveryProgress{r}) {
				running++
			}
		}
		ch <- prometheus.MustNewConstMetric(descRecoveries, prometheus.GaugeValue, float64(running), name)
	}
	ch <- prometheus.MustNewConstMetric(descRepairs, prometheus.CounterValue, float64(m.repairsRequested))
	ch <- prometheus.MustNewConstMetric(descRecoveryCopies, prometheus.CounterValue, float64(m.recoveryCopies))
	for _, reason := range []string{troubleLost, troubleUntrusted} {
		ch <- prometheus.MustNewConstMetric(descCopiesLost, prometheus.CounterValue, float64(m.copiesLost[reason]), reason)
	}
	for _, st := range []string{StateOK, StateAssigning, StateUnhealthy, StateDegraded, StateRecovering, StateUnavailable, StateCreating, StateDeleting} {
		ch <- prometheus.MustNewConstMetric(descVolumes, prometheus.GaugeValue, float64(states[st]), st)
	}
	alive, dead := 0, 0
	for id := range m.servers {
		if m.aliveLocked(id, now) {
			alive++
		} else {
			dead++
		}
	}
	ch <- prometheus.MustNewConstMetric(descServers, prometheus.GaugeValue, float64(alive), "true")
	ch <- prometheus.MustNewConstMetric(descServers, prometheus.GaugeValue, float64(dead), "false")
	ch <- prometheus.MustNewConstMetric(descHeartbeats, prometheus.CounterValue, float64(m.heartbeats))
	ch <- prometheus.MustNewConstMetric(descFailovers, prometheus.CounterValue, float64(m.failoversTotal))
	ch <- prometheus.MustNewConstMetric(descEpochChanges, prometheus.CounterValue, float64(m.epochChanges))
	orphans := 0
	for _, o := range m.orphans {
		orphans += len(o)
	}
	ch <- prometheus.MustNewConstMetric(descOrphans, prometheus.GaugeValue, float64(orphans))
}

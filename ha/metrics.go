package ha

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collectors are the replica's HA metrics, read at scrape time: whether it
// leads, its leadership changes, how many replicas are live and whether
// the hub answers.
func Collectors(e *Elector, r *Replicas) []prometheus.Collector {
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keyhole_leader",
			Help: "1 while this stub replica holds the leader Lease, else 0."},
			func() float64 { return b(e.IsLeader()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keyhole_leader_transitions_total",
			Help: "Times this replica gained or lost the leader Lease."},
			func() float64 { return float64(e.Transitions()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keyhole_replicas_live",
			Help: "Stub replicas whose Lease is fresh, this one included."},
			func() float64 { return float64(len(r.Live())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keyhole_hub_reachable",
			Help: "1 if the hub API server answered this replica's last heartbeat."},
			func() float64 { ok, _, _ := r.Hub(); return b(ok) }),
	}
}

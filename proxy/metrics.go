package proxy

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/keyhole-dev/keyhole/tunnel"
)

// Metrics are the stub's Prometheus metrics. Per-request series are
// labelled by cluster (and code); agent series are read from the tunnel and
// the prober at scrape time.
type Metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	bytes    *prometheus.CounterVec
	open     *prometheus.GaugeVec
}

// NewMetrics registers the stub's metrics, with agent gauges read from
// agents and their health from prober when scraped.
func NewMetrics(agents AgentLister, prober *Prober) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keyhole_requests_total",
		Help: "Requests through the stub by cluster and response code (refusals included)."}, []string{"cluster", "code"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "keyhole_request_duration_seconds",
		Help: "Time to answer a plain request through the stub, by cluster.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, []string{"cluster"})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keyhole_bytes_total",
		Help: "Body bytes through the stub by cluster and direction (in: from callers, out: to callers), sessions included."}, []string{"cluster", "direction"})
	m.open = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "keyhole_open_streams",
		Help: "Requests in flight and upgraded sessions (exec, attach, port-forward) open now."}, []string{"kind"})
	m.reg.MustRegister(m.requests, m.latency, m.bytes, m.open, agentCollector{agents, prober},
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// Register adds collectors of other parts of the stub (leader election).
func (m *Metrics) Register(cs ...prometheus.Collector) { m.reg.MustRegister(cs...) }

// Handler serves the metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

func (m *Metrics) observe(cluster string, code int, d time.Duration, in, out int64, session bool) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(cluster, strconv.Itoa(code)).Inc()
	if !session {
		m.latency.WithLabelValues(cluster).Observe(d.Seconds())
	}
	m.bytes.WithLabelValues(cluster, "in").Add(float64(in))
	m.bytes.WithLabelValues(cluster, "out").Add(float64(out))
}

func (m *Metrics) openAdd(kind string, delta float64) {
	if m != nil {
		m.open.WithLabelValues(kind).Add(delta)
	}
}

var (
	descAgents = prometheus.NewDesc("keyhole_agents_connected", "Agents connected per cluster.", []string{"cluster"}, nil)
	descReady  = prometheus.NewDesc("keyhole_cluster_ready", "1 when a probe through the tunnel reached the cluster's API server within the ready window.", []string{"cluster"}, nil)
	descRTT    = prometheus.NewDesc("keyhole_agent_tunnel_rtt_seconds", "Round trip of the last yamux ping to each agent.", []string{"cluster", "agent"}, nil)
	descRound  = prometheus.NewDesc("keyhole_agent_last_round_trip_timestamp_seconds", "When a probe last went through each agent to its API server.", []string{"cluster", "agent"}, nil)
	descConn   = prometheus.NewDesc("keyhole_agent_connects_total", "Agent sessions opened per cluster since the stub started; rising without new agents means reconnects.", []string{"cluster"}, nil)
	descRefuse = prometheus.NewDesc("keyhole_agent_handshakes_refused_total", "Agent handshakes told to come back later (stub busy: Retry-After).", nil, nil)
)

// sessionCounter is what the tunnel (*tunnel.Server) counts of sessions.
type sessionCounter interface {
	Connects() map[string]int64
	Refused() int64
}

// agentCollector reads the tunnel's registry and the prober at scrape time.
type agentCollector struct {
	agents AgentLister
	prober *Prober
}

func (c agentCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descAgents
	ch <- descReady
	ch <- descRTT
	ch <- descRound
	if _, ok := c.agents.(sessionCounter); ok {
		ch <- descConn
		ch <- descRefuse
	}
}

func (c agentCollector) Collect(ch chan<- prometheus.Metric) {
	per := map[string][]tunnel.AgentInfo{}
	for _, a := range c.agents.Agents("") {
		per[a.Cluster] = append(per[a.Cluster], a)
	}
	for cluster, list := range per {
		for _, a := range list {
			h, _ := c.prober.Health(cluster, a.ID)
			ch <- prometheus.MustNewConstMetric(descRTT, prometheus.GaugeValue, h.TunnelRTT.Seconds(), cluster, a.ID)
			if !h.LastRoundTrip.IsZero() {
				ch <- prometheus.MustNewConstMetric(descRound, prometheus.GaugeValue, float64(h.LastRoundTrip.Unix()), cluster, a.ID)
			}
		}
		ch <- prometheus.MustNewConstMetric(descAgents, prometheus.GaugeValue, float64(len(list)), cluster)
		ready := 0.0
		if c.prober.Ready(cluster) {
			ready = 1
		}
		ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, ready, cluster)
	}
	if sc, ok := c.agents.(sessionCounter); ok {
		for cluster, n := range sc.Connects() {
			ch <- prometheus.MustNewConstMetric(descConn, prometheus.CounterValue, float64(n), cluster)
		}
		ch <- prometheus.MustNewConstMetric(descRefuse, prometheus.CounterValue, float64(sc.Refused()))
	}
}

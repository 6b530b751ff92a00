package stub

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/keyhole-dev/keyhole/config"
)

// Live state: which agents a running stub has and how healthy they are
// lives in that stub's memory, not in the state. An operator's command
// reads it from the stub's Prometheus metrics (metrics.listen), which
// need no credential and are meant for the operator's side only:
//
//	keyhole_agents_connected{cluster}                          agents per cluster
//	keyhole_cluster_ready{cluster}                             1: a probe went through an agent to the API server
//	keyhole_agent_tunnel_rtt_seconds{cluster,agent}            each agent, its last ping
//	keyhole_agent_last_round_trip_timestamp_seconds{cluster,agent}
//
// A replica of a set sees every agent (each agent holds a session to every
// replica), so any one replica's metrics answer for the set.

// LiveAgent is a connected agent as a stub's metrics show it.
type LiveAgent struct {
	ID string `json:"id"`
	// TunnelRTT is the round trip of the last ping on its session.
	TunnelRTT time.Duration `json:"tunnelRTT"`
	// LastRoundTrip is when a probe last went through it to its API
	// server and back (nil: not yet).
	LastRoundTrip *time.Time `json:"lastRoundTrip,omitempty"`
}

// LiveCluster is what a running stub knows of a cluster now.
type LiveCluster struct {
	Agents []LiveAgent `json:"agents"`
	// Ready: an agent had a successful round trip to the API server in
	// the last 30 s.
	Ready bool `json:"ready"`
}

// metricsMarker is a family every Keyhole stub's metrics carry.
const metricsMarker = "keyhole_agent_handshakes_refused_total"

// MetricsURL is the URL of the metrics of the stub that cfg configures, as
// reached from its own machine (or pod): metrics.listen with an
// unspecified host made 127.0.0.1. Empty when metrics are off.
func MetricsURL(cfg config.Stub) string {
	host, port, err := net.SplitHostPort(cfg.Metrics.Listen)
	if err != nil || cfg.Metrics.Listen == "" {
		return ""
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/metrics"
}

// ReadLive scrapes the stub metrics at url and returns its clusters that
// have agents, by ID (a registered cluster missing from it has none).
func ReadLive(ctx context.Context, client *http.Client, url string) (map[string]LiveCluster, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		return nil, fmt.Errorf("%s: %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
	}
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%s: not Prometheus text metrics: %w", url, err)
	}
	if _, ok := fams[metricsMarker]; !ok {
		return nil, fmt.Errorf("%s: not a Keyhole stub's metrics (no %s)", url, metricsMarker)
	}
	return liveFrom(fams)
}

// liveFrom reads the agent families of a scrape.
func liveFrom(fams map[string]*dto.MetricFamily) (map[string]LiveCluster, error) {
	out := map[string]LiveCluster{}
	agents := map[[2]string]*LiveAgent{}
	agent := func(cluster, id string) *LiveAgent {
		k := [2]string{cluster, id}
		if agents[k] == nil {
			agents[k] = &LiveAgent{ID: id}
		}
		return agents[k]
	}
	var errs []error
	each := func(name string, fn func(labels map[string]string, v float64)) {
		f := fams[name]
		if f == nil {
			return
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			v := m.GetGauge().GetValue()
			if labels["cluster"] == "" || math.IsNaN(v) {
				errs = append(errs, fmt.Errorf("%s: a sample without a cluster label or value", name))
				continue
			}
			fn(labels, v)
		}
	}
	each("keyhole_cluster_ready", func(l map[string]string, v float64) {
		c := out[l["cluster"]]
		c.Ready = v == 1
		out[l["cluster"]] = c
	})
	each("keyhole_agent_tunnel_rtt_seconds", func(l map[string]string, v float64) {
		agent(l["cluster"], l["agent"]).TunnelRTT = time.Duration(v * float64(time.Second)).Round(time.Microsecond)
	})
	each("keyhole_agent_last_round_trip_timestamp_seconds", func(l map[string]string, v float64) {
		t := time.Unix(int64(v), 0).UTC()
		agent(l["cluster"], l["agent"]).LastRoundTrip = &t
	})
	for k, a := range agents {
		c := out[k[0]]
		c.Agents = append(c.Agents, *a)
		out[k[0]] = c
	}
	for id, c := range out {
		slices.SortFunc(c.Agents, func(a, b LiveAgent) int { return strings.Compare(a.ID, b.ID) })
		out[id] = c
	}
	return out, errors.Join(errs...)
}

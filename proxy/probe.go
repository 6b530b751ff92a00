package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/keyhole-dev/keyhole/tunnel"
)

// Probe timing: each agent is probed about a second after it connects and
// then every ProbeInterval; a cluster is ready while one of its agents had a
// successful round trip within ReadyWindow.
const (
	ProbeInterval = 10 * time.Second
	ProbeTimeout  = 5 * time.Second
	ReadyWindow   = 3 * ProbeInterval
)

// ProbeTarget is what the prober needs of the tunnel (*tunnel.Server).
type ProbeTarget interface {
	Agents(cluster string) []tunnel.AgentInfo
	DialAgent(cluster, id string) (net.Conn, error)
	PingAgent(cluster, id string) (time.Duration, error)
	SetHealth(cluster, id string, h tunnel.Health)
}

// Prober measures health from the data path: for every connected agent, a
// yamux ping (tunnel RTT) and a request through the tunnel that the agent
// answers by asking its API server for its version.
type Prober struct {
	Target ProbeTarget
	Logger *zap.Logger
	// Interval between probes of one agent; default ProbeInterval.
	Interval time.Duration
	// Replicas, when set, lists the live stub replicas; probes carry the
	// list so that agents open sessions to replicas added later.
	Replicas func() []string

	mu   sync.Mutex
	last map[string]time.Time // cluster/agent → last probe start
}

// Run probes until ctx ends. It owns one goroutine per probe in flight and
// waits for them before returning.
func (p *Prober) Run(ctx context.Context) {
	if p.Logger == nil {
		p.Logger = zap.NewNop()
	}
	if p.Interval <= 0 {
		p.Interval = ProbeInterval
	}
	p.last = map[string]time.Time{}
	var wg sync.WaitGroup
	defer wg.Wait()
	tick := time.NewTicker(min(time.Second, p.Interval))
	defer tick.Stop()
	for {
		now := time.Now()
		seen := map[string]bool{}
		for _, a := range p.Target.Agents("") {
			key := a.Cluster + "/" + a.ID
			seen[key] = true
			p.mu.Lock()
			due := now.Sub(p.last[key]) >= p.Interval
			if due {
				p.last[key] = now
			}
			p.mu.Unlock()
			if due {
				wg.Add(1)
				go func() {
					defer wg.Done()
					h := p.probe(ctx, a)
					p.Target.SetHealth(a.Cluster, a.ID, h)
					if h.Error != "" {
						p.Logger.Warn("probe through the tunnel failed", zap.String("cluster", a.Cluster), zap.String("agent", a.ID), zap.String("error", h.Error))
					}
				}()
			}
		}
		p.mu.Lock()
		for k := range p.last {
			if !seen[k] {
				delete(p.last, k) // a reconnecting agent is probed again at once
			}
		}
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (p *Prober) probe(ctx context.Context, a tunnel.AgentInfo) tunnel.Health {
	h := a.Health
	rtt, err := p.Target.PingAgent(a.Cluster, a.ID)
	if err != nil {
		h.Error = "tunnel ping: " + err.Error()
		return h
	}
	h.TunnelRTT = rtt
	version, err := p.roundTrip(ctx, a)
	if err != nil {
		h.Error = err.Error()
		return h
	}
	h.LastRoundTrip, h.APIServerVersion, h.Error = time.Now(), version, ""
	return h
}

func (p *Prober) roundTrip(ctx context.Context, a tunnel.AgentInfo) (string, error) {
	conn, err := p.Target.DialAgent(a.Cluster, a.ID)
	if err != nil {
		return "", fmt.Errorf("open stream: %w", err)
	}
	defer conn.Close()
	deadline := time.Now().Add(ProbeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	replicas := ""
	if p.Replicas != nil {
		replicas = tunnel.HeaderReplicas + ": " + strings.Join(p.Replicas(), ",") + "\r\n"
	}
	if _, err := io.WriteString(conn, "GET /keyhole/v1/probe HTTP/1.1\r\nHost: agent\r\n"+HeaderProbe+": 1\r\n"+replicas+"Connection: close\r\n\r\n"); err != nil {
		return "", fmt.Errorf("probe: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return "", fmt.Errorf("probe: %w", err)
	}
	defer resp.Body.Close()
	var body struct {
		GitVersion string `json:"gitVersion"`
		Error      string `json:"error"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body); err != nil {
		return "", fmt.Errorf("probe answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("API server: %s", body.Error)
	}
	return body.GitVersion, nil
}

// serveProbe answers the stub's probe with the API server's version, asked
// with the agent's own credentials.
func (a *AgentHop) serveProbe(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), ProbeTimeout)
	defer cancel()
	w.Header().Set("Content-Type", "application/json")
	raw, err := a.authz.Discovery().RESTClient().Get().AbsPath("/version").Do(ctx).Raw()
	var v struct {
		GitVersion string `json:"gitVersion"`
	}
	if err == nil {
		err = json.Unmarshal(raw, &v)
	}
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]string{"gitVersion": v.GitVersion})
}

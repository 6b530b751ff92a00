package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
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
}

// Health is what the prober last learned about an agent by sending a
// request through its tunnel.
type Health struct {
	// LastRoundTrip is when a probe last went through the tunnel to the
	// API server and back.
	LastRoundTrip time.Time `json:"lastRoundTrip,omitzero"`
	// TunnelRTT is the round trip of a yamux ping on the session.
	TunnelRTT time.Duration `json:"tunnelRTT"`
	// APIServerVersion is the gitVersion the API server reported.
	APIServerVersion string `json:"apiServerVersion,omitempty"`
	// Error is why the last probe failed ("" when it succeeded).
	Error string `json:"error,omitempty"`
}

// ready is the one readiness predicate: the last probe succeeded, within
// ReadyWindow of now.
func (h Health) ready(now time.Time) bool {
	return h.Error == "" && !h.LastRoundTrip.IsZero() && now.Sub(h.LastRoundTrip) < ReadyWindow
}

// ProberConfig configures a Prober.
type ProberConfig struct {
	// Target is the tunnel whose agents are probed (required).
	Target ProbeTarget
	Logger *zap.Logger
	// Interval between probes of one agent; default ProbeInterval.
	Interval time.Duration
	// Replicas, when set, lists the live stub replicas; probes carry the
	// list so that agents open sessions to replicas added later.
	Replicas func() []string
}

// Prober measures health from the data path: for every connected agent, a
// yamux ping (tunnel RTT) and a request through the tunnel that the agent
// answers by asking its API server for its version. It keeps what it
// learned, by cluster and agent, for as long as that agent's session lasts;
// Health and Ready read it, and may be called before Run.
type Prober struct {
	cfg ProberConfig

	mu     sync.Mutex
	agents map[agentKey]*probed
}

type agentKey struct{ cluster, id string }

// probed is the prober's record of one agent session.
type probed struct {
	connected time.Time // the session's start: a reconnect is a new record
	last      time.Time // last probe start
	health    Health
	measured  bool // a probe of this session finished
}

// NewProber validates cfg and returns a Prober; Run starts probing.
func NewProber(cfg ProberConfig) (*Prober, error) {
	if cfg.Target == nil {
		return nil, errors.New("proxy: ProberConfig.Target is required")
	}
	if cfg.Interval < 0 {
		return nil, fmt.Errorf("proxy: ProberConfig.Interval %v must not be negative", cfg.Interval)
	}
	if cfg.Interval == 0 {
		cfg.Interval = ProbeInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	return &Prober{cfg: cfg, agents: map[agentKey]*probed{}}, nil
}

// Health returns what the last probe of agent id of cluster found, and
// false until a probe of its current session finished (or once it left).
func (p *Prober) Health(cluster, id string) (Health, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.agents[agentKey{cluster, id}]
	if e == nil || !e.measured {
		return Health{}, false
	}
	return e.health, true
}

// Ready reports whether cluster is ready: one of its connected agents had
// a successful round trip through the tunnel to the API server within
// ReadyWindow.
func (p *Prober) Ready(cluster string) bool {
	now := time.Now()
	for _, a := range p.cfg.Target.Agents(cluster) {
		if h, ok := p.Health(a.Cluster, a.ID); ok && h.ready(now) {
			return true
		}
	}
	return false
}

// Run probes until ctx ends. It owns one goroutine per probe in flight and
// waits for them before returning. Call it once.
func (p *Prober) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	tick := time.NewTicker(min(time.Second, p.cfg.Interval))
	defer tick.Stop()
	for {
		now := time.Now()
		seen := map[agentKey]bool{}
		for _, a := range p.cfg.Target.Agents("") {
			key := agentKey{a.Cluster, a.ID}
			seen[key] = true
			p.mu.Lock()
			e := p.agents[key]
			if e == nil || !e.connected.Equal(a.Connected) {
				e = &probed{connected: a.Connected} // a new agent, or one that reconnected: probe it at once
				p.agents[key] = e
			}
			due := now.Sub(e.last) >= p.cfg.Interval
			if due {
				e.last = now
			}
			prev := e.health
			p.mu.Unlock()
			if due {
				wg.Add(1)
				go func() {
					defer wg.Done()
					h := p.probe(ctx, a, prev)
					p.mu.Lock()
					if p.agents[key] == e { // not gone or replaced meanwhile
						e.health, e.measured = h, true
					}
					p.mu.Unlock()
					if h.Error != "" {
						p.cfg.Logger.Warn("probe through the tunnel failed", zap.String("cluster", a.Cluster), zap.String("agent", a.ID), zap.String("error", h.Error))
					}
				}()
			}
		}
		p.mu.Lock()
		for k := range p.agents {
			if !seen[k] {
				delete(p.agents, k) // the agent disconnected: its health goes with it
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

// probe measures a, starting from what the previous probe found (so a
// failure keeps the last good round trip's time and version).
func (p *Prober) probe(ctx context.Context, a tunnel.AgentInfo, h Health) Health {
	rtt, err := p.cfg.Target.PingAgent(a.Cluster, a.ID)
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
	conn, err := p.cfg.Target.DialAgent(a.Cluster, a.ID)
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
	if p.cfg.Replicas != nil {
		replicas = tunnel.HeaderReplicas + ": " + strings.Join(p.cfg.Replicas(), ",") + "\r\n"
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

package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/keyhole-dev/keyhole/proxy"
	"github.com/keyhole-dev/keyhole/tunnel"
)

// fleet is many tunnel.Agents run as goroutines of the test against the
// real stub binary; their log lines (all at one observer) say when each
// connected and when a stub sent one away.
type fleet struct {
	n       int
	started time.Time // when the first agent was started
	logs    *observer.ObservedLogs
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// startFleet starts clusters×perCluster agents, spread over spread (a fleet
// that boots together still starts over a few seconds). Each serves the
// stub's requests with h (nil: "ok" to every request).
func (g *gateway) startFleet(t testing.TB, clusters, perCluster int, spread time.Duration, h http.Handler) *fleet {
	if h == nil {
		h = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	}
	core, logs := observer.New(zapcore.InfoLevel)
	log := zap.New(core)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(g.caPEM)
	ctx, cancel := context.WithCancel(context.Background())
	f := &fleet{n: clusters * perCluster, logs: logs, cancel: cancel}
	t.Cleanup(f.stop)
	var agents []*tunnel.Agent
	for c := 0; c < clusters; c++ {
		id := fmt.Sprintf("fleet-%02d", c)
		_, secretFile := g.register(id)
		for i := 0; i < perCluster; i++ {
			a, err := tunnel.NewAgent(tunnel.AgentConfig{StubURL: g.url, Cluster: id, AgentID: fmt.Sprintf("a%03d", i), Fingerprint: "fp-" + id,
				Secret: func() (string, error) {
					b, err := os.ReadFile(secretFile)
					return strings.TrimSpace(string(b)), err
				},
				TLS: &tls.Config{RootCAs: pool}, Proxy: func(*http.Request) (*url.URL, error) { return nil, nil },
				Handler: h,
				Logger:  log.With(zap.String("agent", id+"/"+fmt.Sprint(i))), KeepAliveInterval: 2 * time.Second, KeepAliveTimeout: 2 * time.Second,
				DrainTimeout: 2 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			agents = append(agents, a)
		}
	}
	f.started = time.Now()
	for i, a := range agents {
		f.wg.Add(1)
		go func() { defer f.wg.Done(); _ = a.Run(ctx) }()
		if i%25 == 24 {
			time.Sleep(spread / time.Duration(len(agents)/25))
		}
	}
	return f
}

func (f *fleet) stop() { f.cancel(); f.wg.Wait() }

// since returns the times, after t0, of the log lines with message msg.
func (f *fleet) since(msg string, t0 time.Time) []time.Duration {
	var out []time.Duration
	for _, e := range f.logs.FilterMessage(msg).All() {
		if e.Time.After(t0) {
			out = append(out, e.Time.Sub(t0))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// waits returns the Retry-After waits the agents were given after t0.
func (f *fleet) waits(t0 time.Time) []time.Duration {
	var out []time.Duration
	for _, e := range f.logs.FilterMessage("stub is busy; coming back when it asked").All() {
		if e.Time.After(t0) {
			if d, ok := e.ContextMap()["retry_in"].(time.Duration); ok {
				out = append(out, d)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// refusedAgents counts the agents told to come back later after t0.
func (f *fleet) refusedAgents(t0 time.Time) int {
	seen := map[any]bool{}
	for _, e := range f.logs.FilterMessage("stub is busy; coming back when it asked").All() {
		if e.Time.After(t0) {
			seen[e.ContextMap()["agent"]] = true
		}
	}
	return len(seen)
}

// connected counts the agents the stub holds (-1 when it does not answer).
func (g *gateway) connected(token string) int {
	req, _ := http.NewRequest("GET", g.url+proxy.ClustersPath, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := g.http.Do(req)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var list []proxy.ClusterStatus
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return -1
	}
	n := 0
	for _, c := range list {
		n += len(c.Agents)
	}
	return n
}

// restartStub starts the stub again on the same port and state (after a
// stop), with the config file as it is now.
func (g *gateway) restartStub(t *testing.T) {
	t.Helper()
	g.stub = startProcess(t, "stub", filepath.Join(g.dir, fmt.Sprintf("stub-%d.log", time.Now().UnixNano())), nil, g.stubBin, "serve", "--config", g.cfg)
}

// sigterm stops the stub gracefully and returns how long it took to exit.
func (g *gateway) sigterm(t *testing.T, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	g.stub.signal(syscall.SIGTERM)
	g.waitStubExit(t, limit)
	took := time.Since(start)
	t.Logf("stub: %s; %s", logMsg(g.stub, "stopped serving"), logMsg(g.stub, "agent sessions closed"))
	return took
}

// waitStubExit waits for the stub to exit, with code 0, within limit.
func (g *gateway) waitStubExit(t *testing.T, limit time.Duration) {
	t.Helper()
	select {
	case <-g.stub.done:
	case <-time.After(limit):
		t.Fatalf("stub did not exit within %v\n%s", limit, g.stub.tail(20))
	}
	if code := g.stub.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("stub exit code %d\n%s", code, g.stub.tail(20))
	}
}

// logMsg returns the last JSON log line of p with message msg, from "msg" on.
func logMsg(p *process, msg string) string {
	out := ""
	for _, l := range strings.Split(p.logText(), "\n") {
		if i := strings.Index(l, `"msg":"`+msg+`"`); i >= 0 {
			out = l[i:]
		}
	}
	return out
}

// quantiles renders the times by which q of n arrivals had happened.
func quantiles(arrivals []time.Duration, n int) string {
	var parts []string
	for _, q := range []float64{0.1, 0.5, 0.9, 1} {
		i := int(math.Ceil(q*float64(n))) - 1
		v := "never"
		if i < len(arrivals) {
			v = arrivals[i].Round(10 * time.Millisecond).String()
		}
		parts = append(parts, fmt.Sprintf("%d%% %s", int(q*100), v))
	}
	return strings.Join(parts, ", ")
}

// peakPerSecond is the most arrivals within any one second.
func peakPerSecond(arrivals []time.Duration) int {
	peak := 0
	for i, j := 0, 0; j < len(arrivals); j++ {
		for arrivals[j]-arrivals[i] >= time.Second {
			i++
		}
		peak = max(peak, j-i+1)
	}
	return peak
}

// curve renders arrivals per bucket.
func curve(arrivals []time.Duration, bucket time.Duration) string {
	var b strings.Builder
	for t, i := time.Duration(0), 0; i < len(arrivals); t += bucket {
		c := 0
		for ; i < len(arrivals) && arrivals[i] < t+bucket; i++ {
			c++
		}
		fmt.Fprintf(&b, "%d ", c)
	}
	return strings.TrimSpace(b.String())
}

// TestFleet runs 500 agents (10 clusters × 50, goroutines of this test)
// against the real stub binary: they all connect; a SIGTERM and restart of
// the stub on the same port brings them back spread out by their jittered
// backoff (the reconnect curve); a stub with tunnel.maxSessions and
// tunnel.maxHandshakesPerSecond below the fleet holds exactly maxSessions
// and sends the rest away with spread-out Retry-After.
func TestFleet(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, leaks) }) // runs last: every agent and connection is gone
	const clusters, perCluster = 10, 50
	const n = clusters * perCluster
	g := startGateway(t, nil)
	t.Cleanup(g.http.CloseIdleConnections)
	var token string // minted once a cluster is registered
	count := 0
	waitCount := func(what string, want int, limit time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		waitFor(t, limit, what, func() bool {
			count = g.connected(token)
			return count == want
		}, g.stub)
		return time.Since(start)
	}

	t0 := time.Now()
	f := g.startFleet(t, clusters, perCluster, 2*time.Second, nil)
	token = tokenOf(t, g.kubeconfig("ops"))
	waitCount("the fleet to connect", n, 60*time.Second)
	t.Logf("fleet start: %d agents (%d clusters × %d, started over 2 s) connected, after the first was started: %s",
		n, clusters, perCluster, quantiles(f.since("tunnel up", f.started), n))
	if w := f.waits(t0); len(w) > 0 {
		t.Logf("fleet start: %d handshakes were told to come back later", len(w))
	}

	t.Run("SIGTERM and restart on the same port: reconnect curve", func(t *testing.T) {
		stopAt := time.Now()
		exit := g.sigterm(t, 30*time.Second)
		restartAt := time.Now()
		g.restartStub(t)
		took := waitCount("the fleet to reconnect", n, 60*time.Second)
		ups := f.since("tunnel up", restartAt)
		refused := f.waits(stopAt)
		t.Logf("stub with %d agent sessions: SIGTERM to exit %v; stub restarted %v after the SIGTERM", n, exit.Round(time.Millisecond), restartAt.Sub(stopAt).Round(time.Millisecond))
		t.Logf("reconnect after restart (from the new process's start): %s; stub saw all %d after %v", quantiles(ups, n), n, took.Round(10*time.Millisecond))
		t.Logf("reconnects per 250 ms: %s", curve(ups, 250*time.Millisecond))
		t.Logf("peak reconnects in one second: %d; handshakes told to come back later (503 + Retry-After): %d", peakPerSecond(ups), len(refused))
		if len(ups) < n {
			t.Fatalf("%d of %d agents logged a new tunnel", len(ups), n)
		}
		// Generous: the fleet is not one burst (full jitter spreads the
		// middle 80% over hundreds of ms at least) and it is back in time.
		if spread := ups[n*9/10] - ups[n/10]; spread < 200*time.Millisecond {
			t.Fatalf("80%% of the fleet reconnected within %v: a herd", spread)
		}
	})

	t.Run("over its limits the stub holds maxSessions and sends the rest away", func(t *testing.T) {
		const maxSessions, perSecond = 300, 100
		g.setConfig(fmt.Sprintf("tunnel: {maxSessions: %d, maxHandshakesPerSecond: %d}\n", maxSessions, perSecond))
		stopAt := time.Now()
		g.sigterm(t, 30*time.Second)
		restartAt := time.Now()
		g.restartStub(t)
		took := waitCount("maxSessions agents", maxSessions, 60*time.Second)
		// Hold: never more than maxSessions, until every agent left out has
		// been told to come back later (they retry on their own backoff).
		held := time.Now()
		most, refusedAgents := count, 0
		for time.Since(held) < 30*time.Second {
			most = max(most, g.connected(token))
			refusedAgents = f.refusedAgents(stopAt)
			if refusedAgents >= n-maxSessions && time.Since(held) > 2*time.Second {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		ups := f.since("tunnel up", restartAt)
		waits := f.waits(stopAt)
		t.Logf("limits maxSessions=%d maxHandshakesPerSecond=%d, %d agents: %d held after %v (at most %d while the %d left out, %d seen, were sent away over %v); peak new sessions in one second %d",
			maxSessions, perSecond, n, maxSessions, took.Round(10*time.Millisecond), most, n-maxSessions, refusedAgents, time.Since(held).Round(100*time.Millisecond), peakPerSecond(ups))
		if len(waits) == 0 {
			t.Fatal("no agent was told to come back later")
		}
		t.Logf("refusals: %d, Retry-After waits: min %v, median %v, max %v; spread per 5 s: %s", len(waits), waits[0], waits[len(waits)/2], waits[len(waits)-1],
			curve(waits, 5*time.Second))
		if most != maxSessions {
			t.Fatalf("the stub held %d sessions, want exactly %d", most, maxSessions)
		}
		if refusedAgents < n-maxSessions {
			t.Fatalf("%d agents were told to come back later, want all %d over the limit", refusedAgents, n-maxSessions)
		}
		if waits[0] < 5*time.Second || waits[len(waits)-1] > 31*time.Second || waits[len(waits)/4] == waits[len(waits)*3/4] {
			t.Fatalf("Retry-After waits not spread over 5-30 s: %v", waits)
		}
		if p := peakPerSecond(ups); p > 2*perSecond+10 {
			t.Fatalf("%d new sessions in one second at maxHandshakesPerSecond=%d", p, perSecond)
		}
	})

	t.Run("limits lifted: every agent comes back", func(t *testing.T) {
		g.setConfig("")
		g.sigterm(t, 30*time.Second)
		restartAt := time.Now()
		g.restartStub(t)
		took := waitCount("the whole fleet", n, 60*time.Second)
		t.Logf("limits lifted: all %d agents back %v after the restart (those told to wait come back when they were told): %s",
			n, took.Round(10*time.Millisecond), quantiles(f.since("tunnel up", restartAt), n))
	})
	f.stop()
	t.Logf("whole test: %v", time.Since(t0).Round(time.Second))
}

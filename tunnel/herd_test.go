package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

type blockingAuth struct{ release chan struct{} }

func (b blockingAuth) AuthenticateAgent(cluster, secret string) error { <-b.release; return nil }

// A stub at its handshake limit sends agents away for the time it names.
func TestBusyStubSaysRetryAfter(t *testing.T) {
	auth := blockingAuth{release: make(chan struct{})}
	srv, err := NewServer(ServerConfig{Auth: auth, MaxHandshakes: 1, RetryAfterMin: 2 * time.Second, RetryAfterMax: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewTLSServer(srv)
	defer ts.Close()
	defer srv.Close()
	cfg := func(id string) AgentConfig {
		return AgentConfig{StubURL: ts.URL, Cluster: "c1", AgentID: id, Fingerprint: "fp", Secret: func() (string, error) { return "x", nil },
			TLS: &tls.Config{InsecureSkipVerify: true}, Proxy: func(*http.Request) (*url.URL, error) { return nil, nil }, Handler: http.NotFoundHandler()}
	}
	first, _ := NewAgent(cfg("first"))
	firstDone := make(chan error, 1)
	go func() {
		sess, err := first.Dial(context.Background())
		if err == nil {
			sess.Close()
		}
		firstDone <- err
	}()
	time.Sleep(200 * time.Millisecond) // the first handshake holds the only slot
	second, _ := NewAgent(cfg("second"))
	_, err = second.Dial(context.Background())
	var busy *busyError
	if !errors.As(err, &busy) || !errors.Is(err, ErrBusy) || busy.after < 2*time.Second || busy.after > 4*time.Second {
		t.Fatalf("second agent: %v", err)
	}
	close(auth.release)
	if err := <-firstDone; err != nil {
		t.Fatal(err)
	}
}

// A stub restart under 500 agents: they come back spread out by jittered
// backoff, not in one burst. The test logs the reconnect curve.
//
// Each agent is timed from its own disconnect (its "tunnel down" line), not
// from when the old server's Close returns: Close ends 500 sessions one by
// one and agents reconnect while it runs, so a clock started after it
// squeezes whatever spread there was into the first instant. What is
// asserted does not depend on the machine's speed: every agent drew its own
// wait before redialing (the draws spread over the first backoff window),
// and none reconnected before its wait was over. Load can only make agents
// later, so a herd (no jitter) fails here however busy the machine is.
func TestReconnectCurve500Agents(t *testing.T) {
	const n = 500
	var current atomic.Pointer[Server]
	newServer := func() *Server {
		// Agents the stub is too busy for come back after 1-3 s rather
		// than the default 5-30 s, so two refusals in a row still fit the
		// waits below.
		s, err := NewServer(ServerConfig{Auth: secrets{"c1": "s3cret"}, Logger: zap.NewNop(), RetryAfterMin: time.Second, RetryAfterMax: 3 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	current.Store(newServer())
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { current.Load().ServeHTTP(w, r) }))
	defer ts.Close()
	core, logs := observer.New(zap.InfoLevel)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait(); current.Load().Close() }()
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("a%03d", i)
		a, err := NewAgent(AgentConfig{StubURL: ts.URL, Cluster: "c1", AgentID: id, Fingerprint: "fp",
			Secret: func() (string, error) { return "s3cret", nil }, TLS: &tls.Config{InsecureSkipVerify: true},
			Proxy: func(*http.Request) (*url.URL, error) { return nil, nil }, Handler: http.NotFoundHandler(),
			Logger:            zap.New(core).With(zap.String("agent", id)),
			KeepAliveInterval: time.Minute, KeepAliveTimeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = a.Run(ctx) }()
	}
	// all: the server holds n agents and each has logged "tunnel up" since
	// the last TakeAll.
	all := func(s *Server, limit time.Duration) {
		for deadline := time.Now().Add(limit); len(s.Agents("c1")) < n || logs.FilterMessage("tunnel up").Len() < n; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d agents connected after %v (%d logged tunnel up)", len(s.Agents("c1")), n, limit, logs.FilterMessage("tunnel up").Len())
			}
		}
	}
	all(current.Load(), 60*time.Second)
	logs.TakeAll()

	// Restart: every session ends at once, a new stub takes over.
	old := current.Load()
	current.Store(newServer())
	closeStart := time.Now()
	old.Close()
	closeTook := time.Since(closeStart)
	all(current.Load(), 60*time.Second)

	type agentTimes struct {
		down, sched, up time.Time
		wait            time.Duration
	}
	byAgent := map[string]*agentTimes{}
	for _, e := range logs.TakeAll() {
		m := e.ContextMap()
		id, _ := m["agent"].(string)
		at := byAgent[id]
		if at == nil {
			at = &agentTimes{}
			byAgent[id] = at
		}
		switch e.Message {
		case "tunnel down":
			at.down = e.Time
		case "reconnecting after a lost session":
			if at.sched.IsZero() {
				at.sched, at.wait = e.Time, m["retry_in"].(time.Duration)
			}
		case "tunnel up":
			if at.up.IsZero() {
				at.up = e.Time
			}
		}
	}
	var delays, waits []time.Duration
	for id, at := range byAgent {
		if at.down.IsZero() || at.sched.IsZero() || at.up.IsZero() {
			t.Fatalf("agent %s: tunnel down at %v, reconnect scheduled at %v, tunnel up at %v: want all three", id, at.down, at.sched, at.up)
		}
		// A timer never fires early, so this holds on any machine; it
		// fails only if the agent redialed without waiting.
		if got := at.up.Sub(at.sched); got < at.wait {
			t.Errorf("agent %s reconnected %v after scheduling a wait of %v", id, got, at.wait)
		}
		delays = append(delays, at.up.Sub(at.down))
		waits = append(waits, at.wait)
	}
	if len(delays) != n {
		t.Fatalf("%d agents reconnected, want %d", len(delays), n)
	}
	slices.Sort(delays)
	slices.Sort(waits)
	var curve []string
	bucket := 100 * time.Millisecond
	for b, i := time.Duration(0), 0; i < len(delays); b += bucket {
		c := 0
		for ; i < len(delays) && delays[i] < b+bucket; i++ {
			c++
		}
		if c > 0 {
			curve = append(curve, fmt.Sprintf("%v:%d", (b+bucket).Round(time.Millisecond), c))
		}
	}
	t.Logf("the old server's Close took %v", closeTook.Round(time.Millisecond))
	t.Logf("reconnect curve after a stub restart, %d agents, each from its own disconnect (agents per 100 ms, empty ones left out): %s", n, strings.Join(curve, " "))
	t.Logf("reconnected after: first %v, median %v, last %v; waits drawn: 10%% %v, median %v, 90%% %v", delays[0].Round(time.Millisecond),
		delays[n/2].Round(time.Millisecond), delays[n-1].Round(time.Millisecond),
		waits[n/10].Round(time.Millisecond), waits[n/2].Round(time.Millisecond), waits[n*9/10].Round(time.Millisecond))
	// Full jitter over the first retry window (0.5 s): the middle 80% of
	// the fleet does not come back at one instant.
	if spread := waits[n*9/10] - waits[n/10]; spread < 200*time.Millisecond {
		t.Fatalf("the middle 80%% of the agents waited within %v of each other before reconnecting: a herd", spread)
	}
}

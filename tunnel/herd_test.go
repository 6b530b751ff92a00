package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
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
func TestReconnectCurve500Agents(t *testing.T) {
	const n = 500
	var current atomic.Pointer[Server]
	newServer := func() *Server {
		s, err := NewServer(ServerConfig{Auth: secrets{"c1": "s3cret"}, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	current.Store(newServer())
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { current.Load().ServeHTTP(w, r) }))
	defer ts.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait(); current.Load().Close() }()
	for i := 0; i < n; i++ {
		a, err := NewAgent(AgentConfig{StubURL: ts.URL, Cluster: "c1", AgentID: fmt.Sprintf("a%03d", i), Fingerprint: "fp",
			Secret: func() (string, error) { return "s3cret", nil }, TLS: &tls.Config{InsecureSkipVerify: true},
			Proxy: func(*http.Request) (*url.URL, error) { return nil, nil }, Handler: http.NotFoundHandler(), Logger: zap.NewNop(),
			KeepAliveInterval: time.Minute, KeepAliveTimeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = a.Run(ctx) }()
	}
	waitCount := func(s *Server, want int, limit time.Duration) []time.Duration {
		start := time.Now()
		var arrivals []time.Duration
		last := 0
		for time.Since(start) < limit {
			got := len(s.Agents("c1"))
			for ; last < got; last++ {
				arrivals = append(arrivals, time.Since(start))
			}
			if got >= want {
				return arrivals
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Fatalf("%d of %d agents connected after %v", len(s.Agents("c1")), want, limit)
		return nil
	}
	waitCount(current.Load(), n, 60*time.Second)

	// Restart: every session ends at once, a new stub takes over.
	old := current.Load()
	current.Store(newServer())
	old.Close()
	arrivals := waitCount(current.Load(), n, 60*time.Second)
	sort.Slice(arrivals, func(i, j int) bool { return arrivals[i] < arrivals[j] })
	var curve []string
	bucket := 100 * time.Millisecond
	for b, i := time.Duration(0), 0; i < len(arrivals); b += bucket {
		c := 0
		for ; i < len(arrivals) && arrivals[i] < b+bucket; i++ {
			c++
		}
		curve = append(curve, fmt.Sprintf("%v:%d", (b+bucket).Round(time.Millisecond), c))
	}
	t.Logf("reconnect curve after a stub restart, %d agents (agents per 100 ms): %s", n, strings.Join(curve, " "))
	t.Logf("first %v, median %v, last %v", arrivals[0].Round(time.Millisecond), arrivals[n/2].Round(time.Millisecond), arrivals[n-1].Round(time.Millisecond))
	// Full jitter over the first retry window (0.5 s): the middle 80% of
	// the fleet does not arrive within one instant.
	if arrivals[n*9/10]-arrivals[n/10] < 200*time.Millisecond {
		t.Fatalf("80%% of agents reconnected within %v: a herd", arrivals[n*9/10]-arrivals[n/10])
	}
}

package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

// fakeReplicas is a ReplicaSet whose live list the test sets.
type fakeReplicas struct {
	self string
	mu   *sync.Mutex
	live *[]string
}

func (f fakeReplicas) Self() string { return f.self }
func (f fakeReplicas) Live() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(*f.live)
}

// balancer is a round-robin TCP load balancer over backends that skips
// those refusing connections, as haproxy with redispatch does.
type balancer struct {
	ln       net.Listener
	mu       sync.Mutex
	backends []string
	next     int
	wg       sync.WaitGroup
}

func newBalancer(t *testing.T) *balancer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &balancer{ln: ln}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.wg.Add(1)
			go func() { defer b.wg.Done(); b.relay(c) }()
		}
	}()
	t.Cleanup(func() { ln.Close(); b.wg.Wait() })
	return b
}

func (b *balancer) set(addrs ...string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.backends = addrs
}

func (b *balancer) relay(c net.Conn) {
	defer c.Close()
	b.mu.Lock()
	order := slices.Clone(b.backends)
	start := b.next
	b.next++
	b.mu.Unlock()
	for i := range order {
		up, err := net.DialTimeout("tcp", order[(start+i)%len(order)], time.Second)
		if err != nil {
			continue
		}
		defer up.Close()
		done := make(chan struct{})
		go func() { _, _ = io.Copy(up, c); up.Close(); close(done) }()
		_, _ = io.Copy(c, up)
		c.Close()
		<-done
		return
	}
}

// TestAgentHoldsEveryReplica: behind a load balancer, an agent ends up with
// a session to each live replica, keeps the others when one dies, and finds
// a replica added later from the list the stub sends on probes.
func TestAgentHoldsEveryReplica(t *testing.T) {
	var mu sync.Mutex
	live := []string{"r0", "r1", "r2"}
	type replica struct {
		srv *Server
		ts  *httptest.Server
	}
	start := func(id string) replica {
		srv, err := NewServer(ServerConfig{Auth: secrets{"c1": "s3cret"}, Logger: zaptest.NewLogger(t).Named(id),
			KeepAliveInterval: 200 * time.Millisecond, KeepAliveTimeout: 300 * time.Millisecond,
			Replicas: fakeReplicas{self: id, mu: &mu, live: &live}})
		if err != nil {
			t.Fatal(err)
		}
		ts := httptest.NewUnstartedServer(srv)
		ts.StartTLS()
		t.Cleanup(func() { srv.Close(); ts.Close() })
		return replica{srv, ts}
	}
	reps := map[string]replica{"r0": start("r0"), "r1": start("r1"), "r2": start("r2")}
	lb := newBalancer(t)
	lb.set(reps["r0"].ts.Listener.Addr().String(), reps["r1"].ts.Listener.Addr().String(), reps["r2"].ts.Listener.Addr().String())
	pool := x509.NewCertPool()
	pool.AddCert(reps["r0"].ts.Certificate()) // httptest servers share one certificate

	a, err := NewAgent(AgentConfig{
		StubURL: "https://" + lb.ln.Addr().String(), Cluster: "c1", AgentID: "a1", Fingerprint: "fp",
		Secret:  func() (string, error) { return "s3cret", nil },
		TLS:     &tls.Config{RootCAs: pool, ServerName: "example.com"},
		Proxy:   func(*http.Request) (*url.URL, error) { return nil, nil },
		Handler: echoAgent("a1"), Logger: zaptest.NewLogger(t).Named("agent"),
		KeepAliveInterval: 200 * time.Millisecond, KeepAliveTimeout: 300 * time.Millisecond,
		Backoff: Backoff{Base: 10 * time.Millisecond, Max: 100 * time.Millisecond, StableAfter: time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	defer func() { cancel(); <-done }()

	wait := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: agent holds %v", what, a.Replicas())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	wait("sessions to r0, r1, r2", func() bool { return slices.Equal(a.Replicas(), []string{"r0", "r1", "r2"}) })
	// The stub registers a session just after its 101 reaches the agent.
	wait("each replica registered the agent once", func() bool {
		for _, r := range reps {
			if len(r.srv.Agents("c1")) != 1 {
				return false
			}
		}
		return true
	})
	since := reps["r0"].srv.Agents("c1")[0].Connected

	// r1 dies; the others drop it from the live list (its Lease would).
	reps["r1"].srv.Close()
	reps["r1"].ts.Close()
	mu.Lock()
	live = []string{"r0", "r2"}
	mu.Unlock()
	wait("sessions to r0 and r2 only", func() bool { return slices.Equal(a.Replicas(), []string{"r0", "r2"}) })
	roundTrip(t, reps["r2"].srv)
	time.Sleep(300 * time.Millisecond) // would be time enough to churn
	if got := reps["r0"].srv.Agents("c1"); len(got) != 1 || !got[0].Connected.Equal(since) {
		t.Fatalf("the session to r0 was replaced: %+v", got)
	}

	// r3 joins; a probe from r0 carries the new list.
	reps["r3"] = start("r3")
	lb.set(reps["r0"].ts.Listener.Addr().String(), reps["r2"].ts.Listener.Addr().String(), reps["r3"].ts.Listener.Addr().String())
	mu.Lock()
	live = []string{"r0", "r2", "r3"}
	mu.Unlock()
	conn, err := reps["r0"].srv.DialAgent("c1", "a1")
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, "http://agent/probe", nil)
	req.Header.Set(HeaderReplicas, "r0,r2,r3")
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.ReadResponse(bufio.NewReader(conn), req); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}
	conn.Close()
	wait("a session to r3 too", func() bool { return slices.Equal(a.Replicas(), []string{"r0", "r2", "r3"}) })
	// As above: r3 registers the session just after its 101 reached the
	// agent, so the agent may see it before r3 can route to it.
	wait("r3 registered the agent", func() bool { return len(reps["r3"].srv.Agents("c1")) == 1 })
	roundTrip(t, reps["r3"].srv)
}

func roundTrip(t *testing.T, srv *Server) {
	t.Helper()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return srv.DialCluster(ctx, "c1") }}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("http://c1/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("X-Agent") != "a1" {
		t.Fatalf("answered by %q", resp.Header.Get("X-Agent"))
	}
}

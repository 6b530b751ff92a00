package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type secrets map[string]string

func (s secrets) AuthenticateAgent(cluster, secret string) error {
	want, ok := s[cluster]
	if !ok {
		return ErrUnknownCluster
	}
	if subtle.ConstantTimeCompare([]byte(want), []byte(secret)) != 1 {
		return ErrBadSecret
	}
	return nil
}

// env is a stub (the tunnel handler behind an HTTP server on one
// transport) plus helpers to start agents against it.
type env struct {
	t    testing.TB
	srv  *Server
	url  string           // the stub URL agents are given
	pool *x509.CertPool   // trusts the TLS transport's certificate
	ts   *httptest.Server // the TLS transport's server (nil over pipe and TCP)
	// dial, when set, carries agents to the stub (AgentConfig.dialStub);
	// nil means the agent's own path, TLS to url, as in production.
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// raw opens a connection to the stub's HTTP server as a client would,
	// past TLS if there is any.
	raw func() (net.Conn, error)
	// keepAlive is the stub's and the agents' liveness (KeepAliveInterval,
	// KeepAliveTimeout).
	keepAlive liveness
}

// testLiveness is the tests' default: a dead link is noticed in 0.5 s.
var testLiveness = liveness{interval: 200 * time.Millisecond, timeout: 300 * time.Millisecond}

// transports carry the tunnel in the tests that run over each of them, as
// hashicorp/yamux's session_test.go runs its tests over a pipe, TCP and
// TLS: nothing in the tunnel may depend on what carries it (buffering,
// CloseWrite, deadlines, TLS records).
var transports = []struct {
	name string
	// serve serves h on the transport, fills in e's url, pool, ts, dial
	// and raw, and returns how to stop serving.
	serve func(e *env, h http.Handler) (stop func())
}{
	{"pipe", servePipe},
	{"tcp", serveTCP},
	{"tls", serveTLS},
}

// overTransports runs test as a subtest over each transport.
func overTransports(t *testing.T, test func(t *testing.T, e *env)) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) { test(t, newEnvOver(t, tr.serve)) })
	}
}

// newEnv is a stub over TLS, for the tests about the stub's HTTPS port
// rather than the tunnel.
func newEnv(t *testing.T) *env { return newEnvOver(t, serveTLS) }

func newEnvOver(t testing.TB, serve func(*env, http.Handler) func()) *env {
	t.Helper()
	return newEnvLive(t, serve, testLiveness)
}

// newEnvLive is newEnvOver with the liveness lv at the stub and its agents.
func newEnvLive(t testing.TB, serve func(*env, http.Handler) func(), lv liveness) *env {
	t.Helper()
	srv, err := NewServer(ServerConfig{Auth: secrets{"c1": "s3cret", "c2": "other"}, Logger: zaptest.NewLogger(t),
		KeepAliveInterval: lv.interval, KeepAliveTimeout: lv.timeout})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, srv: srv, keepAlive: lv}
	stop := serve(e, srv)
	t.Cleanup(func() {
		srv.Close()
		stop()
	})
	return e
}

// servePipe: every connection is a net.Pipe, synchronous and unbuffered
// (a write waits for the peer's read), with no kernel in between.
func servePipe(e *env, h http.Handler) func() {
	ln := &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
	stop := serveHTTP(ln, h)
	e.url = "https://stub.pipe" // agents take only https URLs; the pipe ignores it
	e.dial = func(ctx context.Context, _, _ string) (net.Conn, error) { return ln.dial(ctx) }
	e.raw = func() (net.Conn, error) { return ln.dial(context.Background()) }
	return stop
}

// serveTCP: plain TCP on 127.0.0.1, no TLS.
func serveTCP(e *env, h http.Handler) func() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	stop := serveHTTP(ln, h)
	addr := ln.Addr().String()
	e.url = "https://" + addr // agents take only https URLs; dial carries plain TCP
	e.dial = func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	}
	e.raw = func() (net.Conn, error) { return net.DialTimeout("tcp", addr, 5*time.Second) }
	return stop
}

// serveTLS: TLS with HTTP/2 offered, as on the stub's real port; agents dial
// it themselves (and must get HTTP/1.1 for the upgrade).
func serveTLS(e *env, h http.Handler) func() {
	ts := httptest.NewUnstartedServer(h)
	ts.EnableHTTP2 = true
	ts.StartTLS()
	pool := x509.NewCertPool()
	pool.AddCert(ts.Certificate())
	e.ts, e.url, e.pool = ts, ts.URL, pool
	e.raw = func() (net.Conn, error) {
		return tls.Dial("tcp", ts.Listener.Addr().String(), &tls.Config{RootCAs: pool, NextProtos: []string{"http/1.1"}})
	}
	return ts.Close
}

// serveHTTP serves h on ln until the returned stop, which waits for Serve to
// return. (Hijacked connections, the tunnel sessions, are the Server's to
// close.)
func serveHTTP(ln net.Listener, h http.Handler) func() {
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = hs.Serve(ln) }()
	return func() { _ = hs.Close(); <-done }
}

// pipeListener is a net.Listener whose connections are net.Pipe pairs.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error { l.once.Do(func() { close(l.done) }); return nil }

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

// dial hands one end of a new pipe to Accept and returns the other.
func (l *pipeListener) dial(ctx context.Context) (net.Conn, error) {
	c, s := net.Pipe()
	select {
	case l.conns <- s:
		return c, nil
	case <-l.done:
		c.Close()
		s.Close()
		return nil, net.ErrClosed
	case <-ctx.Done():
		c.Close()
		s.Close()
		return nil, ctx.Err()
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

func (e *env) agentConfig(cluster, id, fp, secret string, h http.Handler) AgentConfig {
	return AgentConfig{
		StubURL: e.url, Cluster: cluster, AgentID: id, Fingerprint: fp,
		Secret:  func() (string, error) { return secret, nil },
		TLS:     &tls.Config{RootCAs: e.pool},
		Proxy:   func(*http.Request) (*url.URL, error) { return nil, nil },
		Handler: h, Logger: zaptest.NewLogger(e.t),
		KeepAliveInterval: e.keepAlive.interval, KeepAliveTimeout: e.keepAlive.timeout,
		Backoff:  Backoff{Base: 10 * time.Millisecond, Max: 50 * time.Millisecond, StableAfter: time.Second},
		dialStub: e.dial,
	}
}

// startAgent runs an agent until the test ends and waits until registered.
func (e *env) startAgent(cluster, id, fp string, h http.Handler) context.CancelFunc {
	e.t.Helper()
	a, err := NewAgent(e.agentConfig(cluster, id, fp, map[string]string{"c1": "s3cret", "c2": "other"}[cluster], h))
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	stop := func() { cancel(); <-done }
	e.t.Cleanup(stop)
	e.waitAgents(cluster, func(n int) bool {
		for _, ai := range e.srv.Agents(cluster) {
			if ai.ID == id {
				return true
			}
		}
		return false
	})
	return stop
}

func (e *env) waitAgents(cluster string, ok func(int) bool) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok(len(e.srv.Agents(cluster))) {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for agents of %s; have %v", cluster, e.srv.Agents(cluster))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func echoAgent(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Agent", name)
		_, _ = io.Copy(w, r.Body)
	})
}

// client is an HTTP client whose connections are tunnel streams to cluster.
func (e *env) client(cluster string) *http.Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return e.srv.DialCluster(ctx, cluster)
	}}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func TestRoundTripAndSpread(t *testing.T) {
	overTransports(t, func(t *testing.T, e *env) {
		e.startAgent("c1", "a1", "fp", echoAgent("a1"))
		e.startAgent("c1", "a2", "fp", echoAgent("a2"))
		seen := map[string]int{}
		for i := 0; i < 20; i++ {
			// A fresh transport each time, so each request dials a new stream.
			c := e.client("c1")
			resp, err := c.Post("http://c1/", "text/plain", strings.NewReader("ping"))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "ping" {
				t.Fatalf("body %q", b)
			}
			seen[resp.Header.Get("X-Agent")]++
			c.Transport.(*http.Transport).CloseIdleConnections()
		}
		if seen["a1"] == 0 || seen["a2"] == 0 {
			t.Fatalf("streams not spread over agents: %v", seen)
		}
	})
}

func TestHandshakeRefusals(t *testing.T) {
	overTransports(t, func(t *testing.T, e *env) {
		e.startAgent("c1", "a1", "fp-A", echoAgent("a1"))
		cases := []struct {
			name, cluster, fp, secret string
			want                      string
		}{
			{"wrong secret", "c1", "fp-A", "nope", "401"},
			{"empty secret", "c1", "fp-A", "", "401"},
			{"unknown cluster", "zz", "fp-A", "x", "404"},
			{"fingerprint mismatch", "c1", "fp-B", "s3cret", "409"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				a, err := NewAgent(e.agentConfig(tc.cluster, "x1", tc.fp, tc.secret, echoAgent("x")))
				if err != nil {
					t.Fatal(err)
				}
				_, err = a.Dial(context.Background())
				if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("want refusal %s, got %v", tc.want, err)
				}
			})
		}
		if n := len(e.srv.Agents("c1")); n != 1 {
			t.Fatalf("refused agents changed the registry: %d agents", n)
		}
	})
}

func TestGarbageOnStubPort(t *testing.T) {
	e := newEnv(t)
	e.startAgent("c1", "a1", "fp", echoAgent("a1"))
	addr := e.ts.Listener.Addr().String()
	inputs := [][]byte{
		[]byte("\x00\x01\x02garbage\r\n\r\n"),
		[]byte("GET " + ConnectPath + " HTTP/1.1\r\nHost: x\r\n"), // half a handshake, then hang up
		bytes.Repeat([]byte("A"), 64<<10),
	}
	for _, in := range inputs {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		_, _ = c.Write(in)
		_, _ = io.Copy(io.Discard, c)
		c.Close()
	}
	// Plain TLS, valid HTTP, no upgrade.
	tc := e.ts.Client()
	resp, err := tc.Get(e.ts.URL + ConnectPath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("plain GET on connect path: %d", resp.StatusCode)
	}
	// The connected agent still serves.
	r, err := e.client("c1").Post("http://c1/", "", strings.NewReader("ok"))
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
}

func TestNoAgent(t *testing.T) {
	e := newEnv(t)
	_, err := e.srv.DialCluster(context.Background(), "c1")
	if !errors.Is(err, ErrNoAgent) {
		t.Fatalf("got %v", err)
	}
}

// A session whose agent stops answering (no FIN, no RST) is dropped by
// keepalive; the remaining agent keeps serving.
func TestVanishedAgentDetected(t *testing.T) {
	overTransports(t, func(t *testing.T, e *env) {
		e.startAgent("c1", "good", "fp", echoAgent("good"))
		// A raw agent: handshake, then never read or write again.
		a, _ := NewAgent(e.agentConfig("c1", "silent", "fp", "s3cret", echoAgent("x")))
		conn := dialRaw(t, e, a)
		defer conn.Close()
		e.waitAgents("c1", func(n int) bool { return n == 2 })
		start := time.Now()
		e.waitAgents("c1", func(n int) bool { return n == 1 })
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("vanished agent noticed after %v", d)
		}
		if got := e.srv.Agents("c1")[0].ID; got != "good" {
			t.Fatalf("wrong agent left: %s", got)
		}
	})
}

// dialRaw does the agent handshake by hand and returns the raw connection.
func dialRaw(t *testing.T, e *env, a *Agent) net.Conn {
	t.Helper()
	c, err := e.raw()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: %s\r\nAuthorization: Bearer s3cret\r\n%s: %s\r\n%s: %s\r\n%s: %s\r\n\r\n",
		ConnectPath, UpgradeProtocol, HeaderCluster, a.cfg.Cluster, HeaderAgent, a.cfg.AgentID, HeaderFingerprint, a.cfg.Fingerprint)
	// Read the whole answer: over a pipe, the stub's write of it returns
	// only when every byte has been read.
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	return c
}

func TestHalfClose(t *testing.T) {
	overTransports(t, func(t *testing.T, e *env) {
		// The agent's handler hijacks and answers after reading to EOF, like
		// `cat` behind an exec whose stdin ended.
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			in, _ := io.ReadAll(brw)
			_, _ = conn.Write(append([]byte("got:"), in...))
			_ = conn.(interface{ CloseWrite() error }).CloseWrite()
		})
		e.startAgent("c1", "a1", "fp", h)
		c, err := e.srv.DialCluster(context.Background(), "c1")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\nhello")
		if err := c.(*Stream).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		out, err := io.ReadAll(c)
		if err != nil || string(out) != "got:hello" {
			t.Fatalf("half-close: %q %v", out, err)
		}
	})
}

// A stream whose reader does not read stalls only itself.
func TestSlowReaderStallsOnlyItsStream(t *testing.T) {
	overTransports(t, func(t *testing.T, e *env) {
		big := bytes.Repeat([]byte("x"), 8<<20)
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/big" {
				_, _ = w.Write(big)
				return
			}
			_, _ = io.WriteString(w, "small")
		})
		e.startAgent("c1", "a1", "fp", h)
		stalled, err := e.client("c1").Get("http://c1/big")
		if err != nil {
			t.Fatal(err)
		}
		defer stalled.Body.Close() // never read: its window fills and stays full
		for i := 0; i < 50; i++ {
			c := e.client("c1")
			resp, err := c.Get("http://c1/small")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "small" {
				t.Fatalf("got %q", b)
			}
		}
	})
}

// Opening and closing 10,000 streams leaves goroutine count and session
// stream count where they started.
func TestTenThousandStreamsNoLeak(t *testing.T) {
	overTransports(t, func(t *testing.T, e *env) {
		e.startAgent("c1", "a1", "fp", echoAgent("a1"))
		c := e.client("c1")
		warm := func() {
			resp, err := c.Post("http://c1/", "", strings.NewReader("x"))
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			c.Transport.(*http.Transport).CloseIdleConnections()
		}
		warm()
		time.Sleep(100 * time.Millisecond)
		before := runtime.NumGoroutine()
		var wg sync.WaitGroup
		sem := make(chan struct{}, 32)
		for i := 0; i < 10000; i++ {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				s, err := e.srv.DialCluster(context.Background(), "c1")
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = io.WriteString(s, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx")
				_ = s.SetReadDeadline(time.Now().Add(10 * time.Second))
				b, _ := io.ReadAll(s)
				if !bytes.HasSuffix(b, []byte("\r\n\r\nx")) {
					t.Errorf("reply %q", b)
				}
				s.Close()
			}()
		}
		wg.Wait()
		deadline := time.Now().Add(10 * time.Second)
		for {
			g := runtime.NumGoroutine()
			streams := e.srv.Agents("c1")[0].Streams
			if g <= before+2 && streams == 0 {
				t.Logf("goroutines before %d after %d, open streams %d", before, g, streams)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("leak: goroutines before %d after %d, open streams %d", before, g, streams)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

func TestBackoff(t *testing.T) {
	b := Backoff{Base: 100 * time.Millisecond, Max: time.Second}
	for n := 0; n < 40; n++ {
		ceiling := b.Base << n
		if n >= 4 || ceiling > b.Max {
			ceiling = b.Max
		}
		for i := 0; i < 100; i++ {
			if w := b.Wait(n); w < 0 || w >= ceiling {
				t.Fatalf("Wait(%d)=%v outside [0,%v)", n, w, ceiling)
			}
		}
	}
}

// An agent's attributes travel on the handshake and are listed as stated,
// for its cluster only; the tunnel gives them no meaning.
func TestAttributes(t *testing.T) {
	e := newEnv(t)
	e.startAgent("c1", "plain", "fp", echoAgent("plain"))
	cfg := e.agentConfig("c2", "tagged", "fp2", "other", echoAgent("v"))
	want := map[string]string{"verifies-callers": "jwt", "zone": "eu west/1 ü&=%"}
	cfg.Attributes = maps.Clone(want)
	a, err := NewAgent(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Attributes["zone"] = "changed after NewAgent"
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	e.waitAgents("c2", func(n int) bool { return n == 1 })
	if got := e.srv.Agents("c1")[0].Attributes; got != nil {
		t.Fatalf("an agent without attributes lists %v", got)
	}
	got := e.srv.Agents("c2")[0].Attributes
	if !maps.Equal(got, want) {
		t.Fatalf("attributes %v, want %v", got, want)
	}
	got["zone"] = "changed by a caller"
	if again := e.srv.Agents("c2")[0].Attributes; !maps.Equal(again, want) {
		t.Fatalf("a caller changed the session's attributes: %v", again)
	}
}

// Attributes out of bounds are refused with the reason: by NewAgent on the
// agent, and with a 400 by the stub.
func TestAttributesBounds(t *testing.T) {
	many := map[string]string{}
	for i := range MaxAttributes + 1 {
		many[fmt.Sprintf("k%d", i)] = "v"
	}
	for name, tc := range map[string]struct {
		attrs  map[string]string
		header string // sent by hand, when not from attrs
		msg    string
	}{
		"too many":        {attrs: many, msg: "17 attributes, at most 16"},
		"key not a label": {attrs: map[string]string{"Zone_A": "x"}, msg: `key "Zone_A" must be a DNS label`},
		"empty key":       {attrs: map[string]string{"": "x"}, msg: `key "" must be a DNS label`},
		"value too long":  {attrs: map[string]string{"k": strings.Repeat("v", MaxAttributeValueLen+1)}, msg: "257 bytes, at most 256"},
		"control byte":    {attrs: map[string]string{"k": "a\nb"}, msg: "printable UTF-8"},
		"not UTF-8":       {attrs: map[string]string{"k": "\xff"}, msg: "printable UTF-8"},
		"key twice":       {header: "k=1&k=2", msg: `key "k" given 2 times`},
		"bad escape":      {header: "k=%zz", msg: "not form-encoded"},
		"header too long": {header: "k=" + strings.Repeat("v", maxAttributesHeader), msg: "at most 16384"},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			header := tc.header
			if tc.attrs != nil {
				cfg := e.agentConfig("c1", "a1", "fp", "s3cret", echoAgent("a1"))
				cfg.Attributes = tc.attrs
				if _, err := NewAgent(cfg); !errors.Is(err, ErrAttributes) || !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("NewAgent: %v, want %q", err, tc.msg)
				}
				v := url.Values{}
				for k, x := range tc.attrs {
					v.Set(k, x)
				}
				header = v.Encode()
			}
			tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.pool}, TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}
			defer tr.CloseIdleConnections()
			req, _ := http.NewRequest("GET", e.ts.URL+ConnectPath, nil)
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", UpgradeProtocol)
			req.Header.Set("Authorization", "Bearer s3cret")
			req.Header.Set(HeaderCluster, "c1")
			req.Header.Set(HeaderAgent, "a1")
			req.Header.Set(HeaderFingerprint, "fp")
			req.Header.Set(HeaderAttributes, header)
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), tc.msg) {
				t.Fatalf("stub answered %s %q, want 400 with %q", resp.Status, body, tc.msg)
			}
			if n := len(e.srv.Agents("")); n != 0 {
				t.Fatalf("%d agents registered", n)
			}
		})
	}
}

// An agent told to stop finishes what it carries: requests in flight
// complete, no new stream goes to it, then it leaves.
func TestGracefulDrain(t *testing.T) {
	overTransports(t, func(t *testing.T, e *env) {
		release := make(chan struct{})
		var inHandler atomic.Int64 // requests the agents are serving
		slow := func(name string) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-Agent", name)
				if r.URL.Path == "/slow" {
					inHandler.Add(1)
					<-release
				}
				_, _ = io.WriteString(w, "done")
			})
		}
		stopA := e.startAgent("c1", "a", "fp", slow("a"))
		e.startAgent("c1", "b", "fp", slow("b"))
		const n = 8
		type result struct {
			agent, body string
			err         error
		}
		results := make(chan result, n)
		for i := 0; i < n; i++ {
			go func() {
				c := e.client("c1") // a connection of its own: spread over a and b
				resp, err := c.Get("http://c1/slow")
				if err != nil {
					results <- result{err: err}
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				results <- result{resp.Header.Get("X-Agent"), string(b), err}
			}()
		}
		waitStreams := func(want int64) {
			deadline := time.Now().Add(5 * time.Second)
			for {
				var total int64
				for _, a := range e.srv.Agents("c1") {
					total += a.Streams
				}
				if total >= want {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("only %d streams open", total)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		waitStreams(n)
		// In flight means the agent is serving it. A stream the stub opens
		// in the instant the agent sends its GoAway is reset by yamux
		// instead (the stub has not seen the GoAway yet): a different
		// case, not what this test is about.
		deadline := time.Now().Add(5 * time.Second)
		for inHandler.Load() < n && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if got := inHandler.Load(); got < n {
			t.Fatalf("only %d of %d requests reached the agents", got, n)
		}
		stopped := make(chan struct{})
		go func() { stopA(); close(stopped) }() // cancel a's context: it drains
		time.Sleep(100 * time.Millisecond)
		// While a drains, new requests go to b.
		for i := 0; i < 5; i++ {
			c := e.client("c1")
			resp, err := c.Get("http://c1/fast")
			if err != nil {
				t.Fatalf("request during the drain: %v", err)
			}
			resp.Body.Close()
			if got := resp.Header.Get("X-Agent"); got != "b" {
				t.Fatalf("a draining agent got a new request")
			}
		}
		close(release)
		seen := map[string]int{}
		for i := 0; i < n; i++ {
			r := <-results
			if r.err != nil || r.body != "done" {
				t.Fatalf("in-flight request cut by the drain: %q %v", r.body, r.err)
			}
			seen[r.agent]++
		}
		<-stopped
		if seen["a"] == 0 {
			t.Fatalf("no request was in flight on the draining agent: %v", seen)
		}
		e.waitAgents("c1", func(n int) bool { return n == 1 })
	})
}

// joinSecrets is an in-memory AgentAuthenticator and SessionChecker for
// one cluster, "prod": its current secret (with an optional end), the one
// before the last rotation, or none (unregistered). The stub's own
// implementation over its state files is stub.State.
type joinSecrets struct {
	mu         sync.Mutex
	registered bool
	cur, prev  [sha256.Size]byte
	hasPrev    bool
	curExpires time.Time
}

// set makes secret the current one; keepPrev keeps the replaced one for
// open sessions (a plain rotation), else they are closed.
func (j *joinSecrets) set(secret string, keepPrev bool, expires time.Time) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.prev, j.hasPrev = j.cur, keepPrev && j.registered
	j.cur, j.curExpires, j.registered = sha256.Sum256([]byte(secret)), expires, true
}

func (j *joinSecrets) unregister() { j.mu.Lock(); j.registered = false; j.mu.Unlock() }

func (j *joinSecrets) AuthenticateAgent(cluster, secret string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	switch sum := sha256.Sum256([]byte(secret)); {
	case cluster != "prod" || !j.registered:
		return ErrUnknownCluster
	case sum != j.cur:
		return ErrBadSecret
	case !j.curExpires.IsZero() && !time.Now().Before(j.curExpires):
		return ErrSecretExpired
	}
	return nil
}

func (j *joinSecrets) CheckSession(cluster string, sum [sha256.Size]byte) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	switch {
	case cluster != "prod" || !j.registered:
		return ErrUnknownCluster
	case sum == j.cur && !j.curExpires.IsZero() && !time.Now().Before(j.curExpires):
		return ErrSecretExpired
	case sum == j.cur, j.hasPrev && sum == j.prev:
		return nil
	}
	return ErrBadSecret
}

// TestJoinSecretLifecycle: the server asks its SessionChecker about every
// session: a rotation keeps the old secret's sessions (and refuses its
// handshakes); a rotation that disconnects, expiry and unregistering
// close them; an expired secret is refused with a message that says so.
func TestJoinSecretLifecycle(t *testing.T) {
	js := &joinSecrets{}
	srv, err := NewServer(ServerConfig{Auth: js, Logger: zaptest.NewLogger(t), SessionCheckInterval: 50 * time.Millisecond,
		KeepAliveInterval: 200 * time.Millisecond, KeepAliveTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(srv)
	ts.StartTLS()
	defer func() { srv.Close(); ts.Close() }()
	pool := x509.NewCertPool()
	pool.AddCert(ts.Certificate())
	e := &env{t: t, srv: srv, ts: ts, pool: pool, url: ts.URL}

	var mu sync.Mutex
	secret := "khj_first"
	js.set(secret, false, time.Time{})
	connect := func() (*Agent, func()) {
		cfg := e.agentConfig("prod", "a1", "fp", "", echoAgent("a1"))
		cfg.Secret = func() (string, error) { mu.Lock(); defer mu.Unlock(); return secret, nil }
		a, err := NewAgent(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = a.Run(ctx) }()
		return a, func() { cancel(); <-done }
	}
	_, stop := connect()
	defer stop()
	e.waitAgents("prod", func(n int) bool { return n == 1 })
	since := srv.Agents("prod")[0].Connected

	// Rotate: the old session stays.
	old := secret
	js.set("khj_second", true, time.Time{})
	time.Sleep(300 * time.Millisecond) // several checks pass
	if got := srv.Agents("prod"); len(got) != 1 || !got[0].Connected.Equal(since) {
		t.Fatalf("rotation that keeps sessions touched the session: %+v", got)
	}
	if err := js.AuthenticateAgent("prod", old); !errors.Is(err, ErrBadSecret) {
		t.Fatalf("old secret in a handshake: %v", err)
	}

	// Rotate and disconnect: the session of the old secret is closed.
	js.set("khj_third", false, time.Time{})
	e.waitAgents("prod", func(n int) bool { return n == 0 })
	stop()

	// An expired secret: refused with a message, sessions closed.
	mu.Lock()
	secret = "khj_fourth"
	mu.Unlock()
	js.set(secret, false, time.Now().Add(2*time.Second))
	a, stop2 := connect()
	defer stop2()
	e.waitAgents("prod", func(n int) bool { return n == 1 })
	e.waitAgents("prod", func(n int) bool { return n == 0 }) // expired after 2 s
	_, err = a.Dial(context.Background())
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "expired") || !strings.Contains(err.Error(), "issue a new one") {
		t.Fatalf("dial with an expired secret: %v", err)
	}

	// Unregistered: refused, and no session survives.
	js.set(secret, false, time.Now().Add(time.Hour))
	e.waitAgents("prod", func(n int) bool { return n == 1 })
	js.unregister()
	e.waitAgents("prod", func(n int) bool { return n == 0 })
}

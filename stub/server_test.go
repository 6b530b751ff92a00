package stub

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keyhole-dev/keyhole/audit"
	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/config"
	"github.com/keyhole-dev/keyhole/proxy"
	"github.com/keyhole-dev/keyhole/tunnel"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// The kube-apiserver test fixture's HTTP keep-alive connections
		// (TestStateHub) are closed by its own cleanup after the test.
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

// stubConfig is a single stub on a free loopback port with its state in dir.
func stubConfig(t *testing.T, dir, extra string) (config.Stub, string) {
	t.Helper()
	path := writeConfig(t, dir, extra)
	cfg, err := config.LoadStub(path, config.Env{})
	if err != nil {
		t.Fatal(err)
	}
	return cfg, path
}

// writeConfig writes stubConfig's file, with extra keys, and returns its path.
func writeConfig(t *testing.T, dir, extra string) string {
	t.Helper()
	path := filepath.Join(dir, "stub.yaml")
	body := fmt.Sprintf(`apiVersion: keyhole.dev/v1alpha1
kind: StubConfig
listen: 127.0.0.1:0
publicURL: https://127.0.0.1:1
stateDir: %s
audit:
  path: %s
metrics:
  listen: 127.0.0.1:0
shutdownTimeout: 5s
%s`, filepath.Join(dir, "state"), filepath.Join(dir, "audit.log"), extra)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// observed logs to the test and records every entry for assertions.
func observed(t *testing.T) (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.InfoLevel)
	return zap.New(zapcore.NewTee(zaptest.NewLogger(t).Core(), core)), logs
}

// streamingAPI stands in for an API server behind an agent: a watch
// sends one event and then holds the stream open; anything else is a
// small JSON answer.
func streamingAPI() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Query().Get("watch") != "true" {
			_, _ = io.WriteString(w, `{"kind":"Status","status":"Success"}`)
			return
		}
		_, _ = io.WriteString(w, `{"type":"ADDED","object":{}}`+"\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
}

// runAgent connects an agent of cluster to the stub until the test ends.
func runAgent(t *testing.T, addr net.Addr, caPEM []byte, cluster, secret string) {
	t.Helper()
	runAgentWith(t, addr, caPEM, cluster, secret, streamingAPI())
}

// runAgentWith is runAgent whose agent serves h.
func runAgentWith(t *testing.T, addr net.Addr, caPEM []byte, cluster, secret string, h http.Handler) {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	a, err := tunnel.NewAgent(tunnel.AgentConfig{StubURL: "https://" + addr.String(), Cluster: cluster, AgentID: "a1", Fingerprint: "fp",
		Secret: func() (string, error) { return secret, nil }, TLS: &tls.Config{RootCAs: pool}, Handler: h,
		Logger: zaptest.NewLogger(t).Named("agent"), DrainTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// Stand-ins for a stub hop that only records refusals.
type (
	noDialer   struct{}
	noClusters struct{}
	noAuth     struct{}
)

func (noDialer) DialCluster(context.Context, string) (net.Conn, error) {
	return nil, errors.New("no agent")
}
func (noClusters) Cluster(string) (proxy.Cluster, bool)          { return proxy.Cluster{}, false }
func (noClusters) Clusters() []proxy.Cluster                     { return nil }
func (noClusters) ByCallerAudience(string) (proxy.Cluster, bool) { return proxy.Cluster{}, false }
func (noAuth) Authenticate(context.Context, string) (*authn.User, error) {
	return nil, authn.ErrInvalidToken
}
func (noAuth) Allowed(*authn.User, string, map[string]string) bool { return false }

// runningStub is a stub run in-process by startStub, with one registered
// cluster and a static token for alice.
type runningStub struct {
	srv           *Server
	cfg           config.Stub
	logs          *observer.ObservedLogs
	st            Started
	secret, token string
	stop          context.CancelFunc // ends Run, whose result comes on runErr
	runErr        chan error
}

// startStub starts a stub with the extra config keys, registers cluster and
// waits until it serves.
func startStub(t *testing.T, extra, cluster string) *runningStub {
	t.Helper()
	cfg, _ := stubConfig(t, t.TempDir(), extra)
	log, logs := observed(t)
	started := make(chan Started, 1)
	srv, err := New(cfg, Options{Logger: log, Started: func(s Started) { started <- s }})
	if err != nil {
		t.Fatal(err)
	}
	r := &runningStub{srv: srv, cfg: cfg, logs: logs, runErr: make(chan error, 1)}
	ctx := context.Background()
	if r.secret, err = srv.State().Register(ctx, cluster, RegisterOptions{}); err != nil {
		t.Fatal(err)
	}
	if r.token, err = srv.State().AddToken(ctx, TokenRequest{User: "alice"}); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	r.stop = stop
	go func() { r.runErr <- srv.Run(runCtx) }()
	select {
	case r.st = <-started:
	case err := <-r.runErr:
		stop()
		t.Fatalf("Run: %v", err)
	}
	return r
}

// TestRunAndStop runs a stub in-process with an agent and an open watch,
// stops it, and checks the stop: readiness fails first, the watch ends
// cleanly (a complete response, not a reset), every step runs once and in
// the documented order, Run returns nil, and (TestMain) no goroutine is
// left behind.
func TestRunAndStop(t *testing.T) {
	rs := startStub(t, "shutdownDelay: 400ms\n", "c1")
	srv, cfg, logs, st, secret, token, stop, runErr := rs.srv, rs.cfg, rs.logs, rs.st, rs.secret, rs.token, rs.stop, rs.runErr
	defer stop()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(srv.bundle.CAPEM)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	base := "https://" + st.Addr.String()
	get := func(path string) (*http.Response, error) {
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		return client.Do(req)
	}
	runAgent(t, st.Addr, srv.bundle.CAPEM, "c1", secret)
	waitFor(t, "the agent in /keyhole/v1/clusters", func() bool {
		resp, err := get("/keyhole/v1/clusters")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var list []struct{ Agents []json.RawMessage }
		return json.NewDecoder(resp.Body).Decode(&list) == nil && len(list) == 1 && len(list[0].Agents) == 1
	})

	watch, err := (&http.Client{Transport: tr}).Do(func() *http.Request {
		req, _ := http.NewRequest(http.MethodGet, base+"/clusters/c1/api/v1/pods?watch=true", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		return req
	}())
	if err != nil || watch.StatusCode != http.StatusOK {
		t.Fatalf("watch: %v %v", watch, err)
	}
	defer watch.Body.Close()
	br := bufio.NewReader(watch.Body)
	if line, err := br.ReadString('\n'); err != nil || !strings.Contains(line, "ADDED") {
		t.Fatalf("first event: %q %v", line, err)
	}

	stop()
	// During shutdownDelay the stub still serves, with /readyz failing.
	waitFor(t, "/readyz to fail", func() bool {
		resp, err := client.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	rest, err := io.ReadAll(br)
	if err != nil {
		t.Fatalf("the watch was cut (%v) instead of ending cleanly; rest %q", err, rest)
	}
	select {
	case err := <-runErr:
		if err != nil {
			t.Fatalf("Run after a stop: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}

	var steps []string
	for _, e := range logs.FilterMessage("stop").All() {
		steps = append(steps, e.ContextMap()["step"].(string))
	}
	want := []string{"readiness off", "shutdown delay", "http", "tls", "prober", "metrics", "agent sessions", "browser sessions", "access", "audit"}
	if !slices.Equal(steps, want) {
		t.Fatalf("stop steps %q, want %q", steps, want)
	}
	if e := logs.FilterMessage("stopped serving").All(); len(e) != 1 || e[0].ContextMap()["streams_ended"] != int64(1) {
		t.Fatalf("stopped serving: %+v, want one long-running stream ended", e)
	}
	audit, _ := os.ReadFile(cfg.Audit.Path)
	if !strings.Contains(string(audit), `"requestURI":"/api/v1/pods?watch=true","verb":"watch"`) {
		t.Fatalf("the watch has no audit record:\n%s", audit)
	}
}

// A stub that cannot start stops what it had started and says why.
func TestRunStartFailure(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := t.TempDir()
	cfg, _ := stubConfig(t, dir, "")
	cfg.Listen = busy.Addr().String()
	log, logs := observed(t)
	srv, err := New(cfg, Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	err = srv.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "listen: \""+cfg.Listen+"\"") {
		t.Fatalf("Run on a busy port: %v, want an error naming listen and the address", err)
	}
	var steps []string
	for _, e := range logs.FilterMessage("stop").All() {
		steps = append(steps, e.ContextMap()["step"].(string))
	}
	if want := []string{"prober", "metrics", "agent sessions", "browser sessions", "access", "audit"}; !slices.Equal(steps, want) {
		t.Fatalf("stop steps after a failed start %q, want %q", steps, want)
	}
}

// Authentication and policy follow the config file; a broken edit keeps
// the previous ones in force and is reported once; the fix is picked up.
func TestAccessReload(t *testing.T) {
	dir := t.TempDir()
	onlyA := "policy:\n- clusters: [a]\n  users: [alice]\n"
	cfg, path := stubConfig(t, dir, onlyA)
	log, logs := observed(t)
	srv, err := New(cfg, Options{ConfigPath: path, Logger: log,
		Parse: func(data []byte) (config.Stub, error) { return config.ParseStub(path, data, config.Env{}) }})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := srv.State().AddToken(context.Background(), TokenRequest{User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	u, err := srv.access.Authenticate(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	if !srv.access.Allowed(u, "a", nil) || srv.access.Allowed(u, "b", nil) {
		t.Fatal("policy of the first config not in force")
	}
	rewrite := func(extra string) {
		t.Helper()
		writeConfig(t, dir, extra)
		later := time.Now().Add(2 * time.Second) // a new mtime, whatever the clock's resolution
		if err := os.Chtimes(path, later, later); err != nil {
			t.Fatal(err)
		}
	}
	rewrite("policy:\n- clusters: [b]\n  users: [alice]\n")
	waitFor(t, "the new policy", func() bool { return srv.access.Allowed(u, "b", nil) && !srv.access.Allowed(u, "a", nil) })

	rewrite("policy: [{clusters: [a], users: [alice], bogus: 1}]\n")
	waitFor(t, "the broken edit to be reported", func() bool {
		srv.access.Allowed(u, "b", nil)
		return logs.FilterMessageSnippet("config change not applied").Len() == 1
	})
	for range 3 {
		if !srv.access.Allowed(u, "b", nil) {
			t.Fatal("a broken edit changed the policy in force")
		}
	}
	if n := logs.FilterMessageSnippet("config change not applied").Len(); n != 1 {
		t.Fatalf("a broken edit was reported %d times, want once", n)
	}
	rewrite(onlyA)
	waitFor(t, "the fixed config", func() bool { return srv.access.Allowed(u, "a", nil) && !srv.access.Allowed(u, "b", nil) })
	if errs := logs.FilterMessage("config reloaded: authentication and policy").Len(); errs < 1 {
		t.Fatal("the fix was not reported")
	}
}

// headerListSize counts as HTTP/2 does, whatever the protocol, and
// limitHeaders passes a header list of exactly maxRequestHeaderBytes on
// and answers one byte more with 431 and a Status.
func TestLimitHeaders(t *testing.T) {
	req := func(value string) *http.Request {
		r := httptest.NewRequest("GET", "/clusters/acc/api?x=1", nil)
		r.Host = "stub.example"
		r.Header.Set("X-Big", value)
		return r
	}
	// :method GET, :scheme https, :authority stub.example, :path, X-Big.
	base := len(":methodGET") + len(":schemehttps") + len(":authoritystub.example") + len(":path/clusters/acc/api?x=1") + len("X-Big") + 5*32
	if got := headerListSize(req("")); got != base {
		t.Fatalf("headerListSize of an empty X-Big: %d, want %d", got, base)
	}
	// The refusal is audited like any other.
	var auditLog bytes.Buffer
	hop, err := proxy.NewStub(proxy.StubConfig{Dialer: noDialer{}, Clusters: noClusters{}, Auth: noAuth{}, Policy: noAuth{},
		Audit: audit.NewWriterSink(&auditLog)})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if n := strings.Count(auditLog.String(), `"code":431`); n != 2 {
			t.Errorf("%d audited 431 refusals, want 2:\n%s", n, auditLog.String())
		}
	}()
	for _, tc := range []struct {
		size     int
		wantCode int
	}{
		{maxRequestHeaderBytes, http.StatusOK},
		{maxRequestHeaderBytes + 1, http.StatusRequestHeaderFieldsTooLarge},
		{1 << 20, http.StatusRequestHeaderFieldsTooLarge},
	} {
		r := req(strings.Repeat("a", tc.size-base))
		if got := headerListSize(r); got != tc.size {
			t.Fatalf("headerListSize %d, want %d", got, tc.size)
		}
		passed := false
		h := limitHeaders(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { passed = true }), hop, zap.NewNop())
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tc.wantCode || passed != (tc.wantCode == http.StatusOK) {
			t.Fatalf("header list of %d bytes: %d, passed on %v; want %d", tc.size, w.Code, passed, tc.wantCode)
		}
		if tc.wantCode == http.StatusOK {
			continue
		}
		var st metav1.Status
		if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil || st.Kind != "Status" || st.Code != http.StatusRequestHeaderFieldsTooLarge ||
			st.Reason != "RequestHeaderFieldsTooLarge" || !strings.Contains(st.Message, fmt.Sprintf("at most %d", maxRequestHeaderBytes)) {
			t.Fatalf("body %s (%v)", w.Body, err)
		}
	}
}

// The input, a 1 MiB header to /clusters/acc/api, over HTTP/1.1
// and HTTP/2 with Go's client, to a stub running in-process with an agent:
// 431 with a Status on both, decided at the stub (the agent sees nothing),
// while a watch open on the same HTTP/2 connection goes on; a header just
// under the limit still reaches the agent.
func TestRequestHeaderLimit(t *testing.T) {
	rs := startStub(t, "", "acc")
	srv, logs, st, secret, token := rs.srv, rs.logs, rs.st, rs.secret, rs.token
	defer func() {
		rs.stop()
		if err := <-rs.runErr; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	// The agent's API server: a watch sends an event every 20 ms; anything
	// else is counted and answered.
	var mu sync.Mutex
	var seen []int // header bytes of each plain request the agent received
	runAgentWith(t, st.Addr, srv.bundle.CAPEM, "acc", secret, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("watch") == "true" {
			for {
				_, _ = io.WriteString(w, `{"type":"ADDED","object":{}}`+"\n")
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}
		// Only requests with the test's header count: the stub's prober
		// reaches the agent too, at any time.
		if n := len(r.Header.Get("X-Big")); n > 0 {
			mu.Lock()
			seen = append(seen, n)
			mu.Unlock()
		}
		_, _ = io.WriteString(w, `{"kind":"APIVersions"}`)
	}))
	received := func() []int {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(srv.bundle.CAPEM)
	base := "https://" + st.Addr.String()
	for _, h2 := range []bool{false, true} {
		name := map[bool]string{false: "HTTP/1.1", true: "HTTP/2"}[h2]
		t.Run(name, func(t *testing.T) {
			tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: h2}
			if !h2 {
				tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
			do := func(path string, big int) (*http.Response, string) {
				t.Helper()
				req, _ := http.NewRequest("GET", base+path, nil)
				req.Header.Set("Authorization", "Bearer "+token)
				if big > 0 {
					req.Header.Set("X-Big", strings.Repeat("a", big))
				}
				resp, err := client.Do(req)
				if err != nil {
					t.Fatalf("%s with a %d byte header: %v", path, big, err)
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				if (resp.ProtoMajor == 2) != h2 {
					t.Fatalf("answered over %s", resp.Proto)
				}
				return resp, string(b)
			}
			waitFor(t, "the agent", func() bool { resp, _ := do("/clusters/acc/api", 0); return resp.StatusCode == http.StatusOK })

			// A watch first: on HTTP/2 the requests below share its connection.
			wreq, _ := http.NewRequest("GET", base+"/clusters/acc/api/v1/pods?watch=true", nil)
			wreq.Header.Set("Authorization", "Bearer "+token)
			watch, err := tr.RoundTrip(wreq)
			if err != nil || watch.StatusCode != http.StatusOK {
				t.Fatalf("watch: %v %v", watch, err)
			}
			defer watch.Body.Close()
			events := bufio.NewReader(watch.Body)
			event := func(when string) {
				t.Helper()
				if line, err := events.ReadString('\n'); err != nil || !strings.Contains(line, "ADDED") {
					t.Fatalf("watch event %s: %q %v", when, line, err)
				}
			}
			event("before")

			before := len(received())
			refusals := logs.FilterMessage("request refused: header too large").Len()
			resp, body := do("/clusters/acc/api", 1<<20)
			var status metav1.Status
			if err := json.Unmarshal([]byte(body), &status); err != nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge ||
				status.Kind != "Status" || status.Code != http.StatusRequestHeaderFieldsTooLarge || status.Reason != "RequestHeaderFieldsTooLarge" ||
				resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("1 MiB header: %s %q (%v), want 431 and a Status", resp.Status, body, err)
			}
			t.Logf("1 MiB header over %s: %s %s", name, resp.Status, status.Message)
			if n := len(received()) - before; n != 0 {
				t.Fatalf("the agent received %d requests", n)
			}
			if n := logs.FilterMessage("request refused: header too large").Len() - refusals; n != 1 {
				t.Fatalf("%d refusals logged, want 1", n)
			}
			for range 3 {
				event("after the refusal")
			}
			// Still serving on this transport (for HTTP/2: this connection).
			under := maxRequestHeaderBytes - 8<<10
			if resp, body := do("/clusters/acc/api", under); resp.StatusCode != http.StatusOK {
				t.Fatalf("a %d byte header: %s %s, want it passed on", under, resp.Status, body)
			}
			if got := received(); got[len(got)-1] != under {
				t.Fatalf("the agent received X-Big of %d bytes, want %d", got[len(got)-1], under)
			}
			event("at the end")
		})
	}
}

package stub

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/keyhole-dev/keyhole/config"
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
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	a, err := tunnel.NewAgent(tunnel.AgentConfig{StubURL: "https://" + addr.String(), Cluster: cluster, AgentID: "a1", Fingerprint: "fp",
		Secret: func() (string, error) { return secret, nil }, TLS: &tls.Config{RootCAs: pool}, Handler: streamingAPI(),
		Logger: zaptest.NewLogger(t).Named("agent"), DrainTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// TestRunAndStop runs a stub in-process with an agent and an open watch,
// stops it, and checks the stop: readiness fails first, the watch ends
// cleanly (a complete response, not a reset), every step runs once and in
// the documented order, Run returns nil, and (TestMain) no goroutine is
// left behind.
func TestRunAndStop(t *testing.T) {
	dir := t.TempDir()
	cfg, _ := stubConfig(t, dir, "shutdownDelay: 400ms\n")
	log, logs := observed(t)
	started := make(chan Started, 1)
	srv, err := New(cfg, Options{Logger: log, Started: func(s Started) { started <- s }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	secret, err := srv.State().Register(ctx, "c1", RegisterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	token, err := srv.State().AddToken(ctx, TokenRequest{User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	runErr := make(chan error, 1)
	go func() { runErr <- srv.Run(runCtx) }()
	var st Started
	select {
	case st = <-started:
	case err := <-runErr:
		t.Fatalf("Run: %v", err)
	}
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
	want := []string{"readiness off", "shutdown delay", "http", "tls", "prober", "metrics", "agent sessions", "access", "audit"}
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
	if want := []string{"prober", "metrics", "agent sessions", "access", "audit"}; !slices.Equal(steps, want) {
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

package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/coreos/go-oidc/v3/oidc/oidctest"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	apiserverv1beta1 "k8s.io/apiserver/pkg/apis/apiserver/v1beta1"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
	"k8s.io/client-go/rest"

	"github.com/keyhole-dev/keyhole/audit"
	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/policy"
	"github.com/keyhole-dev/keyhole/tunnel"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type tokens map[string]authn.User

func (t tokens) Authenticate(_ context.Context, tok string) (*authn.User, error) {
	u, ok := t[tok]
	if !ok {
		return nil, authn.ErrInvalidToken
	}
	return &u, nil
}

// registry is a fixed set of registered clusters.
type registry map[string]bool

func (r registry) Cluster(id string) (Cluster, bool) { return Cluster{ID: id}, r[id] }

func (r registry) Clusters() []Cluster {
	var out []Cluster
	for id := range r {
		out = append(out, Cluster{ID: id})
	}
	return out
}

func (r registry) ByCallerAudience(string) (Cluster, bool) { return Cluster{}, false }

// retiredRegistry is audRegistry plus caller audiences of clusters that were
// unregistered (audience → cluster).
type retiredRegistry struct {
	audRegistry
	retired map[string]string
}

func (r retiredRegistry) ByCallerAudience(aud string) (Cluster, bool) {
	if id, ok := r.retired[aud]; ok {
		return Cluster{ID: id, CallerAudience: aud, Unregistered: true}, true
	}
	return r.audRegistry.ByCallerAudience(aud)
}

// audRegistry is a set of registered clusters with their caller audiences
// ("" for a cluster whose agents do not verify callers).
type audRegistry map[string]string

func (r audRegistry) Cluster(id string) (Cluster, bool) {
	aud, ok := r[id]
	return Cluster{ID: id, CallerAudience: aud}, ok
}

func (r audRegistry) Clusters() []Cluster {
	var out []Cluster
	for id, aud := range r {
		out = append(out, Cluster{ID: id, CallerAudience: aud})
	}
	return out
}

func (r audRegistry) ByCallerAudience(aud string) (Cluster, bool) {
	for id, a := range r {
		if a != "" && a == aud {
			return Cluster{ID: id, CallerAudience: a}, true
		}
	}
	return Cluster{}, false
}

type agentAuth struct{}

func (agentAuth) AuthenticateAgent(cluster, secret string) error {
	if secret != "join" {
		return tunnel.ErrBadSecret
	}
	return nil
}

// fakeAPI is an HTTPS+h2 server standing in for kube-apiserver; it records
// what reached it.
type fakeAPI struct {
	*httptest.Server
	mu          sync.Mutex
	last        *http.Request
	hits        int
	sars        []authorizationv1.SubjectAccessReviewSpec
	release     chan struct{}
	versionFail atomic.Bool
}

func newFakeAPI(t testing.TB) *fakeAPI {
	f := &fakeAPI{release: make(chan struct{})}
	f.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.last, f.hits = r.Clone(context.Background()), f.hits+1
		f.mu.Unlock()
		switch r.URL.Path {
		case "/version":
			if f.versionFail.Load() {
				http.Error(w, "etcd is sad", http.StatusInternalServerError)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"gitVersion":"v1.33.99-fake"}`)
		case "/apis/authorization.k8s.io/v1/subjectaccessreviews":
			// alice may impersonate user bob and group viewers, nothing else.
			var sar authorizationv1.SubjectAccessReview
			if err := json.NewDecoder(r.Body).Decode(&sar); err != nil {
				http.Error(w, err.Error(), 400)
				return
			}
			f.mu.Lock()
			f.sars = append(f.sars, sar.Spec)
			f.mu.Unlock()
			ra := sar.Spec.ResourceAttributes
			sar.Status.Allowed = sar.Spec.User == "alice" && ra != nil && ra.Verb == "impersonate" &&
				((ra.Resource == "users" && ra.Name == "bob") || (ra.Resource == "groups" && ra.Name == "viewers"))
			// Pod sessions: alice may create them, as an authenticated
			// user (the group the API server adds to impersonated users).
			if ra != nil && ra.Verb == "create" && ra.Resource == "pods" && connectSubresources[ra.Subresource] {
				sar.Status.Allowed = sar.Spec.User == "alice" && slices.Contains(sar.Spec.Groups, "system:authenticated")
			}
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(sar)
		case "/watch":
			_, _ = io.WriteString(w, `{"type":"ADDED"}`+"\n")
			w.(http.Flusher).Flush()
			select {
			case <-f.release:
			case <-r.Context().Done():
				return
			}
			_, _ = io.WriteString(w, `{"type":"DELETED"}`+"\n")
		case "/cors":
			// A cluster that grants CORS (kube-apiserver's
			// --cors-allowed-origins) and sets cookies and caching.
			h := w.Header()
			h.Set("Access-Control-Allow-Origin", "https://attacker.test")
			h.Set("Access-Control-Allow-Credentials", "true")
			h.Set("Access-Control-Expose-Headers", "X-Secret")
			h.Set("Access-Control-Allow-Headers", "X-Keyhole-Console")
			h.Add("Set-Cookie", "cluster=1; Path=/")
			h.Add("Set-Cookie", "__Host-keyhole=forged; Path=/; Secure")
			h.Set("Cache-Control", "public, max-age=60")
			h.Set("Content-Security-Policy", "default-src *")
			h.Set("Content-Type", "text/html")
			_, _ = io.WriteString(w, "<script>alert(1)</script>")
		case "/upgrade":
			w.Header().Set("Connection", "Upgrade")
			w.Header().Set("Upgrade", r.Header.Get("Upgrade")) // test-proto, websocket…
			w.WriteHeader(http.StatusSwitchingProtocols)
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			in, _ := io.ReadAll(brw) // until the client half-closes
			_, _ = conn.Write([]byte(strings.ToUpper(string(in)) + "bye"))
		default:
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"kind":"PodList","proto":"`+r.Proto+`"}`)
		}
	}))
	f.EnableHTTP2 = true
	f.StartTLS()
	t.Cleanup(f.Close)
	return f
}

// reviews returns the SubjectAccessReviews asked so far.
func (f *fakeAPI) reviews() []authorizationv1.SubjectAccessReviewSpec {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.sars)
}

func (f *fakeAPI) lastRequest() (*http.Request, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last, f.hits
}

func restFor(api *httptest.Server) *rest.Config {
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.Certificate().Raw})
	// JSON, not client-go's default protobuf, so the fake can read SubjectAccessReviews.
	return &rest.Config{Host: api.URL, BearerToken: "agent-sa-token", TLSClientConfig: rest.TLSClientConfig{CAData: ca},
		ContentConfig: rest.ContentConfig{ContentType: "application/json"}}
}

// chain is stub (TLS, h2 + http/1.1) → tunnel → agent handler → api.
type chain struct {
	metrics *Metrics
	prober  *Prober // not running: TestProber runs it
	tsrv    *tunnel.Server
	audit   *lockedBuffer // audit records, JSON lines
	stubURL string
	client  *http.Client // HTTP/2-capable client trusting the stub
	pool    *x509.CertPool
	api     *fakeAPI
	stub    *Stub
	logs    *observer.ObservedLogs // the stub hop's log, with chainOpts.observe
}

// chainOpts change newChain's defaults.
type chainOpts struct {
	auth     Authenticator   // the stub's (default: the tokens below)
	verifier *authn.JWT      // the agent checks callers itself
	clusters ClusterRegistry // default: c1 and lonely, no caller audiences
	pol      Policy          // default: group dev everywhere
	metrics  bool
	// recheck and keepPastExpiry are StubConfig's RecheckInterval and
	// KeepStreamsPastExpiry.
	recheck        time.Duration
	keepPastExpiry bool
	observe        bool // keep the stub hop's log entries (chain.logs)
	// sessions and publicURL are StubConfig's Sessions and PublicURL.
	sessions  BrowserSessions
	publicURL string
	apps      *AppsConfig // StubConfig's Apps (apps_test.go)
}

func newChain(t testing.TB, apiRest *rest.Config, api *fakeAPI) *chain {
	return newChainWith(t, apiRest, api, chainOpts{})
}

func newChainWith(t testing.TB, apiRest *rest.Config, api *fakeAPI, o chainOpts) *chain {
	log := zaptest.NewLogger(t)
	if _, ok := t.(*testing.B); ok {
		log = zap.NewNop() // measure the hops, not the test logger
	}
	tsrv, err := tunnel.NewServer(tunnel.ServerConfig{Auth: agentAuth{}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	auditBuf := &lockedBuffer{}
	prober, err := NewProber(ProberConfig{Target: tsrv, Logger: log, Interval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var metrics *Metrics
	if o.metrics {
		metrics = NewMetrics(tsrv, prober)
	}
	stubLog := log
	var logs *observer.ObservedLogs
	if o.observe {
		var core zapcore.Core
		core, logs = observer.New(zapcore.DebugLevel)
		stubLog = zap.New(zapcore.NewTee(log.Core(), core))
	}
	var auth Authenticator = tokens{"alice-token": {Name: "alice", Groups: []string{"dev", "ops"}}, "eve-token": {Name: "eve"}}
	if o.auth != nil {
		auth = o.auth
	}
	var pol Policy = mustPolicy(t, policy.Rule{Clusters: []string{"*"}, Groups: []string{"dev"}})
	if o.pol != nil {
		pol = o.pol
	}
	var clusters ClusterRegistry = registry{"c1": true, "lonely": true}
	if o.clusters != nil {
		clusters = o.clusters
	}
	stub, err := NewStub(StubConfig{Dialer: tsrv, Clusters: clusters, Audit: audit.NewWriterSink(auditBuf),
		Auth:   auth,
		Policy: pol, Metrics: metrics, Logger: stubLog,
		RecheckInterval: o.recheck, KeepStreamsPastExpiry: o.keepPastExpiry,
		Sessions: o.sessions, PublicURL: o.publicURL, Apps: o.apps})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(tunnel.ConnectPath, tsrv)
	mux.Handle(ClustersPrefix, stub)
	mux.Handle(AppsPath, stub.AppsAPI())
	mux.Handle("/", stub)
	ts := httptest.NewUnstartedServer(stub.WithApps(mux))
	ts.EnableHTTP2 = true
	ts.StartTLS()
	pool := x509.NewCertPool()
	pool.AddCert(ts.Certificate())

	ah, err := NewAgentHop(AgentHopConfig{Cluster: "c1", AgentID: "a1", Rest: apiRest, Verifier: o.verifier, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ag, err := tunnel.NewAgent(tunnel.AgentConfig{StubURL: ts.URL, Cluster: "c1", AgentID: "a1", Fingerprint: "fp",
		Secret: func() (string, error) { return "join", nil }, TLS: &tls.Config{RootCAs: pool}, Attributes: ah.Attributes(),
		Proxy: func(*http.Request) (*url.URL, error) { return nil, nil }, Handler: ah, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = ag.Run(ctx) }()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	t.Cleanup(func() {
		client.CloseIdleConnections()
		stub.Close()
		cancel()
		<-done
		tsrv.Close()
		ts.Close()
	})
	for deadline := time.Now().Add(5 * time.Second); len(tsrv.Agents("c1")) == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("agent did not connect")
		}
	}
	return &chain{metrics: metrics, prober: prober, tsrv: tsrv, audit: auditBuf, stubURL: ts.URL, client: client, pool: pool, api: api, stub: stub,
		logs: logs}
}

func (c *chain) do(t *testing.T, method, path, token string, hdr http.Header) (*http.Response, string) {
	t.Helper()
	return c.doBody(t, method, path, token, hdr, nil)
}

// doBody is do with a request body.
func (c *chain) doBody(t *testing.T, method, path, token string, hdr http.Header, body io.Reader) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, c.stubURL+path, body)
	for k, v := range hdr {
		req.Header[k] = v
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestForwardImpersonatesAndStrips(t *testing.T) {
	api := newFakeAPI(t)
	c := newChain(t, restFor(api.Server), api)
	resp, body := c.do(t, "GET", "/clusters/c1/api/v1/pods?limit=5", "alice-token", http.Header{
		"Keyhole-User":     {"root"},
		"Keyhole-Group":    {"system:masters"},
		"Cookie":           {"session=abc"},
		"X-Remote-User":    {"admin"},
		"X-Remote-Group":   {"system:masters"},
		"X-Remote-Extra-A": {"b"},
	})
	if resp.StatusCode != 200 || resp.Proto != "HTTP/2.0" {
		t.Fatalf("got %s %s: %s", resp.Proto, resp.Status, body)
	}
	if !strings.Contains(body, `"proto":"HTTP/2.0"`) {
		t.Errorf("agent → API server should use HTTP/2 for plain requests: %s", body)
	}
	if resp.Header.Get(HeaderRequestID) == "" {
		t.Error("no request id header in the response")
	}
	r, _ := c.api.lastRequest()
	checks := map[string][]string{
		"Authorization":     {"Bearer agent-sa-token"},
		"Impersonate-User":  {"alice"},
		"Impersonate-Group": {"dev", "ops"},
	}
	for k, want := range checks {
		if got := r.Header.Values(k); strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	for k := range r.Header {
		if strings.HasPrefix(k, "Keyhole-") || strings.HasPrefix(k, "X-Remote-") || k == "Cookie" {
			t.Errorf("header %s reached the API server", k)
		}
	}
	if r.URL.Path != "/api/v1/pods" || r.URL.RawQuery != "limit=5" {
		t.Errorf("path %q query %q", r.URL.Path, r.URL.RawQuery)
	}
}

func statusOf(t *testing.T, body string) metav1.Status {
	t.Helper()
	var st metav1.Status
	if err := json.Unmarshal([]byte(body), &st); err != nil || st.Kind != "Status" {
		t.Fatalf("not a Status: %q (%v)", body, err)
	}
	return st
}

func TestRefusals(t *testing.T) {
	api := newFakeAPI(t)
	c := newChain(t, restFor(api.Server), api)
	cases := []struct {
		name, path, token string
		hdr               http.Header
		code              int
		msg               string
	}{
		{"no token", "/clusters/c1/api", "", nil, 401, "no bearer token"},
		{"bad token", "/clusters/c1/api", "nope", nil, 401, "not valid"},
		{"unknown cluster", "/clusters/zz/api", "alice-token", nil, 404, `cluster "zz" is not registered`},
		{"bad cluster id", "/clusters/Bad_ID/api", "alice-token", nil, 404, "no cluster in path"},
		{"no agent", "/clusters/lonely/api", "alice-token", nil, 503, `cluster "lonely" has no connected agent`},
		{"impersonate extra", "/clusters/c1/api", "alice-token", http.Header{"Impersonate-User": {"bob"}, "Impersonate-Extra-Scopes": {"x"}}, 403, "not --as-uid or extra"},
		{"impersonate uid", "/clusters/c1/api", "alice-token", http.Header{"Impersonate-User": {"bob"}, "Impersonate-Uid": {"1"}}, 403, "not --as-uid"},
		{"group without user", "/clusters/c1/api", "alice-token", http.Header{"Impersonate-Group": {"viewers"}}, 403, "only kubectl --as"},
		{"outside clusters", "/api/v1/pods", "alice-token", nil, 404, "--raw"},
		{"denied by policy", "/clusters/c1/api", "eve-token", nil, 403, `user "eve" may not reach cluster "c1"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, before := c.api.lastRequest()
			resp, body := c.do(t, "GET", tc.path, tc.token, tc.hdr)
			st := statusOf(t, body)
			if resp.StatusCode != tc.code || int(st.Code) != tc.code || !strings.Contains(st.Message, tc.msg) {
				t.Fatalf("got %d %+v, want %d with %q", resp.StatusCode, st, tc.code, tc.msg)
			}
			if resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("content type %q", resp.Header.Get("Content-Type"))
			}
			if _, after := c.api.lastRequest(); after != before {
				t.Error("a refused request reached the API server")
			}
		})
	}
}

func TestWatchIsNotBuffered(t *testing.T) {
	api := newFakeAPI(t)
	c := newChain(t, restFor(api.Server), api)
	req, _ := http.NewRequest("GET", c.stubURL+"/clusters/c1/watch", nil)
	req.Header.Set("Authorization", "Bearer alice-token")
	resp, err := c.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	// The first event arrives while the API server is still holding the
	// response open: nothing on the way buffers it.
	select {
	case l := <-lines:
		if !strings.Contains(l, "ADDED") {
			t.Fatalf("first line %q", l)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("first watch event did not arrive while the stream was open")
	}
	close(api.release)
	if l := <-lines; !strings.Contains(l, "DELETED") {
		t.Fatalf("second line %q", l)
	}
	for range lines {
	}
}

// upgrade asks the stub as alice to upgrade a request to cluster c1 (over
// HTTP/1.1: upgrades cannot ride h2) and returns the answer.
func (c *chain) upgrade(t *testing.T) *http.Response {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.pool}}
	t.Cleanup(tr.CloseIdleConnections)
	req, _ := http.NewRequest("GET", c.stubURL+"/clusters/c1/upgrade", nil)
	req.Header.Set("Authorization", "Bearer alice-token")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "test-proto")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestUpgradeHalfClose(t *testing.T) {
	api := newFakeAPI(t)
	c := newChain(t, restFor(api.Server), api)
	resp := c.upgrade(t)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %s: %s", resp.Status, b)
	}
	rwc := resp.Body.(io.ReadWriteCloser)
	defer rwc.Close()
	if _, err := io.WriteString(rwc, "hello"); err != nil {
		t.Fatal(err)
	}
	// Half-close: the API server sees EOF, and its answer still comes back.
	if err := rwc.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rwc)
	if err != nil || string(got) != "HELLObye" {
		t.Fatalf("got %q, %v", got, err)
	}
	r, _ := c.api.lastRequest()
	if r.Proto != "HTTP/1.1" || r.Header.Get("Impersonate-User") != "alice" {
		t.Fatalf("upgrade reached the API server as %s with Impersonate-User %q", r.Proto, r.Header.Get("Impersonate-User"))
	}
}

func TestAPIServerDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	c := newChain(t, &rest.Config{Host: "https://" + addr, BearerToken: "x", TLSClientConfig: rest.TLSClientConfig{Insecure: true}}, nil)
	resp, body := c.do(t, "GET", "/clusters/c1/api", "alice-token", nil)
	st := statusOf(t, body)
	if resp.StatusCode != 503 || !strings.Contains(st.Message, "cannot reach its API server") {
		t.Fatalf("got %d %q", resp.StatusCode, st.Message)
	}
}

func TestAgentFailsClosed(t *testing.T) {
	api := newFakeAPI(t)
	ah, err := NewAgentHop(AgentHopConfig{Cluster: "c1", Rest: restFor(api.Server), Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]http.Header{
		"no identity":   {},
		"system user":   {HeaderUser: {"system:admin"}},
		"system group":  {HeaderUser: {"eve"}, HeaderGroup: {"system:masters"}},
		"empty group":   {HeaderUser: {"eve"}, HeaderGroup: {""}},
		"whitespace id": {HeaderUser: {"  "}},
	}
	for name, h := range cases {
		t.Run(name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/api", nil)
			req.Header = h
			rec := httptest.NewRecorder()
			ah.ServeHTTP(rec, req)
			if rec.Code != 403 {
				t.Fatalf("got %d: %s", rec.Code, rec.Body)
			}
		})
	}
	if _, hits := api.lastRequest(); hits != 0 {
		t.Fatalf("%d refused requests reached the API server", hits)
	}
}

func TestParseClusterPath(t *testing.T) {
	cases := []struct {
		in, id, rest string
		ok           bool
	}{
		{"/clusters/prod/api/v1", "prod", "/api/v1", true},
		{"/clusters/prod", "prod", "/", true},
		{"/clusters/prod/", "prod", "/", true},
		{"/clusters/", "", "", false},
		{"/clusters/UP/api", "", "", false},
		{"/clusters/a..b/api", "", "", false},
		{"/api/v1", "", "", false},
	}
	for _, tc := range cases {
		id, rest, ok := ParseClusterPath(tc.in)
		if id != tc.id || rest != tc.rest || ok != tc.ok {
			t.Errorf("%q: got %q %q %v", tc.in, id, rest, ok)
		}
	}
}

func FuzzParseClusterPath(f *testing.F) {
	for _, s := range []string{"/clusters/prod/api", "/clusters/", "/clusters//x", "/clusters/a/../../etc"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		id, rest, ok := ParseClusterPath(p)
		if !ok {
			return
		}
		if !tunnel.ValidClusterID(id) || !strings.HasPrefix(rest, "/") || ClustersPrefix+id+rest != p && ClustersPrefix+id+rest != p+"/" {
			t.Fatalf("%q → %q %q", p, id, rest)
		}
	})
}

func mustPolicy(t testing.TB, rules ...policy.Rule) *policy.Policy {
	p, err := policy.New(rules)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// kubectl --as: honoured only when the cluster says the caller may
// impersonate the target (SubjectAccessReview at the agent).
func TestImpersonation(t *testing.T) {
	api := newFakeAPI(t)
	c := newChain(t, restFor(api.Server), api)
	resp, body := c.do(t, "GET", "/clusters/c1/api/v1/pods", "alice-token", http.Header{"Impersonate-User": {"bob"}, "Impersonate-Group": {"viewers"}})
	if resp.StatusCode != 200 {
		t.Fatalf("allowed impersonation: %d %s", resp.StatusCode, body)
	}
	r, _ := c.api.lastRequest()
	if r.Header.Get("Impersonate-User") != "bob" || strings.Join(r.Header.Values("Impersonate-Group"), ",") != "viewers" {
		t.Fatalf("API server saw Impersonate-User %q groups %q", r.Header.Get("Impersonate-User"), r.Header.Values("Impersonate-Group"))
	}
	for name, h := range map[string]http.Header{
		"user not allowed":  {"Impersonate-User": {"admin"}},
		"group not allowed": {"Impersonate-User": {"bob"}, "Impersonate-Group": {"system:masters"}},
		"group not granted": {"Impersonate-User": {"bob"}, "Impersonate-Group": {"admins"}},
	} {
		t.Run(name, func(t *testing.T) {
			resp, body := c.do(t, "GET", "/clusters/c1/api/v1/pods", "alice-token", h)
			st := statusOf(t, body)
			if resp.StatusCode != 403 || !(strings.Contains(st.Message, "cannot impersonate") || strings.Contains(st.Message, "refuses to impersonate")) {
				t.Fatalf("got %d %q", resp.StatusCode, st.Message)
			}
		})
	}
	// eve may reach nothing; bob may not impersonate anyone.
	resp, body = c.do(t, "GET", "/clusters/c1/api/v1/pods", "eve-token", http.Header{"Impersonate-User": {"bob"}})
	if resp.StatusCode != 403 {
		t.Fatalf("eve: %d %s", resp.StatusCode, body)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// events returns the audit records written so far.
func (l *lockedBuffer) events(t *testing.T) []auditv1.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []auditv1.Event
	for _, line := range strings.Split(strings.TrimSpace(l.b.String()), "\n") {
		if line == "" {
			continue
		}
		var ev auditv1.Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		out = append(out, ev)
	}
	return out
}

func TestAuditRecords(t *testing.T) {
	api := newFakeAPI(t)
	c := newChain(t, restFor(api.Server), api)
	resp, _ := c.do(t, "GET", "/clusters/c1/api/v1/namespaces/default/pods?limit=5", "alice-token", nil)
	id := resp.Header.Get(HeaderRequestID)
	if resp.Header.Get(HeaderServedBy) != "" {
		t.Error("the agent's name reached the caller")
	}
	c.do(t, "GET", "/clusters/c1/api/v1/pods", "wrong-token", nil)
	c.do(t, "GET", "/clusters/lonely/api/v1/pods", "alice-token", nil)

	// An upgraded session: started and completed, with bytes each way.
	up := c.upgrade(t)
	rwc := up.Body.(io.ReadWriteCloser)
	_, _ = io.WriteString(rwc, "hello")
	_ = rwc.(interface{ CloseWrite() error }).CloseWrite()
	_, _ = io.ReadAll(rwc)
	rwc.Close()

	var evs []auditv1.Event
	waitUntil := time.Now().Add(5 * time.Second)
	for len(evs) < 5 && time.Now().Before(waitUntil) {
		time.Sleep(10 * time.Millisecond)
		evs = c.audit.events(t)
	}
	if len(evs) != 5 {
		t.Fatalf("want 5 records, got %d: %+v", len(evs), evs)
	}
	get := evs[0]
	if string(get.AuditID) != id || get.Verb != "list" || get.ObjectRef.Resource != "pods" || get.ObjectRef.Namespace != "default" ||
		get.User.Username != "alice" || get.ResponseStatus.Code != 200 || get.Annotations["keyhole.dev/cluster"] != "c1" || get.Annotations["keyhole.dev/agent"] != "a1" {
		t.Errorf("list record: %+v", get)
	}
	if e := evs[1]; e.ResponseStatus.Code != 401 || e.User.Username != "" || e.ResponseStatus.Reason != "Unauthorized" {
		t.Errorf("401 record: %+v", e)
	}
	if e := evs[2]; e.ResponseStatus.Code != 503 || !strings.Contains(e.ResponseStatus.Message, "no connected agent") {
		t.Errorf("503 record: %+v", e.ResponseStatus)
	}
	if e := evs[3]; e.Stage != auditv1.StageResponseStarted || e.ResponseStatus.Code != 101 {
		t.Errorf("session start: %+v", e)
	}
	if e := evs[4]; e.Stage != auditv1.StageResponseComplete || e.Annotations["keyhole.dev/bytes-in"] != "5" || e.Annotations["keyhole.dev/bytes-out"] != "8" {
		t.Errorf("session end: stage %s annotations %v", e.Stage, e.Annotations)
	}
	for i, e := range evs {
		if got := e.Annotations[audit.AnnotationEnded]; e.Stage == auditv1.StageResponseComplete && got != audit.EndedComplete {
			t.Errorf("record %d ended %q, want complete", i, got)
		}
	}
	all, _ := json.Marshal(evs)
	for _, secret := range []string{"alice-token", "wrong-token", "agent-sa-token"} {
		if strings.Contains(string(all), secret) {
			t.Errorf("audit records contain %q", secret)
		}
	}
}

// An agent that verifies callers: the stub hands it a caller's token only
// when the operator registered the cluster with a caller audience and the
// token was issued for that audience; a token bound to one cluster is
// refused for the others; a stub that states an identity the token does
// not carry is refused by the agent.
func TestAgentVerifiesCallers(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	is := &oidctest.Server{PublicKeys: []oidctest.PublicKey{{PublicKey: key.Public(), KeyID: "k1", Algorithm: oidc.RS256}}}
	idp := httptest.NewTLSServer(is)
	defer idp.Close()
	is.SetIssuer(idp.URL)
	token := func(aud ...string) string {
		claims, _ := json.Marshal(map[string]any{"iss": idp.URL, "aud": aud, "exp": time.Now().Add(time.Hour).Unix(),
			"email": "alice@example.com", "groups": []string{"dev"}})
		return oidctest.SignIDToken(key, "k1", oidc.RS256, string(claims))
	}
	forC1, forC2, general := token("keyhole-c1"), token("keyhole-c2"), token("keyhole")
	jwtCfg := authn.JWTAuthenticatorConfig{Issuer: authn.Issuer{Issuer: apiserverv1beta1.Issuer{URL: idp.URL, Audiences: []string{"keyhole-c1"},
		CertificateAuthority: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: idp.Certificate().Raw}))}}}
	noPrefix, oidcPrefix := "", "oidc:"
	jwtCfg.ClaimMappings = apiserverv1beta1.ClaimMappings{Username: apiserverv1beta1.PrefixedClaimOrExpression{Claim: "email", Prefix: &noPrefix},
		Groups: apiserverv1beta1.PrefixedClaimOrExpression{Claim: "groups", Prefix: &oidcPrefix}}
	verifier, err := authn.NewJWT([]authn.JWTAuthenticatorConfig{jwtCfg})
	if err != nil {
		t.Fatal(err)
	}
	defer verifier.Close()
	alice := authn.User{Name: "alice@example.com", Groups: []string{"oidc:dev"}}
	verifying := audRegistry{"c1": "keyhole-c1", "c2": "keyhole-c2"}
	cases := []struct {
		name     string
		clusters ClusterRegistry
		stubSay  tokens // what the stub claims for each token
		token    string
		code     int
		msg      string
	}{
		{"honest stub", verifying, tokens{forC1: alice}, forC1, 200, ""},
		{"stub lies about the user", verifying, tokens{forC1: {Name: "root@example.com", Groups: []string{"oidc:dev"}}}, forC1, 403, `the token says "alice@example.com"`},
		{"stub adds a group", verifying, tokens{forC1: {Name: "alice@example.com", Groups: []string{"oidc:dev", "admins"}}}, forC1, 403, "the gateway stated"},
		{"static token", verifying, tokens{"alice-token": {Name: "alice", Groups: []string{"dev"}}}, "alice-token", 401, `accepts only an ID token issued for it (audience "keyhole-c1")`},
		{"token for every cluster", verifying, tokens{general: alice}, general, 401, "verifies callers itself"},
		{"token bound to another cluster", verifying, tokens{forC2: alice}, forC2, 403, `bound to cluster "c2"`},
		// The agent announces that it verifies callers, but the operator
		// did not register the cluster so: no token reaches it, and it
		// refuses the request for want of one.
		{"agent asks, operator did not", registry{"c1": true}, tokens{general: alice}, general, 403, "accepts only OIDC tokens"},
		// c2 was unregistered (its agent harvested forC2): the token is
		// refused everywhere, even where it would be an everyday token.
		{"token bound to an unregistered cluster", retiredRegistry{audRegistry{"c1": ""}, map[string]string{"keyhole-c2": "c2"}},
			tokens{forC2: alice}, forC2, 403, `bound to cluster "c2" (its audience "keyhole-c2"), which is no longer registered`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			api := newFakeAPI(t)
			c := newChainWith(t, restFor(api.Server), api, chainOpts{auth: tc.stubSay, verifier: verifier, pol: policy.Open(), clusters: tc.clusters})
			resp, body := c.do(t, "GET", "/clusters/c1/api/v1/pods", tc.token, nil)
			if resp.StatusCode != tc.code {
				t.Fatalf("got %d %s", resp.StatusCode, body)
			}
			if tc.code != 200 {
				if st := statusOf(t, body); !strings.Contains(st.Message, tc.msg) {
					t.Fatalf("message %q lacks %q", st.Message, tc.msg)
				}
			}
			r, hits := c.api.lastRequest()
			if tc.code != 200 && hits != 0 {
				t.Fatal("a refused request reached the API server")
			}
			if tc.code == 200 && (r.Header.Get("Impersonate-User") != "alice@example.com" || r.Header.Get(HeaderCallerToken) != "") {
				t.Fatalf("API server saw user %q, caller token %q", r.Header.Get("Impersonate-User"), r.Header.Get(HeaderCallerToken))
			}
		})
	}
	// A bound token lists only its cluster.
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", ClustersPath, nil)
	req.Header.Set("Authorization", "Bearer "+forC2)
	p, _ := NewProber(ProberConfig{Target: agentTarget{}})
	lister, err := NewStub(StubConfig{Dialer: agentTarget{}, Clusters: verifying, Auth: tokens{forC2: alice}, Policy: policy.Open()})
	if err != nil {
		t.Fatal(err)
	}
	lister.ClusterList(agentList{}, p).ServeHTTP(rec, req)
	var list []ClusterStatus
	if err := json.Unmarshal(rec.Body.Bytes(), &list); err != nil || len(list) != 1 || list[0].ID != "c2" {
		t.Fatalf("clusters listed for a token bound to c2: %s %v", rec.Body, err)
	}
}

// The cluster owner's identity rules bind callers and --as targets alike.
func TestAgentIdentityRules(t *testing.T) {
	api := newFakeAPI(t)
	ah, err := NewAgentHop(AgentHopConfig{Cluster: "c1", Rest: restFor(api.Server), Logger: zaptest.NewLogger(t),
		Identities: authn.IdentityRules{UserPrefixes: []string{"oidc:"}}})
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		h    http.Header
		code int
	}{
		"admitted prefix":    {http.Header{HeaderUser: {"oidc:alice"}}, 200},
		"other prefix":       {http.Header{HeaderUser: {"alice"}}, 403},
		"--as outside rules": {http.Header{HeaderUser: {"oidc:alice"}, HeaderAsUser: {"bob"}}, 403},
	} {
		t.Run(name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/api/v1/pods", nil)
			req.Header = tc.h
			rec := httptest.NewRecorder()
			ah.ServeHTTP(rec, req)
			if rec.Code != tc.code {
				t.Fatalf("got %d: %s", rec.Code, rec.Body)
			}
		})
	}
}

// Health comes from the data path: a round trip through the tunnel to the
// API server makes a cluster ready; a failing API server makes it not.
func TestProber(t *testing.T) {
	api := newFakeAPI(t)
	c := newChain(t, restFor(api.Server), api)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.prober.Run(ctx) }()
	defer func() { cancel(); <-done }()
	status := func() ClusterStatus {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", ClustersPath, nil)
		req.Header.Set("Authorization", "Bearer alice-token")
		c.stub.ClusterList(c.tsrv, c.prober).ServeHTTP(rec, req)
		var list []ClusterStatus
		if err := json.Unmarshal(rec.Body.Bytes(), &list); err != nil || len(list) != 2 || list[0].ID != "c1" {
			t.Fatalf("want c1 and lonely: %s %v", rec.Body, err)
		}
		return list[0]
	}
	waitFor := func(what string, ok func(ClusterStatus) bool) ClusterStatus {
		deadline := time.Now().Add(10 * time.Second)
		for {
			st := status()
			if ok(st) {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %+v", what, st)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	st := waitFor("ready after the first probe", func(st ClusterStatus) bool { return st.Ready })
	h := st.Agents[0].Health
	if h.APIServerVersion != "v1.33.99-fake" || h.TunnelRTT <= 0 || h.LastRoundTrip.IsZero() {
		t.Fatalf("health: %+v", h)
	}
	// The API server fails: the next probe says so and the cluster is not
	// ready, though the tunnel is up.
	api.versionFail.Store(true)
	waitFor("not ready with the reason", func(st ClusterStatus) bool {
		return !st.Ready && len(st.Agents) == 1 && strings.Contains(st.Agents[0].Health.Error, "etcd is sad")
	})
	if h, ok := c.prober.Health("c1", "a1"); !ok || h.APIServerVersion != "v1.33.99-fake" || h.LastRoundTrip.IsZero() {
		t.Fatalf("a failed probe should keep the last good round trip: %+v %v", h, ok)
	}

	// The agent's session ends: the prober forgets its health.
	c.tsrv.Close()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, ok := c.prober.Health("c1", "a1"); !ok && !c.prober.Ready("c1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the prober kept the health of a disconnected agent")
		}
	}
}

func TestNewProber(t *testing.T) {
	for name, tc := range map[string]struct {
		cfg ProberConfig
		msg string
	}{
		"no target":         {ProberConfig{}, "Target is required"},
		"negative interval": {ProberConfig{Target: agentTarget{}, Interval: -time.Second}, "must not be negative"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := NewProber(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %v, want %q", err, tc.msg)
			}
		})
	}
	p, err := NewProber(ProberConfig{Target: agentTarget{agentList{{Cluster: "c1", ID: "a1"}}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.Health("c1", "a1"); ok || p.Ready("c1") {
		t.Fatal("health before any probe")
	}
}

// agentTarget is a ProbeTarget whose agents never answer.
type agentTarget struct{ agentList }

func (agentTarget) DialAgent(string, string) (net.Conn, error)      { return nil, tunnel.ErrNoAgent }
func (agentTarget) PingAgent(string, string) (time.Duration, error) { return 0, tunnel.ErrNoAgent }
func (agentTarget) DialCluster(context.Context, string) (net.Conn, error) {
	return nil, tunnel.ErrNoAgent
}

func TestMetrics(t *testing.T) {
	api := newFakeAPI(t)
	c := newChainWith(t, restFor(api.Server), api, chainOpts{metrics: true})
	for i := 0; i < 3; i++ {
		c.do(t, "GET", "/clusters/c1/api/v1/pods", "alice-token", nil)
	}
	c.do(t, "GET", "/clusters/c1/api/v1/pods", "wrong-token", nil)
	c.do(t, "GET", "/clusters/made-up-1/api", "alice-token", nil)
	c.do(t, "GET", "/clusters/lonely/api", "alice-token", nil)
	rec := httptest.NewRecorder()
	c.metrics.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	out := rec.Body.String()
	for _, want := range []string{
		`keyhole_requests_total{cluster="c1",code="200"} 3`,
		`keyhole_requests_total{cluster="none",code="401"} 1`,
		`keyhole_requests_total{cluster="none",code="404"} 1`, // made-up IDs do not become labels
		`keyhole_requests_total{cluster="lonely",code="503"} 1`,
		`keyhole_request_duration_seconds_count{cluster="c1"} 3`,
		`keyhole_agents_connected{cluster="c1"} 1`,
		`keyhole_open_streams{kind="request"} 0`,
		`keyhole_agent_tunnel_rtt_seconds{agent="a1",cluster="c1"}`,
		`keyhole_agent_connects_total{cluster="c1"} 1`,
		`keyhole_agent_handshakes_refused_total 0`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(out, "made-up-1") {
		t.Error("a made-up cluster ID became a label")
	}
}

type agentList []tunnel.AgentInfo

func (l agentList) Agents(cluster string) []tunnel.AgentInfo {
	var out []tunnel.AgentInfo
	for _, a := range l {
		if cluster == "" || a.Cluster == cluster {
			out = append(out, a)
		}
	}
	return out
}

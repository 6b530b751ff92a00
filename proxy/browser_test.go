package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"

	"github.com/keyhole-dev/keyhole/audit"
	"github.com/keyhole-dev/keyhole/internal/kubestatus"
)

// publicURL is the stub's public URL in these tests: origin checks look at
// the headers browsers send, not at the address the test dials.
const (
	publicURL    = "https://keyhole.example.test:8443"
	publicOrigin = publicURL
	sessCookie   = "__Host-keyhole"
)

// fakeSessions is a BrowserSessions whose cookie value names a session
// directly. Unknown values are refused (and cleared) by Open; a session
// signed out is refused by Current.
type fakeSessions struct {
	mu       sync.Mutex
	sessions map[string]*fakeSession
	opens    atomic.Int32
	currents atomic.Int32
}

type fakeSession struct {
	token     string
	signedOut bool
	expires   time.Time
	reseal    bool // Current sets a fresh cookie, as web does when the cookie is due
}

func newFakeSessions() *fakeSessions {
	return &fakeSessions{sessions: map[string]*fakeSession{
		"s-alice": {token: "alice-token"},
		"s-eve":   {token: "eve-token"},
		"s-out":   {token: "alice-token", signedOut: true},
		"s-stale": {token: "stale-token"}, // its ID token no longer authenticates
		"s-fresh": {token: "alice-token", reseal: true},
	}}
}

func (f *fakeSessions) CookieName() string { return sessCookie }

func (f *fakeSessions) Open(w http.ResponseWriter, r *http.Request) (*BrowserSession, bool, *apierrors.StatusError) {
	f.opens.Add(1)
	c, err := r.Cookie(sessCookie)
	if err != nil {
		return nil, false, nil
	}
	f.mu.Lock()
	s, ok := f.sessions[c.Value]
	f.mu.Unlock()
	if !ok {
		http.SetCookie(w, &http.Cookie{Name: sessCookie, Path: "/", MaxAge: -1, Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
		return nil, true, kubestatus.Unauthorized("the browser session is not valid or has expired: sign in again at " + publicURL + "/")
	}
	return &BrowserSession{AuditID: "audit-" + c.Value, Expires: s.expires, Ref: c.Value}, true, nil
}

func (f *fakeSessions) Current(_ context.Context, w http.ResponseWriter, b *BrowserSession) (string, *apierrors.StatusError) {
	f.currents.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sessions[b.Ref.(string)]
	if s == nil || s.signedOut {
		return "", kubestatus.Unauthorized("the browser session was signed out: sign in again")
	}
	if s.reseal && w != nil {
		http.SetCookie(w, &http.Cookie{Name: sessCookie, Value: b.Ref.(string), Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	}
	return s.token, nil
}

func (f *fakeSessions) signOut(name string) {
	f.mu.Lock()
	f.sessions[name].signedOut = true
	f.mu.Unlock()
}

// browserChain is a chain whose stub accepts browser sessions.
func browserChain(t *testing.T, o chainOpts) (*chain, *fakeSessions) {
	t.Helper()
	api := newFakeAPI(t)
	f := newFakeSessions()
	o.sessions, o.publicURL = f, publicURL
	return newChainWith(t, restFor(api.Server), api, o), f
}

// fromConsole is what the console's own fetch sends (Chromium: no Origin on
// a same-origin GET), with session cookie value sess.
func fromConsole(sess string) http.Header {
	return http.Header{"Cookie": {sessCookie + "=" + sess}, "Sec-Fetch-Site": {"same-origin"}, HeaderConsole: {"1"}}
}

// with returns h with more headers (a copy); an empty value deletes.
func with(h http.Header, kv ...string) http.Header {
	h = h.Clone()
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == "" {
			h.Del(kv[i])
		} else {
			h.Set(kv[i], kv[i+1])
		}
	}
	return h
}

// checkBrowserHeaders: every answer to a cookie request, the stub's
// refusals included, carries the headers that keep it inert in a browser.
func checkBrowserHeaders(t *testing.T, h http.Header) {
	t.Helper()
	for k, want := range map[string]string{
		"X-Content-Type-Options":       "nosniff",
		"Content-Security-Policy":      "sandbox; default-src 'none'",
		"Cache-Control":                "no-store",
		"Cross-Origin-Resource-Policy": "same-origin",
		"Strict-Transport-Security":    "max-age=31536000",
	} {
		if got := h.Values(k); len(got) != 1 || got[0] != want {
			t.Errorf("response header %s = %q, want exactly %q", k, got, want)
		}
	}
}

// checkNotForwarded: nothing of the browser session reached the cluster.
func checkNotForwarded(t *testing.T, r *http.Request) {
	t.Helper()
	for _, k := range []string{"Cookie", HeaderConsole, HeaderCallerToken} {
		if v := r.Header.Values(k); len(v) > 0 {
			t.Errorf("%s reached the API server: %q", k, v)
		}
	}
}

// TestBrowserRequests: a cookie request passes only from the stub's own
// origin with the console header; everything else is refused with a
// Status, audited as a refusal with the session's audit ID, and never
// reaches an agent.
func TestBrowserRequests(t *testing.T) {
	c, f := browserChain(t, chainOpts{})
	own := fromConsole("s-alice")
	crossSite := with(own, "Sec-Fetch-Site", "cross-site", "Origin", "https://attacker.test")
	sibling := with(own, "Sec-Fetch-Site", "same-site", "Origin", "https://evil.example.test:8443")
	otherPort := with(own, "Sec-Fetch-Site", "same-site", "Origin", "https://keyhole.example.test:9443")
	const pods = "/clusters/c1/api/v1/namespaces/default/pods"
	const proxyMsg = "proxy subresources serve the cluster's own pages"
	cases := []struct {
		name, method, path string
		hdr                http.Header
		code               int
		msg                string // in the Status of a refusal
		session            string // want audit annotation keyhole.dev/browser-session
	}{
		{"own origin GET", "GET", pods, own, 200, "", "audit-s-alice"},
		{"own origin, Origin only (no Fetch Metadata)", "GET", pods, with(own, "Sec-Fetch-Site", "", "Origin", publicOrigin), 200, "", "audit-s-alice"},
		{"own origin POST", "POST", pods, with(own, "Origin", publicOrigin), 200, "", "audit-s-alice"},
		{"own origin, Origin spelled with case and default port", "GET", pods, with(own, "Origin", "HTTPS://Keyhole.Example.Test:8443"), 200, "", "audit-s-alice"},
		{"an unrelated path in the cluster named proxy", "GET", "/clusters/c1/api/v1/namespaces/default/configmaps/proxy", own, 200, "", "audit-s-alice"},

		{"cross-site GET", "GET", pods, crossSite, 403, "cross-origin request refused", "audit-s-alice"},
		{"cross-site POST", "POST", pods, crossSite, 403, "cross-origin request refused", "audit-s-alice"},
		{"cross-site form POST", "POST", pods, with(crossSite, HeaderConsole, "", "Content-Type", "application/x-www-form-urlencoded"), 403, "cross-origin request refused", "audit-s-alice"},
		{"sibling subdomain GET (same-site)", "GET", pods, sibling, 403, "cross-origin request refused", "audit-s-alice"},
		{"sibling subdomain POST", "POST", pods, sibling, 403, "cross-origin request refused", "audit-s-alice"},
		{"sibling subdomain form POST", "POST", pods, with(sibling, HeaderConsole, "", "Content-Type", "application/x-www-form-urlencoded"), 403, "cross-origin request refused", "audit-s-alice"},
		{"sibling image (no-cors GET)", "GET", pods, with(sibling, HeaderConsole, "", "Origin", "", "Sec-Fetch-Dest", "image"), 403, "Sec-Fetch-Site is \"same-site\"", "audit-s-alice"},
		{"another port on the same host", "GET", pods, otherPort, 403, "cross-origin request refused", "audit-s-alice"},
		{"same-origin claim with a foreign Origin", "GET", pods, with(own, "Origin", "https://attacker.test"), 403, "cross-origin request refused", "audit-s-alice"},
		{"Origin null", "GET", pods, with(own, "Sec-Fetch-Site", "", "Origin", "null"), 403, "cross-origin request refused", "audit-s-alice"},
		{"typed into the address bar", "GET", pods, with(own, "Sec-Fetch-Site", "none", HeaderConsole, ""), 403, "cross-origin request refused", "audit-s-alice"},
		{"no Fetch Metadata, no Origin", "GET", pods, with(own, "Sec-Fetch-Site", ""), 403, "neither Sec-Fetch-Site nor Origin", "audit-s-alice"},
		{"own origin without the console header", "GET", pods, with(own, HeaderConsole, ""), 403, "X-Keyhole-Console: 1 on every request", "audit-s-alice"},
		{"own origin, console header not 1", "GET", pods, with(own, HeaderConsole, "true"), 403, "X-Keyhole-Console: 1", "audit-s-alice"},

		{"cookie that does not open", "GET", pods, fromConsole("forged"), 401, "not valid or has expired", ""},
		{"session signed out", "GET", pods, fromConsole("s-out"), 401, "signed out", "audit-s-out"},
		{"session's ID token no longer authenticates", "GET", pods, fromConsole("s-stale"), 401, "ID token is not valid", "audit-s-stale"},
		{"policy, as for the bearer", "GET", pods, fromConsole("s-eve"), 403, `user "eve" may not reach cluster "c1"`, "audit-s-eve"},
		{"outside /clusters/", "GET", "/api/v1/pods", own, 404, "no cluster in path", "audit-s-alice"},
		{"unknown cluster", "GET", "/clusters/zz/api", own, 404, `cluster "zz" is not registered`, "audit-s-alice"},

		{"pods/proxy", "GET", "/clusters/c1/api/v1/namespaces/default/pods/p/proxy/", own, 403, proxyMsg, "audit-s-alice"},
		{"pods/proxy with a port and a path", "GET", "/clusters/c1/api/v1/namespaces/default/pods/p:8080/proxy/index.html", own, 403, proxyMsg, "audit-s-alice"},
		{"pods/proxy POST", "POST", "/clusters/c1/api/v1/namespaces/default/pods/p/proxy/x", with(own, "Origin", publicOrigin), 403, proxyMsg, "audit-s-alice"},
		{"services/proxy", "GET", "/clusters/c1/api/v1/namespaces/default/services/https:svc:443/proxy/", own, 403, proxyMsg, "audit-s-alice"},
		{"nodes/proxy", "GET", "/clusters/c1/api/v1/nodes/n1/proxy/metrics", own, 403, proxyMsg, "audit-s-alice"},
		{"legacy /api/v1/proxy/ pods", "GET", "/clusters/c1/api/v1/proxy/namespaces/default/pods/p/", own, 403, proxyMsg, "audit-s-alice"},
		{"legacy /api/v1/proxy/ nodes", "GET", "/clusters/c1/api/v1/proxy/nodes/n1/", own, 403, proxyMsg, "audit-s-alice"},
		{"proxy behind %2F", "GET", "/clusters/c1/api/v1/namespaces/default/pods/p%2Fproxy/", own, 403, proxyMsg, "audit-s-alice"},
		{"an aggregated API's proxy subresource", "GET", "/clusters/c1/apis/example.com/v1/namespaces/d/things/t/proxy", own, 403, proxyMsg, "audit-s-alice"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, before := c.api.lastRequest()
			resp, body := c.do(t, tc.method, tc.path, "", tc.hdr)
			if resp.StatusCode != tc.code {
				t.Fatalf("got %s %s, want %d", resp.Status, body, tc.code)
			}
			checkBrowserHeaders(t, resp.Header)
			ev := c.finalRecord(t, resp.Header.Get(HeaderRequestID))
			if got := ev.Annotations[audit.AnnotationBrowserSession]; got != tc.session {
				t.Errorf("audit %s = %q, want %q", audit.AnnotationBrowserSession, got, tc.session)
			}
			if int(ev.ResponseStatus.Code) != tc.code {
				t.Errorf("audit code %d, want %d", ev.ResponseStatus.Code, tc.code)
			}
			r, after := c.api.lastRequest()
			if tc.code != 200 {
				if st := statusOf(t, body); !strings.Contains(st.Message, tc.msg) {
					t.Fatalf("message %q lacks %q", st.Message, tc.msg)
				}
				if ev.ResponseStatus.Message == "" || !strings.Contains(ev.ResponseStatus.Message, tc.msg) {
					t.Errorf("audit message %q lacks %q", ev.ResponseStatus.Message, tc.msg)
				}
				if after != before || ev.Annotations[audit.AnnotationAgent] != "" {
					t.Fatal("a refused cookie request reached the cluster")
				}
				return
			}
			if after != before+1 {
				t.Fatal("the request did not reach the API server")
			}
			checkNotForwarded(t, r)
			if got := r.Header.Get("Impersonate-User"); got != "alice" {
				t.Errorf("Impersonate-User %q, want alice", got)
			}
			if ev.User.Username != "alice" || ev.Annotations[audit.AnnotationAgent] != "a1" {
				t.Errorf("record: user %q agent %q", ev.User.Username, ev.Annotations[audit.AnnotationAgent])
			}
		})
	}
	if n := f.opens.Load(); n == 0 {
		t.Fatal("Open never called")
	}
	if strings.Contains(c.audit.b.String(), "alice-token") {
		t.Error("the audit log holds a session's token")
	}
}

// TestBrowserUpgrades: a cookie WebSocket (or SPDY) upgrade needs an exact
// Origin; a missing one is refused. Browsers send no Sec-Fetch-Site and
// cannot set headers on a WebSocket, so neither is asked for.
func TestBrowserUpgrades(t *testing.T) {
	c, _ := browserChain(t, chainOpts{})
	up := func(path, upgrade, sess string, extra ...string) string {
		req := "GET " + path + " HTTP/1.1\nHost: keyhole.example.test:8443\nConnection: Upgrade\nUpgrade: " + upgrade + "\n" +
			"Sec-WebSocket-Version: 13\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nCookie: " + sessCookie + "=" + sess + "\n"
		for _, e := range extra {
			req += e + "\n"
		}
		return req + "\n"
	}
	const exec = "/clusters/c1/upgrade"
	cases := []struct {
		name, req string
		code      int
		msg       string
		session   string
		user      string // Impersonate-User at the API server, for a 101
	}{
		{"own origin", up(exec, "websocket", "s-alice", "Origin: "+publicOrigin, "Sec-WebSocket-Protocol: v5.channel.k8s.io"), 101, "", "audit-s-alice", "alice"},
		{"own origin, SPDY", up(exec, "SPDY/3.1", "s-alice", "Origin: "+publicOrigin), 101, "", "audit-s-alice", "alice"},
		{"cross-site Origin", up(exec, "websocket", "s-alice", "Origin: https://attacker.test"), 403, "cross-origin WebSocket refused", "audit-s-alice", ""},
		{"sibling subdomain Origin", up(exec, "websocket", "s-alice", "Origin: https://evil.example.test:8443"), 403, "cross-origin WebSocket refused", "audit-s-alice", ""},
		{"another port", up(exec, "websocket", "s-alice", "Origin: https://keyhole.example.test:9443"), 403, "cross-origin WebSocket refused", "audit-s-alice", ""},
		{"no Origin", up(exec, "websocket", "s-alice"), 403, "carries no Origin", "audit-s-alice", ""},
		{"no Origin, same-origin Fetch Metadata", up(exec, "websocket", "s-alice", "Sec-Fetch-Site: same-origin", HeaderConsole+": 1"), 403, "carries no Origin", "audit-s-alice", ""},
		{"Origin null", up(exec, "websocket", "s-alice", "Origin: null"), 403, "cross-origin WebSocket refused", "audit-s-alice", ""},
		{"cross-site SPDY", up(exec, "SPDY/3.1", "s-alice", "Origin: https://attacker.test"), 403, "cross-origin WebSocket refused", "audit-s-alice", ""},
		{"own origin to pods/proxy", up("/clusters/c1/api/v1/namespaces/default/pods/p/proxy/ws", "websocket", "s-alice", "Origin: "+publicOrigin), 403, "proxy subresources", "audit-s-alice", ""},
		{"signed out", up(exec, "websocket", "s-out", "Origin: "+publicOrigin), 401, "signed out", "audit-s-out", ""},
		// A page may open a WebSocket with a token of its own: then it is a
		// bearer request, and the cookie plays no part.
		{"a bearer subprotocol wins over the cookie", up(exec, "websocket", "s-alice", "Origin: https://attacker.test",
			"Sec-WebSocket-Protocol: v5.channel.k8s.io, "+bearerProto("eve-token")), 403, `user "eve" may not reach`, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, before := c.api.lastRequest()
			resp, conn := c.raw(t, tc.req)
			if resp.StatusCode != tc.code {
				b, _ := io.ReadAll(resp.Body)
				t.Fatalf("got %s %s, want %d", resp.Status, b, tc.code)
			}
			if tc.code == 101 {
				conn.Close()
				r, _ := c.api.lastRequest()
				checkNotForwarded(t, r)
				if got := r.Header.Get("Impersonate-User"); got != tc.user {
					t.Errorf("Impersonate-User %q, want %q", got, tc.user)
				}
			} else {
				b, _ := io.ReadAll(resp.Body)
				if st := statusOf(t, string(b)); !strings.Contains(st.Message, tc.msg) {
					t.Fatalf("message %q lacks %q", st.Message, tc.msg)
				}
				if _, after := c.api.lastRequest(); after != before {
					t.Fatal("a refused upgrade reached the API server")
				}
			}
			if tc.session != "" {
				checkBrowserHeaders(t, resp.Header)
			}
			ev := c.finalRecord(t, resp.Header.Get(HeaderRequestID))
			if got := ev.Annotations[audit.AnnotationBrowserSession]; got != tc.session {
				t.Errorf("audit %s = %q, want %q", audit.AnnotationBrowserSession, got, tc.session)
			}
			if int(ev.ResponseStatus.Code) != tc.code {
				t.Errorf("audit code %d, want %d", ev.ResponseStatus.Code, tc.code)
			}
		})
	}
}

// TestProxySubresource reads paths as the stub forwards them (decoded) and
// as a router that cleans paths would.
func TestProxySubresource(t *testing.T) {
	for p, want := range map[string]bool{
		"/api/v1/namespaces/default/pods/p/proxy":               true,
		"/api/v1/namespaces/default/pods/p/proxy/":              true,
		"/api/v1/namespaces/default/pods/http:p:80/proxy/a/b":   true,
		"/api/v1/namespaces/default/services/svc/proxy/":        true,
		"/api/v1/nodes/n1/proxy/metrics":                        true,
		"/api/v1/proxy/namespaces/default/pods/p":               true,
		"/api/v1/proxy/namespaces/default/services/svc:80/x":    true,
		"/api/v1/proxy/nodes/n1/":                               true,
		"/api/v1/namespaces/default/pods/x/../p/proxy/":         true,
		"/api/v1/namespaces/default/pods/p/log/../proxy":        true,
		"/api/v1/namespaces/default/./pods/p/proxy":             true,
		"//api/v1//nodes/n1/proxy":                              true,
		"/api/v1/namespaces/default/pods/p/exec/../../p/proxy/": true,
		"/apis/example.com/v1/namespaces/d/things/t/proxy":      true,
		"/api/v1/namespaces/default/pods/p/log":                 false,
		"/api/v1/namespaces/default/configmaps/proxy":           false,
		"/api/v1/namespaces/proxy/pods":                         false,
		"/api/v1/namespaces/default/pods/p/proxyx":              false,
		"/api/v1/namespaces/default/pods/p/Proxy":               false,
		"/api/v1/namespaces/default/pods/p/proxy/../../q":       true, // the API server would proxy it, if nothing cleans it
		"/version": false,
	} {
		if got := proxySubresource("GET", p); got != want {
			t.Errorf("proxySubresource(%q) = %v, want %v", p, got, want)
		}
	}
}

// A path with ".." that reaches the stub hop without a cleaning router in
// front (the chain's ServeMux redirects such paths) is refused as its
// cleaned reading says.
func TestBrowserProxyDotDot(t *testing.T) {
	c, _ := browserChain(t, chainOpts{})
	_, before := c.api.lastRequest()
	for _, p := range []string{"/clusters/c1/api/v1/namespaces/default/pods/x/../p/proxy/", "/clusters/c1/api/v1/nodes/n1/stats/../proxy/"} {
		req := httptest.NewRequest("GET", "https://keyhole.example.test:8443/", nil)
		req.URL.Path = p
		req.Header = fromConsole("s-alice")
		rec := httptest.NewRecorder()
		c.stub.ServeHTTP(rec, req)
		if rec.Code != 403 || !strings.Contains(rec.Body.String(), "proxy subresources") {
			t.Errorf("%s: %d %s", p, rec.Code, rec.Body)
		}
	}
	if _, after := c.api.lastRequest(); after != before {
		t.Fatal("a proxy request reached the API server")
	}
}

// A cookie request to a cluster whose agents verify callers is refused: the
// session's token is never sent there.
func TestBrowserVerifyingCluster(t *testing.T) {
	c, f := browserChain(t, chainOpts{clusters: audRegistry{"c1": "keyhole-c1", "c2": ""}})
	_, before := c.api.lastRequest()
	resp, body := c.do(t, "GET", "/clusters/c1/api/v1/pods", "", fromConsole("s-alice"))
	if st := statusOf(t, body); resp.StatusCode != 403 || !strings.Contains(st.Message, `cluster "c1" verifies callers itself`) ||
		!strings.Contains(st.Message, "stub kubeconfig --oidc") {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if _, after := c.api.lastRequest(); after != before {
		t.Fatal("the cookie request reached the verifying cluster")
	}
	if ev := c.finalRecord(t, resp.Header.Get(HeaderRequestID)); ev.Annotations[audit.AnnotationBrowserSession] != "audit-s-alice" || ev.ResponseStatus.Code != 403 {
		t.Errorf("record %+v", ev)
	}
	if f.currents.Load() == 0 {
		t.Error("the session was not checked before the cluster")
	}
	// The cluster list says which clusters the console cannot reach.
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "https://keyhole.example.test:8443"+ClustersPath, nil)
	req.Header = fromConsole("s-alice")
	c.stub.ClusterList(c.tsrv, c.prober).ServeHTTP(rec, req)
	var list []ClusterStatus
	if err := json.Unmarshal(rec.Body.Bytes(), &list); rec.Code != 200 || err != nil || len(list) != 2 {
		t.Fatalf("cluster list: %d %s", rec.Code, rec.Body)
	}
	for _, cs := range list {
		if want := cs.ID == "c1"; cs.KubectlOnly != want {
			t.Errorf("cluster %s: kubectlOnly %v, want %v", cs.ID, cs.KubectlOnly, want)
		}
	}
}

// Clusters may not grant CORS or set cookies on the stub's origin, for
// bearer and cookie requests alike; a cookie request's answer has the
// browser headers in place of the cluster's, and keeps the cookie the
// session itself set.
func TestBrowserResponseHeaders(t *testing.T) {
	c, _ := browserChain(t, chainOpts{})
	check := func(t *testing.T, h http.Header) {
		t.Helper()
		for k := range h {
			if strings.HasPrefix(k, "Access-Control-") {
				t.Errorf("%s: %q reached the caller", k, h.Values(k))
			}
		}
		for _, v := range h.Values("Set-Cookie") {
			if strings.Contains(v, "cluster=") || strings.Contains(v, "forged") {
				t.Errorf("the cluster's Set-Cookie %q reached the caller", v)
			}
		}
	}
	t.Run("bearer", func(t *testing.T) {
		resp, _ := c.do(t, "GET", "/clusters/c1/cors", "alice-token", http.Header{"Origin": {"https://attacker.test"}})
		if resp.StatusCode != 200 {
			t.Fatal(resp.Status)
		}
		check(t, resp.Header)
		if got := resp.Header.Values("Set-Cookie"); len(got) != 0 {
			t.Errorf("Set-Cookie %q", got)
		}
		// Otherwise unchanged: bearer answers are the cluster's.
		if got := resp.Header.Get("Cache-Control"); got != "public, max-age=60" {
			t.Errorf("Cache-Control %q", got)
		}
		if got := resp.Header.Get("Content-Security-Policy"); got != "default-src *" {
			t.Errorf("Content-Security-Policy %q", got)
		}
	})
	t.Run("cookie", func(t *testing.T) {
		resp, body := c.do(t, "GET", "/clusters/c1/cors", "", fromConsole("s-fresh"))
		if resp.StatusCode != 200 || !strings.Contains(body, "<script>") {
			t.Fatal(resp.Status, body)
		}
		check(t, resp.Header)
		checkBrowserHeaders(t, resp.Header)
		if got := resp.Header.Values("Set-Cookie"); len(got) != 1 || !strings.HasPrefix(got[0], sessCookie+"=s-fresh;") {
			t.Errorf("Set-Cookie %q, want only the session's own", got)
		}
	})
}

// A bearer request behaves exactly as before, whatever cookie and browser
// headers come with it: the cookie is not even opened, and never forwarded.
func TestBrowserBearerWithStrayCookie(t *testing.T) {
	c, f := browserChain(t, chainOpts{})
	plain := func(tok string, h http.Header) (int, string, http.Header, auditv1.Event, *http.Request) {
		resp, body := c.do(t, "GET", "/clusters/c1/api/v1/pods", tok, h)
		ev := c.finalRecord(t, resp.Header.Get(HeaderRequestID))
		r, _ := c.api.lastRequest()
		return resp.StatusCode, body, resp.Header, ev, r
	}
	code0, body0, _, ev0, _ := plain("alice-token", nil)
	for name, h := range map[string]http.Header{
		"valid session cookie":  fromConsole("s-alice"),
		"cross-site, no header": with(fromConsole("s-alice"), "Sec-Fetch-Site", "cross-site", "Origin", "https://attacker.test", HeaderConsole, ""),
		"forged cookie":         with(fromConsole("forged"), HeaderConsole, ""),
	} {
		t.Run(name, func(t *testing.T) {
			opens := f.opens.Load()
			code, body, hdr, ev, r := plain("alice-token", h)
			if code != code0 || body != body0 {
				t.Fatalf("got %d %s, want %d %s", code, body, code0, body0)
			}
			if f.opens.Load() != opens {
				t.Error("the cookie of a bearer request was opened")
			}
			if hdr.Get("Content-Security-Policy") != "" || hdr.Get("Set-Cookie") != "" {
				t.Errorf("a bearer answer got browser headers: %v", hdr)
			}
			if ev.User.Username != ev0.User.Username || ev.Annotations[audit.AnnotationBrowserSession] != "" {
				t.Errorf("record %+v", ev)
			}
			checkNotForwarded(t, r)
		})
	}
	t.Run("a bad bearer is not rescued by a good cookie", func(t *testing.T) {
		resp, body := c.do(t, "GET", "/clusters/c1/api/v1/pods", "nope", fromConsole("s-alice"))
		if st := statusOf(t, body); resp.StatusCode != 401 || !strings.Contains(st.Message, "bearer token is not valid") {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
	})
	t.Run("Authorization of another scheme with a cookie", func(t *testing.T) {
		resp, body := c.do(t, "GET", "/clusters/c1/api/v1/pods", "", with(fromConsole("s-alice"), "Authorization", "Basic YTpi"))
		if st := statusOf(t, body); resp.StatusCode != 401 || !strings.Contains(st.Message, "no bearer token") {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
	})
}

// Without Sessions, cookies are ignored as they always were.
func TestNoSessionsIgnoresCookies(t *testing.T) {
	api := newFakeAPI(t)
	c := newChain(t, restFor(api.Server), api)
	resp, body := c.do(t, "GET", "/clusters/c1/api/v1/pods", "", fromConsole("s-alice"))
	if st := statusOf(t, body); resp.StatusCode != 401 || !strings.Contains(st.Message, "no bearer token") {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if resp.Header.Get("Content-Security-Policy") != "" {
		t.Error("browser headers without Sessions")
	}
	if _, err := NewStub(StubConfig{Dialer: c.tsrv, Clusters: registry{}, Auth: tokens{}, Policy: &mutableAccess{}, Sessions: newFakeSessions()}); err == nil {
		t.Error("Sessions without PublicURL accepted")
	}
}

// No CORS is ever granted: a preflight carries no cookie, and gets the
// usual 401 without any Access-Control-Allow-*.
func TestNoCORS(t *testing.T) {
	c, _ := browserChain(t, chainOpts{})
	for _, o := range []string{"https://attacker.test", "https://evil.example.test:8443", publicOrigin} {
		resp, body := c.do(t, "OPTIONS", "/clusters/c1/api/v1/namespaces/default/pods", "", http.Header{
			"Origin": {o}, "Access-Control-Request-Method": {"GET"}, "Access-Control-Request-Headers": {"x-keyhole-console"},
			"Sec-Fetch-Mode": {"cors"}, "Sec-Fetch-Site": {"cross-site"}})
		if resp.StatusCode != 401 {
			t.Fatalf("%s: %s %s", o, resp.Status, body)
		}
		for k := range resp.Header {
			if strings.HasPrefix(k, "Access-Control-") {
				t.Errorf("%s: %s %q", o, k, resp.Header.Values(k))
			}
		}
		if ev := c.finalRecord(t, resp.Header.Get(HeaderRequestID)); ev.ResponseStatus.Code != 401 {
			t.Errorf("%s: not audited as a refusal: %+v", o, ev)
		}
	}
}

// The cluster list takes cookie requests under the same rules.
func TestBrowserClusterList(t *testing.T) {
	c, _ := browserChain(t, chainOpts{})
	h := c.stub.ClusterList(c.tsrv, c.prober)
	get := func(hdr http.Header) *httptest.ResponseRecorder {
		req := httptest.NewRequest("GET", "https://keyhole.example.test:8443"+ClustersPath, nil)
		req.Header = hdr
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	rec := get(fromConsole("s-alice"))
	var list []ClusterStatus
	if err := json.Unmarshal(rec.Body.Bytes(), &list); rec.Code != 200 || err != nil || len(list) != 2 {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	checkBrowserHeaders(t, rec.Header())
	if ev := c.finalRecord(t, rec.Header().Get(HeaderRequestID)); ev.Annotations[audit.AnnotationBrowserSession] != "audit-s-alice" || ev.User.Username != "alice" {
		t.Errorf("record %+v", ev)
	}
	for name, hdr := range map[string]http.Header{
		"cross-site":        with(fromConsole("s-alice"), "Sec-Fetch-Site", "cross-site", "Origin", "https://attacker.test"),
		"no console header": with(fromConsole("s-alice"), HeaderConsole, ""),
	} {
		rec := get(hdr)
		if rec.Code != 403 || strings.Contains(rec.Body.String(), `"c1"`) {
			t.Errorf("%s: %d %s", name, rec.Code, rec.Body)
		}
		checkBrowserHeaders(t, rec.Header())
		if ev := c.finalRecord(t, rec.Header().Get(HeaderRequestID)); ev.Annotations[audit.AnnotationBrowserSession] != "audit-s-alice" || ev.ResponseStatus.Code != 403 {
			t.Errorf("%s: record %+v", name, ev)
		}
	}
	if rec := get(fromConsole("forged")); rec.Code != 401 || !strings.Contains(rec.Header().Get("Set-Cookie"), "Max-Age=0") {
		t.Errorf("forged: %d %v %s", rec.Code, rec.Header(), rec.Body)
	}
}

// A long-running cookie request lives as long as its session: the recheck
// asks the session first, so a sign-out (on any replica) ends a watch or an
// exec within about one RecheckInterval; the session's end is the
// credential's expiry.
func TestBrowserRecheck(t *testing.T) {
	const interval = 100 * time.Millisecond
	watch := func(t *testing.T, c *chain, sess string) (*bufio.Reader, io.Closer, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", c.stubURL+"/clusters/c1/watch?watch=true", nil)
		req.Header = fromConsole(sess)
		resp, err := c.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("%s %s", resp.Status, b)
		}
		br := bufio.NewReader(resp.Body)
		if l, err := br.ReadString('\n'); err != nil || !strings.Contains(l, "ADDED") {
			t.Fatalf("first event: %q %v", l, err)
		}
		return br, resp.Body, resp.Header.Get(HeaderRequestID)
	}
	ends := func(t *testing.T, r io.Reader, within time.Duration) bool {
		t.Helper()
		done := make(chan error, 1)
		go func() { _, err := io.ReadAll(r); done <- err }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("the stream was cut (%v), not ended cleanly", err)
			}
			return true
		case <-time.After(within):
			return false
		}
	}
	t.Run("signed out", func(t *testing.T) {
		c, f := browserChain(t, chainOpts{recheck: interval})
		br, body, id := watch(t, c, "s-alice")
		defer body.Close()
		before := f.currents.Load()
		time.Sleep(3 * interval)
		if f.currents.Load() <= before {
			t.Fatal("the recheck does not ask the session")
		}
		f.signOut("s-alice")
		if !ends(t, br, 20*interval) {
			t.Fatal("the watch still runs after its session was signed out")
		}
		ev := c.finalRecord(t, id)
		if ev.Annotations[audit.AnnotationEnded] != EndedRevoked || !strings.Contains(ev.Annotations[audit.AnnotationEndedMessage], "the browser session was signed out or ended") ||
			ev.Annotations[audit.AnnotationBrowserSession] != "audit-s-alice" {
			t.Fatalf("final record %v", ev.Annotations)
		}
	})
	t.Run("session expires", func(t *testing.T) {
		c, f := browserChain(t, chainOpts{recheck: interval})
		f.sessions["s-alice"].expires = time.Now().Add(700 * time.Millisecond)
		br, body, id := watch(t, c, "s-alice")
		defer body.Close()
		if !ends(t, br, 30*interval) {
			t.Fatal("the watch outlived its session")
		}
		if ev := c.finalRecord(t, id); ev.Annotations[audit.AnnotationEnded] != EndedExpired {
			t.Fatalf("final record %v", ev.Annotations)
		}
	})
	t.Run("session stands", func(t *testing.T) {
		c, _ := browserChain(t, chainOpts{recheck: interval})
		br, body, _ := watch(t, c, "s-alice")
		defer body.Close()
		if ends(t, br, 5*interval) {
			t.Fatal("the watch ended though its session stands")
		}
	})
	t.Run("session's token now another user", func(t *testing.T) {
		c, f := browserChain(t, chainOpts{recheck: interval})
		br, body, id := watch(t, c, "s-alice")
		defer body.Close()
		f.mu.Lock()
		f.sessions["s-alice"].token = "eve-token"
		f.mu.Unlock()
		if !ends(t, br, 20*interval) {
			t.Fatal("the watch still runs as another identity")
		}
		if ev := c.finalRecord(t, id); ev.Annotations[audit.AnnotationEnded] != EndedRevoked {
			t.Fatalf("final record %v", ev.Annotations)
		}
	})
	t.Run("exec session signed out", func(t *testing.T) {
		c, f := browserChain(t, chainOpts{recheck: interval})
		resp, conn := c.raw(t, "GET /clusters/c1/upgrade HTTP/1.1\nHost: x\nConnection: Upgrade\nUpgrade: websocket\n"+
			"Sec-WebSocket-Version: 13\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nCookie: "+sessCookie+"=s-alice\nOrigin: "+publicOrigin+"\n\n")
		if resp.StatusCode != 101 {
			t.Fatal(resp.Status)
		}
		f.signOut("s-alice")
		done := make(chan struct{})
		go func() { _, _ = io.ReadAll(conn); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * interval):
			t.Fatal("the session still runs after sign-out")
		}
		id := resp.Header.Get(HeaderRequestID)
		if ev := c.finalRecord(t, id); ev.Annotations[audit.AnnotationEnded] != EndedRevoked || ev.Annotations[audit.AnnotationBrowserSession] != "audit-s-alice" {
			t.Fatalf("final record %v", ev.Annotations)
		}
	})
}

package proxy

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"

	"github.com/keyhole-dev/keyhole/audit"
)

const appsDomain = "apps.example-apps.net"

// fakeSealer keeps what it seals in a map; a value names its entry.
type fakeSealer struct {
	mu sync.Mutex
	m  map[string]fakeSeal
}

type fakeSeal struct {
	use string
	bs  *BrowserSession
	g   AppGrant
}

func (f *fakeSealer) SealApp(_ context.Context, use string, bs *BrowserSession, g AppGrant) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := fmt.Sprintf("sealed-%d", len(f.m))
	f.m[v] = fakeSeal{use, bs, g}
	return v, nil
}

func (f *fakeSealer) OpenApp(_ context.Context, use, value string) (*BrowserSession, AppGrant, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.m[value]
	switch {
	case !ok:
		return nil, AppGrant{}, errors.New("not sealed here")
	case e.use != use:
		return nil, AppGrant{}, errors.New("sealed for another use")
	case !time.Now().Before(e.g.Expires):
		return e.bs, e.g, errors.New("expired")
	}
	return e.bs, e.g, nil
}

// seal puts a value in directly (a grant the stub never made).
func (f *fakeSealer) seal(use, sess string, g AppGrant) string {
	v, _ := f.SealApp(context.Background(), use, &BrowserSession{AuditID: "audit-" + sess, Ref: sess, Expires: time.Now().Add(time.Hour)}, g)
	return v
}

// fakeServiceProxy stands in for kube-apiserver's services/proxy of
// Service web, port http, in namespace apps: under the prefix it answers
// as an app behind the API server's proxy would (links and Location
// rewritten with the prefix, as apimachinery's proxy transport does).
type fakeServiceProxy struct {
	*httptest.Server
	mu   sync.Mutex
	last *http.Request
	hits int
}

var appTarget = AppTarget{Cluster: "c1", Namespace: "apps", Service: "web", Scheme: "http", Port: "http"}

func newFakeServiceProxy(t *testing.T) *fakeServiceProxy {
	f := &fakeServiceProxy{}
	prefix := appTarget.Prefix()
	f.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.last, f.hits = r.Clone(context.Background()), f.hits+1
		f.mu.Unlock()
		rel, ok := strings.CutPrefix(r.URL.Path, prefix)
		if !ok {
			http.Error(w, "not the app's service: "+r.URL.Path, http.StatusNotFound)
			return
		}
		page := `<!doctype html><title>app</title><base href="` + prefix + `/"><a id="rel" href="` + prefix + `/landed?x=1">landed</a>` +
			`<img src="http://10.0.0.1:6443` + prefix + `/logo.png"><a id="out" href="https://elsewhere.example/x">out</a><script>var p = "` + prefix + `/in-script";</script>`
		h := w.Header()
		switch rel {
		case "/":
			h.Set("Content-Type", "text/html; charset=utf-8")
			_, _ = io.WriteString(w, page)
		case "/gz":
			h.Set("Content-Type", "text/html")
			h.Set("Content-Encoding", "gzip")
			zw := gzip.NewWriter(w)
			_, _ = io.WriteString(zw, page)
			_ = zw.Close()
		case "/go":
			http.Redirect(w, r, prefix+"/landed", http.StatusFound)
		case "/headers":
			h.Add("Set-Cookie", "app=1; Path=/; Domain="+appsDomain+"; HttpOnly")
			h.Add("Set-Cookie", AppCookie+"=forged; Path=/; Secure")
			h.Add("Set-Cookie", "__Host-keyhole=forged; Path=/; Secure")
			h.Set("Access-Control-Allow-Origin", "https://keyhole.example.test:8443")
			h.Set("Access-Control-Allow-Credentials", "true")
			h.Set("Alt-Svc", `h2="elsewhere.example:443"`)
			h.Set("Clear-Site-Data", `"cookies", "storage"`)
			h.Set("Content-Type", "text/plain")
			_, _ = io.WriteString(w, "headers")
		case "/ws":
			h.Set("Connection", "Upgrade")
			h.Set("Upgrade", "websocket")
			w.WriteHeader(http.StatusSwitchingProtocols)
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			in, _ := io.ReadAll(brw)
			_, _ = conn.Write([]byte("echo:" + string(in)))
		default:
			h.Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]any{"path": rel, "cookie": r.Header.Get("Cookie"), "origin": r.Header.Get("Origin"),
				"user": r.Header.Get("Impersonate-User"), "console": r.Header.Get(HeaderConsole), "auth": r.Header.Get("Authorization")})
		}
	}))
	f.EnableHTTP2 = true
	f.StartTLS()
	t.Cleanup(f.Close)
	return f
}

func (f *fakeServiceProxy) lastRequest() (*http.Request, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last, f.hits
}

// appsChain is a chain whose stub serves apps under appsDomain, in front
// of a fake services/proxy.
func appsChain(t *testing.T) (*chain, *fakeSessions, *fakeSealer, *fakeServiceProxy) {
	t.Helper()
	svc := newFakeServiceProxy(t)
	f := newFakeSessions()
	sealer := &fakeSealer{m: map[string]fakeSeal{}}
	c := newChainWith(t, restFor(svc.Server), &fakeAPI{Server: svc.Server},
		chainOpts{sessions: f, publicURL: publicURL, apps: &AppsConfig{Domain: appsDomain, Sealer: sealer}, recheck: 50 * time.Millisecond})
	return c, f, sealer, svc
}

// appHost is the Host of the app at t.
func appHost(t AppTarget) string { return t.Label() + "." + appsDomain + ":8443" }

// doHost sends a request with Host host; rawPath is sent as written.
func (c *chain) doHost(t *testing.T, method, host, rawPath string, hdr http.Header, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, c.stubURL+"/", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.URL.Opaque = "" // the path goes as written
	p, q, _ := strings.Cut(rawPath, "?")
	req.URL.RawQuery = q
	if req.URL.Path, err = url.PathUnescape(p); err != nil {
		t.Fatal(err)
	}
	req.URL.RawPath = p
	req.Host = host
	for k, v := range hdr {
		req.Header[k] = v
	}
	client := *c.client
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// appCookieOf is the app cookie a response sets, or nil.
func appCookieOf(resp *http.Response) *http.Cookie {
	for _, c := range resp.Cookies() {
		if c.Name == AppCookie {
			return c
		}
	}
	return nil
}

// auditOf waits for the final audit record of the response resp (by its
// request ID: the record is written as the handler returns, which may be
// after the client read the response).
func auditOf(t *testing.T, c *chain, resp *http.Response) auditv1.Event {
	t.Helper()
	id := resp.Header.Get(HeaderRequestID)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		for _, ev := range c.audit.events(t) {
			if string(ev.AuditID) == id && ev.Stage == auditv1.StageResponseComplete {
				return ev
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no audit record of request %q", id)
		}
	}
}

// messageOf is a Status's message, or an HTML page's text unescaped.
func messageOf(body string) string {
	var st struct{ Message string }
	if json.Unmarshal([]byte(body), &st) == nil && st.Message != "" {
		return st.Message
	}
	return html.UnescapeString(body)
}

// TestAppsLaunch: the console (a cookie request under every rule) gets a
// launch URL on the app's own host; the launch there turns the ticket into
// the app cookie (host-only, Secure, HttpOnly, Lax) and goes to the path;
// a ticket on another app host, an expired one, a forged one, or an app
// cookie used as a ticket is refused.
func TestAppsLaunch(t *testing.T) {
	c, _, sealer, _ := appsChain(t)
	own := with(fromConsole("s-alice"), "Content-Type", "application/json")
	launch := func(hdr http.Header, token, body string) (*http.Response, string) {
		t.Helper()
		return c.doBody(t, "POST", AppsPath, token, hdr, strings.NewReader(body))
	}
	body := `{"cluster":"c1","namespace":"apps","service":"web","port":"http","path":"/dash?x=1"}`

	if resp, b := c.do(t, "GET", AppsPath, "", fromConsole("s-alice")); resp.StatusCode != 200 || strings.TrimSpace(b) != `{"enabled":true}` {
		t.Fatalf("GET %s: %s %s", AppsPath, resp.Status, b)
	}
	resp, b := launch(own, "", body)
	if resp.StatusCode != 200 {
		t.Fatalf("launch: %s %s", resp.Status, b)
	}
	var got struct{ URL string }
	if err := json.Unmarshal([]byte(b), &got); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(got.URL)
	if err != nil || u.Scheme != "https" || u.Host != appHost(appTarget) || u.Path != AppLaunchPath || u.Query().Get("ticket") == "" {
		t.Fatalf("launch URL %q", got.URL)
	}
	if l := appTarget.Label(); len(l) != 32 || l != (AppTarget{Cluster: "c1", Namespace: "apps", Service: "web", Scheme: "http", Port: "http"}).Label() ||
		l == (AppTarget{Cluster: "c1", Namespace: "apps", Service: "web", Scheme: "https", Port: "http"}).Label() ||
		l == (AppTarget{Cluster: "c2", Namespace: "apps", Service: "web", Scheme: "http", Port: "http"}).Label() {
		t.Fatalf("label %q: not 32 characters, not stable, or not one per target", l)
	}
	ev := auditOf(t, c, resp)
	if ev.Annotations[audit.AnnotationAppOrigin] != "https://"+appHost(appTarget) || ev.Annotations[audit.AnnotationBrowserSession] != "audit-s-alice" ||
		ev.User.Username != "alice" || ev.Annotations[audit.AnnotationCluster] != "c1" {
		t.Errorf("launch record: %+v %v", ev.User, ev.Annotations)
	}
	ticket := u.Query().Get("ticket")

	// Refused launches.
	for _, tc := range []struct {
		name, token, body string
		hdr               http.Header
		code              int
		msg               string
	}{
		{"bearer", "alice-token", body, http.Header{"Content-Type": {"application/json"}}, 403, "opened from the console"},
		{"no console header", "", body, with(own, HeaderConsole, ""), 403, HeaderConsole},
		{"cross-site", "", body, with(own, "Sec-Fetch-Site", "cross-site", "Origin", "https://attacker.test"), 403, "cross-origin"},
		{"policy", "", body, with(own, "Cookie", sessCookie+"=s-eve"), 403, `user "eve" may not reach cluster "c1"`},
		{"unknown cluster", "", strings.Replace(body, `"c1"`, `"c9"`, 1), own, 404, `cluster "c9" is not registered`},
		{"bad service", "", strings.Replace(body, `"web"`, `"Web/../x"`, 1), own, 400, "is not a Service name"},
		{"bad port", "", strings.Replace(body, `"http"`, `"99999"`, 1), own, 400, "port"},
		{"other host", "", strings.Replace(body, `/dash?x=1`, `//evil.test/`, 1), own, 400, "must be a path on the app's host"},
		{"dot dot", "", strings.Replace(body, `/dash?x=1`, `/a/../../x`, 1), own, 400, `".." segment`},
		{"unknown key", "", strings.Replace(body, `"path"`, `"host"`, 1), own, 400, "unknown field"},
	} {
		resp, b := launch(tc.hdr, tc.token, tc.body)
		if resp.StatusCode != tc.code || !strings.Contains(messageOf(b), tc.msg) {
			t.Errorf("%s: %s %s, want %d with %q", tc.name, resp.Status, b, tc.code, tc.msg)
		}
	}

	// The launch on the app host.
	resp, b = c.doHost(t, "GET", appHost(appTarget), AppLaunchPath+"?ticket="+url.QueryEscape(ticket), http.Header{"Sec-Fetch-Site": {"cross-site"}, "Sec-Fetch-Mode": {"navigate"}}, "")
	ck := appCookieOf(resp)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/dash?x=1" || ck == nil {
		t.Fatalf("launch: %s, Location %q, cookie %v: %s", resp.Status, resp.Header.Get("Location"), ck, b)
	}
	if !ck.Secure || !ck.HttpOnly || ck.SameSite != http.SameSiteLaxMode || ck.Path != "/" || ck.Domain != "" || ck.MaxAge < 3500 || ck.MaxAge > 3600 {
		t.Errorf("app cookie %+v: want Secure, HttpOnly, SameSite=Lax, Path=/, no Domain, about an hour", ck)
	}
	if resp.Header.Get("Referrer-Policy") != "no-referrer" || resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("launch headers: %v", resp.Header)
	}
	if e := sealer.m[ck.Value]; e.use != AppCookie || e.g.Label != appTarget.Label() || e.g.Target != appTarget || e.bs.AuditID != "audit-s-alice" {
		t.Errorf("the cookie seals %+v", e)
	}
	ev = auditOf(t, c, resp)
	if ev.ResponseStatus.Code != 303 || strings.Contains(ev.RequestURI, "ticket") || ev.Annotations[audit.AnnotationBrowserSession] != "audit-s-alice" ||
		ev.Annotations[audit.AnnotationAppOrigin] != "https://"+appHost(appTarget) {
		t.Errorf("launch record: %s %+v %v", ev.RequestURI, ev.ResponseStatus, ev.Annotations)
	}

	other := AppTarget{Cluster: "c1", Namespace: "apps", Service: "other", Scheme: "http", Port: "http"}
	expired := sealer.seal(AppTicketUse, "s-alice", AppGrant{Label: appTarget.Label(), Target: appTarget, Path: "/", Expires: time.Now().Add(-time.Second)})
	for _, tc := range []struct {
		name, host, ticket string
		code               int
		msg                string
	}{
		{"replayed on another app host", appHost(other), ticket, 403, "issued for another app host"},
		{"expired", appHost(appTarget), expired, 401, "expired"},
		{"forged", appHost(appTarget), "forged", 401, "not valid"},
		{"an app cookie as a ticket", appHost(appTarget), ck.Value, 401, "another use"},
		{"signed out", appHost(appTarget), sealer.seal(AppTicketUse, "s-out", AppGrant{Label: appTarget.Label(), Target: appTarget, Path: "/", Expires: time.Now().Add(time.Minute)}), 401, "signed out"},
		{"not a host of ours", "x." + appsDomain + ":8443", ticket, 404, "no app is served"},
	} {
		resp, b := c.doHost(t, "GET", tc.host, AppLaunchPath+"?ticket="+url.QueryEscape(tc.ticket), http.Header{"Accept": {"text/html"}}, "")
		if resp.StatusCode != tc.code || !strings.Contains(messageOf(b), tc.msg) || appCookieOf(resp) != nil {
			t.Errorf("%s: %s %q, cookie %v; want %d with %q and no cookie", tc.name, resp.Status, b, appCookieOf(resp), tc.code, tc.msg)
		}
		if !strings.Contains(b, `<a href="`+publicURL+`/console">`) || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
			t.Errorf("%s: the refusal page does not link to the console: %s", tc.name, b)
		}
	}
}

// TestAppsRequests: with its cookie, every path of an app host is the
// app's, through services/proxy as the user, with the app's cookies and
// never the stub's; the API server's rewriting is undone; the app's
// response loses CORS, our cookie, cookie domains and Alt-Svc. Without
// the cookie, with another host's, from another origin, on a path that
// could leave the Service, or after sign-out, nothing reaches the cluster.
func TestAppsRequests(t *testing.T) {
	c, f, sealer, svc := appsChain(t)
	host := appHost(appTarget)
	appOrigin := "https://" + host
	grant := AppGrant{Label: appTarget.Label(), Target: appTarget, Expires: time.Now().Add(time.Hour)}
	cookie := AppCookie + "=" + sealer.seal(AppCookie, "s-alice", grant)
	own := http.Header{"Cookie": {cookie + "; app=1; __Host-keyhole=s-alice"}, "Sec-Fetch-Site": {"same-origin"}, "Sec-Fetch-Mode": {"cors"},
		HeaderConsole: {"1"}, "Origin": {appOrigin}, "Authorization": {"Bearer alice-token"}}

	// Paths of the console, the API and the sign-in are the app's too.
	for _, p := range []string{"/api/data", "/clusters/c1/api/v1/namespaces", "/keyhole/v1/clusters", "/keyhole/logout", "/console"} {
		resp, b := c.doHost(t, "GET", host, p, own, "")
		var echo map[string]string
		if resp.StatusCode != 200 || json.Unmarshal([]byte(b), &echo) != nil {
			t.Fatalf("%s: %s %s", p, resp.Status, b)
		}
		if echo["path"] != p || echo["user"] != "alice" || echo["cookie"] != "app=1" || echo["origin"] != "" || echo["console"] != "" || echo["auth"] != "Bearer agent-sa-token" {
			t.Errorf("%s reached the app as %v; want its own path, as alice, with only the app's cookie, no Origin, no console header, the agent's credential", p, echo)
		}
		if resp.Header.Get("Content-Security-Policy") != "" {
			t.Errorf("%s: an app's response is sandboxed: %q", p, resp.Header.Get("Content-Security-Policy"))
		}
		ev := auditOf(t, c, resp)
		if ev.User.Username != "alice" || ev.Annotations[audit.AnnotationBrowserSession] != "audit-s-alice" ||
			ev.Annotations[audit.AnnotationAppOrigin] != appOrigin || ev.RequestURI != appTarget.Prefix()+p || ev.ObjectRef == nil ||
			ev.ObjectRef.Resource != "services" || ev.ObjectRef.Subresource != "proxy" || ev.ObjectRef.Namespace != "apps" {
			t.Errorf("%s: record %s %+v %+v %v", p, ev.RequestURI, ev.User, ev.ObjectRef, ev.Annotations)
		}
	}

	// The API server's rewriting, undone.
	for _, p := range []string{"/", "/gz"} {
		resp, b := c.doHost(t, "GET", host, p, own, "")
		if resp.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(strings.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := io.ReadAll(zr)
			b = string(raw)
		}
		for _, want := range []string{`<base href="/">`, `href="/landed?x=1"`, `src="` + appOrigin + `/logo.png"`, `href="https://elsewhere.example/x"`, `"` + appTarget.Prefix() + `/in-script"`} {
			if !strings.Contains(b, want) {
				t.Errorf("%s: %q lacks %q", p, b, want)
			}
		}
		if resp.Header.Get("X-Frame-Options") != "SAMEORIGIN" || resp.Header.Get("Cross-Origin-Opener-Policy") != "same-origin-allow-popups" {
			t.Errorf("%s: headers %v", p, resp.Header)
		}
	}
	if resp, _ := c.doHost(t, "GET", host, "/go", own, ""); resp.StatusCode != 302 || resp.Header.Get("Location") != "/landed" {
		t.Errorf("redirect: %s to %q, want 302 to /landed", resp.Status, resp.Header.Get("Location"))
	}
	resp, _ := c.doHost(t, "GET", host, "/headers", own, "")
	if got := resp.Header.Values("Set-Cookie"); len(got) != 1 || got[0] != "app=1; Path=/; HttpOnly" {
		t.Errorf("Set-Cookie %q: want only the app's own, without its Domain", got)
	}
	for _, k := range []string{"Access-Control-Allow-Origin", "Access-Control-Allow-Credentials", "Alt-Svc", "Clear-Site-Data"} {
		if v := resp.Header.Get(k); v != "" {
			t.Errorf("%s: %q reached the browser", k, v)
		}
	}

	// Refusals: nothing reaches the cluster.
	otherCookie := AppCookie + "=" + sealer.seal(AppCookie, "s-alice", AppGrant{Label: (AppTarget{Cluster: "c1", Namespace: "apps", Service: "other", Scheme: "http", Port: "http"}).Label(), Target: appTarget, Expires: time.Now().Add(time.Hour)})
	expiredCookie := AppCookie + "=" + sealer.seal(AppCookie, "s-alice", AppGrant{Label: appTarget.Label(), Target: appTarget, Expires: time.Now().Add(-time.Second)})
	ticketAsCookie := AppCookie + "=" + sealer.seal(AppTicketUse, "s-alice", grant)
	for _, tc := range []struct {
		name, method, path string
		hdr                http.Header
		code               int
		msg                string
	}{
		{"no cookie", "GET", "/", with(own, "Cookie", "app=1"), 401, "has not been opened"},
		{"cookie of another host", "GET", "/", with(own, "Cookie", otherCookie), 403, "issued for another app host"},
		{"expired cookie", "GET", "/", with(own, "Cookie", expiredCookie), 401, "expired"},
		{"a ticket as the cookie", "GET", "/", with(own, "Cookie", ticketAsCookie), 401, "another use"},
		{"the console's cookie only", "GET", "/", with(own, "Cookie", sessCookie+"=s-alice"), 401, "has not been opened"},
		{"dot dot", "GET", "/a/../../pods/x/exec", own, 400, `".." segment`},
		{"encoded dot dot", "GET", "/a/%2e%2e/%2E%2E/pods", own, 400, `".." segment`},
		{"dot", "GET", "/a/./b", own, 400, `"." segment`},
		{"encoded slash", "GET", "/a%2F..%2Fb", own, 400, "encoded /"},
		{"encoded slash alone", "GET", "/a%2fb", own, 400, "encoded /"},
		{"backslash", "GET", "/a%5C..%5Cb", own, 400, "encoded /"},
		{"cross-site fetch", "GET", "/api/data", with(own, "Sec-Fetch-Site", "cross-site", "Origin", "https://keyhole.example.test:8443"), 403, "request from another origin refused"},
		{"sibling app's fetch", "GET", "/api/data", with(own, "Sec-Fetch-Site", "same-site", "Origin", "https://x."+appsDomain), 403, "request from another origin refused"},
		{"cross-site form post", "POST", "/api/data", with(own, "Sec-Fetch-Site", "cross-site", "Sec-Fetch-Mode", "navigate", "Sec-Fetch-Dest", "document"), 403, "request from another origin refused"},
		{"cross-site frame", "GET", "/", with(own, "Sec-Fetch-Site", "cross-site", "Sec-Fetch-Mode", "navigate", "Sec-Fetch-Dest", "iframe"), 403, "request from another origin refused"},
		{"old browser, foreign Origin", "POST", "/api/data", with(own, "Sec-Fetch-Site", "", "Sec-Fetch-Mode", "", "Origin", "https://attacker.test"), 403, `Origin "https://attacker.test"`},
		{"signed out", "GET", "/", with(own, "Cookie", AppCookie+"="+sealer.seal(AppCookie, "s-out", grant)), 401, "signed out"},
		{"stale token", "GET", "/", with(own, "Cookie", AppCookie+"="+sealer.seal(AppCookie, "s-stale", grant)), 401, "ID token is not valid"},
		{"policy", "GET", "/", with(own, "Cookie", AppCookie+"="+sealer.seal(AppCookie, "s-eve", grant)), 403, `user "eve" may not reach`},
		{"host under the domain", "GET", "/", own, 404, "no app is served"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, before := svc.lastRequest()
			h := host
			if tc.name == "host under the domain" {
				h = appsDomain + ":8443"
			}
			resp, b := c.doHost(t, tc.method, h, tc.path, tc.hdr, "")
			if resp.StatusCode != tc.code || !strings.Contains(messageOf(b), tc.msg) {
				t.Fatalf("%s %s: %s %s, want %d with %q", tc.method, tc.path, resp.Status, b, tc.code, tc.msg)
			}
			if _, after := svc.lastRequest(); after != before {
				t.Error("the refused request reached the cluster")
			}
			ev := auditOf(t, c, resp)
			if int(ev.ResponseStatus.Code) != tc.code || (tc.code != 404 && ev.Annotations[audit.AnnotationAppOrigin] != appOrigin) {
				t.Errorf("record %+v %v", ev.ResponseStatus, ev.Annotations)
			}
		})
	}
	// A top-level navigation from another site (a link, an IdP sending
	// the user back) is the app's.
	nav := with(own, "Sec-Fetch-Site", "cross-site", "Sec-Fetch-Mode", "navigate", "Sec-Fetch-Dest", "document", "Origin", "")
	if resp, b := c.doHost(t, "GET", host, "/api/data", nav, ""); resp.StatusCode != 200 {
		t.Errorf("a cross-site navigation: %s %s", resp.Status, b)
	}

	// WebSockets: only the app's own origin.
	up := func(origin string) (*http.Response, string) {
		req := "GET /ws HTTP/1.1\nHost: " + host + "\nConnection: Upgrade\nUpgrade: websocket\nSec-WebSocket-Version: 13\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nCookie: " + cookie + "\n"
		if origin != "" {
			req += "Origin: " + origin + "\n"
		}
		resp, conn := c.raw(t, req+"\n")
		if resp.StatusCode != 101 {
			b, _ := io.ReadAll(resp.Body)
			return resp, string(b)
		}
		_, _ = conn.Write([]byte("hi"))
		_ = conn.CloseWrite()
		b, _ := io.ReadAll(conn)
		return resp, string(b)
	}
	if resp, b := up(appOrigin); resp.StatusCode != 101 || b != "echo:hi" {
		t.Errorf("own origin: %s %q", resp.Status, b)
	}
	for _, o := range []string{"https://keyhole.example.test:8443", "https://x." + appsDomain + ":8443", "null", ""} {
		if resp, b := up(o); resp.StatusCode != 403 || !strings.Contains(messageOf(b), "cross-origin WebSocket refused") {
			t.Errorf("Origin %q: %s %q, want 403", o, resp.Status, b)
		}
	}

	// A sign-out ends the app: open streams within the recheck interval,
	// and the next request.
	resp, conn := c.raw(t, "GET /ws HTTP/1.1\nHost: "+host+"\nConnection: Upgrade\nUpgrade: websocket\nSec-WebSocket-Version: 13\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nCookie: "+cookie+"\nOrigin: "+appOrigin+"\n\n")
	if resp.StatusCode != 101 {
		t.Fatalf("WebSocket: %s", resp.Status)
	}
	f.signOut("s-alice")
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := conn.Read(make([]byte, 10)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the app's WebSocket outlived the sign-out: read %d, %v", n, err)
	}
	if ev := auditOf(t, c, resp); ev.Annotations[audit.AnnotationEnded] != audit.EndedCredentialRevoked {
		t.Errorf("the WebSocket's record: %v", ev.Annotations)
	}
	if resp, b := c.doHost(t, "GET", host, "/", with(own, "Sec-Fetch-Mode", "navigate"), ""); resp.StatusCode != 401 || !strings.Contains(b, "<a href") {
		t.Errorf("after sign-out: %s %s", resp.Status, b)
	}
}

// TestAppPath: the path rules, alone.
func TestAppPath(t *testing.T) {
	for raw, ok := range map[string]bool{
		"/": true, "/a/b/": true, "/a%20b": true, "/a;b=c": true, "//x": true, "/a..b/c.": true, "/.well-known/x": true,
		"/..": false, "/a/..": false, "/a/./b": false, "/%2e%2e/x": false, "/%2E/x": false, "/a%2Fb": false, "/a%2fb": false,
		"/a%5cb": false, "/a%00b": false, "/a%0ab": false,
	} {
		p, err := url.PathUnescape(raw)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := appPath(raw, p); (err == nil) != ok {
			t.Errorf("appPath(%q): %v, want ok %v", raw, err, ok)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{appTarget.Prefix() + "/landed?x=1#f", "/landed?x=1#f"},
		{appTarget.Prefix(), "/"},
		{appTarget.Prefix() + "x", appTarget.Prefix() + "x"}, // another Service's name that starts alike
		{"http://10.0.0.1:6443" + appTarget.Prefix() + "/a", "https://app.example:1/a"},
		{"https://elsewhere.example/b", "https://elsewhere.example/b"},
		{"/other", "/other"},
	} {
		if got := unprefixURL(tc.in, appTarget.Prefix(), "https://app.example:1"); got != tc.want {
			t.Errorf("unprefixURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	for in, want := range map[string]string{
		"a=1; Path=/; Domain=apps.example-apps.net; Secure": "a=1; Path=/; Secure",
		"a=1; domain=.x":                   "a=1",
		"__Host-keyhole-app=x; Path=/":     "",
		"__Host-keyhole=x; Path=/":         "",
		"__Host-app=x; Path=/; Secure":     "__Host-app=x; Path=/; Secure",
		"session=abc; HttpOnly; Max-Age=5": "session=abc; HttpOnly; Max-Age=5",
		"__HOST-keyhole-app=x; Path=/":     "",
		"=__Host-keyhole-app=x; Path=/":    "",
		" __host-KEYHOLE=x":                "",
	} {
		if got := appSetCookie(in); got != want {
			t.Errorf("appSetCookie(%q) = %q, want %q", in, got, want)
		}
	}
	h := http.Header{"Cookie": {"a=1; __Host-keyhole-app=x; b=2", "__Host-keyhole=s; c=3"}}
	if got := appCookies(h); got != "a=1; b=2; c=3" {
		t.Errorf("appCookies = %q", got)
	}
}

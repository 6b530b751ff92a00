package web

import (
	"encoding/json"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-dev/keyhole/authn"
)

// TestConsoleRoutes: the console's page is served at /console and every
// path under it (deep links), signed in or not, with the console's strict
// CSP and the other page headers; it holds no inline script or style and
// loads its script and stylesheet from ConsoleAssetsPath, which serves them
// with their types and nothing else.
func TestConsoleRoutes(t *testing.T) {
	e := newEnv(t, false)
	s := e.replica(t, "r0", func(c *Config) {
		c.Kubeconfig = func(*authn.User, string, string) ([]byte, error) { return []byte("apiVersion: v1\n"), nil }
	})
	b := newBrowser(t)

	var index string
	nonceMeta := regexp.MustCompile(`<meta name="keyhole-style-nonce" content="([^"]*)">`)
	nonces := map[string]bool{}
	for _, path := range []string{"/console", "/console/", "/console/clusters/c1?q=env%3Dprod"} {
		resp := b.do(s, "GET", path, nil)
		page := body(t, resp)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s", path, resp.Status)
		}
		// Each response has its own style nonce, in the page and its CSP.
		m := nonceMeta.FindStringSubmatch(page)
		if m == nil || !regexp.MustCompile(`^[A-Za-z0-9_-]{22}$`).MatchString(m[1]) {
			t.Fatalf("GET %s: no 128-bit style nonce in the page: %q", path, m)
		}
		nonce := m[1]
		if nonces[nonce] {
			t.Errorf("GET %s: the style nonce %s was served before", path, nonce)
		}
		nonces[nonce] = true
		page = strings.Replace(page, nonce, "NONCE", 1)
		h := resp.Header
		want := map[string]string{
			"Content-Security-Policy":    ConsoleCSPWith(nonce),
			"Content-Type":               "text/html; charset=utf-8",
			"X-Frame-Options":            "DENY",
			"Referrer-Policy":            "no-referrer",
			"Cache-Control":              "no-store",
			"X-Content-Type-Options":     "nosniff",
			"Strict-Transport-Security":  "max-age=31536000",
			"Cross-Origin-Opener-Policy": "same-origin",
		}
		for k, v := range want {
			if got := h.Get(k); got != v {
				t.Errorf("GET %s: %s %q, want %q", path, k, got, v)
			}
		}
		if index == "" {
			index = page
		} else if page != index {
			t.Errorf("GET %s serves another page than /console", path)
		}
	}
	for _, d := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'"} {
		if !strings.Contains(ConsoleCSP, d) {
			t.Errorf("ConsoleCSP lacks %q", d)
		}
	}
	if !strings.Contains(ConsoleCSP, "style-src 'self' 'nonce-"+ConsoleStyleNonce+"';") {
		t.Errorf("ConsoleCSP's style-src is not 'self' and the nonce: %q", ConsoleCSP)
	}
	if strings.Contains(ConsoleCSP, "unsafe") {
		t.Errorf("ConsoleCSP allows something unsafe: %q", ConsoleCSP)
	}

	// No inline script or style: every <script> has a src and no body,
	// no style element or attribute, no on* handler, no javascript: URL.
	scripts := regexp.MustCompile(`(?is)<script\b([^>]*)>(.*?)</script>`).FindAllStringSubmatch(index, -1)
	if len(scripts) != 1 || !strings.Contains(scripts[0][1], `src="`+ConsoleAssetsPath+`console.js"`) || strings.TrimSpace(scripts[0][2]) != "" {
		t.Errorf("the page's scripts: %q, want only an external %sconsole.js", scripts, ConsoleAssetsPath)
	}
	for _, re := range []string{`(?i)<style\b`, `(?i)\sstyle\s*=`, `(?i)\son[a-z]+\s*=`, `(?i)javascript:`} {
		if regexp.MustCompile(re).MatchString(index) {
			t.Errorf("the page has inline script or style (%s):\n%s", re, index)
		}
	}
	if !strings.Contains(index, `href="`+ConsoleAssetsPath+`console.css"`) {
		t.Errorf("the page does not load %sconsole.css:\n%s", ConsoleAssetsPath, index)
	}
	if !strings.Contains(index, `<body data-kubeconfig="`+KubeconfigPath+`">`) {
		t.Errorf("the page does not offer the kubeconfig download (Config.Kubeconfig is set):\n%s", index)
	}

	// Without Config.Kubeconfig, no download.
	s2 := e.replica(t, "r1")
	if page := body(t, b.do(s2, "GET", "/console", nil)); !strings.Contains(page, `<body data-kubeconfig="">`) {
		t.Errorf("with no Config.Kubeconfig the page still offers a download:\n%s", page)
	}

	// The assets, with their types, sniffing off, and nothing else there.
	for name, ct := range map[string]string{"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8", "xterm.js": "text/javascript; charset=utf-8"} {
		resp := b.do(s, "GET", ConsoleAssetsPath+name, nil)
		got := body(t, resp)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != ct || len(got) < 100 {
			t.Errorf("GET %s: %s, Content-Type %q, %d bytes; want 200 %q", name, resp.Status, resp.Header.Get("Content-Type"), len(got), ct)
		}
		for k, v := range map[string]string{"X-Content-Type-Options": "nosniff", "Cross-Origin-Resource-Policy": "same-origin", "Cache-Control": "no-cache"} {
			if resp.Header.Get(k) != v {
				t.Errorf("GET %s: %s %q, want %q", name, k, resp.Header.Get(k), v)
			}
		}
		etag := resp.Header.Get("ETag")
		if etag == "" {
			t.Errorf("GET %s: no ETag", name)
		} else if resp := b.do(s, "GET", ConsoleAssetsPath+name, map[string]string{"If-None-Match": etag}); resp.StatusCode != http.StatusNotModified {
			t.Errorf("GET %s with its ETag: %s, want 304", name, resp.Status)
		}
	}
	for _, path := range []string{ConsoleAssetsPath, ConsoleAssetsPath + "index.html", ConsoleAssetsPath + "nope.js"} {
		if resp := b.do(s, "GET", path, nil); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %s, want 404", path, resp.Status)
		}
	}
	// Only GET and HEAD: other methods stay with the mux's catch-all.
	if resp := b.do(s, "HEAD", "/console", nil); resp.StatusCode != http.StatusOK {
		t.Errorf("HEAD /console: %s", resp.Status)
	}
	if resp := b.do(s, "POST", "/console", nil); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /console: %s, want 405 from a mux with no catch-all", resp.Status)
	}
}

// TestHomeLinksConsole: the signed-in landing page links to the console.
func TestHomeLinksConsole(t *testing.T) {
	e := newEnv(t, false)
	s := e.replica(t, "r0")
	b := newBrowser(t)
	b.signIn(s, e.idp)
	page := body(t, b.do(s, "GET", "/", map[string]string{"Sec-Fetch-Site": "none"}))
	if !strings.Contains(page, `<a href="`+ConsolePath+`">`) {
		t.Fatalf("the signed-in landing page has no link to the console:\n%s", page)
	}
}

// TestHomeThen: a console deep link survives sign-in. Signed out, the
// landing page's sign-in link carries ?then= (a path of this origin only);
// the callback moves the browser there; signed in, /?then= goes there at
// once.
func TestHomeThen(t *testing.T) {
	e := newEnv(t, false)
	s := e.replica(t, "r0")
	b := newBrowser(t)
	const deep = "/console/c/prod-eu/ns/shop/pods/web-0/log?container=app"
	page := body(t, b.do(s, "GET", "/?then="+url.QueryEscape(deep), map[string]string{"Sec-Fetch-Site": "none"}))
	want := `href="` + LoginPath + "?issuer=" + IssuerID(e.idp.srv.URL) + "&amp;then=" + url.QueryEscape(deep)
	if !strings.Contains(strings.ToLower(page), strings.ToLower(want)) { // html/template writes %2f
		t.Fatalf("the signed-out landing page's sign-in link does not carry then=; want %s in\n%s", want, page)
	}
	for _, bad := range []string{"//evil.test/x", "https://evil.test/", "/\\evil.test"} {
		page := body(t, b.do(s, "GET", "/?then="+url.QueryEscape(bad), map[string]string{"Sec-Fetch-Site": "none"}))
		if strings.Contains(page, "then=") {
			t.Errorf("then=%q is carried into the sign-in link:\n%s", bad, page)
		}
	}
	resp := b.callback(s, b.startLogin(s, e.idp, deep))
	if p := body(t, resp); resp.StatusCode != http.StatusOK || !strings.Contains(p, `url=`+html.EscapeString(deep)+`"`) {
		t.Fatalf("the callback does not move on to the deep link: %s\n%s", resp.Status, p)
	}
	resp = b.do(s, "GET", "/?then="+url.QueryEscape(deep), map[string]string{"Sec-Fetch-Site": "same-origin"})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != deep {
		t.Fatalf("signed in, /?then= answers %s to %q, want 303 to %s", resp.Status, resp.Header.Get("Location"), deep)
	}
	resp = b.do(s, "GET", "/?then="+url.QueryEscape("//evil.test/"), map[string]string{"Sec-Fetch-Site": "same-origin"})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("signed in, /?then=//evil.test/ answers %s %q", resp.Status, resp.Header.Get("Location"))
	}
}

// TestSessionInfo: SessionPath tells the console who is signed in and
// until when, only to a same-origin request with the console header, and
// answers 401 when signed out.
func TestSessionInfo(t *testing.T) {
	e := newEnv(t, false)
	s := e.replica(t, "r0")
	b := newBrowser(t)
	hdr := map[string]string{"Sec-Fetch-Site": "same-origin", "X-Keyhole-Console": "1"}
	if resp := b.do(s, "GET", SessionPath, hdr); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("signed out: %s", resp.Status)
	}
	b.signIn(s, e.idp)
	resp := b.do(s, "GET", SessionPath, hdr)
	var info SessionInfo
	if err := json.Unmarshal([]byte(body(t, resp)), &info); err != nil || resp.StatusCode != 200 {
		t.Fatalf("signed in: %s %v", resp.Status, err)
	}
	if info.User != "alice@example.com" || info.Issuer != "Test IdP" || info.LogoutPath != LogoutPath ||
		info.Expires.Before(time.Now().Add(time.Hour)) || info.IdleTimeout <= 0 {
		t.Errorf("session info: %+v", info)
	}
	if cc, csp := resp.Header.Get("Cache-Control"), resp.Header.Get("Content-Security-Policy"); cc != "no-store" || !strings.HasPrefix(csp, "sandbox") {
		t.Errorf("headers: Cache-Control %q, CSP %q", cc, csp)
	}
	for name, h := range map[string]map[string]string{
		"no console header": {"Sec-Fetch-Site": "same-origin"},
		"cross-site":        {"Sec-Fetch-Site": "cross-site", "X-Keyhole-Console": "1"},
		"foreign Origin":    {"Origin": "https://evil.test", "X-Keyhole-Console": "1"},
	} {
		resp := b.do(s, "GET", SessionPath, h)
		if p := body(t, resp); resp.StatusCode != http.StatusForbidden || strings.Contains(p, "alice") {
			t.Errorf("%s: %s %s", name, resp.Status, p)
		}
	}
}

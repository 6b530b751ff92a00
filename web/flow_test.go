package web

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyhole-dev/keyhole/audit"
	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/proxy"
)

func body(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func cookieNamed(resp *http.Response, name string) *http.Cookie {
	for _, c := range resp.Cookies() {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// A whole sign-in: the login cookie and the redirect to the IdP, the
// callback on the stub, the session cookie, and a token that the same
// authenticator as kubectl's accepts.
func TestSignIn(t *testing.T) {
	e := newEnv(t, false)
	s := e.replica(t, "r0")
	b := newBrowser(t)

	resp := b.do(s, "GET", LoginPath+"?issuer="+IssuerID(e.idp.srv.URL)+"&then="+url.QueryEscape("/clusters?x=1"), nil)
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("login: %s", resp.Status)
	}
	to, _ := url.Parse(resp.Header.Get("Location"))
	q := to.Query()
	if to.Path != "/authorize" || q.Get("code_challenge_method") != "S256" || q.Get("nonce") == "" || len(q.Get("state")) < 40 ||
		q.Get("redirect_uri") != publicURL+CallbackPath || q.Get("scope") != "openid offline_access email groups" {
		t.Fatalf("authorization URL %s", to)
	}
	lc := cookieNamed(resp, loginCookiePrefix+q.Get("state")[:16])
	if lc == nil || !lc.Secure || !lc.HttpOnly || lc.Path != "/" || lc.SameSite != http.SameSiteLaxMode || lc.MaxAge != 600 || lc.Domain != "" {
		t.Fatalf("login cookie %+v", lc)
	}
	for _, secret := range []string{q.Get("state"), q.Get("nonce")} {
		if strings.Contains(lc.Value, secret) {
			t.Fatal("the login cookie shows its state or nonce")
		}
	}

	// The IdP answers; the browser comes back cross-site.
	client := e.idp.srv.Client()
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	ar, err := client.Get(to.String())
	if err != nil {
		t.Fatal(err)
	}
	ar.Body.Close()
	back, _ := url.Parse(ar.Header.Get("Location"))
	resp = b.callback(s, back)
	page := body(t, resp)
	if resp.StatusCode != http.StatusOK || !strings.Contains(page, `<meta http-equiv="refresh" content="0;url=/clusters?x=1">`) {
		t.Fatalf("callback: %s\n%s", resp.Status, page)
	}
	if resp.Header.Get("Content-Security-Policy") != PageCSP || resp.Header.Get("Referrer-Policy") != "no-referrer" || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("callback headers %v", resp.Header)
	}
	if c := cookieNamed(resp, lc.Name); c == nil || c.MaxAge >= 0 {
		t.Fatal("the login cookie was not cleared")
	}
	sc := cookieNamed(resp, SessionCookie)
	if sc == nil || !sc.Secure || !sc.HttpOnly || sc.Path != "/" || sc.SameSite != http.SameSiteStrictMode || sc.Domain != "" || sc.MaxAge != 0 {
		t.Fatalf("session cookie %+v", sc)
	}
	if len(b.cookies) != 1 {
		t.Fatalf("cookies left: %v", b.cookies)
	}

	// The record names the user and holds no token in the clear.
	_, rec := e.store.only(t)
	if rec.User != "alice@example.com" || rec.Issuer != IssuerID(e.idp.srv.URL) || !rec.Expires.Equal(time.Unix(e.clock.Now().Add(12*time.Hour).Unix(), 0)) {
		t.Fatalf("record %+v", rec)
	}
	token, code := b.current(s, nil)
	if code != http.StatusOK {
		t.Fatalf("current: %d", code)
	}
	if strings.Contains(string(rec.Sealed), token[:20]) || strings.Contains(sc.Value, token[:20]) {
		t.Fatal("a token is stored in the clear")
	}
	u, err := e.auth.Authenticate(context.Background(), token)
	if err != nil || u.Name != "alice@example.com" || !slices.Equal(u.Groups, []string{"dev", "ops"}) {
		t.Fatalf("the session's token: %v %v", u, err)
	}
	evs := e.audit.events(audit.BrowserEventSignIn)
	if len(evs) != 1 || evs[0].User.Username != "alice@example.com" || evs[0].Annotations[audit.AnnotationBrowserSession] == "" ||
		strings.Contains(evs[0].RequestURI, "code=") {
		t.Fatalf("sign-in events %+v", evs)
	}
	if r, _ := e.idp.counts(); r != 0 {
		t.Fatalf("%d refresh redemptions at sign-in", r)
	}
}

// Every way a callback can be wrong is a 400 page, an audited refusal,
// and no session.
func TestCallbackRefusals(t *testing.T) {
	cases := []struct {
		name   string
		idp    func(p *fakeIdP)
		before func(b *browser, u *url.URL, e *testEnv) *url.URL
		want   string
	}{
		{name: "state differs", want: "does not match", before: func(b *browser, u *url.URL, e *testEnv) *url.URL {
			q := u.Query()
			st := q.Get("state")
			q.Set("state", st[:16]+strings.Repeat("A", len(st)-16)) // same cookie, other state
			u.RawQuery = q.Encode()
			return u
		}},
		{name: "no login cookie", want: "No sign-in was started", before: func(b *browser, u *url.URL, e *testEnv) *url.URL {
			clear(b.cookies)
			return u
		}},
		{name: "login cookie expired", want: "longer than 10 minutes", before: func(b *browser, u *url.URL, e *testEnv) *url.URL {
			e.clock.Add(11 * time.Minute)
			return u
		}},
		{name: "login cookie forged", want: "does not match", before: func(b *browser, u *url.URL, e *testEnv) *url.URL {
			for _, c := range b.cookies {
				c.Value = c.Value[:len(c.Value)-4] + "AAAA"
			}
			return u
		}},
		{name: "IdP error", idp: func(p *fakeIdP) { p.authError = "access_denied" }, want: "refused the sign-in: access_denied"},
		{name: "nonce", idp: func(p *fakeIdP) { p.nonce = "another" }, want: "nonce differs"},
		{name: "audience", idp: func(p *fakeIdP) { p.aud = []string{"keyhole"} }, want: "not issued to client &#34;keyhole-web&#34;"},
		{name: "token not accepted", idp: func(p *fakeIdP) { p.email = "system:admin" }, want: "The ID token is not accepted"},
		{name: "code replayed", want: "did not redeem the sign-in code (invalid_grant)", before: func(b *browser, u *url.URL, e *testEnv) *url.URL {
			e.idp.set(func(p *fakeIdP) { clear(p.codes) })
			return u
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, false)
			s := e.replica(t, "r0")
			if tc.idp != nil {
				e.idp.set(tc.idp)
			}
			b := newBrowser(t)
			u := b.startLogin(s, e.idp, "/")
			if tc.before != nil {
				u = tc.before(b, u, e)
			}
			resp := b.callback(s, u)
			page := body(t, resp)
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(page, tc.want) {
				t.Fatalf("%s, want 400 with %q:\n%s", resp.Status, tc.want, page)
			}
			if cookieNamed(resp, SessionCookie) != nil || e.store.count() != 0 {
				t.Fatal("a refused sign-in made a session")
			}
			if evs := e.audit.events(audit.BrowserEventSignInRefused); len(evs) != 1 || evs[0].ResponseStatus.Code != 400 {
				t.Fatalf("refusal events %v", evs)
			}
		})
	}
}

// Two tabs sign in at once: each has its own login cookie, and both
// complete, in either order.
func TestParallelSignIns(t *testing.T) {
	e := newEnv(t, false)
	s := e.replica(t, "r0")
	other := e.replica(t, "r1") // the callbacks may land on another replica
	b := newBrowser(t)
	first := b.startLogin(s, e.idp, "/one")
	second := b.startLogin(s, e.idp, "/two")
	if n := len(b.cookies); n != 2 {
		t.Fatalf("%d login cookies, want 2", n)
	}
	resp := b.callback(other, second)
	if p := body(t, resp); resp.StatusCode != 200 || !strings.Contains(p, "url=/two") {
		t.Fatalf("second: %s %s", resp.Status, p)
	}
	resp = b.callback(s, first)
	if p := body(t, resp); resp.StatusCode != 200 || !strings.Contains(p, "url=/one") {
		t.Fatalf("first: %s %s", resp.Status, p)
	}
	if n := e.store.count(); n != 2 {
		t.Fatalf("%d records, want 2", n)
	}
}

// A user in hundreds of groups: the ID token is ~10 KiB, the cookie stays
// small.
func TestManyGroupsSmallCookie(t *testing.T) {
	e := newEnv(t, false)
	var groups []string
	for i := range 300 {
		groups = append(groups, fmt.Sprintf("team-%03d-with-a-longish-name", i))
	}
	e.idp.set(func(p *fakeIdP) { p.groups = groups })
	s := e.replica(t, "r0")
	b := newBrowser(t)
	b.signIn(s, e.idp)
	c := b.cookies[SessionCookie]
	if n := len(c.Name) + 1 + len(c.Value); n >= 400 {
		t.Fatalf("session cookie is %d bytes", n)
	}
	token, code := b.current(s, nil)
	if code != 200 || len(token) < 8<<10 {
		t.Fatalf("token of %d bytes (%d)", len(token), code)
	}
	u, err := e.auth.Authenticate(context.Background(), token)
	if err != nil || len(u.Groups) != 300 {
		t.Fatalf("%v %v", u, err)
	}
}

// The ID token is due; 50 requests over two replicas sharing a store ask
// for it at once: the rotating refresh token is redeemed once, and every
// request gets the new token.
func TestConcurrentRefreshAcrossReplicas(t *testing.T) {
	e := newEnv(t, false)
	a, bRep := e.replica(t, "a"), e.replica(t, "b")
	b := newBrowser(t)
	b.signIn(a, e.idp)
	e.store.makeDue(t, e.clock.Now())
	name, rec := e.store.only(t)
	old, err := openRecordTokens(&handle{c: mustOpen(t, a, b), name: name}, rec)
	if err != nil {
		t.Fatal(err)
	}
	first := old.ID // still valid: a failed refresh would fall back to it
	if e.clock.Now().Before(rec.IDTokenExpires.Add(-refreshMargin)) {
		t.Fatal("the token is not due")
	}

	const n = 50
	tokens := make([]string, n)
	codes := make([]int, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		s := a
		if i%2 == 1 {
			s = bRep
		}
		var w http.ResponseWriter
		if i%3 == 0 {
			w = httptest.NewRecorder()
		}
		wg.Go(func() {
			<-start
			tokens[i], codes[i] = b.current(s, w)
		})
	}
	close(start)
	wg.Wait()
	redemptions, reuses := e.idp.counts()
	if redemptions != 1 || reuses != 0 {
		t.Fatalf("%d redemptions, %d refused reuses; want 1 and 0", redemptions, reuses)
	}
	for i := range n {
		if codes[i] != 200 || tokens[i] != tokens[0] || tokens[i] == first {
			t.Fatalf("request %d: %d, new token %v", i, codes[i], tokens[i] != first)
		}
	}
	_, rec = e.store.only(t)
	if rec.Lease != nil || !e.clock.Now().Before(rec.IDTokenExpires.Add(-refreshMargin)) {
		t.Fatalf("after the refresh: lease %v, token expires %v", rec.Lease, rec.IDTokenExpires)
	}
}

// Short-lived ID tokens are refreshed when a third of their life is left,
// not on every request.
func TestShortLivedTokens(t *testing.T) {
	e := newEnv(t, false)
	e.idp.set(func(p *fakeIdP) { p.ttl = 45 * time.Second })
	s := e.replica(t, "r0")
	b := newBrowser(t)
	b.signIn(s, e.idp)
	first, code := b.current(s, nil)
	if r, _ := e.idp.counts(); code != 200 || r != 0 {
		t.Fatalf("a fresh 45 s token: %d, %d redemptions", code, r)
	}
	e.clock.Add(31 * time.Second) // 14 s left: due
	second, code := b.current(s, nil)
	if r, _ := e.idp.counts(); code != 200 || r != 1 || second == first {
		t.Fatalf("a 45 s token with 14 s left: %d, %d redemptions", code, r)
	}
}

// The IdP refuses the refresh token: the session ends with a 401, the
// cookie is cleared, the record is gone, and it is audited.
func mustOpen(t *testing.T, s *Sessions, b *browser) sessionCookie {
	t.Helper()
	h, why := s.openSession(context.Background(), b.cookies[SessionCookie].Value)
	if why != "" {
		t.Fatal(why)
	}
	return h.c
}

func TestRefreshFailedEndsSession(t *testing.T) {
	e := newEnv(t, false)
	s := e.replica(t, "r0")
	b := newBrowser(t)
	b.signIn(s, e.idp)
	e.store.makeDue(t, e.clock.Now())
	e.idp.set(func(p *fakeIdP) { p.failRefresh = true })
	w := httptest.NewRecorder()
	if _, code := b.current(s, w); code != http.StatusUnauthorized {
		t.Fatalf("got %d, want 401", code)
	}
	if c := cookieNamed(w.Result(), SessionCookie); c == nil || c.MaxAge >= 0 {
		t.Fatal("the cookie was not cleared")
	}
	if e.store.count() != 0 {
		t.Fatal("the record outlived a failed refresh")
	}
	evs := e.audit.events(audit.BrowserEventRefreshFailed)
	if len(evs) != 1 || evs[0].User.Username != "alice@example.com" || !strings.Contains(evs[0].ResponseStatus.Message, "invalid_grant") {
		t.Fatalf("refresh-failed events %+v", evs)
	}
	// And it stays ended, on every replica.
	if _, code := b.current(e.replica(t, "r1"), nil); code != http.StatusUnauthorized {
		t.Fatalf("other replica: %d", code)
	}
}

// Sign-out on one replica: the record is gone, so the other replica
// refuses the cookie; the refresh token is revoked; the browser goes on to
// the IdP's end-session endpoint, with no token in the URL.
func TestLogoutEndsSessionEverywhere(t *testing.T) {
	e := newEnv(t, true)
	a, other := e.replica(t, "a"), e.replica(t, "b")
	b := newBrowser(t)
	b.signIn(a, e.idp)
	if _, code := b.current(other, nil); code != 200 {
		t.Fatalf("before sign-out, the other replica: %d", code)
	}
	resp := b.do(a, "POST", LogoutPath, map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": testOrigin})
	page := body(t, resp)
	if resp.StatusCode != 200 || b.cookies[SessionCookie] != nil {
		t.Fatalf("logout: %s, cookies %v\n%s", resp.Status, b.cookies, page)
	}
	want := e.idp.srv.URL + "/logout?client_id=keyhole-web&amp;post_logout_redirect_uri=" + url.QueryEscape(publicURL+"/")
	if !strings.Contains(page, `content="0;url=`+want+`"`) || strings.Contains(page, "id_token_hint") {
		t.Fatalf("logout page:\n%s", page)
	}
	if e.store.count() != 0 {
		t.Fatal("record kept")
	}
	e.idp.mu.Lock()
	revoked := slices.Clone(e.idp.revoked)
	e.idp.mu.Unlock()
	if len(revoked) != 1 || revoked[0] == "" {
		t.Fatalf("revoked %q", revoked)
	}
	if evs := e.audit.events(audit.BrowserEventSignOut); len(evs) != 1 || evs[0].ResponseStatus.Code != 200 || evs[0].User.Username != "alice@example.com" {
		t.Fatalf("sign-out events %+v", evs)
	}
}

func TestLogoutSignedOutCopyRefused(t *testing.T) {
	e := newEnv(t, false)
	a, other := e.replica(t, "a"), e.replica(t, "b")
	b := newBrowser(t)
	b.signIn(a, e.idp)
	kept := *b.cookies[SessionCookie]
	// The landing page's form, as Chromium posts it: the page's
	// Referrer-Policy: no-referrer makes its Origin "null".
	resp := b.do(a, "POST", LogoutPath, map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": "null"})
	if p := body(t, resp); resp.StatusCode != 200 || !strings.Contains(p, `content="0;url=/"`) {
		t.Fatalf("logout without end-session endpoint: %s\n%s", resp.Status, p)
	}
	b.cookies[SessionCookie] = &kept // a copy of the cookie taken before
	for _, s := range []*Sessions{a, other} {
		if _, code := b.current(s, nil); code != http.StatusUnauthorized {
			t.Fatalf("a signed-out cookie: %d", code)
		}
	}
}

// Sign-out from another origin (a form on another site, a sibling
// subdomain) is refused and audited; the session stands.
func TestLogoutCrossOriginRefused(t *testing.T) {
	e := newEnv(t, true)
	s := e.replica(t, "a")
	b := newBrowser(t)
	b.signIn(s, e.idp)
	for _, hdr := range []map[string]string{
		{"Sec-Fetch-Site": "cross-site", "Origin": "https://attacker.test"},
		{"Sec-Fetch-Site": "same-site", "Origin": "https://evil.example.test"},
		{"Origin": "https://evil.example.test"},
		{"Sec-Fetch-Site": "cross-site", "Origin": "null"},
		{},
	} {
		resp := b.do(s, "POST", LogoutPath, hdr)
		if resp.StatusCode != http.StatusForbidden || b.cookies[SessionCookie] == nil {
			t.Fatalf("%v: %s", hdr, resp.Status)
		}
	}
	if e.store.count() != 1 {
		t.Fatal("a cross-origin sign-out ended the session")
	}
	evs := e.audit.events(audit.BrowserEventSignOut)
	if len(evs) != 5 || evs[0].ResponseStatus.Code != 403 || evs[0].Annotations[audit.AnnotationBrowserSession] == "" {
		t.Fatalf("refusals audited: %+v", evs)
	}
	if _, code := b.current(s, nil); code != 200 {
		t.Fatalf("the session after refused sign-outs: %d", code)
	}
}

// Open is local: a forged, expired or idle cookie is a 401 and cleared.
func TestOpenRefusesBadCookies(t *testing.T) {
	e := newEnv(t, false)
	s := e.replica(t, "a")
	b := newBrowser(t)
	b.signIn(s, e.idp)
	good := b.cookies[SessionCookie].Value
	try := func(v string) int {
		r := httptest.NewRequest("GET", publicURL+"/clusters/c1/api", nil)
		r.AddCookie(&http.Cookie{Name: SessionCookie, Value: v})
		w := httptest.NewRecorder()
		_, found, st := s.Open(w, r)
		if !found {
			t.Fatal("cookie not found")
		}
		if st == nil {
			return 200
		}
		if c := cookieNamed(w.Result(), SessionCookie); c == nil || c.MaxAge >= 0 {
			t.Fatal("a refused cookie was not cleared")
		}
		return int(st.ErrStatus.Code)
	}
	if code := try(good); code != 200 {
		t.Fatalf("good cookie: %d", code)
	}
	if code := try(good[:len(good)-3] + "abc"); code != 401 {
		t.Fatalf("tampered: %d", code)
	}
	if code := try("x"); code != 401 {
		t.Fatalf("garbage: %d", code)
	}
	e.clock.Add(61 * time.Minute)
	if code := try(good); code != 401 {
		t.Fatalf("idle: %d", code)
	}
	if _, found, _ := s.Open(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil)); found {
		t.Fatal("no cookie, yet found")
	}
}

// A cookie older than seenEvery is re-sealed on a response (not on an
// upgrade), which keeps a used session from going idle.
func TestCurrentRenewsCookie(t *testing.T) {
	e := newEnv(t, false)
	s := e.replica(t, "a")
	b := newBrowser(t)
	b.signIn(s, e.idp)
	old := b.cookies[SessionCookie].Value
	e.clock.Add(6 * time.Minute)
	w := httptest.NewRecorder()
	if _, code := b.current(s, w); code != 200 {
		t.Fatal(code)
	}
	c := cookieNamed(w.Result(), SessionCookie)
	if c == nil || c.Value == old || c.SameSite != http.SameSiteStrictMode {
		t.Fatalf("not renewed: %+v", c)
	}
	h, why := s.openSession(context.Background(), c.Value)
	if why != "" || h.c.Seen != e.clock.Now().Unix() {
		t.Fatalf("renewed cookie: %q %+v", why, h)
	}
	// An upgrade gets no Set-Cookie.
	r := b.request("GET", "/clusters/c1/api/v1/pods/p/exec")
	r.Header.Set("Connection", "Upgrade")
	bs, _, _ := s.Open(httptest.NewRecorder(), r)
	w = httptest.NewRecorder()
	if _, st := s.Current(context.Background(), w, bs); st != nil || len(w.Result().Cookies()) != 0 {
		t.Fatalf("upgrade: %v %v", st, w.Result().Cookies())
	}
}

// The landing page: signed out it offers sign-in and says nothing of
// clusters; signed in it shows the user, groups, clusters and the
// kubeconfig; a page another site opens is the signed-out one.
func TestLandingPage(t *testing.T) {
	e := newEnv(t, false)
	var groups []string
	for i := range 25 {
		groups = append(groups, fmt.Sprintf("g%02d", i))
	}
	e.idp.set(func(p *fakeIdP) { p.groups = groups })
	var gotToken string
	s := e.replica(t, "a", func(c *Config) {
		c.Clusters = func(u *authn.User, token string) []proxy.ClusterStatus {
			gotToken = token
			return []proxy.ClusterStatus{{ID: "prod-eu", Ready: true}, {ID: "dev-1"}}
		}
		c.Kubeconfig = func(u *authn.User, token, issuer string) ([]byte, error) {
			return []byte("apiVersion: v1\nkind: Config\n# " + u.Name + " " + issuer + "\n"), nil
		}
	})
	b := newBrowser(t)
	resp := b.do(s, "GET", "/", map[string]string{"Sec-Fetch-Site": "none"})
	page := body(t, resp)
	if resp.StatusCode != 200 || !strings.Contains(page, "Sign in with Test IdP") || strings.Contains(page, "prod-eu") || strings.Contains(page, "<script") {
		t.Fatalf("signed out: %s\n%s", resp.Status, page)
	}
	for k, v := range map[string]string{"Content-Security-Policy": PageCSP, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
		"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Strict-Transport-Security": "max-age=31536000"} {
		if got := resp.Header.Get(k); got != v {
			t.Errorf("%s: %q, want %q", k, got, v)
		}
	}
	b.signIn(s, e.idp)
	resp = b.do(s, "GET", "/", map[string]string{"Sec-Fetch-Site": "same-origin"})
	page = body(t, resp)
	for _, want := range []string{"alice@example.com", "g19", "and 5 more", "prod-eu", "dev-1", "ready", "not ready",
		`action="/keyhole/logout"`, KubeconfigPath + "?issuer=" + IssuerID(e.idp.srv.URL), "stub kubeconfig --oidc --issuer " + e.idp.srv.URL} {
		if !strings.Contains(page, want) {
			t.Errorf("signed-in page lacks %q", want)
		}
	}
	if strings.Contains(page, "g20") || strings.Contains(page, "<script") || strings.Contains(page, "style=") {
		t.Errorf("signed-in page:\n%s", page)
	}
	if u, err := e.auth.Authenticate(context.Background(), gotToken); err != nil || u.Name != "alice@example.com" {
		t.Fatalf("Clusters got a token that does not authenticate: %v", err)
	}
	for _, sfs := range []string{"cross-site", "same-site"} {
		resp = b.do(s, "GET", "/", map[string]string{"Sec-Fetch-Site": sfs})
		if p := body(t, resp); strings.Contains(p, "prod-eu") || strings.Contains(p, "alice") {
			t.Fatalf("%s page shows the session", sfs)
		}
		if resp = b.do(s, "GET", KubeconfigPath, map[string]string{"Sec-Fetch-Site": sfs}); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("%s kubeconfig: %s", sfs, resp.Status)
		}
	}
	resp = b.do(s, "GET", KubeconfigPath+"?issuer="+IssuerID(e.idp.srv.URL), map[string]string{"Sec-Fetch-Site": "same-origin"})
	if p := body(t, resp); resp.StatusCode != 200 || !strings.Contains(p, "alice@example.com "+e.idp.srv.URL) ||
		!strings.Contains(resp.Header.Get("Content-Disposition"), "attachment") {
		t.Fatalf("kubeconfig: %s %s", resp.Status, p)
	}
	resp = b.do(s, "GET", AssetsPath+"keyhole.css", nil)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/css") {
		t.Fatalf("stylesheet: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
}

func TestSafeThen(t *testing.T) {
	for in, want := range map[string]string{
		"/": "/", "": "/", "/a/b?c=d": "/a/b?c=d", "//evil.test/x": "/", "/\\evil.test": "/", "https://evil.test/": "/",
		"javascript:alert(1)": "/", "/a\r\nb": "/", strings.Repeat("/a", 600): "/", `/a"b`: "/a%22b",
	} {
		if got := safeThen(in); got != want {
			t.Errorf("safeThen(%q) = %q, want %q", in, got, want)
		}
	}
}

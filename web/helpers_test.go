package web

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/coreos/go-oidc/v3/oidc/oidctest"
	"go.uber.org/goleak"
	apiserverv1beta1 "k8s.io/apiserver/pkg/apis/apiserver/v1beta1"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"

	"github.com/keyhole-dev/keyhole/audit"
	"github.com/keyhole-dev/keyhole/authn"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// memStore is a Store in memory with the semantics of the real ones:
// versions checked on update, copies in and out, and a key list whose
// non-fresh read is a cache refreshed only by a fresh one.
type memStore struct {
	mu         sync.Mutex
	recs       map[string]*Record
	versions   map[string]int
	keys       []Key // the latest
	cached     []Key // what a non-fresh read returns
	freshReads int
	updates    int
}

func newMemStore(keys ...Key) *memStore {
	return &memStore{recs: map[string]*Record{}, versions: map[string]int{}, keys: keys, cached: slices.Clone(keys)}
}

func copyRecord(r *Record) *Record {
	c := *r
	c.Sealed = slices.Clone(r.Sealed)
	if r.Lease != nil {
		l := *r.Lease
		c.Lease = &l
	}
	return &c
}

func (m *memStore) GetSession(_ context.Context, name string, _ bool) (*Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.recs[name]
	if r == nil {
		return nil, nil
	}
	c := copyRecord(r)
	c.Version = strconv.Itoa(m.versions[name])
	return c, nil
}

func (m *memStore) CreateSession(_ context.Context, name string, r *Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.recs[name] != nil {
		return fmt.Errorf("record %s exists", name)
	}
	m.recs[name] = copyRecord(r)
	m.versions[name]++
	return nil
}

func (m *memStore) UpdateSession(_ context.Context, name string, r *Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.recs[name] == nil || r.Version != strconv.Itoa(m.versions[name]) {
		return ErrConflict
	}
	m.recs[name] = copyRecord(r)
	m.versions[name]++
	m.updates++
	return nil
}

func (m *memStore) DeleteSession(_ context.Context, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.recs, name)
	return nil
}

func (m *memStore) SessionKeys(_ context.Context, fresh bool) ([]Key, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if fresh {
		m.freshReads++
		m.cached = slices.Clone(m.keys)
	}
	return slices.Clone(m.cached), nil
}

func (m *memStore) addKey(k Key) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.keys = append(m.keys, k)
}

func (m *memStore) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.recs)
}

func (m *memStore) only(t *testing.T) (string, *Record) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.recs) != 1 {
		t.Fatalf("%d records, want 1", len(m.recs))
	}
	for name, r := range m.recs {
		return name, copyRecord(r)
	}
	return "", nil
}

// makeDue moves the only record's ID token expiry to 5 s from now, as if
// it had almost run out: the next Current refreshes it.
func (m *memStore) makeDue(t *testing.T, now time.Time) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.recs) != 1 {
		t.Fatalf("%d records, want 1", len(m.recs))
	}
	for name, r := range m.recs {
		r.IDTokenExpires = now.Add(5 * time.Second)
		m.versions[name]++
	}
}

func testKey(id string, activeFrom time.Time) Key {
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	return Key{ID: id, Created: activeFrom, ActiveFrom: activeFrom, Secret: secret}
}

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// auditLog is an audit.Sink in memory.
type auditLog struct {
	mu  sync.Mutex
	evs []*auditv1.Event
}

func (a *auditLog) Write(ev *auditv1.Event) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.evs = append(a.evs, ev)
	return nil
}

func (a *auditLog) Close() error { return nil }

// events are the browser Events of kind written so far.
func (a *auditLog) events(kind string) []*auditv1.Event {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []*auditv1.Event
	for _, ev := range a.evs {
		if ev.Annotations[audit.AnnotationBrowserEvent] == kind {
			out = append(out, ev)
		}
	}
	return out
}

// fakeIdP is an OIDC provider with the behaviour that matters here:
// discovery and keys (oidctest), /authorize that answers at once (the user
// is always signed in), /token that checks PKCE and rotates refresh
// tokens, refusing any reuse as Dex does, /revoke, and optionally an
// end-session endpoint.
type fakeIdP struct {
	t    testing.TB
	srv  *httptest.Server
	key  *rsa.PrivateKey
	keys *oidctest.Server

	mu          sync.Mutex
	codes       map[string]authRequest
	refresh     map[string]bool // refresh token → redeemed
	redemptions int             // refresh tokens redeemed
	reuses      int             // refused redemptions of a used token
	revoked     []string
	ttl         time.Duration
	email       string
	groups      []string
	authError   string   // /authorize answers this error
	nonce       string   // if set, ID tokens carry this nonce instead
	aud         []string // if set, ID tokens carry this audience
	failRefresh bool     // refresh grants answer invalid_grant
}

type authRequest struct {
	clientID, redirect, nonce, challenge string
}

const (
	webClient  = "keyhole-web"
	publicURL  = "https://keyhole.example.test"
	testOrigin = publicURL
)

func newIdP(t testing.TB, withLogoutEndpoints bool) *fakeIdP {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p := &fakeIdP{t: t, key: key, codes: map[string]authRequest{}, refresh: map[string]bool{}, ttl: time.Hour,
		email: "alice@example.com", groups: []string{"dev", "ops"},
		keys: &oidctest.Server{PublicKeys: []oidctest.PublicKey{{PublicKey: key.Public(), KeyID: "k1", Algorithm: oidc.RS256}}}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		d := map[string]any{"issuer": p.srv.URL, "authorization_endpoint": p.srv.URL + "/authorize", "token_endpoint": p.srv.URL + "/token",
			"jwks_uri": p.srv.URL + "/keys", "response_types_supported": []string{"code"}, "subject_types_supported": []string{"public"},
			"id_token_signing_alg_values_supported": []string{"RS256"}}
		if withLogoutEndpoints {
			d["revocation_endpoint"] = p.srv.URL + "/revoke"
			d["end_session_endpoint"] = p.srv.URL + "/logout"
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(d)
	})
	mux.Handle("GET /keys", p.keys)
	mux.HandleFunc("GET /authorize", p.authorize)
	mux.HandleFunc("POST /token", p.token)
	mux.HandleFunc("POST /revoke", func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.revoked = append(p.revoked, r.FormValue("token"))
		p.mu.Unlock()
	})
	p.srv = httptest.NewTLSServer(mux)
	p.keys.SetIssuer(p.srv.URL)
	t.Cleanup(p.srv.Close)
	return p
}

func (p *fakeIdP) caPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw})
}

func (p *fakeIdP) login() Login {
	return Login{ID: IssuerID(p.srv.URL), Name: "Test IdP", IssuerURL: p.srv.URL, ClientID: webClient,
		Scopes: []string{"openid", "offline_access", "email", "groups"}, CAPEM: p.caPEM()}
}

// authenticator is the stub's: authn's JWT authenticator trusting p.
func (p *fakeIdP) authenticator(t testing.TB) *authn.Chain {
	none := ""
	cfg := authn.JWTAuthenticatorConfig{Issuer: authn.Issuer{Issuer: apiserverv1beta1.Issuer{URL: p.srv.URL,
		Audiences: []string{"keyhole", webClient}, AudienceMatchPolicy: apiserverv1beta1.AudienceMatchPolicyMatchAny,
		CertificateAuthority: string(p.caPEM())}}}
	cfg.ClaimMappings = apiserverv1beta1.ClaimMappings{Username: apiserverv1beta1.PrefixedClaimOrExpression{Claim: "email", Prefix: &none},
		Groups: apiserverv1beta1.PrefixedClaimOrExpression{Claim: "groups", Prefix: &none}}
	j, err := authn.NewJWT([]authn.JWTAuthenticatorConfig{cfg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(j.Close)
	return &authn.Chain{JWT: j}
}

func (p *fakeIdP) set(f func(p *fakeIdP)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p)
}

func (p *fakeIdP) counts() (redemptions, reuses int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.redemptions, p.reuses
}

func (p *fakeIdP) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("response_type") != "code" || q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" || q.Get("client_id") != webClient {
		http.Error(w, "bad authorization request: "+r.URL.RawQuery, http.StatusBadRequest)
		return
	}
	back, _ := url.Parse(q.Get("redirect_uri"))
	bq := url.Values{"state": {q.Get("state")}}
	p.mu.Lock()
	if p.authError != "" {
		bq.Set("error", p.authError)
	} else {
		code := randomString(16)
		p.codes[code] = authRequest{clientID: q.Get("client_id"), redirect: q.Get("redirect_uri"), nonce: q.Get("nonce"), challenge: q.Get("code_challenge")}
		bq.Set("code", code)
	}
	p.mu.Unlock()
	back.RawQuery = bq.Encode()
	http.Redirect(w, r, back.String(), http.StatusFound)
}

func tokenError(w http.ResponseWriter, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code})
}

func (p *fakeIdP) token(w http.ResponseWriter, r *http.Request) {
	if r.FormValue("client_id") != webClient {
		tokenError(w, "invalid_client")
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	nonce := ""
	switch r.FormValue("grant_type") {
	case "authorization_code":
		ar, ok := p.codes[r.FormValue("code")]
		delete(p.codes, r.FormValue("code"))
		sum := sha256.Sum256([]byte(r.FormValue("code_verifier")))
		if !ok || ar.redirect != r.FormValue("redirect_uri") || base64.RawURLEncoding.EncodeToString(sum[:]) != ar.challenge {
			tokenError(w, "invalid_grant")
			return
		}
		nonce = ar.nonce
	case "refresh_token":
		used, known := p.refresh[r.FormValue("refresh_token")]
		if !known || used || p.failRefresh {
			if used {
				p.reuses++
			}
			tokenError(w, "invalid_grant")
			return
		}
		p.refresh[r.FormValue("refresh_token")] = true
		p.redemptions++
	default:
		tokenError(w, "unsupported_grant_type")
		return
	}
	if p.nonce != "" {
		nonce = p.nonce
	}
	rt := randomString(16)
	p.refresh[rt] = false
	aud := []string{webClient}
	if p.aud != nil {
		aud = p.aud
	}
	claims := map[string]any{"iss": p.srv.URL, "aud": aud, "sub": "alice", "email": p.email, "email_verified": true,
		"groups": p.groups, "exp": time.Now().Add(p.ttl).Unix(), "iat": time.Now().Unix()}
	if nonce != "" {
		claims["nonce"] = nonce
	}
	b, _ := json.Marshal(claims)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"access_token": randomString(8), "token_type": "Bearer", "expires_in": int(p.ttl.Seconds()),
		"refresh_token": rt, "id_token": oidctest.SignIDToken(p.key, "k1", oidc.RS256, string(b))})
}

// testEnv is a stub's sessions (one or more replicas sharing a store)
// against a fake IdP.
type testEnv struct {
	idp   *fakeIdP
	store *memStore
	clock *clock
	audit *auditLog
	auth  *authn.Chain
}

func newEnv(t *testing.T, withLogoutEndpoints bool) *testEnv {
	idp := newIdP(t, withLogoutEndpoints)
	c := newClock()
	return &testEnv{idp: idp, store: newMemStore(testKey("0a0b0c0d", c.Now().Add(-time.Hour))), clock: c, audit: &auditLog{}, auth: idp.authenticator(t)}
}

// replica is one stub's Sessions over the env's store.
func (e *testEnv) replica(t *testing.T, name string, edit ...func(*Config)) *Sessions {
	cfg := Config{PublicURL: publicURL, ReplicaID: name, MaxAge: 12 * time.Hour, IdleTimeout: time.Hour,
		Logins: StaticLogins{e.idp.login()}, Auth: e.auth, Store: e.store, Audit: e.audit, Now: e.clock.Now}
	for _, f := range edit {
		f(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.pollEvery = time.Millisecond
	t.Cleanup(s.Close)
	return s
}

// browser keeps cookies as a browser would for the stub's origin and
// sends requests straight to a Sessions' routes.
type browser struct {
	t       *testing.T
	cookies map[string]*http.Cookie
}

func newBrowser(t *testing.T) *browser { return &browser{t: t, cookies: map[string]*http.Cookie{}} }

// do sends a request to s with the browser's cookies and the given
// headers, and keeps the cookies of the answer.
func (b *browser) do(s *Sessions, method, target string, hdr map[string]string) *http.Response {
	b.t.Helper()
	mux := http.NewServeMux()
	s.Routes(mux)
	r := httptest.NewRequest(method, publicURL+target, nil)
	for _, c := range b.cookies {
		r.AddCookie(&http.Cookie{Name: c.Name, Value: c.Value})
	}
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, r)
	resp := rec.Result()
	b.keep(resp)
	return resp
}

func (b *browser) keep(resp *http.Response) {
	for _, c := range resp.Cookies() {
		if c.MaxAge < 0 {
			delete(b.cookies, c.Name)
		} else {
			b.cookies[c.Name] = c
		}
	}
}

// request is a request to the stub carrying the browser's cookies.
func (b *browser) request(method, target string) *http.Request {
	r := httptest.NewRequest(method, publicURL+target, nil)
	for _, c := range b.cookies {
		r.AddCookie(&http.Cookie{Name: c.Name, Value: c.Value})
	}
	return r
}

var crossSite = map[string]string{"Sec-Fetch-Site": "cross-site"}

// startLogin starts a sign-in at s and returns the IdP's answer: the
// callback URL the IdP sends the browser to.
func (b *browser) startLogin(s *Sessions, idp *fakeIdP, then string) *url.URL {
	b.t.Helper()
	resp := b.do(s, "GET", LoginPath+"?issuer="+IssuerID(idp.srv.URL)+"&then="+url.QueryEscape(then), map[string]string{"Sec-Fetch-Site": "same-origin"})
	if resp.StatusCode != http.StatusFound {
		b.t.Fatalf("login: %s", resp.Status)
	}
	client := idp.srv.Client()
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	ar, err := client.Get(resp.Header.Get("Location"))
	if err != nil {
		b.t.Fatal(err)
	}
	ar.Body.Close()
	if ar.StatusCode != http.StatusFound {
		b.t.Fatalf("IdP: %s", ar.Status)
	}
	u, err := url.Parse(ar.Header.Get("Location"))
	if err != nil || !strings.HasPrefix(u.String(), publicURL+CallbackPath) {
		b.t.Fatalf("IdP sent the browser to %q", ar.Header.Get("Location"))
	}
	return u
}

// callback follows the IdP's redirect to the stub (a cross-site
// navigation).
func (b *browser) callback(s *Sessions, u *url.URL) *http.Response {
	b.t.Helper()
	return b.do(s, "GET", u.RequestURI(), crossSite)
}

// signIn signs the browser in at s.
func (b *browser) signIn(s *Sessions, idp *fakeIdP) {
	b.t.Helper()
	resp := b.callback(s, b.startLogin(s, idp, "/"))
	if resp.StatusCode != http.StatusOK || b.cookies[SessionCookie] == nil {
		b.t.Fatalf("sign-in: %s, cookies %v", resp.Status, b.cookies)
	}
}

// current asks s for the session's token as a cookie request would.
func (b *browser) current(s *Sessions, w http.ResponseWriter) (string, int) {
	b.t.Helper()
	bs, found, st := s.Open(httptest.NewRecorder(), b.request("GET", "/clusters/c1/api/v1/pods"))
	if !found {
		b.t.Fatal("no session cookie")
	}
	if st != nil {
		return "", int(st.ErrStatus.Code)
	}
	token, st := s.Current(context.Background(), w, bs)
	if st != nil {
		return "", int(st.ErrStatus.Code)
	}
	return token, http.StatusOK
}

package web

import (
	"context"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	apiserverv1beta1 "k8s.io/apiserver/pkg/apis/apiserver/v1beta1"

	"github.com/keyhole-dev/keyhole/audit"
	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/internal/idptest"
)

// The real Dex (v2.45.1, which rotates refresh tokens and refuses a second
// redemption): sign in through its login form as a public client with
// PKCE, then 20 parallel requests over two replicas with a due ID token
// each get the refreshed token, so the refresh token was redeemed once.
func TestRealDex(t *testing.T) {
	alice := idptest.User{Email: "alice@example.com", Password: "alice-pw-1", Groups: []string{"dev", "ops"}}
	d := idptest.Start(t, idptest.Options{Users: []idptest.User{alice}, ClientID: webClient,
		RedirectURIs: []string{publicURL + CallbackPath}, IDTokenExpiry: time.Minute})
	none := ""
	cfg := authn.JWTAuthenticatorConfig{Issuer: authn.Issuer{Issuer: apiserverv1beta1.Issuer{URL: d.Issuer, Audiences: []string{webClient},
		CertificateAuthority: string(d.CAData)}}}
	cfg.ClaimMappings = apiserverv1beta1.ClaimMappings{Username: apiserverv1beta1.PrefixedClaimOrExpression{Claim: "email", Prefix: &none},
		Groups: apiserverv1beta1.PrefixedClaimOrExpression{Claim: "groups", Prefix: &none}}
	j, err := authn.NewJWT([]authn.JWTAuthenticatorConfig{cfg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(j.Close)
	c := newClock()
	e := &testEnv{store: newMemStore(testKey("0a0b0c0d", c.Now().Add(-time.Hour))), clock: c, audit: &auditLog{}, auth: &authn.Chain{JWT: j}}
	login := Login{ID: IssuerID(d.Issuer), Name: "Dex", IssuerURL: d.Issuer, ClientID: webClient,
		Scopes: []string{"openid", "offline_access", "email", "groups"}, CAPEM: d.CAData}
	replica := func(name string) *Sessions {
		s, err := New(Config{PublicURL: publicURL, ReplicaID: name, MaxAge: time.Hour, IdleTimeout: time.Hour, Logins: StaticLogins{login},
			Auth: e.auth, Store: e.store, Audit: e.audit, Now: c.Now})
		if err != nil {
			t.Fatal(err)
		}
		s.pollEvery = 10 * time.Millisecond
		t.Cleanup(s.Close)
		return s
	}
	a, other := replica("a"), replica("b")

	b := newBrowser(t)
	resp := b.do(a, "GET", LoginPath+"?then=/home", map[string]string{"Sec-Fetch-Site": "same-origin"})
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("login: %s", resp.Status)
	}
	back := d.Login(t, resp.Header.Get("Location"), alice.Email, alice.Password)
	resp = b.callback(other, back)
	if p := body(t, resp); resp.StatusCode != 200 || !strings.Contains(p, "url=/home") {
		t.Fatalf("callback: %s\n%s", resp.Status, p)
	}

	e.store.makeDue(t, c.Now())
	const n = 20
	tokens := make([]string, n)
	codes := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		s := a
		if i%2 == 1 {
			s = other
		}
		wg.Go(func() { tokens[i], codes[i] = b.current(s, nil) })
	}
	wg.Wait()
	for i := range n {
		if codes[i] != 200 || tokens[i] != tokens[0] {
			t.Fatalf("request %d: %d (same token as the first: %v)", i, codes[i], tokens[i] == tokens[0])
		}
	}
	u, err := e.auth.Authenticate(context.Background(), tokens[0])
	if err != nil || u.Name != alice.Email {
		t.Fatalf("refreshed token: %v %v", u, err)
	}
	if evs := e.audit.events(audit.BrowserEventRefreshFailed); len(evs) != 0 {
		t.Fatalf("refresh failed: %v", evs[0].ResponseStatus)
	}
	if log, _ := os.ReadFile(d.LogPath); strings.Contains(string(log), "claimed twice") {
		t.Fatal("Dex saw a refresh token redeemed twice")
	}

	// Dex lists no revocation or end-session endpoint: sign-out is local.
	resp = b.do(a, "POST", LogoutPath, map[string]string{"Sec-Fetch-Site": "same-origin"})
	if p := body(t, resp); resp.StatusCode != 200 || !strings.Contains(p, `content="0;url=/"`) {
		t.Fatalf("logout: %s\n%s", resp.Status, p)
	}
}

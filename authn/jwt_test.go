package authn

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/coreos/go-oidc/v3/oidc/oidctest"
)

// testIssuer is a real OIDC issuer (go-oidc's oidctest) over HTTPS whose
// signing key can be rotated while it serves.
type testIssuer struct {
	*httptest.Server
	mu   sync.Mutex
	srv  *oidctest.Server
	key  *rsa.PrivateKey
	kid  string
	hits int
}

func newIssuer(t testing.TB) *testIssuer {
	ti := &testIssuer{}
	ti.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ti.mu.Lock()
		s := ti.srv
		ti.hits++
		ti.mu.Unlock()
		s.ServeHTTP(w, r)
	}))
	t.Cleanup(ti.Close)
	ti.rotate(t)
	return ti
}

// rotate replaces the signing key (and its key ID).
func (ti *testIssuer) rotate(t testing.TB) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ti.mu.Lock()
	defer ti.mu.Unlock()
	ti.key, ti.kid = key, fmt.Sprintf("k%d", time.Now().UnixNano())
	s := &oidctest.Server{PublicKeys: []oidctest.PublicKey{{PublicKey: key.Public(), KeyID: ti.kid, Algorithm: oidc.RS256}}}
	s.SetIssuer(ti.URL)
	ti.srv = s
}

func (ti *testIssuer) caPEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ti.Certificate().Raw}))
}

// token signs claims (merged over iss, aud, exp, iat defaults).
func (ti *testIssuer) token(t testing.TB, claims map[string]any) string {
	c := map[string]any{"iss": ti.URL, "aud": "keyhole", "exp": time.Now().Add(time.Hour).Unix(), "iat": time.Now().Unix()}
	for k, v := range claims {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	b, _ := json.Marshal(c)
	ti.mu.Lock()
	defer ti.mu.Unlock()
	return oidctest.SignIDToken(ti.key, ti.kid, oidc.RS256, string(b))
}

func (ti *testIssuer) config(mod func(*JWTAuthenticatorConfig)) JWTAuthenticatorConfig {
	c := JWTAuthenticatorConfig{
		Issuer:        Issuer{URL: ti.URL, Audiences: []string{"keyhole", "other"}, CertificateAuthority: ti.caPEM()},
		ClaimMappings: ClaimMappings{Username: PrefixedClaim{Claim: "email"}, Groups: &PrefixedClaim{Claim: "groups", Prefix: "oidc:"}},
	}
	if mod != nil {
		mod(&c)
	}
	return c
}

func TestJWTClaimsAndRefusals(t *testing.T) {
	idp := newIssuer(t)
	j, err := NewJWT([]JWTAuthenticatorConfig{idp.config(func(c *JWTAuthenticatorConfig) {
		c.ClaimValidationRules = []ClaimValidationRule{{Claim: "hd", RequiredValue: "example.com"}}
	})})
	if err != nil {
		t.Fatal(err)
	}
	good := map[string]any{"email": "alice@example.com", "email_verified": true, "groups": []string{"dev", "ops"}, "hd": "example.com"}
	with := func(over map[string]any) map[string]any {
		m := map[string]any{}
		for k, v := range good {
			m[k] = v
		}
		for k, v := range over {
			m[k] = v
		}
		return m
	}
	u, err := j.AuthenticateJWT(context.Background(), idp.token(t, good))
	if err != nil || u.Name != "alice@example.com" || strings.Join(u.Groups, ",") != "oidc:dev,oidc:ops" {
		t.Fatalf("%+v %v", u, err)
	}
	if u, err := j.AuthenticateJWT(context.Background(), idp.token(t, with(map[string]any{"aud": []string{"x", "other"}}))); err != nil || u == nil {
		t.Fatalf("second audience refused: %v", err)
	}
	other := newIssuer(t) // same claims, signed by a key this issuer never published
	forged := strings.Split(other.token(t, good), ".")
	real := strings.Split(idp.token(t, good), ".")
	cases := map[string]struct {
		token string
		want  string
	}{
		"expired":            {idp.token(t, with(map[string]any{"exp": time.Now().Add(-time.Minute).Unix()})), "expired"},
		"not yet valid":      {idp.token(t, with(map[string]any{"nbf": time.Now().Add(time.Hour).Unix()})), "not valid"},
		"wrong audience":     {idp.token(t, with(map[string]any{"aud": "someone-else"})), "audience"},
		"required claim":     {idp.token(t, with(map[string]any{"hd": "evil.com"})), `claim "hd" must be "example.com"`},
		"missing username":   {idp.token(t, with(map[string]any{"email": nil})), `no "email" claim`},
		"unverified email":   {idp.token(t, with(map[string]any{"email_verified": false})), "not verified"},
		"system user":        {idp.token(t, with(map[string]any{"email": "system:admin"})), "reserved system:"},
		"groups not strings": {idp.token(t, with(map[string]any{"groups": 7})), "list of strings"},
		"unknown issuer":     {other.token(t, good), "not trusted"},
		"bad signature":      {real[0] + "." + real[1] + "." + forged[2], "not valid"},
		"alg none":           {algNone(idp.URL), "not valid"},
		"malformed":          {"a.b.c", "malformed"},
		"too large":          {strings.Repeat("a", MaxTokenBytes) + ".b.c", "16 KiB"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := j.AuthenticateJWT(context.Background(), tc.token)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want error with %q, got %v", tc.want, err)
			}
		})
	}
}

func algNone(iss string) string {
	enc := func(v any) string { b, _ := json.Marshal(v); return base64.RawURLEncoding.EncodeToString(b) }
	return enc(map[string]string{"alg": "none", "typ": "JWT"}) + "." +
		enc(map[string]any{"iss": iss, "aud": "keyhole", "email": "alice@example.com", "exp": time.Now().Add(time.Hour).Unix()}) + "."
}

func TestJWTSystemPrefixRefusedAfterMapping(t *testing.T) {
	idp := newIssuer(t)
	j, err := NewJWT([]JWTAuthenticatorConfig{idp.config(func(c *JWTAuthenticatorConfig) { c.ClaimMappings.Groups.Prefix = "" })})
	if err != nil {
		t.Fatal(err)
	}
	_, err = j.AuthenticateJWT(context.Background(), idp.token(t, map[string]any{"email": "a@x", "groups": []string{"system:masters"}}))
	if err == nil || !strings.Contains(err.Error(), "system:") {
		t.Fatalf("got %v", err)
	}
}

func TestJWTKeyRotationWithoutRestart(t *testing.T) {
	idp := newIssuer(t)
	j, _ := NewJWT([]JWTAuthenticatorConfig{idp.config(nil)})
	claims := map[string]any{"email": "a@x"}
	if _, err := j.AuthenticateJWT(context.Background(), idp.token(t, claims)); err != nil {
		t.Fatal(err)
	}
	idp.rotate(t) // new key, new kid: the verifier must fetch the keys again
	if _, err := j.AuthenticateJWT(context.Background(), idp.token(t, claims)); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
}

func TestJWTIssuerDownDoesNotStopOthers(t *testing.T) {
	up := newIssuer(t)
	down := newIssuer(t)
	downURL, downCA := down.URL, down.caPEM()
	tokenFromDown := down.token(t, map[string]any{"email": "b@x"})
	down.Close() // its port now refuses connections: the issuer is down
	j, err := NewJWT([]JWTAuthenticatorConfig{
		up.config(nil),
		{Issuer: Issuer{URL: downURL, Audiences: []string{"keyhole"}, CertificateAuthority: downCA}, ClaimMappings: ClaimMappings{Username: PrefixedClaim{Claim: "email"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.AuthenticateJWT(context.Background(), tokenFromDown); !errors.Is(err, ErrIssuerDown) {
		t.Fatalf("token of the down issuer: %v", err)
	}
	start := time.Now()
	if _, err := j.AuthenticateJWT(context.Background(), up.token(t, map[string]any{"email": "a@x"})); err != nil {
		t.Fatalf("the other issuer: %v", err)
	}
	// A failed discovery is not retried on every request.
	if _, err := j.AuthenticateJWT(context.Background(), tokenFromDown); !errors.Is(err, ErrIssuerDown) || time.Since(start) > 5*time.Second {
		t.Fatalf("retry storm or wrong error: %v after %v", err, time.Since(start))
	}
}

// CI tokens: GitHub Actions and GitLab CI shapes, mapped by claimRules.
func TestJWTCIClaimRules(t *testing.T) {
	gh, gl := newIssuer(t), newIssuer(t)
	j, err := NewJWT([]JWTAuthenticatorConfig{
		{
			Issuer:        Issuer{URL: gh.URL, Audiences: []string{"keyhole"}, CertificateAuthority: gh.caPEM()},
			ClaimMappings: ClaimMappings{Username: PrefixedClaim{Claim: "sub", Prefix: "github:"}},
			ClaimRules: []ClaimRule{
				{Match: map[string]string{"repository": "acme/deploy", "ref": "refs/heads/main"}, Groups: []string{"deployers"}},
				{Match: map[string]string{"repository_id": "123456", "environment": "prod"}, Groups: []string{"prod-env"}},
			},
		},
		{
			Issuer:               Issuer{URL: gl.URL, Audiences: []string{"keyhole"}, CertificateAuthority: gl.caPEM()},
			ClaimValidationRules: []ClaimValidationRule{{Claim: "namespace_path", RequiredValue: "acme"}},
			ClaimMappings:        ClaimMappings{Username: PrefixedClaim{Claim: "sub", Prefix: "gitlab:"}},
			ClaimRules:           []ClaimRule{{Match: map[string]string{"project_path": "acme/deploy", "ref_protected": "true"}, Groups: []string{"deployers"}}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		token  string
		user   string
		groups string
	}{
		{"github main", gh.token(t, map[string]any{"sub": "repo:acme/deploy:ref:refs/heads/main", "repository": "acme/deploy", "ref": "refs/heads/main",
			"repository_id": "123456", "environment": "prod"}), "github:repo:acme/deploy:ref:refs/heads/main", "deployers,prod-env"},
		{"github branch", gh.token(t, map[string]any{"sub": "repo:acme/deploy:ref:refs/heads/dev", "repository": "acme/deploy", "ref": "refs/heads/dev"}),
			"github:repo:acme/deploy:ref:refs/heads/dev", ""},
		{"gitlab protected (numeric and boolean claims)", gl.token(t, map[string]any{"sub": "project_path:acme/deploy:ref_type:branch:ref:main",
			"namespace_path": "acme", "project_path": "acme/deploy", "project_id": 42, "ref_protected": true}), "gitlab:project_path:acme/deploy:ref_type:branch:ref:main", "deployers"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			u, err := j.AuthenticateJWT(context.Background(), tc.token)
			if err != nil || u.Name != tc.user || strings.Join(u.Groups, ",") != tc.groups {
				t.Fatalf("%+v %v", u, err)
			}
		})
	}
	if _, err := j.AuthenticateJWT(context.Background(), gl.token(t, map[string]any{"sub": "x", "namespace_path": "evil"})); err == nil {
		t.Fatal("gitlab token from another namespace accepted")
	}
}

func TestChainRoutesByShape(t *testing.T) {
	idp := newIssuer(t)
	j, _ := NewJWT([]JWTAuthenticatorConfig{idp.config(nil)})
	static := "khu_robot"
	tf := staticList{{User: User{Name: "robot"}, SHA256: sha256.Sum256([]byte(static))}}
	c := &Chain{Static: tf, JWT: j}
	if u, err := c.Authenticate(context.Background(), static); err != nil || u.Name != "robot" {
		t.Fatalf("static: %+v %v", u, err)
	}
	if u, err := c.Authenticate(context.Background(), idp.token(t, map[string]any{"email": "a@x"})); err != nil || u.Name != "a@x" {
		t.Fatalf("jwt: %+v %v", u, err)
	}
	if _, err := (&Chain{Static: tf}).Authenticate(context.Background(), idp.token(t, map[string]any{"email": "a@x"})); err == nil {
		t.Fatal("JWT accepted with no issuer configured")
	}
}

type staticList []StaticToken

func (l staticList) AuthenticateToken(tok string) (*User, error) {
	return MatchToken(l, tok, time.Now())
}

func TestJWTConfigValidate(t *testing.T) {
	bad := JWTAuthenticatorConfig{Issuer: Issuer{URL: "http://x"}, ClaimMappings: ClaimMappings{Username: PrefixedClaim{Prefix: "system:"}},
		ClaimRules: []ClaimRule{{Match: map[string]string{"a": "b"}, Groups: []string{"system:masters"}}}}
	errs := bad.Validate("jwt[0]")
	joined := errors.Join(errs...).Error()
	for _, want := range []string{"jwt[0].issuer.url", "jwt[0].issuer.audiences", "jwt[0].claimMappings.username.claim", "jwt[0].claimMappings.username.prefix", "jwt[0].claimRules[0].groups"} {
		if !strings.Contains(joined, want) {
			t.Errorf("validation lacks %q:\n%s", want, joined)
		}
	}
}

func FuzzJWT(f *testing.F) {
	idp := newIssuer(f)
	j, _ := NewJWT([]JWTAuthenticatorConfig{idp.config(nil)})
	good := idp.token(f, map[string]any{"email": "a@x"})
	f.Add(good)
	f.Add(algNone(idp.URL))
	f.Add("a.b.c")
	f.Add("")
	f.Fuzz(func(t *testing.T, tok string) {
		u, err := j.AuthenticateJWT(context.Background(), tok)
		if err == nil && (tok != good || u.Name != "a@x") {
			t.Fatalf("accepted %q as %+v", tok, u)
		}
	})
}

package authn

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
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
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/coreos/go-oidc/v3/oidc/oidctest"
	"sigs.k8s.io/yaml"
)

// testIssuer is a real OIDC issuer (go-oidc's oidctest) over HTTPS whose
// signing key can be rotated while it serves. extra serves more paths
// (distributed claim sources); delay holds discovery answers back.
type testIssuer struct {
	*httptest.Server
	alg   string
	mu    sync.Mutex
	srv   *oidctest.Server
	key   crypto.Signer
	kid   string
	hits  int
	extra map[string]http.HandlerFunc
	delay time.Duration
}

func newIssuer(t testing.TB) *testIssuer { return newIssuerAlg(t, oidc.RS256) }

// newIssuerAlg is an issuer signing with alg, whose discovery advertises
// only alg.
func newIssuerAlg(t testing.TB, alg string) *testIssuer {
	ti := &testIssuer{alg: alg, extra: map[string]http.HandlerFunc{}}
	ti.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ti.mu.Lock()
		s, h, delay := ti.srv, ti.extra[r.URL.Path], ti.delay
		ti.hits++
		ti.mu.Unlock()
		if h != nil {
			h(w, r)
			return
		}
		if r.URL.Path == "/.well-known/openid-configuration" {
			time.Sleep(delay)
		}
		s.ServeHTTP(w, r)
	}))
	t.Cleanup(ti.Close)
	ti.rotate(t)
	return ti
}

func newKey(t testing.TB, alg string) crypto.Signer {
	var (
		k   crypto.Signer
		err error
	)
	switch alg {
	case oidc.ES256:
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case oidc.ES384:
		k, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case oidc.ES512:
		k, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	default:
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	}
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// rotate replaces the signing key (and its key ID).
func (ti *testIssuer) rotate(t testing.TB) {
	key := newKey(t, ti.alg)
	ti.mu.Lock()
	defer ti.mu.Unlock()
	ti.key, ti.kid = key, fmt.Sprintf("k%d", time.Now().UnixNano())
	s := &oidctest.Server{PublicKeys: []oidctest.PublicKey{{PublicKey: key.Public(), KeyID: ti.kid, Algorithm: ti.alg}}, Algorithms: []string{ti.alg}}
	s.SetIssuer(ti.URL)
	ti.srv = s
}

func (ti *testIssuer) handle(path string, h http.HandlerFunc) {
	ti.mu.Lock()
	defer ti.mu.Unlock()
	ti.extra[path] = h
}

func (ti *testIssuer) setDelay(d time.Duration) {
	ti.mu.Lock()
	defer ti.mu.Unlock()
	ti.delay = d
}

func (ti *testIssuer) requests() int {
	ti.mu.Lock()
	defer ti.mu.Unlock()
	return ti.hits
}

func (ti *testIssuer) caPEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ti.Certificate().Raw}))
}

// token signs claims (merged over iss, aud, exp, iat defaults; a nil
// value removes the claim).
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
	return oidctest.SignIDToken(ti.key, ti.kid, ti.alg, string(b))
}

// issuerYAML is the issuer key of a jwt entry for ti, as a user writes it.
func (ti *testIssuer) issuerYAML() string {
	ca, _ := json.Marshal(ti.caPEM())
	return fmt.Sprintf("issuer: {url: %q, audiences: [keyhole], certificateAuthority: %s}\n", ti.URL, ca)
}

// parseJWT decodes a jwt list from YAML as the config files do (strictly).
func parseJWT(t testing.TB, doc string) []JWTAuthenticatorConfig {
	t.Helper()
	var out []JWTAuthenticatorConfig
	if err := yaml.UnmarshalStrict([]byte(doc), &out); err != nil {
		t.Fatalf("%v\n%s", err, doc)
	}
	return out
}

func newJWT(t testing.TB, doc string) *JWT {
	t.Helper()
	j, err := NewJWT(parseJWT(t, doc))
	if err != nil {
		t.Fatalf("%v\n%s", err, doc)
	}
	t.Cleanup(j.Close)
	return j
}

// indent puts every line of s n spaces in.
func indent(s string, n int) string {
	pad := strings.Repeat(" ", n)
	return pad + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+pad) + "\n"
}

// entry is one jwt list item for ti with the rest of the keys in body.
func (ti *testIssuer) entry(body string) string {
	return "- " + ti.issuerYAML() + indent(body, 2)
}

const emailAndGroups = `claimMappings:
  username: {claim: email, prefix: ""}
  groups: {claim: groups, prefix: "oidc:"}
`

func TestJWTClaimsAndRefusals(t *testing.T) {
	idp := newIssuer(t)
	j := newJWT(t, strings.Replace(idp.entry(emailAndGroups+"claimValidationRules:\n- {claim: hd, requiredValue: example.com}\n"),
		"audiences: [keyhole]", "audiences: [keyhole, other], audienceMatchPolicy: MatchAny", 1))
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
	if u, err := j.AuthenticateJWT(context.Background(), idp.token(t, with(map[string]any{"groups": "solo"}))); err != nil || strings.Join(u.Groups, ",") != "oidc:solo" {
		t.Fatalf("a single string as groups: %+v %v", u, err)
	}
	other := newIssuer(t) // same claims, signed by a key this issuer never published
	forged := strings.Split(other.token(t, good), ".")
	real := strings.Split(idp.token(t, good), ".")
	cases := map[string]struct {
		token string
		want  string
	}{
		"expired":            {idp.token(t, with(map[string]any{"exp": time.Now().Add(-time.Minute).Unix()})), "token is expired"},
		"not yet valid":      {idp.token(t, with(map[string]any{"nbf": time.Now().Add(time.Hour).Unix()})), "before the nbf (not before) time"},
		"wrong audience":     {idp.token(t, with(map[string]any{"aud": "someone-else"})), `expected audience in ["keyhole" "other"] got ["someone-else"]`},
		"required claim":     {idp.token(t, with(map[string]any{"hd": "evil.com"})), "required claim hd value does not match"},
		"missing username":   {idp.token(t, with(map[string]any{"email": nil})), `parse username claims "email"`},
		"unverified email":   {idp.token(t, with(map[string]any{"email_verified": false})), "email not verified"},
		"system user":        {idp.token(t, with(map[string]any{"email": "system:admin"})), "reserved system:"},
		"groups not strings": {idp.token(t, with(map[string]any{"groups": 7})), `parse groups claim "groups"`},
		"unknown issuer":     {other.token(t, good), "not trusted"},
		"bad signature":      {real[0] + "." + real[1] + "." + forged[2], "failed to verify signature"},
		"alg none":           {algNone(idp.URL), "token not valid"},
		"alg HS256":          {hs256(idp.URL, []byte(idp.caPEM())), "token not valid"},
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

// hs256 signs with a shared secret (here: public data), which no
// asymmetric-key issuer may accept.
func hs256(iss string, secret []byte) string {
	enc := func(v any) string { b, _ := json.Marshal(v); return base64.RawURLEncoding.EncodeToString(b) }
	in := enc(map[string]string{"alg": "HS256", "typ": "JWT"}) + "." +
		enc(map[string]any{"iss": iss, "aud": "keyhole", "email": "alice@example.com", "exp": time.Now().Add(time.Hour).Unix()})
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(in))
	return in + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// The input (a): an issuer whose discovery advertises ES256 and
// whose JWKS holds a P-256 key. Every asymmetric algorithm of RFC 7518 is
// accepted, as kube-apiserver accepts them with an AuthenticationConfiguration.
func TestJWTSigningAlgorithms(t *testing.T) {
	for _, alg := range []string{oidc.ES256, oidc.ES384, oidc.ES512, oidc.RS256, oidc.RS384, oidc.RS512, oidc.PS256, oidc.PS384, oidc.PS512} {
		t.Run(alg, func(t *testing.T) {
			idp := newIssuerAlg(t, alg)
			j := newJWT(t, idp.entry(emailAndGroups))
			u, err := j.AuthenticateJWT(context.Background(), idp.token(t, map[string]any{"email": "a@x", "groups": []string{"dev"}}))
			if err != nil || u.Name != "a@x" || strings.Join(u.Groups, ",") != "oidc:dev" {
				t.Fatalf("%+v %v", u, err)
			}
		})
	}
}

// CEL, as in AuthenticationConfiguration: claimValidationRules,
// claimMappings expressions, userValidationRules with their messages.
func TestJWTCEL(t *testing.T) {
	idp := newIssuer(t)
	j := newJWT(t, idp.entry(`claimValidationRules:
- expression: 'claims.?email_verified.orValue(false) == true'
  message: the email must be verified
- expression: 'claims.hd == "example.com"'
claimMappings:
  username: {expression: '"oidc:" + claims.email'}
  groups: {expression: 'dyn(claims.?groups.orValue([])).map(g, "oidc:" + g) + (claims.?admin.orValue(false) == true ? ["admins"] : [])'}
  uid: {claim: sub}
  extra:
  - {key: example.com/tenant, valueExpression: 'claims.?tenant.orValue("")'}
userValidationRules:
- expression: '!user.groups.exists(g, g == "oidc:contractors")'
  message: contractors may not use this gateway
`))
	good := map[string]any{"sub": "u1", "email": "alice@example.com", "email_verified": true, "hd": "example.com", "groups": []string{"dev"}, "admin": true}
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
	if err != nil || u.Name != "oidc:alice@example.com" || strings.Join(u.Groups, ",") != "oidc:dev,admins" {
		t.Fatalf("%+v %v", u, err)
	}
	if u, err := j.AuthenticateJWT(context.Background(), idp.token(t, with(map[string]any{"groups": nil, "admin": nil}))); err != nil || len(u.Groups) != 0 {
		t.Fatalf("no groups: %+v %v", u, err)
	}
	for name, tc := range map[string]struct {
		claims map[string]any
		want   string
	}{
		"claim rule message": {with(map[string]any{"email_verified": false}), "the email must be verified"},
		"claim rule":         {with(map[string]any{"hd": "evil.com"}), `validation expression 'claims.hd == "example.com"' failed`},
		"missing claim":      {with(map[string]any{"hd": nil}), "no such key: hd"},
		"user rule":          {with(map[string]any{"groups": []string{"dev", "contractors"}}), "contractors may not use this gateway"},
		"groups not strings": {with(map[string]any{"groups": []int{1}}), "group claim expression"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := j.AuthenticateJWT(context.Background(), idp.token(t, tc.claims))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want error with %q, got %v", tc.want, err)
			}
		})
	}
}

// The input (b): groups as a distributed claim (_claim_names,
// _claim_sources, no groups), as Entra ID sends them for users in many
// groups. kube-apiserver fetches the source's endpoint (with the source's
// access_token, if any) and verifies the JWT it returns; so does Keyhole.
// A source that fails refuses the token, naming the cause.
func TestJWTDistributedGroups(t *testing.T) {
	idp := newIssuer(t)
	var gotAuth string
	var mu sync.Mutex
	idp.handle("/groups", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		gotAuth = r.Header.Get("Authorization")
		mu.Unlock()
		fmt.Fprint(w, idp.token(t, map[string]any{"groups": []string{"dev", "ops"}}))
	})
	idp.handle("/graph", func(w http.ResponseWriter, r *http.Request) { // Entra's Graph wants a POST with its own token
		http.Error(w, `{"error":{"code":"InvalidAuthenticationToken"}}`, http.StatusUnauthorized)
	})
	j := newJWT(t, idp.entry(emailAndGroups))
	distributed := func(endpoint string) map[string]any {
		return map[string]any{"email": "alice@example.com",
			"_claim_names":   map[string]string{"groups": "src1"},
			"_claim_sources": map[string]any{"src1": map[string]string{"endpoint": idp.URL + endpoint, "access_token": "source-token"}}}
	}
	// The first claim from a source starts discovery of the source's issuer;
	// that token waits for it rather than failing.
	u, err := j.AuthenticateJWT(context.Background(), idp.token(t, distributed("/groups")))
	if err != nil || strings.Join(u.Groups, ",") != "oidc:dev,oidc:ops" {
		t.Fatalf("distributed groups: %+v %v", u, err)
	}
	mu.Lock()
	if gotAuth != "Bearer source-token" {
		t.Errorf("the source was asked with Authorization %q, want the source's access_token", gotAuth)
	}
	mu.Unlock()
	_, err = j.AuthenticateJWT(context.Background(), idp.token(t, distributed("/graph")))
	if err == nil || !strings.Contains(err.Error(), `could not expand distributed claims: while getting distributed claim "groups"`) || !strings.Contains(err.Error(), "401 Unauthorized") {
		t.Fatalf("failing source: %v", err)
	}
	// Sources are not followed when groups has its own value.
	u, err = j.AuthenticateJWT(context.Background(), idp.token(t, func() map[string]any {
		c := distributed("/graph")
		c["groups"] = []string{"inline"}
		return c
	}()))
	if err != nil || strings.Join(u.Groups, ",") != "oidc:inline" {
		t.Fatalf("inline groups: %+v %v", u, err)
	}
}

// Keys that changed meaning are start-up errors naming the replacement;
// the replacement written for claimRules maps the same tokens to the same
// groups (GitHub Actions and GitLab CI shapes, numbers and booleans
// included).
func TestJWTLegacyClaimRules(t *testing.T) {
	gh := newIssuer(t)
	old := gh.entry(`claimMappings:
  username: {claim: sub, prefix: "github:"}
  groups: {claim: teams, prefix: "gh:"}
claimRules:
- match: {repository: acme/deploy, ref: refs/heads/main}
  groups: [deployers]
- match: {project_id: "42", ref_protected: "true"}
  groups: [prod-env]
- match: {"https://acme.example/tier": gold}
  groups: [gold]
`)
	_, err := NewJWT(parseJWT(t, old))
	if err == nil || !strings.Contains(err.Error(), "jwt[0].claimRules: removed") || !strings.Contains(err.Error(), "claimMappings.groups.expression") {
		t.Fatalf("claimRules: %v", err)
	}
	t.Logf("the start-up error:\n%v", err)
	// Paste the suggested claimMappings over the old ones.
	suggested := err.Error()[strings.Index(err.Error(), "    claimMappings:\n"):]
	var m struct {
		ClaimMappings struct {
			Groups struct{ Expression string }
		} `json:"claimMappings"`
	}
	if err := yaml.Unmarshal([]byte(suggested), &m); err != nil || m.ClaimMappings.Groups.Expression == "" {
		t.Fatalf("suggestion is not YAML: %v\n%s", err, suggested)
	}
	expr, _ := json.Marshal(m.ClaimMappings.Groups.Expression)
	j := newJWT(t, gh.entry(fmt.Sprintf("claimMappings:\n  username: {claim: sub, prefix: \"github:\"}\n  groups: {expression: %s}\n", expr)))
	for _, tc := range []struct {
		claims map[string]any
		groups string
	}{
		{map[string]any{"sub": "a", "repository": "acme/deploy", "ref": "refs/heads/main", "project_id": 42, "ref_protected": true, "teams": []string{"sre"}}, "gh:sre,deployers,prod-env"},
		{map[string]any{"sub": "a", "repository": "acme/deploy", "ref": "refs/heads/main", "project_id": "42", "ref_protected": "true"}, "deployers,prod-env"},
		{map[string]any{"sub": "a", "repository": "acme/deploy", "ref": "refs/heads/dev", "ref_protected": false}, ""},
		{map[string]any{"sub": "a"}, ""},
		{map[string]any{"sub": "a", "https://acme.example/tier": "gold"}, "gold"},
	} {
		u, err := j.AuthenticateJWT(context.Background(), gh.token(t, tc.claims))
		if err != nil || strings.Join(u.Groups, ",") != tc.groups {
			t.Errorf("%v: %+v %v, want groups %q", tc.claims, u, err, tc.groups)
		}
	}
}

func TestJWTConfigValidate(t *testing.T) {
	cfgs := parseJWT(t, `- issuer: {url: "http://x", audiences: [a, b]}
  claimMappings:
    username: {claim: email}
    groups: {claim: groups, prefix: "system:"}
  login: {}
- issuer: {url: "https://x", audiences: [a], certificateAuthority: "not PEM", certificateAuthorityFile: /ca.pem}
  claimMappings:
    username: {expression: 'claims.email'}
  userValidationRules:
  - {expression: 'claims.x'}
- issuer: {url: "https://x", audiences: [a]}
  claimMappings:
    username: {claim: sub, prefix: ""}
    groups: {expression: 'claims.groups', prefix: "x"}
`)
	joined := errors.Join(ValidateJWT("authentication.jwt", cfgs)...).Error()
	for _, want := range []string{
		`authentication.jwt[0].issuer.url: Invalid value: "http://x": URL scheme must be https`,
		`authentication.jwt[0].issuer.audienceMatchPolicy: Invalid value: "": audienceMatchPolicy must be MatchAny for multiple audiences`,
		"authentication.jwt[0].claimMappings.username.prefix: Required value: prefix is required when claim is set",
		`authentication.jwt[0].claimMappings.groups.prefix: "system:" is in the reserved system: space`,
		"authentication.jwt[0].login.clientID",
		"authentication.jwt[1].issuer.certificateAuthority and issuer.certificateAuthorityFile: give one of them",
		"authentication.jwt[1].issuer.certificateAuthority: Invalid value",
		"authentication.jwt[1].claimMappings.username.expression: Invalid value: \"claims.email\": claims.email_verified must be used",
		"authentication.jwt[1].userValidationRules[0].expression: Invalid value: \"claims.x\": compilation failed",
		"authentication.jwt[2].issuer.url: Duplicate value",
		"authentication.jwt[2].claimMappings.groups.prefix: Invalid value: \"x\": prefix can't be set when expression is set",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("validation lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("got:\n%s", joined)
	}
	if errs := ValidateJWT("jwt", parseJWT(t, newIssuer(t).entry(emailAndGroups))); len(errs) != 0 {
		t.Fatalf("a valid entry: %v", errs)
	}
}

func TestBrowserLoginConfig(t *testing.T) {
	cfgs := parseJWT(t, `- issuer: {url: "https://a.example.com/dex", audiences: [keyhole]}
  claimMappings: {username: {claim: sub, prefix: ""}}
  login: {clientID: keyhole, extraScopes: [email, groups], browser: {}}
- issuer: {url: "https://b.example.com", audiences: [keyhole]}
  claimMappings: {username: {claim: sub, prefix: ""}}
  login: {clientID: keyhole, browser: {clientID: keyhole-web, scopes: [email, "a b"]}}
- issuer: {url: "https://c.example.com", audiences: [keyhole, keyhole-web], audienceMatchPolicy: MatchAny}
  claimMappings: {username: {claim: sub, prefix: ""}}
  login: {clientID: keyhole, browser: {clientID: keyhole-web, clientSecretFile: /s, scopes: [openid], name: Company SSO}}
`)
	b, ok := cfgs[0].BrowserLogin()
	if !ok || b.ClientID != "keyhole" || !slices.Equal(b.Scopes, []string{"openid", "offline_access", "email", "groups"}) || b.Name != "a.example.com" {
		t.Errorf("defaults: %+v %v", b, ok)
	}
	if b, _ := cfgs[2].BrowserLogin(); b.ClientID != "keyhole-web" || b.Name != "Company SSO" || b.ClientSecretFile != "/s" || !slices.Equal(b.Scopes, []string{"openid"}) {
		t.Errorf("given: %+v", b)
	}
	if _, ok := (&JWTAuthenticatorConfig{Login: &Login{ClientID: "x"}}).BrowserLogin(); ok {
		t.Error("no login.browser, yet a browser login")
	}
	joined := errors.Join(ValidateJWT("authentication.jwt", cfgs)...).Error()
	for _, want := range []string{
		`authentication.jwt[1].login.browser.clientID: "keyhole-web" is not in issuer.audiences [keyhole]; ID tokens of the browser sign-in carry it as audience: add it (with audienceMatchPolicy: MatchAny)`,
		`authentication.jwt[1].login.browser.scopes: [email a b] must include "openid"`,
		`authentication.jwt[1].login.browser.scopes: "a b" is not one scope`,
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("validation lacks %q", want)
		}
	}
	if strings.Contains(joined, "jwt[0]") || strings.Contains(joined, "jwt[2]") {
		t.Errorf("valid entries refused:\n%s", joined)
	}
}

func TestJWTSystemPrefixRefusedAfterMapping(t *testing.T) {
	idp := newIssuer(t)
	j := newJWT(t, idp.entry("claimMappings:\n  username: {claim: email, prefix: \"\"}\n  groups: {claim: groups, prefix: \"\"}\n"))
	_, err := j.AuthenticateJWT(context.Background(), idp.token(t, map[string]any{"email": "a@x", "groups": []string{"system:masters"}}))
	if err == nil || !strings.Contains(err.Error(), "system:") {
		t.Fatalf("got %v", err)
	}
}

func TestJWTKeyRotationWithoutRestart(t *testing.T) {
	idp := newIssuer(t)
	j := newJWT(t, idp.entry(emailAndGroups))
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
	downEntry := down.entry(emailAndGroups)
	tokenFromDown := down.token(t, map[string]any{"email": "b@x"})
	down.Close() // its port now refuses connections: the issuer is down
	j := newJWT(t, up.entry(emailAndGroups)+downEntry)
	if _, err := j.AuthenticateJWT(context.Background(), tokenFromDown); !errors.Is(err, ErrIssuerDown) {
		t.Fatalf("token of the down issuer: %v", err)
	}
	start := time.Now()
	if _, err := j.AuthenticateJWT(context.Background(), up.token(t, map[string]any{"email": "a@x"})); err != nil {
		t.Fatalf("the other issuer: %v", err)
	}
	// A failed discovery is not waited for again on every request.
	if _, err := j.AuthenticateJWT(context.Background(), tokenFromDown); !errors.Is(err, ErrIssuerDown) || time.Since(start) > 2*time.Second {
		t.Fatalf("slow or wrong error: %v after %v", err, time.Since(start))
	}
}

// Nothing is fetched before the first token; the first token waits for
// discovery (bounded) instead of meeting a not-initialized authenticator.
func TestJWTFirstTokenWaitsForDiscovery(t *testing.T) {
	idp := newIssuer(t)
	idp.setDelay(300 * time.Millisecond)
	j := newJWT(t, idp.entry(emailAndGroups))
	time.Sleep(50 * time.Millisecond)
	if n := idp.requests(); n != 0 {
		t.Fatalf("the issuer was contacted %d times before any token", n)
	}
	tok := idp.token(t, map[string]any{"email": "a@x"})
	if u, err := j.AuthenticateJWT(context.Background(), tok); err != nil || u.Name != "a@x" {
		t.Fatalf("first token: %+v %v", u, err)
	}

	// Discovery slower than the bound: a clear 401 message, then success
	// once discovery is done.
	slow := newIssuer(t)
	slow.setDelay(time.Second)
	j = newJWT(t, slow.entry(emailAndGroups))
	j.wait = 200 * time.Millisecond
	tok = slow.token(t, map[string]any{"email": "a@x"})
	start := time.Now()
	_, err := j.AuthenticateJWT(context.Background(), tok)
	if !errors.Is(err, ErrIssuerDown) || !strings.Contains(err.Error(), "is not initialized") || time.Since(start) > time.Second {
		t.Fatalf("before discovery: %v after %v", err, time.Since(start))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err = j.AuthenticateJWT(context.Background(), tok); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("after discovery: %v", err)
	}
}

// CI tokens: GitHub Actions and GitLab CI shapes, mapped to groups by CEL.
func TestJWTCIGroupsByCEL(t *testing.T) {
	gh, gl := newIssuer(t), newIssuer(t)
	j := newJWT(t, gh.entry(`claimMappings:
  username: {claim: sub, prefix: "github:"}
  groups:
    expression: >-
      (claims.repository == "acme/deploy" && claims.ref == "refs/heads/main" ? ["deployers"] : []) +
      (claims.repository_id == "123456" && claims.?environment.orValue("") == "prod" ? ["prod-env"] : [])
`)+gl.entry(`claimValidationRules:
- {claim: namespace_path, requiredValue: acme}
claimMappings:
  username: {claim: sub, prefix: "gitlab:"}
  groups: {expression: 'claims.project_path == "acme/deploy" && claims.ref_protected == "true" ? ["deployers"] : []'}
`))
	cases := []struct {
		name   string
		token  string
		user   string
		groups string
	}{
		{"github main", gh.token(t, map[string]any{"sub": "repo:acme/deploy:ref:refs/heads/main", "repository": "acme/deploy", "ref": "refs/heads/main",
			"repository_id": "123456", "environment": "prod"}), "github:repo:acme/deploy:ref:refs/heads/main", "deployers,prod-env"},
		{"github branch", gh.token(t, map[string]any{"sub": "repo:acme/deploy:ref:refs/heads/dev", "repository": "acme/deploy", "ref": "refs/heads/dev",
			"repository_id": "123456"}), "github:repo:acme/deploy:ref:refs/heads/dev", ""},
		{"gitlab protected", gl.token(t, map[string]any{"sub": "project_path:acme/deploy:ref_type:branch:ref:main",
			"namespace_path": "acme", "project_path": "acme/deploy", "project_id": "42", "ref_protected": "true"}), "gitlab:project_path:acme/deploy:ref_type:branch:ref:main", "deployers"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			u, err := j.AuthenticateJWT(context.Background(), tc.token)
			if err != nil || u.Name != tc.user || strings.Join(u.Groups, ",") != tc.groups {
				t.Fatalf("%+v %v", u, err)
			}
		})
	}
	if _, err := j.AuthenticateJWT(context.Background(), gl.token(t, map[string]any{"sub": "x", "namespace_path": "evil", "project_path": "x", "ref_protected": "false"})); err == nil {
		t.Fatal("gitlab token from another namespace accepted")
	}
}

func TestChainRoutesByShape(t *testing.T) {
	idp := newIssuer(t)
	j := newJWT(t, idp.entry(emailAndGroups))
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

func FuzzJWT(f *testing.F) {
	idp := newIssuer(f)
	j := newJWT(f, idp.entry(emailAndGroups))
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

// A JWT dropped without Close (a config reload replaces it) still ends its
// issuers' background discovery.
func TestJWTDroppedIsClosed(t *testing.T) {
	down := newIssuer(t)
	entry := down.entry(emailAndGroups)
	tok := down.token(t, map[string]any{"email": "a@x"})
	down.Close() // discovery fails and is retried in the background
	pollers := func() int {
		buf := make([]byte, 1<<22)
		return strings.Count(string(buf[:runtime.Stack(buf, true)]), "authenticator/token/oidc.New.func")
	}
	before := pollers()
	func() {
		j, err := NewJWT(parseJWT(t, entry))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := j.AuthenticateJWT(context.Background(), tok); !errors.Is(err, ErrIssuerDown) {
			t.Fatalf("got %v", err)
		}
	}()
	if pollers() <= before {
		t.Fatal("no background discovery to watch")
	}
	deadline := time.Now().Add(10 * time.Second)
	for pollers() > before {
		if time.Now().After(deadline) {
			t.Fatal("the dropped authenticator's discovery goroutine still runs")
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}

package authn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/apiserver/pkg/apis/apiserver"
	apiserverv1beta1 "k8s.io/apiserver/pkg/apis/apiserver/v1beta1"
	"k8s.io/apiserver/pkg/apis/apiserver/validation"
	authenticationcel "k8s.io/apiserver/pkg/authentication/cel"
	"k8s.io/apiserver/plugin/pkg/authenticator/token/oidc"
)

// JWTAuthenticatorConfig is one trusted issuer: an entry of the jwt list of
// Kubernetes' AuthenticationConfiguration (apiserver.config.k8s.io), with
// the same meaning, CEL expressions included, plus Keyhole's own keys.
//
// The upstream type is v1beta1's: k8s.io/apiserver 0.33 has no v1 of
// AuthenticationConfiguration yet, and its jwt entries are field for field
// those of v1 (Kubernetes 1.34) but for issuer.egressSelectorType, which
// has no meaning here. So the jwt list a cluster runs with can be pasted.
//
// Keyhole's keys:
//   - issuer.certificateAuthorityFile: the PEM of issuer.certificateAuthority
//     read from a file (Issuer shadows the embedded issuer to add it);
//   - login: what `stub kubeconfig --oidc` tells kubelogin;
//   - claimRules: removed; only decoded to name its replacement
//     (claimMappings.groups.expression) in the start-up error.
type JWTAuthenticatorConfig struct {
	apiserverv1beta1.JWTAuthenticator `json:",inline"`
	// Issuer replaces the embedded JWTAuthenticator.Issuer, which is unused.
	Issuer Issuer `json:"issuer"`
	// Login is what a generated kubeconfig tells kubelogin.
	Login *Login `json:"login,omitempty"`
	// ClaimRules is the removed Keyhole key; see ValidateJWT.
	ClaimRules []legacyClaimRule `json:"claimRules,omitempty"`
}

// Issuer is Kubernetes' issuer plus certificateAuthorityFile.
type Issuer struct {
	apiserverv1beta1.Issuer `json:",inline"`
	// CertificateAuthorityFile reads certificateAuthority from a file (read
	// when the authenticator is built, so also on every config reload).
	CertificateAuthorityFile string `json:"certificateAuthorityFile,omitempty"`
}

// legacyClaimRule is the shape of the removed claimRules entries: groups
// for tokens whose claims all have the given values.
type legacyClaimRule struct {
	Match  map[string]string `json:"match"`
	Groups []string          `json:"groups"`
}

// Login configures kubelogin in generated kubeconfigs, and with Browser
// the stub's own browser sign-in.
type Login struct {
	ClientID     string   `json:"clientID"`
	ClientSecret string   `json:"clientSecret,omitempty"`
	ExtraScopes  []string `json:"extraScopes,omitempty"`
	// Browser, when set, lets people sign in to the stub with their
	// browser through this issuer (see package web). It is a separate
	// client: login.clientSecret goes into kubeconfigs, so it is never the
	// stub's secret.
	Browser *BrowserLogin `json:"browser,omitempty"`
}

// BrowserLogin is the OIDC client the stub signs browsers in with
// (authorization code with PKCE; redirect URI publicURL +
// "/keyhole/callback").
type BrowserLogin struct {
	// ClientID defaults to login.clientID. The ID tokens of the sign-in
	// carry it as audience, so it must be one of issuer.audiences.
	ClientID string `json:"clientID,omitempty"`
	// ClientSecretFile holds the client secret of a confidential client;
	// absent: a public client (PKCE alone).
	ClientSecretFile string `json:"clientSecretFile,omitempty"`
	// Scopes default to openid and offline_access (a refresh token, so
	// that sessions outlive one ID token) plus login.extraScopes; they
	// must include openid.
	Scopes []string `json:"scopes,omitempty"`
	// Name labels the sign-in button; default: the issuer's host.
	Name string `json:"name,omitempty"`
}

// BrowserLogin returns c's browser sign-in client with its defaults
// filled (clientID, scopes, name), and false when c has none.
func (c *JWTAuthenticatorConfig) BrowserLogin() (BrowserLogin, bool) {
	if c.Login == nil || c.Login.Browser == nil {
		return BrowserLogin{}, false
	}
	b := *c.Login.Browser
	if b.ClientID == "" {
		b.ClientID = c.Login.ClientID
	}
	if len(b.Scopes) == 0 {
		b.Scopes = []string{"openid", "offline_access"}
		for _, s := range c.Login.ExtraScopes {
			if !slices.Contains(b.Scopes, s) {
				b.Scopes = append(b.Scopes, s)
			}
		}
	} else {
		b.Scopes = slices.Clone(b.Scopes)
	}
	if b.Name == "" {
		b.Name = c.Issuer.URL
		if u, err := url.Parse(c.Issuer.URL); err == nil && u.Host != "" {
			b.Name = u.Host
		}
	}
	return b, true
}

// celCompiler is shared by validation and every authenticator: CEL
// environments are expensive to build.
var celCompiler = sync.OnceValue(authenticationcel.NewDefaultCompiler)

// upstream returns c in Kubernetes' internal form, as kube-apiserver
// converts its v1beta1 file; with readCA, certificateAuthorityFile is read
// into certificateAuthority.
func (c *JWTAuthenticatorConfig) upstream(readCA bool) (apiserver.JWTAuthenticator, error) {
	v := c.JWTAuthenticator
	v.Issuer = c.Issuer.Issuer
	if readCA && c.Issuer.CertificateAuthorityFile != "" {
		b, err := os.ReadFile(c.Issuer.CertificateAuthorityFile)
		if err != nil {
			return apiserver.JWTAuthenticator{}, fmt.Errorf("issuer.certificateAuthorityFile: %w", err)
		}
		v.Issuer.CertificateAuthority = string(b)
	}
	var out apiserver.JWTAuthenticator
	if err := apiserverv1beta1.Convert_v1beta1_JWTAuthenticator_To_apiserver_JWTAuthenticator(&v, &out, nil); err != nil {
		return out, err
	}
	return out, nil
}

// ValidateJWT reports every problem of a jwt list as kube-apiserver
// validates its AuthenticationConfiguration (CEL expressions compiled),
// plus Keyhole's own checks, naming keys under path, e.g.
// "authentication.jwt[0].claimMappings.username.prefix". It reads no file.
func ValidateJWT(path string, cfgs []JWTAuthenticatorConfig) []error {
	var errs []error
	add := func(i int, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s[%d].%s", path, i, fmt.Sprintf(format, a...)))
	}
	all := &apiserver.AuthenticationConfiguration{}
	for i := range cfgs {
		c := &cfgs[i]
		if len(c.ClaimRules) > 0 {
			add(i, "claimRules: removed; Keyhole now reads claims as Kubernetes' AuthenticationConfiguration does, where claims become groups "+
				"with a CEL expression in claimMappings.groups.expression. These rules (with any groups claim) become:\n%s", c.claimRulesAsCEL())
		}
		if c.Issuer.CertificateAuthority != "" && c.Issuer.CertificateAuthorityFile != "" {
			add(i, "issuer.certificateAuthority and issuer.certificateAuthorityFile: give one of them")
		}
		if p := c.ClaimMappings.Username.Prefix; p != nil && strings.HasPrefix(*p, "system:") {
			add(i, "claimMappings.username.prefix: %q is in the reserved system: space", *p)
		}
		if p := c.ClaimMappings.Groups.Prefix; p != nil && strings.HasPrefix(*p, "system:") {
			add(i, "claimMappings.groups.prefix: %q is in the reserved system: space", *p)
		}
		if c.Login != nil && c.Login.ClientID == "" {
			add(i, "login.clientID: is required with login: the OIDC client kubelogin uses for `stub kubeconfig --oidc` (usually one of issuer.audiences); the browser sign-in's client is login.browser.clientID, which defaults to it")
		}
		if b, ok := c.BrowserLogin(); ok {
			validateBrowserLogin(add, i, c, b)
		}
		u, err := c.upstream(false)
		if err != nil {
			add(i, "%v", err)
		}
		all.JWT = append(all.JWT, u)
	}
	for _, fe := range validation.ValidateAuthenticationConfiguration(celCompiler(), all, nil) {
		fe.Field = path + strings.TrimPrefix(fe.Field, "jwt")
		errs = append(errs, errors.New(fe.Error()))
	}
	return errs
}

// validateBrowserLogin checks login.browser of c (b: with its defaults).
func validateBrowserLogin(add func(int, string, ...any), i int, c *JWTAuthenticatorConfig, b BrowserLogin) {
	switch {
	case b.ClientID == "":
		add(i, "login.browser.clientID: the OIDC client the stub signs browsers in with; set it, or login.clientID, which it defaults to")
	case !slices.Contains(c.Issuer.Audiences, b.ClientID):
		how := "add it"
		if len(c.Issuer.Audiences) > 0 && c.Issuer.AudienceMatchPolicy != apiserverv1beta1.AudienceMatchPolicyMatchAny {
			how = "add it (with audienceMatchPolicy: MatchAny)"
		}
		add(i, "login.browser.clientID: %q is not in issuer.audiences %v; ID tokens of the browser sign-in carry it as audience: %s",
			b.ClientID, c.Issuer.Audiences, how)
	}
	if !slices.Contains(b.Scopes, "openid") {
		add(i, "login.browser.scopes: %v must include \"openid\" (without it the IdP returns no ID token); e.g. [openid, offline_access, email, groups]", b.Scopes)
	}
	for _, s := range b.Scopes {
		if s == "" || strings.ContainsAny(s, " \t\r\n") {
			add(i, "login.browser.scopes: %q is not one scope; list each scope as its own entry", s)
		}
	}
}

// claimRulesAsCEL writes c's claimRules (and groups claim, if any) as the
// claimMappings.groups of an AuthenticationConfiguration, in YAML.
func (c *JWTAuthenticatorConfig) claimRulesAsCEL() string {
	var parts []string
	if g := c.ClaimMappings.Groups; g.Claim != "" {
		prefix := ""
		if g.Prefix != nil {
			prefix = *g.Prefix
		}
		parts = append(parts, fmt.Sprintf("dyn(%s.orValue([])).map(g, %s + g)", optionalClaim(g.Claim), strconv.Quote(prefix)))
	}
	for _, r := range c.ClaimRules {
		var conds []string
		for _, k := range slices.Sorted(maps.Keys(r.Match)) {
			v := r.Match[k]
			if isNumberOrBool(v) { // claimRules compared numbers and booleans as their JSON text
				conds = append(conds, fmt.Sprintf("string(%s.orValue(\"\")) == %s", optionalClaim(k), strconv.Quote(v)))
			} else {
				conds = append(conds, fmt.Sprintf("%s.orValue(\"\") == %s", optionalClaim(k), strconv.Quote(v)))
			}
		}
		var groups []string
		for _, g := range r.Groups {
			groups = append(groups, strconv.Quote(g))
		}
		parts = append(parts, fmt.Sprintf("(%s ? [%s] : [])", strings.Join(conds, " && "), strings.Join(groups, ", ")))
	}
	return "    claimMappings:\n      groups:\n        expression: '" + strings.ReplaceAll(strings.Join(parts, " + "), "'", "''") + "'"
}

// optionalClaim is the CEL for claim as an optional value: claims.?name,
// or claims[?"name"] for names that are not identifiers ("cognito:groups").
func optionalClaim(name string) string {
	if celIdent.MatchString(name) {
		return "claims.?" + name
	}
	return "claims[?" + strconv.Quote(name) + "]"
}

var celIdent = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func isNumberOrBool(s string) bool {
	if s == "true" || s == "false" {
		return true
	}
	var n json.Number
	return json.Unmarshal([]byte(s), &n) == nil
}

// MaxTokenBytes bounds a bearer token; larger ones are refused unread.
const MaxTokenBytes = 16 << 10

// Errors of JWT authentication. Messages are meant for the caller.
var (
	ErrUnknownIssuer = errors.New("token issuer is not trusted by this gateway")
	ErrTokenTooLarge = errors.New("token is larger than 16 KiB")
	ErrIssuerDown    = errors.New("the token's issuer cannot be reached to check the token")
)

// DiscoveryWait bounds how long the first tokens of an issuer wait for its
// discovery (which starts with the first of them).
const DiscoveryWait = 5 * time.Second

// JWT authenticates tokens from several issuers with Kubernetes' own JWT
// authenticator (k8s.io/apiserver/plugin/pkg/authenticator/token/oidc),
// configured as kube-apiserver configures it: every asymmetric signing
// algorithm of RFC 7518, CEL mappings and validation rules, distributed
// groups claims. The result is mapped to a User (name and groups; UID and
// extra are dropped) and refused if it is in the system: space.
//
// Nothing is fetched until an issuer's first token: that token starts the
// issuer's discovery and waits for it at most DiscoveryWait. An issuer that
// cannot be reached fails only its own tokens, at once after its first
// failed attempt, and is retried in the background every 10 s. Keys are
// fetched again when a token names a key ID not seen yet, so issuers may
// rotate keys without a restart.
type JWT struct {
	issuers map[string]*issuer
	ctx     context.Context
	cancel  context.CancelFunc
	wait    time.Duration
}

type issuer struct {
	cfg  JWTAuthenticatorConfig
	opts oidc.Options

	mu      sync.Mutex
	auth    oidc.AuthenticatorTokenWithHealthCheck
	initial string // auth's health error before its first discovery attempt
	started time.Time
}

// staticCA is the PEM of an issuer's CA.
type staticCA []byte

func (c staticCA) CurrentCABundleContent() []byte { return c }

// NewJWT validates cfgs and builds the authenticator; it does not contact
// any issuer. Close it when done (an unreachable JWT is also closed by the
// garbage collector).
func NewJWT(cfgs []JWTAuthenticatorConfig) (*JWT, error) {
	if errs := ValidateJWT("jwt", cfgs); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	ctx, cancel := context.WithCancel(context.Background())
	j := &JWT{issuers: map[string]*issuer{}, ctx: ctx, cancel: cancel, wait: DiscoveryWait}
	for i := range cfgs {
		c := cfgs[i]
		up, err := c.upstream(true)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("jwt[%d].%w", i, err)
		}
		opts := oidc.Options{JWTAuthenticator: up, Compiler: celCompiler(), SupportedSigningAlgs: oidc.AllValidSigningAlgorithms()}
		if up.Issuer.CertificateAuthority != "" {
			opts.CAContentProvider = staticCA(up.Issuer.CertificateAuthority)
		}
		j.issuers[issuerKey(up.Issuer.URL)] = &issuer{cfg: c, opts: opts}
	}
	// The issuers' background work ends with ctx; whoever drops a JWT
	// without Close (a config reload) still ends it.
	runtime.AddCleanup(j, func(cancel context.CancelFunc) { cancel() }, cancel)
	return j, nil
}

// Close stops the issuers' background discovery and key fetches.
func (j *JWT) Close() { j.cancel() }

// issuerKey is how a token's iss finds its issuer: exactly, except
// Google's legacy iss, as kube-apiserver does.
func issuerKey(iss string) string {
	if iss == "accounts.google.com" {
		return "https://accounts.google.com"
	}
	return iss
}

// LooksLikeJWT reports whether token has the three dot-separated parts of
// a JWS compact serialization.
func LooksLikeJWT(token string) bool { return strings.Count(token, ".") == 2 }

// unverifiedIssuer reads the iss claim without checking anything, only to
// choose which issuer verifies the token.
func unverifiedIssuer(token string) (string, error) {
	payload, err := jwtPayload(token)
	if err != nil {
		return "", err
	}
	var c struct {
		Iss string `json:"iss"`
	}
	if err := json.Unmarshal(payload, &c); err != nil || c.Iss == "" {
		return "", errors.New("token has no iss claim")
	}
	return c.Iss, nil
}

// authenticator returns the issuer's upstream authenticator, built (and
// its discovery started) on first use.
func (is *issuer) authenticator(ctx context.Context) (oidc.AuthenticatorTokenWithHealthCheck, string, time.Time, error) {
	is.mu.Lock()
	defer is.mu.Unlock()
	if is.auth == nil {
		a, err := oidc.New(ctx, is.opts)
		if err != nil {
			return nil, "", time.Time{}, err
		}
		is.auth, is.started = a, time.Now()
		if err := a.HealthCheck(); err != nil {
			is.initial = err.Error()
		}
	}
	return is.auth, is.initial, is.started, nil
}

// ready waits until a's first discovery has succeeded or failed, at most
// until started+wait.
func (j *JWT) ready(ctx context.Context, is *issuer, a oidc.AuthenticatorTokenWithHealthCheck, initial string, started time.Time) error {
	deadline := started.Add(j.wait)
	for delay := 5 * time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
		err := a.HealthCheck()
		switch {
		case err == nil:
			return nil
		case err.Error() != initial || !time.Now().Before(deadline):
			return fmt.Errorf("%w (%s): %v", ErrIssuerDown, is.opts.JWTAuthenticator.Issuer.URL, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (%s): %v", ErrIssuerDown, is.opts.JWTAuthenticator.Issuer.URL, ctx.Err())
		case <-time.After(delay):
		}
	}
}

// notYetDiscovered is the upstream error for a distributed claim whose
// source issuer's discovery (started by the first such claim) is not done.
const notYetDiscovered = "verifier not initialized for issuer"

// AuthenticateJWT verifies token and maps its claims to a user.
func (j *JWT) AuthenticateJWT(ctx context.Context, token string) (*User, error) {
	if len(token) > MaxTokenBytes {
		return nil, ErrTokenTooLarge
	}
	iss, err := unverifiedIssuer(token)
	if err != nil {
		return nil, err
	}
	is := j.issuers[issuerKey(iss)]
	if is == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownIssuer, iss)
	}
	a, initial, started, err := is.authenticator(j.ctx)
	if err != nil {
		return nil, err
	}
	if err := j.ready(ctx, is, a, initial, started); err != nil {
		return nil, err
	}
	resp, ok, err := a.AuthenticateToken(ctx, token)
	// The first distributed claim from a source issuer starts that issuer's
	// discovery and fails; wait for it, as for the token's own issuer.
	deadline := time.Now().Add(j.wait)
	for delay := 5 * time.Millisecond; err != nil && strings.Contains(err.Error(), notYetDiscovered) && time.Now().Before(deadline); delay = min(2*delay, 100*time.Millisecond) {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("token not valid: %v", err)
		case <-time.After(delay):
		}
		resp, ok, err = a.AuthenticateToken(ctx, token)
	}
	if err != nil {
		return nil, fmt.Errorf("token not valid: %v", err)
	}
	if !ok || resp == nil || resp.User == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownIssuer, iss)
	}
	u := &User{Name: resp.User.GetName(), Groups: resp.User.GetGroups()}
	if err := ValidateIdentity(u.Name, u.Groups); err != nil {
		return nil, err
	}
	return u, nil
}

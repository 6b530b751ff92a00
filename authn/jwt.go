package authn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
)

// JWTAuthenticatorConfig is one trusted issuer. Its shape follows the jwt
// entries of Kubernetes' structured authentication configuration
// (apiserver.config.k8s.io AuthenticationConfiguration), without CEL, plus
// claimRules for CI tokens and login settings for generated kubeconfigs.
type JWTAuthenticatorConfig struct {
	Issuer               Issuer                `json:"issuer"`
	ClaimValidationRules []ClaimValidationRule `json:"claimValidationRules,omitempty"`
	ClaimMappings        ClaimMappings         `json:"claimMappings"`
	// ClaimRules add groups to tokens whose claims all match, e.g.
	// repository acme/deploy on refs/heads/main → group deployers.
	ClaimRules []ClaimRule `json:"claimRules,omitempty"`
	// Login is what a generated kubeconfig tells kubelogin.
	Login *Login `json:"login,omitempty"`
}

// Issuer names the issuer and the audiences a token must carry (one of).
type Issuer struct {
	URL       string   `json:"url"`
	Audiences []string `json:"audiences"`
	// DiscoveryURL overrides {url}/.well-known/openid-configuration.
	DiscoveryURL string `json:"discoveryURL,omitempty"`
	// CertificateAuthority is PEM to trust for the issuer (inline, as in
	// Kubernetes); CertificateAuthorityFile reads it from a file instead.
	CertificateAuthority     string `json:"certificateAuthority,omitempty"`
	CertificateAuthorityFile string `json:"certificateAuthorityFile,omitempty"`
}

// ClaimValidationRule requires claim to equal requiredValue.
type ClaimValidationRule struct {
	Claim         string `json:"claim"`
	RequiredValue string `json:"requiredValue"`
}

// ClaimMappings turn claims into a user name and groups.
type ClaimMappings struct {
	Username PrefixedClaim  `json:"username"`
	Groups   *PrefixedClaim `json:"groups,omitempty"`
}

// PrefixedClaim names a claim and the prefix put before its values.
type PrefixedClaim struct {
	Claim  string `json:"claim"`
	Prefix string `json:"prefix"`
}

// ClaimRule adds Groups when every claim in Match has the given value
// (numbers and booleans compare by their JSON text).
type ClaimRule struct {
	Match  map[string]string `json:"match"`
	Groups []string          `json:"groups"`
}

// Login configures kubelogin in generated kubeconfigs.
type Login struct {
	ClientID     string   `json:"clientID"`
	ClientSecret string   `json:"clientSecret,omitempty"`
	ExtraScopes  []string `json:"extraScopes,omitempty"`
}

// Validate reports every problem of c, naming keys under path.
func (c *JWTAuthenticatorConfig) Validate(path string) []error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(path+"."+format, a...)) }
	if u, err := url.Parse(c.Issuer.URL); err != nil || u.Scheme != "https" || u.Host == "" {
		add("issuer.url: %q must be an https:// URL (the exact iss of the tokens)", c.Issuer.URL)
	}
	if len(c.Issuer.Audiences) == 0 {
		add("issuer.audiences: list at least one audience the tokens must carry, e.g. the OIDC client ID")
	}
	if c.Issuer.CertificateAuthority != "" && c.Issuer.CertificateAuthorityFile != "" {
		add("issuer.certificateAuthority and issuer.certificateAuthorityFile: give one of them")
	}
	if c.ClaimMappings.Username.Claim == "" {
		add("claimMappings.username.claim: name the claim that holds the user name, e.g. email or sub")
	}
	if g := c.ClaimMappings.Groups; g != nil && g.Claim == "" {
		add("claimMappings.groups.claim: name the claim that holds the groups, or remove groups")
	}
	if strings.HasPrefix(c.ClaimMappings.Username.Prefix, "system:") {
		add("claimMappings.username.prefix: %q is in the reserved system: space", c.ClaimMappings.Username.Prefix)
	}
	if g := c.ClaimMappings.Groups; g != nil && strings.HasPrefix(g.Prefix, "system:") {
		add("claimMappings.groups.prefix: %q is in the reserved system: space", g.Prefix)
	}
	for i, r := range c.ClaimValidationRules {
		if r.Claim == "" {
			add("claimValidationRules[%d].claim: must not be empty", i)
		}
	}
	for i, r := range c.ClaimRules {
		if len(r.Match) == 0 || len(r.Groups) == 0 {
			add("claimRules[%d]: needs match (claim: value) and groups", i)
		}
		for _, g := range r.Groups {
			if g == "" || strings.HasPrefix(g, "system:") {
				add("claimRules[%d].groups: %q is empty or in the reserved system: space", i, g)
			}
		}
	}
	if c.Login != nil && c.Login.ClientID == "" {
		add("login.clientID: the OIDC client kubelogin uses (usually one of issuer.audiences)")
	}
	return errs
}

// MaxTokenBytes bounds a bearer token; larger ones are refused unread.
const MaxTokenBytes = 16 << 10

// Errors of JWT authentication. Messages are meant for the caller.
var (
	ErrUnknownIssuer = errors.New("token issuer is not trusted by this gateway")
	ErrTokenTooLarge = errors.New("token is larger than 16 KiB")
	ErrIssuerDown    = errors.New("the token's issuer cannot be reached to check the token")
)

// JWT authenticates ID tokens from several issuers. Each issuer's
// discovery happens on first use and is retried after a failure (at most
// every retryAfter), so an issuer that is down only fails its own tokens.
// go-oidc re-fetches an issuer's keys when a token names an unknown key, so
// rotated keys work without a restart.
type JWT struct {
	issuers map[string]*issuer
	now     func() time.Time
}

type issuer struct {
	cfg        JWTAuthenticatorConfig
	client     *http.Client
	retryAfter time.Duration

	mu       sync.Mutex
	verifier *oidc.IDTokenVerifier
	lastErr  error
	lastTry  time.Time
}

// NewJWT builds the authenticator; it does not contact any issuer.
func NewJWT(cfgs []JWTAuthenticatorConfig) (*JWT, error) {
	j := &JWT{issuers: map[string]*issuer{}, now: time.Now}
	for i, c := range cfgs {
		if errs := c.Validate(fmt.Sprintf("jwt[%d]", i)); len(errs) > 0 {
			return nil, errors.Join(errs...)
		}
		if _, dup := j.issuers[c.Issuer.URL]; dup {
			return nil, fmt.Errorf("jwt[%d].issuer.url: %q is listed twice", i, c.Issuer.URL)
		}
		client, err := issuerClient(c.Issuer)
		if err != nil {
			return nil, fmt.Errorf("jwt[%d].issuer: %w", i, err)
		}
		j.issuers[c.Issuer.URL] = &issuer{cfg: c, client: client, retryAfter: 10 * time.Second}
	}
	return j, nil
}

func issuerClient(is Issuer) (*http.Client, error) {
	pemData := []byte(is.CertificateAuthority)
	if is.CertificateAuthorityFile != "" {
		b, err := os.ReadFile(is.CertificateAuthorityFile)
		if err != nil {
			return nil, fmt.Errorf("certificateAuthorityFile: %w", err)
		}
		pemData = b
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if len(pemData) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemData) {
			return nil, errors.New("certificateAuthority: no PEM certificate in it")
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}, nil
}

// LooksLikeJWT reports whether token has the three dot-separated parts of
// a JWS compact serialization.
func LooksLikeJWT(token string) bool { return strings.Count(token, ".") == 2 }

// unverifiedIssuer reads the iss claim without checking anything, only to
// choose which issuer's keys verify the token.
func unverifiedIssuer(token string) (string, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return "", errors.New("malformed token")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", errors.New("malformed token payload")
	}
	var c struct {
		Iss string `json:"iss"`
	}
	if err := json.Unmarshal(payload, &c); err != nil || c.Iss == "" {
		return "", errors.New("token has no iss claim")
	}
	return c.Iss, nil
}

func (is *issuer) getVerifier(ctx context.Context, now time.Time) (*oidc.IDTokenVerifier, error) {
	is.mu.Lock()
	defer is.mu.Unlock()
	if is.verifier != nil {
		return is.verifier, nil
	}
	if is.lastErr != nil && now.Sub(is.lastTry) < is.retryAfter {
		return nil, is.lastErr
	}
	is.lastTry = now
	dctx, cancel := context.WithTimeout(oidc.ClientContext(ctx, is.client), 10*time.Second)
	defer cancel()
	if is.cfg.Issuer.DiscoveryURL != "" {
		dctx = oidc.InsecureIssuerURLContext(dctx, is.cfg.Issuer.URL)
	}
	discovery := is.cfg.Issuer.URL
	if is.cfg.Issuer.DiscoveryURL != "" {
		discovery = strings.TrimSuffix(is.cfg.Issuer.DiscoveryURL, "/.well-known/openid-configuration")
	}
	p, err := oidc.NewProvider(dctx, discovery)
	if err != nil {
		is.lastErr = fmt.Errorf("%w (%s): %v", ErrIssuerDown, is.cfg.Issuer.URL, err)
		return nil, is.lastErr
	}
	// Keys are fetched with the issuer's own client, also later on rotation.
	keyCtx := oidc.ClientContext(context.Background(), is.client)
	var claims struct {
		JWKSURL string `json:"jwks_uri"`
	}
	if err := p.Claims(&claims); err != nil || claims.JWKSURL == "" {
		is.lastErr = fmt.Errorf("%w (%s): discovery has no jwks_uri", ErrIssuerDown, is.cfg.Issuer.URL)
		return nil, is.lastErr
	}
	keys := oidc.NewRemoteKeySet(keyCtx, claims.JWKSURL)
	is.verifier = oidc.NewVerifier(is.cfg.Issuer.URL, keys, &oidc.Config{SkipClientIDCheck: true, Now: time.Now})
	is.lastErr = nil
	return is.verifier, nil
}

// AuthenticateJWT verifies token and maps its claims to a user.
func (j *JWT) AuthenticateJWT(ctx context.Context, token string) (*User, error) {
	if len(token) > MaxTokenBytes {
		return nil, ErrTokenTooLarge
	}
	iss, err := unverifiedIssuer(token)
	if err != nil {
		return nil, err
	}
	is := j.issuers[iss]
	if is == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownIssuer, iss)
	}
	v, err := is.getVerifier(ctx, j.now())
	if err != nil {
		return nil, err
	}
	idt, err := v.Verify(ctx, token)
	if err != nil {
		return nil, fmt.Errorf("token not valid: %v", err)
	}
	if !slices.ContainsFunc(idt.Audience, func(a string) bool { return slices.Contains(is.cfg.Issuer.Audiences, a) }) {
		return nil, fmt.Errorf("token audience %q is not one of %q", idt.Audience, is.cfg.Issuer.Audiences)
	}
	var claims map[string]json.RawMessage
	if err := idt.Claims(&claims); err != nil {
		return nil, fmt.Errorf("token claims: %v", err)
	}
	return is.cfg.mapClaims(claims)
}

// claimString returns a claim as text: strings as they are, numbers and
// booleans as their JSON text.
func claimString(raw json.RawMessage) (string, bool) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, true
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		return n.String(), true
	}
	var b bool
	if json.Unmarshal(raw, &b) == nil {
		return strconv.FormatBool(b), true
	}
	return "", false
}

func (c *JWTAuthenticatorConfig) mapClaims(claims map[string]json.RawMessage) (*User, error) {
	for _, r := range c.ClaimValidationRules {
		v, ok := claimString(claims[r.Claim])
		if !ok || v != r.RequiredValue {
			return nil, fmt.Errorf("claim %q must be %q", r.Claim, r.RequiredValue)
		}
	}
	um := c.ClaimMappings.Username
	name, ok := claimString(claims[um.Claim])
	if !ok || name == "" {
		return nil, fmt.Errorf("token has no %q claim for the user name", um.Claim)
	}
	if um.Claim == "email" {
		// As Kubernetes does: an email is a user name only if verified.
		if raw, has := claims["email_verified"]; has {
			if v, _ := claimString(raw); v != "true" {
				return nil, errors.New("the token's email is not verified")
			}
		}
	}
	u := &User{Name: um.Prefix + name}
	if gm := c.ClaimMappings.Groups; gm != nil {
		if raw, has := claims[gm.Claim]; has {
			var list []string
			if err := json.Unmarshal(raw, &list); err != nil {
				var one string
				if err := json.Unmarshal(raw, &one); err != nil {
					return nil, fmt.Errorf("claim %q must be a string or a list of strings", gm.Claim)
				}
				list = []string{one}
			}
			for _, g := range list {
				u.Groups = append(u.Groups, gm.Prefix+g)
			}
		}
	}
	for _, r := range c.ClaimRules {
		all := true
		for k, want := range r.Match {
			if v, ok := claimString(claims[k]); !ok || v != want {
				all = false
				break
			}
		}
		if all {
			u.Groups = append(u.Groups, r.Groups...)
		}
	}
	if err := ValidateIdentity(u.Name, u.Groups); err != nil {
		return nil, err
	}
	return u, nil
}

// Issuers returns the configured issuers (for kubeconfig generation).
func (j *JWT) Issuers() []JWTAuthenticatorConfig {
	out := make([]JWTAuthenticatorConfig, 0, len(j.issuers))
	for _, is := range j.issuers {
		out = append(out, is.cfg)
	}
	slices.SortFunc(out, func(a, b JWTAuthenticatorConfig) int { return strings.Compare(a.Issuer.URL, b.Issuer.URL) })
	return out
}

package web

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"

	"github.com/keyhole-dev/keyhole/audit"
	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/internal/origin"
	"github.com/keyhole-dev/keyhole/proxy"
	"golang.org/x/sync/singleflight"
)

// Login is an issuer people may sign in with from a browser: an
// authentication.jwt entry with login.browser, its defaults filled and its
// files read (LoginsFrom).
type Login struct {
	// ID names the login in URLs (/keyhole/login?issuer=ID), cookies and
	// records: IssuerID(IssuerURL).
	ID string
	// Name labels the sign-in button.
	Name      string
	IssuerURL string
	ClientID  string
	// ClientSecret is a confidential client's secret; "" for a public
	// client (PKCE alone).
	ClientSecret string
	Scopes       []string
	// CAPEM, when set, is the only CA the issuer's HTTPS is trusted with
	// (issuer.certificateAuthority); otherwise the system's roots.
	CAPEM []byte
}

// Logins lists the issuers with a browser login as the configuration
// stands now (it may be reloaded).
type Logins interface {
	BrowserLogins() []Login
}

// StaticLogins is a fixed list of logins.
type StaticLogins []Login

// BrowserLogins returns l.
func (l StaticLogins) BrowserLogins() []Login { return l }

// IssuerID is the ID of the login of the issuer at issuerURL: 12 hex
// digits of its SHA-256, short enough for cookies and stable across
// replicas and restarts.
func IssuerID(issuerURL string) string {
	sum := sha256.Sum256([]byte(issuerURL))
	return hex.EncodeToString(sum[:6])
}

// LoginsFrom returns the browser logins of an authentication.jwt list:
// the entries with login.browser, with their defaults (see
// authn.JWTAuthenticatorConfig.BrowserLogin), the client secret read from
// clientSecretFile and the issuer's CA from certificateAuthority(File).
// Errors name the key, as config validation does, under path (e.g.
// "authentication.jwt").
func LoginsFrom(path string, cfgs []authn.JWTAuthenticatorConfig) ([]Login, error) {
	var out []Login
	var errs []error
	for i := range cfgs {
		c := &cfgs[i]
		b, ok := c.BrowserLogin()
		if !ok {
			continue
		}
		l := Login{ID: IssuerID(c.Issuer.URL), Name: b.Name, IssuerURL: c.Issuer.URL, ClientID: b.ClientID, Scopes: b.Scopes}
		if f := b.ClientSecretFile; f != "" {
			secret, err := os.ReadFile(f)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s[%d].login.browser.clientSecretFile: %w", path, i, err))
			}
			l.ClientSecret = strings.TrimSpace(string(secret))
			if err == nil && l.ClientSecret == "" {
				errs = append(errs, fmt.Errorf("%s[%d].login.browser.clientSecretFile: %s is empty; write the client secret in it, or remove the key for a public client", path, i, f))
			}
		}
		switch {
		case c.Issuer.CertificateAuthority != "":
			l.CAPEM = []byte(c.Issuer.CertificateAuthority)
		case c.Issuer.CertificateAuthorityFile != "":
			ca, err := os.ReadFile(c.Issuer.CertificateAuthorityFile)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s[%d].issuer.certificateAuthorityFile: %w", path, i, err))
			}
			l.CAPEM = ca
		}
		out = append(out, l)
	}
	return out, errors.Join(errs...)
}

// Config configures browser sessions.
type Config struct {
	// PublicURL is the stub's public URL: its origin is the only one
	// allowed to use a session, and the IdP redirects to PublicURL +
	// CallbackPath.
	PublicURL string
	// ReplicaID names this replica in refresh leases (any string; "" is
	// fine for one stub).
	ReplicaID string
	// MaxAge is a session's absolute lifetime, IdleTimeout how long it
	// may go unused (browser.sessionMaxAge, browser.sessionIdleTimeout).
	MaxAge, IdleTimeout time.Duration
	// Logins are the issuers with login.browser, as configured now.
	Logins Logins
	// Auth is the authenticator bearer tokens go through: a session's ID
	// token passes it at sign-in and at each refresh.
	Auth proxy.Authenticator
	// Store holds session records and sealing keys.
	Store Store
	// Clusters lists, for the landing page, the clusters user may reach
	// with token (as /keyhole/v1/clusters lists them). Nil: none shown.
	Clusters func(user *authn.User, token string) []proxy.ClusterStatus
	// Kubeconfig makes the kubeconfig `stub kubeconfig --oidc --issuer
	// issuerURL` prints, for the landing page's download (user and token
	// as Clusters). Nil: no download.
	Kubeconfig func(user *authn.User, token, issuerURL string) ([]byte, error)
	// Audit receives the Events of sign-in, refused sign-in, refresh
	// failure and sign-out (nil: none).
	Audit  audit.Sink
	Logger *zap.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Paths served by Routes.
const (
	LoginPath      = "/keyhole/login"
	CallbackPath   = "/keyhole/callback"
	LogoutPath     = "/keyhole/logout"
	KubeconfigPath = "/keyhole/kubeconfig"
	AssetsPath     = "/keyhole/assets/"
)

// Cookie names. A login cookie's name ends in the first 16 characters
// of its state, so parallel sign-ins (two tabs) do not overwrite each
// other.
const (
	SessionCookie     = "__Host-keyhole"
	loginCookiePrefix = "__Host-keyhole-login-"
)

// Sessions signs browsers in and keeps their sessions. It implements
// proxy.BrowserSessions.
type Sessions struct {
	cfg    Config
	log    *zap.Logger
	origin string
	sealer *sealer
	holder string // this Sessions' name in refresh leases

	flight singleflight.Group // refreshes in progress, by record name

	mu        sync.Mutex
	providers map[string]*provider // by issuer URL and CA

	// pollEvery is how often a refresh waiting for another replica's
	// lease looks again; leaseFor how long a lease is held at most.
	pollEvery, leaseFor, refreshFor time.Duration
}

var _ proxy.BrowserSessions = (*Sessions)(nil)

// New validates cfg and builds the sessions; it contacts no issuer.
func New(cfg Config) (*Sessions, error) {
	if cfg.Auth == nil || cfg.Store == nil || cfg.Logins == nil {
		return nil, errors.New("web: Config needs Auth, Store and Logins")
	}
	o, err := origin.Of(cfg.PublicURL)
	if err != nil {
		return nil, fmt.Errorf("web: Config.PublicURL: %w", err)
	}
	if u, _ := url.Parse(cfg.PublicURL); u.Scheme != "https" {
		// __Host- cookies are Secure: a browser never sends them over http.
		return nil, fmt.Errorf("web: Config.PublicURL %q must be https", cfg.PublicURL)
	}
	if cfg.MaxAge <= 0 || cfg.IdleTimeout <= 0 || cfg.IdleTimeout > cfg.MaxAge {
		return nil, fmt.Errorf("web: Config.MaxAge %v and IdleTimeout %v must be positive, idle at most max", cfg.MaxAge, cfg.IdleTimeout)
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.PublicURL = strings.TrimRight(cfg.PublicURL, "/")
	s := &Sessions{
		cfg: cfg, log: cfg.Logger, origin: o,
		sealer:    newSealer(cfg.Store, cfg.Now),
		holder:    cfg.ReplicaID + "/" + randomString(6),
		providers: map[string]*provider{},
		pollEvery: 250 * time.Millisecond, leaseFor: 20 * time.Second, refreshFor: 15 * time.Second,
	}
	return s, nil
}

// Close closes idle connections to the issuers.
func (s *Sessions) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.providers {
		p.client.CloseIdleConnections()
	}
}

// Routes registers the browser pages and sign-in endpoints on mux: GET /
// (the landing page), GET LoginPath, GET CallbackPath, POST LogoutPath,
// GET KubeconfigPath, GET AssetsPath, and the console: GET ConsolePath
// (and any path under it), GET ConsoleAssetsPath and GET SessionPath. (GET and HEAD of /
// only: other methods and paths stay with mux's catch-all.)
func (s *Sessions) Routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /{$}", s.serveHome)
	mux.HandleFunc("GET "+LoginPath, s.serveLogin)
	mux.HandleFunc("GET "+CallbackPath, s.serveCallback)
	mux.HandleFunc("POST "+LogoutPath, s.serveLogout)
	mux.HandleFunc("GET "+KubeconfigPath, s.serveKubeconfig)
	mux.Handle("GET "+AssetsPath, s.assets())
	console := s.serveConsole()
	mux.Handle("GET "+ConsolePath, console)
	mux.Handle("GET "+ConsolePath+"/", console)
	mux.HandleFunc("GET "+ConsoleAssetsPath, serveConsoleAssets)
	mux.HandleFunc("GET "+SessionPath, s.serveSessionInfo)
	// Browsers ask for /favicon.ico on every page load; without this route
	// it would be a cookie request refused (and audited) for lacking the
	// console header.
	mux.HandleFunc("GET /favicon.ico", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=86400")
		w.WriteHeader(http.StatusNoContent)
	})
}

// login finds the login called id as configured now.
func (s *Sessions) login(id string) (Login, bool) {
	for _, l := range s.cfg.Logins.BrowserLogins() {
		if l.ID == id {
			return l, true
		}
	}
	return Login{}, false
}

// event writes a browser Event (audit.BrowserEvent*) about r (nil for a
// refresh failure found by a recheck).
func (s *Sessions) event(r *http.Request, kind, auditID string, user *authn.User, code int, message string) {
	if s.cfg.Audit == nil {
		return
	}
	now := s.cfg.Now()
	ar := audit.Request{ID: randomString(8), Received: now, BrowserEvent: kind, BrowserSession: auditID}
	if r != nil {
		ar.SourceIP, ar.UserAgent, ar.Method, ar.Path = audit.SourceIP(r.RemoteAddr), r.UserAgent(), r.Method, r.URL.Path
	}
	if user != nil {
		ar.User, ar.Groups = user.Name, user.Groups
	}
	o := &audit.Outcome{Code: code, Message: message, Finished: now, Ended: audit.EndedComplete}
	if reason, ok := statusReasons[code]; ok {
		o.Reason = reason
	}
	ev := audit.NewEvent(ar, auditv1.StageResponseComplete, o)
	if err := s.cfg.Audit.Write(ev); err != nil {
		s.log.Error("audit record not written", zap.String("audit_id", string(ev.AuditID)), zap.Error(err))
	}
}

var statusReasons = map[int]string{
	http.StatusBadRequest: "BadRequest", http.StatusUnauthorized: "Unauthorized", http.StatusForbidden: "Forbidden",
	http.StatusServiceUnavailable: "ServiceUnavailable", http.StatusInternalServerError: "InternalError",
}

// randomString is n random bytes, hex-encoded.
func randomString(n int) string {
	return hex.EncodeToString(randomBytes(n))
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return b
}

package config

import (
	"cmp"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap/zapcore"
	"golang.org/x/net/publicsuffix"

	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/internal/logging"
	"github.com/keyhole-dev/keyhole/policy"
)

// Stub is the stub's configuration (kind StubConfig).
type Stub struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	// Listen is the address of the HTTPS port that kubectl and agents use.
	Listen string `json:"listen"`
	// PublicURL is how kubectl and agents reach the stub; it goes into
	// generated kubeconfigs and agent manifests.
	PublicURL string `json:"publicURL"`
	// StateDir holds registered clusters, token hashes and the self-signed
	// CA of a first run. Default: keyhole under the user's state directory
	// (Env.StateHome, Env.Home).
	StateDir string     `json:"stateDir"`
	TLS      StubTLS    `json:"tls"`
	Tunnel   StubTunnel `json:"tunnel"`
	Log      Log        `json:"log"`
	// Authentication adds OIDC issuers to the static tokens of the state
	// directory. It and Policy are re-read when the file changes.
	Authentication Authentication `json:"authentication"`
	// Policy says who may reach which cluster. Absent: every authenticated
	// caller reaches every cluster (a warning is logged). Present, even
	// empty: denied unless a rule allows.
	Policy *[]policy.Rule `json:"policy,omitempty"`
	Audit  Audit          `json:"audit"`
	// Metrics serves Prometheus metrics on its own address (off when empty;
	// keep it off the public port: metrics name your clusters).
	Metrics Metrics `json:"metrics"`
	// Hub turns one stub into a set of replicas that share a hub cluster:
	// leader election with a Lease, shared state and certificates in
	// Secrets, replica discovery for agents. Off by default (one stub, state
	// on disk).
	Hub Hub `json:"hub"`
	// ShutdownTimeout bounds a graceful stop (SIGTERM): plain requests in
	// flight get this long to finish; watches, logs -f and exec, attach and
	// port-forward sessions are ended at once (cleanly), then agent
	// sessions close. Default 25s, inside Kubernetes' default 30 s grace
	// period.
	ShutdownTimeout Duration `json:"shutdownTimeout"`
	// ShutdownDelay keeps serving for this long after SIGTERM with /readyz
	// failing, so load balancers stop sending new work before the listener
	// closes. Default 0 (Kubernetes removes a terminating pod from its
	// Service endpoints by itself).
	ShutdownDelay Duration `json:"shutdownDelay"`
	// Streams keeps long-running requests (watches, logs -f, exec,
	// attach, port-forward) in check while they run.
	Streams Streams `json:"streams"`
	// Browser sets the lifetimes of browser sessions (sign-in through an
	// issuer's authentication.jwt[].login.browser; see docs/browser.md).
	Browser Browser `json:"browser"`
}

// Browser is the top-level browser: section: how long a browser session
// lasts. Every key is optional; Complete fills the defaults. Read at
// start-up only (a reload does not change running sessions).
type Browser struct {
	// SessionMaxAge is a session's absolute lifetime from sign-in,
	// whatever the refreshes: from 5m to 168h, default 12h.
	SessionMaxAge Duration `json:"sessionMaxAge,omitzero"`
	// SessionIdleTimeout ends a session not used for this long: from 5m
	// to sessionMaxAge, default 1h (or sessionMaxAge if shorter).
	SessionIdleTimeout Duration `json:"sessionIdleTimeout,omitzero"`
	// KeyRotation is how often a new key to seal session cookies is made
	// (older keys still open cookies until their sessions are over, so
	// rotation logs nobody out): from 1h to 2160h, default 168h.
	KeyRotation Duration `json:"keyRotation,omitzero"`
	// Apps serves in-cluster web UIs (a Service's port, through the API
	// server's services/proxy) to signed-in browsers, each on an origin of
	// its own under Apps.Domain (docs/console-apps.md). Off when absent.
	Apps *BrowserApps `json:"apps,omitempty"`
}

// BrowserApps is the browser.apps section: where in-cluster web UIs are
// served. Each app (a cluster, namespace, Service and port) gets the host
// <label>.<domain> on publicURL's port; a wildcard DNS record for
// *.<domain> must point at the stub, and its certificate must cover
// *.<domain>.
type BrowserApps struct {
	// Domain is the wildcard's parent, e.g. "apps.example-apps.net":
	// under a registrable domain other than publicURL's host's (another
	// site), unless AllowSameSite.
	Domain string `json:"domain"`
	// AllowSameSite accepts a Domain under the same registrable domain as
	// publicURL (e.g. apps.example.com beside keyhole.example.com). Weaker:
	// SameSite cookies no longer separate the console from the apps, and
	// an app's page may set cookies for the console's host (cookie
	// tossing). The console's own checks still refuse every request from
	// an app's page, but one layer is gone.
	AllowSameSite bool `json:"allowSameSite"`
	// CertFile and KeyFile are a certificate for *.<domain> served to app
	// hosts (by SNI), picked up again when renewed. Needed with tls.acme
	// (ACME issues a wildcard only through DNS-01, which the stub does not
	// do); otherwise optional: without them app hosts get the stub's own
	// certificate, which must then cover *.<domain> (the self-signed one
	// does by default).
	CertFile string `json:"certFile"`
	KeyFile  string `json:"keyFile"`
}

// Wildcard is the name the certificate of app hosts must cover.
func (a BrowserApps) Wildcard() string { return "*." + a.Domain }

// Defaults and bounds of the browser: section.
const (
	DefaultSessionMaxAge      = 12 * time.Hour
	DefaultSessionIdleTimeout = time.Hour
	DefaultKeyRotation        = 168 * time.Hour
)

// Streams says how the stub re-admits long-running requests while they
// run, so that one lives only as long as the credential and the policy
// that admitted it (see docs/security.md, "Streams and credentials").
type Streams struct {
	// RecheckInterval is how often the caller's credential is
	// authenticated again and the policy asked again; a revoked token, a
	// removed user or a policy change ends open streams within it. From 1s
	// to 5m; 0 means proxy.DefaultRecheckInterval (5s).
	RecheckInterval Duration `json:"recheckInterval"`
	// CredentialExpiry is "end" (the default when empty): a stream ends
	// when the credential that opened it expires, as kube-apiserver would
	// refuse the next request; or "keep": it runs on (revocation, removal
	// and policy changes still end it).
	CredentialExpiry string `json:"credentialExpiry"`
}

// Stream credential expiry choices (streams.credentialExpiry).
const (
	CredentialExpiryEnd  = "end"
	CredentialExpiryKeep = "keep"
)

// Hub is the Kubernetes cluster the stub replicas run in (the "hub").
type Hub struct {
	Enabled bool `json:"enabled"`
	// Kubeconfig reaches the hub's API server; empty means in-cluster (the
	// pod's ServiceAccount).
	Kubeconfig string `json:"kubeconfig"`
	// Namespace holds the Leases and Secrets; empty means the pod's own
	// namespace (Env.PodNamespace, else Env.ServiceAccountNamespace).
	Namespace string `json:"namespace"`
	// ReplicaID names this replica; empty means the host name (the pod name).
	ReplicaID string `json:"replicaID"`
	// Leader election timing (client-go leaderelection). A crashed leader is
	// replaced within LeaseDuration + RetryPeriod. Zero or unset: ha's
	// defaults (ha.DefaultLeaseDuration 15s, DefaultRenewDeadline 10s,
	// DefaultRetryPeriod 2s); ha.NewElector checks the completed timing.
	LeaseDuration Duration `json:"leaseDuration,omitzero"`
	RenewDeadline Duration `json:"renewDeadline,omitzero"`
	RetryPeriod   Duration `json:"retryPeriod,omitzero"`
}

// Metrics says where /metrics is served, e.g. "127.0.0.1:9090" or ":9090".
type Metrics struct {
	Listen string `json:"listen"`
}

// Authentication lists trusted OIDC issuers: the jwt list of Kubernetes'
// AuthenticationConfiguration, with its meaning (see authn.JWTAuthenticatorConfig).
type Authentication struct {
	JWT []authn.JWTAuthenticatorConfig `json:"jwt,omitempty"`
}

// Audit says where audit records (audit.k8s.io/v1 Events, JSON lines) go:
// a file path, "-" for stdout, or "" for nowhere.
type Audit struct {
	Path string `json:"path"`
}

// StubTLS chooses the serving certificate: an operator-supplied pair, one
// from an ACME CA (ACME), or a self-signed one (CA in the state directory)
// for Hosts.
type StubTLS struct {
	CertFile string   `json:"certFile"`
	KeyFile  string   `json:"keyFile"`
	Hosts    []string `json:"hosts"`
	// ACME obtains and renews the certificate from an ACME CA (Let's
	// Encrypt by default) for Hosts, or for publicURL's host when Hosts is
	// not given. Excludes CertFile/KeyFile. With hub.enabled, certificates
	// and locks live in Secrets in hub.namespace (replicas order once);
	// otherwise in stateDir/acme.
	ACME *ACME `json:"acme,omitempty"`
}

// ACME configures certificates from an ACME CA (see docs/tls.md).
type ACME struct {
	// Email is the ACME account's contact (expiry notices); may be empty.
	Email string `json:"email"`
	// DirectoryURL is the CA's ACME directory (default: Let's Encrypt
	// production).
	DirectoryURL string `json:"directoryURL"`
	// CAFile adds PEM roots to trust for the ACME server's own HTTPS (a
	// private ACME CA, Pebble in tests).
	CAFile string `json:"caFile"`
	// Challenge is "tls-alpn-01" (default: answered on listen, which must
	// be reachable on port 443) or "http-01" (answered on HTTPListen, which
	// must be reachable on port 80).
	Challenge string `json:"challenge"`
	// HTTPListen is where http-01 challenges are answered (default ":80").
	HTTPListen string `json:"httpListen"`
	// AgreeTOS must be true: it accepts the CA's terms of service.
	AgreeTOS bool `json:"agreeTOS"`
	// RenewCheckInterval is how often certificates are checked for
	// renewal (default 10m).
	RenewCheckInterval Duration `json:"renewCheckInterval"`
	// Domains are the names the certificate is for (set by Complete from
	// tls.hosts or publicURL; not a config key).
	Domains []string `json:"-"`
}

// ACME defaults, applied by Complete (certs.StartACME takes every value
// explicitly, so this package owns them).
const (
	// LetsEncryptDirectory is the default tls.acme.directoryURL.
	LetsEncryptDirectory      = "https://acme-v02.api.letsencrypt.org/directory"
	DefaultACMEChallenge      = "tls-alpn-01"
	DefaultACMEHTTPListen     = ":80" // with challenge http-01
	DefaultRenewCheckInterval = 10 * time.Minute
)

// Tunnel tunes keepalive on agent sessions (the agent's tunnel section,
// and part of the stub's). A session whose peer vanished closes within
// KeepAliveInterval + KeepAliveTimeout. Zero or unset: the tunnel
// package's defaults (tunnel.DefaultKeepAliveInterval and
// DefaultKeepAliveTimeout, 5s each).
type Tunnel struct {
	KeepAliveInterval Duration `json:"keepAliveInterval,omitzero"`
	KeepAliveTimeout  Duration `json:"keepAliveTimeout,omitzero"`
}

// StubTunnel is the stub's tunnel section: keepalive as Tunnel, plus the
// stub's overload limits. An agent over a limit is told to come back later
// (503 with a random Retry-After of 5-30 s), so a refused fleet returns
// spread out.
type StubTunnel struct {
	Tunnel
	// MaxSessions is how many agent sessions this stub holds at most.
	// Zero or unset: tunnel.DefaultMaxSessions (10000).
	MaxSessions int `json:"maxSessions,omitzero"`
	// MaxHandshakesPerSecond bounds new agent sessions a second (a
	// token bucket with a burst of one second's worth); 0, the default,
	// means no bound beyond 64 handshakes in progress at once.
	MaxHandshakesPerSecond int `json:"maxHandshakesPerSecond"`
}

// Log sets how the binary logs to stderr.
type Log struct {
	// Level is the lowest level written: debug, info, warn or error.
	Level string `json:"level"`
	// Format is "json" (one JSON object per line, for log collectors),
	// "console" (one readable line per entry: time, level, logger,
	// message, then the fields as JSON), or empty: console when stderr
	// is a terminal, JSON otherwise. Both carry the same keys.
	Format string `json:"format"`
}

// DefaultStub returns the defaults this package owns: a single stub on
// :8443 with a self-signed certificate. Values that depend on the machine
// (stateDir) or on other keys (publicURL, tls.hosts) are filled by
// Complete; tunnel and hub timing stay zero, which their owners (tunnel,
// ha) read as their own defaults.
func DefaultStub() Stub {
	return Stub{
		APIVersion: APIVersion, Kind: "StubConfig",
		Listen:          ":8443",
		Log:             Log{Level: "info"},
		ShutdownTimeout: Duration{25 * time.Second},
	}
}

// LoadStub reads path ("" = defaults only) and parses it as ParseStub does.
func LoadStub(path string, env Env) (Stub, error) {
	data, err := readFile(path)
	if err != nil {
		return DefaultStub(), err
	}
	return ParseStub(path, data, env)
}

// ParseStub decodes data read from path (nil data: the defaults) over
// DefaultStub, completes it with env and validates it. The result depends
// only on its arguments.
func ParseStub(path string, data []byte, env Env) (Stub, error) {
	c := DefaultStub()
	if data != nil {
		if err := decode(path, data, "StubConfig", &c); err != nil {
			return c, err
		}
	}
	c.Complete(env)
	return c, invalid(path, c.Validate())
}

// Complete fills the values derived from other keys and from env: stateDir,
// publicURL (from listen; a trailing slash trimmed), the self-signed
// certificate's tls.hosts, tls.acme's defaults and domains, and with
// hub.enabled hub.replicaID and hub.namespace. It fills only what is empty
// and never fails: Validate judges the result.
func (c *Stub) Complete(env Env) {
	if c.StateDir == "" {
		switch {
		case env.StateHome != "":
			c.StateDir = filepath.Join(env.StateHome, "keyhole")
		case env.Home != "":
			c.StateDir = filepath.Join(env.Home, ".local", "state", "keyhole")
		default:
			c.StateDir = "keyhole-state"
		}
	}
	if host, port, err := net.SplitHostPort(c.Listen); c.PublicURL == "" && err == nil {
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "localhost"
		}
		c.PublicURL = "https://" + net.JoinHostPort(host, port)
	}
	c.PublicURL = strings.TrimRight(c.PublicURL, "/") // kubeconfigs append /clusters/…
	publicHost := ""
	if u, err := url.Parse(c.PublicURL); err == nil {
		publicHost = u.Hostname()
	}
	if a := c.TLS.ACME; a != nil {
		a.DirectoryURL = cmp.Or(a.DirectoryURL, LetsEncryptDirectory)
		a.Challenge = cmp.Or(a.Challenge, DefaultACMEChallenge)
		if a.Challenge == "http-01" && a.HTTPListen == "" {
			a.HTTPListen = DefaultACMEHTTPListen
		}
		if a.RenewCheckInterval.Duration == 0 {
			a.RenewCheckInterval.Duration = DefaultRenewCheckInterval
		}
		a.Domains = slices.Clone(c.TLS.Hosts)
		if len(a.Domains) == 0 && publicHost != "" {
			a.Domains = []string{publicHost}
		}
	}
	if a := c.Browser.Apps; a != nil {
		a.Domain = strings.ToLower(strings.TrimSuffix(a.Domain, "."))
	}
	selfSigned := c.TLS.CertFile == "" && c.TLS.KeyFile == "" && c.TLS.ACME == nil
	if selfSigned && len(c.TLS.Hosts) == 0 {
		c.TLS.Hosts = []string{"localhost", "127.0.0.1", "::1"}
		if publicHost != "" && publicHost != "localhost" {
			c.TLS.Hosts = append(c.TLS.Hosts, publicHost)
		}
		if a := c.Browser.Apps; a != nil && a.CertFile == "" && a.Domain != "" {
			c.TLS.Hosts = append(c.TLS.Hosts, a.Wildcard()) // app hosts get the stub's own certificate
		}
	}
	{
		b := &c.Browser
		b.SessionMaxAge.Duration = cmp.Or(b.SessionMaxAge.Duration, DefaultSessionMaxAge)
		b.SessionIdleTimeout.Duration = cmp.Or(b.SessionIdleTimeout.Duration, min(DefaultSessionIdleTimeout, b.SessionMaxAge.Duration))
		b.KeyRotation.Duration = cmp.Or(b.KeyRotation.Duration, DefaultKeyRotation)
	}
	if h := &c.Hub; h.Enabled {
		h.ReplicaID = cmp.Or(h.ReplicaID, env.Hostname)
		h.Namespace = cmp.Or(h.Namespace, env.PodNamespace, env.ServiceAccountNamespace)
	}
}

// Validate checks a completed config (see Complete) and returns every
// problem found, joined; it changes nothing. Zero tunnel and hub timing
// values are their owners' defaults and are not checked here.
func (c Stub) Validate() error {
	var p problems
	_, port, err := net.SplitHostPort(c.Listen)
	if err != nil {
		p.addf("listen: %q is not host:port; write e.g. \":8443\" or \"127.0.0.1:8443\"", c.Listen)
	} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		p.addf("listen: port %q of %q is not a number from 0 to 65535", port, c.Listen)
	}
	if u, err := url.Parse(c.PublicURL); err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
		p.addf("publicURL: %q must be an https:// URL with a host and no path, e.g. \"https://keyhole.example.com\"", c.PublicURL)
	}
	if c.StateDir == "" {
		p.addf("stateDir: must not be empty; give a directory the stub may write, e.g. \"/var/lib/keyhole\"")
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		p.addf("tls.certFile %q / tls.keyFile %q: give both (an operator certificate) or neither (self-signed)", c.TLS.CertFile, c.TLS.KeyFile)
	}
	if c.TLS.CertFile != "" && len(c.TLS.Hosts) > 0 {
		p.addf("tls.hosts: only used for the self-signed certificate; remove it or remove tls.certFile/keyFile")
	}
	if c.TLS.ACME != nil {
		checkACME(&p, c.TLS)
	}
	checkTunnel(&p, c.Tunnel.Tunnel)
	checkLimits(&p, c.Tunnel)
	if d := c.ShutdownTimeout.Duration; d < time.Second || d > 10*time.Minute {
		p.addf("shutdownTimeout: %v must be from 1s to 10m (default 25s; keep it under the pod's terminationGracePeriodSeconds)", d)
	}
	if d := c.ShutdownDelay.Duration; d < 0 || d > 5*time.Minute {
		p.addf("shutdownDelay: %v must be from 0s to 5m (default 0s)", d)
	}
	if d := c.Streams.RecheckInterval.Duration; d != 0 && (d < time.Second || d > 5*time.Minute) {
		p.addf("streams.recheckInterval: %v must be from 1s to 5m (default 5s)", d)
	}
	switch c.Streams.CredentialExpiry {
	case "", CredentialExpiryEnd, CredentialExpiryKeep:
	default:
		p.addf("streams.credentialExpiry: %q must be %q (the default: a stream ends when its credential expires) or %q (it runs on)",
			c.Streams.CredentialExpiry, CredentialExpiryEnd, CredentialExpiryKeep)
	}
	checkBrowser(&p, c.Browser)
	if c.Browser.Apps != nil {
		checkApps(&p, c)
	}
	checkLog(&p, c.Log)
	if c.Metrics.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Metrics.Listen); err != nil {
			p.addf("metrics.listen: %q is not host:port; write e.g. \"127.0.0.1:9090\", or leave it empty for no metrics", c.Metrics.Listen)
		}
	}
	checkHub(&p, c.Hub)
	if c.Hub.Enabled && c.TLS.CertFile == "" && c.TLS.ACME == nil {
		// Each replica would make its own CA and agents pin one.
		p.addf("hub.enabled: replicas need one certificate: set tls.certFile/keyFile (e.g. a cert-manager Secret) or tls.acme; the self-signed default is for a single stub")
	}
	p = append(p, authn.ValidateJWT("authentication.jwt", c.Authentication.JWT)...)
	if c.Policy != nil {
		if _, err := policy.New(*c.Policy); err != nil {
			p = append(p, err)
		}
	}
	return p.err()
}

// BuildPolicy returns the configured policy, or the open one when the
// config has none. Its error is the one Validate reports.
func (c Stub) BuildPolicy() (*policy.Policy, error) {
	if c.Policy == nil {
		return policy.Open(), nil
	}
	return policy.New(*c.Policy)
}

func checkBrowser(p *problems, b Browser) {
	maxAge, idle := b.SessionMaxAge.Duration, b.SessionIdleTimeout.Duration
	if maxAge < 5*time.Minute || maxAge > 168*time.Hour {
		p.addf("browser.sessionMaxAge: %v must be from 5m to 168h (default 12h)", maxAge)
	}
	switch {
	case idle < 5*time.Minute:
		p.addf("browser.sessionIdleTimeout: %v must be at least 5m (default 1h)", idle)
	case idle > maxAge:
		p.addf("browser.sessionIdleTimeout: %v is longer than browser.sessionMaxAge %v; make it at most that (default 1h)", idle, maxAge)
	}
	if d := b.KeyRotation.Duration; d < time.Hour || d > 2160*time.Hour {
		p.addf("browser.keyRotation: %v must be from 1h to 2160h (default 168h)", d)
	}
}

func checkHub(p *problems, h Hub) {
	if !h.Enabled {
		return
	}
	if h.ReplicaID == "" || len(h.ReplicaID) > 40 || !replicaIDPattern.MatchString(h.ReplicaID) {
		p.addf("hub.replicaID: %q must be 1-40 lower-case letters, digits, '-' or '.' (default: the host name, i.e. the pod name)", h.ReplicaID)
	}
	if h.Namespace == "" {
		p.addf("hub.namespace: empty and not running in a pod; name the namespace holding the stub's Leases and Secrets, e.g. \"keyhole\"")
	}
	// The values given are checked here; ha.NewElector checks the timing
	// once its defaults fill the rest (with client-go's rules).
	const defaults = "leave a value out for ha's default: 15s, 10s, 2s"
	type timing struct {
		key string
		d   time.Duration
	}
	var given []timing
	for _, t := range []timing{{"leaseDuration", h.LeaseDuration.Duration}, {"renewDeadline", h.RenewDeadline.Duration}, {"retryPeriod", h.RetryPeriod.Duration}} {
		switch {
		case t.d < 0:
			p.addf("hub.%s: %v must not be negative (%s)", t.key, t.d, defaults)
		case t.d > 0:
			given = append(given, t)
		}
	}
	if d := h.LeaseDuration.Duration; d > 0 && d < time.Second {
		p.addf("hub.leaseDuration: %v is under 1s; Leases count whole seconds (%s)", d, defaults)
	}
	if d := h.RetryPeriod.Duration; d > 0 && d < 100*time.Millisecond {
		p.addf("hub.retryPeriod: %v is under 100ms (%s)", d, defaults)
	}
	for i := 1; i < len(given); i++ {
		if given[i-1].d <= given[i].d {
			var parts []string
			for _, t := range given {
				parts = append(parts, fmt.Sprintf("%s %v", t.key, t.d))
			}
			p.addf("hub: %s must hold, in this order (%s)", strings.Join(parts, " > "), defaults)
			break
		}
	}
}

// checkACME validates tls.acme (completed: defaults and domains filled).
func checkACME(p *problems, t StubTLS) {
	a := t.ACME
	if t.CertFile != "" || t.KeyFile != "" {
		p.addf("tls.acme: excludes tls.certFile %q / tls.keyFile %q; remove one: acme obtains the certificate itself", t.CertFile, t.KeyFile)
	}
	if !a.AgreeTOS {
		p.addf("tls.acme.agreeTOS: false; read the ACME CA's terms of service and set agreeTOS: true to accept them")
	}
	if u, err := url.Parse(a.DirectoryURL); err != nil || u.Scheme != "https" || u.Host == "" {
		p.addf("tls.acme.directoryURL: %q must be an https:// URL of an ACME directory, e.g. %q", a.DirectoryURL, LetsEncryptDirectory)
	}
	switch a.Challenge {
	case "tls-alpn-01", "http-01":
	default:
		p.addf("tls.acme.challenge: %q is not a challenge the stub answers; use \"tls-alpn-01\" (on listen) or \"http-01\" (on httpListen)", a.Challenge)
	}
	if a.HTTPListen != "" {
		if a.Challenge != "http-01" {
			p.addf("tls.acme.httpListen: %q is only used with challenge \"http-01\"; remove it or set challenge: http-01", a.HTTPListen)
		} else if _, _, err := net.SplitHostPort(a.HTTPListen); err != nil {
			p.addf("tls.acme.httpListen: %q is not host:port; write e.g. \":80\"", a.HTTPListen)
		}
	}
	if d := a.RenewCheckInterval.Duration; d < time.Second || d > 24*time.Hour {
		p.addf("tls.acme.renewCheckInterval: %v must be from 1s to 24h (default 10m)", d)
	}
	for _, d := range a.Domains {
		l := strings.ToLower(strings.TrimSuffix(d, "."))
		if net.ParseIP(l) != nil || l == "localhost" || strings.Contains(l, "*") || !strings.Contains(l, ".") ||
			strings.HasSuffix(l, ".localhost") || strings.HasSuffix(l, ".local") || strings.HasSuffix(l, ".internal") {
			p.addf("tls.acme: domain %q (from tls.hosts or publicURL) cannot get an ACME certificate; set publicURL (or tls.hosts) to the public DNS name of the stub, e.g. \"https://keyhole.example.com\"", d)
		}
	}
}

var replicaIDPattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$`)

// checkTunnel checks the keepalive values given; zero is the tunnel
// package's default.
func checkTunnel(p *problems, t Tunnel) {
	if d := t.KeepAliveInterval.Duration; d != 0 && d < 100*time.Millisecond {
		p.addf("tunnel.keepAliveInterval: %v is too short; use at least 100ms, or leave it out for the default (5s)", d)
	}
	if d := t.KeepAliveTimeout.Duration; d != 0 && d < 100*time.Millisecond {
		p.addf("tunnel.keepAliveTimeout: %v is too short; use at least 100ms, or leave it out for the default (5s)", d)
	}
}

func checkLimits(p *problems, t StubTunnel) {
	if t.MaxSessions < 0 || t.MaxSessions > 1000000 {
		p.addf("tunnel.maxSessions: %d must be from 1 to 1000000 agent sessions, or 0 for the default (10000)", t.MaxSessions)
	}
	if t.MaxHandshakesPerSecond < 0 || t.MaxHandshakesPerSecond > 100000 {
		p.addf("tunnel.maxHandshakesPerSecond: %d must be from 0 (no bound) to 100000", t.MaxHandshakesPerSecond)
	}
}

func checkLog(p *problems, l Log) {
	if _, err := zapcore.ParseLevel(l.Level); err != nil {
		p.addf("log.level: %q is not a level; use debug, info, warn or error", l.Level)
	}
	switch l.Format {
	case "", logging.FormatJSON, logging.FormatConsole:
	default:
		p.addf("log.format: %q is not a format; use json or console, or leave it out for console on a terminal and JSON otherwise", l.Format)
	}
}

// TLSDir is where the self-signed CA and certificate of a first run live,
// inside the state directory (whose other files package stub owns).
func (c Stub) TLSDir() string { return filepath.Join(c.StateDir, "tls") }

// checkApps checks browser.apps: a domain that can take a label in front,
// on another site than the console (unless allowSameSite), and a
// certificate that will cover its wildcard.
func checkApps(p *problems, c Stub) {
	a := c.Browser.Apps
	const fix = `e.g. "apps.example-apps.net", with a wildcard DNS record *.apps.example-apps.net pointing at the stub`
	if !validDomain(a.Domain) {
		p.addf("browser.apps.domain: %q must be a DNS name of at least two labels (lower-case letters, digits, '-'), at most %d characters, %s",
			a.Domain, MaxAppsDomainLength, fix)
		return
	}
	publicHost := ""
	if u, err := url.Parse(c.PublicURL); err == nil {
		publicHost = strings.ToLower(strings.TrimSuffix(u.Hostname(), "."))
	}
	if publicHost == a.Domain || strings.HasSuffix(publicHost, "."+a.Domain) {
		p.addf("browser.apps.domain: %q contains publicURL's host %q: the console would be served as an app; pick a domain the console is not under, %s", a.Domain, publicHost, fix)
	} else if site, same := SameSite(publicHost, a.Domain); same && !a.AllowSameSite {
		p.addf("browser.apps.domain: %q is the same site as publicURL's host %q (both under the registrable domain %q): SameSite cookies would not separate the apps from the console, and an app's page could set cookies for it; use a domain under another registrable domain, %s, or set browser.apps.allowSameSite: true to accept the weaker isolation (see docs/console-apps.md)",
			a.Domain, publicHost, site, fix)
	}
	if (a.CertFile == "") != (a.KeyFile == "") {
		p.addf("browser.apps.certFile %q / browser.apps.keyFile %q: give both (a certificate for %q) or neither (the stub's own certificate)", a.CertFile, a.KeyFile, a.Wildcard())
	}
	if a.CertFile != "" {
		return
	}
	switch {
	case c.TLS.ACME != nil:
		p.addf("browser.apps: with tls.acme the stub has no certificate for %q (an ACME CA issues a wildcard only through the DNS-01 challenge, which the stub does not answer); set browser.apps.certFile and keyFile to a certificate for %q, e.g. from cert-manager with a DNS-01 solver", a.Wildcard(), a.Wildcard())
	case c.TLS.CertFile == "" && !slices.Contains(c.TLS.Hosts, a.Wildcard()):
		p.addf("tls.hosts: %v does not include %q, which browser.apps.domain needs in the self-signed certificate; add it, or remove tls.hosts for the default (which includes it)", c.TLS.Hosts, a.Wildcard())
	}
}

// MaxAppsDomainLength leaves room in a 253-character host name for an
// app's label (32 characters) and its dot.
const MaxAppsDomainLength = 253 - 33

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func validDomain(d string) bool {
	if len(d) > MaxAppsDomainLength || net.ParseIP(d) != nil {
		return false
	}
	labels := strings.Split(d, ".")
	if len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if !dnsLabel.MatchString(l) {
			return false
		}
	}
	return true
}

// SameSite reports whether a browser takes host and the hosts under
// appsDomain for one site (the same registrable domain, by the Public
// Suffix List as golang.org/x/net/publicsuffix has it), and names that
// site. An IP address is a site of its own.
func SameSite(host, appsDomain string) (string, bool) {
	site := func(h string) string {
		if net.ParseIP(h) != nil {
			return h
		}
		s, err := publicsuffix.EffectiveTLDPlusOne(h)
		if err != nil {
			return h // a public suffix itself (or "localhost"): its own site
		}
		return s
	}
	s := site(host)
	return s, s == site("app."+appsDomain)
}

package stub

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/keyhole-dev/keyhole/audit"
	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/certs"
	"github.com/keyhole-dev/keyhole/config"
	"github.com/keyhole-dev/keyhole/ha"
	"github.com/keyhole-dev/keyhole/internal/kubestatus"
	"github.com/keyhole-dev/keyhole/proxy"
	"github.com/keyhole-dev/keyhole/tunnel"
	"github.com/keyhole-dev/keyhole/web"
)

// Options are what a Server takes besides its config.
type Options struct {
	// ConfigPath is the config file cfg came from; authentication and
	// policy are re-read from it when it changes. Empty: no reload.
	ConfigPath string
	// Parse turns the config file's new contents into a config on reload
	// (required with ConfigPath; cmd/stub passes config.ParseStub).
	Parse func(data []byte) (config.Stub, error)
	// Logger receives the stub's logs (default: none).
	Logger *zap.Logger
	// Version is reported in the start log line.
	Version string
	// Started, if set, is called once the stub serves, with where.
	Started func(Started)
}

// Started says where a stub serves: for the start banner.
type Started struct {
	Addr      net.Addr // the bound listener (listen may have said port 0)
	PublicURL string
	// TLS says where the serving certificate comes from.
	TLS string
}

// Server is the stub: the HTTPS port that kubectl and agents share, the
// tunnel server, the stub hop, health probes, metrics, and (with
// hub.enabled) its part in a set of replicas. New builds it; Run serves
// until its context ends and then stops in one ordered sequence (stop).
type Server struct {
	cfg    config.Stub
	opts   Options
	log    *zap.Logger
	state  *State
	access *liveAccess
	bundle *certs.Bundle
	hub    *hub // nil for a single stub

	stopping chan struct{} // closed when the stop begins: /readyz fails from then on
}

// New checks what can be checked before serving: the certificate material,
// the state and the authentication config (issuers are contacted only when
// a token names them). It starts nothing.
func New(cfg config.Stub, opts Options) (*Server, error) {
	if opts.ConfigPath != "" && opts.Parse == nil {
		return nil, errors.New("stub: Options.Parse is required with ConfigPath")
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	s := &Server{cfg: cfg, opts: opts, log: opts.Logger, stopping: make(chan struct{})}
	var err error
	if s.bundle, err = LoadBundle(cfg); err != nil {
		return nil, err
	}
	if err := checkAppsCertificate(cfg, s.bundle); err != nil {
		return nil, err
	}
	if s.state, err = StateFor(cfg, s.log.Named("state")); err != nil {
		return nil, err
	}
	if s.state.mirror != nil {
		if s.hub, err = newHub(cfg, s.state.hubClient, s.state, s.log); err != nil {
			return nil, err
		}
	}
	first, err := buildAccess(cfg, s.state)
	if err != nil {
		return nil, err
	}
	if s.access, err = newLiveAccess(opts.ConfigPath, opts.Parse, first, s.state, s.log.Named("config")); err != nil {
		return nil, err
	}
	return s, nil
}

// State is the stub's state (clusters and tokens).
func (s *Server) State() *State { return s.state }

// running holds what Run started, for stop: each field is nil until its
// part runs.
type running struct {
	hub      *hub
	tunnel   *tunnel.Server
	sink     audit.Sink
	metrics  *http.Server
	metricsW chan struct{} // closed when the metrics server's goroutine ends
	proxy    *proxy.Stub
	prober   *proxy.Prober
	probe    func() // stops the prober and waits for it
	web      *web.Sessions
	webStop  func() // stops the sessions' housekeeping and waits for it
	http     *http.Server
	serveErr chan error // the HTTPS server's Serve result
	stopTLS  func()
}

// Run serves until ctx ends (or serving fails), then stops: the stop
// sequence (stop) runs in full whichever way Run ends, also when starting
// fails half-way. A stop asked for by ctx returns nil.
func (s *Server) Run(ctx context.Context) error {
	r := &running{}
	if err := s.start(ctx, r); err != nil {
		s.stop(r, false)
		return err
	}
	var err error
	select {
	case err = <-r.serveErr:
	case <-ctx.Done():
	}
	s.stop(r, err == nil)
	return err
}

// start starts the parts in dependency order, recording each in r.
func (s *Server) start(ctx context.Context, r *running) error {
	cfg, log := s.cfg, s.log
	if s.hub != nil {
		// Pull the shared state once, so the first requests see it. A hub
		// that does not answer is not fatal: the stub starts on the state
		// files it has (none on a first start: every agent and token is
		// refused until the hub answers).
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := s.state.Pull(pctx); err != nil {
			log.Warn("starting on the state files already here; they are kept in step once the hub answers", zap.Error(err))
		}
		cancel()
		r.hub = s.hub
		r.hub.start(s.state)
	}
	if cfg.Policy == nil {
		log.Warn("no policy configured: every authenticated caller may reach every cluster (set policy in the config to restrict)")
	}
	tcfg := tunnel.ServerConfig{Auth: s.state, Logger: log.Named("tunnel"),
		KeepAliveInterval: cfg.Tunnel.KeepAliveInterval.Duration, KeepAliveTimeout: cfg.Tunnel.KeepAliveTimeout.Duration,
		MaxSessions: cfg.Tunnel.MaxSessions, MaxHandshakesPerSecond: cfg.Tunnel.MaxHandshakesPerSecond}
	if s.hub != nil {
		tcfg.Replicas = s.hub.replicas // agents hold a session to every replica
	}
	var err error
	if r.tunnel, err = tunnel.NewServer(tcfg); err != nil {
		return err
	}
	if cfg.Audit.Path != "" {
		if r.sink, err = audit.OpenFileSink(cfg.Audit.Path); err != nil {
			return fmt.Errorf("audit.path: %q: %w", cfg.Audit.Path, err)
		}
	} else {
		log.Warn("no audit.path configured: requests are not audited")
	}
	pcfg := proxy.ProberConfig{Target: r.tunnel, Logger: log.Named("probe")}
	if s.hub != nil {
		pcfg.Replicas = s.hub.replicas.Live // probes tell agents of replicas added later
	}
	if r.prober, err = proxy.NewProber(pcfg); err != nil {
		return err
	}
	metrics, err := s.startMetrics(r)
	if err != nil {
		return err
	}
	if err := s.startBrowser(r); err != nil {
		return err
	}
	var apps *proxy.AppsConfig
	if a := cfg.Browser.Apps; a != nil {
		apps = &proxy.AppsConfig{Domain: a.Domain, Sealer: r.web}
	}
	r.proxy, err = proxy.NewStub(proxy.StubConfig{Dialer: r.tunnel, Clusters: s.state.Registry(), Auth: s.access, Policy: s.access,
		Audit: r.sink, Metrics: metrics, Logger: log.Named("proxy"), Sessions: r.web, PublicURL: cfg.PublicURL, Apps: apps,
		RecheckInterval:       cfg.Streams.RecheckInterval.Duration,
		KeepStreamsPastExpiry: cfg.Streams.CredentialExpiry == config.CredentialExpiryKeep})
	if err != nil {
		return err
	}
	s.startProber(r)
	return s.startHTTPS(r)
}

// startMetrics serves /metrics on its own address, if configured.
func (s *Server) startMetrics(r *running) (*proxy.Metrics, error) {
	if s.cfg.Metrics.Listen == "" {
		return nil, nil
	}
	m := proxy.NewMetrics(r.tunnel, r.prober)
	if s.hub != nil {
		m.Register(ha.Collectors(s.hub.elector, s.hub.replicas)...)
	}
	ln, err := net.Listen("tcp", s.cfg.Metrics.Listen)
	if err != nil {
		return nil, fmt.Errorf("metrics.listen: %q: %w", s.cfg.Metrics.Listen, err)
	}
	r.metrics = &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: zap.NewStdLog(s.log.Named("metrics"))}
	r.metricsW = make(chan struct{})
	go func() {
		defer close(r.metricsW)
		_ = r.metrics.Serve(ln)
	}()
	s.log.Info("metrics listening", zap.String("addr", ln.Addr().String()))
	return m, nil
}

// startProber measures health from the data path until stop ends it.
func (s *Server) startProber(r *running) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.prober.Run(ctx)
	}()
	r.probe = func() { cancel(); <-done }
}

// handler is the public port's route table.
func (s *Server) handler(r *running) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(tunnel.ConnectPath, r.tunnel)
	mux.Handle(proxy.ClustersPrefix, r.proxy)
	mux.Handle(proxy.ClustersPath, r.proxy.ClusterList(r.tunnel, r.prober))
	mux.Handle(proxy.AppsPath, r.proxy.AppsAPI())
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("/readyz", s.readyz)
	r.web.Routes(mux)        // the landing page at "/" and /keyhole/{login,callback,logout,kubeconfig,assets}
	mux.Handle("/", r.proxy) // any other path: authenticated, audited, 404
	// Hosts under browser.apps.domain never reach mux: each is one
	// in-cluster app, and all of its paths are the app's (proxy/apps.go).
	return limitHeaders(r.proxy.WithApps(mux), r.proxy, s.log.Named("http"))
}

// Request headers. kube-apiserver accepts a request header of up to 1 MiB
// (its http.Server's MaxHeaderBytes: over HTTP/1.1, 1 MiB of header lines;
// over HTTP/2, a SETTINGS_MAX_HEADER_LIST_SIZE of 1 MiB + 320 bytes). A
// request through the gateway arrives there with more header than it had at
// the stub: the stub adds the caller's identity, the request ID and
// X-Forwarded-*, the agent turns them into Impersonate-* and adds its
// ServiceAccount token. Left to the API server, an oversized request failed
// in the agent's HTTP/2 client (a 503 naming the peer's limit) or, over
// HTTP/2 to the stub, as a protocol error that ends every stream of the
// connection. So the stub decides, for every path and both protocols,
// before anything is routed: a header list over maxRequestHeaderBytes is
// answered 431 with a Status (limitHeaders), and the 64 KiB left below
// 1 MiB are for what the hops add.
//
// Go's server answers a request whose header is over its MaxHeaderBytes
// itself, before any handler: over HTTP/1.1 with a plain-text 431 (the
// connection then closes), over HTTP/2 with a plain-text 431 or, for a
// header block far over the limit it advertised, by closing the
// connection. serverMaxHeaderBytes is therefore twice the API server's
// limit, so that every header up to that size gets the Status; beyond it,
// Go's own answer stands (and Go's HTTP/2 client, kubectl's, refuses to
// send it at all).
const (
	maxRequestHeaderBytes = 1<<20 - 64<<10
	serverMaxHeaderBytes  = 2 << 20
)

// headerListSize is r's header as HTTP/2 counts it (RFC 9113 §6.5.2: each
// field's name and value plus 32 bytes, pseudo-header fields included),
// whichever protocol r came by: one measure for both, never below the
// bytes of an HTTP/1.1 header.
func headerListSize(r *http.Request) int {
	const perField = 32
	n := len(":method") + len(r.Method) + len(":scheme") + len("https") + len(":authority") + len(r.Host) +
		len(":path") + len(r.RequestURI) + 4*perField
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(v) + perField
		}
	}
	return n
}

// limitHeaders answers a request whose header list is over
// maxRequestHeaderBytes with 431 and a Status, without passing it on.
func limitHeaders(next http.Handler, hop *proxy.Stub, log *zap.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := headerListSize(r)
		if n <= maxRequestHeaderBytes {
			next.ServeHTTP(w, r)
			return
		}
		path := r.URL.Path
		if len(path) > 256 {
			path = path[:256] + "…"
		}
		log.Info("request refused: header too large", zap.String("remote_addr", r.RemoteAddr), zap.String("proto", r.Proto),
			zap.String("path", path), zap.Int("header_bytes", n), zap.Int("limit", maxRequestHeaderBytes))
		st := kubestatus.RequestHeaderFieldsTooLarge(fmt.Sprintf(
			"the request header is %d bytes; this gateway accepts at most %d (each field counted as its name, its value and 32 bytes, as HTTP/2 does)",
			n, maxRequestHeaderBytes))
		kubestatus.Write(w, st)
		hop.AuditRefusal(r, st) // a refusal like any other, before authentication

	})
}

// readyz is the one readiness predicate: ready until the stop begins.
func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	select {
	case <-s.stopping:
		http.Error(w, "stopping", http.StatusServiceUnavailable)
		return
	default:
	}
	_, _ = io.WriteString(w, "ok\n")
	if s.hub != nil {
		_, _ = io.WriteString(w, s.hub.status())
	}
}

// startHTTPS binds the public port, sets up TLS on it and serves.
func (s *Server) startHTTPS(r *running) error {
	cfg := s.cfg
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %q: %w (pick a free port in the config's listen key)", cfg.Listen, err)
	}
	tlsCfg, stopTLS, err := serverTLS(cfg, s.bundle, s.state.hubClient, s.log.Named("tls")) // tls.go
	if err != nil {
		ln.Close()
		return err
	}
	r.stopTLS = stopTLS
	r.http = &http.Server{
		Handler:   s.handler(r),
		TLSConfig: tlsCfg,
		// No ReadTimeout or WriteTimeout: watches, logs -f, exec and
		// port-forward live as long as the client wants. Liveness comes
		// from TCP, HTTP/2 pings and the tunnel's liveness watch instead.
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// An HTTP/2 connection with nothing to say (an idle watch) is pinged
		// after 30 s: load balancers that cut idle connections (often at
		// 60 s) see traffic, and a client that vanished is found within 45 s.
		// MaxHeaderBytes is also the header list size HTTP/2 advertises;
		// the limit itself is limitHeaders' (see serverMaxHeaderBytes).
		HTTP2:          &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 15 * time.Second},
		MaxHeaderBytes: serverMaxHeaderBytes,
		ErrorLog:       zap.NewStdLog(s.log.Named("http")),
	}
	r.serveErr = make(chan error, 1)
	go func() { r.serveErr <- r.http.ServeTLS(ln, "", "") }()
	note := tlsNote(cfg, s.bundle)
	s.log.Info("stub listening", zap.String("addr", ln.Addr().String()), zap.String("public_url", cfg.PublicURL),
		zap.String("state_dir", cfg.StateDir), zap.String("tls", note), zap.String("version", s.opts.Version))
	if s.opts.Started != nil {
		s.opts.Started(Started{Addr: ln.Addr(), PublicURL: cfg.PublicURL, TLS: note})
	}
	return nil
}

// stop is the one stop sequence, in order; each step is skipped if its
// part never started. graceful (a stop asked for, not a failure) adds the
// first two steps.
//
//  1. readiness off: /readyz fails; the replica's Lease is withdrawn and
//     the leader Lease released (agents and the other replicas stop
//     counting on this one; another replica leads within its retry period);
//  2. shutdownDelay: load balancers notice, serving goes on;
//  3. HTTP: the listener closes; plain requests in flight get up to
//     shutdownTimeout while watches, logs -f and upgraded sessions are
//     ended cleanly at once (proxy.Stub.Drain); then every connection
//     closes, and the TLS certificate maintenance (ACME) stops;
//  4. the prober, then the metrics server;
//  5. agent sessions: agents reconnect, to another replica or to this one
//     restarted; idle tunnel connections of the stub hop close;
//  6. access: issuer discovery of the authentication in force stops;
//     the hub: the state mirror, which kept serving until now, ends;
//  7. the audit sink is flushed and closed.
//
// Each step logs "stop" with its name and duration.
func (s *Server) stop(r *running, graceful bool) {
	step := func(name string, f func()) {
		start := time.Now()
		f()
		s.log.Info("stop", zap.String("step", name), zap.Duration("took", time.Since(start)))
	}
	cfg := s.cfg
	if graceful {
		step("readiness off", func() {
			close(s.stopping)
			s.log.Info("shutting down: /readyz now fails", zap.Duration("shutdown_delay", cfg.ShutdownDelay.Duration),
				zap.Duration("shutdown_timeout", cfg.ShutdownTimeout.Duration))
			if r.hub != nil {
				r.hub.leave()
			}
		})
		if d := cfg.ShutdownDelay.Duration; d > 0 {
			step("shutdown delay", func() { time.Sleep(d) })
		}
	}
	if r.http != nil {
		step("http", func() { s.stopHTTP(r) })
	}
	if r.stopTLS != nil {
		step("tls", r.stopTLS)
	}
	if r.probe != nil {
		step("prober", r.probe)
	}
	if r.metrics != nil {
		step("metrics", func() { r.metrics.Close(); <-r.metricsW })
	}
	if r.tunnel != nil {
		step("agent sessions", func() {
			n := len(r.tunnel.Agents(""))
			r.tunnel.Close()
			s.log.Info("agent sessions closed", zap.Int("sessions", n))
		})
	}
	if r.proxy != nil {
		r.proxy.Close()
	}
	if r.web != nil {
		step("browser sessions", func() { r.webStop(); r.web.Close() })
	}
	step("access", s.access.close) // issuer discovery
	if r.hub != nil {
		step("hub", r.hub.stop)
	}
	if r.sink != nil {
		step("audit", func() { _ = r.sink.Close() })
	}
}

// stopHTTP closes the listener and waits up to shutdownTimeout for plain
// requests while draining long-running ones (proxy/drain.go).
func (s *Server) stopHTTP(r *running) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout.Duration)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- r.http.Shutdown(ctx) }() // closes the listener, waits for plain requests
	ended, left := r.proxy.Drain(ctx)
	err := <-shut
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		s.log.Warn("shutdown", zap.Error(err))
	}
	r.http.Close()
	s.log.Info("stopped serving", zap.Duration("took", time.Since(start)), zap.Int("streams_ended", ended), zap.Int("streams_left", left),
		zap.Bool("timed_out", errors.Is(err, context.DeadlineExceeded)))
}

// startBrowser sets up browser sign-in and sessions (package web): the
// logins of authentication.jwt[].login.browser (re-read with the config),
// sessions in the state (the directory, or the hub for replicas), and, on a
// single stub, the housekeeping that rotates the sealing keys and prunes
// ended sessions every 10 minutes (with replicas, the leader does it: see
// newHub).
func (s *Server) startBrowser(r *running) error {
	cfg := s.cfg
	replica := cfg.Hub.ReplicaID
	if replica == "" {
		replica, _ = os.Hostname()
	}
	sess, err := web.New(web.Config{
		PublicURL: cfg.PublicURL, ReplicaID: replica,
		MaxAge: cfg.Browser.SessionMaxAge.Duration, IdleTimeout: cfg.Browser.SessionIdleTimeout.Duration,
		Logins: s.access, Auth: s.access, Store: s.state,
		Clusters: func(u *authn.User, token string) []proxy.ClusterStatus {
			return r.proxy.ClusterStatuses(r.tunnel, r.prober)(u, token)
		},
		Kubeconfig: func(u *authn.User, token, issuerURL string) ([]byte, error) {
			var ids []string
			for _, c := range r.proxy.ClusterStatuses(r.tunnel, r.prober)(u, token) {
				ids = append(ids, c.ID)
			}
			if len(ids) == 0 {
				return nil, errors.New("no cluster is open to you")
			}
			// The issuers as configured now: a login added or changed by a
			// reload is offered on the landing page at once.
			now := cfg
			now.Authentication.JWT = s.access.JWT()
			return OIDCKubeconfig(now, s.state, s.bundle, OIDCKubeconfigOptions{Issuer: issuerURL, Clusters: ids})
		},
		Audit: r.sink, Logger: s.log.Named("web"),
	})
	if err != nil {
		return err
	}
	r.web = sess
	for _, l := range s.access.BrowserLogins() {
		if !slices.Contains(l.Scopes, "offline_access") {
			s.log.Warn("browser sign-in without offline_access: the IdP gives no refresh token, so a browser session ends when its ID token expires (add offline_access to login.browser.scopes)",
				zap.String("issuer", l.IssuerURL))
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	r.webStop = func() { cancel(); <-done }
	if s.hub != nil {
		close(done)
		return nil
	}
	go func() {
		defer close(done)
		t := time.NewTicker(10 * time.Minute)
		defer t.Stop()
		for {
			sessionHousekeeping(ctx, cfg, s.state, s.log)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return nil
}

// sessionHousekeeping rotates the session sealing keys and prunes ended
// browser sessions.
func sessionHousekeeping(ctx context.Context, cfg config.Stub, state *State, log *zap.Logger) {
	if err := state.RotateSessionKeys(ctx, time.Now(), cfg.Browser.KeyRotation.Duration, cfg.Browser.SessionMaxAge.Duration); err != nil {
		log.Warn("cannot rotate browser session keys", zap.Error(err))
	}
	if n, err := state.PruneSessions(ctx, time.Now()); err != nil {
		log.Warn("cannot prune browser sessions", zap.Error(err))
	} else if n > 0 {
		log.Info("pruned ended browser sessions", zap.Int("sessions", n))
	}
}

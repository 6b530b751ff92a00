package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"

	"github.com/keyhole-dev/keyhole/audit"
	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/internal/kubestatus"
	"github.com/keyhole-dev/keyhole/internal/origin"
	"github.com/keyhole-dev/keyhole/tunnel"
)

// ClusterDialer opens a connection to an agent of a cluster
// (*tunnel.Server).
type ClusterDialer interface {
	DialCluster(ctx context.Context, cluster string) (net.Conn, error)
}

// Cluster is what the stub hop knows of a registered cluster.
type Cluster struct {
	ID string
	// Labels are the cluster's labels, which policy rules may match.
	Labels map[string]string
	// CallerAudience, when set, says that the stub operator registered the
	// cluster's agents as verifying callers themselves: a caller's ID token
	// is handed to them only when its audience includes this value, and a
	// token with it is accepted for this cluster only (callers.go).
	CallerAudience string
	// Unregistered: the cluster is gone and CallerAudience retired
	// (ByCallerAudience only); tokens bound to it are refused everywhere.
	Unregistered bool
}

// ClusterRegistry tells whether a cluster ID is registered, lists the
// registered clusters, and finds the cluster a caller audience binds a
// token to (stub.State's Registry).
type ClusterRegistry interface {
	Cluster(id string) (Cluster, bool)
	Clusters() []Cluster
	ByCallerAudience(aud string) (Cluster, bool)
}

// Authenticator maps a bearer token to a user (*authn.Chain). Its error
// message is shown to the caller, so it must say why without echoing the
// token.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (*authn.User, error)
}

// Policy decides whether a user may reach a cluster (*policy.Policy).
type Policy interface {
	Allowed(u *authn.User, cluster string, labels map[string]string) bool
}

// StubConfig configures the stub hop.
type StubConfig struct {
	Dialer   ClusterDialer
	Clusters ClusterRegistry
	Auth     Authenticator
	Policy   Policy
	// Audit receives one record per request and two per upgraded session
	// (nil: none, and no record is built).
	Audit audit.Sink
	// Metrics, if set, count requests, latency, bytes and open streams.
	Metrics *Metrics
	// RecheckInterval is how often a long-running request (watch,
	// followed log, exec/attach/port-forward session) is admitted again
	// while it runs (recheck.go); default DefaultRecheckInterval.
	RecheckInterval time.Duration
	// KeepStreamsPastExpiry: a long-running request whose credential
	// expires is not ended for that alone (revocation, removal and policy
	// still end it). Default false: it ends at the credential's expiry.
	KeepStreamsPastExpiry bool
	// Sessions resolves browser session cookies (*web.Sessions); nil: the
	// stub accepts bearer tokens only and ignores cookies, as it always
	// did. With Sessions, a request without a bearer token that carries
	// the session cookie is a cookie request (browser.go).
	Sessions BrowserSessions
	// PublicURL is the stub's public URL (stub config publicURL): cookie
	// requests are accepted only from its origin. Required with Sessions.
	PublicURL string
	// Apps, with Sessions, serves in-cluster apps on hosts of their own
	// (apps.go); nil: none (AppsPath answers that none are configured).
	Apps   *AppsConfig
	Logger *zap.Logger
}

// Stub is the http.Handler for /clusters/{id}/….
type Stub struct {
	cfg StubConfig
	log *zap.Logger
	rp  *httputil.ReverseProxy
	tr  *http.Transport
	// drain tracks watches, followed logs and upgraded sessions, which a
	// graceful stop ends itself (drain.go).
	drain drainer
	// origin is PublicURL's origin (origin.Of), with Sessions.
	origin string
	// apps serves in-cluster apps (apps.go); nil without StubConfig.Apps.
	apps *apps
}

// ClustersPrefix is the path under which every cluster is served.
const ClustersPrefix = "/clusters/"

type ctxKey int

const stateKey ctxKey = 0

// NewStub validates cfg and builds the handler.
func NewStub(cfg StubConfig) (*Stub, error) {
	if cfg.Dialer == nil || cfg.Clusters == nil || cfg.Auth == nil || cfg.Policy == nil {
		return nil, errors.New("proxy: StubConfig needs Dialer, Clusters, Auth and Policy")
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.RecheckInterval < 0 {
		return nil, fmt.Errorf("proxy: StubConfig.RecheckInterval %v must not be negative (0: %v)", cfg.RecheckInterval, DefaultRecheckInterval)
	}
	if cfg.RecheckInterval == 0 {
		cfg.RecheckInterval = DefaultRecheckInterval
	}
	s := &Stub{cfg: cfg, log: cfg.Logger}
	if cfg.Sessions != nil {
		o, err := origin.Of(cfg.PublicURL)
		if err != nil {
			return nil, fmt.Errorf("proxy: StubConfig.PublicURL, needed with Sessions: %w", err)
		}
		s.origin = o
	}
	if cfg.Apps != nil {
		if cfg.Sessions == nil {
			return nil, errors.New("proxy: StubConfig.Apps needs Sessions")
		}
		a, err := newApps(cfg.Apps, cfg.PublicURL)
		if err != nil {
			return nil, err
		}
		s.apps = a
	}
	s.tr = &http.Transport{
		// The "host" of an outbound URL is the cluster ID; each connection is
		// a tunnel stream to one of its agents.
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				host = addr
			}
			c, err := cfg.Dialer.DialCluster(ctx, host)
			if st, ok := c.(*tunnel.Stream); ok {
				return tunnelConn{st}, nil // tells a dead agent from an ended response
			}
			return c, err
		},
		MaxIdleConns:        0, // no global cap; per cluster below
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true, // pass the API server's encoding through untouched
		// Each pooled tunnel stream keeps these two buffers for its life,
		// idle watches included. Bodies mostly bypass the read buffer
		// (ReverseProxy reads stubCopyBufferSize at a time, more than it holds),
		// so it serves headers and chunk sizes; the write buffer carries
		// request headers and bodies. 64 KiB each cost 128 KiB of heap per
		// idle watch and bought no throughput (docs/benchmarks.md).
		ReadBufferSize:  8 << 10,
		WriteBufferSize: 8 << 10,
	}
	s.rp = &httputil.ReverseProxy{
		Rewrite:   s.rewrite,
		Transport: s.tr,
		// Streaming responses (no Content-Length: watch, logs -f, chunked
		// lists) are flushed on every write by ReverseProxy whatever this
		// says; 0 spares fixed-length responses a flush per write (-13%
		// CPU per small request in BenchmarkChain).
		FlushInterval:  0,
		BufferPool:     newBufferPool(stubCopyBufferSize),
		ErrorHandler:   s.proxyError,
		ModifyResponse: s.modifyResponse,
		ErrorLog:       zap.NewStdLog(cfg.Logger.Named("reverseproxy")),
	}
	return s, nil
}

// Close closes idle tunnel connections.
func (s *Stub) Close() { s.tr.CloseIdleConnections() }

// ParseClusterPath splits /clusters/{id}/rest into id and /rest.
func ParseClusterPath(p string) (id, rest string, ok bool) {
	tail, ok := strings.CutPrefix(p, ClustersPrefix)
	if !ok {
		return "", "", false
	}
	id, rest, _ = strings.Cut(tail, "/")
	if !tunnel.ValidClusterID(id) {
		return "", "", false
	}
	return id, "/" + rest, true
}

func newRequestID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// reqState travels in the outbound request's context: what ServeHTTP
// decided for rewrite to send, and what rewrite, ModifyResponse, the error
// handler and the response body learn, for the audit record.
type reqState struct {
	cluster string
	reqID   string
	user    *authn.User
	// asUser and asGroups are kubectl --as / --as-group, for the agent to
	// decide.
	asUser   string
	asGroups []string
	// callerToken goes to agents that verify callers themselves; "" for
	// all others (and always for cookie requests).
	callerToken string
	// browser: a cookie request, with this session (browser.go).
	browser *BrowserSession
	// app: a request to an app host (apps.go), with its session in browser.
	app *appState

	// sentAsUser and sentAsGroups are the impersonation the outbound request
	// carried, read from its headers as rewrite left them: the audit record
	// states what the cluster received, not what the caller asked for.
	sentAsUser   string
	sentAsGroups []string

	agent   string                 // from the agent's HeaderServedBy
	failure *apierrors.StatusError // set by proxyError
	long    *longReq               // a long-running request (drain.go), else nil
	ends    ends                   // how it ended (ending.go)
}

func (s *Stub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	reqID := newRequestID()
	w.Header().Set(HeaderRequestID, reqID)
	log := s.log.WithLazy(zap.String("request_id", reqID), zap.String("remote_addr", r.RemoteAddr))
	ar := audit.Request{ID: reqID, Received: start, SourceIP: audit.SourceIP(r.RemoteAddr), UserAgent: r.UserAgent(),
		Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery}
	cluster, rest, pathOK := ParseClusterPath(r.URL.Path)
	if pathOK {
		ar.Cluster, ar.Path = cluster, rest
	}
	// Series are labelled only with registered clusters, so made-up IDs in
	// paths cannot grow the number of series.
	metricCluster := "none"
	cookie := false // a cookie request: its answers get browser headers
	refuse := func(st *apierrors.StatusError) {
		if cookie {
			s.setBrowserResponseHeaders(w.Header())
		}
		kubestatus.Write(w, st)
		o := audit.StatusOutcome(st.ErrStatus, time.Now())
		o.Ended = audit.EndedComplete
		s.record(ar, auditv1.StageResponseComplete, o)
		s.cfg.Metrics.observe(metricCluster, int(st.ErrStatus.Code), time.Since(start), 0, 0, false)
	}

	cred, st := s.authenticate(w, r)
	cookie = cred.cookie
	if ar.BrowserSession = cred.auditID(); ar.BrowserSession != "" {
		log = log.WithLazy(zap.String("browser_session", ar.BrowserSession))
	}
	if st != nil {
		log.Info("request refused: authentication failed", zap.String("path", r.URL.Path), zap.String("reason", st.ErrStatus.Message))
		refuse(st)
		return
	}
	token, user := cred.token, cred.user
	ar.User, ar.Groups = user.Name, user.Groups
	log = log.WithLazy(zap.String("user", user.Name))
	if !pathOK {
		// Any path outside /clusters/{id}/ (the stub serves its other paths
		// itself): kubectl --raw ignores the kubeconfig's path, so say where
		// clusters live.
		refuse(kubestatus.NotFound(fmt.Sprintf("no cluster in path %q: cluster APIs live under %s{cluster-id}/ (with kubectl --raw, include that prefix)", r.URL.Path, ClustersPrefix)))
		return
	}
	log = log.WithLazy(zap.String("cluster", cluster))
	if cookie && proxySubresource(r.Method, rest) {
		log.Info("request refused: a proxy subresource with a browser session", zap.String("path", rest))
		refuse(kubestatus.Forbidden(proxySubresourceMessage))
		return
	}
	entry, ok := s.cfg.Clusters.Cluster(cluster)
	if !ok {
		log.Info("request refused: unknown cluster")
		refuse(kubestatus.NotFound(fmt.Sprintf("cluster %q is not registered at this gateway", cluster)))
		return
	}
	metricCluster = cluster
	if cookie && entry.CallerAudience != "" {
		log.Info("request refused: a browser session to a cluster that verifies callers")
		refuse(kubestatus.Forbidden(verifyingClusterMessage(cluster)))
		return
	}
	forwardToken, st := agentToken(s.cfg.Clusters, token, entry)
	if st != nil {
		log.Info("request refused: caller token and cluster do not match", zap.String("reason", st.ErrStatus.Message))
		refuse(st)
		return
	}
	if !s.cfg.Policy.Allowed(user, cluster, entry.Labels) {
		log.Info("request refused by policy", zap.Strings("groups", user.Groups))
		refuse(kubestatus.Forbidden(fmt.Sprintf("user %q may not reach cluster %q through this gateway (policy)", user.Name, cluster)))
		return
	}
	asUser, asGroups := r.Header.Get("Impersonate-User"), r.Header.Values("Impersonate-Group")
	if hasPrefixHeader(r.Header, "Impersonate-Extra-") || r.Header.Get("Impersonate-Uid") != "" || (asUser == "" && len(asGroups) > 0) {
		log.Info("request refused: unsupported impersonation")
		refuse(kubestatus.Forbidden(fmt.Sprintf("cluster %q: only kubectl --as (with optional --as-group) is supported through this gateway, not --as-uid or extra fields", cluster)))
		return
	}

	state := &reqState{cluster: cluster, reqID: reqID, user: user, asUser: asUser, asGroups: asGroups, browser: cred.browser}
	if forwardToken && !cookie { // (a cookie request never gets here with forwardToken)
		state.callerToken = token // that cluster's agents check the caller themselves (callers.go)
	}
	ctx := context.WithValue(r.Context(), stateKey, state)
	if longRunning(r, rest) {
		tctx, lr, release, ok := s.drain.track(ctx)
		if !ok {
			log.Info("request refused: the stub is stopping")
			w.Header().Set("Retry-After", "1")
			refuse(kubestatus.ServiceUnavailable("this gateway is shutting down: retry (another replica, or this one restarted, will answer)"))
			return
		}
		ctx, state.long = tctx, lr
		a := admission{token: token, user: user, cluster: cluster, expires: authn.CredentialExpiry(token, user)}
		if cred.browser != nil {
			// The session, not its current ID token, is the credential:
			// refreshes renew the token, and each recheck asks the session
			// first (readmit).
			a.browser, a.expires = cred.browser, cred.browser.Expires
		}
		stopRecheck := s.startRecheck(tctx, lr, a, log) // ended by release, which ends tctx
		defer func() { release(); stopRecheck() }()
	}
	out := r.Clone(ctx)
	out.URL.Path, out.URL.RawPath = rest, ""
	s.forward(w, r, out, state, ar, log, metricCluster)
}

// forward sends out to an agent (rewrite sets its headers) and writes the
// final audit record, log line and metrics of the request however it ends
// (ending.go): the caller gone, the agent gone, the stub stopping, or
// complete.
func (s *Stub) forward(w http.ResponseWriter, in, out *http.Request, state *reqState, ar audit.Request, log *zap.Logger, metricCluster string) {
	body := audit.CountRequestBody(out)
	aw := audit.NewResponseWriter(w)
	var upgradedAt time.Time
	stopClosing := func() bool { return false }
	aw.OnUpgrade = func(c *audit.CountingConn) {
		upgradedAt = time.Now()
		c.OnError = func(err error) { state.ends.sessionEnd(false, err) }
		if state.long != nil {
			// When the request's context ends (Drain), ReverseProxy closes
			// only the agent's side of the session (golang/go#35559); its
			// copier from the caller reads on until the caller sends a byte
			// or leaves, so an idle session would outlive the stub, and its
			// final record would never be written. Close the caller's side
			// too; a Drain that came while the upgrade was being set up
			// closes it at once.
			stopClosing = context.AfterFunc(out.Context(), func() { _ = c.Close() })
			state.long.upgraded(c) // the stub's own end closes it first (longReq.end)
		}
		s.cfg.Metrics.openAdd("session", 1)
		ar.Agent = state.agent
		ar.ImpersonatedUser, ar.ImpersonatedGroups = state.sentAsUser, state.sentAsGroups
		s.record(ar, auditv1.StageResponseStarted, &audit.Outcome{Code: http.StatusSwitchingProtocols, Finished: upgradedAt})
	}
	s.cfg.Metrics.openAdd("request", 1)
	returned := false
	// Deferred, so that it runs when ReverseProxy panics with
	// http.ErrAbortHandler too; the panic goes on afterwards, and net/http
	// aborts the connection as it should.
	defer func() {
		stopClosing() // the session, if any, is over
		s.cfg.Metrics.openAdd("request", -1)
		ended := state.ended(in.Context(), aw, returned)
		if ended == audit.EndedClientGone && s.Draining() {
			// The stub stopping closes connections still open at the end of
			// shutdownTimeout: the caller did not leave, it was cut.
			ended = audit.EndedStubStopping
		}
		ar.Agent = state.agent
		ar.ImpersonatedUser, ar.ImpersonatedGroups = state.sentAsUser, state.sentAsGroups
		o := &audit.Outcome{Code: aw.Code(), Finished: time.Now(), BytesIn: body.BytesRead(), BytesOut: aw.BytesWritten()}
		if st := state.failure; st != nil {
			o = audit.StatusOutcome(st.ErrStatus, o.Finished)
		}
		if c := aw.Upgraded(); c != nil {
			o.Upgraded, o.BytesIn, o.BytesOut = upgradedAt, c.BytesRead(), c.BytesWritten()
			s.cfg.Metrics.openAdd("session", -1)
		}
		o.Ended = ended
		if state.long != nil {
			_, o.EndedMessage = state.long.Reason()
		}
		s.record(ar, auditv1.StageResponseComplete, o)
		latency := o.Finished.Sub(ar.Received)
		s.cfg.Metrics.observe(metricCluster, o.Code, latency, o.BytesIn, o.BytesOut, aw.Upgraded() != nil)
		lvl := zap.InfoLevel // an early end is worth a line at info
		switch ended {
		case audit.EndedComplete:
			lvl = zap.DebugLevel
		case audit.EndedStubFailed:
			lvl = zap.ErrorLevel // net/http logs the panic itself
		}
		if ce := log.Check(lvl, "request"); ce != nil {
			ce.Write(zap.String("method", in.Method), zap.String("path", ar.Path), zap.Int("code", o.Code),
				zap.Duration("latency", latency), zap.String("ended", ended))
		}
	}()
	s.rp.ServeHTTP(aw, out)
	returned = true
}

// callerToken is the caller's bearer token: from Authorization or, for a
// WebSocket request without one, from a base64url.bearer.authorization.k8s.io
// subprotocol, which kube-apiserver accepts too (browsers cannot set
// headers on a WebSocket). A Status (401) refuses the request.
func callerToken(r *http.Request) (string, *apierrors.StatusError) {
	if token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && token != "" {
		return token, nil
	}
	if isWebSocket(r) {
		if b := parseBearerProtocols(r.Header); b.found > 0 {
			if b.err != nil {
				return "", kubestatus.Unauthorized("the WebSocket bearer subprotocol is not valid: " + b.err.Error())
			}
			return b.token, nil
		}
	}
	return "", kubestatus.Unauthorized("no bearer token: use a kubeconfig from `stub kubeconfig`")
}

// AuditRefusal writes the audit record of a request that the stub refused
// with st before it reached the stub hop (an oversized header): no user,
// since nothing was authenticated.
func (s *Stub) AuditRefusal(r *http.Request, st *apierrors.StatusError) {
	s.AuditBrowserRefusal(r, st, nil)
}

// AuditBrowserRefusal is AuditRefusal for a request of browser session b
// (nil: none known), whose record carries b's AuditID.
func (s *Stub) AuditBrowserRefusal(r *http.Request, st *apierrors.StatusError, b *BrowserSession) {
	ar := audit.Request{ID: newRequestID(), Received: time.Now(), SourceIP: audit.SourceIP(r.RemoteAddr), UserAgent: r.UserAgent(),
		Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery}
	if b != nil {
		ar.BrowserSession = b.AuditID
	}
	if cluster, rest, ok := ParseClusterPath(r.URL.Path); ok {
		ar.Cluster, ar.Path = cluster, rest
	}
	o := audit.StatusOutcome(st.ErrStatus, time.Now())
	o.Ended = audit.EndedComplete
	s.record(ar, auditv1.StageResponseComplete, o)
}

// record writes an audit event, built only when there is a sink; a
// failing sink is an operator's problem to see, never the caller's.
func (s *Stub) record(ar audit.Request, stage auditv1.Stage, o *audit.Outcome) {
	if s.cfg.Audit == nil {
		return
	}
	ev := audit.NewEvent(ar, stage, o)
	if err := s.cfg.Audit.Write(ev); err != nil {
		s.log.Error("audit record not written", zap.String("audit_id", string(ev.AuditID)), zap.Error(err))
	}
}

// rewrite sets every header the stub sends to the agent. It runs after
// httputil.ReverseProxy removed the hop-by-hop headers, including each one
// the caller named in its Connection header, so no name there can remove or
// change a header set here: the caller's identity, its --as, the request
// id, X-Forwarded-For. What the caller may not send (its credentials, in
// Authorization or a WebSocket bearer subprotocol, Impersonate-*, Keyhole-*)
// is removed here, from the request as it will be sent.
func (s *Stub) rewrite(pr *httputil.ProxyRequest) {
	st := pr.In.Context().Value(stateKey).(*reqState)
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = st.cluster
	pr.Out.Host = st.cluster
	pr.SetXForwarded()
	h := pr.Out.Header
	h.Del("Authorization")
	h.Del("Cookie") // the session cookie among them: nothing of a browser session reaches an agent
	h.Del(HeaderConsole)
	h.Del("Proxy-Authorization")
	deletePrefix(h, identityPrefix)
	deletePrefix(h, "Impersonate-")
	deletePrefix(h, frontProxyPrefix)
	dropBearerProtocols(h)
	if st.app != nil {
		// The app's own cookies, never the stub's (appCookies); the Origin
		// the stub checked is not the app's to check again: the app sees
		// the API server's host, not its origin's.
		if st.app.cookie != "" {
			h.Set("Cookie", st.app.cookie)
		}
		h.Del("Origin")
	}
	h.Set(HeaderUser, st.user.Name)
	for _, g := range st.user.Groups {
		h.Add(HeaderGroup, g)
	}
	if st.callerToken != "" {
		h.Set(HeaderCallerToken, st.callerToken)
	}
	if st.asUser != "" { // the agent decides, with the cluster's RBAC
		h.Set(HeaderAsUser, st.asUser)
		for _, g := range st.asGroups {
			h.Add(HeaderAsGroup, g)
		}
	}
	h.Set(HeaderRequestID, st.reqID)
	st.sentAsUser, st.sentAsGroups = h.Get(HeaderAsUser), h.Values(HeaderAsGroup)
}

// modifyResponse notes which agent answered and keeps that to the stub, and
// wraps the response so that the stub learns how it ends (ending.go).
func (s *Stub) modifyResponse(resp *http.Response) error {
	if st, ok := resp.Request.Context().Value(stateKey).(*reqState); ok {
		st.agent = resp.Header.Get(HeaderServedBy)
		if resp.StatusCode == http.StatusSwitchingProtocols {
			if rwc, ok := resp.Body.(io.ReadWriteCloser); ok {
				resp.Body = &sessionConn{ReadWriteCloser: rwc, st: st}
			}
		} else {
			resp.Body = &respBody{ReadCloser: resp.Body, st: st} // a graceful stop ends it cleanly
		}
	}
	resp.Header.Del(HeaderServedBy)
	if st, ok := resp.Request.Context().Value(stateKey).(*reqState); ok && st.app != nil {
		// An app's response is the app's page, which must run on its
		// origin: no sandbox, but no CORS, no cookies of ours (apps.go).
		return appResponse(resp, st.app)
	}
	stripClusterResponseHeaders(resp.Header)
	if st, ok := resp.Request.Context().Value(stateKey).(*reqState); ok && st.browser != nil {
		// Set on the response, not on the writer beforehand: ReverseProxy
		// adds the response's headers to the writer's (a cluster's own
		// Cache-Control would stand beside no-store) and clears the
		// writer's after a 1xx.
		s.setBrowserResponseHeaders(resp.Header)
	}
	return nil
}

func (s *Stub) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	state := r.Context().Value(stateKey).(*reqState)
	var st *apierrors.StatusError
	switch {
	case errors.Is(err, tunnel.ErrNoAgent):
		st = kubestatus.ServiceUnavailable(fmt.Sprintf("cluster %q has no connected agent", state.cluster))
	case state.long != nil && state.long.ended.Load():
		if aw, ok := w.(*audit.ResponseWriter); ok && aw.Upgraded() != nil {
			// Drain closed an upgraded session while its 101 was being
			// written: the connection is no longer HTTP, so there is
			// nothing to answer, and the record keeps the 101.
			s.log.Debug("upgraded session ended by the drain as it started", zap.String("cluster", state.cluster), zap.Error(err))
			return
		}
		// The stub ended it before the agent answered: stopping, or no
		// longer admitted (recheck.go).
		switch reason, words := state.long.Reason(); reason {
		case EndedStopping:
			w.Header().Set("Retry-After", "1")
			st = kubestatus.ServiceUnavailable("this gateway is shutting down: retry (another replica, or this one restarted, will answer)")
		case EndedExpired, EndedRevoked:
			st = kubestatus.Unauthorized(words)
		case EndedUnregistered:
			st = kubestatus.NotFound(words)
		default:
			st = kubestatus.Forbidden(words)
		}
	case r.Context().Err() != nil:
		// The client left; there is nobody to answer.
		s.log.Debug("client went away", zap.String("cluster", state.cluster), zap.Error(err))
		st = &apierrors.StatusError{ErrStatus: metav1.Status{Code: statusClientClosed, Reason: "ClientClosedRequest", Message: "the client went away"}}
		state.failure = st
		return
	default:
		s.log.Warn("forward to agent failed", zap.String("cluster", state.cluster), zap.Error(err))
		st = kubestatus.BadGateway(fmt.Sprintf("cluster %q: the connection to its agent failed: %v", state.cluster, err))
	}
	state.failure = st
	if state.browser != nil {
		s.setBrowserResponseHeaders(w.Header())
	}
	kubestatus.Write(w, st)
}

// Sizes of ReverseProxy's response copy buffers, each so that one write of
// a full buffer leaves its process as one frame in one TLS record (16 KiB
// of payload, RFC 8446 §5.1). A buffer one frame header larger costs every
// write a second record and a second system call of a few bytes, and a
// larger one is only cut into frames on the way. A streaming response
// (watch, followed log) holds its buffer for its whole life.
const (
	// stubCopyBufferSize: the stub writes to its HTTP/2 client hop, whose
	// DATA frames have a 9-byte header.
	stubCopyBufferSize = 16<<10 - 9
	// agentCopyBufferSize: the agent writes into a tunnel stream.
	agentCopyBufferSize = tunnel.StreamWriteSize
)

// bufferPool shares copy buffers of one size between requests.
type bufferPool struct{ p sync.Pool }

func newBufferPool(size int) *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, size); return &b }}}
}
func (b *bufferPool) Get() []byte  { return *(b.p.Get().(*[]byte)) }
func (b *bufferPool) Put(x []byte) { b.p.Put(&x) }

// unauthorizedMessage tells the caller why its token was refused; static
// token failures stay generic.
func unauthorizedMessage(err error) string {
	if errors.Is(err, authn.ErrInvalidToken) {
		return "the bearer token is not valid (unknown, expired or revoked)"
	}
	return "the bearer token is not valid: " + err.Error()
}

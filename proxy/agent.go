package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/internal/kubestatus"
)

// AgentHopConfig configures the agent hop.
type AgentHopConfig struct {
	// Cluster is this cluster's ID, used in messages.
	Cluster string
	// AgentID names this agent on every response (HeaderServedBy), for the
	// stub's audit records.
	AgentID string
	// Rest reaches the local API server with the agent's own credentials
	// (in-cluster ServiceAccount or a kubeconfig).
	Rest *rest.Config
	// Verifier, when set, makes the agent verify each caller's OIDC token
	// against issuers the cluster owner trusts and refuse any request whose
	// identity, as the stub states it, differs from the token's. A stub
	// then cannot act as anyone the token does not name.
	Verifier *authn.JWT
	// Identities are the users and groups the cluster owner lets this agent
	// impersonate (the zero value refuses only system: identities).
	Identities authn.IdentityRules
	Logger     *zap.Logger
}

// AgentHop is the http.Handler the agent serves on tunnel streams.
type AgentHop struct {
	cfg     AgentHopConfig
	authz   kubernetes.Interface // the agent's own requests (the stub's probe)
	reviews *reviewer            // SubjectAccessReviews (reviews.go), on a client of their own
	log     *zap.Logger
	plain   *httputil.ReverseProxy // HTTP/2 when the API server offers it
	upgrade *httputil.ReverseProxy // HTTP/1.1 only
	target  *url.URL
}

// NewAgentHop builds the two transports from cfg.Rest.
func NewAgentHop(cfg AgentHopConfig) (*AgentHop, error) {
	if cfg.Rest == nil {
		return nil, errors.New("proxy: AgentHopConfig.Rest is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	target, err := url.Parse(cfg.Rest.Host)
	if err != nil || target.Host == "" {
		return nil, fmt.Errorf("API server URL %q is not a URL", cfg.Rest.Host)
	}
	if target.Scheme == "" {
		target.Scheme = "https"
	}
	plainRT, err := apiTransport(cfg.Rest)
	if err != nil {
		return nil, fmt.Errorf("API server transport: %w", err)
	}
	up := rest.CopyConfig(cfg.Rest)
	up.TLSClientConfig.NextProtos = []string{"http/1.1"}
	upRT, err := rest.TransportFor(up)
	if err != nil {
		return nil, fmt.Errorf("API server transport (upgrades): %w", err)
	}
	cs, err := kubernetes.NewForConfig(cfg.Rest)
	if err != nil {
		return nil, fmt.Errorf("API server client: %w", err)
	}
	rcs, err := kubernetes.NewForConfig(reviewsConfig(cfg.Rest))
	if err != nil {
		return nil, fmt.Errorf("API server client (reviews): %w", err)
	}
	a := &AgentHop{cfg: cfg, log: cfg.Logger, target: target, authz: cs,
		reviews: newReviewer(rcs.AuthorizationV1().SubjectAccessReviews(), reviewTTL, reviewCacheSize, nil)}
	mk := func(rt http.RoundTripper) *httputil.ReverseProxy {
		return &httputil.ReverseProxy{
			Rewrite:   a.rewrite,
			Transport: rt,
			// 0 for the reason given in NewStub: the API server's watch and
			// logs -f answers, which have no Content-Length, still reach the
			// stub on every write.
			FlushInterval: 0,
			BufferPool:    newBufferPool(agentCopyBufferSize),
			ErrorHandler:  a.proxyError,
			ErrorLog:      zap.NewStdLog(cfg.Logger.Named("reverseproxy")),
		}
	}
	a.plain, a.upgrade = mk(plainRT), mk(upRT)
	return a, nil
}

// Attributes are what the agent states on its tunnel handshake
// (tunnel.AgentConfig.Attributes) for the stub: AttrVerifiesCallers when
// the hop verifies callers (Verifier set), else none.
func (a *AgentHop) Attributes() map[string]string {
	if a.cfg.Verifier == nil {
		return nil
	}
	return map[string]string{AttrVerifiesCallers: verifiesCallersJWT}
}

// ServeHTTP impersonates the caller named by the stub and forwards.
func (a *AgentHop) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if a.cfg.AgentID != "" {
		w.Header().Set(HeaderServedBy, a.cfg.AgentID)
	}
	if r.Header.Get(HeaderProbe) != "" { // only the stub can send it
		a.serveProbe(w, r)
		return
	}
	user := r.Header.Get(HeaderUser)
	groups := r.Header.Values(HeaderGroup)
	log := a.log.WithLazy(zap.String("request_id", r.Header.Get(HeaderRequestID)), zap.String("user", user))
	if user == "" {
		// Fail closed: never forward a request with the agent's own rights.
		log.Warn("request without caller identity refused")
		kubestatus.Write(w, kubestatus.Forbidden("agent: request carries no caller identity"))
		return
	}
	if err := a.cfg.Identities.Check(user, groups); err != nil {
		log.Warn("identity refused by agent", zap.Error(err))
		kubestatus.Write(w, kubestatus.Forbidden(fmt.Sprintf("cluster %q refuses this identity: %v", a.cfg.Cluster, err)))
		return
	}
	if a.cfg.Verifier != nil {
		if st := a.verifyCaller(r, user, groups); st != nil {
			log.Warn("caller verification failed", zap.String("reason", st.ErrStatus.Message))
			kubestatus.Write(w, st)
			return
		}
	}
	asUser, asGroups := r.Header.Get(HeaderAsUser), r.Header.Values(HeaderAsGroup)
	if asUser != "" {
		if err := a.cfg.Identities.Check(asUser, asGroups); err != nil {
			log.Info("impersonation target refused by agent", zap.Error(err))
			kubestatus.Write(w, kubestatus.Forbidden(fmt.Sprintf("cluster %q refuses to impersonate this identity: %v", a.cfg.Cluster, err)))
			return
		}
		checked := time.Now()
		st, tally := a.mayImpersonate(r.Context(), user, groups, asUser, asGroups)
		logReviews(log, tally, time.Since(checked))
		if st != nil {
			log.Info("impersonation denied by the cluster", zap.String("as_user", asUser), zap.String("reason", st.ErrStatus.Message))
			kubestatus.Write(w, st)
			return
		}
		log = log.WithLazy(zap.String("as_user", asUser))
		user, groups = asUser, asGroups
	}
	if st := a.mayConnect(r.Context(), r, user, groups); st != nil {
		log.Info("pod session refused: no create right on the subresource", zap.String("path", r.URL.Path), zap.String("reason", st.ErrStatus.Message))
		kubestatus.Write(w, st)
		return
	}
	out := r.Clone(context.WithValue(r.Context(), agentIdentityKey, &agentIdentity{user: user, groups: groups}))
	start := time.Now()
	if httpstream.IsUpgradeRequest(r) {
		a.upgrade.ServeHTTP(w, out)
	} else {
		a.plain.ServeHTTP(w, out)
	}
	if ce := log.Check(zap.DebugLevel, "request"); ce != nil {
		ce.Write(zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Strings("groups", groups), zap.Duration("latency", time.Since(start)))
	}
}

// agentIdentity is the identity a request runs as at the API server,
// for rewrite.
type agentIdentity struct {
	user   string
	groups []string
}

const agentIdentityKey ctxKey = 1

// rewrite sets the impersonation headers. It runs after
// httputil.ReverseProxy removed the hop-by-hop headers, including each one
// the incoming request named in its Connection header, so no name there can
// remove Impersonate-User and leave the request to run with the agent's own
// rights. Credentials that are not the agent's (Authorization, cookies, a
// WebSocket bearer subprotocol) and any other Impersonate-* or Keyhole-*
// header are removed here, from the request as it will be sent (cookies
// but on the proxy subresources, where they are the app's); client-go's
// transport then adds the agent's ServiceAccount token (it keeps an
// Authorization already present, hence the Del).
func (a *AgentHop) rewrite(pr *httputil.ProxyRequest) {
	id := pr.In.Context().Value(agentIdentityKey).(*agentIdentity)
	pr.SetURL(a.target)
	// The stub set X-Forwarded-For from the real client; keep it so the API
	// server's audit log shows the caller's address.
	if xff := pr.In.Header.Values("X-Forwarded-For"); len(xff) > 0 {
		pr.Out.Header["X-Forwarded-For"] = xff
	}
	h := pr.Out.Header
	h.Del("Authorization")
	h.Del("Proxy-Authorization")
	if !proxySubresource(pr.In.Method, pr.In.URL.Path) {
		// Cookies are no credential of the API server's. Through a proxy
		// subresource they are the proxied app's own (the stub sends only
		// those, for an in-cluster app; apps.go): they go on to the app.
		h.Del("Cookie")
	}
	deletePrefix(h, "Impersonate-")
	deletePrefix(h, identityPrefix)
	deletePrefix(h, frontProxyPrefix)
	dropBearerProtocols(h)
	h.Set("Impersonate-User", id.user)
	for _, g := range id.groups {
		h.Add("Impersonate-Group", g)
	}
}

func (a *AgentHop) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return // the stub or its client went away
	}
	if headerListTooLarge(err) {
		a.log.Info("request refused: header larger than the API server accepts", zap.Error(err))
		kubestatus.Write(w, kubestatus.RequestHeaderFieldsTooLarge(fmt.Sprintf(
			"cluster %q: the request header, with the identity the gateway adds to it, is larger than the API server accepts", a.cfg.Cluster)))
		return
	}
	a.log.Warn("API server request failed", zap.Error(err))
	kubestatus.Write(w, kubestatus.ServiceUnavailable(fmt.Sprintf("cluster %q: the agent cannot reach its API server: %v", a.cfg.Cluster, err)))
}

// headerListTooLarge reports whether err is Go's HTTP/2 client refusing to
// send a request whose header list is over the API server's
// SETTINGS_MAX_HEADER_LIST_SIZE (net/http does not export that error). The
// stub refuses such requests itself below the API server's limit
// (stub/server.go); this catches what the hops add beyond its margin, with
// the same answer, not a 503.
func headerListTooLarge(err error) bool {
	return strings.Contains(err.Error(), "request header list larger than peer's advertised limit")
}

// Fingerprint returns the UID of the kube-system namespace, which tells one
// cluster from another whatever ID they were registered under.
func Fingerprint(ctx context.Context, cfg *rest.Config) (string, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", err
	}
	ns, err := cs.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("read the kube-system namespace for the cluster fingerprint: %w", err)
	}
	return strings.TrimSpace(string(ns.UID)), nil
}

// verifyCaller checks the caller's token itself and that the stub's
// statement of identity is exactly what the token maps to.
func (a *AgentHop) verifyCaller(r *http.Request, user string, groups []string) *apierrors.StatusError {
	token := r.Header.Get(HeaderCallerToken)
	if token == "" {
		return kubestatus.Forbidden(fmt.Sprintf("cluster %q verifies callers itself and accepts only OIDC tokens from issuers it trusts", a.cfg.Cluster))
	}
	u, err := a.cfg.Verifier.AuthenticateJWT(r.Context(), token)
	if err != nil {
		return kubestatus.Forbidden(fmt.Sprintf("cluster %q does not accept the caller's token: %v", a.cfg.Cluster, err))
	}
	want, got := slices.Clone(u.Groups), slices.Clone(groups)
	slices.Sort(want)
	slices.Sort(got)
	if u.Name != user || !slices.Equal(want, got) {
		return kubestatus.Forbidden(fmt.Sprintf("cluster %q: the gateway stated the caller is %q %v but the token says %q %v", a.cfg.Cluster, user, groups, u.Name, u.Groups))
	}
	return nil
}

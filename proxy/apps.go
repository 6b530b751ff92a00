package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
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

// In-cluster apps (docs/console-apps.md). A signed-in console user opens a
// Service's own web UI (Grafana, Argo CD, …) in the browser. It is served
// from an origin of its own, https://<label>.<domain>[:port], where domain
// is browser.apps.domain (a wildcard DNS name, under another site than the
// console) and label names one cluster, namespace, Service, scheme and
// port (AppTarget.Label). Every request to an app host goes to that
// Service's port through the API server's services/proxy subresource, on
// the same path as any request (agent, impersonation, policy, audit); the
// app host serves nothing else: no console, no /keyhole/v1, no
// /clusters/…, no sign-in.
//
//  1. The console POSTs {cluster, namespace, service, port, scheme, path}
//     to AppsPath, a cookie request under every rule of browser.go. The
//     answer is {url}: AppLaunchPath on the app host with a ticket, sealed
//     with the session keys for AppTicketUse, bound to the host's label,
//     valid AppTicketLifetime.
//  2. The browser opens that URL in a new tab. The launch opens the
//     ticket, checks that its label is the host's and that its session
//     still stands, sets AppCookie (host-only, Secure, HttpOnly,
//     SameSite=Lax) and redirects to path. The cookie seals the browser
//     session's reference, the target and the label, and ends after
//     AppCookieLifetime or with the session, whichever is first.
//  3. Every other request to the app host must carry that cookie (401),
//     bound to this host (403); must come from the app's own origin or be
//     a top-level GET navigation (Fetch Metadata; 403); if an upgrade, be a
//     WebSocket whose Origin is exactly the app's origin (403); must have a
//     path that cannot leave the Service (400). Then, as a cookie request:
//     the session still stands and its ID token authenticates (401), the
//     cluster is registered and does not verify callers, and the policy
//     lets the user reach it (403). It is forwarded to
//     AppTarget.Prefix()+path with the user's identity.
//  4. Requests carry the app's own cookies to the app, never ours (nor the
//     console's); the app's responses are the app's (no sandbox: it must
//     run) but lose CORS grants, any cookie of ours they set, the Domain of
//     their cookies, and Alt-Svc, get framing and opener protections, and
//     get the API server's proxy rewriting (Location, HTML links) undone.

// Paths and names of in-cluster apps.
const (
	// AppsPath answers GET {"enabled": bool} and launches an app on POST.
	AppsPath = "/keyhole/v1/apps"
	// AppLaunchPath is where, on an app host, a ticket becomes a cookie.
	// The app's own page at this path, if any, is not reachable.
	AppLaunchPath = "/keyhole-app/launch"
	// AppCookie is the app host's cookie.
	AppCookie = "__Host-keyhole-app"
	// AppTicketUse is what tickets are sealed for (never a cookie name).
	AppTicketUse = "keyhole.dev/app-ticket"
)

// Lifetimes of a launch ticket and of an app cookie (the cookie ends with
// its browser session if that is sooner; launching the app again renews
// it).
const (
	AppTicketLifetime = 60 * time.Second
	AppCookieLifetime = time.Hour
)

// AppTarget is a port of a Service in a cluster, as services/proxy names
// it: [scheme:]service:port.
type AppTarget struct {
	Cluster   string `json:"c"`
	Namespace string `json:"n"`
	Service   string `json:"s"`
	// Scheme is "http" or "https" (how the API server talks to the
	// Service's endpoints).
	Scheme string `json:"h"`
	// Port is the Service port's name or number.
	Port string `json:"p"`
}

var (
	dns1123Label = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	dns1035Label = regexp.MustCompile(`^[a-z]([-a-z0-9]*[a-z0-9])?$`)
	portName     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	appLabelRE   = regexp.MustCompile(`^[a-z2-7]{32}$`)
)

// Validate says what is wrong with t, if anything.
func (t AppTarget) Validate() error {
	var errs []string
	if !tunnel.ValidClusterID(t.Cluster) {
		errs = append(errs, fmt.Sprintf("cluster %q is not a cluster ID", t.Cluster))
	}
	if len(t.Namespace) > 63 || !dns1123Label.MatchString(t.Namespace) {
		errs = append(errs, fmt.Sprintf("namespace %q is not a namespace name", t.Namespace))
	}
	if len(t.Service) > 63 || !dns1035Label.MatchString(t.Service) {
		errs = append(errs, fmt.Sprintf("service %q is not a Service name", t.Service))
	}
	if t.Scheme != "http" && t.Scheme != "https" {
		errs = append(errs, fmt.Sprintf("scheme %q is not http or https", t.Scheme))
	}
	if n, err := strconv.Atoi(t.Port); err == nil {
		if n < 1 || n > 65535 || strconv.Itoa(n) != t.Port {
			errs = append(errs, fmt.Sprintf("port %q is not from 1 to 65535", t.Port))
		}
	} else if len(t.Port) > 15 || !portName.MatchString(t.Port) || strings.Trim(t.Port, "0123456789-") == "" {
		errs = append(errs, fmt.Sprintf("port %q is neither a port number nor a port name", t.Port))
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// ProxyName is the Service as services/proxy names it: scheme:name:port.
func (t AppTarget) ProxyName() string { return t.Scheme + ":" + t.Service + ":" + t.Port }

// Prefix is the path in the cluster under which the app is served: the
// Service's proxy subresource, without a final slash.
func (t AppTarget) Prefix() string {
	return "/api/v1/namespaces/" + t.Namespace + "/services/" + t.ProxyName() + "/proxy"
}

// Label is the DNS label of t's host: 32 characters of base32 (lower case)
// of a SHA-256 of the target, so every cluster, namespace, Service, scheme
// and port has an origin of its own, the same on every replica and after
// restarts.
func (t AppTarget) Label() string {
	sum := sha256.Sum256([]byte("keyhole.dev/app\x00" + t.Cluster + "\x00" + t.Namespace + "\x00" + t.Service + "\x00" + t.Scheme + "\x00" + t.Port))
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:20]))
}

// AppGrant is what a launch ticket or an app cookie grants: the app at
// Target, on the host whose label is Label, until Expires. Path is where a
// ticket's launch goes (empty in a cookie).
type AppGrant struct {
	Label   string
	Target  AppTarget
	Path    string
	Expires time.Time
}

// AppSealer seals an AppGrant together with a browser session, and opens
// it again (*web.Sessions, with the session keys). use is AppTicketUse or
// AppCookie: a value sealed for one never opens as the other, nor as any
// other cookie.
type AppSealer interface {
	SealApp(ctx context.Context, use string, s *BrowserSession, g AppGrant) (string, error)
	// OpenApp fails for a value that is malformed, forged, sealed for
	// another use, or past the grant's or its session's end.
	OpenApp(ctx context.Context, use, value string) (*BrowserSession, AppGrant, error)
}

// AppsConfig turns in-cluster apps on (StubConfig.Apps).
type AppsConfig struct {
	// Domain is browser.apps.domain: app hosts are <label>.<Domain>.
	Domain string
	Sealer AppSealer
}

// apps is the stub hop's view of AppsConfig, with the parts of app
// origins that come from PublicURL.
type apps struct {
	domain string
	sealer AppSealer
	port   string // ":port" of PublicURL, "" for 443
	// console is the console's URL, for the links of refusal pages.
	console string
}

func newApps(cfg *AppsConfig, publicURL string) (*apps, error) {
	if cfg.Sealer == nil || cfg.Domain == "" {
		return nil, errors.New("proxy: StubConfig.Apps needs Domain and Sealer")
	}
	u, err := url.Parse(publicURL)
	if err != nil || u.Scheme != "https" {
		return nil, fmt.Errorf("proxy: StubConfig.PublicURL %q must be https with Apps", publicURL)
	}
	a := &apps{domain: strings.ToLower(strings.TrimSuffix(cfg.Domain, ".")), sealer: cfg.Sealer, console: strings.TrimRight(publicURL, "/") + "/console"}
	if p := u.Port(); p != "" && p != "443" {
		a.port = ":" + p
	}
	return a, nil
}

// origin is the app origin of label.
func (a *apps) origin(label string) string { return "https://" + label + "." + a.domain + a.port }

// label reads a Host header: under says whether it names a host under the
// apps domain (the stub then serves it as an app host, whatever else);
// label is its first label when that is one the stub makes (else "").
func (a *apps) label(hostport string) (label string, under bool) {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if host == a.domain {
		return "", true
	}
	rest, ok := strings.CutSuffix(host, "."+a.domain)
	if !ok {
		return "", false
	}
	if !appLabelRE.MatchString(rest) {
		return "", true
	}
	return rest, true
}

// WithApps routes requests for app hosts (any host under the apps domain)
// to the app host handler, and all others to next. Without apps it is
// next.
func (s *Stub) WithApps(next http.Handler) http.Handler {
	if s.apps == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if label, under := s.apps.label(r.Host); under {
			s.serveApp(w, r, label)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// appsRequest is the body of a launch.
type appsRequest struct {
	Cluster   string    `json:"cluster"`
	Namespace string    `json:"namespace"`
	Service   string    `json:"service"`
	Scheme    string    `json:"scheme"`
	Port      portValue `json:"port"`
	Path      string    `json:"path"`
}

// portValue is a port given as a JSON string (a name or a number) or a
// JSON number.
type portValue string

func (p *portValue) UnmarshalJSON(b []byte) error {
	var n json.Number
	if err := json.Unmarshal(b, &n); err == nil {
		*p = portValue(n.String())
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New("port must be a name or a number")
	}
	*p = portValue(s)
	return nil
}

// AppsAPI serves AppsPath: GET answers whether apps are configured
// ({"enabled": bool}, nothing about clusters); POST launches an app and
// answers {"url"}. Both need an authenticated caller (as
// ClusterList); a launch needs a browser session, from the console (every
// cookie rule of browser.go applies). Every request is audited.
func (s *Stub) AppsAPI() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ar, cred, st := s.ownRequest(w, r)
		refuse := func(st *apierrors.StatusError) {
			kubestatus.Write(w, st)
			o := audit.StatusOutcome(st.ErrStatus, time.Now())
			o.Ended = audit.EndedComplete
			s.record(ar, auditv1.StageResponseComplete, o)
		}
		if st != nil {
			refuse(st)
			return
		}
		ar.User, ar.Groups = cred.user.Name, cred.user.Groups
		var answer any
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			answer = map[string]bool{"enabled": s.apps != nil}
		case http.MethodPost:
			var target AppTarget
			var u string
			u, target, st = s.launchURL(r, cred)
			if target.Cluster != "" {
				ar.Cluster = target.Cluster
			}
			if st != nil {
				s.log.Info("app launch refused", zap.String("user", cred.user.Name), zap.String("reason", st.ErrStatus.Message))
				refuse(st)
				return
			}
			ar.AppOrigin = s.apps.origin(target.Label())
			s.log.Info("app launched", zap.String("user", cred.user.Name), zap.String("cluster", target.Cluster),
				zap.String("namespace", target.Namespace), zap.String("service", target.ProxyName()), zap.String("app_origin", ar.AppOrigin),
				zap.String("browser_session", ar.BrowserSession))
			answer = map[string]string{"url": u}
		default:
			w.Header().Set("Allow", "GET, HEAD, POST")
			refuse(appStatus(http.StatusMethodNotAllowed, metav1.StatusReasonMethodNotAllowed, fmt.Sprintf("%s: GET says whether apps are configured, POST opens one", AppsPath)))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		aw := audit.NewResponseWriter(w)
		_ = json.NewEncoder(aw).Encode(answer)
		s.record(ar, auditv1.StageResponseComplete, &audit.Outcome{Code: http.StatusOK, Finished: time.Now(), BytesOut: aw.BytesWritten(), Ended: audit.EndedComplete})
	})
}

// appStatus is a Status with code, reason and message.
func appStatus(code int, reason metav1.StatusReason, msg string) *apierrors.StatusError {
	return &apierrors.StatusError{ErrStatus: metav1.Status{Status: metav1.StatusFailure, Code: int32(code), Reason: reason, Message: msg}}
}

func badRequest(msg string) *apierrors.StatusError {
	return appStatus(http.StatusBadRequest, metav1.StatusReasonBadRequest, msg)
}

// maxAppPath bounds the path a launch goes to.
const maxAppPath = 2048

// launchURL reads a launch and returns its URL: the app host's
// AppLaunchPath with a ticket.
func (s *Stub) launchURL(r *http.Request, cred credential) (string, AppTarget, *apierrors.StatusError) {
	if s.apps == nil {
		return "", AppTarget{}, kubestatus.NotFound("in-cluster apps are not configured at this gateway (browser.apps)")
	}
	if cred.browser == nil {
		return "", AppTarget{}, kubestatus.Forbidden("apps are opened from the console, with a browser session; with kubectl use kubectl port-forward or kubectl proxy")
	}
	var req appsRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 16<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return "", AppTarget{}, badRequest("the launch must be a JSON object {cluster, namespace, service, port, scheme, path}: " + err.Error())
	}
	t := AppTarget{Cluster: req.Cluster, Namespace: req.Namespace, Service: req.Service, Scheme: req.Scheme, Port: string(req.Port)}
	if t.Scheme == "" {
		t.Scheme = "http"
	}
	if err := t.Validate(); err != nil {
		return "", t, badRequest("the launch names no app: " + err.Error())
	}
	p := req.Path
	if p == "" {
		p = "/"
	}
	if err := checkLaunchPath(p); err != nil {
		return "", t, badRequest(err.Error())
	}
	if st := s.admitApp(cred.user, t.Cluster); st != nil {
		return "", t, st
	}
	label := t.Label()
	ticket, err := s.apps.sealer.SealApp(r.Context(), AppTicketUse, cred.browser, AppGrant{Label: label, Target: t, Path: p, Expires: time.Now().Add(AppTicketLifetime)})
	if err != nil {
		s.log.Error("app ticket not sealed", zap.Error(err))
		return "", t, kubestatus.ServiceUnavailable("the app cannot be opened now; try again")
	}
	return s.apps.origin(label) + AppLaunchPath + "?ticket=" + url.QueryEscape(ticket), t, nil
}

// admitApp checks that cluster is registered, does not verify callers
// itself (the session's token is never sent there), and that the policy
// lets user reach it.
func (s *Stub) admitApp(user *authn.User, cluster string) *apierrors.StatusError {
	entry, ok := s.cfg.Clusters.Cluster(cluster)
	if !ok {
		return kubestatus.NotFound(fmt.Sprintf("cluster %q is not registered at this gateway", cluster))
	}
	if entry.CallerAudience != "" {
		return kubestatus.Forbidden(verifyingClusterMessage(cluster))
	}
	if !s.cfg.Policy.Allowed(user, cluster, entry.Labels) {
		return kubestatus.Forbidden(fmt.Sprintf("user %q may not reach cluster %q through this gateway (policy)", user.Name, cluster))
	}
	return nil
}

// checkLaunchPath: where a launch goes must be a path on the app host
// itself (no scheme, no host, not "//…" or "/\…", which browsers read as
// another host) that appPath accepts.
func checkLaunchPath(p string) error {
	if len(p) > maxAppPath {
		return fmt.Errorf("path is longer than %d bytes", maxAppPath)
	}
	u, err := url.Parse(p)
	if err != nil || u.Scheme != "" || u.Host != "" || u.Opaque != "" || !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//") || strings.ContainsAny(p, "\\\r\n\t") {
		return fmt.Errorf("path %q must be a path on the app's host, starting with a single /", p)
	}
	raw, _, _ := strings.Cut(p, "?")
	raw, _, _ = strings.Cut(raw, "#")
	_, err = appPath(raw, u.Path)
	return err
}

// appPath checks the path of a request to an app host, as received
// (rawPath, still escaped) and decoded (path), and returns the path to
// forward under the Service's prefix. The API server decodes the path
// before it routes and again before it joins it to the Service's address,
// so anything that decodes into a path step could leave the Service: a
// "." or ".." segment, however written (%2e%2e), is refused, as are %2F
// (an encoded /, which the API server would turn into a real one), a
// backslash (some servers read it as /) and control characters.
func appPath(rawPath, path string) (string, error) {
	if !strings.HasPrefix(path, "/") {
		return "", fmt.Errorf("path %q does not start with /", path)
	}
	l := strings.ToLower(rawPath)
	if strings.Contains(l, "%2f") || strings.Contains(l, "%5c") {
		return "", fmt.Errorf("path %q has an encoded / or \\, which the API server's proxy would decode into another path", rawPath)
	}
	for _, c := range path {
		if c < 0x20 || c == 0x7f || c == '\\' {
			return "", fmt.Errorf("path %q has a backslash or a control character", rawPath)
		}
	}
	for _, seg := range strings.Split(path, "/") {
		if seg == "." || seg == ".." {
			return "", fmt.Errorf("path %q has a %q segment, which could leave the app's Service", rawPath, seg)
		}
	}
	return path, nil
}

// appState is what an app request carries to rewrite and modifyResponse.
type appState struct {
	origin string // the app's origin
	prefix string // AppTarget.Prefix()
	// cookie is the request's Cookie header without the stub's cookies
	// ("" for none): the app's own cookies.
	cookie string
}

// appRefusal answers a request to an app host that the stub refuses: an
// HTML page linking to the console for a page load, a Status for anything
// else. Every answer on an app host carries no cookie of the console.
func (a *apps) refuse(w http.ResponseWriter, r *http.Request, st *apierrors.StatusError) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set("Strict-Transport-Security", "max-age=31536000")
	if r.Header.Get("Sec-Fetch-Mode") != "navigate" && !strings.Contains(r.Header.Get("Accept"), "text/html") {
		h.Set("Content-Security-Policy", "sandbox; default-src 'none'")
		kubestatus.Write(w, st)
		return
	}
	h.Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(int(st.ErrStatus.Code))
	title := "This app is not open"
	if st.ErrStatus.Code != http.StatusUnauthorized {
		title = "Request refused"
	}
	_, _ = fmt.Fprintf(w, `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width"><title>%s · Keyhole</title></head>
<body><main><h1>%s</h1><p id="reason">%s</p><p><a href="%s">Open the Keyhole console</a> and open the app from its Service.</p></main></body></html>
`, title, title, html.EscapeString(st.ErrStatus.Message), html.EscapeString(a.console))
}

// serveApp serves a request to an app host (label "" for a host under
// the apps domain that is not an app's).
func (s *Stub) serveApp(w http.ResponseWriter, r *http.Request, label string) {
	start := time.Now()
	reqID := newRequestID()
	w.Header().Set(HeaderRequestID, reqID)
	log := s.log.WithLazy(zap.String("request_id", reqID), zap.String("remote_addr", r.RemoteAddr), zap.String("app_host", r.Host))
	ar := audit.Request{ID: reqID, Received: start, SourceIP: audit.SourceIP(r.RemoteAddr), UserAgent: r.UserAgent(),
		Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery}
	if label != "" {
		ar.AppOrigin = s.apps.origin(label)
	}
	metricCluster := "none"
	refuse := func(st *apierrors.StatusError) {
		log.Info("app request refused", zap.String("path", r.URL.Path), zap.Int32("code", st.ErrStatus.Code), zap.String("reason", st.ErrStatus.Message))
		s.apps.refuse(w, r, st)
		o := audit.StatusOutcome(st.ErrStatus, time.Now())
		o.Ended = audit.EndedComplete
		s.record(ar, auditv1.StageResponseComplete, o)
		s.cfg.Metrics.observe(metricCluster, int(st.ErrStatus.Code), time.Since(start), 0, 0, false)
	}
	if label == "" {
		refuse(kubestatus.NotFound(fmt.Sprintf("no app is served at %q", r.Host)))
		return
	}
	if r.URL.Path == AppLaunchPath {
		ar.RawQuery = "" // the ticket
		s.launchApp(w, r, label, &ar, log, refuse)
		return
	}

	// The app cookie: which session, which app.
	bs, g, st := s.openAppCookie(r, label)
	if bs != nil {
		ar.BrowserSession = bs.AuditID
		log = log.WithLazy(zap.String("browser_session", bs.AuditID))
	}
	if st != nil {
		refuse(st)
		return
	}
	t := g.Target
	ar.Cluster = t.Cluster
	appOrigin := s.apps.origin(label)
	if st := appRequestAllowed(r, appOrigin); st != nil {
		refuse(st)
		return
	}
	rel, err := appPath(r.URL.EscapedPath(), r.URL.Path)
	if err != nil {
		refuse(badRequest(err.Error()))
		return
	}
	if strings.HasPrefix(r.RequestURI, "/") {
		// The raw path as sent, not as Go re-escaped it: an encoded / or
		// \ is looked for in what the client wrote.
		raw, _, _ := strings.Cut(r.RequestURI, "?")
		if _, err := appPath(raw, r.URL.Path); err != nil {
			refuse(badRequest(err.Error()))
			return
		}
	}
	rest := t.Prefix() + rel
	ar.Path = rest

	// As a cookie request: the session, its token, the cluster, the policy.
	token, user, st := s.sessionUser(r.Context(), bs)
	if st != nil {
		refuse(st)
		return
	}
	ar.User, ar.Groups = user.Name, user.Groups
	log = log.WithLazy(zap.String("user", user.Name), zap.String("cluster", t.Cluster))
	if _, ok := s.cfg.Clusters.Cluster(t.Cluster); ok {
		metricCluster = t.Cluster
	}
	if st := s.admitApp(user, t.Cluster); st != nil {
		refuse(st)
		return
	}

	state := &reqState{cluster: t.Cluster, reqID: reqID, user: user, browser: bs,
		app: &appState{origin: appOrigin, prefix: t.Prefix(), cookie: appCookies(r.Header)}}
	ctx := context.WithValue(r.Context(), stateKey, state)
	// Everything under services/proxy is long-running to the API server
	// (and an app's WebSocket may live long): tracked for the drain, and
	// admitted again while it runs, so that a sign-out ends it.
	tctx, lr, release, ok := s.drain.track(ctx)
	if !ok {
		w.Header().Set("Retry-After", "1")
		refuse(kubestatus.ServiceUnavailable("this gateway is shutting down: retry (another replica, or this one restarted, will answer)"))
		return
	}
	ctx, state.long = tctx, lr
	expires := g.Expires // the cookie's end, or its session's if sooner
	if !bs.Expires.IsZero() && bs.Expires.Before(expires) {
		expires = bs.Expires
	}
	a := admission{token: token, user: user, cluster: t.Cluster, expires: expires, browser: bs}
	stopRecheck := s.startRecheck(tctx, lr, a, log) // ended by release, which ends tctx
	defer func() { release(); stopRecheck() }()
	out := r.Clone(ctx)
	out.URL.Path, out.URL.RawPath = rest, ""
	out.Header.Del("Authorization") // the API server's credential is the agent's; never the page's
	s.forward(w, r, out, state, ar, log, metricCluster)
}

// openAppCookie opens the request's app cookie: the session it carries
// and its grant, which must be for label.
func (s *Stub) openAppCookie(r *http.Request, label string) (*BrowserSession, AppGrant, *apierrors.StatusError) {
	var value string
	for _, c := range r.Cookies() {
		if c.Name == AppCookie {
			value = c.Value
			break
		}
	}
	if value == "" {
		return nil, AppGrant{}, kubestatus.Unauthorized("this app has not been opened in this browser, or no longer is: open it from the console")
	}
	bs, g, err := s.apps.sealer.OpenApp(r.Context(), AppCookie, value)
	if err != nil {
		return bs, AppGrant{}, kubestatus.Unauthorized("this app's cookie is not valid (" + err.Error() + "): open the app again from the console")
	}
	if g.Label != label {
		return bs, g, kubestatus.Forbidden("this app's cookie was issued for another app host")
	}
	return bs, g, nil
}

// appRequestAllowed applies the rules of an app host to a request other
// than the launch. An upgrade must be a WebSocket whose Origin is exactly
// the app's origin. Any other request must come from the app's own origin
// (Sec-Fetch-Site same-origin), from the user (none: the address bar, a
// bookmark), or be a top-level GET navigation (a link from elsewhere, an
// identity provider sending the user back): an app host answers no
// subresource, fetch, form post or frame of another origin, other app
// hosts and the console included. A browser without Fetch Metadata is
// judged by its Origin, when it sends one.
func appRequestAllowed(r *http.Request, appOrigin string) *apierrors.StatusError {
	req := origin.FromHeader(r.Header)
	if isUpgrade(r.Header) {
		if !isWebSocket(r) {
			return kubestatus.Forbidden("an app host accepts WebSocket upgrades only")
		}
		if ok, why := origin.SameOriginUpgrade(req, appOrigin); !ok {
			return kubestatus.Forbidden(fmt.Sprintf("cross-origin WebSocket refused: an app accepts WebSockets only from its own origin %s (%s)", appOrigin, why))
		}
		return nil
	}
	if req.Repeated != "" {
		return kubestatus.Forbidden(req.Repeated + " was sent more than once")
	}
	site := strings.ToLower(req.SecFetchSite)
	switch site {
	case "same-origin", "none":
		return nil
	case "":
		if req.Origin != "" && req.Origin != "null" && !originEqual(req.Origin, appOrigin) {
			return kubestatus.Forbidden(fmt.Sprintf("cross-origin request refused: Origin %q is not the app's origin %s", req.Origin, appOrigin))
		}
		return nil
	}
	navigation := r.Header.Get("Sec-Fetch-Mode") == "navigate" && (r.Method == http.MethodGet || r.Method == http.MethodHead)
	if dest := r.Header.Get("Sec-Fetch-Dest"); navigation && (dest == "document" || dest == "") {
		return nil
	}
	return kubestatus.Forbidden(fmt.Sprintf("request from another origin refused (Sec-Fetch-Site %q, mode %q, destination %q): an app answers its own pages and top-level links only",
		req.SecFetchSite, r.Header.Get("Sec-Fetch-Mode"), r.Header.Get("Sec-Fetch-Dest")))
}

// originEqual compares an Origin header with an origin (origin.Of form).
func originEqual(got, want string) bool {
	ok, _ := origin.SameOriginUpgrade(origin.Request{Origin: got}, want)
	return ok
}

// appCookies is the Cookie header for the app: the request's cookies
// without the stub's own (the app cookie, and any __Host-keyhole… a
// browser might hold for this host).
func appCookies(h http.Header) string {
	var kept []string
	for _, line := range h.Values("Cookie") {
		for _, part := range strings.Split(line, ";") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			name, _, _ := strings.Cut(part, "=")
			if strings.HasPrefix(strings.TrimSpace(name), "__Host-keyhole") {
				continue
			}
			kept = append(kept, part)
		}
	}
	return strings.Join(kept, "; ")
}

// launchApp serves AppLaunchPath: the ticket becomes the app cookie, and
// the browser goes on to the ticket's path.
func (s *Stub) launchApp(w http.ResponseWriter, r *http.Request, label string, ar *audit.Request, log *zap.Logger, refuse func(*apierrors.StatusError)) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET")
		refuse(appStatus(http.StatusMethodNotAllowed, metav1.StatusReasonMethodNotAllowed, "the app launch is a GET"))
		return
	}
	bs, g, err := s.apps.sealer.OpenApp(r.Context(), AppTicketUse, r.URL.Query().Get("ticket"))
	if bs != nil {
		ar.BrowserSession = bs.AuditID
	}
	if err != nil {
		refuse(kubestatus.Unauthorized("the link to this app is not valid or has expired (" + err.Error() + "); open the app again from the console"))
		return
	}
	ar.Cluster = g.Target.Cluster
	if g.Label != label {
		refuse(kubestatus.Forbidden("this link was issued for another app host"))
		return
	}
	_, user, st := s.sessionUser(r.Context(), bs)
	if st != nil {
		refuse(st)
		return
	}
	ar.User, ar.Groups = user.Name, user.Groups
	if st := s.admitApp(user, g.Target.Cluster); st != nil {
		refuse(st)
		return
	}
	expires := time.Now().Add(AppCookieLifetime)
	if !bs.Expires.IsZero() && bs.Expires.Before(expires) {
		expires = bs.Expires
	}
	value, err := s.apps.sealer.SealApp(r.Context(), AppCookie, bs, AppGrant{Label: label, Target: g.Target, Expires: expires})
	if err != nil {
		log.Error("app cookie not sealed", zap.Error(err))
		refuse(kubestatus.ServiceUnavailable("the app cannot be opened now; try again"))
		return
	}
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Strict-Transport-Security", "max-age=31536000")
	http.SetCookie(w, &http.Cookie{Name: AppCookie, Value: value, Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode,
		MaxAge: max(1, int(time.Until(expires).Seconds()))})
	http.Redirect(w, r, g.Path, http.StatusSeeOther)
	log.Info("app opened", zap.String("user", user.Name), zap.String("cluster", g.Target.Cluster), zap.String("service", g.Target.ProxyName()),
		zap.Time("until", expires))
	s.record(*ar, auditv1.StageResponseComplete, &audit.Outcome{Code: http.StatusSeeOther, Finished: time.Now(), Ended: audit.EndedComplete})
}

// appResponse edits an app's response for the browser: the app runs as
// itself on its own origin (no sandbox), but it may not grant CORS, set
// the stub's cookies or cookies for other hosts, or announce other
// servers (Alt-Svc); it gets framing and opener protections unless it has
// its own; and the API server's proxy rewriting of Location and of HTML
// links (it prefixes absolute paths with the proxy path) is undone, so
// the app keeps its own paths at its origin's root.
func appResponse(resp *http.Response, a *appState) error {
	h := resp.Header
	deletePrefix(h, "Access-Control-")
	h.Del("Alt-Svc")
	// Clear-Site-Data "cookies" would clear the cookies of the whole site:
	// every other app host's (and, with allowSameSite, the console's).
	h.Del("Clear-Site-Data")
	if cs := h.Values("Set-Cookie"); len(cs) > 0 {
		h.Del("Set-Cookie")
		for _, c := range cs {
			if c = appSetCookie(c); c != "" {
				h.Add("Set-Cookie", c)
			}
		}
	}
	for _, k := range []string{"Location", "Content-Location"} {
		if v := h.Get(k); v != "" {
			h.Set(k, unprefixURL(v, a.prefix, a.origin))
		}
	}
	if h.Get("X-Frame-Options") == "" && !strings.Contains(strings.ToLower(strings.Join(h.Values("Content-Security-Policy"), ",")), "frame-ancestors") {
		h.Set("X-Frame-Options", "SAMEORIGIN")
	}
	if h.Get("Cross-Origin-Opener-Policy") == "" {
		h.Set("Cross-Origin-Opener-Policy", "same-origin-allow-popups")
	}
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	if h.Get("Strict-Transport-Security") == "" {
		h.Set("Strict-Transport-Security", "max-age=31536000")
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return nil
	}
	return unprefixHTML(resp, a.prefix, a.origin)
}

// appSetCookie is an app's Set-Cookie as the browser gets it: "" for a
// cookie named like the stub's own (__Host-keyhole…, in any case, or a
// nameless cookie whose value starts so), which an app may never set;
// otherwise without a Domain attribute, so that the cookie
// stays on the app's host and cannot reach other app hosts (or, with
// allowSameSite, the console's).
func appSetCookie(line string) string {
	parts := strings.Split(line, ";")
	name, value, hasValue := strings.Cut(parts[0], "=")
	name = strings.ToLower(strings.TrimSpace(name))
	if strings.HasPrefix(name, "__host-keyhole") ||
		(hasValue && name == "" && strings.HasPrefix(strings.ToLower(strings.TrimSpace(value)), "__host-keyhole")) {
		return ""
	}
	kept := parts[:1]
	for _, p := range parts[1:] {
		k, _, _ := strings.Cut(strings.TrimSpace(p), "=")
		if strings.EqualFold(strings.TrimSpace(k), "domain") {
			continue
		}
		kept = append(kept, p)
	}
	return strings.Join(kept, ";")
}

// unprefixURL undoes the API server's rewriting of a URL the app wrote:
// the proxy prefixes absolute paths (and URLs of the host the app was
// reached by) with the Service's proxy path. A URL under prefix becomes
// the same path at the app's origin (relative, when it had no host);
// anything else is left as it is.
func unprefixURL(v, prefix, appOrigin string) string {
	u, err := url.Parse(v)
	if err != nil || u.Opaque != "" {
		return v
	}
	rest, ok := strings.CutPrefix(u.Path, prefix)
	if !ok || (rest != "" && !strings.HasPrefix(rest, "/")) {
		return v
	}
	if rest == "" {
		rest = "/"
	}
	u.Path, u.RawPath = rest, ""
	if u.Host != "" {
		o, _ := url.Parse(appOrigin)
		u.Scheme, u.Host = o.Scheme, o.Host
	}
	return u.String()
}

// maxHTMLRewrite bounds the HTML page whose links are restored. The API
// server's own rewriting holds the whole page in memory too.
const maxHTMLRewrite = 16 << 20

// unprefixHTML restores the links of an HTML response that the API
// server's proxy rewrote (the same tags and attributes it rewrites, in a
// body it decoded: identity, gzip or deflate).
func unprefixHTML(resp *http.Response, prefix, appOrigin string) error {
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	enc := strings.ToLower(strings.TrimSpace(resp.Header.Get("Content-Encoding")))
	if mt != "text/html" || (enc != "" && enc != "gzip" && enc != "deflate") || resp.Body == nil || resp.Body == http.NoBody {
		return nil
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxHTMLRewrite+1))
	if err != nil {
		return err
	}
	if len(raw) > maxHTMLRewrite {
		resp.Body = readCloser{io.MultiReader(strings.NewReader(string(raw)), resp.Body), resp.Body}
		return nil
	}
	_ = resp.Body.Close()
	out, changed, err := rewriteHTMLLinks(raw, enc, func(v string) string { return unprefixURL(v, prefix, appOrigin) }, prefix)
	if err != nil || !changed {
		out = raw // not HTML the tokenizer reads, or nothing to restore: as the app sent it
	}
	resp.Body = io.NopCloser(strings.NewReader(string(out)))
	resp.ContentLength = int64(len(out))
	resp.Header.Set("Content-Length", strconv.Itoa(len(out)))
	return nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

// sessionUser is the browser session's ID token as it stands now and the
// user it authenticates as (a cookie request's steps 5 and 6), or the 401
// that says why the session no longer stands.
func (s *Stub) sessionUser(ctx context.Context, bs *BrowserSession) (string, *authn.User, *apierrors.StatusError) {
	token, st := s.cfg.Sessions.Current(ctx, nil, bs)
	if st != nil {
		return "", nil, st
	}
	user, err := s.cfg.Auth.Authenticate(ctx, token)
	if err != nil {
		return "", nil, kubestatus.Unauthorized(browserTokenMessage(err))
	}
	return token, user, nil
}

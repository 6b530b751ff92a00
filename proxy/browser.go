package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/internal/kubestatus"
	"github.com/keyhole-dev/keyhole/internal/origin"
)

// BrowserSessions resolves the browser session cookie of a cookie request
// (a request with no bearer token that carries the session cookie). The
// stub's implementation is *web.Sessions. The rules a cookie request must
// pass before its session is even looked up (origin, custom header, no
// proxy subresources) are this package's: see docs/browser.md.
type BrowserSessions interface {
	// CookieName is the session cookie's name ("__Host-keyhole").
	CookieName() string
	// Open unseals r's session cookie, with local cryptography only (no
	// shared state). found is false when r carries no session cookie. A
	// cookie that is malformed, sealed with an unknown key, expired or idle
	// too long gives a 401 StatusError, and Open has set the Set-Cookie
	// that clears it on w.
	Open(w http.ResponseWriter, r *http.Request) (s *BrowserSession, found bool, st *apierrors.StatusError)
	// Current returns s's ID token as it stands now: refreshed with the
	// refresh token when it is due (once across requests, tabs and
	// replicas), or a 401 StatusError saying why s no longer stands
	// (signed out, expired, refresh failed). w may be nil (a recheck of a
	// long-running request); when it is not, Current may set cookies on it.
	Current(ctx context.Context, w http.ResponseWriter, s *BrowserSession) (token string, st *apierrors.StatusError)
}

// BrowserSession is an open browser session, as BrowserSessions.Open
// found it.
type BrowserSession struct {
	// AuditID identifies the session in audit records
	// (audit.AnnotationBrowserSession): a hash of the session ID, never the
	// cookie.
	AuditID string
	// Expires is the session's absolute end: what a long-running request
	// made with it takes as its credential's expiry.
	Expires time.Time
	// Ref is the implementation's own handle.
	Ref any
}

// HeaderConsole is the custom header every non-upgrade cookie request must
// carry ("X-Keyhole-Console: 1"): a cross-site page cannot send it without
// a CORS preflight, which the stub never grants, so links, forms, images
// and scripts of other sites cannot use the session.
const HeaderConsole = "X-Keyhole-Console"

// Cookie requests. A request is a cookie request when it carries no bearer
// token (no Authorization header, no WebSocket bearer subprotocol), the
// stub has Sessions, and the request carries the session cookie. Before its
// session's token is used, it must pass, in this order (each refusal a
// Status, audited as a refusal, with the browser session's AuditID from
// the second check on):
//
//  1. Sessions.Open: the cookie unseals (401, and the cookie is cleared);
//  2. an upgrade (WebSocket, SPDY): Origin present and equal to the public
//     origin (403); browsers send no Sec-Fetch-Site on WebSocket
//     handshakes and cannot set headers on them;
//  3. any other request: from the public origin (origin.SameOrigin: 403);
//  4. any other request, GET included: HeaderConsole: 1 (403), which a
//     link, form, image or script of another origin cannot send without a
//     CORS preflight, which the stub never grants;
//  5. Sessions.Current: the session still stands (401);
//  6. the session's ID token passes the very Authenticator bearer tokens
//     pass (401), and the policy applies as for them;
//  7. no proxy subresource (pods, services, nodes /proxy, and the legacy
//     /api/v1/proxy/… paths): they serve the cluster's own pages, whose
//     scripts would run on the stub's origin (403);
//  8. not a cluster whose agents verify callers (Cluster.CallerAudience):
//     they accept only ID tokens issued for them, so the session's token is
//     never sent there (403).
//
// Responses: every response from a cluster loses its Access-Control-* and
// Set-Cookie headers (bearer requests too: the stub grants no CORS, and a
// cluster sets no cookie on the stub's origin); a cookie request's
// response, the stub's refusals included, carries browserResponseHeaders.
// Nothing of the session reaches an agent: rewrite removes the Cookie
// header and HeaderConsole.

// credential is an authenticated caller: its token and user, and for a
// cookie request its browser session (nil for a bearer request).
type credential struct {
	token   string
	user    *authn.User
	browser *BrowserSession
	// cookie: a cookie request (browser may still be nil, when Open
	// refused the cookie).
	cookie bool
}

// auditID is the browser session's audit ID, or "" for a bearer request.
func (c credential) auditID() string {
	if c.browser == nil {
		return ""
	}
	return c.browser.AuditID
}

// hasBearer reports whether r brings a bearer credential of its own (or
// something in its place): then it is a bearer request, and any cookie it
// carries is ignored.
func hasBearer(r *http.Request) bool {
	if r.Header.Get("Authorization") != "" {
		return true
	}
	return isWebSocket(r) && parseBearerProtocols(r.Header).found > 0
}

// authenticate finds the caller's credential and authenticates it; a
// Status (401, or 403 for a cookie request that breaks a rule) refuses the
// request, saying why. A refused cookie request's credential still carries
// its browser session once Open has found it, for the audit record.
func (s *Stub) authenticate(w http.ResponseWriter, r *http.Request) (credential, *apierrors.StatusError) {
	if !hasBearer(r) && s.cfg.Sessions != nil {
		sess, found, st := s.cfg.Sessions.Open(w, r)
		if found || st != nil {
			c := credential{browser: sess, cookie: true}
			if st != nil {
				return c, st
			}
			return s.authenticateBrowser(w, r, c)
		}
	}
	token, st := callerToken(r)
	if st != nil {
		return credential{}, st
	}
	user, err := s.cfg.Auth.Authenticate(r.Context(), token)
	if err != nil {
		return credential{}, kubestatus.Unauthorized(unauthorizedMessage(err))
	}
	return credential{token: token, user: user}, nil
}

// authenticateBrowser runs the checks of a cookie request whose cookie Open
// accepted (c.browser).
func (s *Stub) authenticateBrowser(w http.ResponseWriter, r *http.Request, c credential) (credential, *apierrors.StatusError) {
	if c.browser == nil {
		return c, kubestatus.Unauthorized("the browser session is not valid: sign in again")
	}
	req := origin.FromHeader(r.Header)
	if isUpgrade(r.Header) {
		if ok, why := origin.SameOriginUpgrade(req, s.origin); !ok {
			return c, kubestatus.Forbidden(fmt.Sprintf("cross-origin WebSocket refused: a browser session is accepted only from %s (%s)", s.origin, why))
		}
	} else {
		if ok, why := origin.SameOrigin(req, s.origin); !ok {
			return c, kubestatus.Forbidden(fmt.Sprintf("cross-origin request refused: a browser session is accepted only from %s (%s)", s.origin, why))
		}
		if r.Header.Get(HeaderConsole) != "1" {
			return c, kubestatus.Forbidden(fmt.Sprintf("a browser session needs the header %s: 1 on every request; links, forms and images cannot send it", HeaderConsole))
		}
	}
	token, st := s.cfg.Sessions.Current(r.Context(), w, c.browser)
	if st != nil {
		return c, st
	}
	user, err := s.cfg.Auth.Authenticate(r.Context(), token)
	if err != nil {
		return c, kubestatus.Unauthorized(browserTokenMessage(err))
	}
	c.token, c.user = token, user
	return c, nil
}

// browserTokenMessage tells a cookie caller why its session's ID token was
// refused.
func browserTokenMessage(err error) string {
	if errors.Is(err, authn.ErrInvalidToken) {
		return "the browser session's ID token is not valid (unknown, expired or revoked): sign in again"
	}
	return "the browser session's ID token is not valid: " + err.Error()
}

// proxySubresourceMessage refuses a cookie request to a proxy subresource.
const proxySubresourceMessage = "the API server's proxy subresources serve the cluster's own pages and are not reachable with a browser session; use kubectl port-forward or kubectl proxy"

// proxySubresource reports whether rest (a path in a cluster, as the stub
// forwards it: decoded, so %2F is a /) reaches one of the API server's
// proxy subresources (pods/proxy, services/proxy, nodes/proxy, or any
// group's proxy subresource) or the legacy /api/v1/proxy/… paths. It reads
// the path as sent and cleaned ("//", "." and ".." resolved), as
// longRunning does, so that a router on the way that cleans paths cannot
// turn an allowed path into a proxy one.
func proxySubresource(method, rest string) bool {
	for _, p := range []string{rest, path.Clean("/" + rest)} {
		if !slices.Contains(strings.Split(p, "/"), "proxy") {
			continue
		}
		info, err := requestInfoFactory.NewRequestInfo(&http.Request{Method: method, URL: &url.URL{Path: p}})
		if err == nil && (info.Verb == "proxy" || (info.IsResourceRequest && info.Subresource == "proxy")) {
			return true
		}
	}
	return false
}

// verifyingClusterMessage refuses a cookie request to a cluster whose
// agents verify callers themselves.
func verifyingClusterMessage(cluster string) string {
	return fmt.Sprintf("cluster %q verifies callers itself and accepts only ID tokens issued for it; use kubectl with `stub kubeconfig --oidc`", cluster)
}

// setBrowserResponseHeaders sets on h the headers of every answer to a
// cookie request: the body is never sniffed into HTML, never runs script
// or loads anything even when opened as a page (a sandbox without
// allow-same-origin: an opaque origin without the stub's cookies), is
// never cached, and is never embedded by another origin.
func (s *Stub) setBrowserResponseHeaders(h http.Header) {
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "sandbox; default-src 'none'")
	h.Set("Cache-Control", "no-store")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	if strings.HasPrefix(s.origin, "https://") {
		h.Set("Strict-Transport-Security", "max-age=31536000")
	}
}

// stripClusterResponseHeaders removes what a cluster may not say to a
// browser on the stub's origin: CORS grants (kube-apiserver's
// --cors-allowed-origins) and cookies.
func stripClusterResponseHeaders(h http.Header) {
	deletePrefix(h, "Access-Control-")
	h.Del("Set-Cookie")
}

package proxy

import (
	"context"
	"net/http"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
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

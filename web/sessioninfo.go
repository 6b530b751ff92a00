package web

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/keyhole-dev/keyhole/internal/kubestatus"
	"github.com/keyhole-dev/keyhole/internal/origin"
	"github.com/keyhole-dev/keyhole/proxy"
)

// SessionPath answers the console who is signed in and until when: GET,
// a cookie request with the console header (as /clusters/… needs), 401
// when signed out. It says nothing about clusters.
const SessionPath = "/keyhole/v1/session"

// SessionInfo is SessionPath's JSON answer.
type SessionInfo struct {
	User   string   `json:"user"`
	Groups []string `json:"groups,omitempty"`
	// Issuer is the sign-in's display name and issuer URL.
	Issuer    string `json:"issuer,omitempty"`
	IssuerURL string `json:"issuerURL,omitempty"`
	// Expires is the session's absolute end (RFC 3339); every use moves
	// its idle end, IdleTimeout (seconds) after the last request.
	Expires     time.Time `json:"expires"`
	IdleTimeout int64     `json:"idleTimeoutSeconds"`
	// LogoutPath is where the console's "Sign out" form posts.
	LogoutPath string `json:"logoutPath"`
}

// serveSessionInfo serves GET SessionPath.
func (s *Sessions) serveSessionInfo(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "sandbox; default-src 'none'")
	h.Set("Cache-Control", "no-store")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	if ok, why := origin.SameOrigin(origin.FromHeader(r.Header), s.origin); !ok {
		kubestatus.Write(w, kubestatus.Forbidden(fmt.Sprintf("cross-origin request refused: the session is shown only to %s (%s)", s.origin, why)))
		return
	}
	if r.Header.Get(proxy.HeaderConsole) != "1" {
		kubestatus.Write(w, kubestatus.Forbidden(fmt.Sprintf("the session is shown only to requests with the header %s: 1", proxy.HeaderConsole)))
		return
	}
	u, _, bs, found, err := s.sessionOf(w, r)
	switch {
	case !found:
		kubestatus.Write(w, kubestatus.Unauthorized("not signed in"))
		return
	case errors.Is(err, errSessionEnded):
		kubestatus.Write(w, kubestatus.Unauthorized("the browser session has ended: sign in again"))
		return
	case err != nil:
		kubestatus.Write(w, kubestatus.Unauthorized("your sign-in is no longer accepted: sign in again"))
		return
	}
	info := SessionInfo{User: u.Name, Groups: u.Groups, Expires: bs.Expires.UTC(), IdleTimeout: int64(s.cfg.IdleTimeout / time.Second), LogoutPath: LogoutPath}
	if hd, ok := bs.Ref.(*handle); ok {
		if l, ok := s.login(hd.c.Iss); ok {
			info.Issuer, info.IssuerURL = l.Name, l.IssuerURL
		}
	}
	h.Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(info)
}

package web

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/keyhole-dev/keyhole/audit"
	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/internal/kubestatus"
	"github.com/keyhole-dev/keyhole/proxy"
)

// The session cookie seals what finds and opens the session's record, and
// nothing else: the tokens live in the record (a real ID token with many
// groups is larger than the ~4 KB browsers keep in a cookie), sealed under
// RK, which only the cookie holds.
type sessionCookie struct {
	SID  []byte `json:"s"` // 16 random bytes; the record's name and the audit ID derive from it
	RK   []byte `json:"k"` // 32 random bytes: the key the record's tokens are sealed with
	Iss  string `json:"i"` // Login.ID
	IAT  int64  `json:"t"` // sign-in, Unix seconds
	Seen int64  `json:"n"` // last use (at most seenEvery old)
	Exp  int64  `json:"e"` // absolute end
}

// seenEvery is how stale the cookie's last-use time may get before a
// response re-seals it: idle sessions end within IdleTimeout+seenEvery.
const seenEvery = 5 * time.Minute

// refreshMargin: an ID token with less than this left is refreshed first
// (or, for tokens that live less than three times as long, a third of
// their lifetime: a one-minute token is refreshed with 20 s left, not on
// every request).
const refreshMargin = 60 * time.Second

// valid returns the record's ID token if it is not due for a refresh.
func (s *Sessions) valid(h *handle, rec *Record) (string, bool, error) {
	now := s.cfg.Now()
	if now.Before(rec.IDTokenExpires.Add(-refreshMargin)) {
		t, err := openRecordTokens(h, rec)
		return t.ID, err == nil, err
	}
	if !now.Before(rec.IDTokenExpires) {
		return "", false, nil
	}
	t, err := openRecordTokens(h, rec)
	if err != nil {
		return "", false, err
	}
	margin := refreshMargin
	iat, exp := authn.TokenIssuedAt(t.ID), authn.CredentialExpiry(t.ID, &authn.User{})
	if life := exp.Sub(iat); !iat.IsZero() && !exp.IsZero() && life > 0 && life < 3*refreshMargin {
		margin = life / 3
	}
	return t.ID, now.Before(rec.IDTokenExpires.Add(-margin)), nil
}

// handle is a session as Open found it (proxy.BrowserSession.Ref).
type handle struct {
	c      sessionCookie
	name   string // the record's name
	reseal bool   // the cookie's Seen is stale and the response may carry a new one
}

// tokens are what a record seals.
type tokens struct {
	ID      string `json:"id"`
	Refresh string `json:"refresh,omitempty"`
}

// recordName is the name of the record of session sid.
func recordName(sid []byte) string {
	sum := sha256.Sum256(sid)
	return hex.EncodeToString(sum[:16])
}

// auditID identifies session sid in audit records; it tells nothing of
// the cookie or the record's name.
func auditID(sid []byte) string {
	sum := sha256.Sum256(append([]byte("keyhole.dev/audit\x00"), sid...))
	return hex.EncodeToString(sum[:8])
}

// CookieName is the session cookie's name.
func (s *Sessions) CookieName() string { return SessionCookie }

// Open unseals r's session cookie with local cryptography (and, for a key
// this replica has not seen yet, one fresh read of the keys). A cookie
// that does not open, has expired or went unused for longer than
// IdleTimeout is a 401, and its clearing Set-Cookie is on w.
func (s *Sessions) Open(w http.ResponseWriter, r *http.Request) (*proxy.BrowserSession, bool, *apierrors.StatusError) {
	ck, err := r.Cookie(SessionCookie)
	if err != nil {
		return nil, false, nil
	}
	h, why := s.openSession(r.Context(), ck.Value)
	if why != "" {
		clearCookie(w, SessionCookie)
		return nil, true, kubestatus.Unauthorized("the browser session " + why + ": sign in again at " + s.cfg.PublicURL + "/")
	}
	h.reseal = s.cfg.Now().Sub(time.Unix(h.c.Seen, 0)) > seenEvery && !isUpgrade(r)
	return &proxy.BrowserSession{AuditID: auditID(h.c.SID), Expires: time.Unix(h.c.Exp, 0), Ref: h}, true, nil
}

// openSession opens a session cookie's value, or says why not.
func (s *Sessions) openSession(ctx context.Context, value string) (*handle, string) {
	plain, err := s.sealer.open(ctx, SessionCookie, value)
	if err != nil {
		if !errors.Is(err, errMalformed) && !errors.Is(err, errForged) && !errors.Is(err, errUnknownKey) {
			s.log.Warn("session cookie not opened", zap.Error(err))
		}
		return nil, "is not valid"
	}
	var c sessionCookie
	if json.Unmarshal(plain, &c) != nil || len(c.SID) != 16 || len(c.RK) != 32 {
		return nil, "is not valid"
	}
	now := s.cfg.Now()
	switch {
	case !now.Before(time.Unix(c.Exp, 0)):
		return nil, "has expired"
	case now.Sub(time.Unix(c.Seen, 0)) > s.cfg.IdleTimeout:
		return nil, "went unused for longer than " + s.cfg.IdleTimeout.String()
	}
	return &handle{c: c, name: recordName(c.SID)}, ""
}

// Current returns the session's ID token as it stands now, refreshed
// first when it has less than a minute left (once across requests, tabs
// and replicas), or a 401 saying why the session no longer stands; then
// w, if not nil, gets the clearing Set-Cookie. A failure to read the
// store is a 503.
func (s *Sessions) Current(ctx context.Context, w http.ResponseWriter, bs *proxy.BrowserSession) (string, *apierrors.StatusError) {
	h, ok := bs.Ref.(*handle)
	if !ok || h == nil {
		return "", kubestatus.Unauthorized("not a browser session of this stub")
	}
	token, st := s.current(ctx, h)
	if st != nil {
		if st.ErrStatus.Code == http.StatusUnauthorized && w != nil {
			clearCookie(w, SessionCookie)
		}
		return "", st
	}
	if h.reseal && w != nil {
		s.touch(ctx, w, h)
	}
	return token, nil
}

func (s *Sessions) current(ctx context.Context, h *handle) (string, *apierrors.StatusError) {
	rec, err := s.cfg.Store.GetSession(ctx, h.name, false)
	if err != nil {
		s.log.Error("browser session record not read", zap.Error(err))
		return "", kubestatus.ServiceUnavailable("the browser session cannot be read now; try again")
	}
	if st := s.stands(rec, h); st != nil {
		return "", st
	}
	if token, ok, err := s.valid(h, rec); err != nil {
		return "", s.unauthorized("does not match its record")
	} else if ok {
		return token, nil
	}
	// Collapse this process's refreshes of the session into one; waiters
	// stop waiting when their own request ends, the refresh does not.
	ch := s.flight.DoChan(h.name, func() (any, error) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.refreshFor)
		defer cancel()
		return s.refresh(rctx, h)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			var st *apierrors.StatusError
			if errors.As(res.Err, &st) {
				return "", st
			}
			return "", kubestatus.ServiceUnavailable("the browser session cannot be refreshed now; try again")
		}
		return res.Val.(string), nil
	case <-ctx.Done():
		return "", kubestatus.ServiceUnavailable("the request ended while the browser session was refreshed")
	}
}

// stands says why rec (nil: none) no longer holds h's session, or nil.
func (s *Sessions) stands(rec *Record, h *handle) *apierrors.StatusError {
	switch {
	case rec == nil:
		return s.unauthorized("has ended (signed out, or its refresh failed)")
	case rec.Issuer != h.c.Iss:
		return s.unauthorized("does not match its record")
	case !s.cfg.Now().Before(rec.Expires):
		return s.unauthorized("has expired")
	}
	return nil
}

func (s *Sessions) unauthorized(why string) *apierrors.StatusError {
	return kubestatus.Unauthorized("the browser session " + why + ": sign in again at " + s.cfg.PublicURL + "/")
}

func openRecordTokens(h *handle, rec *Record) (tokens, error) {
	var t tokens
	plain, err := openRecord(h.c.RK, h.name, rec.Sealed)
	if err != nil {
		return t, err
	}
	if err := json.Unmarshal(plain, &t); err != nil || t.ID == "" {
		return t, errMalformed
	}
	return t, nil
}

// touch re-seals h's cookie with Seen = now (and the current key, which
// moves sessions to a new key after a rotation).
func (s *Sessions) touch(ctx context.Context, w http.ResponseWriter, h *handle) {
	c := h.c
	c.Seen = s.cfg.Now().Unix()
	if err := s.setSessionCookie(ctx, w, c); err != nil {
		s.log.Warn("session cookie not renewed", zap.Error(err))
	}
}

func (s *Sessions) setSessionCookie(ctx context.Context, w http.ResponseWriter, c sessionCookie) error {
	plain, err := json.Marshal(c)
	if err != nil {
		return err
	}
	v, err := s.sealer.seal(ctx, SessionCookie, plain)
	if err != nil {
		return err
	}
	// No Max-Age: the cookie ends with the browser session at the latest;
	// the sealed Exp is the real end.
	setCookie(w, &http.Cookie{Name: SessionCookie, Value: v, Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	return nil
}

// setCookie sets c on w, replacing a Set-Cookie of the same name that w
// already carries.
func setCookie(w http.ResponseWriter, c *http.Cookie) {
	if w == nil {
		return
	}
	h := w.Header()
	prefix := c.Name + "="
	kept := h.Values("Set-Cookie")[:0:0]
	for _, v := range h.Values("Set-Cookie") {
		if !strings.HasPrefix(v, prefix) {
			kept = append(kept, v)
		}
	}
	h.Del("Set-Cookie")
	for _, v := range kept {
		h.Add("Set-Cookie", v)
	}
	http.SetCookie(w, c)
}

// clearCookie tells the browser to drop the cookie called name.
func clearCookie(w http.ResponseWriter, name string) {
	sameSite := http.SameSiteStrictMode
	if strings.HasPrefix(name, loginCookiePrefix) {
		sameSite = http.SameSiteLaxMode
	}
	setCookie(w, &http.Cookie{Name: name, Value: "", Path: "/", MaxAge: -1, Secure: true, HttpOnly: true, SameSite: sameSite})
}

func isUpgrade(r *http.Request) bool {
	for _, v := range r.Header.Values("Connection") {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), "upgrade") {
				return true
			}
		}
	}
	return false
}

// endSession deletes the session's record after a failed refresh, audits
// it and says so.
func (s *Sessions) endSession(ctx context.Context, h *handle, user, why string) *apierrors.StatusError {
	if err := s.cfg.Store.DeleteSession(ctx, h.name); err != nil {
		s.log.Error("browser session record not deleted", zap.Error(err))
	}
	st := s.unauthorized("has ended: " + why)
	s.event(nil, audit.BrowserEventRefreshFailed, auditID(h.c.SID), &authn.User{Name: user}, http.StatusUnauthorized, st.ErrStatus.Message)
	s.log.Info("browser session ended", zap.String("browser_session", auditID(h.c.SID)), zap.String("user", user), zap.String("why", why))
	return st
}

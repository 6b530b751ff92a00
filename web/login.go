package web

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"go.uber.org/zap"
	"golang.org/x/oauth2"

	"github.com/keyhole-dev/keyhole/audit"
	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/internal/origin"
)

// loginMaxAge is how long a sign-in may take at the IdP.
const loginMaxAge = 10 * time.Minute

// maxThen bounds the page a sign-in returns to.
const maxThen = 1024

// loginState is what a login cookie seals: everything the callback needs,
// so that it may land on any replica.
type loginState struct {
	State    string `json:"s"`
	Nonce    string `json:"n"`
	Verifier string `json:"v"` // PKCE code verifier
	Issuer   string `json:"i"` // Login.ID
	Then     string `json:"t"`
	Exp      int64  `json:"e"`
}

// safeThen is then if it is a path on this origin, else "/".
func safeThen(then string) string {
	if then == "" || len(then) > maxThen || !strings.HasPrefix(then, "/") || strings.HasPrefix(then, "//") || strings.HasPrefix(then, "/\\") {
		return "/"
	}
	u, err := url.Parse(then)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || strings.ContainsAny(then, "\\\x00\r\n\t") {
		return "/"
	}
	return (&url.URL{Path: u.Path, RawPath: u.RawPath, RawQuery: u.RawQuery}).String()
}

// serveLogin starts a sign-in: GET LoginPath?issuer=ID&then=/path.
func (s *Sessions) serveLogin(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id := r.URL.Query().Get("issuer")
	logins := s.cfg.Logins.BrowserLogins()
	if id == "" && len(logins) == 1 {
		id = logins[0].ID
	}
	l, ok := s.login(id)
	if !ok {
		s.problem(w, http.StatusBadRequest, "Unknown issuer", "This stub has no browser sign-in called "+fmt.Sprintf("%q", id)+".")
		return
	}
	p, err := s.provider(ctx, l)
	if err != nil {
		s.log.Warn("browser sign-in: issuer not reached", zap.String("issuer", l.IssuerURL), zap.Error(err))
		s.problem(w, http.StatusServiceUnavailable, "Identity provider unreachable", l.Name+" cannot be reached now. Try again in a moment.")
		return
	}
	st := loginState{
		State: base64.RawURLEncoding.EncodeToString(randomBytes(32)), Nonce: base64.RawURLEncoding.EncodeToString(randomBytes(32)),
		Verifier: oauth2.GenerateVerifier(), Issuer: l.ID, Then: safeThen(r.URL.Query().Get("then")),
		Exp: s.cfg.Now().Add(loginMaxAge).Unix(),
	}
	name := loginCookiePrefix + st.State[:16]
	plain, _ := json.Marshal(st)
	v, err := s.sealer.seal(ctx, name, plain)
	if err != nil {
		s.log.Error("browser sign-in: login cookie not sealed", zap.Error(err))
		s.problem(w, http.StatusInternalServerError, "Sign-in failed", "The stub cannot sign you in now; see its log.")
		return
	}
	// Lax: the callback is a top-level navigation from the IdP's site.
	setCookie(w, &http.Cookie{Name: name, Value: v, Path: "/", MaxAge: int(loginMaxAge / time.Second), Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode})
	pageHeaders(w.Header())
	u := s.oauth2Config(l, p).AuthCodeURL(st.State, oidc.Nonce(st.Nonce), oauth2.S256ChallengeOption(st.Verifier))
	http.Redirect(w, r, u, http.StatusFound)
}

// serveCallback ends a sign-in: the IdP sends the browser to
// CallbackPath?code=…&state=… (or ?error=…).
func (s *Sessions) serveCallback(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	q := r.URL.Query()
	refuse := func(code int, title, msg string) {
		s.event(r, audit.BrowserEventSignInRefused, "", nil, code, msg)
		s.problem(w, code, title, msg+" Start again from the sign-in page.")
	}
	state := q.Get("state")
	if len(state) < 16 {
		refuse(http.StatusBadRequest, "Sign-in failed", "The sign-in answer has no valid state.")
		return
	}
	name := loginCookiePrefix + state[:16]
	ck, err := r.Cookie(name)
	if err != nil {
		refuse(http.StatusBadRequest, "Sign-in failed", "No sign-in was started in this browser for this answer (or it took longer than 10 minutes).")
		return
	}
	clearCookie(w, name) // used once, whatever comes next
	var ls loginState
	plain, err := s.sealer.open(ctx, name, ck.Value)
	if err == nil {
		err = json.Unmarshal(plain, &ls)
	}
	switch {
	case err != nil || subtle.ConstantTimeCompare([]byte(ls.State), []byte(state)) != 1:
		refuse(http.StatusBadRequest, "Sign-in failed", "The sign-in answer does not match the sign-in this browser started.")
		return
	case !s.cfg.Now().Before(time.Unix(ls.Exp, 0)):
		refuse(http.StatusBadRequest, "Sign-in expired", "The sign-in took longer than 10 minutes.")
		return
	}
	if e := q.Get("error"); e != "" {
		msg := "The identity provider refused the sign-in: " + e
		if d := q.Get("error_description"); d != "" {
			msg += " (" + d + ")"
		}
		refuse(http.StatusBadRequest, "Sign-in refused", msg+".")
		return
	}
	l, ok := s.login(ls.Issuer)
	if !ok {
		refuse(http.StatusBadRequest, "Sign-in failed", "The issuer of this sign-in no longer has browser sign-in.")
		return
	}
	p, err := s.provider(ctx, l)
	if err != nil {
		refuse(http.StatusServiceUnavailable, "Identity provider unreachable", l.Name+" cannot be reached now.")
		return
	}
	xctx, cancel := context.WithTimeout(ctx, idpTimeout)
	defer cancel()
	tok, err := s.oauth2Config(l, p).Exchange(clientContext(xctx, p), q.Get("code"), oauth2.VerifierOption(ls.Verifier))
	if err != nil {
		s.log.Info("browser sign-in: code not redeemed", zap.String("issuer", l.IssuerURL), zap.Error(err))
		msg := "The identity provider did not redeem the sign-in code."
		if re, ok := errors.AsType[*oauth2.RetrieveError](err); ok && re.ErrorCode != "" {
			msg = "The identity provider did not redeem the sign-in code (" + re.ErrorCode + ")."
		}
		refuse(http.StatusBadRequest, "Sign-in failed", msg)
		return
	}
	idToken, _ := tok.Extra("id_token").(string)
	if idToken == "" {
		refuse(http.StatusBadRequest, "Sign-in failed", "The identity provider returned no ID token (is openid among login.browser.scopes?).")
		return
	}
	user, err := s.cfg.Auth.Authenticate(ctx, idToken)
	if err != nil {
		refuse(http.StatusBadRequest, "Sign-in refused", "The ID token is not accepted: "+err.Error()+".")
		return
	}
	if n := authn.TokenNonce(idToken); subtle.ConstantTimeCompare([]byte(n), []byte(ls.Nonce)) != 1 {
		refuse(http.StatusBadRequest, "Sign-in refused", "The ID token is not the answer to this sign-in (its nonce differs).")
		return
	}
	if !slices.Contains(authn.TokenAudiences(idToken), l.ClientID) {
		refuse(http.StatusBadRequest, "Sign-in refused", fmt.Sprintf("The ID token was not issued to client %q.", l.ClientID))
		return
	}

	now := s.cfg.Now()
	c := sessionCookie{SID: randomBytes(16), RK: randomBytes(32), Iss: l.ID, IAT: now.Unix(), Seen: now.Unix(), Exp: now.Add(s.cfg.MaxAge).Unix()}
	h := &handle{c: c, name: recordName(c.SID)}
	plain, _ = json.Marshal(tokens{ID: idToken, Refresh: tok.RefreshToken})
	sealed, err := sealRecord(c.RK, h.name, plain)
	if err != nil {
		refuse(http.StatusInternalServerError, "Sign-in failed", "The session could not be made.")
		return
	}
	exp := authn.CredentialExpiry(idToken, user)
	if exp.IsZero() {
		exp = time.Unix(c.Exp, 0)
	}
	rec := &Record{User: user.Name, Issuer: l.ID, Created: now, Expires: time.Unix(c.Exp, 0), IDTokenExpires: exp, Sealed: sealed}
	if err := s.cfg.Store.CreateSession(ctx, h.name, rec); err != nil {
		s.log.Error("browser session record not stored", zap.Error(err))
		refuse(http.StatusServiceUnavailable, "Sign-in failed", "The session could not be stored; try again.")
		return
	}
	if err := s.setSessionCookie(ctx, w, c); err != nil {
		_ = s.cfg.Store.DeleteSession(ctx, h.name)
		s.log.Error("session cookie not sealed", zap.Error(err))
		refuse(http.StatusInternalServerError, "Sign-in failed", "The session could not be made.")
		return
	}
	s.event(r, audit.BrowserEventSignIn, auditID(c.SID), user, http.StatusOK, "")
	// A page that moves on, not a 302: after a redirect chain that began on
	// the IdP's site, Chromium withholds the SameSite=Strict cookie from
	// the next request; a meta refresh starts a same-origin navigation.
	s.render(w, http.StatusOK, "moving.html", simplePage{Title: "Signed in", Text: "You are signed in.", To: ls.Then})
}

// serveLogout signs out: POST LogoutPath from the stub's own pages.
func (s *Sessions) serveLogout(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if ok, why := origin.SameOrigin(origin.FromHeader(r.Header), s.origin); !ok {
		msg := "Sign-out is accepted only from " + s.origin + ": " + why + "."
		auditSession := ""
		if bs, found, _ := s.Open(discard{}, r); found && bs != nil {
			auditSession = bs.AuditID
		}
		s.event(r, audit.BrowserEventSignOut, auditSession, nil, http.StatusForbidden, msg)
		s.problem(w, http.StatusForbidden, "Sign-out refused", msg)
		return
	}
	clearCookie(w, SessionCookie)
	to := "/"
	ck, err := r.Cookie(SessionCookie)
	if err != nil {
		s.render(w, http.StatusOK, "moving.html", simplePage{Title: "Signed out", Text: "You are signed out.", To: to})
		return
	}
	// A cookie that no longer opens (expired, idle) still names a record
	// to end: open it without the time checks.
	h := s.openForLogout(ctx, ck.Value)
	if h == nil {
		s.render(w, http.StatusOK, "moving.html", simplePage{Title: "Signed out", Text: "You are signed out.", To: to})
		return
	}
	var user *authn.User
	rec, err := s.cfg.Store.GetSession(ctx, h.name, true)
	if err != nil {
		s.log.Error("browser session record not read", zap.Error(err))
	}
	if err := s.cfg.Store.DeleteSession(ctx, h.name); err != nil {
		s.log.Error("browser session record not deleted", zap.Error(err))
		s.event(r, audit.BrowserEventSignOut, auditID(h.c.SID), nil, http.StatusServiceUnavailable, "the session record was not deleted")
		s.problem(w, http.StatusServiceUnavailable, "Sign-out failed", "The session could not be ended everywhere; try again.")
		return
	}
	if l, ok := s.login(h.c.Iss); ok {
		if p, err := s.provider(ctx, l); err == nil {
			if rec != nil {
				user = &authn.User{Name: rec.User}
				if t, err := openRecordTokens(h, rec); err == nil {
					if err := s.revoke(ctx, l, p, t.Refresh); err != nil {
						s.log.Warn("refresh token not revoked", zap.Error(err))
					}
				}
			}
			if p.endSession != "" {
				to = endSessionURL(p.endSession, l.ClientID, s.cfg.PublicURL+"/")
			}
		}
	}
	s.event(r, audit.BrowserEventSignOut, auditID(h.c.SID), user, http.StatusOK, "")
	s.render(w, http.StatusOK, "moving.html", simplePage{Title: "Signed out", Text: "You are signed out.", To: to})
}

// openForLogout opens a session cookie whatever its age.
func (s *Sessions) openForLogout(ctx context.Context, value string) *handle {
	plain, err := s.sealer.open(ctx, SessionCookie, value)
	if err != nil {
		return nil
	}
	var c sessionCookie
	if json.Unmarshal(plain, &c) != nil || len(c.SID) != 16 || len(c.RK) != 32 {
		return nil
	}
	return &handle{c: c, name: recordName(c.SID)}
}

// endSessionURL is RP-initiated logout at the IdP: with client_id, never
// id_token_hint (no token in a URL).
func endSessionURL(endpoint, clientID, back string) string {
	u, err := url.Parse(endpoint)
	if err != nil {
		return "/"
	}
	q := u.Query()
	q.Set("client_id", clientID)
	q.Set("post_logout_redirect_uri", back)
	u.RawQuery = q.Encode()
	return u.String()
}

// discard is a ResponseWriter whose output nobody reads.
type discard struct{}

func (discard) Header() http.Header         { return http.Header{} }
func (discard) Write(b []byte) (int, error) { return len(b), nil }
func (discard) WriteHeader(int)             {}

package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/keyhole-dev/keyhole/proxy"
)

// In-cluster apps (proxy/apps.go, docs/console-apps.md) carry a browser
// session to an app host in a launch ticket and then in the app host's
// cookie. Both seal, with the session keys, the session cookie's contents
// (what finds and opens the session's record: Current works on it as on
// the session cookie itself), the app's target and host label, and an end.
// They are sealed for their own use (proxy.AppTicketUse, proxy.AppCookie)
// as the additional data, so neither ever opens as the other or as the
// session cookie, and the session cookie never opens as either.

// appSealed is what a ticket or an app cookie seals.
type appSealed struct {
	S sessionCookie   `json:"s"`
	L string          `json:"l"`
	T proxy.AppTarget `json:"t"`
	P string          `json:"p,omitempty"`
	E int64           `json:"e"` // Unix seconds
}

var _ proxy.AppSealer = (*Sessions)(nil)

func appUse(use string) error {
	if use != proxy.AppTicketUse && use != proxy.AppCookie {
		return fmt.Errorf("web: %q is not a use of app seals", use)
	}
	return nil
}

// SealApp seals g with the session bs (one this Sessions opened) for use
// (proxy.AppTicketUse or proxy.AppCookie).
func (s *Sessions) SealApp(ctx context.Context, use string, bs *proxy.BrowserSession, g proxy.AppGrant) (string, error) {
	if err := appUse(use); err != nil {
		return "", err
	}
	h, ok := bs.Ref.(*handle)
	if !ok || h == nil {
		return "", errors.New("web: not a browser session of this stub")
	}
	plain, err := json.Marshal(appSealed{S: h.c, L: g.Label, T: g.Target, P: g.Path, E: g.Expires.Unix()})
	if err != nil {
		return "", err
	}
	return s.sealer.seal(ctx, use, plain)
}

// Errors of OpenApp (it wraps the sealer's too).
var (
	errAppExpired     = errors.New("expired")
	errSessionExpired = errors.New("its browser session has expired")
)

// OpenApp opens a value SealApp sealed for use, if it is not past its end
// or its session's. The session may still have ended otherwise (signed
// out): Current says.
func (s *Sessions) OpenApp(ctx context.Context, use, value string) (*proxy.BrowserSession, proxy.AppGrant, error) {
	if err := appUse(use); err != nil {
		return nil, proxy.AppGrant{}, err
	}
	plain, err := s.sealer.open(ctx, use, value)
	if err != nil {
		switch {
		case errors.Is(err, errMalformed), errors.Is(err, errForged), errors.Is(err, errUnknownKey):
			return nil, proxy.AppGrant{}, errors.New("not sealed by this gateway for this use")
		}
		return nil, proxy.AppGrant{}, err
	}
	var a appSealed
	if json.Unmarshal(plain, &a) != nil || len(a.S.SID) != 16 || len(a.S.RK) != 32 || a.L == "" {
		return nil, proxy.AppGrant{}, errors.New("not sealed by this gateway for this use")
	}
	h := &handle{c: a.S, name: recordName(a.S.SID)}
	bs := &proxy.BrowserSession{AuditID: auditID(a.S.SID), Expires: time.Unix(a.S.Exp, 0), Ref: h}
	g := proxy.AppGrant{Label: a.L, Target: a.T, Path: a.P, Expires: time.Unix(a.E, 0)}
	now := s.cfg.Now()
	switch {
	case !now.Before(g.Expires):
		return bs, g, errAppExpired
	case !now.Before(bs.Expires):
		return bs, g, errSessionExpired
	}
	return bs, g, nil
}

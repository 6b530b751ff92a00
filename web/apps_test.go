package web

import (
	"context"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/keyhole-dev/keyhole/proxy"
)

// TestAppSeals: a launch ticket and an app cookie carry the browser
// session to an app host: they open to the same session (Current gives its
// token, and a sign-out ends them), only for their own use, never as the
// session cookie (nor it as them), not tampered with, not past their end
// or their session's.
func TestAppSeals(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, false)
	s := e.replica(t, "r1")
	b := newBrowser(t)
	b.signIn(s, e.idp)
	bs, found, st := s.Open(httptest.NewRecorder(), b.request("GET", "/clusters/c1/api/v1/pods"))
	if !found || st != nil {
		t.Fatalf("open: %v %v", found, st)
	}
	target := proxy.AppTarget{Cluster: "c1", Namespace: "apps", Service: "web", Scheme: "http", Port: "http"}
	g := proxy.AppGrant{Label: target.Label(), Target: target, Path: "/x?y=1", Expires: e.clock.Now().Add(time.Minute)}

	ticket, err := s.SealApp(ctx, proxy.AppTicketUse, bs, g)
	if err != nil {
		t.Fatal(err)
	}
	got, gg, err := s.OpenApp(ctx, proxy.AppTicketUse, ticket)
	if err != nil || gg.Label != g.Label || gg.Target != target || gg.Path != g.Path || !gg.Expires.Equal(g.Expires.Truncate(time.Second)) {
		t.Fatalf("round trip: %+v %v", gg, err)
	}
	if got.AuditID != bs.AuditID || !got.Expires.Equal(bs.Expires) {
		t.Fatalf("session %+v, want %+v", got, bs)
	}
	want, _ := b.current(s, nil)
	if token, st := s.Current(ctx, nil, got); st != nil || token != want {
		t.Fatalf("Current of the app's session: %q %v, want the session's token", token, st)
	}

	// Another use, the session cookie, tampering.
	if _, _, err := s.OpenApp(ctx, proxy.AppCookie, ticket); err == nil {
		t.Error("a ticket opened as an app cookie")
	}
	if _, _, err := s.OpenApp(ctx, proxy.AppTicketUse, b.cookies[SessionCookie].Value); err == nil {
		t.Error("the session cookie opened as a ticket")
	}
	if h, why := s.openSession(ctx, ticket); h != nil || why == "" {
		t.Error("a ticket opened as the session cookie")
	}
	if _, err := s.SealApp(ctx, SessionCookie, bs, g); err == nil {
		t.Error("SealApp sealed a session cookie")
	}
	if _, _, err := s.OpenApp(ctx, SessionCookie, b.cookies[SessionCookie].Value); err == nil {
		t.Error("OpenApp opened for the session cookie's use")
	}
	raw, _ := base64.RawURLEncoding.DecodeString(ticket)
	for i := range raw {
		bad := append([]byte(nil), raw...)
		bad[i] ^= 0x20
		if _, _, err := s.OpenApp(ctx, proxy.AppTicketUse, base64.RawURLEncoding.EncodeToString(bad)); err == nil {
			t.Fatalf("byte %d flipped, still opens", i)
		}
	}

	// The end: the grant's, then the session's.
	cookie, err := s.SealApp(ctx, proxy.AppCookie, bs, proxy.AppGrant{Label: g.Label, Target: target, Expires: bs.Expires.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	e.clock.Add(2 * time.Minute)
	if _, _, err := s.OpenApp(ctx, proxy.AppTicketUse, ticket); err == nil {
		t.Error("an expired ticket opens")
	}
	if _, _, err := s.OpenApp(ctx, proxy.AppCookie, cookie); err != nil {
		t.Errorf("the app cookie: %v", err)
	}
	// A sign-out ends the app's session too.
	if resp := b.do(s, "POST", LogoutPath, map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": publicURL}); resp.StatusCode >= 400 {
		t.Fatalf("sign-out: %s", resp.Status)
	}
	bs2, _, _ := s.OpenApp(ctx, proxy.AppCookie, cookie)
	if _, st := s.Current(ctx, nil, bs2); st == nil || st.ErrStatus.Code != http.StatusUnauthorized {
		t.Errorf("after sign-out, the app's session: %v, want 401", st)
	}
	e.clock.Add(bs.Expires.Sub(e.clock.Now()) + time.Second)
	if _, _, err := s.OpenApp(ctx, proxy.AppCookie, cookie); err == nil {
		t.Error("an app cookie opens past its session's end")
	}
}

package web

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/keyhole-dev/keyhole/authn"
)

func TestSeal(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	k1 := testKey("00000001", c.Now().Add(-time.Hour))
	store := newMemStore(k1)
	s := newSealer(store, c.Now)

	v, err := s.seal(ctx, SessionCookie, []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.open(ctx, SessionCookie, v); err != nil || string(got) != "hello" {
		t.Fatalf("round trip: %q %v", got, err)
	}
	raw, _ := base64.RawURLEncoding.DecodeString(v)
	for i := range raw {
		bad := append([]byte(nil), raw...)
		bad[i] ^= 0x01
		if _, err := s.open(ctx, SessionCookie, base64.RawURLEncoding.EncodeToString(bad)); err == nil {
			t.Fatalf("byte %d flipped, still opens", i)
		}
	}
	if _, err := s.open(ctx, SessionCookie, v[:len(v)-2]); err == nil {
		t.Fatal("truncated, still opens")
	}
	if _, err := s.open(ctx, loginCookiePrefix+"abc", v); !errors.Is(err, errForged) {
		t.Fatalf("a session cookie opened as a login cookie: %v", err)
	}
	if _, err := s.open(ctx, SessionCookie, "not base64!"); !errors.Is(err, errMalformed) {
		t.Fatalf("garbage: %v", err)
	}

	// A key that becomes active later never seals before then.
	k2 := testKey("00000002", c.Now().Add(2*time.Minute))
	store.addKey(k2)
	store.SessionKeys(ctx, true)
	v2, _ := s.seal(ctx, SessionCookie, []byte("x"))
	if kid := sealedKID(t, v2); kid != k1.ID {
		t.Fatalf("sealed with %s before its activeFrom", kid)
	}
	// Once it is active it seals, and the old key still opens.
	c.Add(3 * time.Minute)
	v3, _ := s.seal(ctx, SessionCookie, []byte("y"))
	if kid := sealedKID(t, v3); kid != k2.ID {
		t.Fatalf("sealed with %s, want the newest active key %s", kid, k2.ID)
	}
	if got, err := s.open(ctx, SessionCookie, v); err != nil || string(got) != "hello" {
		t.Fatalf("rotated: the old key's cookie no longer opens: %v", err)
	}
	// A key another replica added is found by one fresh read; a made-up
	// key ID is refused, and does not make every request read afresh.
	k3 := testKey("00000003", c.Now().Add(-time.Minute))
	other := newSealer(newMemStore(k3), c.Now)
	v4, _ := other.seal(ctx, SessionCookie, []byte("z"))
	store.addKey(k3)
	before := store.freshReads
	if got, err := s.open(ctx, SessionCookie, v4); err != nil || string(got) != "z" {
		t.Fatalf("a key added elsewhere: %v", err)
	}
	if store.freshReads != before+1 {
		t.Fatalf("%d fresh reads, want 1", store.freshReads-before)
	}
	c.Add(2 * time.Second)
	forged := forgeKID(t, v4, "0badbad0")
	for range 3 {
		if _, err := s.open(ctx, SessionCookie, forged); !errors.Is(err, errUnknownKey) {
			t.Fatalf("unknown key: %v", err)
		}
	}
	if store.freshReads != before+2 {
		t.Fatalf("unknown key IDs made %d fresh reads, want 1 per second", store.freshReads-before-1)
	}
}

func sealedKID(t *testing.T, v string) string {
	raw, err := base64.RawURLEncoding.DecodeString(v)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(raw[1:5])
}

func forgeKID(t *testing.T, v, kid string) string {
	raw, _ := base64.RawURLEncoding.DecodeString(v)
	id, err := keyID(kid)
	if err != nil {
		t.Fatal(err)
	}
	copy(raw[1:5], id)
	return base64.RawURLEncoding.EncodeToString(raw)
}

func TestRecordSealing(t *testing.T) {
	rk := randomBytes(32)
	sealed, err := sealRecord(rk, "name1", []byte("tokens"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := openRecord(rk, "name1", sealed); err != nil || string(got) != "tokens" {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := openRecord(rk, "name2", sealed); err == nil {
		t.Fatal("a record's tokens open under another record's name")
	}
	if _, err := openRecord(randomBytes(32), "name1", sealed); err == nil {
		t.Fatal("tokens open under another key")
	}
}

// The session cookie's own lifetimes: absolute and idle, checked without
// the store; a cookie used after seenEvery is re-sealed with a new Seen.
func TestSessionCookieLifetimes(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	e := &testEnv{store: newMemStore(testKey("0a0b0c0d", c.Now().Add(-time.Hour))), clock: c}
	s, err := New(Config{PublicURL: publicURL, MaxAge: 2 * time.Hour, IdleTimeout: time.Hour, Logins: StaticLogins{}, Auth: noAuth{}, Store: e.store, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	now := c.Now()
	cookie := func() string {
		w := httptest.NewRecorder()
		if err := s.setSessionCookie(ctx, w, sessionCookie{SID: randomBytes(16), RK: randomBytes(32), Iss: "i", IAT: now.Unix(), Seen: now.Unix(), Exp: now.Add(2 * time.Hour).Unix()}); err != nil {
			t.Fatal(err)
		}
		return w.Result().Cookies()[0].Value
	}
	v := cookie()
	if _, why := s.openSession(ctx, v); why != "" {
		t.Fatalf("fresh cookie: %s", why)
	}
	c.Add(61 * time.Minute)
	if _, why := s.openSession(ctx, v); why == "" {
		t.Fatal("idle for 61m, still open")
	}
	// Used every 50 minutes (each use re-seals Seen), it lasts until Exp.
	c.Add(-61 * time.Minute)
	for range 2 {
		c.Add(50 * time.Minute)
		h, why := s.openSession(ctx, v)
		if why != "" {
			t.Fatalf("used within the idle timeout: %s", why)
		}
		w := httptest.NewRecorder()
		s.touch(ctx, w, h)
		v = w.Result().Cookies()[0].Value
	}
	c.Add(21 * time.Minute) // 2h1m after sign-in, 21m after last use
	if _, why := s.openSession(ctx, v); why != "has expired" {
		t.Fatalf("past its absolute end: %q", why)
	}
	// The cookie holds no token, and is small.
	plain, _ := s.sealer.open(ctx, SessionCookie, cookie())
	var sc map[string]any
	if err := json.Unmarshal(plain, &sc); err != nil || len(sc) != 6 {
		t.Fatalf("cookie content: %s", plain)
	}
}

type noAuth struct{}

func (noAuth) Authenticate(context.Context, string) (*authn.User, error) {
	return nil, errors.New("no")
}

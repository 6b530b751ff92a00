package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"go.uber.org/zap"
)

// limitEnv is a stub with the given limits and a way to dial it as agent id.
func limitEnv(t *testing.T, cfg ServerConfig) (*Server, func(id string, secret ...string) (*yamux.Session, error)) {
	t.Helper()
	cfg.Auth, cfg.Logger = secrets{"c1": "s3cret"}, zap.NewNop()
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewTLSServer(srv)
	t.Cleanup(func() { srv.Close(); ts.Close() })
	dial := func(id string, secret ...string) (*yamux.Session, error) {
		sec := "s3cret"
		if len(secret) > 0 {
			sec = secret[0]
		}
		a, err := NewAgent(AgentConfig{StubURL: ts.URL, Cluster: "c1", AgentID: id, Fingerprint: "fp",
			Secret: func() (string, error) { return sec, nil }, TLS: &tls.Config{InsecureSkipVerify: true},
			Proxy: func(*http.Request) (*url.URL, error) { return nil, nil }, Handler: http.NotFoundHandler(), Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		return a.Dial(context.Background())
	}
	return srv, dial
}

func busyFor(t *testing.T, err error, lo, hi time.Duration) time.Duration {
	t.Helper()
	var busy *busyError
	if !errors.As(err, &busy) || !errors.Is(err, ErrBusy) {
		t.Fatalf("want a 503 with Retry-After, got %v", err)
	}
	if busy.after < lo || busy.after > hi {
		t.Fatalf("Retry-After %v outside [%v, %v]", busy.after, lo, hi)
	}
	return busy.after
}

// A stub holds at most MaxSessions agents; the next is told to come back
// later, and a slot freed by a leaving agent is taken again.
func TestMaxSessions(t *testing.T) {
	srv, dial := limitEnv(t, ServerConfig{MaxSessions: 3, RetryAfterMin: 2 * time.Second, RetryAfterMax: 4 * time.Second})
	var sessions []*yamux.Session
	defer func() {
		for _, s := range sessions {
			s.Close()
		}
	}()
	for i := 0; i < 3; i++ {
		s, err := dial(fmt.Sprintf("a%d", i))
		if err != nil {
			t.Fatal(err)
		}
		sessions = append(sessions, s)
	}
	for i := 0; i < 5; i++ {
		_, err := dial("extra")
		busyFor(t, err, 2*time.Second, 5*time.Second)
	}
	if n := len(srv.Agents("")); n != 3 {
		t.Fatalf("%d agents held, want 3", n)
	}
	if got := srv.Refused(); got != 5 {
		t.Fatalf("Refused() = %d, want 5", got)
	}
	// One leaves; its slot is free once the stub has seen the session end.
	sessions[0].Close()
	deadline := time.Now().Add(10 * time.Second)
	for len(srv.Agents("")) != 2 {
		if time.Now().After(deadline) {
			t.Fatal("the stub did not see the session end")
		}
		time.Sleep(5 * time.Millisecond)
	}
	s, err := dial("extra")
	if err != nil {
		t.Fatalf("a freed slot was not taken: %v", err)
	}
	sessions = append(sessions, s)
	// The same agent reconnecting while its old session is still held
	// replaces it; it needs no second slot once the old one is gone.
	s, err = dial("extra")
	if err == nil {
		sessions = append(sessions, s)
	} else {
		busyFor(t, err, 2*time.Second, 5*time.Second) // a full stub may say so: the old slot was still held
	}
	if n := len(srv.Agents("")); n > 3 {
		t.Fatalf("%d agents held, want at most 3", n)
	}
}

// Refused handshakes do not free or leak session slots.
func TestFailedHandshakesReleaseSlots(t *testing.T) {
	srv, dial := limitEnv(t, ServerConfig{MaxSessions: 1})
	for i := 0; i < 3; i++ {
		// A wrong join secret: refused after the slot was taken.
		_, err := dial("bad", "wrong")
		if !errors.Is(err, ErrRefused) || errors.Is(err, ErrBusy) {
			t.Fatalf("wrong secret: %v", err)
		}
	}
	s, err := dial("ok")
	if err != nil {
		t.Fatalf("the only slot leaked: %v", err)
	}
	defer s.Close()
	srv.mu.Lock()
	held := srv.held
	srv.mu.Unlock()
	if held != 1 {
		t.Fatalf("held = %d, want 1", held)
	}
}

// A stub over its handshake rate sends the excess away; the rate refills.
func TestHandshakesPerSecond(t *testing.T) {
	srv, dial := limitEnv(t, ServerConfig{MaxHandshakesPerSecond: 4})
	start := time.Now()
	ok, busy := 0, 0
	for i := 0; i < 12; i++ {
		s, err := dial(fmt.Sprintf("a%d", i))
		if err == nil {
			ok++
			defer s.Close()
			continue
		}
		busyFor(t, err, 5*time.Second, 31*time.Second)
		busy++
	}
	elapsed := time.Since(start)
	t.Logf("12 handshakes in %v at 4/s: %d taken, %d told to come back later", elapsed.Round(time.Millisecond), ok, busy)
	// A burst of 4, plus 4 a second while the dials ran.
	if limit := 4 + int(4*elapsed.Seconds()) + 1; ok < 4 || ok > limit {
		t.Fatalf("%d handshakes taken, want 4..%d", ok, limit)
	}
	if int64(busy) != srv.Refused() {
		t.Fatalf("Refused() = %d, agents saw %d", srv.Refused(), busy)
	}
}

func TestTokenBucket(t *testing.T) {
	b := newTokenBucket(10, 5)
	now := b.last
	taken := 0
	for i := 0; i < 20; i++ {
		if b.take(now) {
			taken++
		}
	}
	if taken != 5 {
		t.Fatalf("burst: %d taken, want 5", taken)
	}
	if b.take(now.Add(50 * time.Millisecond)) {
		t.Fatal("half a token was spent")
	}
	if !b.take(now.Add(100 * time.Millisecond)) {
		t.Fatal("no token after 100 ms at 10/s")
	}
	// A clock read before the last take (callers race to the lock) adds
	// nothing and takes nothing away.
	if b.take(now) {
		t.Fatal("a token from the past")
	}
	taken = 0
	for i := 0; i < 100; i++ {
		if b.take(now.Add(time.Hour)) {
			taken++
		}
	}
	if taken != 5 {
		t.Fatalf("after an idle hour: %d taken, want the burst of 5", taken)
	}
}

// Refused agents are told different times, so they do not return together.
func TestRetryAfterIsSpread(t *testing.T) {
	_, dial := limitEnv(t, ServerConfig{MaxSessions: 1, RetryAfterMin: 5 * time.Second, RetryAfterMax: 30 * time.Second})
	s, err := dial("holder")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	seen := map[time.Duration]int{}
	for i := 0; i < 40; i++ {
		_, err := dial("late")
		seen[busyFor(t, err, 5*time.Second, 31*time.Second)]++
	}
	t.Logf("Retry-After values of 40 refusals: %v", seen)
	if len(seen) < 8 { // 26 possible values; 8 or fewer distinct in 40 draws is ~impossible by chance
		t.Fatalf("Retry-After took only %d distinct values: %v", len(seen), seen)
	}
}

// A closed stub tells agents to come back later (to it, restarted, or to
// another replica) instead of refusing them for good.
func TestClosedServerSaysRetryAfter(t *testing.T) {
	srv, dial := limitEnv(t, ServerConfig{})
	srv.Close()
	_, err := dial("a")
	busyFor(t, err, 5*time.Second, 31*time.Second)
}

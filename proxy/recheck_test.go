package proxy

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyhole-dev/keyhole/authn"
)

// mutableAccess is an Authenticator and Policy that a test changes while
// streams run: tokens can be revoked, users denied.
type mutableAccess struct {
	mu     sync.Mutex
	tokens map[string]authn.User
	denied map[string]bool
}

func (m *mutableAccess) Authenticate(_ context.Context, tok string) (*authn.User, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	u, ok := m.tokens[tok]
	if !ok || (!u.Expires.IsZero() && !time.Now().Before(u.Expires)) {
		return nil, authn.ErrInvalidToken
	}
	return &u, nil
}

func (m *mutableAccess) Allowed(u *authn.User, _ string, _ map[string]string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return !m.denied[u.Name]
}

func (m *mutableAccess) revoke(tok string) { m.mu.Lock(); delete(m.tokens, tok); m.mu.Unlock() }
func (m *mutableAccess) deny(user string)  { m.mu.Lock(); m.denied[user] = true; m.mu.Unlock() }

// TestRecheck: a watch and an upgraded session live only as long as the
// credential and the policy that admitted them; the stub ends them within
// about one RecheckInterval (at once at expiry) and says why in the final
// audit record. Plain requests are not affected.
func TestRecheck(t *testing.T) {
	const interval = 100 * time.Millisecond
	cases := []struct {
		name    string
		keep    bool
		expires time.Duration // of alice's token from the start; 0: none
		change  func(m *mutableAccess)
		ended   string        // want: keyhole.dev/ended, "" = still open
		after   time.Duration // how long after the change to look
	}{
		{name: "revoked", change: func(m *mutableAccess) { m.revoke("alice-token") }, ended: EndedRevoked, after: 10 * interval},
		{name: "identity changed", change: func(m *mutableAccess) {
			m.mu.Lock()
			m.tokens["alice-token"] = authn.User{Name: "mallory", Groups: []string{"dev"}}
			m.mu.Unlock()
		}, ended: EndedRevoked, after: 10 * interval},
		{name: "policy", change: func(m *mutableAccess) { m.deny("alice") }, ended: EndedPolicy, after: 10 * interval},
		{name: "expired", expires: 700 * time.Millisecond, change: func(*mutableAccess) {}, ended: EndedExpired, after: 20 * interval},
		{name: "expired, kept", keep: true, expires: 300 * time.Millisecond, change: func(*mutableAccess) {}, ended: "", after: 10 * interval},
		{name: "kept past expiry, then policy", keep: true, expires: 300 * time.Millisecond,
			change: func(m *mutableAccess) { time.Sleep(600 * time.Millisecond); m.deny("alice") }, ended: EndedPolicy, after: 10 * interval},
		{name: "nothing changes", change: func(*mutableAccess) {}, ended: "", after: 5 * interval},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			alice := authn.User{Name: "alice", Groups: []string{"dev"}}
			if tc.expires > 0 {
				alice.Expires = time.Now().Add(tc.expires)
			}
			m := &mutableAccess{tokens: map[string]authn.User{"alice-token": alice}, denied: map[string]bool{}}
			api := newFakeAPI(t)
			c := newChainWith(t, restFor(api.Server), api, chainOpts{auth: m, pol: m, recheck: interval, keepPastExpiry: tc.keep})
			resp, _ := c.doStream(t, "/clusters/c1/watch?watch=true", "alice-token")
			defer resp.Body.Close()
			br := bufio.NewReader(resp.Body)
			if l, err := br.ReadString('\n'); err != nil || !strings.Contains(l, "ADDED") {
				t.Fatalf("first event: %q %v", l, err)
			}
			tc.change(m)
			ended := make(chan error, 1)
			go func() { _, err := io.ReadAll(br); ended <- err }()
			select {
			case err := <-ended:
				if tc.ended == "" {
					t.Fatalf("the watch ended (%v); it should still run", err)
				}
				if err != nil {
					t.Fatalf("the watch was cut (%v), not ended cleanly", err)
				}
			case <-time.After(tc.after):
				if tc.ended != "" {
					t.Fatalf("the watch still runs %v after the change; want it ended (%s)", tc.after, tc.ended)
				}
				return
			}
			// The final record says why.
			var got string
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				evs := c.audit.events(t)
				if len(evs) > 0 && evs[len(evs)-1].Annotations["keyhole.dev/ended"] != "" {
					got = evs[len(evs)-1].Annotations["keyhole.dev/ended"]
					break
				}
			}
			if got != tc.ended {
				t.Fatalf("audit keyhole.dev/ended %q, want %q", got, tc.ended)
			}
		})
	}
	t.Run("upgraded session revoked", func(t *testing.T) {
		m := &mutableAccess{tokens: map[string]authn.User{"alice-token": {Name: "alice", Groups: []string{"dev"}}}, denied: map[string]bool{}}
		api := newFakeAPI(t)
		c := newChainWith(t, restFor(api.Server), api, chainOpts{auth: m, pol: m, recheck: interval})
		resp := c.upgrade(t)
		rwc := resp.Body.(io.ReadWriteCloser)
		defer rwc.Close()
		m.revoke("alice-token")
		done := make(chan error, 1)
		go func() { _, err := io.ReadAll(rwc); done <- err }()
		select {
		case <-done:
		case <-time.After(20 * interval):
			t.Fatal("the session still runs after its token was revoked")
		}
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			evs := c.audit.events(t)
			if len(evs) > 0 && evs[len(evs)-1].Annotations["keyhole.dev/ended"] == EndedRevoked {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no final record naming the revocation: %+v", evs)
			}
		}
	})
}

// doStream starts a GET as token and returns the response with its body
// still open.
func (c *chain) doStream(t *testing.T, path, token string) (*http.Response, error) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, c.stubURL+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s: %s %s", path, resp.Status, b)
	}
	return resp, nil
}

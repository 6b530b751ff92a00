package proxy

import (
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"
)

func bearerProto(token string) string {
	return BearerProtocolPrefix + base64.RawURLEncoding.EncodeToString([]byte(token))
}

func TestBearerProtocols(t *testing.T) {
	cases := []struct {
		name  string
		in    []string // Sec-WebSocket-Protocol values
		token string
		err   string
		out   []string // after dropBearerProtocols; nil: header removed
	}{
		{"none", []string{"v5.channel.k8s.io, v4.channel.k8s.io"}, "", "", []string{"v5.channel.k8s.io, v4.channel.k8s.io"}},
		{"first of three", []string{bearerProto("tok") + ", v5.channel.k8s.io,v4.channel.k8s.io"}, "tok", "", []string{"v5.channel.k8s.io, v4.channel.k8s.io"}},
		{"in the middle", []string{"v5.channel.k8s.io, " + bearerProto("tok") + ", channel.k8s.io"}, "tok", "", []string{"v5.channel.k8s.io, channel.k8s.io"}},
		{"a second header line", []string{"v5.channel.k8s.io", bearerProto("tok")}, "tok", "", []string{"v5.channel.k8s.io"}},
		{"alone", []string{bearerProto("tok")}, "", "at least one other subprotocol", nil},
		{"two tokens", []string{bearerProto("a") + ", " + bearerProto("b") + ", v5.channel.k8s.io"}, "", "more than one", []string{"v5.channel.k8s.io"}},
		{"other letter case", []string{strings.ToUpper(BearerProtocolPrefix) + "dG9r, v5.channel.k8s.io"}, "", "not spelled", []string{"v5.channel.k8s.io"}},
		{"not base64url", []string{BearerProtocolPrefix + "dG9r==, v5.channel.k8s.io"}, "", "not base64url", []string{"v5.channel.k8s.io"}},
		{"empty token", []string{BearerProtocolPrefix + ", v5.channel.k8s.io"}, "", "no valid token", []string{"v5.channel.k8s.io"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{"Sec-Websocket-Protocol": tc.in}
			b := parseBearerProtocols(h)
			if b.token != tc.token && tc.err == "" {
				t.Errorf("token %q, want %q", b.token, tc.token)
			}
			if (b.err == nil) != (tc.err == "") || b.err != nil && !strings.Contains(b.err.Error(), tc.err) {
				t.Errorf("error %v, want %q", b.err, tc.err)
			}
			dropBearerProtocols(h)
			got, present := h["Sec-Websocket-Protocol"]
			if tc.out == nil && present || strings.Join(got, "|") != strings.Join(tc.out, "|") {
				t.Errorf("after drop: %q (present %v), want %q", got, present, tc.out)
			}
		})
	}
}

// A caller's credential in a WebSocket bearer subprotocol authenticates it
// at the stub (when it sent no Authorization) and never reaches the agent
// or the API server; the other subprotocols pass in their order.
func TestWebSocketBearerNeverForwarded(t *testing.T) {
	api := newFakeAPI(t)
	c := newChain(t, restFor(api.Server), api)
	ws := func(auth, protocols string) string {
		req := "GET /clusters/c1/upgrade HTTP/1.1\nHost: stub\nConnection: Upgrade\nUpgrade: websocket\n" +
			"Sec-WebSocket-Version: 13\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n"
		if auth != "" {
			req += "Authorization: Bearer " + auth + "\n"
		}
		return req + "Sec-WebSocket-Protocol: " + protocols + "\n\n"
	}
	cases := []struct {
		name, req string
		code      int
		msg       string // in the Status of a refusal
		user      string // Impersonate-User at the API server
		protocols string // Sec-WebSocket-Protocol at the API server
	}{
		{"Authorization wins, subprotocol dropped", ws("alice-token", bearerProto("eve-token")+", test-a, test-b"), 101, "", "alice", "test-a, test-b"},
		{"the subprotocol authenticates", ws("", "test-a, "+bearerProto("alice-token")), 101, "", "alice", "test-a"},
		{"an unknown token", ws("", bearerProto("nope")+", test-a"), 401, "not valid", "", ""},
		{"no other subprotocol", ws("", bearerProto("alice-token")), 401, "at least one other subprotocol", "", ""},
		{"two tokens", ws("", bearerProto("alice-token")+", "+bearerProto("alice-token")+", test-a"), 401, "more than one", "", ""},
		{"not a WebSocket", strings.Replace(ws("", bearerProto("alice-token")+", test-a"), "Upgrade: websocket", "Upgrade: test-proto", 1), 401, "no bearer token", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, before := c.api.lastRequest()
			resp, conn := c.raw(t, tc.req)
			if resp.StatusCode != tc.code {
				b, _ := io.ReadAll(resp.Body)
				t.Fatalf("got %s %s, want %d", resp.Status, b, tc.code)
			}
			if tc.code != 101 {
				b, _ := io.ReadAll(resp.Body)
				if st := statusOf(t, string(b)); !strings.Contains(st.Message, tc.msg) {
					t.Fatalf("message %q lacks %q", st.Message, tc.msg)
				}
				if _, after := c.api.lastRequest(); after != before {
					t.Fatal("a refused request reached the API server")
				}
				return
			}
			conn.Close()
			r, _ := c.api.lastRequest()
			if got := r.Header.Get("Impersonate-User"); got != tc.user {
				t.Errorf("API server: Impersonate-User %q, want %q", got, tc.user)
			}
			if got := strings.Join(r.Header.Values("Sec-Websocket-Protocol"), "|"); got != tc.protocols {
				t.Errorf("API server: Sec-WebSocket-Protocol %q, want %q", got, tc.protocols)
			}
			if got := r.Header.Get("Authorization"); got != "Bearer agent-sa-token" {
				t.Errorf("API server: Authorization %q", got)
			}
		})
	}
	all := c.audit.b.String()
	for _, secret := range []string{"alice-token", "eve-token", base64.RawURLEncoding.EncodeToString([]byte("alice-token"))} {
		if strings.Contains(all, secret) {
			t.Errorf("the audit log holds %q", secret)
		}
	}
}

// The agent drops bearer subprotocols too, whoever sent them.
func TestAgentDropsBearerProtocols(t *testing.T) {
	api := newFakeAPI(t)
	ah, err := NewAgentHop(AgentHopConfig{Cluster: "c1", Rest: restFor(api.Server), Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("GET", "/api/v1/namespaces/default/pods", nil)
	req.Header = http.Header{HeaderUser: {"eve"}, "Sec-Websocket-Protocol": {"v5.channel.k8s.io, " + bearerProto("admin-token")}}
	rec := httptest.NewRecorder()
	ah.ServeHTTP(rec, req)
	r, _ := api.lastRequest()
	if got := strings.Join(r.Header.Values("Sec-Websocket-Protocol"), "|"); rec.Code != 200 || got != "v5.channel.k8s.io" {
		t.Fatalf("%d; API server saw Sec-WebSocket-Protocol %q", rec.Code, got)
	}
}

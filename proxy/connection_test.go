package proxy

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
)

// raw sends a raw HTTP/1.1 request to the stub and returns the response
// (its body unread) on the open connection.
func (c *chain) raw(t *testing.T, req string) (*http.Response, *tls.Conn) {
	t.Helper()
	conn, err := tls.Dial("tcp", strings.TrimPrefix(c.stubURL, "https://"), &tls.Config{RootCAs: c.pool, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, strings.ReplaceAll(req, "\n", "\r\n")); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	return resp, conn
}

// No header a caller names in Connection removes or changes a header the
// stub sets: the request runs as, and is recorded as, exactly what it would
// be without that Connection header.
func TestConnectionCannotRemoveStubHeaders(t *testing.T) {
	api := newFakeAPI(t)
	c := newChain(t, restFor(api.Server), api)
	send := func(t *testing.T, connection, extra string) (*http.Response, *http.Request, auditv1.Event) {
		t.Helper()
		req := "GET /clusters/c1/api/v1/namespaces/default/configmaps HTTP/1.1\nHost: stub\nAuthorization: Bearer alice-token\n" + extra
		if connection != "" {
			req += "Connection: " + connection + "\n"
		}
		resp, _ := c.raw(t, req+"\n")
		_, _ = io.ReadAll(resp.Body)
		r, _ := c.api.lastRequest()
		id := resp.Header.Get(HeaderRequestID)
		var rec auditv1.Event
		for deadline := time.Now().Add(5 * time.Second); rec.AuditID == "" && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			for _, ev := range c.audit.events(t) {
				if string(ev.AuditID) == id && ev.Stage == auditv1.StageResponseComplete {
					rec = ev
				}
			}
		}
		return resp, r, rec
	}
	type seen struct {
		Code   int
		User   string
		Groups []string
		XFF    string
		AsUser string
		AsGrp  []string
	}
	observe := func(t *testing.T, connection, extra string) seen {
		resp, r, ev := send(t, connection, extra)
		s := seen{Code: resp.StatusCode}
		if resp.StatusCode == 200 {
			s.User, s.Groups, s.XFF = r.Header.Get("Impersonate-User"), r.Header.Values("Impersonate-Group"), r.Header.Get("X-Forwarded-For")
		}
		if ev.ImpersonatedUser != nil {
			s.AsUser, s.AsGrp = ev.ImpersonatedUser.Username, ev.ImpersonatedUser.Groups
		}
		return s
	}
	asBob := "Impersonate-User: bob\nImpersonate-Group: viewers\n"
	asAdmin := "Impersonate-User: admin\n"
	for _, who := range []struct{ name, extra string }{{"as herself", ""}, {"--as bob --as-group viewers", asBob}, {"--as admin (refused)", asAdmin}} {
		want := observe(t, "", who.extra)
		t.Logf("%s without Connection: %+v", who.name, want)
		for _, connection := range []string{HeaderAsUser, HeaderAsGroup, HeaderUser, HeaderGroup, HeaderRequestID, "X-Forwarded-For",
			"Impersonate-User, Impersonate-Group", "Authorization", "keyhole-as-user, KEYHOLE-GROUP, keep-alive"} {
			t.Run(who.name+"/Connection: "+connection, func(t *testing.T) {
				got := observe(t, connection, who.extra)
				wj, _ := json.Marshal(want)
				gj, _ := json.Marshal(got)
				if string(wj) != string(gj) {
					t.Fatalf("got %s, want %s (as without the Connection header)", gj, wj)
				}
			})
		}
	}
}

// Nor can a Connection header at the agent remove its impersonation: the
// request would run with the agent's own rights.
func TestAgentConnectionCannotRemoveImpersonation(t *testing.T) {
	api := newFakeAPI(t)
	ah, err := NewAgentHop(AgentHopConfig{Cluster: "c1", Rest: restFor(api.Server), Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	for _, connection := range []string{"Impersonate-User, Impersonate-Group", "impersonate-user", "Authorization"} {
		t.Run(connection, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/api/v1/namespaces/default/pods", nil)
			req.Header = http.Header{HeaderUser: {"eve"}, HeaderGroup: {"g1"}, "Connection": {connection}}
			rec := httptest.NewRecorder()
			ah.ServeHTTP(rec, req)
			r, _ := api.lastRequest()
			if rec.Code != 200 || r.Header.Get("Impersonate-User") != "eve" || strings.Join(r.Header.Values("Impersonate-Group"), ",") != "g1" ||
				r.Header.Get("Authorization") != "Bearer agent-sa-token" {
				t.Fatalf("%d; API server saw Impersonate-User %q groups %q Authorization %q", rec.Code,
					r.Header.Get("Impersonate-User"), r.Header.Values("Impersonate-Group"), r.Header.Get("Authorization"))
			}
		})
	}
}

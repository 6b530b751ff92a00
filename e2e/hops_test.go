package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

// raw sends one HTTP/1.1 request, written as is, to the stub and returns
// the response with its body read (not for a 101).
func (g *gateway) raw(t *testing.T, req string) (*http.Response, string) {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(g.caPEM)
	conn, err := tls.Dial("tcp", strings.TrimPrefix(g.url, "https://"), &tls.Config{RootCAs: pool, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return resp, ""
	}
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// statusMessage is the message of a Kubernetes Status body.
func statusMessage(t *testing.T, body string) string {
	t.Helper()
	var st struct{ Kind, Message string }
	if err := json.Unmarshal([]byte(body), &st); err != nil || st.Kind != "Status" {
		t.Fatalf("not a Status: %q (%v)", body, err)
	}
	return st.Message
}

// finalRecord waits for the stub's ResponseComplete audit record of id.
func (g *gateway) finalRecord(t *testing.T, id string) auditv1.Event {
	t.Helper()
	var found auditv1.Event
	waitFor(t, 15*time.Second, "the final audit record of "+id, func() bool {
		data, _ := os.ReadFile(filepath.Join(g.dir, "audit.log"))
		for _, line := range strings.Split(string(data), "\n") {
			if !strings.Contains(line, id) {
				continue
			}
			var ev auditv1.Event
			if json.Unmarshal([]byte(line), &ev) == nil && string(ev.AuditID) == id && ev.Stage == auditv1.StageResponseComplete {
				found = ev
				return true
			}
		}
		return false
	}, g.stub)
	return found
}

// TestHops drives the two hops the way users meet them, with raw HTTP/1.1,
// through the real stub and agent to kube-apiserver 1.33:
//
//   - no header named in Connection changes what the cluster receives, and
//     the record states what it received.
func TestHops(t *testing.T) {
	c := kubetest.Start(t)
	g := startGateway(t, c)
	secretFile, tokenFile := g.install("acc")
	g.startAgent(agentOpts{cluster: "acc", id: "a1", secretFile: secretFile, apiURL: c.URL, tokenFile: tokenFile, c: c})

	_, aliceTok := g.user("alice", "cluster-admin")
	_, bobTok := g.user("bob", "e2e-reader") // the "view" user
	gina := g.kubeconfig("gina", "acc-readers")
	c.Apply(t, `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: acc-readers}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: acc-readers}]
`)
	g.waitAgents(aliceTok, "acc", "a1")

	t.Run("6 Connection cannot remove what the stub sets", func(t *testing.T) {
		host := strings.TrimPrefix(g.url, "https://")
		// The input: a view user, --as acc-admin, and Connection
		// naming the stub's own --as header.
		list := func(connection string) (*http.Response, string) {
			req := "GET /clusters/acc/api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: " + host + "\r\nAuthorization: Bearer " + bobTok +
				"\r\nImpersonate-User: acc-admin\r\n"
			if connection != "" {
				req += "Connection: " + connection + "\r\n"
			}
			return g.raw(t, req+"\r\n")
		}
		want := `users "acc-admin" is forbidden: User "bob" cannot impersonate resource "users" in API group "" at the cluster scope`
		for _, connection := range []string{"", "Keyhole-As-User"} {
			resp, body := list(connection)
			if resp.StatusCode != 403 || statusMessage(t, body) != want {
				t.Fatalf("Connection %q: %s %s, want 403 %q", connection, resp.Status, body, want)
			}
			ev := g.finalRecord(t, resp.Header.Get("Keyhole-Request-Id"))
			if ev.ImpersonatedUser == nil || ev.ImpersonatedUser.Username != "acc-admin" || ev.ResponseStatus.Code != 403 {
				t.Errorf("Connection %q: record %+v %+v", connection, ev.ImpersonatedUser, ev.ResponseStatus)
			}
		}
		// The whole class: for every header the stub sets, named in
		// Connection, the cluster sees the same identity (SelfSubjectReview,
		// answered by the API server) and the record says the same.
		type seen struct {
			Code           int
			User           string
			Groups         []string
			RecordAsUser   string
			RecordAsGroups []string
		}
		whoami := func(t *testing.T, token, extra, connection string) seen {
			body := `{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`
			req := fmt.Sprintf("POST /clusters/acc/apis/authentication.k8s.io/v1/selfsubjectreviews HTTP/1.1\r\nHost: %s\r\n"+
				"Authorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s", host, token, len(body), extra)
			if connection != "" {
				req += "Connection: " + connection + "\r\n"
			}
			resp, out := g.raw(t, req+"\r\n"+body)
			s := seen{Code: resp.StatusCode}
			var r struct {
				Status struct {
					UserInfo struct {
						Username string
						Groups   []string
					}
				}
			}
			if resp.StatusCode == 201 {
				if err := json.Unmarshal([]byte(out), &r); err != nil {
					t.Fatal(err)
				}
				s.User, s.Groups = r.Status.UserInfo.Username, r.Status.UserInfo.Groups
			}
			if ev := g.finalRecord(t, resp.Header.Get("Keyhole-Request-Id")); ev.ImpersonatedUser != nil {
				s.RecordAsUser, s.RecordAsGroups = ev.ImpersonatedUser.Username, ev.ImpersonatedUser.Groups
			}
			return s
		}
		ginaTok := tokenOf(t, gina)
		for _, who := range []struct{ name, token, extra string }{
			{"alice --as bob --as-group acc-readers", aliceTok, "Impersonate-User: bob\r\nImpersonate-Group: acc-readers\r\n"},
			{"gina (group acc-readers)", ginaTok, ""},
			{"bob --as acc-admin (refused)", bobTok, "Impersonate-User: acc-admin\r\n"},
		} {
			base := whoami(t, who.token, who.extra, "")
			t.Logf("%s without Connection: %+v", who.name, base)
			if base.RecordAsUser != "" && base.Code == 201 && base.RecordAsUser != base.User {
				t.Errorf("%s: the record says %q, the cluster saw %q", who.name, base.RecordAsUser, base.User)
			}
			for _, connection := range []string{"Keyhole-As-User", "Keyhole-As-Group", "Keyhole-User", "Keyhole-Group", "Keyhole-Request-Id",
				"Impersonate-User, Impersonate-Group", "X-Forwarded-For", "keyhole-as-user, KEYHOLE-GROUP, keep-alive"} {
				got := whoami(t, who.token, who.extra, connection)
				if fmt.Sprint(got) != fmt.Sprint(base) {
					t.Errorf("%s with Connection: %s: %+v, want %+v", who.name, connection, got, base)
				}
			}
		}
	})
}

package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

// apiTap stands between an agent and kube-apiserver: a TLS reverse proxy
// that records every request as the API server receives it (method, path,
// headers), so a test can say what the cluster was sent.
type apiTap struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []tappedRequest
}

type tappedRequest struct {
	method, path string
	header       http.Header
}

func startAPITap(t *testing.T, c *kubetest.Cluster) *apiTap {
	t.Helper()
	target, err := url.Parse(c.URL)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.CAData)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	rp := &httputil.ReverseProxy{
		Rewrite:       func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport:     tr,
		FlushInterval: -1,
		ErrorLog:      log.New(io.Discard, "", 0),
	}
	tap := &apiTap{}
	tap.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tap.mu.Lock()
		tap.reqs = append(tap.reqs, tappedRequest{r.Method, r.URL.Path, r.Header.Clone()})
		tap.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	tap.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	tap.srv.StartTLS()
	t.Cleanup(func() { tap.srv.CloseClientConnections(); tap.srv.Close(); tr.CloseIdleConnections() })
	return tap
}

// kubeconfig writes a kubeconfig that reaches the API server through the
// tap with token.
func (tap *apiTap) kubeconfig(t *testing.T, dir, token string) string {
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tap.srv.Certificate().Raw})
	path := filepath.Join(dir, "tap.kubeconfig")
	writeFile(t, path, fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: tap
  cluster: {server: %s, certificate-authority-data: %s}
users:
- name: agent
  user: {token: %s}
contexts:
- name: tap
  context: {cluster: tap, user: agent}
current-context: tap
`, tap.srv.URL, base64.StdEncoding.EncodeToString(ca), token))
	return path
}

// requests returns the requests the API server received so far.
func (tap *apiTap) requests() []tappedRequest {
	tap.mu.Lock()
	defer tap.mu.Unlock()
	return append([]tappedRequest(nil), tap.reqs...)
}

// last returns the last request to path the API server received.
func (tap *apiTap) last(t *testing.T, path string) tappedRequest {
	t.Helper()
	reqs := tap.requests()
	for i := len(reqs) - 1; i >= 0; i-- {
		if reqs[i].path == path {
			return reqs[i]
		}
	}
	t.Fatalf("the API server received no request to %s", path)
	return tappedRequest{}
}

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

// wsRequest is a WebSocket handshake for path with extra header lines
// ("Name: value\r\n" each).
func wsRequest(path, extra string) string {
	return "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + extra + "\r\n"
}

// bearerSubprotocol is the WebSocket subprotocol kube-apiserver reads a
// bearer token from.
func bearerSubprotocol(token string) string {
	return "base64url.bearer.authorization.k8s.io." + base64.RawURLEncoding.EncodeToString([]byte(token))
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

// metric reads one sample of the stub's metrics; -1 if absent.
func (g *gateway) metric(t testing.TB, sample string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + g.metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(readAll(resp), "\n") {
		if v, ok := strings.CutPrefix(l, sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return -1
}

// TestHops drives the two hops the way users meet them, with kubectl, curl
// and raw HTTP/1.1, through the real stub and agent to kube-apiserver 1.33,
// whose every request a tap records:
//
//   - a bearer token in a WebSocket subprotocol is the caller's credential
//     at the stub and never reaches the cluster;
//   - a WebSocket exec, attach or port-forward needs create, as over SPDY;
//   - callers that hang up, agents that die and a stopping stub still leave
//     the final audit record, log line and metrics;
//   - no header named in Connection changes what the cluster receives, and
//     the record states what it received.
func TestHops(t *testing.T) {
	c := kubetest.Start(t)
	g := startGateway(t, c)
	secretFile, tokenFile := g.install("acc")
	tap := startAPITap(t, c)
	agentCfg := agentOpts{cluster: "acc", id: "a1", secretFile: secretFile, kubeconfig: tap.kubeconfig(t, g.dir, readTrimmed(t, tokenFile)), extra: drainFast}
	agent := g.startAgent(agentCfg)

	alice, aliceTok := g.user("alice", "cluster-admin")
	_, bobTok := g.user("bob", "e2e-reader") // the "view" user
	gus := g.kubeconfig("gus")               // may only get pods/exec, attach, portforward
	hana := g.kubeconfig("hana")             // may get and create them, as "edit" may
	gina := g.kubeconfig("gina", "acc-readers")
	c.Apply(t, `apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: sessions-get, namespace: default}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list]
- apiGroups: [""]
  resources: [pods/exec, pods/attach, pods/portforward]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: sessions-create, namespace: default}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list]
- apiGroups: [""]
  resources: [pods/exec, pods/attach, pods/portforward]
  verbs: [get, create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: gus, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: sessions-get}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: gus}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: hana, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: sessions-create}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: hana}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: acc-readers}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: acc-readers}]
`)
	// The API server's admin token is also the stub token of powerless
	// mallory.
	sum := sha256.Sum256([]byte(c.AdminToken))
	f, err := os.OpenFile(filepath.Join(g.dir, "state", "tokens.yaml"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "- user: mallory\n  sha256: %s\n", hex.EncodeToString(sum[:]))
	f.Close()
	g.waitAgents(aliceTok, "acc", "a1")
	c.CreatePod(t, "default", "shell", map[string]string{kubetest.PortAnnotationPrefix + "8080": startDataServer(t)})
	const pod = "/api/v1/namespaces/default/pods/shell"

	t.Run("4a WebSocket bearer subprotocol never reaches the cluster", func(t *testing.T) {
		hanaTok := tokenOf(t, hana)
		execPath := pod + "/exec"
		execURL := "/clusters/acc/api/v1/namespaces/default/pods/shell/exec?command=true&stdout=true"
		for _, tc := range []struct {
			name, extra string
			code        int
			msg         string // of a refusal
			user        string // Impersonate-User the API server received, if any
			protocols   string // Sec-WebSocket-Protocol the API server received
		}{
			{"Authorization and the admin token in a subprotocol", "Authorization: Bearer " + hanaTok + "\r\nSec-WebSocket-Protocol: " +
				bearerSubprotocol(c.AdminToken) + ", v5.channel.k8s.io, v4.channel.k8s.io\r\n", 101, "", "hana", "v5.channel.k8s.io, v4.channel.k8s.io"},
			{"the caller's token in a subprotocol (a browser)", "Sec-WebSocket-Protocol: v5.channel.k8s.io, " + bearerSubprotocol(hanaTok) + "\r\n",
				101, "", "hana", "v5.channel.k8s.io"},
			{"the admin token, which is mallory's stub token", "Sec-WebSocket-Protocol: " + bearerSubprotocol(c.AdminToken) + ", v5.channel.k8s.io\r\n",
				403, `User "mallory" cannot create resource "pods/exec"`, "mallory", ""},
			{"a token the stub does not know", "Sec-WebSocket-Protocol: " + bearerSubprotocol("khu_not-a-token") + ", v5.channel.k8s.io\r\n",
				401, "not valid", "", ""},
			{"a token and no other subprotocol", "Sec-WebSocket-Protocol: " + bearerSubprotocol(hanaTok) + "\r\n",
				401, "at least one other subprotocol", "", ""},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before := len(tap.requests())
				resp, body := g.raw(t, wsRequest(execURL, tc.extra))
				if resp.StatusCode != tc.code {
					t.Fatalf("got %s %s, want %d", resp.Status, body, tc.code)
				}
				if tc.code != 101 {
					if msg := statusMessage(t, body); !strings.Contains(msg, tc.msg) {
						t.Fatalf("message %q lacks %q", msg, tc.msg)
					}
					// Refused by the stub, it never reaches the API server;
					// refused further on, it reaches it only as tc.user.
					for _, r := range tap.requests()[before:] {
						if as := r.header.Get("Impersonate-User"); r.path == execPath && (tc.user == "" || as != tc.user) {
							t.Fatalf("the refused session reached the API server as %q", as)
						}
					}
					return
				}
				if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != "v5.channel.k8s.io" {
					t.Errorf("the API server chose subprotocol %q", got)
				}
				r := tap.last(t, execPath)
				if got := r.header.Get("Impersonate-User"); got != tc.user {
					t.Errorf("the API server was asked to run it as %q, want %q", got, tc.user)
				}
				if got := strings.Join(r.header.Values("Sec-Websocket-Protocol"), "|"); got != tc.protocols {
					t.Errorf("the API server received Sec-WebSocket-Protocol %q, want %q", got, tc.protocols)
				}
			})
		}
		// kubectl's own WebSocket exec: its subprotocols pass in order.
		if out, err := g.kubectl(hana, nil, nil, "exec", "shell", "--", "echo", "via websocket"); err != nil || out != "via websocket\n" {
			t.Fatalf("hana's kubectl exec: %q %v", out, err)
		}
		if got := tap.last(t, execPath).header.Get("Sec-Websocket-Protocol"); !strings.HasPrefix(got, "v5.channel.k8s.io") || strings.Contains(got, "bearer") {
			t.Errorf("kubectl's subprotocols at the API server: %q", got)
		}
		// Nothing the API server received, in any request of the run so
		// far, carries the admin token or hana's token in any form.
		var n int
		for _, r := range tap.requests() {
			n++
			for k, vs := range r.header {
				for _, v := range vs {
					for what, secret := range map[string]string{"the admin token": c.AdminToken, "hana's token": hanaTok,
						"the admin subprotocol": bearerSubprotocol(c.AdminToken), "hana's subprotocol": bearerSubprotocol(hanaTok)} {
						if strings.Contains(v, secret) {
							t.Errorf("%s reached the API server in %s of %s %s", what, k, r.method, r.path)
						}
					}
				}
			}
		}
		t.Logf("the tap checked the headers of the %d requests the API server received so far for the admin token and hana's token", n)
	})

	t.Run("4b WebSocket exec, attach and port-forward need create", func(t *testing.T) {
		// For reference: kube-apiserver 1.33 itself lets a user with only
		// get on pods/exec exec over a WebSocket.
		direct, derr := g.kubectl(c.AdminKubeconfig, nil, nil, "--as", "gus", "exec", "shell", "--", "echo", "direct")
		t.Logf("directly at kube-apiserver 1.33, gus (get only) over WebSocket: %q, %v", direct, derr)

		want := func(sub string) string {
			return `pods "shell" is forbidden: User "gus" cannot create resource "pods/` + sub + `" in API group "" in the namespace "default"`
		}
		_, err := g.kubectl(gus, nil, nil, "exec", "shell", "--", "echo", "gus")
		if err == nil || !strings.Contains(err.Error(), "Error from server (Forbidden): "+want("exec")) {
			t.Fatalf("gus's kubectl exec through the gateway: want %q, got %v", want("exec"), err)
		}
		gusTok, hanaTok := tokenOf(t, gus), tokenOf(t, hana)
		for _, s := range []struct{ sub, query, protocol string }{
			{"exec", "command=true&stdout=true", "v5.channel.k8s.io"},
			{"attach", "container=main&stdout=true", "v5.channel.k8s.io"},
			{"portforward", "ports=8080", "SPDY/3.1+portforward.k8s.io"},
		} {
			path := "/clusters/acc" + pod + "/" + s.sub + "?" + s.query
			extra := "Sec-WebSocket-Protocol: " + s.protocol + "\r\n"
			resp, body := g.raw(t, wsRequest(path, "Authorization: Bearer "+gusTok+"\r\n"+extra))
			if resp.StatusCode != 403 || statusMessage(t, body) != want(s.sub) {
				t.Errorf("gus, WebSocket %s: %s %s, want 403 %q", s.sub, resp.Status, body, want(s.sub))
			}
			if resp, body := g.raw(t, wsRequest(path, "Authorization: Bearer "+hanaTok+"\r\n"+extra)); resp.StatusCode != 101 {
				t.Errorf("hana, WebSocket %s: %s %s, want 101", s.sub, resp.Status, body)
			}
		}
		// The identity the request runs as decides: alice --as gus is
		// refused, alice --as hana is not.
		if _, err := g.kubectl(alice, nil, nil, "--as", "gus", "exec", "shell", "--", "echo"); err == nil || !strings.Contains(err.Error(), want("exec")) {
			t.Errorf("alice --as gus exec: %v", err)
		}
		if out, err := g.kubectl(alice, nil, nil, "--as", "hana", "exec", "shell", "--", "echo", "as hana"); err != nil || out != "as hana\n" {
			t.Errorf("alice --as hana exec: %q %v", out, err)
		}
		// SPDY is unchanged: the API server asks create itself.
		spdy := []string{"KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false"}
		if _, err := g.kubectl(gus, spdy, nil, "exec", "shell", "--", "echo"); err == nil || !strings.Contains(err.Error(), want("exec")) {
			t.Errorf("gus over SPDY: %v", err)
		}
		if out, err := g.kubectl(hana, spdy, nil, "exec", "shell", "--", "echo", "spdy"); err != nil || out != "spdy\n" {
			t.Errorf("hana over SPDY: %q %v", out, err)
		}
		// The stub's records: gus's WebSocket attempt (a get) refused by the
		// agent, then kubectl's SPDY fallback (a create) by the API server.
		data, _ := os.ReadFile(filepath.Join(g.dir, "audit.log"))
		verbs := map[string]int{}
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			var ev auditv1.Event
			if json.Unmarshal([]byte(line), &ev) == nil && ev.User.Username == "gus" && ev.ObjectRef != nil && ev.ObjectRef.Subresource == "exec" &&
				ev.ResponseStatus != nil && ev.ResponseStatus.Code == 403 {
				verbs[ev.Verb]++
			}
		}
		t.Logf("gus's refused exec records by verb: %v", verbs)
		if verbs["get"] == 0 || verbs["create"] == 0 {
			t.Errorf("want refused WebSocket (get) and SPDY (create) exec records for gus, got %v", verbs)
		}
	})

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

	t.Run("5 callers that hang up are audited", func(t *testing.T) {
		secretsWatch := "/clusters/acc/api/v1/namespaces/keyhole-system/secrets?watch=true"
		gauge := `keyhole_open_streams{kind="request"}`
		waitGauge := func(what string) time.Duration {
			start := time.Now()
			waitFor(t, 15*time.Second, what, func() bool { return g.metric(t, gauge) == 0 }, g.stub)
			return time.Since(start)
		}
		waitGauge("no request in flight before")
		goroutines0, fds0 := g.metric(t, "go_goroutines"), fdCount(t, g.stub)

		// The input, with curl.
		hdrFile := filepath.Join(g.dir, "curl-headers")
		cmd := exec.Command("curl", "-sS", "--max-time", "3", "--cacert", filepath.Join(g.dir, "state", "tls", "ca.crt"), "-D", hdrFile,
			"-H", "Authorization: Bearer "+aliceTok, g.url+secretsWatch)
		out, err := cmd.Output()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 28 || !strings.Contains(string(out), `"type":"ADDED"`) {
			t.Fatalf("curl: %v (want exit 28, a timeout) %.200s", err, out)
		}
		hdrs, _ := os.ReadFile(hdrFile)
		var curlID string
		for _, l := range strings.Split(string(hdrs), "\n") {
			if v, ok := strings.CutPrefix(strings.ToLower(strings.TrimSpace(l)), "keyhole-request-id: "); ok {
				curlID = v
			}
		}
		if ev := g.finalRecord(t, curlID); ev.Annotations["keyhole.dev/ended"] != "client-gone" || ev.ResponseStatus.Code != 200 ||
			ev.Verb != "watch" || ev.ObjectRef.Resource != "secrets" {
			t.Fatalf("curl's watch: record %v %+v %s", ev.Annotations, ev.ResponseStatus, ev.Verb)
		}
		took := waitGauge("curl's watch to leave the gauge")
		t.Logf("curl --max-time 3 watch of secrets: final record ended=client-gone; gauge back to 0 %v later", took.Round(time.Millisecond))

		// 50 more, 10 at a time, over HTTP/2 and HTTP/1.1, each hanging up
		// after a second.
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(g.caPEM)
		h2 := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
		h1 := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}
		const n, parallel = 50, 10
		ids := make([]string, n)
		errs := make(chan error, n)
		sem := make(chan struct{}, parallel)
		var peak float64
		var wg sync.WaitGroup
		start := time.Now()
		for i := 0; i < n; i++ {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				ctx, cancel := context.WithTimeout(context.Background(), time.Second) // then the caller hangs up
				defer cancel()
				req, _ := http.NewRequestWithContext(ctx, "GET", g.url+secretsWatch, nil)
				req.Header.Set("Authorization", "Bearer "+aliceTok)
				rt := h2
				if i%2 == 1 {
					rt = h1
				}
				resp, err := rt.RoundTrip(req)
				if err != nil {
					errs <- err
					return
				}
				defer resp.Body.Close()
				ids[i] = resp.Header.Get("Keyhole-Request-Id")
				if l, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || !strings.Contains(l, "ADDED") {
					errs <- fmt.Errorf("watch %d: first event %q, %v", i, l, err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
			}()
			if i == parallel {
				peak = g.metric(t, gauge)
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		h1.CloseIdleConnections()
		h2.CloseIdleConnections()
		loop := time.Since(start)
		took = waitGauge("the 50 watches to leave the gauge")
		stubLog := g.stub.logText()
		var records, lines int
		for _, id := range ids {
			if id == "" {
				continue
			}
			if ev := g.finalRecord(t, id); ev.Annotations["keyhole.dev/ended"] == "client-gone" && ev.ResponseStatus.Code == 200 && ev.Verb == "watch" {
				records++
			}
			for _, l := range strings.Split(stubLog, "\n") {
				if strings.Contains(l, `"request_id":"`+id+`"`) && strings.Contains(l, `"msg":"request"`) && strings.Contains(l, `"ended":"client-gone"`) {
					lines++
				}
			}
		}
		time.Sleep(time.Second) // let the stub's connection goroutines finish
		goroutines1, fds1 := g.metric(t, "go_goroutines"), fdCount(t, g.stub)
		t.Logf("%d watches hung up after 1 s (%d at a time, HTTP/2 and HTTP/1.1) in %v: %d final records ended=client-gone, %d log lines; "+
			"open request streams: %v with %d open, 0 again %v after the last; goroutines %v → %v, stub descriptors %d → %d",
			n, parallel, loop.Round(time.Millisecond), records, lines, peak, parallel, took.Round(time.Millisecond), goroutines0, goroutines1, fds0, fds1)
		if records != n || lines != n {
			t.Errorf("want %d records and %d log lines, got %d and %d", n, n, records, lines)
		}
	})

	t.Run("5 a watch whose agent dies is audited", func(t *testing.T) {
		resp, br := g.rawWatch(t, aliceTok, true, "/clusters/acc/api/v1/namespaces/keyhole-system/secrets?watch=true")
		id := resp.Header.Get("Keyhole-Request-Id")
		agent.kill()
		if _, err := io.ReadAll(br); err == nil {
			t.Error("the watch ended cleanly though its agent died")
		}
		if ev := g.finalRecord(t, id); ev.Annotations["keyhole.dev/ended"] != "agent-gone" {
			t.Errorf("record: %v", ev.Annotations)
		}
		agent = g.startAgent(agentCfg)
		g.waitAgents(aliceTok, "acc", "a1")
	})

	t.Run("no credential in any log", func(t *testing.T) {
		g.noSecretsLogged(t, map[string]string{"the API server admin token": c.AdminToken, "the admin token as a subprotocol": bearerSubprotocol(c.AdminToken),
			"alice's token": aliceTok, "hana's token": tokenOf(t, hana), "gus's token": tokenOf(t, gus), "bob's token": bobTok,
			"the agent ServiceAccount token": readTrimmed(t, tokenFile), "the join secret": readTrimmed(t, secretFile)}, agent)
	})

	// Last: it stops the stub.
	t.Run("5 a watch the stub ends to stop is audited", func(t *testing.T) {
		resp, br := g.rawWatch(t, aliceTok, false, "/clusters/acc/api/v1/namespaces/keyhole-system/secrets?watch=true")
		id := resp.Header.Get("Keyhole-Request-Id")
		g.sigterm(t, 60*time.Second)
		if _, err := io.ReadAll(br); err != nil {
			t.Errorf("the watch did not end cleanly: %v", err)
		}
		if ev := g.finalRecord(t, id); ev.Annotations["keyhole.dev/ended"] != "stub-stopping" {
			t.Errorf("record: %v", ev.Annotations)
		}
	})
}

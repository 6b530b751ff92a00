package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/keyhole-dev/keyhole/internal/idptest"
	"github.com/keyhole-dev/keyhole/internal/kubetest"
	"github.com/keyhole-dev/keyhole/proxy"
	"github.com/keyhole-dev/keyhole/tunnel"
)

// harvester is what anything holding only a cluster's join secret can run:
// an agent that announces caller verification and keeps every credential
// that reaches it.
type harvester struct {
	mu     sync.Mutex
	tokens []string
	auths  []string
}

func (h *harvester) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	if tok := r.Header.Get(proxy.HeaderCallerToken); tok != "" {
		h.tokens = append(h.tokens, tok)
	}
	if a := r.Header.Get("Authorization"); a != "" {
		h.auths = append(h.auths, a)
	}
	h.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, `{"kind":"APIVersions","versions":["v1"]}`)
}

func (h *harvester) harvested() (tokens, auths []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.tokens...), append([]string(nil), h.auths...)
}

// runHarvester connects a harvesting agent for cluster with its join secret.
func (g *gateway) runHarvester(t *testing.T, cluster, secretFile string, h *harvester) {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(g.caPEM)
	a, err := tunnel.NewAgent(tunnel.AgentConfig{StubURL: g.url, Cluster: cluster, AgentID: "harvester", Fingerprint: "evil-fp",
		Attributes: map[string]string{proxy.AttrVerifiesCallers: "jwt"},
		Secret: func() (string, error) {
			b, err := os.ReadFile(secretFile)
			return strings.TrimSpace(string(b)), err
		},
		TLS: &tls.Config{RootCAs: pool}, Handler: h, Logger: zaptest.NewLogger(t).Named("harvester")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// TestCallerTokensStayWithTheirCluster: an agent cannot make the stub hand
// it users' tokens, and a token that did reach a verifying cluster's agent
// cannot be replayed against any other cluster. Real Dex (cross-client
// audiences), kubelogin, kubectl, stub, agents and kube-apiserver.
func TestCallerTokensStayWithTheirCluster(t *testing.T) {
	c := kubetest.Start(t)
	dex := idptest.Start(t, idptest.Options{
		Users:       []idptest.User{{Email: "sre@example.com", Password: "sre-pw-1", Groups: []string{"sre"}}},
		PeerClients: []string{"keyhole-acc", "keyhole-evil"},
	})
	g := startGateway(t, c)
	issuer := func(audiences string) string {
		return fmt.Sprintf(`  - issuer: {url: %s, audiences: [%s], audienceMatchPolicy: MatchAny, certificateAuthorityFile: %s}
    claimMappings:
      username: {claim: email, prefix: ""}
      groups: {claim: groups, prefix: "oidc:"}
`, dex.Issuer, audiences, dex.CAFile)
	}
	g.setConfig("authentication:\n  jwt:\n" + issuer("keyhole, keyhole-acc, keyhole-evil") + `    login: {clientID: keyhole, extraScopes: [email, groups]}
policy:
- clusters: ["*"]
  groups: ["oidc:sre"]
- clusters: ["*"]
  users: [admin]
`)
	// acc: its owner runs an agent that verifies callers, for tokens issued
	// for acc only; the stub's operator registered it so.
	accSecret, tokenFile := g.installWith("acc", "--caller-audience", "keyhole-acc")
	g.startAgent(agentOpts{cluster: "acc", id: "a1", secretFile: accSecret, apiURL: c.URL, tokenFile: tokenFile, c: c,
		extra: "callerVerification:\n  jwt:\n" + issuer("keyhole-acc")})
	c.Apply(t, `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: oidc-sre-admin}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "oidc:sre"}]
`)
	// evil: registered plainly; whoever holds its join secret runs a
	// harvester that announces caller verification. evil2: the operator
	// trusted it with verification, and its agent is compromised later.
	_, evilSecret := g.register("evil")
	_, evil2Secret := g.registerWith("evil2", "--caller-audience", "keyhole-evil")
	evil, evil2 := &harvester{}, &harvester{}
	g.runHarvester(t, "evil", evilSecret, evil)
	g.runHarvester(t, "evil2", evil2Secret, evil2)
	_, adminTok := g.user("admin", "cluster-admin")
	g.waitAgents(adminTok, "acc", "a1")
	g.waitAgents(adminTok, "evil", "harvester")
	g.waitAgents(adminTok, "evil2", "harvester")

	// 1. The SRE's everyday token (audience keyhole) on evil, whose agent
	// asks for callers' tokens: none reaches it.
	general := dex.PasswordToken(t, "sre@example.com", "sre-pw-1")
	if resp, body := g.get(t, "/clusters/evil/api", general); resp.StatusCode != 200 {
		t.Fatalf("sre on evil: %d %s", resp.StatusCode, body)
	}
	if toks, auths := evil.harvested(); len(toks)+len(auths) != 0 {
		t.Fatalf("a plainly registered cluster's agent received %d caller tokens and %d Authorization headers", len(toks), len(auths))
	}
	// The everyday token is not what acc accepts: it names no cluster.
	if resp, body := g.get(t, "/clusters/acc/api", general); resp.StatusCode != 401 || !strings.Contains(body, `verifies callers itself and accepts only an ID token issued for it (audience \"keyhole-acc\")`) {
		t.Fatalf("the everyday token on acc: %d %s", resp.StatusCode, body)
	}

	// 2. A token bound to evil2 reaches evil2's (compromised) agent, which
	// replays it at the stub against acc: refused, whatever it asks for.
	tr, err := dex.PasswordGrant("sre@example.com", "sre-pw-1", append(idptest.Scopes, "audience:server:client_id:keyhole-evil")...)
	if err != nil {
		t.Fatal(err)
	}
	if resp, body := g.get(t, "/clusters/evil2/api", tr.IDToken); resp.StatusCode != 200 {
		t.Fatalf("sre on evil2: %d %s", resp.StatusCode, body)
	}
	toks, _ := evil2.harvested()
	if len(toks) != 1 {
		t.Fatalf("evil2's agent got %d tokens, want the one bound to it", len(toks))
	}
	for _, path := range []string{"/clusters/acc/api/v1/namespaces/keyhole-system/secrets", "/clusters/acc/api", "/clusters/evil/api"} {
		resp, body := g.get(t, path, toks[0])
		if resp.StatusCode != 403 || !strings.Contains(body, `bound to cluster \"evil2\"`) {
			t.Fatalf("replay of evil2's token at %s: %d %s", path, resp.StatusCode, body)
		}
	}
	if st := g.status(toks[0]); len(st) != 1 || st["evil2"].ID != "evil2" {
		t.Fatalf("the clusters listed for a token bound to evil2: %v", st)
	}

	// 3. The SRE's kubeconfig: acc's context logs in for acc's audience,
	// and acc's own agent verifies it; the other contexts use the everyday
	// login.
	cache := t.TempDir()
	kc := filepath.Join(g.dir, "sre-oidc.kubeconfig")
	writeFile(t, kc, g.stubCmd("kubeconfig", "--oidc", "--login-arg=--grant-type=password", "--login-arg=--username=sre@example.com",
		"--login-arg=--password=sre-pw-1", "--login-arg=--token-cache-dir="+cache))
	b, _ := os.ReadFile(kc)
	if n := strings.Count(string(b), "--oidc-extra-scope=audience:server:client_id:keyhole-acc"); n != 1 {
		t.Fatalf("acc's audience scope appears %d times in the kubeconfig:\n%s", n, b)
	}
	env := []string{"PATH=" + filepath.Dir(dex.KubeloginPath) + ":" + os.Getenv("PATH")}
	if out, err := g.kubectl(kc, env, nil, "--context", "acc", "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"); err != nil || out != "sre@example.com" {
		t.Fatalf("sre on acc through its bound login: %v %q\n%s", err, out, g.stub.tail(20))
	}
	if _, err := g.kubectl(kc, env, nil, "--context", "evil", "get", "--raw", "/clusters/evil/api"); err != nil {
		t.Fatalf("sre on evil with the everyday login: %v", err)
	}
	if toks, auths := evil.harvested(); len(toks)+len(auths) != 0 {
		t.Fatalf("evil's agent received %d caller tokens through kubectl", len(toks)+len(auths))
	}

	// Every refusal is audited.
	time.Sleep(100 * time.Millisecond)
	audit, _ := os.ReadFile(filepath.Join(g.dir, "audit.log"))
	if n := strings.Count(string(audit), `bound to cluster \"evil2\"`); n < 3 {
		t.Fatalf("%d audited refusals of the replayed token, want 3", n)
	}
	g.noSecretsLogged(t, map[string]string{"the everyday token": general, "the token bound to evil2": tr.IDToken, "sre's password": "sre-pw-1"})
}

package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/keyhole-dev/keyhole/internal/idptest"
	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

// TestOIDCLoginWithKubelogin: a person logs in through a real IdP (Dex)
// with kubectl's credential plugin kubelogin, using the kubeconfig that
// `stub kubeconfig --oidc` wrote; the issuer and the policy are added to a
// running stub by editing its config. The stub maps claims with CEL (as an
// AuthenticationConfiguration does), the verifying agent with plain claim
// mappings: both must agree. The cluster's RBAC sees the mapped user and
// groups; a userValidationRules message reaches kubectl.
func TestOIDCLoginWithKubelogin(t *testing.T) {
	c := kubetest.Start(t)
	dex := idptest.Start(t, idptest.Options{Users: []idptest.User{
		{Email: "alice@example.com", Password: "alice-pw-1", Groups: []string{"dev"}},
		{Email: "bob@example.com", Password: "bob-pw-2", Groups: []string{"sales"}},
		{Email: "carol@example.com", Password: "carol-pw-3", Groups: []string{"dev", "contractors"}},
	}})
	g := startGateway(t, c)
	secret, tokenFile := g.install("oidc")
	g.startAgent(agentOpts{cluster: "oidc", id: "o1", secretFile: secret, apiURL: c.URL, tokenFile: tokenFile, c: c})
	_, adminTok := g.user("admin", "cluster-admin") // a static token, to watch the stub
	g.waitAgents(adminTok, "oidc", "o1")
	c.Apply(t, `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: oidc-dev-readers}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "oidc:dev"}]
`+readerRole)

	// Add the issuer and a policy to the running stub.
	g.setConfig(fmt.Sprintf(`authentication:
  jwt:
  - issuer:
      url: %s
      audiences: [keyhole]
      certificateAuthorityFile: %s
    claimValidationRules:
    - expression: 'claims.?email_verified.orValue(true) == true'
      message: the email is not verified
    claimMappings:
      username: {expression: 'claims.email'}
      groups: {expression: 'dyn(claims.?groups.orValue([])).map(g, "oidc:" + g)'}
    userValidationRules:
    - expression: '!("oidc:contractors" in user.groups)'
      message: contractors use the contractors' gateway
    login:
      clientID: keyhole
      extraScopes: [email, groups]
policy:
- clusters: ["*"]
  groups: ["oidc:dev"]
- clusters: ["*"]
  users: [admin]
`, dex.Issuer, dex.CAFile))
	time.Sleep(1100 * time.Millisecond) // the config file is re-checked once a second

	// The kubeconfig a person would get; the test adds kubelogin's password
	// grant instead of a browser.
	kubeconfigFor := func(email, password string) string {
		cache := t.TempDir()
		args := []string{"kubeconfig", "--oidc", "--login-arg=--grant-type=password", "--login-arg=--username=" + email,
			"--login-arg=--password=" + password, "--login-arg=--token-cache-dir=" + cache}
		path := filepath.Join(g.dir, strings.Split(email, "@")[0]+"-oidc.kubeconfig")
		writeFile(t, path, g.stubCmd(args...))
		return path
	}
	alice := kubeconfigFor("alice@example.com", "alice-pw-1")
	kc, _ := os.ReadFile(alice)
	for _, want := range []string{"command: kubectl", "- oidc-login", "- get-token", "--oidc-issuer-url=" + dex.Issuer, "--oidc-client-id=keyhole",
		"--oidc-extra-scope=groups", "--certificate-authority-data="} {
		if !strings.Contains(string(kc), want) {
			t.Errorf("generated kubeconfig lacks %q:\n%s", want, kc)
		}
	}
	// kubectl finds the plugin kubectl-oidc_login on PATH.
	env := []string{"PATH=" + filepath.Dir(dex.KubeloginPath) + ":" + os.Getenv("PATH")}

	out, err := g.kubectl(alice, env, nil, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username} {.status.userInfo.groups}")
	if err != nil || !strings.HasPrefix(out, "alice@example.com ") || !strings.Contains(out, "oidc:dev") {
		t.Fatalf("alice through Dex + kubelogin: %v %q\n%s", err, out, g.stub.tail(20))
	}
	if out, err := g.kubectl(alice, env, nil, "get", "namespaces", "kube-system", "-o", "name"); err != nil || out != "namespace/kube-system\n" {
		t.Fatalf("alice get ns: %v %q", err, out)
	}
	if _, err := g.kubectl(alice, env, nil, "delete", "namespace", "default", "--dry-run=server"); err == nil ||
		!strings.Contains(err.Error(), `User "alice@example.com" cannot delete resource "namespaces"`) {
		t.Fatalf("alice's delete must be the cluster's Forbidden: %v", err)
	}
	// bob logs in fine but the policy admits only oidc:dev.
	bob := kubeconfigFor("bob@example.com", "bob-pw-2")
	if _, err := g.kubectl(bob, env, nil, "get", "configmaps"); err == nil || !strings.Contains(err.Error(), `user "bob@example.com" may not reach cluster "oidc"`) {
		t.Fatalf("bob: %v", err)
	}
	// carol's token is valid, but a userValidationRules entry refuses her.
	carol := kubeconfigFor("carol@example.com", "carol-pw-3")
	if _, err := g.kubectl(carol, env, nil, "get", "configmaps"); err == nil ||
		!strings.Contains(err.Error(), "You must be logged in to the server (the bearer token is not valid") || !strings.Contains(err.Error(), "contractors use the contractors' gateway") {
		t.Fatalf("carol: %v", err)
	}
	// A wrong password never gets a token, so nothing reaches the stub.
	wrong := kubeconfigFor("alice@example.com", "not-her-password")
	if _, err := g.kubectl(wrong, env, nil, "get", "configmaps"); err == nil {
		t.Fatal("wrong password worked")
	}
	// Clusters whose agents verify callers themselves: TestCallerTokensStayWithTheirCluster.
	g.noSecretsLogged(t, map[string]string{"alice's ID token": dex.PasswordToken(t, "alice@example.com", "alice-pw-1"),
		"alice's password": "alice-pw-1", "bob's password": "bob-pw-2", "carol's password": "carol-pw-3"})

	// A token of the same IdP, presented to a stub that does not trust it
	// (the issuer removed from the config), is refused.
	tok := dex.PasswordToken(t, "alice@example.com", "alice-pw-1")
	g.setConfig("policy:\n- clusters: [\"*\"]\n  users: [admin]\n")
	waitFor(t, 15*time.Second, "the issuer to be removed", func() bool {
		resp, body := g.get(t, "/clusters/oidc/api", tok)
		return resp.StatusCode == 401 && strings.Contains(body, "accepts no OIDC tokens")
	}, g.stub)
}

// TestOIDCSameAsKubeAPIServer: one jwt list, pasted unchanged into a real
// kube-apiserver's AuthenticationConfiguration and into the stub's
// authentication section, gives every token the same fate: the same user
// and groups (kubectl auth whoami, directly and through the gateway), or a
// refusal by both, where the gateway's 401 says why. The issuers are the
// issue's inputs: an ES256 issuer (a P-256 key; its discovery advertises
// ES256 only), groups as a distributed claim (resolved from the source's
// endpoint, or refused naming a source that fails as Entra ID's Graph
// endpoint does), CEL validation rules and mappings, CI claims to groups by
// CEL.
func TestOIDCSameAsKubeAPIServer(t *testing.T) {
	corp := startIssuer(t, oidc.ES256)
	corp.handle("/groups", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer source-token" {
			http.Error(w, "wrong token", http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, corp.mint(map[string]any{"groups": []string{"dev", "ops"}}))
	})
	corp.handle("/graph", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"error":{"code":"InvalidAuthenticationToken"}}`, http.StatusUnauthorized)
	})
	ci := startIssuer(t, oidc.RS256)
	jwtList := "jwt:\n- " + corp.issuerYAML() + "\n" + indentYAML(`claimValidationRules:
- expression: 'claims.?email_verified.orValue(false) == true'
  message: the email must be verified
claimMappings:
  username: {expression: 'claims.email'}
  groups: {claim: groups, prefix: "corp:"}
userValidationRules:
- expression: '!user.groups.exists(g, g == "corp:contractors")'
  message: contractors may not use this gateway
`, 2) + "- " + ci.issuerYAML() + "\n" + indentYAML(`claimMappings:
  username: {claim: sub, prefix: "github:"}
  groups:
    expression: 'claims.repository == "acme/deploy" && claims.ref == "refs/heads/main" ? ["deployers"] : []'
`, 2)
	authCfg := filepath.Join(t.TempDir(), "authentication-config.yaml")
	writeFile(t, authCfg, "apiVersion: apiserver.config.k8s.io/v1beta1\nkind: AuthenticationConfiguration\n"+jwtList)

	c := kubetest.Start(t, "--authentication-config="+authCfg)
	g := startGateway(t, c)
	secret, tokenFile := g.install("parity")
	g.startAgent(agentOpts{cluster: "parity", id: "p1", secretFile: secret, apiURL: c.URL, tokenFile: tokenFile, c: c})
	admin, adminTok := g.user("admin", "cluster-admin")
	g.waitAgents(adminTok, "parity", "p1")
	g.setConfig("authentication:\n" + indentYAML(jwtList, 2)) // no policy: every caller reaches every cluster
	time.Sleep(1100 * time.Millisecond)                       // the config file is re-checked once a second

	kc, _ := os.ReadFile(admin)
	gateway := filepath.Join(g.dir, "bearer.kubeconfig")
	writeFile(t, gateway, strings.ReplaceAll(string(kc), adminTok, "placeholder"))
	direct := filepath.Join(g.dir, "direct.kubeconfig")
	writeFile(t, direct, fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: direct, cluster: {server: %q, certificate-authority: %q}}]
users: [{name: bearer, user: {}}]
contexts: [{name: direct, context: {cluster: direct, user: bearer}}]
current-context: direct
`, c.URL, c.CAFile))
	whoami := func(kc, token string) (string, error) {
		return g.kubectl(kc, nil, nil, "--token", token, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username} {.status.userInfo.groups}")
	}

	person := func(email string, more map[string]any) map[string]any {
		m := map[string]any{"email": email, "email_verified": true, "groups": []string{"dev"}}
		for k, v := range more {
			if v == nil {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		return m
	}
	distributed := func(endpoint string) map[string]any {
		return map[string]any{"groups": nil, "_claim_names": map[string]string{"groups": "src1"},
			"_claim_sources": map[string]any{"src1": map[string]string{"endpoint": corp.URL + endpoint, "access_token": "source-token"}}}
	}
	same := []struct{ name, token, want string }{
		{"ES256 issuer, username by CEL", corp.mint(person("alice@example.com", nil)), `alice@example.com ["corp:dev","system:authenticated"]`},
		{"distributed groups", corp.mint(person("bob@example.com", distributed("/groups"))), `bob@example.com ["corp:dev","corp:ops","system:authenticated"]`},
		{"CI main, groups by CEL", ci.mint(map[string]any{"sub": "repo:acme/deploy:ref:refs/heads/main", "repository": "acme/deploy", "ref": "refs/heads/main"}),
			`github:repo:acme/deploy:ref:refs/heads/main ["deployers","system:authenticated"]`},
		{"CI branch", ci.mint(map[string]any{"sub": "repo:acme/deploy:ref:refs/heads/x", "repository": "acme/deploy", "ref": "refs/heads/x"}),
			`github:repo:acme/deploy:ref:refs/heads/x ["system:authenticated"]`},
	}
	for _, tc := range same {
		t.Run(tc.name, func(t *testing.T) {
			// The gateway's first token of an issuer (or of a claim source)
			// waits for discovery; kube-apiserver refuses tokens until its
			// own discovery is done, so it is asked until it answers.
			start := time.Now()
			via, err := whoami(gateway, tc.token)
			if err != nil || via != tc.want {
				t.Fatalf("through the gateway: %v %q, want %q\n%s", err, via, tc.want, g.stub.tail(20))
			}
			t.Logf("through the gateway in %v", time.Since(start).Round(time.Millisecond))
			var out string
			waitFor(t, 30*time.Second, "kube-apiserver to accept the token", func() bool {
				out, err = whoami(direct, tc.token)
				return err == nil
			})
			if out != via {
				t.Fatalf("kube-apiserver says %q, the gateway %q", out, via)
			}
		})
	}
	refused := []struct{ name, token, why string }{
		{"distributed groups from a failing source", corp.mint(person("carol@example.com", distributed("/graph"))),
			`could not expand distributed claims: while getting distributed claim "groups": error while getting distributed claim JWT: 401 Unauthorized`},
		{"claim validation rule", corp.mint(person("dave@example.com", map[string]any{"email_verified": false})), "the email must be verified"},
		{"user validation rule", corp.mint(person("erin@example.com", map[string]any{"groups": []string{"contractors"}})), "contractors may not use this gateway"},
		{"expired", corp.mint(person("alice@example.com", map[string]any{"exp": time.Now().Add(-time.Minute).Unix()})), "token is expired"},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := whoami(gateway, tc.token); err == nil || !strings.Contains(err.Error(), "You must be logged in to the server (the bearer token is not valid") ||
				!strings.Contains(err.Error(), tc.why) {
				t.Fatalf("through the gateway: %v, want a 401 saying %q", err, tc.why)
			}
			if out, err := whoami(direct, tc.token); err == nil || !strings.Contains(err.Error(), "Unauthorized") {
				t.Fatalf("kube-apiserver accepted it: %v %q", err, out)
			}
		})
	}
	g.noSecretsLogged(t, map[string]string{"admin's token": adminTok, "the claim source's token": "source-token"})
}

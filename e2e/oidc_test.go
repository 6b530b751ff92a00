package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-dev/keyhole/internal/idptest"
	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

// TestOIDCLoginWithKubelogin: a person logs in through a real IdP (Dex)
// with kubectl's credential plugin kubelogin, using the kubeconfig that
// `stub kubeconfig --oidc` wrote; the issuer and the policy are added to a
// running stub by editing its config. The cluster's RBAC sees the mapped
// user and groups.
func TestOIDCLoginWithKubelogin(t *testing.T) {
	c := kubetest.Start(t)
	dex := idptest.Start(t, idptest.Options{Users: []idptest.User{
		{Email: "alice@example.com", Password: "alice-pw-1", Groups: []string{"dev"}},
		{Email: "bob@example.com", Password: "bob-pw-2", Groups: []string{"sales"}},
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
    claimMappings:
      username: {claim: email, prefix: ""}
      groups: {claim: groups, prefix: "oidc:"}
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
	// A wrong password never gets a token, so nothing reaches the stub.
	wrong := kubeconfigFor("alice@example.com", "not-her-password")
	if _, err := g.kubectl(wrong, env, nil, "get", "configmaps"); err == nil {
		t.Fatal("wrong password worked")
	}
	// Clusters whose agents verify callers themselves: TestCallerTokensStayWithTheirCluster.
	g.noSecretsLogged(t, map[string]string{"alice's ID token": dex.PasswordToken(t, "alice@example.com", "alice-pw-1"),
		"alice's password": "alice-pw-1", "bob's password": "bob-pw-2"})

	// A token of the same IdP, presented to a stub that does not trust it
	// (the issuer removed from the config), is refused.
	tok := dex.PasswordToken(t, "alice@example.com", "alice-pw-1")
	g.setConfig("policy:\n- clusters: [\"*\"]\n  users: [admin]\n")
	waitFor(t, 15*time.Second, "the issuer to be removed", func() bool {
		resp, body := g.get(t, "/clusters/oidc/api", tok)
		return resp.StatusCode == 401 && strings.Contains(body, "accepts no OIDC tokens")
	}, g.stub)
}

package e2e

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/coreos/go-oidc/v3/oidc/oidctest"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

// TestCIPipelineToken: a pipeline presents its own OIDC ID token (GitHub
// Actions shape, from an in-process issuer) with plain kubectl --token. A
// CEL claimMappings.groups expression maps "repository acme/deploy on
// refs/heads/main" to group deployers, and the policy lets deployers reach
// prod. A config still using the removed claimRules key stops the stub at
// start with the replacement written out.
func TestCIPipelineToken(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	is := &oidctest.Server{PublicKeys: []oidctest.PublicKey{{PublicKey: key.Public(), KeyID: "gh", Algorithm: oidc.RS256}}}
	gh := httptest.NewTLSServer(is)
	defer gh.Close()
	is.SetIssuer(gh.URL)
	caFile := filepath.Join(t.TempDir(), "gh-ca.pem")
	writeFile(t, caFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: gh.Certificate().Raw})))
	mint := func(claims map[string]any) string {
		c := map[string]any{"iss": gh.URL, "aud": "keyhole", "exp": time.Now().Add(10 * time.Minute).Unix(), "iat": time.Now().Unix(),
			"repository_id": "123456", "repository_owner": "acme", "actor": "octocat", "event_name": "push"}
		for k, v := range claims {
			c[k] = v
		}
		b, _ := json.Marshal(c)
		return oidctest.SignIDToken(key, "gh", oidc.RS256, string(b))
	}

	c := kubetest.Start(t)
	g := startGateway(t, c)
	secret, tokenFile := g.install("prod")
	g.startAgent(agentOpts{cluster: "prod", id: "p1", secretFile: secret, apiURL: c.URL, tokenFile: tokenFile, c: c})
	admin, adminTok := g.user("admin", "cluster-admin")
	g.waitAgents(adminTok, "prod", "p1")
	c.Apply(t, `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: deployers-edit}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: deployers}]
`)
	g.setConfig(fmt.Sprintf(`authentication:
  jwt:
  - issuer: {url: %s, audiences: [keyhole], certificateAuthorityFile: %s}
    claimMappings:
      username: {claim: sub, prefix: "github:"}
      groups:
        expression: 'claims.repository == "acme/deploy" && claims.ref == "refs/heads/main" ? ["deployers"] : []'
policy:
- clusters: [prod]
  groups: [deployers]
- clusters: ["*"]
  users: [admin]
`, gh.URL, caFile))
	time.Sleep(1100 * time.Millisecond) // the config file is re-checked once a second

	main := mint(map[string]any{"sub": "repo:acme/deploy:ref:refs/heads/main", "repository": "acme/deploy", "ref": "refs/heads/main"})
	branch := mint(map[string]any{"sub": "repo:acme/deploy:ref:refs/heads/feature", "repository": "acme/deploy", "ref": "refs/heads/feature"})
	// The pipeline's kubeconfig: the generated one, with the CI token given
	// to kubectl on the command line (as a pipeline step would).
	kc, _ := os.ReadFile(admin)
	pipeline := filepath.Join(g.dir, "pipeline.kubeconfig")
	writeFile(t, pipeline, strings.ReplaceAll(string(kc), adminTok, "placeholder"))

	apply := "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: deployed-by-ci}\ndata: {version: \"42\"}\n"
	if out, err := g.kubectl(pipeline, nil, strings.NewReader(apply), "--token", main, "apply", "-f", "-"); err != nil {
		t.Fatalf("pipeline on main: %v %s", err, out)
	}
	out, err := g.kubectl(pipeline, nil, nil, "--token", main, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username} {.status.userInfo.groups}")
	if err != nil || !strings.HasPrefix(out, "github:repo:acme/deploy:ref:refs/heads/main ") || !strings.Contains(out, "deployers") {
		t.Fatalf("whoami on main: %v %q", err, out)
	}
	// (kubectl apply would first fail fetching OpenAPI, where kubectl prints
	// no Status message; get shows the stub's.)
	if _, err := g.kubectl(pipeline, nil, nil, "--token", branch, "get", "configmap", "deployed-by-ci"); err == nil ||
		!strings.Contains(err.Error(), `may not reach cluster "prod"`) {
		t.Fatalf("pipeline on a feature branch: %v", err)
	}
	expired := mint(map[string]any{"sub": "repo:acme/deploy:ref:refs/heads/main", "repository": "acme/deploy", "ref": "refs/heads/main",
		"exp": time.Now().Add(-time.Minute).Unix()})
	if _, err := g.kubectl(pipeline, nil, nil, "--token", expired, "get", "configmaps"); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired CI token: %v", err)
	}
	g.noSecretsLogged(t, map[string]string{"the main-branch token": main, "the branch token": branch, "the expired token": expired, "admin's token": adminTok})

	// The removed claimRules key: the stub does not start, and says what
	// to write instead.
	old := filepath.Join(t.TempDir(), "old.yaml")
	writeFile(t, old, fmt.Sprintf(`apiVersion: keyhole.dev/v1alpha1
kind: StubConfig
listen: 127.0.0.1:%d
stateDir: %s
authentication:
  jwt:
  - issuer: {url: %s, audiences: [keyhole], certificateAuthorityFile: %s}
    claimMappings:
      username: {claim: sub, prefix: "github:"}
    claimRules:
    - match: {repository: acme/deploy, ref: refs/heads/main}
      groups: [deployers]
`, freePort(t), t.TempDir(), gh.URL, caFile))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start, err := exec.CommandContext(ctx, g.stubBin, "serve", "--config", old).CombinedOutput()
	want := `authentication.jwt[0].claimRules: removed; Keyhole now reads claims as Kubernetes' AuthenticationConfiguration does, where claims become groups with a CEL expression in claimMappings.groups.expression. These rules (with any groups claim) become:
    claimMappings:
      groups:
        expression: '(claims.?ref.orValue("") == "refs/heads/main" && claims.?repository.orValue("") == "acme/deploy" ? ["deployers"] : [])'`
	if kubetest.ExitCode(err) != 1 || !strings.Contains(string(start), want) {
		t.Fatalf("stub with claimRules: %v\n%s", err, start)
	}
	t.Logf("the stub's start-up error:\n%s", start)
}

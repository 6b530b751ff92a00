package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/keyhole-dev/keyhole/audit"
	"github.com/keyhole-dev/keyhole/internal/idptest"
	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

// TestStreamsEndWithTheirCredential: an open `kubectl get -w` and
// `kubectl exec -i … cat` live only as long as the credential and the
// policy that admitted them. Four users each hold both open through the
// real stub and agent:
//
//   - eve's static token expires (stub kubeconfig --expires 12s);
//   - frank's token line is deleted from the state's tokens.yaml;
//   - gina is dropped from the policy in the config file;
//   - carol's OIDC ID token from Dex expires (Dex issues 25 s tokens).
//
// Each stream must end within a few seconds of its cause (recheckInterval
// is 1 s here; a static token's expiry is whole seconds, so it may end up
// to a second before the 12 s), a fresh request must be refused with what
// kubectl says for a 401 or 403, and the audit log must say why each
// stream ended.
func TestStreamsEndWithTheirCredential(t *testing.T) {
	c := kubetest.Start(t)
	dex := idptest.Start(t, idptest.Options{
		Users:         []idptest.User{{Email: "carol@example.com", Password: "carol-pw-1", Groups: []string{"dev"}}},
		IDTokenExpiry: 25 * time.Second,
	})
	g := startGateway(t, c)
	policy := func(users ...string) string {
		return fmt.Sprintf(`streams: {recheckInterval: 1s}
authentication:
  jwt:
  - issuer:
      url: %s
      audiences: [keyhole]
      certificateAuthorityFile: %s
    claimMappings:
      username: {claim: email, prefix: ""}
      groups: {claim: groups, prefix: "oidc:"}
policy:
- clusters: ["*"]
  users: [%s]
`, dex.Issuer, dex.CAFile, strings.Join(users, ", "))
	}
	g.setConfig(policy("admin", "eve", "frank", "gina", "carol@example.com"))
	g.stub.stop() // streams.* are read at start
	g.restartStub(t)
	waitFor(t, 60*time.Second, "stub to come back", func() bool { return g.code("/healthz") == 200 }, g.stub)

	secret, tokenFile := g.install("acc")
	g.startAgent(agentOpts{cluster: "acc", id: "a1", secretFile: secret, apiURL: c.URL, tokenFile: tokenFile, c: c})
	admin, adminTok := g.user("admin", "cluster-admin")
	g.waitAgents(adminTok, "acc", "a1")
	c.CreatePod(t, "default", "shell-0", nil)

	kubeconfigs := map[string]string{}
	eveMinted := time.Now()
	kubeconfigs["eve"] = filepath.Join(g.dir, "eve.kubeconfig")
	writeFile(t, kubeconfigs["eve"], g.stubCmd("kubeconfig", "--user", "eve", "--expires", "12s"))
	kubeconfigs["frank"] = g.kubeconfig("frank")
	kubeconfigs["gina"] = g.kubeconfig("gina")
	carolTok := dex.PasswordToken(t, "carol@example.com", "carol-pw-1")
	carolMinted := time.Now()
	kubeconfigs["carol"] = filepath.Join(g.dir, "carol.kubeconfig")
	kc, _ := os.ReadFile(admin)
	writeFile(t, kubeconfigs["carol"], strings.Replace(string(kc), adminTok, carolTok, 1))
	for _, u := range []string{"eve", "frank", "gina", "carol@example.com"} {
		g.bind(strings.Split(u, "@")[0], "cluster-admin")
	}
	c.Apply(t, `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: carol-admin}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: carol@example.com}]
`)

	type streams struct{ watch, exec *running }
	open := map[string]streams{}
	for _, u := range []string{"eve", "frank", "gina", "carol"} {
		kc := kubeconfigs[u]
		w := g.startKubectl(t, u+" kubectl get -w", kc, "--context", "acc", "get", "pods", "-w", "-o", "name")
		if l := w.next(t, 30*time.Second); l != "pod/shell-0" {
			t.Fatalf("%s's watch: %q", u, l)
		}
		e := g.startKubectl(t, u+" kubectl exec -i", kc, "--context", "acc", "exec", "-i", "shell-0", "--", "cat")
		if _, err := io.WriteString(e.stdin, "ping\n"); err != nil {
			t.Fatal(err)
		}
		if l := e.next(t, 30*time.Second); l != "ping" {
			t.Fatalf("%s's exec: %q", u, l)
		}
		open[u] = streams{w, e}
	}

	// frank: his token is removed from the state.
	frankRevoked := time.Now()
	removeTokensOf(t, filepath.Join(g.dir, "state", "tokens.yaml"), "frank")
	// gina: the policy no longer admits her.
	ginaDenied := time.Now()
	g.setConfig(policy("admin", "eve", "frank", "carol@example.com"))

	causes := map[string]struct {
		at     time.Time
		reason string
		status string // kubectl's message for a fresh request
	}{
		"frank": {frankRevoked, "credential-revoked", "You must be logged in to the server"},
		"gina":  {ginaDenied, "policy", `user "gina" may not reach cluster "acc"`},
		"eve":   {eveMinted.Add(12 * time.Second), "credential-expired", "You must be logged in to the server"},
		"carol": {carolMinted.Add(25 * time.Second), "credential-expired", "You must be logged in to the server"},
	}
	const slack = 6 * time.Second // recheck 1 s + client reaction, on a loaded 2-core machine
	for u, cause := range causes {
		for _, r := range []*running{open[u].watch, open[u].exec} {
			// Wait until the deadline (which may have passed while other
			// users were checked), then judge by when the stream ended.
			deadline := cause.at.Add(slack)
			select {
			case <-r.done:
			case <-time.After(time.Until(deadline)):
			}
			select {
			case <-r.done:
			default:
				t.Fatalf("%s still runs %v after its cause (%s)\n%s", r.name, slack, cause.reason, g.stub.tail(30))
			}
			took := r.at.Sub(cause.at)
			if r.at.After(deadline) {
				t.Errorf("%s ended %v after its cause (%s), more than %v", r.name, took, cause.reason, slack)
			}
			t.Logf("%s ended %v after its cause (%s), exit %d: %s", r.name, took.Round(time.Millisecond), cause.reason,
				exitCode(r.err), strings.TrimSpace(lastLine(r.stderr.String())))
			// A watch the server ends is the end of `kubectl get -w` (exit 0,
			// as when kube-apiserver ends one); an exec whose session is
			// closed is an error.
			if r == open[u].exec && r.err == nil {
				t.Errorf("%s exited 0; its session was cut", r.name)
			}
		}
		_, err := g.kubectl(kubeconfigs[u], nil, nil, "--context", "acc", "get", "pods", "-o", "name")
		if err == nil || !strings.Contains(err.Error(), cause.status) {
			t.Errorf("a fresh request by %s: %v, want %q", u, err, cause.status)
		}
	}
	// The audit log says why each stream ended.
	ended := map[string]map[string]bool{} // user → reasons of its long-running requests
	f, err := os.Open(filepath.Join(g.dir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev struct {
			User        struct{ Username string }
			Annotations map[string]string
		}
		if json.Unmarshal(sc.Bytes(), &ev) != nil || ev.Annotations["keyhole.dev/ended"] == "" {
			continue
		}
		u := strings.Split(ev.User.Username, "@")[0]
		if ended[u] == nil {
			ended[u] = map[string]bool{}
		}
		ended[u][ev.Annotations["keyhole.dev/ended"]+" "+ev.Annotations["keyhole.dev/session"]] = true
	}
	for u, cause := range causes {
		for _, kind := range []string{"", audit.SessionExec} { // the watch, the exec session
			if !ended[u][cause.reason+" "+kind] {
				t.Errorf("no audit record says %s's %q stream ended for %s: %v", u, kind, cause.reason, ended[u])
			}
		}
	}
}

// removeTokensOf deletes every token of user from the state's token file,
// as an operator revoking by hand would.
func removeTokensOf(t *testing.T, path, user string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	var kept []any
	for _, tok := range doc["tokens"].([]any) {
		if tok.(map[string]any)["user"] != user {
			kept = append(kept, tok)
		}
	}
	doc["tokens"] = kept
	out, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if err := statefileWrite(path, string(out)); err != nil {
		t.Fatal(err)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

package e2e

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
	"github.com/keyhole-dev/keyhole/internal/testbed"
)

// TestStubAdminCommands runs the real stub binary's operator commands
// (clusters, clusters rotate-secret, tokens list/revoke/expire, revoke)
// against a running stub with a real agent, once with the state in a
// directory and once in a hub's Secret in the test API server: what they
// list (agents and health read from the running stub), and what they
// change reaching the running stub (a revoked or expired token's open
// watch ends; a rotated secret's agent reconnects with the new one).
func TestStubAdminCommands(t *testing.T) {
	c := kubetest.Start(t)
	t.Run("directory", func(t *testing.T) {
		g := startGateway(t, c)
		adminCommands(t, c, g, "cli-dir")
	})
	t.Run("hub", func(t *testing.T) {
		g, hub := startHubGateway(t, c, "keyhole-cli")
		adminCommands(t, c, g, "cli-hub")
		// The hub's Secret holds the state: a config with an empty state
		// directory of its own lists the same clusters and tokens.
		other := *g
		other.cfg = filepath.Join(g.dir, "other.yaml")
		writeFile(t, other.cfg, fmt.Sprintf("apiVersion: keyhole.dev/v1alpha1\nkind: StubConfig\nstateDir: %s\n%s", filepath.Join(g.dir, "other-state"), hub))
		for _, args := range [][]string{{"tokens", "-o", "json"}, {"clusters", "list", "-o", "yaml", "--metrics-url", "http://" + g.metricsAddr + "/metrics"}} {
			mine, theirs := g.stubCmd(args...), other.stubCmd(args...)
			mine = regexp.MustCompile(`lastRoundTrip: .*|tunnelRTT: .*`).ReplaceAllString(mine, "")
			theirs = regexp.MustCompile(`lastRoundTrip: .*|tunnelRTT: .*`).ReplaceAllString(theirs, "")
			if mine != theirs || !strings.Contains(mine, "cli-hub") && args[0] == "clusters" {
				t.Errorf("%q from another state directory:\n%s\nwant\n%s", args, theirs, mine)
			}
		}
	})
}

// startHubGateway is a stub whose state is the hub's Secret in namespace ns
// of c (a set of one replica, with an operator certificate as replicas
// need); hub is its config's hub and tls keys.
func startHubGateway(t *testing.T, c *kubetest.Cluster, ns string) (g *gateway, hub string) {
	stubBin, agentBin := binaries(t)
	c.EnsureNamespace(t, ns)
	ca, err := testbed.NewCA("keyhole-e2e-cli")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue("stub", nil, true, []net.IP{net.ParseIP("127.0.0.1")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	g = &gateway{t: t, c: c, dir: t.TempDir(), stubBin: stubBin, agentBin: agentBin, caPEM: ca.CertPEM}
	certFile, keyFile := filepath.Join(g.dir, "tls.crt"), filepath.Join(g.dir, "tls.key")
	writeFile(t, certFile, string(certPEM))
	writeFile(t, keyFile, string(keyPEM))
	port := freePort(t)
	g.url = fmt.Sprintf("https://127.0.0.1:%d", port)
	g.publicURL = g.url
	g.metricsAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	g.cfg = filepath.Join(g.dir, "stub.yaml")
	hub = fmt.Sprintf("tls: {certFile: %s, keyFile: %s}\nhub: {enabled: true, kubeconfig: %s, namespace: %s, replicaID: r0}\n", certFile, keyFile, c.AdminKubeconfig, ns)
	writeFile(t, g.cfg, fmt.Sprintf(`apiVersion: keyhole.dev/v1alpha1
kind: StubConfig
listen: 127.0.0.1:%d
publicURL: %s
stateDir: %s
log: {level: debug}
audit: {path: %s}
metrics: {listen: %s}
`, port, g.url, filepath.Join(g.dir, "state"), filepath.Join(g.dir, "audit.log"), g.metricsAddr)+hub)
	g.stub = startProcess(t, "stub", filepath.Join(g.dir, "stub.log"), nil, stubBin, "serve", "--config", g.cfg)
	waitFor(t, 60*time.Second, "stub to listen", func() bool { return dialable(strings.TrimPrefix(g.url, "https://")) }, g.stub)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(g.caPEM)
	g.http = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 60 * time.Second}
	t.Cleanup(g.http.CloseIdleConnections)
	return g, hub
}

// cliClusters is `stub clusters -o json`.
type cliClusters struct {
	Items []struct {
		ID                       string
		Labels                   map[string]string
		Registered, SecretIssued time.Time
		Agents                   []struct{ ID string }
		Ready                    *bool
	}
	Live struct{ MetricsURL, Error string }
}

// cliTokens is `stub tokens -o json`.
type cliTokens struct {
	Items []struct {
		ID, User string
		Clusters []string
		Expires  *time.Time
	}
}

func adminCommands(t *testing.T, c *kubetest.Cluster, g *gateway, id string) {
	secretFile, tokenFile := g.install(id, "env=e2e")
	agent := g.startAgent(agentOpts{cluster: id, id: "a1", secretFile: secretFile, apiURL: c.URL, tokenFile: tokenFile, c: c})
	clusters := func() cliClusters {
		var l cliClusters
		if out := g.stubCmd("clusters", "-o", "json"); json.Unmarshal([]byte(out), &l) != nil {
			t.Fatalf("stub clusters -o json:\n%s", out)
		}
		return l
	}
	connected := func(l cliClusters) bool {
		for _, it := range l.Items {
			if it.ID == id && it.Ready != nil && *it.Ready && len(it.Agents) == 1 && it.Agents[0].ID == "a1" {
				return true
			}
		}
		return false
	}
	poll(t, 60*time.Second, "stub clusters to show agent a1 ready", func() bool { return connected(clusters()) }, g.stub, agent)
	l := clusters()
	if l.Live.MetricsURL != "http://"+g.metricsAddr+"/metrics" || l.Live.Error != "" || len(l.Items) != 1 || l.Items[0].Labels["env"] != "e2e" {
		t.Fatalf("stub clusters: %+v", l)
	}
	table := g.stubCmd("clusters")
	if !regexp.MustCompile(`(?m)^NAME\s+LABELS\s+AGE\s+SECRET-AGE\s+SECRET-EXPIRES\s+AGENTS\s+READY\n` + id + `\s+env=e2e\s+\S+\s+\S+\s+<never>\s+a1\s+True$`).MatchString(table) {
		t.Errorf("stub clusters:\n%s", table)
	}

	// Two users with a watch open each: tina's token is revoked by its ID,
	// uma's is set to expire in 3 s.
	kcs, watches := map[string]string{}, map[string]*running{}
	for _, u := range []string{"tina", "uma"} {
		kcs[u] = trustStub(t, g, g.kubeconfig(u))
		g.bind(u, "cluster-admin")
		watches[u] = g.startKubectl(t, u+" kubectl get -w", kcs[u], "--context", id, "get", "namespaces", "-w", "-o", "name")
		if l := watches[u].next(t, 30*time.Second); !strings.HasPrefix(l, "namespace/") {
			t.Fatalf("%s's watch: %q", u, l)
		}
	}
	var toks cliTokens
	if err := json.Unmarshal([]byte(g.stubCmd("tokens", "list", "-o", "json")), &toks); err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for _, tk := range toks.Items {
		ids[tk.User] = tk.ID
		if len(tk.Clusters) != 1 || tk.Clusters[0] != id {
			t.Errorf("token %+v: reaches %v, want [%s]", tk.ID, tk.Clusters, id)
		}
	}
	if ids["tina"] == "" || ids["uma"] == "" {
		t.Fatalf("stub tokens list: %+v", toks)
	}
	if tbl := g.stubCmd("tokens"); !regexp.MustCompile(`(?m)^` + ids["tina"] + `\s+tina\s+<none>\s+` + id + `\s+\d+s\s+<never>$`).MatchString(tbl) {
		t.Errorf("stub tokens:\n%s", tbl)
	}
	revoked := time.Now()
	g.stubCmd("tokens", "revoke", ids["tina"])
	g.stubCmd("tokens", "expire", ids["uma"], "--in", "3s")
	expired := time.Now().Add(3 * time.Second)
	// The stub's default recheck interval is 5 s; slack for a loaded machine.
	for u, at := range map[string]time.Time{"tina": revoked, "uma": expired} {
		w := watches[u]
		select {
		case <-w.done:
		case <-time.After(time.Until(at.Add(12 * time.Second))):
			t.Fatalf("%s still runs 12 s after its token was revoked or expired\n%s", w.name, g.stub.tail(20))
		}
		t.Logf("%s ended %v after its token's end (exit %d)", w.name, w.at.Sub(at).Round(time.Millisecond), exitCode(w.err))
		if _, err := g.kubectl(kcs[u], nil, nil, "--context", id, "get", "ns"); err == nil || !strings.Contains(err.Error(), "You must be logged in to the server") {
			t.Errorf("a fresh request by %s: %v", u, err)
		}
	}
	toks = cliTokens{}
	if err := json.Unmarshal([]byte(g.stubCmd("tokens", "-o", "json")), &toks); err != nil || len(toks.Items) != 1 || toks.Items[0].User != "uma" || toks.Items[0].Expires == nil {
		t.Errorf("after the revoke and expiry: %+v %v", toks, err)
	}
	// The old spelling.
	g.kubeconfig("vic")
	g.stubCmd("revoke", "--user", "vic")
	if out := g.stubCmd("tokens", "list", "--user", "vic", "-o", "yaml"); !strings.Contains(out, "items: []") {
		t.Errorf("vic's token after stub revoke --user:\n%s", out)
	}

	// A leaked join secret: a new one into the file the agent reads, the
	// old one's session closed; the agent comes back with the new one.
	old, _ := os.ReadFile(secretFile)
	before := clusters().Items[0]
	manifest := g.stubCmd("clusters", "rotate-secret", id, "--disconnect", "--secret-out", secretFile)
	now, _ := os.ReadFile(secretFile)
	if bytes.Equal(old, now) || !strings.Contains(manifest, strings.TrimSpace(string(now))) {
		t.Fatal("rotate-secret: no new secret in the file and the manifest")
	}
	poll(t, 30*time.Second, "the agent's session of the old secret to close", func() bool {
		return strings.Contains(g.stub.logText(), "its join secret is no longer valid")
	}, g.stub, agent)
	poll(t, 60*time.Second, "the agent to come back with the new secret", func() bool { return connected(clusters()) }, g.stub, agent)
	if after := clusters().Items[0]; !after.SecretIssued.After(before.SecretIssued) || !after.Registered.Equal(before.Registered) {
		t.Errorf("secret issued %v -> %v, registered %v -> %v", before.SecretIssued, after.SecretIssued, before.Registered, after.Registered)
	}

	// With the stub down, agents and health are unknown, and stderr says why.
	cmd := exec.Command(g.stubBin, "clusters", "--config", g.cfg, "--metrics-url", "http://127.0.0.1:1/metrics")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil || !regexp.MustCompile(id+`\s+env=e2e\s+.*<unknown>\s+Unknown`).MatchString(out.String()) ||
		!strings.Contains(errb.String(), "agents and health are unknown: no running stub answered at http://127.0.0.1:1/metrics") {
		t.Errorf("stub clusters without a stub: %v\n%s%s", err, out.String(), errb.String())
	}
	g.noSecretsLogged(t, map[string]string{"join secret": strings.TrimSpace(string(now))}, agent)
}

// trustStub gives the clusters of kubeconfig kc the stub's CA when they
// have none (a stub with an operator certificate names no CA in the
// kubeconfigs it prints) and returns kc.
func trustStub(t *testing.T, g *gateway, kc string) string {
	cfg, err := clientcmd.LoadFromFile(kc)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cfg.Clusters {
		if len(c.CertificateAuthorityData) == 0 {
			c.CertificateAuthorityData = g.caPEM
		}
	}
	if err := clientcmd.WriteToFile(*cfg, kc); err != nil {
		t.Fatal(err)
	}
	return kc
}

// poll is waitFor at a pace for commands that start a process each time.
func poll(t *testing.T, timeout time.Duration, what string, ok func() bool, logs ...*process) {
	t.Helper()
	waitEvery(t, timeout, 250*time.Millisecond, what, ok, logs...)
}

package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"

	"github.com/keyhole-dev/keyhole/config"
)

// stubEnv is a config for the admin commands with a state directory and a
// policy: alice reaches every cluster, group ops those labelled env=prod.
func stubEnv(t *testing.T) (cfgPath string) {
	t.Helper()
	dir := t.TempDir()
	cfgPath = filepath.Join(dir, "stub.yaml")
	if err := os.WriteFile(cfgPath, []byte(`apiVersion: keyhole.dev/v1alpha1
kind: StubConfig
publicURL: https://keyhole.example.com
stateDir: `+filepath.Join(dir, "state")+`
policy:
- clusters: ["*"]
  users: [alice]
- clusterSelector: {env: prod}
  groups: [ops]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfgPath
}

// stubCLI runs the stub command line with args and returns its output.
func stubCLI(args ...string) (stdout, stderr string, err error) {
	var out, errb bytes.Buffer
	err = run(args, &out, &errb)
	return out.String(), errb.String(), err
}

// mustRun is stubCLI that must succeed.
func mustRun(t *testing.T, args ...string) (stdout, stderr string) {
	t.Helper()
	out, errs, err := stubCLI(args...)
	if err != nil {
		t.Fatalf("stub %q: %v\n%s", args, err, errs)
	}
	return out, errs
}

// Every command has help in kubectl's shape: a short line, a description
// and examples; `stub COMMAND --help` prints it.
func TestHelpEveryCommand(t *testing.T) {
	root := newRoot(&bytes.Buffer{}, &bytes.Buffer{}, ciEnv)
	var walk func(c *cobra.Command)
	n := 0
	walk = func(c *cobra.Command) {
		n++
		if c.Short == "" || c.Long == "" || !strings.HasPrefix(c.Example, "  ") {
			t.Errorf("%q: Short %q, Long %d bytes, Example %q", c.CommandPath(), c.Short, len(c.Long), c.Example)
		}
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			// pflag takes a `quoted` word of the usage as the value's name.
			if name, _ := pflag.UnquoteUsage(f); strings.Contains(name, " ") {
				t.Errorf("%s --%s: its value is named %q", c.CommandPath(), f.Name, name)
			}
		})
		path := strings.Fields(c.CommandPath())[1:]
		out, _, err := stubCLI(append(path, "--help")...)
		if err != nil || !strings.Contains(out, "Usage:\n  "+c.CommandPath()) || !strings.Contains(out, "Examples:\n") {
			t.Errorf("%q --help: %v\n%s", c.CommandPath(), err, out)
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	if n < 15 {
		t.Errorf("walked %d commands", n)
	}
	out, _ := mustRun(t, "help")
	for _, c := range []string{"serve", "register", "unregister", "clusters", "kubeconfig", "tokens", "revoke", "ci-token", "completion", "version"} {
		if !regexp.MustCompile(`(?m)^  ` + c + ` `).MatchString(out) {
			t.Errorf("stub help does not list %s:\n%s", c, out)
		}
	}
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		if out, _ := mustRun(t, args...); out != "dev\n" {
			t.Errorf("%q: %q", args, out)
		}
	}
}

// `stub completion SHELL` prints cobra's script for each shell; bash's
// parses, and the completions it asks for come from the state.
func TestCompletion(t *testing.T) {
	for shell, marker := range map[string]string{"bash": "__start_stub", "zsh": "#compdef stub", "fish": "complete -c stub", "powershell": "Register-ArgumentCompleter"} {
		out, _ := mustRun(t, "completion", shell)
		if !strings.Contains(out, marker) {
			t.Errorf("completion %s: no %q in\n%.300s", shell, marker, out)
		}
		if shell != "bash" {
			continue
		}
		script := filepath.Join(t.TempDir(), "stub.bash")
		if err := os.WriteFile(script, []byte(out), 0o600); err != nil {
			t.Fatal(err)
		}
		if b, err := exec.Command("bash", "-n", script).CombinedOutput(); err != nil {
			t.Fatalf("bash -n: %v\n%s", err, b)
		}
		// Sourced, it defines the completion for stub.
		if b, err := exec.Command("bash", "-c", "source "+script+" && complete -p stub").CombinedOutput(); err != nil || !strings.Contains(string(b), "stub") {
			t.Fatalf("source: %v\n%s", err, b)
		}
	}
	cfg := stubEnv(t)
	mustRun(t, "register", "prod", "--config", cfg)
	mustRun(t, "register", "dev", "--config", cfg)
	out, _ := mustRun(t, "kubeconfig", "--user", "alice", "--config", cfg)
	tok := tokenIn(t, out)
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"__complete", "unregister", "--config", cfg, ""}, []string{"dev", "prod"}},
		{[]string{"__complete", "clusters", "rotate-secret", "--config", cfg, "p"}, []string{"dev", "prod"}}, // the shell filters
		{[]string{"__complete", "tokens", "revoke", "--config", cfg, ""}, []string{tokenID(tok) + "\talice"}},
		{[]string{"__complete", "clusters", "-o", ""}, []string{"table", "json", "yaml"}},
		{[]string{"__complete", "kubeconfig", "--ci", ""}, []string{"github-actions", "gitlab"}},
	} {
		out, _ := mustRun(t, tc.args...)
		got := strings.Split(strings.TrimSpace(out), "\n")
		if !slices.Equal(got[:len(got)-1], tc.want) { // the last line is the directive
			t.Errorf("%q: %q, want %q", tc.args, got, tc.want)
		}
	}
}

// Go-style single-dash long flags, which the flag package accepted, still
// work, anywhere on the line.
func TestSingleDashFlags(t *testing.T) {
	cfg := stubEnv(t)
	secret := filepath.Join(t.TempDir(), "prod.secret")
	out, _ := mustRun(t, "register", "-config", cfg, "prod", "-label", "env=prod", "-secret-out="+secret, "-image", "keyhole-agent:test")
	if !strings.Contains(out, "image: keyhole-agent:test") {
		t.Fatalf("manifest without the image:\n%s", out)
	}
	if b, err := os.ReadFile(secret); err != nil || !strings.HasPrefix(string(b), "khj_") {
		t.Fatalf("secret file: %q %v", b, err)
	}
	mustRun(t, "kubeconfig", "-user", "alice", "-config="+cfg, "-expires", "1h")
	out, _ = mustRun(t, "tokens", "list", "-config", cfg, "-o", "json")
	var l struct{ Items []struct{ User string } }
	if err := json.Unmarshal([]byte(out), &l); err != nil || len(l.Items) != 1 || l.Items[0].User != "alice" {
		t.Fatalf("%v %s", err, out)
	}
	// $KEYHOLE_CONFIG when --config is not given.
	t.Setenv("KEYHOLE_CONFIG", cfg)
	if out, _ := mustRun(t, "clusters", "-o", "yaml"); !strings.Contains(out, "id: prod") {
		t.Fatalf("with $KEYHOLE_CONFIG:\n%s", out)
	}
}

// Mistakes get an error that says what to type instead, and change nothing.
func TestCommandErrors(t *testing.T) {
	cfg := stubEnv(t)
	mustRun(t, "register", "prod", "--config", cfg)
	before, _ := os.ReadFile(filepath.Join(filepath.Dir(cfg), "state", "clusters.yaml"))
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"regster", "x"}, []string{`unknown command "regster" for "stub"`, "Did you mean this?\n\tregister"}},
		{[]string{"tokens", "revok"}, []string{`unknown command "revok" for "stub tokens"`, "Did you mean this?\n\trevoke"}},
		{[]string{"clusters", "rotate"}, []string{`unknown command "rotate" for "stub clusters"`, "rotate-secret"}},
		{[]string{"register"}, []string{"stub register takes CLUSTER-ID; got none", "Usage: stub register CLUSTER-ID [flags]"}},
		{[]string{"unregister", "a", "b"}, []string{`stub unregister takes CLUSTER-ID; got ["a" "b"]`}},
		{[]string{"register", "x", "--expires", "3d"}, []string{`invalid argument "3d" for "--expires" flag`, "30 days are 720h"}},
		{[]string{"register", "x", "--expires", "-1h"}, []string{"--expires -1h0m0s: a lifetime must be positive"}},
		{[]string{"register", "x", "--label", "env"}, []string{`--label "env": want key=value`}},
		{[]string{"register", "x", "--disconnect"}, []string{"--disconnect goes with --rotate"}},
		{[]string{"register", "prod"}, []string{`cluster "prod" is already registered (use --rotate`}},
		{[]string{"register", "Prod"}, []string{"cluster ID must be a DNS label"}},
		{[]string{"register", "x", "--nosuch"}, []string{"unknown flag: --nosuch", "See 'stub register --help' for usage."}},
		{[]string{"unregister", "nosuch"}, []string{`cluster "nosuch" is not registered`}},
		{[]string{"clusters", "rotate-secret", "nosuch"}, []string{`cluster "nosuch" is not registered`, "stub register nosuch"}},
		{[]string{"register", "x", "--agent-config"}, []string{"--agent-config writes a config that names the join secret's file: add --secret-out FILE"}},
		{[]string{"register", "x", "--kubeconfig", "k"}, []string{"--kubeconfig and --context are for --agent-config"}},
		{[]string{"register", "x", "--agent-config", "--secret-out", "s", "--image", "i"}, []string{"--image is for the manifest and --helm-values"}},
		{[]string{"register", "x", "--agent-config", "--helm-values", "--secret-out", "s"}, []string{"[agent-config helm-values] were all set"}},
		{[]string{"register", "x", "--agent-config", "--secret-out", "s", "--kubeconfig", "/nonexistent/kc"}, []string{"kubeconfig /nonexistent/kc", "--kubeconfig FILE"}},
		{[]string{"clusters", "-o", "xml"}, []string{`--output "xml": use table, json or yaml`}},
		{[]string{"tokens", "list", "-o", "wide"}, []string{`--output "wide": use table, json or yaml`}},
		{[]string{"tokens", "revoke"}, []string{"name the tokens to revoke: their IDs, or --user NAME"}},
		{[]string{"tokens", "revoke", "abc", "--user", "alice"}, []string{"name the tokens to revoke"}},
		{[]string{"tokens", "revoke", "abc"}, []string{`token ID "abc": want the 12 lower-case hex digits`}},
		{[]string{"tokens", "revoke", "khu_abc"}, []string{"that is a token, not a token ID"}},
		{[]string{"tokens", "revoke", "0123456789ab"}, []string{`"0123456789ab": no static token has this ID`, "nothing was revoked"}},
		{[]string{"tokens", "revoke", "--user", "nobody"}, []string{`user "nobody" has no static token`}},
		{[]string{"revoke"}, []string{"--user is required"}},
		{[]string{"tokens", "expire", "0123456789ab"}, []string{"at least one of the flags in the group [in at] is required"}},
		{[]string{"tokens", "expire", "0123456789ab", "--in", "1h", "--at", "2030-01-01T00:00:00Z"}, []string{"none of the others can be"}},
		{[]string{"tokens", "expire", "0123456789ab", "--in", "-1h"}, []string{"--in -1h0m0s: must be positive", "stub tokens revoke ID"}},
		{[]string{"tokens", "expire", "0123456789ab", "--at", "tomorrow"}, []string{`--at "tomorrow": want an RFC 3339 time such as 20`}},
		{[]string{"tokens", "expire", "0123456789ab", "--at", "2001-01-01T00:00:00Z"}, []string{"not in the future"}},
		{[]string{"tokens", "expire", "0123456789ab", "--in", "1h"}, []string{"no static token has this ID"}},
		{[]string{"kubeconfig"}, []string{"choose one kind of kubeconfig"}},
		{[]string{"serve", "extra"}, []string{"stub serve takes no argument"}},
		{[]string{"completion", "bosh"}, []string{`unknown command "bosh" for "stub completion"`}},
	} {
		out, _, err := stubCLI(append(tc.args, "--config", cfg)...)
		for _, w := range tc.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%q: %v, want it to say %q", tc.args, err, w)
			}
		}
		if out != "" {
			t.Errorf("%q printed %q", tc.args, out)
		}
	}
	if after, _ := os.ReadFile(filepath.Join(filepath.Dir(cfg), "state", "clusters.yaml")); !bytes.Equal(before, after) {
		t.Errorf("a failed command changed clusters.yaml:\n%s\n->\n%s", before, after)
	}
	// With no command, stub serves: a missing config is the serve's error.
	if _, _, err := stubCLI("--config", "/nonexistent/stub.yaml"); err == nil || !strings.Contains(err.Error(), "/nonexistent/stub.yaml") {
		t.Errorf("stub --config missing: %v", err)
	}
}

// tokenIn is the token of a kubeconfig `stub kubeconfig --user` printed.
func tokenIn(t *testing.T, kubeconfig string) string {
	t.Helper()
	m := regexp.MustCompile(`token: (khu_\S+)`).FindStringSubmatch(kubeconfig)
	if m == nil {
		t.Fatalf("no token in\n%s", kubeconfig)
	}
	return m[1]
}

// tokenID computes a token's ID the way the docs say: 12 hex digits of
// SHA-256("keyhole-token-id:" + hex SHA-256 of the token).
func tokenID(tok string) string {
	h := sha256.Sum256([]byte(tok))
	id := sha256.Sum256([]byte("keyhole-token-id:" + hex.EncodeToString(h[:])))
	return hex.EncodeToString(id[:])[:12]
}

// tokensDoc is `stub tokens list -o json|yaml`.
type tokensDoc struct {
	APIVersion, Kind string
	Items            []struct {
		ID, User, Description string
		Groups, Clusters      []string
		Created, Expires      *time.Time
	}
}

// stub tokens list, expire, revoke: what they print, what they change, and
// that no output holds a token or its hash.
func TestTokensCommands(t *testing.T) {
	cfg := stubEnv(t)
	mustRun(t, "register", "prod", "--label", "env=prod", "--config", cfg)
	mustRun(t, "register", "dev", "--config", cfg)
	mustRun(t, "register", "pci", "--caller-audience", "keyhole-pci", "--config", cfg)
	var toks []string
	var outputs strings.Builder
	for _, args := range [][]string{{"--user", "alice", "--expires", "720h"}, {"--user", "alice"}, {"--user", "bob", "--group", "ops"}, {"--user", "carol"}} {
		kc, note := mustRun(t, append([]string{"kubeconfig", "--config", cfg}, args...)...)
		tok := tokenIn(t, kc)
		toks = append(toks, tok)
		if !strings.Contains(note, "token ID "+tokenID(tok)+": `stub tokens revoke "+tokenID(tok)+"` ends it") {
			t.Errorf("kubeconfig note: %q", note)
		}
	}
	list := func(args ...string) (table string, doc tokensDoc) {
		table, errs := mustRun(t, append([]string{"tokens", "--config", cfg}, args...)...)
		js, _ := mustRun(t, append([]string{"tokens", "list", "-o", "json", "--config", cfg}, args...)...)
		ym, _ := mustRun(t, append([]string{"tokens", "ls", "-o", "yaml", "--config", cfg}, args...)...)
		if err := json.Unmarshal([]byte(js), &doc); err != nil {
			t.Fatalf("%v\n%s", err, js)
		}
		var fromYAML tokensDoc
		if err := yaml.Unmarshal([]byte(ym), &fromYAML); err != nil || !slices.EqualFunc(doc.Items, fromYAML.Items, func(a, b struct {
			ID, User, Description string
			Groups, Clusters      []string
			Created, Expires      *time.Time
		}) bool {
			return a.ID == b.ID && a.User == b.User
		}) {
			t.Fatalf("yaml differs from json: %v\n%s\n%s", err, ym, js)
		}
		outputs.WriteString(table + errs + js + ym)
		return table, doc
	}
	table, doc := list()
	if doc.APIVersion != "keyhole.dev/v1alpha1" || doc.Kind != "StaticTokenList" || len(doc.Items) != 4 {
		t.Fatalf("%+v", doc)
	}
	want := []struct {
		user     string
		clusters []string
		expires  bool
	}{{"alice", []string{"dev", "prod"}, true}, {"alice", []string{"dev", "prod"}, false}, {"bob", []string{"prod"}, false}, {"carol", []string{}, false}}
	for i, w := range want {
		it := doc.Items[i]
		if it.ID != tokenID(toks[i]) || it.User != w.user || !slices.Equal(it.Clusters, w.clusters) || (it.Expires != nil) != w.expires ||
			it.Created == nil || time.Since(*it.Created) > time.Minute {
			t.Errorf("item %d: %+v, want %+v", i, it, w)
		}
	}
	rows := strings.Split(strings.TrimSpace(table), "\n")
	if len(rows) != 5 || !regexp.MustCompile(`^ID\s+USER\s+GROUPS\s+CLUSTERS\s+CREATED\s+EXPIRES$`).MatchString(rows[0]) ||
		!regexp.MustCompile(`^`+tokenID(toks[0])+`\s+alice\s+<none>\s+dev,prod\s+\d+s\s+in 29d$`).MatchString(rows[1]) ||
		!regexp.MustCompile(`^`+tokenID(toks[2])+`\s+bob\s+ops\s+prod\s+\d+s\s+<never>$`).MatchString(rows[3]) ||
		!regexp.MustCompile(`^`+tokenID(toks[3])+`\s+carol\s+<none>\s+<none>\s+`).MatchString(rows[4]) {
		t.Errorf("table:\n%s", table)
	}
	if _, doc := list("--user", "alice"); len(doc.Items) != 2 {
		t.Errorf("--user alice: %+v", doc.Items)
	}

	// expire
	at := time.Now().Add(2 * time.Hour).UTC().Truncate(time.Second)
	_, note := mustRun(t, "tokens", "expire", tokenID(toks[2]), "--at", at.Format(time.RFC3339), "--config", cfg)
	if !strings.Contains(note, "static token "+tokenID(toks[2])+` of "bob" now expires at `+at.Format(time.RFC3339)) {
		t.Errorf("expire note: %q", note)
	}
	mustRun(t, "tokens", "expire", "--in", "1h", tokenID(toks[3]), "--config", cfg)
	_, doc = list()
	if e := doc.Items[2].Expires; e == nil || !e.Equal(at) {
		t.Errorf("bob's expiry %v, want %v", e, at)
	}
	if e := doc.Items[3].Expires; e == nil || e.Sub(time.Now()) > time.Hour || e.Sub(time.Now()) < 59*time.Minute {
		t.Errorf("carol's expiry %v, want in 1h", e)
	}

	// revoke by ID (two at once), by user, and the old spelling.
	_, note = mustRun(t, "tokens", "revoke", tokenID(toks[2]), tokenID(toks[3]), "--config", cfg)
	if strings.Count(note, "revoked static token ") != 2 || !strings.Contains(note, `of "carol"`) {
		t.Errorf("revoke note: %q", note)
	}
	if _, doc = list(); len(doc.Items) != 2 || doc.Items[0].User != "alice" || doc.Items[1].User != "alice" {
		t.Fatalf("after revoking bob's and carol's: %+v", doc.Items)
	}
	kc, _ := mustRun(t, "kubeconfig", "--user", "dave", "--config", cfg)
	toks = append(toks, tokenIn(t, kc))
	if _, note = mustRun(t, "revoke", "--user", "alice", "--config", cfg); note != `revoked 2 static token(s) of "alice": refused from now on; their open streams end within the stub's streams.recheckInterval.`+"\n" {
		t.Errorf("stub revoke note: %q", note)
	}
	mustRun(t, "tokens", "revoke", "--user", "dave", "--config", cfg)
	if table, doc = list(); len(doc.Items) != 0 || table != "" {
		t.Errorf("after revoking all: %+v\n%q", doc.Items, table)
	}
	if _, errs, _ := stubCLI("tokens", "--config", cfg); errs != "No static tokens found.\n" {
		t.Errorf("an empty list's stderr: %q", errs)
	}
	for _, tok := range toks {
		h := sha256.Sum256([]byte(tok))
		if s := outputs.String(); strings.Contains(s, tok) || strings.Contains(s, hex.EncodeToString(h[:])) {
			t.Fatal("an output holds a token or its hash")
		}
	}
}

// clustersDoc is `stub clusters -o json|yaml`.
type clustersDoc struct {
	Kind  string
	Items []struct {
		ID                       string
		Labels                   map[string]string
		Registered, SecretIssued time.Time
		SecretExpires            *time.Time
		PreviousSecretLive       bool
		Agents                   []json.RawMessage
		Ready                    *bool
	}
	Live struct{ MetricsURL, Error string }
}

// stub clusters and clusters rotate-secret on a state directory with no
// stub running: registrations are listed, agents and health are unknown
// and stderr says why.
func TestClustersCommands(t *testing.T) {
	cfg := stubEnv(t)
	firstSecret := filepath.Join(t.TempDir(), "first.secret")
	mustRun(t, "register", "prod", "--label", "env=prod", "--label", "tier=1", "--secret-out", firstSecret, "--config", cfg)
	mustRun(t, "register", "dev", "--expires", "2160h", "--config", cfg)
	table, errs := mustRun(t, "clusters", "--config", cfg)
	if !strings.Contains(errs, "agents and health are unknown: the config sets no metrics.listen") {
		t.Errorf("stderr: %q", errs)
	}
	rows := strings.Split(strings.TrimSpace(table), "\n")
	if len(rows) != 3 || !regexp.MustCompile(`^NAME\s+LABELS\s+AGE\s+SECRET-AGE\s+SECRET-EXPIRES\s+AGENTS\s+READY$`).MatchString(rows[0]) ||
		!regexp.MustCompile(`^dev\s+<none>\s+\d+s\s+\d+s\s+in 8\dd\s+<unknown>\s+Unknown$`).MatchString(rows[1]) ||
		!regexp.MustCompile(`^prod\s+env=prod,tier=1\s+\d+s\s+\d+s\s+<never>\s+<unknown>\s+Unknown$`).MatchString(rows[2]) {
		t.Errorf("table:\n%s", table)
	}

	time.Sleep(1100 * time.Millisecond) // the rotation's time is whole seconds
	newSecret := filepath.Join(t.TempDir(), "new.secret")
	manifest, note := mustRun(t, "clusters", "rotate-secret", "prod", "--disconnect", "--expires", "48h", "--secret-out", newSecret, "--image", "agent:test", "--config", cfg)
	s1, _ := os.ReadFile(firstSecret)
	s2, _ := os.ReadFile(newSecret)
	if len(s2) < 40 || bytes.Equal(s1, s2) || !strings.Contains(manifest, strings.TrimSpace(string(s2))) || !strings.Contains(manifest, "image: agent:test") ||
		!strings.Contains(note, `new join secret for cluster "prod": the old secret's sessions are closed`) {
		t.Fatalf("rotate-secret: %q\n%s", note, manifest)
	}
	for _, format := range []string{"json", "yaml"} {
		out, _ := mustRun(t, "clusters", "list", "-o", format, "--metrics-url", "http://127.0.0.1:1/metrics", "--config", cfg)
		var doc clustersDoc
		if err := yaml.Unmarshal([]byte(out), &doc); err != nil {
			t.Fatal(err)
		}
		p := doc.Items[1]
		if doc.Kind != "ClusterList" || len(doc.Items) != 2 || p.ID != "prod" || p.Labels["tier"] != "1" || !p.SecretIssued.After(p.Registered) ||
			p.SecretExpires == nil || p.PreviousSecretLive || p.Agents != nil || p.Ready != nil ||
			doc.Live.MetricsURL != "http://127.0.0.1:1/metrics" || !strings.Contains(doc.Live.Error, "connection refused") {
			t.Errorf("-o %s: %+v\n%s", format, doc, out)
		}
		if strings.Contains(out, "secretSHA256") || strings.Contains(out, "khj_") {
			t.Errorf("-o %s shows a secret or its hash:\n%s", format, out)
		}
	}
	// register --rotate is the same rotation, without --disconnect: the
	// old secret's sessions may stay.
	mustRun(t, "register", "prod", "--rotate", "--config", cfg)
	out, _ := mustRun(t, "clusters", "-o", "json", "--config", cfg)
	var doc clustersDoc
	if err := json.Unmarshal([]byte(out), &doc); err != nil || !doc.Items[1].PreviousSecretLive || doc.Items[1].SecretExpires != nil {
		t.Errorf("after register --rotate: %v %+v", err, doc.Items[1])
	}
	mustRun(t, "unregister", "dev", "--config", cfg)
	if out, _ := mustRun(t, "clusters", "-o", "json", "--config", cfg); strings.Contains(out, `"dev"`) {
		t.Errorf("dev is still listed:\n%s", out)
	}
}

// register (and rotate-secret) print, besides the manifest, Helm values
// for the agent chart and an AgentConfig for an agent run on this machine
// with a kubeconfig; both carry what the manifest would.
func TestRegisterOutputs(t *testing.T) {
	cfg := stubEnv(t)
	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters:
- {name: a, cluster: {server: "https://a.example:6443"}}
users:
- {name: u, user: {token: t}}
contexts:
- {name: kind-kind, context: {cluster: a, user: u}}
- {name: other, context: {cluster: a, user: u}}
current-context: other
`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBECONFIG", kc+string(os.PathListSeparator)+"/other")
	secret := filepath.Join(dir, "edge.secret")
	out, errs := mustRun(t, "register", "edge", "--agent-config", "--secret-out", secret, "--context", "kind-kind", "--config", cfg)
	c, err := config.ParseAgent("agent.yaml", []byte(out), config.Env{Nonce: "x"})
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if c.Cluster != "edge" || c.StubURL != "https://keyhole.example.com" || c.JoinSecretFile != secret || c.Kubeconfig != kc || c.Context != "kind-kind" {
		t.Errorf("AgentConfig %+v", c)
	}
	if b, err := os.ReadFile(c.StubCAFile); err != nil || !strings.Contains(string(b), "BEGIN CERTIFICATE") {
		t.Errorf("stub CA file %q: %v", c.StubCAFile, err)
	}
	if b, err := os.ReadFile(secret); err != nil || len(strings.TrimSpace(string(b))) < 40 {
		t.Errorf("join secret file: %q %v", b, err)
	}
	if !strings.Contains(errs, "go run ./cmd/agent --config") || strings.Contains(errs, "not published") {
		t.Errorf("stderr: %s", errs)
	}

	// Without --context: the current one, pinned.
	out, _ = mustRun(t, "register", "edge", "--rotate", "--agent-config", "--secret-out", secret, "--config", cfg)
	if c, err := config.ParseAgent("agent.yaml", []byte(out), config.Env{Nonce: "x"}); err != nil || c.Context != "other" {
		t.Errorf("context %q (%v), want the current one pinned", c.Context, err)
	}
	if fi, err := os.Stat(secret); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("rewritten secret file: %v %v, want mode 0600", fi.Mode(), err)
	}
	// Bad kubeconfigs and contexts, an existing or odd --secret-out: refused,
	// and nothing registered.
	noCtx := filepath.Join(dir, "nocontext")
	if err := os.WriteFile(noCtx, []byte("apiVersion: v1\nkind: Config\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	world := filepath.Join(dir, "world.secret")
	if err := os.WriteFile(world, []byte("x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.secret")
	if err := os.Symlink(world, link); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--agent-config", "--secret-out", filepath.Join(dir, "n1"), "--context", "nope"}, `context "nope" is not in kubeconfig ` + kc + ` (it has [kind-kind other])`},
		{[]string{"--agent-config", "--secret-out", filepath.Join(dir, "n2"), "--kubeconfig", noCtx}, "has no current-context: name the cluster's with --context NAME"},
		{[]string{"--secret-out", world}, "exists: name a new file, or remove it first"},
		{[]string{"--secret-out", link}, "is a symbolic link, not a regular file"},
		{[]string{"--secret-out", dir}, "is a directory, not a regular file"},
	} {
		_, _, err := stubCLI(append([]string{"register", "new", "--config", cfg}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "nothing was registered") {
			t.Errorf("%q: %v, want %q and nothing registered", tc.args, err, tc.want)
		}
	}
	if out, _ := mustRun(t, "clusters", "-o", "json", "--config", cfg); strings.Contains(out, `"new"`) {
		t.Errorf("a refused registration changed the state:\n%s", out)
	}
	if b, _ := os.ReadFile(world); string(b) != "x\n" {
		t.Errorf("an existing file was overwritten: %q", b)
	}

	out, errs = mustRun(t, "register", "edge", "--rotate", "--helm-values", "--image", "registry.example/keyhole-agent:v1", "--config", cfg)
	var v struct {
		Cluster, StubURL, JoinSecret, StubCA string
		Image                                struct{ Repository, Tag string }
	}
	if err := yaml.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if v.Cluster != "edge" || v.StubURL != "https://keyhole.example.com" || len(v.JoinSecret) < 40 || !strings.Contains(v.StubCA, "BEGIN CERTIFICATE") ||
		v.Image.Repository != "registry.example/keyhole-agent" || v.Image.Tag != "v1" {
		t.Errorf("Helm values %+v", v)
	}
	if !strings.Contains(errs, "keyhole-agent chart") {
		t.Errorf("stderr: %s", errs)
	}
}

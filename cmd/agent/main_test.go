package main

import (
	"bytes"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyhole-dev/keyhole/cmd/internal/cli"
	"github.com/keyhole-dev/keyhole/config"
)

// The agent's own API server is never reached through HTTPS_PROXY, only
// through a proxy its config names (apiServer.proxyURL, or the kubeconfig's
// proxy-url).
func TestAPIServerProxy(t *testing.T) {
	t.Setenv("HTTPS_PROXY", "http://corp.example:3128")
	t.Setenv("NO_PROXY", "10.0.0.0/8,.svc,.cluster.local")
	kc := func(proxyURL string) string {
		path := filepath.Join(t.TempDir(), "kubeconfig")
		line := ""
		if proxyURL != "" {
			line = "\n    proxy-url: " + proxyURL
		}
		body := "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://172.30.0.1:443" + line +
			"\nusers:\n- {name: u, user: {token: t}}\ncontexts:\n- {name: c, context: {cluster: c, user: u}}\ncurrent-context: c\n"
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	for name, tc := range map[string]struct {
		cfg       config.Agent
		want, log string
	}{
		"apiServer.url":        {cfg: config.Agent{APIServer: config.APIServer{URL: "https://172.30.0.1:443", TokenFile: "/t"}}, log: "none"},
		"apiServer.proxyURL":   {cfg: config.Agent{APIServer: config.APIServer{URL: "https://172.30.0.1:443", TokenFile: "/t", ProxyURL: "http://u:secret@api-proxy:8080"}}, want: "http://u:secret@api-proxy:8080", log: "http://u:xxxxx@api-proxy:8080"},
		"kubeconfig":           {cfg: config.Agent{Kubeconfig: kc("")}, log: "none"},
		"kubeconfig proxy-url": {cfg: config.Agent{Kubeconfig: kc("socks5://api-proxy:1080")}, want: "socks5://api-proxy:1080", log: "socks5://api-proxy:1080"},
	} {
		t.Run(name, func(t *testing.T) {
			rc, _, err := restConfig(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			log, err := setAPIServerProxy(rc, tc.cfg)
			if err != nil || log != tc.log {
				t.Fatalf("logged %q (%v), want %q", log, err, tc.log)
			}
			u, err := rc.Proxy(&http.Request{URL: &url.URL{Scheme: "https", Host: "172.30.0.1:443"}})
			got := ""
			if u != nil {
				got = u.String()
			}
			if err != nil || got != tc.want {
				t.Fatalf("proxy for the API server: %v (%v), want %q", u, err, tc.want)
			}
		})
	}
}

// context picks a kubeconfig context other than the current one, as
// kubectl's --context does; an unknown one is an error that names it.
func TestKubeconfigContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kubeconfig")
	body := `apiVersion: v1
kind: Config
clusters:
- {name: a, cluster: {server: "https://a.example:6443"}}
- {name: b, cluster: {server: "https://b.example:6443"}}
users:
- {name: u, user: {token: t}}
contexts:
- {name: kind-a, context: {cluster: a, user: u}}
- {name: kind-b, context: {cluster: b, user: u}}
current-context: kind-a
`
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	for ctx, want := range map[string]string{"": "https://a.example:6443", "kind-b": "https://b.example:6443"} {
		rc, _, err := restConfig(config.Agent{Kubeconfig: path, Context: ctx})
		if err != nil || rc.Host != want {
			t.Errorf("context %q: host %v (%v), want %s", ctx, rc, err, want)
		}
	}
	_, _, err := restConfig(config.Agent{Kubeconfig: path, Context: "kind-c"})
	if err == nil || !strings.Contains(err.Error(), `context "kind-c"`) {
		t.Errorf("unknown context: %v, want an error naming it", err)
	}
}

// agentCLI runs the agent's command line with args.
func agentCLI(args ...string) (stdout string, err error) {
	var out, errb bytes.Buffer
	err = cli.Execute(newRoot(&out, &errb), args)
	return out.String(), err
}

// The agent's command line: its version both ways, --config in both
// spellings (the kustomize base passes --config=FILE; Go's flag package
// also took -config FILE) and $KEYHOLE_CONFIG, mistakes that say what to
// type, help, and a bash completion script that parses.
func TestAgentCommandLine(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		if out, err := agentCLI(args...); err != nil || out != "dev\n" {
			t.Errorf("%q: %q %v", args, out, err)
		}
	}
	missing := filepath.Join(t.TempDir(), "agent.yaml")
	for _, args := range [][]string{{"--config=" + missing}, {"-config", missing}, {"--config", missing}} {
		if _, err := agentCLI(args...); err == nil || !strings.Contains(err.Error(), missing) {
			t.Errorf("%q: %v, want the config's read error", args, err)
		}
	}
	t.Setenv("KEYHOLE_CONFIG", missing)
	if _, err := agentCLI(); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("$KEYHOLE_CONFIG: %v", err)
	}
	for args, want := range map[string]string{
		"vrsion":           "unknown command \"vrsion\" for \"agent\"\n\nDid you mean this?\n\tversion",
		"--nosuch":         "unknown flag: --nosuch\nSee 'agent --help' for usage.",
		"--config":         "flag needs an argument: --config",
		"version extra":    "agent version takes no argument; got [\"extra\"]",
		"completion bosh":  "bosh",
		"--config=a extra": "unknown command \"extra\" for \"agent\"",
	} {
		if _, err := agentCLI(strings.Fields(args)...); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", args, err, want)
		}
	}
	out, err := agentCLI("--help")
	if err != nil || !strings.Contains(out, "Usage:\n  agent [flags]") || !strings.Contains(out, "Examples:") || !strings.Contains(out, "--config string") {
		t.Errorf("--help: %v\n%s", err, out)
	}
	out, err = agentCLI("completion", "bash")
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(t.TempDir(), "agent.bash")
	if err := os.WriteFile(script, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command("bash", "-c", "set -e; bash -n "+script+"; source "+script+"; complete -p agent").CombinedOutput(); err != nil {
		t.Fatalf("bash: %v\n%s", err, b)
	}
}

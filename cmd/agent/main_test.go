package main

import (
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

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

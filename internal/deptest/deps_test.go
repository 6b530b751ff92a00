// Package deptest holds the test that keeps imports pointing downwards.
package deptest

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/keyhole-dev/keyhole/"

// banned lists, per package, import path prefixes it must not depend on
// (directly or not), with the reason.
var banned = map[string]map[string]string{
	"tunnel": {
		mod + "authn": "the tunnel knows nothing of users", mod + "proxy": "proxy builds on tunnel, not the reverse",
		"k8s.io/": "the tunnel knows nothing of Kubernetes", mod + "cmd/": "nothing imports cmd",
	},
	"authn": {mod + "tunnel": "identity is independent of transport", mod + "proxy": "proxy builds on authn"},
	"proxy": {mod + "cmd/": "nothing imports cmd", mod + "stub": "the stub application builds on proxy, not the reverse"},
	"stub":  {mod + "cmd/": "nothing imports cmd; cmd/stub only parses flags and calls stub"},
	"credplugin": {mod + "stub": "the CI credential plugin runs in a CI job, not in the stub", mod + "proxy": "the plugin is a client",
		mod + "tunnel": "the plugin is a client", mod + "cmd/": "nothing imports cmd"},
	"config": {mod + "tunnel": "the schema is plain data", mod + "proxy": "the schema is plain data", mod + "ha": "the schema is plain data"},
	// web implements proxy.BrowserSessions (its methods return
	// *proxy.BrowserSession), so it depends on proxy and, through it, on
	// tunnel: these rules are about dependencies that go through neither.
	"web": {mod + "stub": "the stub wires web, not the reverse", mod + "cmd/": "nothing imports cmd",
		mod + "ha": "sessions reach shared state through web.Store"},
	"internal/origin": {mod + "proxy": "origin checks are plain functions of headers", mod + "web": "origin checks are plain functions of headers", mod + "authn": "origin checks are plain functions of headers"},
	"ha": {mod + "config": "ha takes plain values; the file schema is the caller's", mod + "stub": "the stub builds on ha",
		mod + "proxy": "replicas know nothing of the stub hop", mod + "tunnel": "replicas know nothing of the tunnel"},
}

func deps(t *testing.T, pkg string) []string {
	out, err := exec.Command("go", "list", "-deps", "-json=ImportPath", mod+pkg).Output()
	if err != nil {
		t.Fatalf("go list %s: %v", pkg, err)
	}
	var list []string
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p struct{ ImportPath string }
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		list = append(list, p.ImportPath)
	}
	return list
}

func TestImportDirection(t *testing.T) {
	for pkg, rules := range banned {
		for _, d := range deps(t, pkg) {
			for prefix, why := range rules {
				if strings.HasPrefix(d, prefix) {
					t.Errorf("%s depends on %s: %s", pkg, d, why)
				}
			}
		}
	}
}

// No production package may depend on "testing".
func TestNoTestingInProduction(t *testing.T) {
	for _, pkg := range []string{"cmd/stub", "cmd/agent"} {
		for _, d := range deps(t, pkg) {
			if d == "testing" || strings.HasPrefix(d, mod+"internal/kubetest") || strings.HasPrefix(d, "github.com/chromedp/") {
				t.Errorf("%s depends on %s", pkg, d)
			}
		}
	}
}

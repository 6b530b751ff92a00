package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func write(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const head = "apiVersion: keyhole.dev/v1alpha1\nkind: StubConfig\n"

func TestLoadStub(t *testing.T) {
	cases := map[string]struct {
		body string
		want []string // substrings of the error; none = must load
	}{
		"defaults only":   {body: head},
		"full":            {body: head + "listen: 127.0.0.1:9443\npublicURL: https://kh.example.com\nstateDir: /tmp/x\ntunnel: {keepAliveInterval: 2s, keepAliveTimeout: 3s}\nlog: {level: debug}\n"},
		"no version":      {body: "kind: StubConfig\n", want: []string{`apiVersion ""`, "apiVersion: keyhole.dev/v1alpha1"}},
		"wrong kind":      {body: "apiVersion: keyhole.dev/v1alpha1\nkind: AgentConfig\n", want: []string{`kind "AgentConfig"`}},
		"unknown key":     {body: head + "listn: :1\n", want: []string{`unknown key "listn"`, "listen"}},
		"nested unknown":  {body: head + "tls: {cert: x}\n", want: []string{`unknown key "cert"`, "tls.certFile"}},
		"wrong type":      {body: head + "listen: [1]\n", want: []string{`"listen"`, "array"}},
		"bad duration":    {body: head + "tunnel: {keepAliveInterval: fast}\n", want: []string{`"fast"`, "5s"}},
		"bad listen":      {body: head + "listen: nope\n", want: []string{`listen: "nope"`, ":8443"}},
		"bad port":        {body: head + "listen: :99999\n", want: []string{`port "99999"`}},
		"http public url": {body: head + "publicURL: http://x\n", want: []string{`publicURL: "http://x"`, "https://"}},
		"half a pair":     {body: head + "tls: {certFile: /c.pem}\n", want: []string{"tls.keyFile", "give both"}},
		"hosts with cert": {body: head + "tls: {certFile: a, keyFile: b, hosts: [x]}\n", want: []string{"tls.hosts"}},
		"bad level":       {body: head + "log: {level: loud}\n", want: []string{`log.level: "loud"`}},
		"tiny keepalive":  {body: head + "tunnel: {keepAliveInterval: 1ms}\n", want: []string{"tunnel.keepAliveInterval"}},
		"two problems":    {body: head + "listen: nope\nlog: {level: loud}\n", want: []string{"listen", "log.level"}},
		"not yaml":        {body: "\t: :", want: []string{"not valid YAML"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			path := write(t, tc.body)
			_, err := LoadStub(path)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("loaded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}

func TestStubDefaults(t *testing.T) {
	c, err := LoadStub("")
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != ":8443" || c.PublicURL != "https://localhost:8443" || c.StateDir == "" || c.Tunnel.KeepAliveInterval.Duration != 5*time.Second {
		t.Fatalf("defaults: %+v", c)
	}
	if c, err := LoadStub(write(t, head+"publicURL: https://kh.example.com/\n")); err != nil || c.PublicURL != "https://kh.example.com" {
		t.Fatalf("trailing slash: %q %v", c.PublicURL, err)
	}
	if _, err := LoadStub(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Fatalf("missing file: %v", err)
	}
}

func TestLoadAgent(t *testing.T) {
	ah := "apiVersion: keyhole.dev/v1alpha1\nkind: AgentConfig\n"
	ok := ah + "stubURL: https://kh.example.com\ncluster: prod\nagentID: a1\n"
	if c, err := LoadAgent(write(t, ok)); err != nil || c.JoinSecretFile == "" {
		t.Fatalf("%+v %v", c, err)
	}
	cases := map[string][]string{
		ah + "cluster: prod\n":                               {"stubURL"},
		ah + "stubURL: https://x\n":                          {"cluster:"},
		ok + "kubeconfig: /k\napiServer: {url: https://a}\n": {"give one of them", "apiServer.tokenFile"},
		ok + "apiServer: {url: http://a, tokenFile: /t}\n":   {`apiServer.url: "http://a"`},
		ok + "joinSecret: abc\n":                             {`unknown key "joinSecret"`, "joinSecretFile"},
	}
	for body, want := range cases {
		_, err := LoadAgent(write(t, body))
		for _, w := range want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%q: error %v lacks %q", body, err, w)
			}
		}
	}
	if _, err := LoadAgent(""); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Fatalf("no config: %v", err)
	}
}

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
		"hub":             {body: head + "tls: {certFile: a, keyFile: b}\nhub: {enabled: true, namespace: keyhole, replicaID: stub-7d9c-x2}\n"},
		"hub self-signed": {body: head + "hub: {enabled: true, namespace: keyhole, replicaID: r0}\n", want: []string{"hub.enabled", "tls.certFile/keyFile", "tls.acme"}},
		"hub bad replica": {body: head + "tls: {certFile: a, keyFile: b}\nhub: {enabled: true, namespace: keyhole, replicaID: Stub_0}\n", want: []string{`hub.replicaID: "Stub_0"`, "pod name"}},
		"hub namespace":   {body: head + "tls: {certFile: a, keyFile: b}\nhub: {enabled: true, replicaID: r0}\n", want: []string{"hub.namespace", `"keyhole"`}},
		"hub timing":      {body: head + "tls: {certFile: a, keyFile: b}\nhub: {enabled: true, namespace: keyhole, replicaID: r0, leaseDuration: 5s, renewDeadline: 10s}\n", want: []string{"leaseDuration 5s > renewDeadline 10s", "defaults 15s, 10s, 2s"}},
	}
	t.Setenv("POD_NAMESPACE", "")
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

func TestStubACME(t *testing.T) {
	acme := head + "publicURL: https://kh.example.com\ntls:\n  acme: {agreeTOS: true%s}\n"
	c, err := LoadStub(write(t, strings.Replace(acme, "%s", "", 1)))
	if err != nil {
		t.Fatal(err)
	}
	a := c.TLS.ACME
	if a.DirectoryURL != LetsEncryptDirectory || a.Challenge != "tls-alpn-01" || a.HTTPListen != "" ||
		a.RenewCheckInterval.Duration != 10*time.Minute || len(a.Domains) != 1 || a.Domains[0] != "kh.example.com" {
		t.Fatalf("acme defaults: %+v", a)
	}
	c, err = LoadStub(write(t, strings.Replace(acme, "%s", ", challenge: http-01", 1)))
	if err != nil || c.TLS.ACME.HTTPListen != ":80" {
		t.Fatalf("http-01 default listen: %+v %v", c.TLS.ACME, err)
	}
	hosts := head + "tls:\n  hosts: [a.example.com, b.example.com]\n  acme: {agreeTOS: true}\n"
	if c, err = LoadStub(write(t, hosts)); err != nil || len(c.TLS.ACME.Domains) != 2 {
		t.Fatalf("hosts as domains: %+v %v", c.TLS.ACME, err)
	}
	bad := map[string][]string{
		"no tos":        {strings.Replace(acme, "agreeTOS: true%s", "email: a@b.c", 1), "tls.acme.agreeTOS", "agreeTOS: true"},
		"with cert":     {strings.Replace(acme, "%s", "", 1) + "  certFile: /c\n  keyFile: /k\n", "tls.acme: excludes", `"/c"`},
		"challenge":     {strings.Replace(acme, "%s", ", challenge: dns-01", 1), `tls.acme.challenge: "dns-01"`, "http-01"},
		"listen alpn":   {strings.Replace(acme, "%s", ", httpListen: \":80\"", 1), "tls.acme.httpListen", "challenge: http-01"},
		"bad listen":    {strings.Replace(acme, "%s", ", challenge: http-01, httpListen: eighty", 1), `tls.acme.httpListen: "eighty"`},
		"http dir":      {strings.Replace(acme, "%s", ", directoryURL: \"http://ca/dir\"", 1), `tls.acme.directoryURL: "http://ca/dir"`},
		"localhost":     {head + "tls: {acme: {agreeTOS: true}}\n", `domain "localhost"`, "publicURL"},
		"ip host":       {head + "publicURL: https://10.0.0.1\ntls: {acme: {agreeTOS: true}}\n", `domain "10.0.0.1"`},
		"fast renewals": {strings.Replace(acme, "%s", ", renewCheckInterval: 10ms", 1), "tls.acme.renewCheckInterval: 10ms"},
	}
	for name, tc := range bad {
		_, err := LoadStub(write(t, tc[0]))
		for _, w := range tc[1:] {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %v lacks %q", name, err, w)
			}
		}
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

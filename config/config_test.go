package config

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/keyhole-dev/keyhole/policy"
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

// noEnv is a process outside a pod with no host name and no home: what a
// test sees does not depend on the machine it runs on.
var noEnv = Env{}

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
		"nested unknown":  {body: head + "tls: {cert: x}\n", want: []string{`unknown key "tls.cert"`, "tls.certFile"}},
		"wrong type":      {body: head + "listen: [1]\n", want: []string{`"listen"`, "array"}},
		"bad duration":    {body: head + "tunnel: {keepAliveInterval: fast}\n", want: []string{`key "tunnel.keepAliveInterval": "fast" is not a duration`, "5s"}},
		"bare number":     {body: head + "streams: {recheckInterval: 5}\n", want: []string{`key "streams.recheckInterval": "5" is not a duration`}},
		"bad listen":      {body: head + "listen: nope\n", want: []string{`listen: "nope"`, ":8443"}},
		"bad port":        {body: head + "listen: :99999\n", want: []string{`port "99999"`}},
		"http public url": {body: head + "publicURL: http://x\n", want: []string{`publicURL: "http://x"`, "https://"}},
		"half a pair":     {body: head + "tls: {certFile: /c.pem}\n", want: []string{"tls.keyFile", "give both"}},
		"hosts with cert": {body: head + "tls: {certFile: a, keyFile: b, hosts: [x]}\n", want: []string{"tls.hosts"}},
		"bad level":       {body: head + "log: {level: loud}\n", want: []string{`log.level: "loud"`}},
		"bad log format":  {body: head + "log: {format: text}\n", want: []string{`log.format: "text"`, "json or console"}},
		"console logs":    {body: head + "log: {format: console}\n"},
		"tiny keepalive":  {body: head + "tunnel: {keepAliveInterval: 1ms}\n", want: []string{"tunnel.keepAliveInterval", "default (5s)"}},
		"zero keepalive":  {body: head + "tunnel: {keepAliveInterval: 0s, keepAliveTimeout: 0s, maxSessions: 0}\n"},
		"tunnel limits":   {body: head + "tunnel: {maxSessions: -1, maxHandshakesPerSecond: -1}\n", want: []string{"tunnel.maxSessions: -1", "default (10000)", "tunnel.maxHandshakesPerSecond: -1"}},
		"tunnel unknown":  {body: head + "tunnel: {keepAlive: 1s}\n", want: []string{`unknown key "tunnel.keepAlive"`, "tunnel.keepAliveInterval", "tunnel.keepAliveTimeout", "tunnel.maxSessions"}},
		"two problems":    {body: head + "listen: nope\nlog: {level: loud}\n", want: []string{"listen", "log.level"}},
		"not yaml":        {body: "\t: :", want: []string{"not valid YAML"}},
		"hub":             {body: head + "tls: {certFile: a, keyFile: b}\nhub: {enabled: true, namespace: keyhole, replicaID: stub-7d9c-x2}\n"},
		"hub self-signed": {body: head + "hub: {enabled: true, namespace: keyhole, replicaID: r0}\n", want: []string{"hub.enabled", "tls.certFile/keyFile", "tls.acme"}},
		"hub bad replica": {body: head + "tls: {certFile: a, keyFile: b}\nhub: {enabled: true, namespace: keyhole, replicaID: Stub_0}\n", want: []string{`hub.replicaID: "Stub_0"`, "pod name"}},
		"hub namespace":   {body: head + "tls: {certFile: a, keyFile: b}\nhub: {enabled: true, replicaID: r0}\n", want: []string{"hub.namespace", `"keyhole"`}},
		"hub timing":      {body: head + "tls: {certFile: a, keyFile: b}\nhub: {enabled: true, namespace: keyhole, replicaID: r0, leaseDuration: 5s, renewDeadline: 10s}\n", want: []string{"leaseDuration 5s > renewDeadline 10s", "default: 15s, 10s, 2s"}},
		"hub timing 3":    {body: head + "tls: {certFile: a, keyFile: b}\nhub: {enabled: true, namespace: keyhole, replicaID: r0, leaseDuration: 15s, renewDeadline: 10s, retryPeriod: 10s}\n", want: []string{"leaseDuration 15s > renewDeadline 10s > retryPeriod 10s"}},
		"hub timing some": {body: head + "tls: {certFile: a, keyFile: b}\nhub: {enabled: true, namespace: keyhole, replicaID: r0, leaseDuration: 30s, retryPeriod: 1s}\n"},
		"hub timing sign": {body: head + "tls: {certFile: a, keyFile: b}\nhub: {enabled: true, namespace: keyhole, replicaID: r0, renewDeadline: -1s, leaseDuration: 500ms, retryPeriod: 10ms}\n", want: []string{"hub.renewDeadline: -1s must not be negative", "hub.leaseDuration: 500ms is under 1s", "hub.retryPeriod: 10ms is under 100ms"}},
		"streams":         {body: head + "streams: {recheckInterval: 2s, credentialExpiry: keep}\n"},
		"streams bad":     {body: head + "streams: {recheckInterval: 100ms, credentialExpiry: never}\n", want: []string{"streams.recheckInterval: 100ms", "default 5s", `streams.credentialExpiry: "never"`, `"end"`, `"keep"`}},
		"browser":         {body: head + "browser: {sessionMaxAge: 8h, sessionIdleTimeout: 30m, keyRotation: 24h}\n"},
		"browser bounds":  {body: head + "browser: {sessionMaxAge: 200h, keyRotation: 1m}\n", want: []string{"browser.sessionMaxAge: 200h0m0s must be from 5m to 168h (default 12h)", "browser.keyRotation: 1m0s must be from 1h to 2160h"}},
		"browser idle":    {body: head + "browser: {sessionMaxAge: 1h, sessionIdleTimeout: 2h}\n", want: []string{"browser.sessionIdleTimeout: 2h0m0s is longer than browser.sessionMaxAge 1h0m0s"}},
		"browser idle 0":  {body: head + "browser: {sessionIdleTimeout: 1m}\n", want: []string{"browser.sessionIdleTimeout: 1m0s must be at least 5m"}},
		"browser unknown": {body: head + "browser: {maxAge: 1h}\n", want: []string{`unknown key "browser.maxAge"`, "browser.sessionMaxAge"}},
		"apps":            {body: head + "publicURL: https://keyhole.example.com\nbrowser: {apps: {domain: apps.example-apps.net}}\n"},
		"apps same site":  {body: head + "publicURL: https://keyhole.example.com\nbrowser: {apps: {domain: apps.example.com}}\n", want: []string{`browser.apps.domain: "apps.example.com" is the same site as publicURL's host "keyhole.example.com"`, `"example.com"`, "allowSameSite: true"}},
		"apps same ok":    {body: head + "publicURL: https://keyhole.example.com\nbrowser: {apps: {domain: apps.example.com, allowSameSite: true}}\n"},
		"apps psl":        {body: head + "publicURL: https://keyhole.example.co.uk\nbrowser: {apps: {domain: apps.example.co.uk}}\n", want: []string{`registrable domain "example.co.uk"`}},
		"apps psl other":  {body: head + "publicURL: https://keyhole.example.co.uk\nbrowser: {apps: {domain: apps.other.co.uk}}\n"},
		"apps contains":   {body: head + "publicURL: https://keyhole.apps.example.net\nbrowser: {apps: {domain: apps.example.net, allowSameSite: true}}\n", want: []string{`contains publicURL's host "keyhole.apps.example.net"`}},
		"apps bad":        {body: head + "browser: {apps: {domain: \"*.apps.example.net\"}}\n", want: []string{`browser.apps.domain: "*.apps.example.net" must be a DNS name`}},
		"apps one label":  {body: head + "browser: {apps: {domain: apps}}\n", want: []string{`browser.apps.domain: "apps" must be a DNS name`}},
		"apps ip":         {body: head + "browser: {apps: {domain: 10.0.0.1}}\n", want: []string{`browser.apps.domain: "10.0.0.1"`}},
		"apps acme":       {body: head + "publicURL: https://keyhole.example.com\ntls: {acme: {agreeTOS: true}}\nbrowser: {apps: {domain: apps.example-apps.net}}\n", want: []string{"browser.apps: with tls.acme", `"*.apps.example-apps.net"`, "DNS-01", "browser.apps.certFile"}},
		"apps acme cert":  {body: head + "publicURL: https://keyhole.example.com\ntls: {acme: {agreeTOS: true}}\nbrowser: {apps: {domain: apps.example-apps.net, certFile: a, keyFile: b}}\n"},
		"apps half pair":  {body: head + "browser: {apps: {domain: apps.example-apps.net, certFile: a}}\n", want: []string{"browser.apps.certFile", "give both"}},
		"apps hosts":      {body: head + "tls: {hosts: [localhost]}\nbrowser: {apps: {domain: apps.example-apps.net}}\n", want: []string{`tls.hosts: [localhost] does not include "*.apps.example-apps.net"`}},
		"apps hosts ok":   {body: head + "tls: {hosts: [localhost, \"*.apps.example-apps.net\"]}\nbrowser: {apps: {domain: apps.example-apps.net}}\n"},
		"apps unknown":    {body: head + "browser: {apps: {domain: apps.example-apps.net, sameSite: true}}\n", want: []string{`unknown key "browser.apps.sameSite"`, "browser.apps"}},
		"hub no host":     {body: head + "tls: {certFile: a, keyFile: b}\nhub: {enabled: true, namespace: keyhole}\n", want: []string{`hub.replicaID: ""`, "host name"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			path := write(t, tc.body)
			_, err := LoadStub(path, noEnv)
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

// TestAppsDefaults: the self-signed certificate's default hosts include
// the apps wildcard; the domain is read without case or a final dot.
func TestAppsDefaults(t *testing.T) {
	c, err := ParseStub("c.yaml", []byte(head+"publicURL: https://kh.example.com\nbrowser: {apps: {domain: Apps.Example-Apps.NET.}}\n"), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if c.Browser.Apps.Domain != "apps.example-apps.net" || !slices.Contains(c.TLS.Hosts, "*.apps.example-apps.net") {
		t.Fatalf("domain %q, hosts %v", c.Browser.Apps.Domain, c.TLS.Hosts)
	}
	c, err = ParseStub("c.yaml", []byte(head+"publicURL: https://kh.example.com\nbrowser: {apps: {domain: apps.example-apps.net, certFile: a, keyFile: b}}\n"), noEnv)
	if err != nil || slices.Contains(c.TLS.Hosts, "*.apps.example-apps.net") {
		t.Fatalf("with apps.certFile the self-signed certificate needs no wildcard: %v %v", c.TLS.Hosts, err)
	}
	for _, tc := range []struct {
		host, domain, site string
		same               bool
	}{
		{"keyhole.example.com", "apps.example.com", "example.com", true},
		{"keyhole.example.com", "apps.example-apps.net", "example.com", false},
		{"keyhole.example.test", "apps.keyhole-apps.test", "example.test", false},
		{"127.0.0.1", "apps.example.net", "127.0.0.1", false},
		{"localhost", "apps.localhost", "localhost", false},
		{"a.github.io", "b.github.io", "a.github.io", false}, // github.io is a public suffix: each user a site
	} {
		site, same := SameSite(tc.host, tc.domain)
		if site != tc.site || same != tc.same {
			t.Errorf("SameSite(%q, %q) = %q, %v; want %q, %v", tc.host, tc.domain, site, same, tc.site, tc.same)
		}
	}
}

func TestStubDefaults(t *testing.T) {
	c, err := LoadStub("", noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != ":8443" || c.PublicURL != "https://localhost:8443" || c.StateDir != "keyhole-state" || c.ShutdownTimeout.Duration != 25*time.Second {
		t.Fatalf("defaults: %+v", c)
	}
	// Tunnel and hub timing are their owners' defaults (tunnel, ha).
	if c.Tunnel != (StubTunnel{}) || c.Hub.LeaseDuration.Duration != 0 || c.Hub.RenewDeadline.Duration != 0 || c.Hub.RetryPeriod.Duration != 0 {
		t.Fatalf("defaults owned elsewhere are set here: %+v %+v", c.Tunnel, c.Hub)
	}
	if !slices.Equal(c.TLS.Hosts, []string{"localhost", "127.0.0.1", "::1"}) {
		t.Fatalf("self-signed hosts: %v", c.TLS.Hosts)
	}
	if c, err := LoadStub(write(t, head+"publicURL: https://kh.example.com/\n"), noEnv); err != nil || c.PublicURL != "https://kh.example.com" ||
		!slices.Equal(c.TLS.Hosts, []string{"localhost", "127.0.0.1", "::1", "kh.example.com"}) {
		t.Fatalf("trailing slash, hosts: %q %v %v", c.PublicURL, c.TLS.Hosts, err)
	}
	if c, err := LoadStub(write(t, head+"listen: 127.0.0.1:9443\ntls: {certFile: a, keyFile: b}\n"), noEnv); err != nil || c.PublicURL != "https://127.0.0.1:9443" || c.TLS.Hosts != nil {
		t.Fatalf("publicURL from listen, no hosts with a certificate: %q %v %v", c.PublicURL, c.TLS.Hosts, err)
	}
	if _, err := LoadStub(filepath.Join(t.TempDir(), "missing.yaml"), noEnv); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Fatalf("missing file: %v", err)
	}
}

// Complete takes what it needs from the Env it is given, and only fills
// what the file left empty.
func TestStubEnv(t *testing.T) {
	hub := head + "tls: {certFile: a, keyFile: b}\nhub: {enabled: true}\n"
	cases := map[string]struct {
		body                         string
		env                          Env
		stateDir, replica, namespace string
	}{
		"state home":     {head, Env{StateHome: "/s", Home: "/h"}, "/s/keyhole", "", ""},
		"home":           {head, Env{Home: "/h"}, "/h/.local/state/keyhole", "", ""},
		"file wins":      {head + "stateDir: /x\n", Env{StateHome: "/s"}, "/x", "", ""},
		"no hub":         {head, Env{Hostname: "h", PodNamespace: "ns"}, "keyhole-state", "", ""},
		"pod":            {hub, Env{Hostname: "stub-0", PodNamespace: "ns", ServiceAccountNamespace: "sa"}, "keyhole-state", "stub-0", "ns"},
		"service acct":   {hub, Env{Hostname: "stub-0", ServiceAccountNamespace: "sa"}, "keyhole-state", "stub-0", "sa"},
		"file wins, hub": {strings.Replace(hub, "enabled: true", "enabled: true, replicaID: r1, namespace: k", 1), Env{Hostname: "stub-0", PodNamespace: "ns"}, "keyhole-state", "r1", "k"},
	}
	for name, tc := range cases {
		c, err := ParseStub("c.yaml", []byte(tc.body), tc.env)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if c.StateDir != tc.stateDir || c.Hub.ReplicaID != tc.replica || c.Hub.Namespace != tc.namespace {
			t.Errorf("%s: stateDir %q replicaID %q namespace %q, want %q %q %q", name, c.StateDir, c.Hub.ReplicaID, c.Hub.Namespace, tc.stateDir, tc.replica, tc.namespace)
		}
	}
}

// Parsing is a function of the file and the Env, and Validate changes
// nothing.
func TestStubPure(t *testing.T) {
	body := []byte(head + "publicURL: https://kh.example.com\ntls: {acme: {agreeTOS: true}}\nhub: {enabled: true}\npolicy: [{clusters: [\"*\"], groups: [ops]}]\n")
	env := Env{Hostname: "stub-0", PodNamespace: "keyhole", Home: "/h", Nonce: "abcdef"}
	a, err := ParseStub("c.yaml", body, env)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := ParseStub("c.yaml", body, env)
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("two parses differ:\n%+v\n%+v", a, b)
	}
	a.TLS.ACME.RenewCheckInterval.Duration = 0 // invalid once completed
	a.StateDir = ""
	if err := a.Validate(); err == nil || !strings.Contains(err.Error(), "renewCheckInterval") || !strings.Contains(err.Error(), "stateDir") {
		t.Fatalf("Validate of an incomplete config: %v", err)
	}
	if a.TLS.ACME.RenewCheckInterval.Duration != 0 || a.StateDir != "" {
		t.Fatalf("Validate changed the config: %+v", a)
	}
	if pol, err := b.BuildPolicy(); err != nil || pol.IsOpen() {
		t.Fatalf("BuildPolicy: %v %v", pol, err)
	}
	b.Policy = &[]policy.Rule{{}}
	if _, err := b.BuildPolicy(); err == nil {
		t.Fatal("BuildPolicy accepted a rule that selects nothing")
	}
}

// The stub's tunnel section embeds the agent's: the keys are the same
// flat ones, decoded strictly, listed on a typo, and written back flat.
func TestStubTunnelKeys(t *testing.T) {
	c, err := ParseStub("c.yaml", []byte(head+"tunnel: {keepAliveInterval: 2s, keepAliveTimeout: 3s, maxSessions: 7, maxHandshakesPerSecond: 9}\n"), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	want := StubTunnel{Tunnel: Tunnel{KeepAliveInterval: Duration{2 * time.Second}, KeepAliveTimeout: Duration{3 * time.Second}}, MaxSessions: 7, MaxHandshakesPerSecond: 9}
	if c.Tunnel != want {
		t.Fatalf("tunnel %+v, want %+v", c.Tunnel, want)
	}
	out, err := yaml.Marshal(c.Tunnel)
	if err != nil {
		t.Fatal(err)
	}
	if s := string(out); s != "keepAliveInterval: 2s\nkeepAliveTimeout: 3s\nmaxHandshakesPerSecond: 9\nmaxSessions: 7\n" {
		t.Fatalf("written as:\n%s", s)
	}
	_, err = ParseStub("c.yaml", []byte(head+"tunnel: {Tunnel: {keepAliveInterval: 2s}}\n"), noEnv)
	if err == nil || !strings.Contains(err.Error(), `unknown key "tunnel.Tunnel"`) {
		t.Fatalf("the embedded struct's name as a key: %v", err)
	}
	for _, k := range []string{"tunnel.keepAliveInterval", "tunnel.keepAliveTimeout", "tunnel.maxHandshakesPerSecond", "tunnel.maxSessions"} {
		if !strings.Contains(err.Error(), k) {
			t.Errorf("error %q does not list %s", err, k)
		}
	}
	// Zero values are the owners' defaults and are not written out.
	if out, _ := yaml.Marshal(DefaultAgent()); strings.Contains(string(out), "keepAlive") || strings.Contains(string(out), "drainTimeout") {
		t.Fatalf("the agent's defaults write zero values:\n%s", out)
	}
}

func TestStubACME(t *testing.T) {
	acme := head + "publicURL: https://kh.example.com\ntls:\n  acme: {agreeTOS: true%s}\n"
	c, err := LoadStub(write(t, strings.Replace(acme, "%s", "", 1)), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	a := c.TLS.ACME
	if a.DirectoryURL != LetsEncryptDirectory || a.Challenge != "tls-alpn-01" || a.HTTPListen != "" ||
		a.RenewCheckInterval.Duration != 10*time.Minute || len(a.Domains) != 1 || a.Domains[0] != "kh.example.com" {
		t.Fatalf("acme defaults: %+v", a)
	}
	c, err = LoadStub(write(t, strings.Replace(acme, "%s", ", challenge: http-01", 1)), noEnv)
	if err != nil || c.TLS.ACME.HTTPListen != ":80" {
		t.Fatalf("http-01 default listen: %+v %v", c.TLS.ACME, err)
	}
	hosts := head + "tls:\n  hosts: [a.example.com, b.example.com]\n  acme: {agreeTOS: true}\n"
	if c, err = LoadStub(write(t, hosts), noEnv); err != nil || len(c.TLS.ACME.Domains) != 2 {
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
		_, err := LoadStub(write(t, tc[0]), noEnv)
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
	if c, err := LoadAgent(write(t, ok), noEnv); err != nil || c.JoinSecretFile == "" || c.AgentID != "a1" {
		t.Fatalf("%+v %v", c, err)
	}
	cases := map[string][]string{
		ah + "cluster: prod\n":                                        {"stubURL"},
		ah + "stubURL: https://x\n":                                   {"cluster:"},
		ok + "kubeconfig: /k\napiServer: {url: https://a}\n":          {"give one of them", "apiServer.tokenFile"},
		ok + "context: kind-kind\n":                                   {`context "kind-kind"`, "set kubeconfig too"},
		ok + "apiServer: {url: http://a, tokenFile: /t}\n":            {`apiServer.url: "http://a"`},
		ok + "joinSecret: abc\n":                                      {`unknown key "joinSecret"`, "joinSecretFile"},
		ok + "apiServer: {proxyURL: proxy:3128}\n":                    {`apiServer.proxyURL: "proxy:3128" must be a proxy URL`, "http://proxy.corp.example:3128"},
		ok + "apiServer: {proxyURL: ftp://p}\n":                       {`apiServer.proxyURL: "ftp://p"`},
		ok + "kubeconfig: /k\napiServer: {proxyURL: http://p:3128}\n": {`apiServer.proxyURL "http://p:3128": with kubeconfig "/k", set proxy-url in the kubeconfig`},
		ok + "drainTimeout: -1s\n":                                    {"drainTimeout: -1s", "default (25s)"},
		ok + "tunnel: {keepAliveTimeout: 1ms}\n":                      {"tunnel.keepAliveTimeout: 1ms"},
	}
	for body, want := range cases {
		_, err := LoadAgent(write(t, body), noEnv)
		for _, w := range want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%q: error %v lacks %q", body, err, w)
			}
		}
	}
	for _, body := range []string{ok + "apiServer: {proxyURL: \"http://p.corp:3128\"}\n",
		ok + "apiServer: {url: https://a:6443, tokenFile: /t, proxyURL: socks5://127.0.0.1:1080}\n"} {
		if c, err := LoadAgent(write(t, body), noEnv); err != nil || c.APIServer.ProxyURL == "" {
			t.Errorf("%q: %+v %v", body, c.APIServer, err)
		}
	}
	if _, err := LoadAgent("", noEnv); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Fatalf("no config: %v", err)
	}
}

// The agent ID: the file's, else the pod's name, else the host name with
// the process's nonce.
func TestAgentID(t *testing.T) {
	body := []byte("apiVersion: keyhole.dev/v1alpha1\nkind: AgentConfig\nstubURL: https://kh.example.com\ncluster: prod\n")
	for env, want := range map[Env]string{
		{PodName: "agent-7d9c-x2", Hostname: "h", Nonce: "abcdef"}: "agent-7d9c-x2",
		{Hostname: "laptop", Nonce: "abcdef"}:                      "laptop-abcdef",
		{Nonce: "abcdef"}:                                          "agent-abcdef",
		{}:                                                         "agent",
	} {
		c, err := ParseAgent("a.yaml", body, env)
		if err != nil || c.AgentID != want {
			t.Errorf("%+v: agentID %q (%v), want %q", env, c.AgentID, err, want)
		}
	}
	c, err := ParseAgent("a.yaml", append(body, "agentID: mine\n"...), Env{PodName: "p"})
	if err != nil || c.AgentID != "mine" {
		t.Errorf("agentID from the file: %q %v", c.AgentID, err)
	}
}

// DiscoverEnv is the one reader of the process's surroundings.
func TestDiscoverEnv(t *testing.T) {
	t.Setenv("POD_NAME", "p-1")
	t.Setenv("POD_NAMESPACE", "ns-1")
	t.Setenv("XDG_STATE_HOME", "/state")
	a, b := DiscoverEnv(), DiscoverEnv()
	if a.PodName != "p-1" || a.PodNamespace != "ns-1" || a.StateHome != "/state" {
		t.Fatalf("%+v", a)
	}
	if len(a.Nonce) != 6 || a.Nonce == b.Nonce {
		t.Fatalf("nonces %q %q: want 6 hex digits, new each time", a.Nonce, b.Nonce)
	}
}

func TestBrowserDefaults(t *testing.T) {
	c, err := ParseStub("", nil, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if b := c.Browser; b.SessionMaxAge.Duration != 12*time.Hour || b.SessionIdleTimeout.Duration != time.Hour || b.KeyRotation.Duration != 168*time.Hour {
		t.Errorf("defaults: %+v", b)
	}
	c, err = ParseStub("c.yaml", []byte(head+"browser: {sessionMaxAge: 30m}\n"), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if d := c.Browser.SessionIdleTimeout.Duration; d != 30*time.Minute {
		t.Errorf("idle default with a 30m session: %v, want the session's own 30m", d)
	}
}

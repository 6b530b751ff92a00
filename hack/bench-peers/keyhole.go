package main

// Keyhole (github.com/keyhole-dev/keyhole, built by run.sh from the checkout named by KEYHOLE_SRC
// into bin/keyhole-stub and bin/keyhole-agent) and the HTTPS reference path.
//
// Paths added here (the plain-HTTP paths in drive.go are unchanged):
//
//	direct-tls    client ─HTTPS h2→ backend's TLS port (the client hop Keyhole's callers use, no tunnel)
//	direct-tls-h1 the same with HTTP/1.1 over TLS
//	keyhole       client ─HTTPS h2, bearer→ stub ⇐TLS yamux⇐ agent ─HTTP/1.1→ backend (audit off, metrics off)
//	keyhole-audit the same with an audit file and Prometheus metrics on (as in production)
//	keyhole-prod  keyhole-audit, and the agent reaches the backend as it reaches a real API
//	              server: apiServer {url: https://…, tokenFile, caFile}, h2 over TLS
//	keyhole-h1    keyhole with HTTP/1.1 over TLS on the client hop (one connection per
//	              concurrent request, like the plain paths); direct-tls-h1 is its reference
//
// The load generator speaks HTTPS with HTTP/2 (one multiplexed connection,
// as kubectl does) to these paths and plain HTTP/1.1 (one connection per
// concurrent request) to the others: compare keyhole* with direct-tls for
// the client hop, and with the other tunnels knowing that they get plain
// HTTP/1.1 from the client.

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
)

const (
	backendTLSAddr = "127.0.0.1:18081"
	khCluster      = "bench"
)

// addKubeStubs answers what a Keyhole agent asks its API server for on its
// own account: the kube-system namespace (its UID is the cluster
// fingerprint) and /version (the stub's health probe, every 10 s).
func addKubeStubs(mux *http.ServeMux) {
	ns := []byte(`{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"kube-system","uid":"6f1e2d3c-0b1a-4c5d-8e9f-a0b1c2d3e4f5","resourceVersion":"1","creationTimestamp":"2026-01-01T00:00:00Z"},"spec":{"finalizers":["kubernetes"]},"status":{"phase":"Active"}}`)
	ver := []byte(`{"major":"1","minor":"33","gitVersion":"v1.33.13-peersbench","platform":"linux/amd64"}`)
	mux.HandleFunc("GET /api/v1/namespaces/kube-system", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(ns)
	})
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(ver)
	})
}

// keyhole holds the once-per-drive state: the stub's state directory (one
// registered cluster, one static user token) shared by all keyhole paths.
type keyhole struct {
	done      bool
	err       error
	state     string // stub stateDir
	tokenFile string // the user's bearer token (load generator)
	caFile    string // the stub's self-signed CA
	secret    string // join secret file (agent)
}

// khSetup registers the cluster and mints a user token with the stub's own
// commands (`stub register`, `stub kubeconfig`), once.
func (d *driver) khSetup() *keyhole {
	if d.kh.done {
		return &d.kh
	}
	k := &d.kh
	k.done = true
	k.state = d.work + "/kh-state"
	k.tokenFile = d.work + "/kh-user-token"
	k.caFile = k.state + "/tls/ca.crt"
	k.secret = d.work + "/kh-join-secret"
	cfg := d.khStubConfig("setup", "127.0.0.1:18129", false)
	stub := d.bin + "/keyhole-stub"
	reg := exec.Command(stub, "register", khCluster, "--config", cfg, "--secret-out", k.secret)
	if out, err := reg.CombinedOutput(); err != nil {
		k.err = fmt.Errorf("keyhole-stub register: %v: %s", err, lastLines(out))
		return k
	}
	kc := exec.Command(stub, "kubeconfig", "--user", "bench-user", "--group", "bench-group", "--cluster", khCluster, "--config", cfg)
	kc.Stderr = nil
	out, err := kc.Output()
	if err != nil {
		k.err = fmt.Errorf("keyhole-stub kubeconfig: %v", err)
		return k
	}
	m := regexp.MustCompile(`(?m)^\s*token:\s*"?([^"\s]+)"?\s*$`).FindSubmatch(out)
	if m == nil {
		k.err = fmt.Errorf("keyhole-stub kubeconfig: no token in its output")
		return k
	}
	must(os.WriteFile(k.tokenFile, append(m[1], '\n'), 0o600))
	// What the agent uses towards the backend: a kubeconfig naming the plain
	// HTTP port (the same hop as every other tunnel), or for keyhole-prod an
	// apiServer block with the HTTPS port, a token file and the bench CA.
	must(os.WriteFile(d.work+"/kh-agent-token", []byte("bench-agent-serviceaccount-token\n"), 0o600))
	must(os.WriteFile(d.work+"/kh-agent.kubeconfig", []byte(`apiVersion: v1
kind: Config
clusters:
- name: backend
  cluster: {server: "http://`+backendAddr+`"}
users:
- name: agent
  user: {tokenFile: "`+d.work+`/kh-agent-token"}
contexts:
- name: backend
  context: {cluster: backend, user: agent}
current-context: backend
`), 0o600))
	return k
}

// khStubConfig writes a StubConfig for a stub listening on listen.
func (d *driver) khStubConfig(name, listen string, production bool) string {
	audit, metrics := `""`, `""`
	if production {
		audit = `"` + d.work + "/kh-audit-" + name + `.log"`
		metrics = `"127.0.0.1:` + map[string]string{"keyhole-audit": "18321", "keyhole-prod": "18322", "keyhole-audit-base": "18323", "keyhole-prod-base": "18324"}[name] + `"`
	}
	path := d.work + "/kh-stub-" + name + ".yaml"
	must(os.WriteFile(path, []byte(`apiVersion: keyhole.dev/v1alpha1
kind: StubConfig
listen: "`+listen+`"
publicURL: "https://`+listen+`"
stateDir: "`+d.work+`/kh-state"
log: {level: warn}
audit: {path: `+audit+`}
metrics: {listen: `+metrics+`}
`), 0o644))
	return path
}

// khAgentConfig writes an AgentConfig dialling the stub at listen.
func (d *driver) khAgentConfig(name, listen string, tlsBackend bool) string {
	k := &d.kh
	api := `kubeconfig: "` + d.work + `/kh-agent.kubeconfig"`
	if tlsBackend {
		api = `apiServer: {url: "https://` + backendTLSAddr + `", tokenFile: "` + d.work + `/kh-agent-token", caFile: "` + d.work + `/tls/ca.crt"}`
	}
	path := d.work + "/kh-agent-" + name + ".yaml"
	must(os.WriteFile(path, []byte(`apiVersion: keyhole.dev/v1alpha1
kind: AgentConfig
stubURL: "https://`+listen+`"
cluster: `+khCluster+`
agentID: bench-agent-1
joinSecretFile: "`+k.secret+`"
stubCAFile: "`+k.caFile+`"
`+api+`
log: {level: warn}
`), 0o644))
	return path
}

// tlsPaths are the HTTPS paths: direct-tls and the Keyhole variants.
func (d *driver) tlsPaths() []pathDef {
	kh := func(name, port string, production, tlsBackend, h2 bool, binDir string) pathDef {
		listen := "127.0.0.1:" + port
		return pathDef{name: name, base: "https://" + listen + "/clusters/" + khCluster, h2: h2,
			caFile: d.work + "/kh-state/tls/ca.crt", tokenFile: d.work + "/kh-user-token", backendTLS: tlsBackend,
			procs: func(d *driver) [][]string {
				stub, agent := binDir+"/keyhole-stub", binDir+"/keyhole-agent"
				if _, err := os.Stat(stub); err != nil {
					return [][]string{{"server", stub}} // skipped by the caller
				}
				if _, err := os.Stat(agent); err != nil {
					return [][]string{{"server", agent}}
				}
				if k := d.khSetup(); k.err != nil {
					return [][]string{{"server", "/nonexistent/" + strings.ReplaceAll(k.err.Error(), "/", "_")}}
				}
				return [][]string{
					{"server", stub, "serve", "--config", d.khStubConfig(name, listen, production)},
					{"agent", agent, "--config", d.khAgentConfig(name, listen, tlsBackend)}}
			}}
	}
	return []pathDef{
		{name: "direct-tls", base: "https://" + backendTLSAddr, h2: true, caFile: d.work + "/tls/ca.crt", backendTLS: true},
		{name: "direct-tls-h1", base: "https://" + backendTLSAddr, caFile: d.work + "/tls/ca.crt", backendTLS: true},
		kh("keyhole", "18120", false, false, true, d.bin),
		kh("keyhole-audit", "18121", true, false, true, d.bin),
		kh("keyhole-prod", "18122", true, true, true, d.bin),
		kh("keyhole-h1", "18123", false, false, false, d.bin),
		// keyhole-audit and keyhole-prod as built from the commit named by
		// run.sh's BASE (bin/base/): before and after in one run.
		kh("keyhole-audit-base", "18124", true, false, true, d.bin+"/base"),
		kh("keyhole-prod-base", "18125", true, true, true, d.bin+"/base"),
	}
}

func lastLines(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.LastIndexByte(s, '\n'); i >= 0 && len(s) > 400 {
		return s[i+1:]
	}
	return s
}

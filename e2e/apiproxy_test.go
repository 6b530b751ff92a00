package e2e

import (
	"bufio"
	"cmp"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

// corpProxy is a corporate HTTP proxy in the test process: it lets
// CONNECT through to the targets in routes (name:port → the real address,
// so the proxy, not the client, resolves them) and refuses everything
// else with 403, as a proxy that allows only known destinations does. It
// records every request it got.
type corpProxy struct {
	ln     net.Listener
	routes map[string]string
	mu     sync.Mutex
	seen   []string // "CONNECT host:port", "GET http://…", in arrival order
	conns  []net.Conn
	wg     sync.WaitGroup
}

func startCorpProxy(t *testing.T, routes map[string]string) *corpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &corpProxy{ln: ln, routes: routes}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.conns = append(p.conns, c)
			p.mu.Unlock()
			p.wg.Add(1)
			go func() { defer p.wg.Done(); p.serve(c) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *corpProxy) serve(c net.Conn) {
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		c.Close()
		return
	}
	target := req.Host
	if req.Method != http.MethodConnect {
		target = req.URL.String()
	}
	p.mu.Lock()
	p.seen = append(p.seen, req.Method+" "+target)
	p.mu.Unlock()
	to, ok := p.routes[target]
	if req.Method != http.MethodConnect || !ok {
		fmt.Fprintf(c, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		c.Close()
		return
	}
	back, err := net.DialTimeout("tcp", to, 5*time.Second)
	if err != nil {
		fmt.Fprintf(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, back)
	p.mu.Unlock()
	fmt.Fprintf(c, "HTTP/1.1 200 Connection established\r\n\r\n")
	relay(&bufferedConn{Conn: c, r: br}, back, &p.wg)
}

// bufferedConn reads what the request reader buffered first.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func (p *corpProxy) url() string { return "http://" + p.ln.Addr().String() }

// requests returns what the proxy was asked so far, each distinct request
// once, sorted.
func (p *corpProxy) requests() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := slices.Clone(p.seen)
	slices.Sort(s)
	return slices.Compact(s)
}

// TestAgentAPIServerNotThroughStubProxy: an agent whose environment has
// HTTPS_PROXY (for the stub) and the NO_PROXY docs/networks.md once
// recommended, 10.0.0.0/8,.svc,.cluster.local, reaches its own API server
// at an address NO_PROXY does not cover (OpenShift's 172.30.0.1 in the
// issue; here the name kubernetes.default, which only the agent resolves,
// to the loopback API server: Go never proxies loopback addresses, so an
// address would prove nothing). The proxy refuses all but the stub. The
// agent still reads its fingerprint, connects and serves kubectl (a plain
// request and an exec, the two transports to the API server), in-cluster,
// with apiServer.url and with a kubeconfig; the proxy sees only CONNECTs
// to the stub. An API server proxy configured explicitly
// (apiServer.proxyURL, or the kubeconfig's proxy-url) is used, and only
// for the API server.
func TestAgentAPIServerNotThroughStubProxy(t *testing.T) {
	c := kubetest.Start(t)
	g := startGateway(t, c)
	// The stub's certificate must name middleboxName, the stub's address
	// that only the proxy resolves: restart it with that host added.
	g.stub.stop()
	cfg, err := os.ReadFile(g.cfg)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, g.cfg, string(cfg)+"tls: {hosts: [localhost, 127.0.0.1, "+middleboxName+"]}\n")
	g.stub = startProcess(t, "stub", filepath.Join(g.dir, "stub-named.log"), nil, g.stubBin, "serve", "--config", g.cfg)
	stubAddr := strings.TrimPrefix(g.url, "https://")
	waitFor(t, 30*time.Second, "stub restart", func() bool { return dialable(stubAddr) }, g.stub)
	_, stubPort, _ := net.SplitHostPort(stubAddr)
	stubTarget := net.JoinHostPort(middleboxName, stubPort)

	u, err := url.Parse(c.URL)
	if err != nil {
		t.Fatal(err)
	}
	const apiName = "kubernetes.default" // in the API server's certificate
	apiTarget := net.JoinHostPort(apiName, u.Port())
	apiURL := "https://" + apiTarget

	corp := startCorpProxy(t, map[string]string{stubTarget: stubAddr})                   // HTTPS_PROXY: the stub only
	apiProxy := startCorpProxy(t, map[string]string{apiTarget: "127.0.0.1:" + u.Port()}) // configured for the API server

	const cluster = "behind-corp-proxy"
	secret, tokenFile := g.install(cluster)
	g.bind("alice", "cluster-admin")
	alice := g.kubeconfig("alice")
	aliceTok := tokenOf(t, alice)
	c.CreatePod(t, "default", "shell", nil)

	saDir := filepath.Join(g.dir, "sa")
	if err := os.Mkdir(saDir, 0o700); err != nil {
		t.Fatal(err)
	}
	saToken := filepath.Join(saDir, "token") // as mounted in a pod
	writeFile(t, saToken, c.ServiceAccountToken(t, "keyhole-system", "keyhole-agent"))
	withAPIName := filepath.Join(g.dir, "hosts-api")
	writeFile(t, withAPIName, "127.0.0.1 localhost\n127.0.0.1 "+apiName+"\n")
	noNames := filepath.Join(g.dir, "hosts-none")
	writeFile(t, noNames, "127.0.0.1 localhost\n")
	kubeconfig := func(name, proxyURL string) string {
		path := filepath.Join(g.dir, name)
		proxyLine := ""
		if proxyURL != "" {
			proxyLine = "\n    proxy-url: " + proxyURL
		}
		writeFile(t, path, fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: %s
    certificate-authority: %s%s
users:
- name: agent
  user: {tokenFile: %s}
contexts:
- {name: c, context: {cluster: c, user: agent}}
current-context: c
`, apiURL, c.CAFile, proxyLine, tokenFile))
		return path
	}
	// The agent's tunnel reaches the stub only through corp: the stub's
	// name resolves nowhere but there.
	agentGW := *g
	agentGW.url = "https://" + stubTarget
	env := []string{"HTTPS_PROXY=" + corp.url(), "NO_PROXY=10.0.0.0/8,.svc,.cluster.local",
		"KUBERNETES_SERVICE_HOST=" + apiName, "KUBERNETES_SERVICE_PORT=" + u.Port()}

	for _, tc := range []struct {
		name string
		opts agentOpts
		// viaAPIProxy: the API server is reached through apiProxy (and
		// the agent cannot resolve its name itself).
		viaAPIProxy bool
	}{
		{name: "in-cluster", opts: agentOpts{inCluster: true, tokenFile: saToken, hosts: withAPIName}},
		{name: "apiServer.url", opts: agentOpts{apiURL: apiURL, hosts: withAPIName}},
		{name: "kubeconfig", opts: agentOpts{kubeconfig: kubeconfig("direct.kubeconfig", ""), hosts: withAPIName}},
		{name: "apiServer.proxyURL", viaAPIProxy: true, opts: agentOpts{apiURL: apiURL, apiProxyURL: apiProxy.url(), hosts: noNames}},
		{name: "kubeconfig proxy-url", viaAPIProxy: true, opts: agentOpts{kubeconfig: kubeconfig("proxied.kubeconfig", apiProxy.url()), hosts: noNames}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts
			o.cluster, o.id, o.secretFile, o.c, o.env = cluster, strings.ReplaceAll(tc.name, " ", "-"), secret, c, env
			o.tokenFile = cmp.Or(o.tokenFile, tokenFile)
			before := len(apiProxy.requests())
			start := time.Now()
			agent := (&agentGW).startAgent(o)
			waitFor(t, 60*time.Second, "the agent to connect", func() bool {
				return slices.Contains(g.agentIDs(aliceTok, cluster), o.id)
			}, agent, g.stub)
			t.Logf("%s: connected after %v", tc.name, time.Since(start).Round(time.Millisecond))
			wantProxy := `"api_proxy":"none"`
			if tc.viaAPIProxy {
				wantProxy = `"api_proxy":"` + apiProxy.url() + `"`
			}
			if !strings.Contains(agent.logText(), wantProxy) {
				t.Errorf("the agent's start line lacks %s:\n%s", wantProxy, agent.tail(20))
			}
			if strings.Contains(agent.logText(), "cannot read cluster fingerprint yet") {
				t.Errorf("the agent retried its fingerprint read:\n%s", agent.tail(20))
			}
			if out, err := g.kubectl(alice, nil, nil, "get", "ns", "kube-system", "-o", "name"); err != nil || out != "namespace/kube-system\n" {
				t.Fatalf("kubectl get: %v %q", err, out)
			}
			if out, err := g.kubectl(alice, nil, nil, "exec", "shell", "--", "echo", "through "+tc.name); err != nil || out != "through "+tc.name+"\n" {
				t.Fatalf("kubectl exec: %v %q", err, out)
			}
			agent.stop()
			waitFor(t, 30*time.Second, "the agent to leave", func() bool {
				return !slices.Contains(g.agentIDs(aliceTok, cluster), o.id)
			}, agent, g.stub)

			if got := corp.requests(); !slices.Equal(got, []string{"CONNECT " + stubTarget}) {
				t.Fatalf("HTTPS_PROXY saw %q; want only CONNECT %s (the tunnel)", got, stubTarget)
			}
			got := apiProxy.requests()
			if tc.viaAPIProxy && (len(got) == 0 || !slices.Equal(got, []string{"CONNECT " + apiTarget})) {
				t.Fatalf("the API server proxy saw %q; want CONNECT %s", got, apiTarget)
			}
			if !tc.viaAPIProxy && len(got) != before {
				t.Fatalf("the API server proxy was used (%q) though none is configured", got)
			}
		})
	}
	t.Logf("HTTPS_PROXY saw %q; the API server's proxy %q", corp.requests(), apiProxy.requests())
}

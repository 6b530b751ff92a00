package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

// TestEmbeddedDefaults runs `stub` with no flags and no config, as the
// README's first command does: it must come up on :8443 with a self-signed
// certificate and local state, and say what to do next.
func TestEmbeddedDefaults(t *testing.T) {
	stubBin, _ := binaries(t)
	home := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, stubBin)
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_STATE_HOME=", "KEYHOLE_CONFIG=")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = cmd.Wait() }()
	var out strings.Builder
	sc := bufio.NewScanner(stderr)
	deadline := time.After(30 * time.Second)
	lines := make(chan string)
	go func() {
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	for !strings.Contains(out.String(), "kubectl --kubeconfig keyhole.kubeconfig get pods -A") {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("stub exited:\n%s", out.String())
			}
			out.WriteString(l + "\n")
		case <-deadline:
			t.Fatalf("no next steps printed:\n%s", out.String())
		}
	}
	go func() {
		for range lines {
		}
	}()
	for _, want := range []string{"Keyhole stub is up on https://localhost:8443", "self-signed CA: " + filepath.Join(home, ".local/state/keyhole/tls/ca.crt"), "stub register my-cluster --agent-config --secret-out my-cluster.secret > agent.yaml", "/agent --config agent.yaml"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("start-up text lacks %q:\n%s", want, out.String())
		}
	}
	ca, err := os.ReadFile(filepath.Join(home, ".local/state/keyhole/tls/ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://localhost:8443/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("healthz: %d", resp.StatusCode)
	}
}

// connectProxy is an HTTP CONNECT proxy that resolves names the agent
// cannot: it maps them to 127.0.0.1.
type connectProxy struct {
	l        net.Listener
	connects atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    []net.Conn
}

func startConnectProxy(t *testing.T, names map[string]string) *connectProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &connectProxy{l: l}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect {
			http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
			return
		}
		host, port, _ := net.SplitHostPort(r.Host)
		target, ok := names[host]
		if !ok {
			http.Error(w, "unknown host", http.StatusBadGateway)
			return
		}
		back, err := net.Dial("tcp", net.JoinHostPort(target, port))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		p.connects.Add(1)
		w.WriteHeader(http.StatusOK)
		front, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			back.Close()
			return
		}
		if n := brw.Reader.Buffered(); n > 0 { // bytes the agent sent after CONNECT
			buffered, _ := brw.Reader.Peek(n)
			if _, err := back.Write(buffered); err != nil {
				front.Close()
				back.Close()
				return
			}
		}
		p.mu.Lock()
		p.conns = append(p.conns, front, back)
		p.mu.Unlock()
		relay(front, back, &p.wg)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// TestAgentThroughConnectProxy: an agent that can reach the stub only
// through the HTTP CONNECT proxy named by HTTPS_PROXY.
func TestAgentThroughConnectProxy(t *testing.T) {
	c := kubetest.Start(t)
	g := startGateway(t, c)
	// Re-issue the stub's certificate for a name only the proxy resolves.
	// (Go never proxies loopback addresses or "localhost", so a test that
	// used them would not prove the proxy was used.)
	const name = "stub.keyhole.test"
	g.stub.stop()
	cfg, _ := os.ReadFile(g.cfg)
	writeFile(t, g.cfg, string(cfg)+"tls: {hosts: [localhost, 127.0.0.1, "+name+"]}\n")
	g.stub = startProcess(t, "stub", filepath.Join(g.dir, "stub2.log"), nil, g.stubBin, "serve", "--config", g.cfg)
	waitFor(t, 30*time.Second, "stub restart", func() bool {
		conn, err := net.Dial("tcp", strings.TrimPrefix(g.url, "https://"))
		if err == nil {
			conn.Close()
		}
		return err == nil
	}, g.stub)

	secret, tokenFile := g.install("behind-proxy")
	proxy := startConnectProxy(t, map[string]string{name: "127.0.0.1"})
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(g.url, "https://"))
	viaName := fmt.Sprintf("https://%s:%s", name, port)
	agentGW := *g
	agentGW.url = viaName
	(&agentGW).startAgent(agentOpts{cluster: "behind-proxy", id: "p1", secretFile: secret, apiURL: c.URL, tokenFile: tokenFile, c: c,
		env: []string{"HTTPS_PROXY=http://" + proxy.l.Addr().String(), "NO_PROXY="}})
	alice, aliceTok := g.user("alice", "e2e-reader")
	g.waitAgents(aliceTok, "behind-proxy", "p1")
	if n := proxy.connects.Load(); n < 1 {
		t.Fatalf("the agent connected without the proxy (%d CONNECTs)", n)
	}
	out, err := g.kubectl(alice, nil, nil, "get", "ns", "kube-system", "-o", "name")
	if err != nil || out != "namespace/kube-system\n" {
		t.Fatalf("through the proxied tunnel: %v %q", err, out)
	}
}

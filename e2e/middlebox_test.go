package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

// The hostile network of TestHostileMiddleboxes: a name only the proxy
// resolves (Go never proxies loopback addresses or "localhost", so a
// loopback URL would not prove the proxy was used) and the idle cut of both
// middleboxes.
const (
	middleboxName = "stub.keyhole.test"
	idleCut       = 60 * time.Second
)

// middleboxBin is a binary hack/middlebox.sh put into $KEYHOLE_TESTBIN.
func middleboxBin(t *testing.T, name string) string {
	t.Helper()
	dir := os.Getenv("KEYHOLE_TESTBIN")
	if dir == "" {
		t.Fatal("KEYHOLE_TESTBIN is not set: export KEYHOLE_TESTBIN=\"$(hack/testbin.sh)\"")
	}
	bin := filepath.Join(dir, name)
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%v: hack/testbin.sh (via hack/middlebox.sh) installs %s", err, name)
	}
	return bin
}

// haproxyLB is a real HAProxy in TCP mode in front of the stub, cutting
// connections idle for idleCut, as cloud load balancers do.
type haproxyLB struct {
	t        *testing.T
	bin, cfg string
	addr     string
	p        *process
	starts   int
}

// startHAProxy balances over backends (round robin; with more than one,
// a TCP check every second takes a dead backend out).
func startHAProxy(t *testing.T, dir string, backends ...string) *haproxyLB {
	t.Helper()
	lb := &haproxyLB{t: t, bin: middleboxBin(t, "haproxy"), cfg: filepath.Join(dir, "haproxy.cfg"),
		addr: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	secs := int(idleCut / time.Second)
	servers := ""
	for i, b := range backends {
		servers += fmt.Sprintf("  server s%d %s", i, b)
		if len(backends) > 1 {
			servers += " check inter 1s fall 1 rise 1"
		}
		servers += "\n"
	}
	// option tcplog: one line per connection with its duration and how it
	// ended (cD/sD: cut by the client or server idle timeout).
	writeFile(t, lb.cfg, fmt.Sprintf(`global
  maxconn 200
  log stdout format raw daemon
defaults
  mode tcp
  log global
  option tcplog
  timeout connect 5s
  timeout client %[1]ds
  timeout server %[1]ds
  timeout tunnel %[1]ds
frontend stub
  bind %[2]s
  default_backend stub
backend stub
  balance roundrobin
%[3]s`, secs, lb.addr, servers))
	lb.start()
	return lb
}

// start runs haproxy (again) and waits until it listens.
func (lb *haproxyLB) start() {
	lb.t.Helper()
	lb.starts++
	lb.p = startProcess(lb.t, "haproxy", filepath.Join(filepath.Dir(lb.cfg), fmt.Sprintf("haproxy-%d.log", lb.starts)),
		nil, lb.bin, "-db", "-f", lb.cfg)
	waitFor(lb.t, 30*time.Second, "haproxy to listen", func() bool { return dialable(lb.addr) }, lb.p)
}

// startTinyproxy runs a real tinyproxy that allows CONNECT only to
// connectPort and resolves middleboxName to 127.0.0.1. The name is in a
// private /etc/hosts bound over the real one in tinyproxy's own mount
// namespace, so the host is untouched; unshare and sh exec, so the PID is
// tinyproxy's.
func startTinyproxy(t *testing.T, dir string, connectPort string) (addr string, p *process) {
	t.Helper()
	bin := middleboxBin(t, "tinyproxy")
	addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	_, port, _ := net.SplitHostPort(addr)
	hosts := filepath.Join(dir, "tinyproxy-hosts")
	writeFile(t, hosts, "127.0.0.1 localhost\n127.0.0.1 "+middleboxName+"\n")
	cfg := filepath.Join(dir, "tinyproxy.conf")
	writeFile(t, cfg, fmt.Sprintf(`Port %s
Listen 127.0.0.1
Timeout %d
Allow 127.0.0.1
ConnectPort %s
MaxClients 50
LogLevel Connect
`, port, int(idleCut/time.Second), connectPort))
	script := fmt.Sprintf("mount --bind %s /etc/hosts && exec %s -d -c %s", hosts, bin, cfg)
	p = startProcess(t, "tinyproxy", filepath.Join(dir, "tinyproxy.log"), nil, "unshare", "--mount", "--", "sh", "-c", script)
	waitFor(t, 30*time.Second, "tinyproxy to listen", func() bool { return dialable(addr) }, p)
	return addr, p
}

func dialable(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// idleConnCut sends one HTTP/1.1 request to the stub's /healthz over conn
// (TLS for serverName inside it), then leaves the connection idle and
// returns how long until someone closed it. The stub itself keeps an idle
// keep-alive connection for 2 minutes, so a cut near idleCut is the
// middlebox's.
func idleConnCut(conn net.Conn, serverName string, pool *x509.CertPool) (time.Duration, error) {
	tc := tls.Client(conn, &tls.Config{ServerName: serverName, RootCAs: pool, NextProtos: []string{"http/1.1"}})
	defer tc.Close()
	_ = tc.SetDeadline(time.Now().Add(3 * time.Minute))
	if _, err := io.WriteString(tc, "GET /healthz HTTP/1.1\r\nHost: "+serverName+"\r\n\r\n"); err != nil {
		return 0, err
	}
	br := bufio.NewReader(tc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("healthz: %d", resp.StatusCode)
	}
	idle := time.Now()
	if n, err := br.Read(make([]byte, 1)); n > 0 || err == nil {
		return 0, fmt.Errorf("unexpected bytes on an idle connection")
	}
	return time.Since(idle), nil
}

// connectVia opens a CONNECT tunnel through the HTTP proxy at proxyAddr.
func connectVia(proxyAddr, target string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", proxyAddr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target); err != nil {
		c.Close()
		return nil, err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK || br.Buffered() > 0 {
		c.Close()
		return nil, fmt.Errorf("CONNECT %s: %s", target, resp.Status)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// lbKubeconfig mints a kubeconfig for user whose server is the load
// balancer instead of the stub.
func lbKubeconfig(t *testing.T, g *gateway, user, lbAddr string) string {
	t.Helper()
	kc := g.kubeconfig(user)
	b, err := os.ReadFile(kc)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "server: "+g.url) {
		t.Fatalf("kubeconfig has no server %s:\n%s", g.url, b)
	}
	path := filepath.Join(g.dir, user+"-via-lb.kubeconfig")
	writeFile(t, path, strings.ReplaceAll(string(b), "server: "+g.url, "server: https://"+lbAddr))
	return path
}

// TestHostileMiddleboxes: kubectl → HAProxy (60 s idle cut) → stub ←
// HAProxy ← tinyproxy (CONNECT, 60 s idle cut) ← agent. Idle for longer
// than the cut, the tunnel, a watch and an exec session all survive (while a
// plain idle connection is cut, proving the middleboxes are hostile); when
// the load balancer dies, the stub answers 503 at once and the agent is back
// within seconds of its return.
func TestHostileMiddleboxes(t *testing.T) {
	c := kubetest.Start(t)
	g := startGateway(t, c)
	// The stub's certificate must name middleboxName: restart it with that
	// host added.
	g.stub.stop()
	cfg, err := os.ReadFile(g.cfg)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, g.cfg, string(cfg)+"tls: {hosts: [localhost, 127.0.0.1, "+middleboxName+"]}\n")
	g.stub = startProcess(t, "stub", filepath.Join(g.dir, "stub-middlebox.log"), nil, g.stubBin, "serve", "--config", g.cfg)
	stubAddr := strings.TrimPrefix(g.url, "https://")
	waitFor(t, 30*time.Second, "stub restart", func() bool { return dialable(stubAddr) }, g.stub)

	lb := startHAProxy(t, g.dir, stubAddr)
	_, lbPort, _ := net.SplitHostPort(lb.addr)
	proxyAddr, tp := startTinyproxy(t, g.dir, lbPort)

	const cluster = "behind-middleboxes"
	secret, tokenFile := g.install(cluster)
	agentGW := *g
	agentGW.url = "https://" + net.JoinHostPort(middleboxName, lbPort)
	agent := (&agentGW).startAgent(agentOpts{cluster: cluster, id: "m1", secretFile: secret, apiURL: c.URL, tokenFile: tokenFile, c: c,
		env: []string{"HTTPS_PROXY=http://" + proxyAddr, "NO_PROXY="}})
	g.bind("alice", "cluster-admin")
	aliceLB := lbKubeconfig(t, g, "alice", lb.addr)
	aliceTok := tokenOf(t, aliceLB)
	waitFor(t, 90*time.Second, "the agent through tinyproxy and haproxy", func() bool {
		return strings.Join(g.agentIDs(aliceTok, cluster), ",") == "m1"
	}, agent, tp, lb.p, g.stub)
	before := g.status(aliceTok)[cluster].Agents[0]
	if !strings.Contains(tp.logText(), "CONNECT "+middleboxName+":"+lbPort) {
		t.Fatalf("the agent did not come through tinyproxy:\n%s", tp.tail(20))
	}
	if out, err := g.kubectl(aliceLB, nil, nil, "get", "ns", "kube-system", "-o", "name"); err != nil || out != "namespace/kube-system\n" {
		t.Fatalf("kubectl through the load balancer: %v %q", err, out)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(g.caPEM)

	// --- One idle window longer than the cut, everything concurrent. -----
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c.CreatePod(t, "default", "idle-shell", nil)
	exec := c.KubectlCmdAs(ctx, aliceLB, "exec", "-i", "idle-shell", "--", "cat")
	execIn, err := exec.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	execOut, _ := exec.StdoutPipe()
	if err := exec.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = exec.Wait() })
	execLines := readLines(execOut)
	if _, err := io.WriteString(execIn, "before the idle window\n"); err != nil {
		t.Fatal(err)
	}
	if l := nextLine(t, execLines, 60*time.Second, "exec echo before the window"); l.text != "before the idle window" {
		t.Fatalf("exec echoed %q", l.text)
	}

	c.EnsureNamespace(t, "idle")
	watch := c.KubectlCmdAs(ctx, aliceLB, "get", "configmaps", "-n", "idle", "--watch-only", "-o", "name")
	watchOut, _ := watch.StdoutPipe()
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = watch.Wait() })
	watchLines := readLines(watchOut)

	type cut struct {
		what  string
		after time.Duration
		err   error
	}
	cuts := make(chan cut, 2)
	go func() {
		conn, err := net.DialTimeout("tcp", lb.addr, 5*time.Second)
		if err != nil {
			cuts <- cut{"via haproxy", 0, err}
			return
		}
		d, err := idleConnCut(conn, "127.0.0.1", pool)
		cuts <- cut{"via haproxy", d, err}
	}()
	go func() {
		conn, err := connectVia(proxyAddr, net.JoinHostPort(middleboxName, lbPort))
		if err != nil {
			cuts <- cut{"via tinyproxy and haproxy", 0, err}
			return
		}
		d, err := idleConnCut(conn, middleboxName, pool)
		cuts <- cut{"via tinyproxy and haproxy", d, err}
	}()

	window := idleCut + 10*time.Second
	t.Logf("idle for %v (middleboxes cut at %v)", window, idleCut)
	time.Sleep(window)

	// A plain idle connection is cut: the middleboxes are really hostile.
	for range 2 {
		select {
		case r := <-cuts:
			if r.err != nil {
				t.Fatalf("idle control connection %s: %v", r.what, r.err)
			}
			t.Logf("an idle plain connection %s was cut after %v", r.what, r.after.Round(100*time.Millisecond))
			if r.after < idleCut-15*time.Second || r.after > idleCut+45*time.Second {
				t.Errorf("idle connection %s cut after %v; want about %v (the middlebox's idle cut)", r.what, r.after, idleCut)
			}
		case <-time.After(90 * time.Second):
			t.Fatal("an idle plain connection was never cut: the middleboxes are not cutting idle connections")
		}
	}

	// (a) The same tunnel session is still up.
	after := g.status(aliceTok)[cluster].Agents
	if len(after) != 1 || !after[0].Connected.Equal(before.Connected) {
		t.Fatalf("the tunnel was replaced: connected %v before, now %+v", before.Connected, after)
	}
	if n := strings.Count(agent.logText(), `"tunnel up"`); n != 1 || strings.Contains(agent.logText(), `"tunnel down"`) {
		t.Fatalf("the agent reconnected (%d times tunnel up):\n%s", n, agent.tail(20))
	}
	t.Logf("tunnel: same session, connected since %v (%v)", before.Connected.Format(time.RFC3339), time.Since(before.Connected).Round(time.Second))

	// (b) The idle watch delivers an event created now.
	created := time.Now()
	if _, err := c.Client().CoreV1().ConfigMaps("idle").Create(context.Background(),
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "after-the-idle-window"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if l := nextLine(t, watchLines, 30*time.Second, "idle watch"); l.text != "configmap/after-the-idle-window" {
		t.Fatalf("watch printed %q", l.text)
	} else {
		t.Logf("idle watch: event delivered %v after creation", l.at.Sub(created).Round(time.Millisecond))
	}

	// (c) The idle exec session still echoes.
	sent := time.Now()
	if _, err := io.WriteString(execIn, "after the idle window\n"); err != nil {
		t.Fatal(err)
	}
	if l := nextLine(t, execLines, 30*time.Second, "exec echo after the window"); l.text != "after the idle window" {
		t.Fatalf("exec echoed %q", l.text)
	} else {
		t.Logf("idle exec: echo after %v", l.at.Sub(sent).Round(time.Millisecond))
	}

	// --- The load balancer dies and comes back. -------------------------
	killed := time.Now()
	lb.p.kill()
	waitFor(t, 30*time.Second, "the stub to drop the dead session", func() bool {
		return len(g.status(aliceTok)[cluster].Agents) == 0
	}, g.stub, agent)
	t.Logf("load balancer killed: the stub dropped the session after %v", time.Since(killed).Round(time.Millisecond))
	// Meanwhile the stub answers at once with a Kubernetes Status, rather
	// than sending anything to the dead session.
	for i := range 3 {
		start := time.Now()
		resp, body := g.get(t, "/clusters/"+cluster+"/api/v1/namespaces", aliceTok)
		took := time.Since(start)
		var st metav1.Status
		if resp.StatusCode != http.StatusServiceUnavailable || json.Unmarshal([]byte(body), &st) != nil || st.Kind != "Status" {
			t.Fatalf("request %d with no agent: %d %s", i, resp.StatusCode, body)
		}
		if took > 5*time.Second {
			t.Fatalf("request %d with no agent took %v; want a fast 503", i, took)
		}
		t.Logf("with no agent: %d %q in %v", resp.StatusCode, st.Message, took.Round(time.Millisecond))
	}
	restarted := time.Now()
	lb.start()
	var failures []string
	var back time.Duration
	for attempt := 0; ; attempt++ {
		start := time.Now()
		out, err := g.kubectl(aliceLB, nil, nil, "get", "ns", "kube-system", "-o", "name")
		took := time.Since(start)
		if err == nil && out == "namespace/kube-system\n" {
			back = time.Since(restarted)
			break
		}
		msg := fmt.Sprint(err)
		failures = append(failures, fmt.Sprintf("%v: %s", took.Round(time.Millisecond), msg))
		if !strings.Contains(msg, "has no connected agent") || took > 10*time.Second {
			t.Fatalf("while the agent is away, kubectl got no fast, clean 503 (took %v): %s", took, msg)
		}
		if time.Since(restarted) > 60*time.Second {
			t.Fatalf("kubectl did not work again within 60 s of the load balancer's return:\n%s", agent.tail(20))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("kubectl works again %v after the load balancer came back (%v after it died); %d fast 503s meanwhile: %v",
		back.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond), len(failures), failures)
	if back > 15*time.Second {
		t.Errorf("the agent took %v to come back after the load balancer did; want under 15 s", back)
	}
	if ids := g.agentIDs(aliceTok, cluster); strings.Join(ids, ",") != "m1" {
		t.Fatalf("agents now %v", ids)
	}

	// --- The load balancer goes silent: connections are black-holed, no ---
	// FIN, no RST (SIGSTOP; the kernel still holds its sockets). Only the
	// tunnel keepalive can tell; the default 5 s + 5 s bound the time in
	// which the stub still has the dead session.
	downs := strings.Count(agent.logText(), `"tunnel down"`)
	silent := time.Now()
	lb.p.signal(syscall.SIGSTOP)
	resp, body := g.get(t, "/clusters/"+cluster+"/api/v1/namespaces/kube-system", aliceTok)
	took := time.Since(silent)
	var st metav1.Status
	if resp.StatusCode < 500 || json.Unmarshal([]byte(body), &st) != nil || st.Kind != "Status" {
		t.Fatalf("a request while the tunnel is black-holed: %d %s", resp.StatusCode, body)
	}
	t.Logf("black-holed tunnel: a request sent at once ended %d %q after %v", resp.StatusCode, st.Message, took.Round(time.Millisecond))
	if took > 30*time.Second {
		t.Errorf("a request into the black hole took %v; want it ended by the keepalive (about 10 s)", took)
	}
	waitFor(t, 30*time.Second, "the stub to drop the black-holed session", func() bool {
		return len(g.status(aliceTok)[cluster].Agents) == 0
	}, g.stub, agent)
	t.Logf("black-holed tunnel: the stub dropped the session after %v", time.Since(silent).Round(time.Millisecond))
	waitFor(t, 30*time.Second, "the agent to see its tunnel dead", func() bool {
		return strings.Count(agent.logText(), `"tunnel down"`) > downs
	}, agent)
	t.Logf("black-holed tunnel: the agent saw it dead after %v", time.Since(silent).Round(time.Millisecond))
	start := time.Now()
	resp, body = g.get(t, "/clusters/"+cluster+"/api/v1/namespaces/kube-system", aliceTok)
	if took := time.Since(start); resp.StatusCode != http.StatusServiceUnavailable || took > 5*time.Second {
		t.Fatalf("with the session dropped: %d %s after %v; want a fast 503", resp.StatusCode, body, took)
	}
	resumed := time.Now()
	lb.p.signal(syscall.SIGCONT)
	waitFor(t, 60*time.Second, "kubectl through the load balancer after it resumed", func() bool {
		out, err := g.kubectl(aliceLB, nil, nil, "get", "ns", "kube-system", "-o", "name")
		return err == nil && out == "namespace/kube-system\n"
	}, agent, g.stub)
	back = time.Since(resumed)
	t.Logf("kubectl works again %v after the load balancer resumed (%v after it went silent)", back.Round(time.Millisecond), time.Since(silent).Round(time.Millisecond))
	if back > 15*time.Second {
		t.Errorf("the agent took %v to come back after the load balancer resumed; want under 15 s", back)
	}
	g.noSecretsLogged(t, map[string]string{"alice's token": aliceTok}, agent, tp, lb.p)
}

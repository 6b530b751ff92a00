package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
	"github.com/keyhole-dev/keyhole/tunnel"
)

func fdCount(t *testing.T, p *process) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func (s *suite) testBadInput(t *testing.T) {
	addr := strings.TrimPrefix(s.g.url, "https://")
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.g.caPEM)
	stubFDs := fdCount(t, s.g.stub)

	t.Run("garbage and half handshakes on the stub port", func(t *testing.T) {
		for _, in := range []string{"\x16\x03\x01\x00\x05hello", "GET / HTTP/1.1\r\n", strings.Repeat("\x00", 4096)} {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = c.Write([]byte(in))
			_, _ = io.Copy(io.Discard, c)
			c.Close()
		}
		// TLS, then half an agent handshake, then hang up.
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.WriteString(c, "GET /tunnel/v1/connect HTTP/1.1\r\nHost: x\r\nUpgrade: keyhole-tunnel/1\r\n")
		c.Close()
	})
	t.Run("oversized header", func(t *testing.T) {
		req, _ := http.NewRequest("GET", s.g.url+"/clusters/e2e/api", nil)
		req.Header.Set("Authorization", "Bearer "+s.aliceTok)
		req.Header.Set("X-Big", strings.Repeat("a", 2<<20))
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
				t.Fatalf("status %d", resp.StatusCode)
			}
		} // else: the server closed the connection on us, also a refusal
	})
	t.Run("wrong or missing join secret", func(t *testing.T) {
		for name, secret := range map[string]string{"wrong": "khj_wrong", "missing": ""} {
			f := filepath.Join(s.g.dir, "bad-"+name+".secret")
			writeFile(t, f, secret)
			health := fmt.Sprintf("127.0.0.1:%d", freePort(t))
			p := s.g.startAgent(agentOpts{cluster: "e2e", id: "bad-" + name, secretFile: f, apiURL: s.c.URL, tokenFile: s.saToken, c: s.c,
				extra: "healthListen: " + health + "\n"})
			want := map[string]string{"wrong": `join secret is not valid for cluster \"e2e\"`, "missing": "missing join secret"}[name]
			waitFor(t, 30*time.Second, "agent log to say "+want, func() bool { return strings.Contains(p.logText(), want) }, p)
			if code := httpCode("http://" + health + "/readyz"); code != http.StatusServiceUnavailable {
				t.Fatalf("a refused agent's /readyz: %d", code)
			}
			if code := httpCode("http://" + health + "/healthz"); code != http.StatusOK {
				t.Fatalf("a refused agent's /healthz: %d", code)
			}
			p.stop()
		}
		if ids := s.g.agentIDs(s.aliceTok, "e2e"); strings.Join(ids, ",") != "a1,a2" {
			t.Fatalf("agents now %v", ids)
		}
	})
	t.Run("clients that leave mid-stream", func(t *testing.T) {
		data := startDataServer(t)
		s.c.CreatePod(t, "default", "leaver", map[string]string{"nodesim.keyhole.dev/port-8080": data})
		for i := 0; i < 3; i++ {
			local, stop := s.portForward(t, nil, "leaver")
			c := dialData(t, local, 'd', 7, 1<<30) // 1 GiB, abandoned after 8 MiB
			if _, err := io.CopyN(io.Discard, c, 8<<20); err != nil {
				t.Fatal(err)
			}
			stop() // kubectl is killed with the transfer in flight
			c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			_ = s.c.KubectlCmdAs(ctx, s.alice, "get", "configmaps", "-w").Run() // a watch cut by its client
			cancel()
		}
	})
	t.Run("everything still works and nothing leaked", func(t *testing.T) {
		if errs := s.load(t, 50); len(errs) > 0 {
			t.Fatal(errs[0])
		}
		if ids := s.g.agentIDs(s.aliceTok, "e2e"); strings.Join(ids, ",") != "a1,a2" {
			t.Fatalf("agents now %v", ids)
		}
		s.g.http.CloseIdleConnections()
		var now int
		waitFor(t, 60*time.Second, "stub descriptors to return", func() bool {
			now = fdCount(t, s.g.stub)
			return now <= stubFDs+4
		})
		t.Logf("stub file descriptors: %d before the bad input, %d after", stubFDs, now)
	})
}

// TestFaults covers an API server that becomes unreachable behind its agent
// and an agent whose cluster is not the one its join secret names.
func TestFaults(t *testing.T) {
	c := kubetest.Start(t)
	g := startGateway(t, c)
	secret, tokenFile := g.install("cut")
	alice, aliceTok := g.user("alice", "cluster-admin")
	apiPort := c.URL[strings.LastIndex(c.URL, ":")+1:]
	fw := startTCPRelay(t, relayTo("127.0.0.1:"+apiPort))
	health := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	agent := g.startAgent(agentOpts{cluster: "cut", id: "a1", secretFile: secret, apiURL: "https://127.0.0.1:" + fw.port(), tokenFile: tokenFile, c: c,
		extra: "healthListen: " + health + "\n"})
	g.waitAgents(aliceTok, "cut", "a1")
	if code := httpCode("http://" + health + "/readyz"); code != http.StatusOK {
		t.Fatalf("a connected agent's /readyz: %d", code)
	}
	kubectl := func(args ...string) (string, error) { return g.kubectl(alice, nil, nil, args...) }
	if out, err := kubectl("get", "ns", "-o", "name"); err != nil || !strings.Contains(out, "kube-system") {
		t.Fatalf("before the cut: %v %s", err, out)
	}

	t.Run("API server unreachable behind the agent", func(t *testing.T) {
		// Health from the data path: ready with the API server's version
		// before the cut, not ready with the reason after it.
		waitFor(t, 20*time.Second, "cluster ready through the tunnel", func() bool {
			st := g.status(aliceTok)["cut"]
			return st.Ready && st.Agents[0].Health.APIServerVersion == "v1.33.13" && st.Agents[0].Health.TunnelRTT > 0
		}, g.stub)
		fw.stop()
		_, err := kubectl("get", "pods")
		if err == nil || !strings.Contains(err.Error(), "ServiceUnavailable") {
			t.Fatalf("got %v", err)
		}
		req, _ := http.NewRequest("GET", g.url+"/clusters/cut/api/v1/namespaces/default/pods", nil)
		req.Header.Set("Authorization", "Bearer "+aliceTok)
		resp, err := g.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(resp)
		resp.Body.Close()
		if resp.StatusCode != 503 || !strings.Contains(body, "the agent cannot reach its API server") {
			t.Fatalf("got %d %s", resp.StatusCode, body)
		}
		if ids := g.agentIDs(aliceTok, "cut"); len(ids) != 1 {
			t.Fatalf("the tunnel should stay up: agents %v", ids)
		}
		waitFor(t, 30*time.Second, "cluster reported not ready, with the reason", func() bool {
			st := g.status(aliceTok)["cut"]
			return !st.Ready && st.Agents[0].Health.Error != ""
		}, g.stub)
		t.Logf("health after the cut: %+v", g.status(aliceTok)["cut"].Agents[0].Health)
	})

	t.Run("a copied join secret in another cluster is refused", func(t *testing.T) {
		other := kubetest.Start(t)
		if other.KubeSystemUID == c.KubeSystemUID {
			t.Fatal("two clusters with one kube-system UID")
		}
		p := g.startAgent(agentOpts{cluster: "cut", id: "intruder", secretFile: secret, kubeconfig: other.AdminKubeconfig})
		waitFor(t, 60*time.Second, "the intruder to be refused", func() bool {
			return strings.Contains(p.logText(), "was a join secret copied?")
		}, p, g.stub)
		if ids := g.agentIDs(aliceTok, "cut"); strings.Join(ids, ",") != "a1" {
			t.Fatalf("agents now %v", ids)
		}
		if !strings.Contains(g.stub.logText(), "fingerprint differs") {
			t.Fatal("stub did not log the refusal")
		}
	})

	t.Run("join secret rotated, revoked, expired, unregistered", func(t *testing.T) {
		_, secretFile := g.register("sec")
		p := g.startAgent(agentOpts{cluster: "sec", id: "s1", secretFile: secretFile, kubeconfig: c.AdminKubeconfig})
		g.waitAgents(aliceTok, "sec", "s1")
		connected := func() (time.Time, bool) {
			for _, a := range g.status(aliceTok)["sec"].Agents {
				return a.Connected, true
			}
			return time.Time{}, false
		}
		since, _ := connected()
		next := filepath.Join(g.dir, "sec.next") // secrets the agent does not get

		// A plain rotation: handshakes need the new secret, the session
		// of the old one stays up (10 s: two session checks and more).
		g.stubCmd("register", "sec", "--rotate", "--secret-out", next)
		time.Sleep(2*tunnel.SessionCheckInterval + time.Second)
		if now, ok := connected(); !ok || !now.Equal(since) {
			t.Fatalf("a plain rotation touched the session: connected %v (was %v)", now, since)
		}

		// A leaked secret: --disconnect closes its session within the
		// check interval, and the agent, still holding it, is refused.
		t0 := time.Now()
		g.stubCmd("register", "sec", "--rotate", "--disconnect", "--secret-out", next)
		waitFor(t, 3*tunnel.SessionCheckInterval, "the revoked session to close", func() bool { _, ok := connected(); return !ok }, p, g.stub)
		t.Logf("rotate --disconnect: session closed after %v", time.Since(t0).Round(time.Millisecond))
		waitFor(t, 30*time.Second, "the agent refused with the old secret", func() bool {
			return strings.Contains(p.logText(), "join secret is not valid for cluster")
		}, p)

		// A secret that expires in 15 s, given to a restarted agent (so its
		// backoff starts afresh): it connects, is cut at expiry and refused
		// with a message that says what to do.
		p.stop()
		g.stubCmd("register", "sec", "--rotate", "--disconnect", "--expires", "15s", "--secret-out", secretFile)
		p = g.startAgent(agentOpts{cluster: "sec", id: "s1", secretFile: secretFile, kubeconfig: c.AdminKubeconfig})
		waitFor(t, 30*time.Second, "the agent with the new secret", func() bool { _, ok := connected(); return ok }, p)
		waitFor(t, 40*time.Second, "the expired secret's session to close", func() bool { _, ok := connected(); return !ok }, p, g.stub)
		waitFor(t, 40*time.Second, "the agent refused with an expired secret", func() bool {
			return strings.Contains(p.logText(), `join secret of cluster \"sec\" expired`) && strings.Contains(p.logText(), "issue a new one") && strings.Contains(p.logText(), "--rotate")
		}, p)

		// Unregistered: a live session is closed and the secret refused.
		p.stop()
		g.stubCmd("register", "sec", "--rotate", "--disconnect", "--secret-out", secretFile)
		p = g.startAgent(agentOpts{cluster: "sec", id: "s1", secretFile: secretFile, kubeconfig: c.AdminKubeconfig})
		waitFor(t, 30*time.Second, "the agent back", func() bool { _, ok := connected(); return ok }, p)
		g.stubCmd("unregister", "sec")
		// The status endpoint lists registered clusters only; the metrics
		// come from the live sessions themselves.
		waitFor(t, 3*tunnel.SessionCheckInterval, "the unregistered cluster's session to close", func() bool {
			resp, err := http.Get("http://" + g.metricsAddr + "/metrics")
			return err == nil && !strings.Contains(readAll(resp), `keyhole_agents_connected{cluster="sec"}`)
		}, p, g.stub)
		waitFor(t, 40*time.Second, "the agent refused as unregistered", func() bool {
			return strings.Contains(p.logText(), `cluster \"sec\" is not registered`)
		}, p)
		p.stop()
	})

	t.Run("rotated ServiceAccount token is re-read", func(t *testing.T) {
		// A token bound to a Secret dies with the Secret. The agent starts
		// with one; then the file gets a new token and the old one dies.
		cs := c.Client()
		ctx := context.Background()
		anchor, err := cs.CoreV1().Secrets("keyhole-system").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "token-anchor"}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		exp := int64(3600)
		tr, err := cs.CoreV1().ServiceAccounts("keyhole-system").CreateToken(ctx, "keyhole-agent", &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{
			ExpirationSeconds: &exp, BoundObjectRef: &authv1.BoundObjectReference{Kind: "Secret", APIVersion: "v1", Name: anchor.Name, UID: anchor.UID}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rotFile := filepath.Join(g.dir, "rotating-token")
		writeFile(t, rotFile, tr.Status.Token)
		g.register("rot")
		secretRot := filepath.Join(g.dir, "rot.secret")
		direct := startTCPRelay(t, relayTo("127.0.0.1:"+apiPort))
		p := g.startAgent(agentOpts{cluster: "rot", id: "r1", secretFile: secretRot, apiURL: "https://127.0.0.1:" + direct.port(), tokenFile: rotFile, c: c})
		g.waitAgents(aliceTok, "rot", "r1")
		kc := g.kubeconfig("alice2", "rot-admins")
		c.Apply(t, `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: rot-admins}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: rot-admins}]
`+readerRole)
		run := func() error {
			_, err := g.kubectl(kc, nil, nil, "--context", "rot", "get", "configmaps")
			return err
		}
		if err := run(); err != nil {
			t.Fatalf("with the first token: %v", err)
		}
		writeFile(t, rotFile, c.ServiceAccountToken(t, "keyhole-system", "keyhole-agent"))
		if err := cs.CoreV1().Secrets("keyhole-system").Delete(ctx, anchor.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		// client-go re-reads the file when the API server refuses the old
		// token (and at least every minute), so at most the first request
		// after the revocation can fail.
		var failures int
		for i := 0; i < 10; i++ {
			if err := run(); err != nil {
				failures++
				t.Logf("request %d after rotation: %v", i, err)
			}
		}
		if failures > 1 {
			t.Fatalf("%d of 10 requests failed after the token rotated\n%s", failures, p.tail(20))
		}
	})
	_ = agent
}

// httpCode GETs url and returns the status code (0 on error).
func httpCode(url string) int {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keyhole-dev/keyhole/ha"
	"github.com/keyhole-dev/keyhole/internal/kubetest"
	"github.com/keyhole-dev/keyhole/internal/testbed"
)

// haSet is three stub replicas in a hub (the test API server) behind a real
// haproxy, as a Deployment behind a Service of type LoadBalancer would be.
type haSet struct {
	*gateway // url: the load balancer; cfg: replica r0's config (admin commands)
	c        *kubetest.Cluster
	ns       string
	replicas map[string]*haReplica
	caFile   string // the operator certificate's CA, for kubectl
}

type haReplica struct {
	id, cfg, url, metrics string
	p                     *process
}

const haLease = 15 * time.Second // the product's default leaseDuration

func startHASet(t *testing.T, c *kubetest.Cluster, ns string) *haSet {
	stubBin, agentBin := binaries(t)
	dir := t.TempDir()
	c.EnsureNamespace(t, ns)
	ca, err := testbed.NewCA("keyhole-e2e-ha")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue("stub", nil, true, []net.IP{net.ParseIP("127.0.0.1")}, []string{"localhost"})
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writeFile(t, certFile, string(certPEM))
	writeFile(t, keyFile, string(keyPEM))
	caFile := filepath.Join(dir, "ca.crt")
	writeFile(t, caFile, string(ca.CertPEM))

	lbAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	s := &haSet{c: c, ns: ns, replicas: map[string]*haReplica{}, caFile: caFile}
	var backends strings.Builder
	for i := range 3 {
		id := fmt.Sprintf("r%d", i)
		port := freePort(t)
		r := &haReplica{id: id, cfg: filepath.Join(dir, id+".yaml"), url: fmt.Sprintf("https://127.0.0.1:%d", port),
			metrics: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
		writeFile(t, r.cfg, fmt.Sprintf(`apiVersion: keyhole.dev/v1alpha1
kind: StubConfig
listen: 127.0.0.1:%d
publicURL: https://%s
stateDir: %s
tls: {certFile: %s, keyFile: %s}
log: {level: debug}
metrics: {listen: %s}
hub: {enabled: true, kubeconfig: %s, namespace: %s, replicaID: %s}
`, port, lbAddr, filepath.Join(dir, id+"-state"), certFile, keyFile, r.metrics, c.AdminKubeconfig, ns, id))
		s.replicas[id] = r
		fmt.Fprintf(&backends, "  server %s 127.0.0.1:%d check inter 500ms fall 1 rise 1\n", id, port)
	}
	// Round robin over the replicas; a refused connection is retried on
	// another (redispatch), as a cloud load balancer would.
	lbCfg := filepath.Join(dir, "haproxy.cfg")
	writeFile(t, lbCfg, fmt.Sprintf(`global
  maxconn 2000
defaults
  mode tcp
  timeout connect 1s
  timeout client 1h
  timeout server 1h
  retries 3
  option redispatch 1
frontend stub
  bind %s
  default_backend stubs
backend stubs
  balance roundrobin
%s`, lbAddr, backends.String()))
	lb := startProcess(t, "haproxy", filepath.Join(dir, "haproxy.log"), nil, middleboxBin(t, "haproxy"), "-db", "-f", lbCfg)

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM)
	s.gateway = &gateway{t: t, c: c, dir: dir, cfg: s.replicas["r0"].cfg, url: "https://" + lbAddr,
		stubBin: stubBin, agentBin: agentBin, caPEM: ca.CertPEM,
		http: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 10 * time.Second}}
	t.Cleanup(s.http.CloseIdleConnections)
	for _, id := range []string{"r0", "r1", "r2"} {
		s.start(id)
	}
	waitFor(t, 30*time.Second, "haproxy to listen", func() bool { return dialable(lbAddr) }, lb)
	return s
}

func (s *haSet) start(id string) {
	r := s.replicas[id]
	r.p = startProcess(s.t, "stub "+id, filepath.Join(s.dir, id+".log"), nil, s.stubBin, "serve", "--config", r.cfg)
	waitFor(s.t, 60*time.Second, "stub "+id+" to listen", func() bool { return dialable(strings.TrimPrefix(r.url, "https://")) }, r.p)
}

// at is the gateway as seen on one replica directly.
func (s *haSet) at(id string) *gateway {
	g := *s.gateway
	g.url = s.replicas[id].url
	return &g
}

// metric returns the replica's metrics text.
func (s *haSet) metric(id string) string {
	resp, err := http.Get("http://" + s.replicas[id].metrics + "/metrics")
	if err != nil {
		return err.Error()
	}
	return readAll(resp)
}

// leader is the holder of the leader Lease ("" if none or expired).
func (s *haSet) leader() string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := s.c.Client().CoordinationV1().Leases(s.ns).Get(ctx, ha.LeaderLease, metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil || l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return ""
	}
	if time.Since(l.Spec.RenewTime.Time) > time.Duration(*l.Spec.LeaseDurationSeconds)*time.Second {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// connectedEverywhere: every live replica in ids has every agent.
func (s *haSet) connectedEverywhere(token string, ids []string, agents map[string]string) bool {
	for _, id := range ids {
		st := s.at(id).status(token)
		for cluster, agent := range agents {
			var ids []string
			for _, a := range st[cluster].Agents {
				ids = append(ids, a.ID)
			}
			if !slices.Contains(ids, agent) {
				return false
			}
		}
	}
	return true
}

// attempt is one kubectl call through the load balancer.
type attempt struct {
	cluster    string
	start, end time.Time
	err        error
}

// kubectlLoop runs `kubectl get ns default` through the load balancer for
// every cluster, back to back, until stop is closed.
func kubectlLoop(s *haSet, kubeconfig string, clusters []string, stop <-chan struct{}) <-chan []attempt {
	out := make(chan []attempt, 1)
	var mu sync.Mutex
	var all []attempt
	var wg sync.WaitGroup
	for _, cl := range clusters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 2000; n++ { // bounded: ~200 ms per call
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				a := attempt{cluster: cl, start: time.Now()}
				cmd := exec.CommandContext(ctx, "kubectl", "--kubeconfig", kubeconfig, "--certificate-authority", s.caFile, "--context", cl, "--request-timeout=5s", "get", "ns", "default", "-o", "name")
				b, err := cmd.CombinedOutput()
				cancel()
				a.end = time.Now()
				if err != nil || strings.TrimSpace(string(b)) != "namespace/default" {
					a.err = fmt.Errorf("%v: %s", err, strings.TrimSpace(string(b)))
				}
				mu.Lock()
				all = append(all, a)
				mu.Unlock()
			}
		}()
	}
	go func() { wg.Wait(); out <- all }()
	return out
}

// recovery: for each cluster, the failed calls started after t0 and when
// the first call started after t0 succeeded (the time until kubectl works
// again), measured from t0.
func recovery(t *testing.T, all []attempt, t0 time.Time, clusters []string) (worst time.Duration, failed int) {
	for _, cl := range clusters {
		first := time.Duration(-1)
		for _, a := range all {
			if a.cluster != cl || a.start.Before(t0) {
				continue
			}
			if a.err != nil {
				if failed++; failed > 5 {
					continue
				}
				t.Logf("  %s: call at +%v failed: %v", cl, a.start.Sub(t0).Round(time.Millisecond), a.err)
				continue
			}
			if first < 0 {
				first = a.end.Sub(t0)
			}
		}
		if first < 0 {
			t.Fatalf("%s: kubectl never worked again", cl)
		}
		worst = max(worst, first)
	}
	return worst, failed
}

// TestReplicasFailover runs three stub replicas with leader election in the
// hub behind haproxy, two clusters' agents holding sessions to every
// replica, and kubectl calling through the load balancer without pause
// while the leader is stopped (SIGTERM) and later killed (SIGKILL). It
// measures how long until kubectl works again for every cluster and until
// another replica leads.
func TestReplicasFailover(t *testing.T) {
	c := kubetest.Start(t)
	s := startHASet(t, c, "keyhole-hub")
	waitFor(t, 30*time.Second, "a leader", func() bool { return s.leader() != "" })
	// client-go's leader election logs through klog: into each replica's
	// own JSON log, as logger "client-go".
	for id, r := range s.replicas {
		found := false
		for _, l := range strings.Split(r.p.logText(), "\n") {
			var e struct{ Logger, Msg string }
			if json.Unmarshal([]byte(l), &e) == nil && e.Logger == "client-go" && strings.HasPrefix(e.Msg, "attempting to acquire leader lease") {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: no JSON line of logger client-go saying \"attempting to acquire leader lease\":\n%s", id, r.p.tail(20))
		}
	}
	clusters := []string{"ha-a", "ha-b"}
	agents := map[string]string{}
	for _, cl := range clusters {
		_, secret := s.register(cl)
		agents[cl] = cl + "-agent"
		s.startAgent(agentOpts{cluster: cl, id: agents[cl], secretFile: secret, kubeconfig: c.AdminKubeconfig})
	}
	kc, token := s.user("ha-user", "e2e-reader")
	all := []string{"r0", "r1", "r2"}
	waitFor(t, 60*time.Second, "every agent on every replica", func() bool { return s.connectedEverywhere(token, all, agents) })
	// Each replica lists the others at its next heartbeat (every 5 s).
	missing := ""
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		missing = ""
		leader := s.leader()
		for _, id := range all {
			m := s.metric(id)
			want := "keyhole_leader 0"
			if id == leader {
				want = "keyhole_leader 1"
			}
			for _, w := range []string{want, "keyhole_replicas_live 3", "keyhole_hub_reachable 1", `keyhole_agent_connects_total{cluster="ha-a"} 1`} {
				if !strings.Contains(m, w) {
					missing += fmt.Sprintf(" %s:%q", id, w)
				}
			}
		}
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("HA metrics lack%s", missing)
		}
	}

	measure := func(kind string, sig syscall.Signal) (victim string, kubectlBack, leaderBack time.Duration) {
		victim = s.leader()
		if victim == "" {
			t.Fatal("no leader")
		}
		stop := make(chan struct{})
		results := kubectlLoop(s, kc, clusters, stop)
		time.Sleep(time.Second) // calls before the fault, for comparison
		t0 := time.Now()
		s.replicas[victim].p.signal(sig)
		waitFor(t, haLease+15*time.Second, "another leader", func() bool {
			l := s.leader()
			return l != "" && l != victim
		})
		leaderBack = time.Since(t0)
		time.Sleep(2 * time.Second)
		close(stop)
		attempts := <-results
		var failed int
		kubectlBack, failed = recovery(t, attempts, t0, clusters)
		t.Logf("%s of leader %s: kubectl works again for every cluster after %v (%d of %d calls failed); another replica leads after %v",
			kind, victim, kubectlBack.Round(time.Millisecond), failed, len(attempts), leaderBack.Round(time.Millisecond))
		<-s.replicas[victim].p.done
		return victim, kubectlBack, leaderBack
	}

	victim, back, lead := measure("SIGTERM", syscall.SIGTERM)
	if back > 2*time.Second {
		t.Errorf("graceful stop: kubectl back after %v, goal under 2s", back)
	}
	if lead > 2*time.Second+5*time.Second { // released Lease: retryPeriod 2 s with jitter
		t.Errorf("graceful stop: new leader after %v", lead)
	}
	live := slices.DeleteFunc(slices.Clone(all), func(id string) bool { return id == victim })
	if !s.connectedEverywhere(token, live, agents) {
		t.Fatal("agents lost their sessions to the replicas that stayed")
	}

	// The stopped replica comes back (a rolling update's new pod) and the
	// agents find it again.
	s.start(victim)
	waitFor(t, 60*time.Second, "agents back on "+victim, func() bool { return s.connectedEverywhere(token, all, agents) }, s.replicas[victim].p)

	_, back, lead = measure("SIGKILL", syscall.SIGKILL)
	if back > haLease+2*time.Second {
		t.Errorf("crash: kubectl back after %v, goal under lease duration + 2s = %v", back, haLease+2*time.Second)
	}
	if lead > haLease+8*time.Second {
		t.Errorf("crash: new leader after %v (lease %v)", lead, haLease)
	}

	// The hub goes away for one replica (its hub connection runs through a
	// relay the test cuts; the hub here is also the clusters' API server,
	// which must stay up): it keeps serving on what it knows, says so on
	// /readyz and in keyhole_hub_reachable, and catches up when the hub is
	// back.
	hubCut(t, s, token, kc)
}

func hubCut(t *testing.T, s *haSet, token, kc string) {
	r := s.replicas["r1"]
	rl := startTCPRelay(t, relayTo(strings.TrimPrefix(s.c.URL, "https://")))
	b, err := os.ReadFile(s.c.AdminKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	relayed := filepath.Join(s.dir, "hub-relayed.kubeconfig")
	writeFile(t, relayed, strings.ReplaceAll(string(b), s.c.URL, "https://"+rl.addr()))
	cfg, _ := os.ReadFile(r.cfg)
	writeFile(t, r.cfg, strings.Replace(string(cfg), "kubeconfig: "+s.c.AdminKubeconfig, "kubeconfig: "+relayed, 1))
	r.p.stop()
	s.start("r1")
	g := s.at("r1")
	waitFor(t, 60*time.Second, "agents on r1", func() bool { return len(g.agentIDs(token, "ha-a")) == 1 }, r.p)
	readyz := func() (int, string) {
		resp, err := g.http.Get(g.url + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		return resp.StatusCode, readAll(resp)
	}

	rl.pause(true)
	t0 := time.Now()
	waitFor(t, 30*time.Second, "r1 to say the hub is unreachable", func() bool {
		code, body := readyz()
		return code == http.StatusOK && strings.Contains(body, "hub: unreachable")
	}, r.p)
	t.Logf("hub cut: r1 reports it after %v and stays ready", time.Since(t0).Round(time.Millisecond))
	if m := s.metric("r1"); !strings.Contains(m, "keyhole_hub_reachable 0") {
		t.Error("keyhole_hub_reachable is not 0 with the hub cut")
	}
	if out, err := g.kubectl(kc, nil, nil, "--certificate-authority", s.caFile, "--context", "ha-a", "--server", g.url+"/clusters/ha-a", "get", "ns", "default", "-o", "name"); err != nil {
		t.Fatalf("r1 stopped serving without its hub: %v %s", err, out)
	}
	// A cluster registered meanwhile is unknown to r1 until the hub is back.
	s.register("ha-c")
	rl.pause(false)
	waitFor(t, 60*time.Second, "r1 to know ha-c after the hub came back", func() bool {
		_, ok := g.status(token)["ha-c"]
		return ok
	}, r.p)
	code, body := readyz()
	t.Logf("hub back: r1 /readyz %d %q", code, body)
}

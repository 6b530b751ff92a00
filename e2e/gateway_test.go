package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

// suite is what every subtest of TestGateway shares.
type suite struct {
	c            *kubetest.Cluster
	g            *gateway
	alice, bob   string // kubeconfigs: alice is cluster-admin, bob only "view"
	aliceTok     string
	secret       string
	saToken      string // the agent ServiceAccount's token file
	saKubeconfig string
	agents       map[string]*process
}

// TestGateway brings up a real control plane, the stub, two agents of one
// cluster and users, then checks every user-visible capability through the
// real kubectl.
func TestGateway(t *testing.T) {
	c := kubetest.Start(t)
	g := startGateway(t, c)
	s := &suite{c: c, g: g, agents: map[string]*process{}}

	manifest, secretFile := g.register("e2e")
	s.secret = secretFile
	t.Run("agent manifest is valid for the API server", func(t *testing.T) {
		for _, want := range []string{"kind: Deployment", "replicas: 2", "verbs:\n  - impersonate", "runAsUser: 65532", "kind: Secret"} {
			if !strings.Contains(manifest, want) {
				t.Errorf("manifest lacks %q", want)
			}
		}
		c.EnsureNamespace(t, "keyhole-system") // a server-side dry run does not create the namespace
		out, err := c.KubectlInput(t, strings.NewReader(manifest), "apply", "--dry-run=server", "-f", "-")
		if err != nil {
			t.Fatalf("dry run: %v", err)
		}
		if n := strings.Count(out, "(server dry run)"); n != 7 {
			t.Fatalf("dry run accepted %d of 7 objects:\n%s", n, out)
		}
	})
	// Install it for real: the ServiceAccount and RBAC are what the agents
	// run with. (The Deployment stays unscheduled: no controllers run here.)
	c.Apply(t, manifest)
	saDir := filepath.Join(g.dir, "serviceaccount") // what a pod has mounted
	if err := os.Mkdir(saDir, 0o700); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(saDir, "token")
	writeFile(t, tokenFile, c.ServiceAccountToken(t, "keyhole-system", "keyhole-agent"))
	s.saToken = tokenFile
	saKubeconfig := c.ServiceAccountKubeconfig(t, "keyhole-system", "keyhole-agent")
	// Agent a1 runs as in a pod (in-cluster config from the pod's files);
	// agent a2 outside the cluster (a kubeconfig).
	s.saKubeconfig = saKubeconfig
	s.agents["a1"] = g.startAgent(agentOpts{cluster: "e2e", id: "a1", secretFile: secretFile, inCluster: true, tokenFile: tokenFile, c: c, extra: drainFast})
	s.agents["a2"] = g.startAgent(agentOpts{cluster: "e2e", id: "a2", secretFile: secretFile, kubeconfig: saKubeconfig, extra: drainFast})

	s.alice = g.kubeconfig("alice", "devs")
	s.aliceTok = tokenOf(t, s.alice)
	s.bob = g.kubeconfig("bob")
	c.Apply(t, `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: alice-admin}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: bob-view}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}]
`+readerRole)
	g.waitAgents(s.aliceTok, "e2e", "a1", "a2")
	if log := s.agents["a1"].logText(); !strings.Contains(log, `"api_source":"in-cluster"`) {
		t.Fatalf("agent a1 did not use the in-cluster configuration:\n%s", s.agents["a1"].tail(10))
	}

	// A watch that stays open for the whole suite (minutes) and must still
	// deliver an event at the end.
	longWatch := s.startLongWatch(t)

	t.Run("plain API verbs", s.testPlainVerbs)
	t.Run("list 5000 configmaps", s.testBigList)
	t.Run("watch events arrive as fast as direct", s.testWatchLatency)
	t.Run("logs -f streams lines", s.testLogsFollow)
	for _, gen := range []struct {
		name string
		env  []string
	}{
		{"websocket", nil},
		{"spdy", []string{"KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false", "KUBECTL_PORT_FORWARD_WEBSOCKETS=false"}},
	} {
		t.Run("streams over "+gen.name, func(t *testing.T) { s.testStreams(t, gen.env) })
	}
	t.Run("RBAC of the cluster decides", s.testIdentity)
	t.Run("errors are Status objects kubectl prints", s.testErrors)
	t.Run("bad input leaves everything working", s.testBadInput)
	t.Run("streams spread over agents", s.testSpread)
	// Before any agent is killed: a dead agent costs the streams it carried,
	// and the long watch may be one of them.
	longWatch(t)
	t.Run("SIGTERM drains an agent: streams in flight finish", s.testAgentDrain)
	t.Run("killed agent costs no later request", s.testAgentKilled)
	t.Run("vanished agent is noticed", s.testAgentVanished)
	t.Run("no secret in any log", func(t *testing.T) {
		secrets := map[string]string{"alice's token": s.aliceTok, "bob's token": tokenOf(t, s.bob),
			"the API server admin token": s.c.AdminToken, "the agent ServiceAccount token": readTrimmed(t, s.saToken),
			"the join secret": readTrimmed(t, s.secret)}
		var procs []*process
		for _, p := range append([]*process{s.g.stub}, s.agents["a1"], s.agents["a2"]) {
			// The logs are complete (debug level, every request), so the
			// search is not vacuous.
			if text := p.logText(); !strings.Contains(text, `"msg":"request"`) || !strings.Contains(text, `"user":"alice"`) {
				t.Fatalf("%s log lacks its request lines:\n%s", p.name, p.tail(5))
			}
			if p != s.g.stub {
				procs = append(procs, p)
			}
		}
		s.g.noSecretsLogged(t, secrets, procs...)
	})
	t.Run("audit records", s.testAuditLog)
	t.Run("Prometheus metrics", func(t *testing.T) {
		resp, err := http.Get("http://" + s.g.metricsAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		out := readAll(resp)
		resp.Body.Close()
		for _, want := range []string{`keyhole_requests_total{cluster="e2e",code="200"}`, `keyhole_requests_total{cluster="e2e",code="101"}`,
			`keyhole_cluster_ready{cluster="e2e"} 1`, `keyhole_agents_connected{cluster="e2e"} 2`, `keyhole_bytes_total{cluster="e2e",direction="out"}`,
			`keyhole_agent_connects_total{cluster="e2e"}`} {
			if !strings.Contains(out, want) {
				t.Errorf("metrics lack %s", want)
			}
		}
	})
}

func readTrimmed(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(strings.TrimSpace(string(b))) < 16 {
		t.Fatalf("%s: %v", path, err)
	}
	return strings.TrimSpace(string(b))
}

// readerRole stands in for "view", which is aggregated by a controller that
// does not run in the test control plane.
const readerRole = `---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: e2e-reader}
rules:
- apiGroups: [""]
  resources: [configmaps, pods, namespaces]
  verbs: [get, list, watch]
`

func (s *suite) startLongWatch(t *testing.T) func(*testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	s.c.EnsureNamespace(t, "longwatch")
	cmd := s.c.KubectlCmdAs(ctx, s.alice, "get", "configmaps", "-n", "longwatch", "--watch-only", "-o", "name")
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	lines := readLines(out)
	started := time.Now()
	time.Sleep(2 * time.Second) // let the watch be established
	return func(t *testing.T) {
		t.Run("a watch open since the start still delivers", func(t *testing.T) {
			_, err := s.c.Client().CoreV1().ConfigMaps("longwatch").Create(context.Background(),
				&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "at-the-end"}}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			l := nextLine(t, lines, 30*time.Second, "long watch")
			if l.text != "configmap/at-the-end" {
				t.Fatalf("got %q", l.text)
			}
			t.Logf("watch open for %v delivered an event %v after creation", time.Since(started).Round(time.Second), time.Since(l.at))
		})
	}
}

func (s *suite) k(t *testing.T, args ...string) string {
	t.Helper()
	out, err := s.g.kubectl(s.alice, nil, nil, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return out
}

func (s *suite) testPlainVerbs(t *testing.T) {
	out := s.k(t, "get", "namespaces", "-o", "name")
	if !strings.Contains(out, "namespace/kube-system") {
		t.Fatalf("get ns: %s", out)
	}
	s.k(t, "create", "configmap", "plain", "--from-literal=a=1")
	s.k(t, "patch", "configmap", "plain", "-p", `{"data":{"b":"2"}}`)
	if out := s.k(t, "get", "configmap", "plain", "-o", "jsonpath={.data.a}{.data.b}"); out != "12" {
		t.Fatalf("after patch: %q", out)
	}
	cm := "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: applied}\ndata: {x: \"%d\"}\n"
	for i, mode := range [][]string{{"apply", "-f", "-"}, {"apply", "--server-side", "-f", "-"}, {"apply", "--server-side", "--force-conflicts", "-f", "-"}} {
		if out, err := s.g.kubectl(s.alice, nil, strings.NewReader(fmt.Sprintf(cm, i)), mode...); err != nil {
			t.Fatalf("%v: %v %s", mode, err, out)
		}
		if got := s.k(t, "get", "configmap", "applied", "-o", "jsonpath={.data.x}"); got != fmt.Sprint(i) {
			t.Fatalf("%v: x=%q", mode, got)
		}
	}
	s.k(t, "delete", "configmap", "plain", "applied")
	if _, err := s.g.kubectl(s.alice, nil, nil, "get", "configmap", "plain"); err == nil || !strings.Contains(err.Error(), `configmaps "plain" not found`) {
		t.Fatalf("after delete: %v", err)
	}
}

func (s *suite) testBigList(t *testing.T) {
	const n = 5000
	fillConfigMaps(t, s.c, "bulk", n)
	for _, chunk := range []string{"--chunk-size=500", "--chunk-size=0"} {
		start := time.Now()
		out := s.k(t, "get", "configmaps", "-n", "bulk", "--no-headers", "-o", "name", chunk)
		if got := strings.Count(out, "configmap/cm-"); got != n {
			t.Fatalf("%s: %d items", chunk, got)
		}
		t.Logf("kubectl get 5000 configmaps %s through the gateway: %v", chunk, time.Since(start).Round(time.Millisecond))
	}
}

func (s *suite) testWatchLatency(t *testing.T) {
	s.c.EnsureNamespace(t, "watchns")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := func(kc string) (<-chan timedLine, func()) {
		cmd := s.c.KubectlCmdAs(ctx, kc, "get", "configmaps", "-n", "watchns", "--watch-only", "-o", "name")
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return readLines(out), func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	}
	direct, stopD := start(s.c.AdminKubeconfig)
	defer stopD()
	via, stopV := start(s.alice)
	defer stopV()
	// Both watches are established once a warm-up event reached both.
	create := func(name string) {
		_, err := s.c.Client().CoreV1().ConfigMaps("watchns").Create(context.Background(), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	var warm timedLine
	waitFor(t, 30*time.Second, "both watches to see a warm-up event", func() bool {
		create(fmt.Sprintf("warm-%d", time.Now().UnixNano()))
		select {
		case warm = <-via:
			return true
		case <-time.After(500 * time.Millisecond):
			return false
		}
	})
	_ = warm
	drain := func(ch <-chan timedLine) {
		for {
			select {
			case <-ch:
			case <-time.After(300 * time.Millisecond):
				return
			}
		}
	}
	drain(direct)
	drain(via)
	var deltas []time.Duration
	for i := 0; i < 20; i++ {
		name := fmt.Sprintf("ev-%02d", i)
		create(name)
		d := nextLine(t, direct, 10*time.Second, "direct watch")
		v := nextLine(t, via, 10*time.Second, "gateway watch")
		if d.text != "configmap/"+name || v.text != "configmap/"+name {
			t.Fatalf("events %q / %q", d.text, v.text)
		}
		deltas = append(deltas, v.at.Sub(d.at))
		time.Sleep(50 * time.Millisecond)
	}
	sort.Slice(deltas, func(i, j int) bool { return deltas[i] < deltas[j] })
	t.Logf("gateway watch minus direct watch, 20 events: median %v, max %v", deltas[len(deltas)/2], deltas[len(deltas)-1])
	// Nothing buffers events: each arrives with the direct one, not with the
	// next event or a flush interval (events are 50 ms apart).
	if deltas[len(deltas)-1] > 40*time.Millisecond {
		t.Fatalf("an event arrived %v after the direct watch", deltas[len(deltas)-1])
	}
}

func (s *suite) testLogsFollow(t *testing.T) {
	s.c.CreatePod(t, "default", "logger", nil)
	s.c.AppendLog(t, "default", "logger", "main", "first")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := s.c.KubectlCmdAs(ctx, s.alice, "logs", "-f", "logger")
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = cmd.Wait() }()
	lines := readLines(out)
	if l := nextLine(t, lines, 30*time.Second, "logs -f"); l.text != "first" {
		t.Fatalf("got %q", l.text)
	}
	var worst time.Duration
	for i := 0; i < 10; i++ {
		line := fmt.Sprintf("line %d", i)
		at := time.Now()
		s.c.AppendLog(t, "default", "logger", "main", line)
		l := nextLine(t, lines, 10*time.Second, "logs -f")
		if l.text != line {
			t.Fatalf("got %q want %q", l.text, line)
		}
		if d := l.at.Sub(at); d > worst {
			worst = d
		}
	}
	t.Logf("logs -f: worst time from write to kubectl output over 10 lines: %v (the node simulator polls its files every ~20 ms)", worst)
	if worst > 2*time.Second {
		t.Fatalf("a log line took %v", worst)
	}
}

func (s *suite) testIdentity(t *testing.T) {
	s.k(t, "create", "configmap", "guarded")
	defer s.k(t, "delete", "configmap", "guarded")
	if out, err := s.g.kubectl(s.bob, nil, nil, "get", "configmap", "guarded", "-o", "name"); err != nil || out != "configmap/guarded\n" {
		t.Fatalf("bob (view) cannot read: %v %q", err, out)
	}
	_, err := s.g.kubectl(s.bob, nil, nil, "delete", "configmap", "guarded")
	want := `Error from server (Forbidden): configmaps "guarded" is forbidden: User "bob" cannot delete resource "configmaps" in API group "" in the namespace "default"`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("bob's delete: want the API server's own Forbidden, got %v", err)
	}
	// kubectl --as: alice (cluster-admin, so she may impersonate) acts as
	// bob with bob's rights; bob may not impersonate anyone.
	if out, err := s.g.kubectl(s.alice, nil, nil, "--as", "bob", "get", "configmap", "guarded", "-o", "name"); err != nil || out != "configmap/guarded\n" {
		t.Fatalf("alice --as bob get: %v %q", err, out)
	}
	_, err = s.g.kubectl(s.alice, nil, nil, "--as", "bob", "delete", "configmap", "guarded")
	if err == nil || !strings.Contains(err.Error(), `User "bob" cannot delete resource "configmaps"`) {
		t.Fatalf("alice --as bob delete: want bob's Forbidden, got %v", err)
	}
	if out, err := s.g.kubectl(s.alice, nil, nil, "--as", "bob", "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"); err != nil || out != "bob" {
		t.Fatalf("alice --as bob auth whoami: %v %q", err, out)
	}
	_, err = s.g.kubectl(s.bob, nil, nil, "--as", "alice", "get", "configmaps")
	if err == nil || !strings.Contains(err.Error(), `users "alice" is forbidden: User "bob" cannot impersonate resource "users"`) {
		t.Fatalf("bob --as alice: %v", err)
	}
	_, err = s.g.kubectl(s.alice, nil, nil, "get", "pods", "--as-group", "system:masters", "--as", "bob")
	if err == nil || !strings.Contains(err.Error(), "refuses to impersonate") || !strings.Contains(err.Error(), "system:") {
		t.Fatalf("--as-group system:masters: %v", err)
	}
	// The caller's Authorization never reaches the cluster: register, as a
	// stub token of powerless "mallory", the API server's admin token. If
	// the stub passed Authorization on, the agent's transport would keep it
	// and the request would run as admin.
	sum := sha256.Sum256([]byte(s.c.AdminToken))
	f, err := os.OpenFile(filepath.Join(s.g.dir, "state", "tokens.yaml"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "- user: mallory\n  sha256: %s\n", hex.EncodeToString(sum[:]))
	f.Close()
	_, err = s.g.kubectl(s.alice, nil, nil, "--token", s.c.AdminToken, "get", "secrets", "-n", "kube-system")
	if err == nil || !strings.Contains(err.Error(), `User "mallory" cannot list resource "secrets"`) {
		t.Fatalf("admin token through the gateway: want mallory's Forbidden, got %v", err)
	}
}

func (s *suite) testErrors(t *testing.T) {
	// A second registered cluster with no agent: 503.
	s.g.register("lonely")
	lonely := s.g.kubeconfig("carol")
	_, err := s.g.kubectl(lonely, nil, nil, "--context", "lonely", "get", "pods")
	if err == nil || !strings.Contains(err.Error(), "ServiceUnavailable") {
		t.Fatalf("no agent: %v", err)
	}
	// kubectl's discovery prints a generic text for 503; a request whose
	// body kubectl decodes shows the Status message itself.
	resp, body := s.get(t, "/clusters/lonely/api/v1/namespaces/default/pods", tokenOf(t, lonely))
	if resp.StatusCode != 503 || !strings.Contains(body, `cluster \"lonely\" has no connected agent`) {
		t.Fatalf("no agent: %d %s", resp.StatusCode, body)
	}
	// Unknown cluster: 404.
	kc, _ := os.ReadFile(s.alice)
	unknown := filepath.Join(s.g.dir, "unknown.kubeconfig")
	writeFile(t, unknown, strings.ReplaceAll(string(kc), "/clusters/e2e", "/clusters/nope"))
	_, err = s.g.kubectl(unknown, nil, nil, "get", "pods")
	if err == nil || !strings.Contains(err.Error(), "NotFound") {
		t.Fatalf("unknown cluster: %v", err)
	}
	resp, body = s.get(t, "/clusters/nope/api", s.aliceTok)
	if resp.StatusCode != 404 || !strings.Contains(body, `cluster \"nope\" is not registered`) {
		t.Fatalf("unknown cluster: %d %s", resp.StatusCode, body)
	}
	// Unauthenticated: 401, which kubectl prints as its login error.
	bad := filepath.Join(s.g.dir, "bad.kubeconfig")
	writeFile(t, bad, strings.ReplaceAll(string(kc), s.aliceTok, "khu_not-a-token"))
	_, err = s.g.kubectl(bad, nil, nil, "get", "pods")
	if err == nil || !strings.Contains(err.Error(), "You must be logged in to the server") || !strings.Contains(err.Error(), "not valid") {
		t.Fatalf("bad token: %v", err)
	}
	// The API server's own errors pass through untouched.
	_, err = s.g.kubectl(s.alice, nil, nil, "get", "pod", "does-not-exist")
	if err == nil || !strings.Contains(err.Error(), `Error from server (NotFound): pods "does-not-exist" not found`) {
		t.Fatalf("API server's 404: %v", err)
	}
}

func (s *suite) get(t *testing.T, path, token string) (*http.Response, string) {
	return s.g.get(t, path, token)
}

func (s *suite) testSpread(t *testing.T) {
	// Eight concurrent watches hold eight streams; the stub puts new streams
	// on the agent with the fewest.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var cmds []*struct{ wait func() }
	for i := 0; i < 8; i++ {
		cmd := s.c.KubectlCmdAs(ctx, s.alice, "get", "configmaps", "-n", "watchns", "-w", "-o", "name")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, &struct{ wait func() }{func() { _ = cmd.Wait() }})
	}
	defer func() {
		cancel()
		for _, c := range cmds {
			c.wait()
		}
	}()
	var per map[string]int64
	waitFor(t, 60*time.Second, "eight watch streams spread over both agents", func() bool {
		per = map[string]int64{}
		var total int64
		for _, a := range s.g.status(s.aliceTok)["e2e"].Agents {
			per[a.ID] = a.Streams
			total += a.Streams
		}
		return total >= 8 && per["a1"] >= 3 && per["a2"] >= 3
	}, s.g.stub)
	t.Logf("open streams per agent with 8 watches: %v", per)
}

// load runs n GETs through the gateway with client-go-like behaviour
// (kubectl) and returns the failures.
func (s *suite) load(t *testing.T, n int) []error {
	var errs []error
	for i := 0; i < n; i++ {
		resp, body := s.get(t, "/clusters/e2e/api/v1/namespaces/default/configmaps?limit=1", s.aliceTok)
		if resp.StatusCode != 200 {
			errs = append(errs, fmt.Errorf("request %d: %d %s", i, resp.StatusCode, body))
		}
	}
	return errs
}

func (s *suite) testAgentKilled(t *testing.T) {
	s.agents["a1"].kill() // SIGKILL
	killedAt := time.Now()
	s.g.waitAgents(s.aliceTok, "e2e", "a2")
	t.Logf("stub noticed the SIGKILLed agent after %v", time.Since(killedAt).Round(time.Millisecond))
	if errs := s.load(t, 200); len(errs) > 0 {
		t.Fatalf("%d of 200 requests failed after the stub noticed; first: %v", len(errs), errs[0])
	}
	if out := s.k(t, "get", "ns", "-o", "name"); !strings.Contains(out, "kube-system") {
		t.Fatal(out)
	}
	// Bring a1 back for what follows.
	s.agents["a1"] = s.g.startAgent(agentOpts{cluster: "e2e", id: "a1", secretFile: s.secret, inCluster: true, tokenFile: s.saToken, c: s.c, extra: drainFast})
	s.g.waitAgents(s.aliceTok, "e2e", "a1", "a2")
}

func (s *suite) testAgentVanished(t *testing.T) {
	// SIGSTOP: the process and its socket stay, nothing answers. Only the
	// tunnel keepalive (5 s interval, 5 s timeout by default) can tell.
	a2 := s.agents["a2"]
	a2.signal(syscall.SIGSTOP)
	stopped := time.Now()
	waitFor(t, 30*time.Second, "stub to drop the frozen agent", func() bool {
		return strings.Join(s.g.agentIDs(s.aliceTok, "e2e"), ",") == "a1"
	}, s.g.stub)
	noticed := time.Since(stopped)
	t.Logf("stub noticed the frozen agent after %v", noticed.Round(time.Millisecond))
	if noticed > 12*time.Second {
		t.Fatalf("noticed after %v, want within keepalive interval + timeout", noticed)
	}
	if errs := s.load(t, 100); len(errs) > 0 {
		t.Fatalf("%d of 100 requests failed after the stub noticed; first: %v", len(errs), errs[0])
	}
	a2.signal(syscall.SIGCONT)
	s.g.waitAgents(s.aliceTok, "e2e", "a1", "a2") // it finds its session dead and reconnects
}

// testAuditLog reads the stub's audit file (audit.k8s.io/v1 Events, one
// per line): every request of the run, exec sessions as start/end pairs
// with bytes, denials with their reason.
func (s *suite) testAuditLog(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(s.g.dir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	var evs []auditv1.Event
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var ev auditv1.Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil || ev.Kind != "Event" || ev.APIVersion != "audit.k8s.io/v1" {
			t.Fatalf("not an audit Event: %q (%v)", line, err)
		}
		evs = append(evs, ev)
	}
	var execStart, execEnd, forbiddenAsBob, unauthorized, listBulk int
	for _, ev := range evs {
		switch {
		case ev.ObjectRef != nil && ev.ObjectRef.Subresource == "exec" && ev.Stage == auditv1.StageResponseStarted:
			execStart++
		case ev.ObjectRef != nil && ev.ObjectRef.Subresource == "exec" && ev.Stage == auditv1.StageResponseComplete && ev.ResponseStatus.Code == 101:
			execEnd++
			if ev.Annotations["keyhole.dev/session"] != "exec" || ev.Annotations["keyhole.dev/duration"] == "" || ev.Annotations["keyhole.dev/bytes-out"] == "0" {
				t.Errorf("exec session end record: %v", ev.Annotations)
			}
		case ev.ResponseStatus != nil && ev.ResponseStatus.Code == 401:
			unauthorized++
		case ev.ImpersonatedUser != nil && ev.ImpersonatedUser.Username == "bob" && ev.ResponseStatus.Code == 403:
			forbiddenAsBob++
		case ev.Verb == "list" && ev.ObjectRef != nil && ev.ObjectRef.Namespace == "bulk" && ev.User.Username == "alice":
			listBulk++
		}
		if ev.AuditID == "" || ev.SourceIPs[0] != "127.0.0.1" || ev.UserAgent == "" {
			t.Fatalf("record lacks id, source or user agent: %+v", ev)
		}
	}
	t.Logf("%d audit records; exec sessions %d started / %d ended; 401s %d; --as bob denied %d; bulk lists %d",
		len(evs), execStart, execEnd, unauthorized, forbiddenAsBob, listBulk)
	if execStart == 0 || execStart != execEnd || unauthorized == 0 || forbiddenAsBob == 0 || listBulk < 2 {
		t.Fatal("missing records")
	}
}

// drainFast keeps the suite quick: a watch still open on a stopping agent
// would hold the default 25 s drain.
const drainFast = "drainTimeout: 8s\n"

func (s *suite) testAgentDrain(t *testing.T) {
	const n = 6
	type result struct {
		out  string
		err  error
		took time.Duration
	}
	results := make(chan result, n)
	for i := 0; i < n; i++ {
		go func() {
			start := time.Now()
			out, err := s.g.kubectl(s.alice, nil, nil, "exec", "shell-1", "--", "sh", "-c", "sleep 2; echo done")
			results <- result{out, err, time.Since(start)}
		}()
	}
	time.Sleep(900 * time.Millisecond) // the sessions are open, on both agents
	a2 := s.agents["a2"]
	termAt := time.Now()
	a2.signal(syscall.SIGTERM)
	for i := 0; i < n; i++ {
		r := <-results
		if r.err != nil || r.out != "done\n" {
			t.Fatalf("an exec session in flight was cut by the agent's stop: %q %v", r.out, r.err)
		}
	}
	select {
	case <-a2.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("agent did not exit after draining\n%s", a2.tail(10))
	}
	if code := a2.cmd.ProcessState.ExitCode(); code != 0 || !strings.Contains(a2.logText(), "tunnel drained") {
		t.Fatalf("agent exit code %d\n%s", code, a2.tail(10))
	}
	t.Logf("SIGTERM to exit: %v, %d exec sessions in flight all finished", time.Since(termAt).Round(time.Millisecond), n)
	if errs := s.load(t, 20); len(errs) > 0 {
		t.Fatal(errs[0])
	}
	s.agents["a2"] = s.g.startAgent(agentOpts{cluster: "e2e", id: "a2", secretFile: s.secret, kubeconfig: s.saKubeconfig, extra: drainFast})
	s.g.waitAgents(s.aliceTok, "e2e", "a1", "a2")
}

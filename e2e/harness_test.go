package e2e

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
	"github.com/keyhole-dev/keyhole/proxy"
)

// build is one flavour of the stub and agent binaries, built once per run.
type build struct {
	once sync.Once
	dir  string
	err  error
}

var (
	raceBuild  build // tests: the race detector watches the real binaries
	plainBuild build // benchmarks: what users run
)

// binaries builds cmd/stub and cmd/agent with -race (tests) or without
// (benchmarks: *testing.B).
func binaries(tb testing.TB) (stub, agent string) {
	tb.Helper()
	bld, flags := &raceBuild, []string{"-race"}
	if _, ok := tb.(*testing.B); ok {
		bld, flags = &plainBuild, nil
	}
	bld.once.Do(func() {
		bld.dir, bld.err = os.MkdirTemp("", "keyhole-e2e-bin-")
		if bld.err != nil {
			return
		}
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Dir(filepath.Dir(file))
		args := append(append([]string{"build"}, flags...), "-o", bld.dir+"/", "./cmd/stub", "./cmd/agent")
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			bld.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if bld.err != nil {
		tb.Fatal(bld.err)
	}
	return filepath.Join(bld.dir, "stub"), filepath.Join(bld.dir, "agent")
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, b := range []*build{&raceBuild, &plainBuild} {
		if b.dir != "" {
			os.RemoveAll(b.dir)
		}
	}
	os.Exit(code)
}

// process is a binary we started; stopped by PID at cleanup.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func startProcess(t testing.TB, name, logPath string, env []string, bin string, args ...string) *process {
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(p.done) }()
	t.Cleanup(func() { p.stop() })
	return p
}

func (p *process) signal(s syscall.Signal) { _ = p.cmd.Process.Signal(s) }

func (p *process) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.signal(syscall.SIGCONT)
	p.signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *process) kill() { _ = p.cmd.Process.Kill(); <-p.done }

func (p *process) logText() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

func (p *process) tail(n int) string {
	lines := strings.Split(strings.TrimRight(p.logText(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// gateway is a stub with its state, plus agents and users.
type gateway struct {
	t        testing.TB
	c        *kubetest.Cluster
	dir      string
	cfg      string
	url      string
	stub     *process
	stubBin  string
	agentBin string
	caPEM    []byte
	// publicURL is the config's publicURL: url, or with gatewayOptions.publicHost
	// the name a browser reaches the stub by.
	publicURL string
	http      *http.Client
	base      string // the config as first written (see setConfig)
	// metricsAddr serves the stub's Prometheus metrics.
	metricsAddr string
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startGateway(t testing.TB, c *kubetest.Cluster) *gateway {
	t.Helper()
	return startGatewayWith(t, c, gatewayOptions{})
}

// gatewayOptions are the choices of startGatewayWith.
type gatewayOptions struct {
	// publicHost, when set, is the host of the stub's publicURL (the port
	// stays the listening one), e.g. a name only a browser maps to
	// 127.0.0.1; agents, stub commands and g.http keep using g.url
	// (https://127.0.0.1:PORT), which the stub's certificate also names.
	publicHost string
	// extra is more YAML for the config as first written (so setConfig
	// keeps it).
	extra string
}

func startGatewayWith(t testing.TB, c *kubetest.Cluster, o gatewayOptions) *gateway {
	t.Helper()
	stubBin, agentBin := binaries(t)
	g := &gateway{t: t, c: c, dir: t.TempDir(), stubBin: stubBin, agentBin: agentBin}
	port := freePort(t)
	g.url = fmt.Sprintf("https://127.0.0.1:%d", port)
	g.publicURL = g.url
	if o.publicHost != "" {
		g.publicURL = fmt.Sprintf("https://%s:%d", o.publicHost, port)
	}
	g.metricsAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	g.cfg = filepath.Join(g.dir, "stub.yaml")
	level := "debug" // tests read the logs; benchmarks run as users do
	if _, ok := t.(*testing.B); ok {
		level = "info"
	}
	writeFile(t, g.cfg, fmt.Sprintf(`apiVersion: keyhole.dev/v1alpha1
kind: StubConfig
listen: 127.0.0.1:%d
publicURL: %s
stateDir: %s
log: {level: %s}
audit: {path: %s}
metrics: {listen: %s}
`, port, g.publicURL, filepath.Join(g.dir, "state"), level, filepath.Join(g.dir, "audit.log"), g.metricsAddr)+o.extra)
	g.stub = startProcess(t, "stub", filepath.Join(g.dir, "stub.log"), nil, stubBin, "serve", "--config", g.cfg)
	ca := filepath.Join(g.dir, "state", "tls", "ca.crt")
	waitFor(t, 60*time.Second, "stub to listen", func() bool {
		b, err := os.ReadFile(ca)
		if err != nil {
			return false
		}
		g.caPEM = b
		c, err := net.DialTimeout("tcp", strings.TrimPrefix(g.url, "https://"), time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, g.stub)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(g.caPEM)
	g.http = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}, Timeout: 60 * time.Second}
	t.Cleanup(g.http.CloseIdleConnections)
	return g
}

func writeFile(t testing.TB, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t testing.TB, timeout time.Duration, what string, ok func() bool, logs ...*process) {
	t.Helper()
	waitEvery(t, timeout, 20*time.Millisecond, what, ok, logs...)
}

// waitEvery asks ok every interval until it holds, failing t with the
// tails of logs after timeout.
func waitEvery(t testing.TB, timeout, interval time.Duration, what string, ok func() bool, logs ...*process) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, p := range logs {
				fmt.Fprintf(&b, "\n--- %s log:\n%s", p.name, p.tail(40))
			}
			t.Fatalf("timed out after %v waiting for %s%s", timeout, what, b.String())
		}
		time.Sleep(interval)
	}
}

// stubCmd runs a stub admin command and returns stdout.
func (g *gateway) stubCmd(args ...string) string {
	g.t.Helper()
	cmd := exec.Command(g.stubBin, append(args, "--config", g.cfg)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		g.t.Fatalf("stub %v: %v\n%s", args, err, errb.String())
	}
	return out.String()
}

// register registers cluster id and returns the agent manifest and the
// path of the join secret file.
func (g *gateway) register(id string, labels ...string) (manifest, secretFile string) {
	g.t.Helper()
	var args []string
	for _, l := range labels {
		args = append(args, "--label", l)
	}
	return g.registerWith(id, args...)
}

// registerWith is register with more `stub register` arguments.
func (g *gateway) registerWith(id string, extra ...string) (manifest, secretFile string) {
	g.t.Helper()
	secretFile = filepath.Join(g.dir, id+".secret")
	args := append([]string{"register", id, "--secret-out", secretFile, "--image", "keyhole-agent:e2e"}, extra...)
	return g.stubCmd(args...), secretFile
}

// kubeconfig mints a token for user and returns the kubeconfig path.
func (g *gateway) kubeconfig(user string, groups ...string) string {
	g.t.Helper()
	args := []string{"kubeconfig", "--user", user}
	for _, gr := range groups {
		args = append(args, "--group", gr)
	}
	path := filepath.Join(g.dir, user+".kubeconfig")
	writeFile(g.t, path, g.stubCmd(args...))
	return path
}

// tokenOf reads the token out of a kubeconfig made by kubeconfig().
func tokenOf(t testing.TB, kubeconfig string) string {
	b, err := os.ReadFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "token: "); ok {
			return v
		}
	}
	t.Fatal("no token in kubeconfig")
	return ""
}

type agentOpts struct {
	cluster, id, secretFile string
	kubeconfig              string            // out-of-cluster mode
	inCluster               bool              // as in a pod: rest.InClusterConfig, token file re-read
	apiURL, tokenFile       string            // in-cluster-like mode (token file re-read)
	apiProxyURL             string            // apiServer.proxyURL
	extra                   string            // more YAML
	logLevel                string            // default debug
	env                     []string          // e.g. HTTPS_PROXY
	c                       *kubetest.Cluster // whose CA for apiServer mode
	// hosts is bound over /etc/hosts in the agent's own mount namespace:
	// names only the agent resolves (the host is untouched).
	hosts string
}

func (g *gateway) startAgent(o agentOpts) *process {
	g.t.Helper()
	caFile := filepath.Join(g.dir, "stub-ca.crt")
	writeFile(g.t, caFile, string(g.caPEM))
	cfg := fmt.Sprintf(`apiVersion: keyhole.dev/v1alpha1
kind: AgentConfig
stubURL: %s
cluster: %s
agentID: %s
joinSecretFile: %s
stubCAFile: %s
log: {level: %s}
`, g.url, o.cluster, o.id, o.secretFile, caFile, cmp.Or(o.logLevel, "debug"))
	switch {
	case o.inCluster:
	case o.kubeconfig != "":
		cfg += "kubeconfig: " + o.kubeconfig + "\n"
	default:
		cfg += fmt.Sprintf("apiServer: {url: %s, tokenFile: %s, caFile: %s, proxyURL: %q}\n", o.apiURL, o.tokenFile, o.c.CAFile, o.apiProxyURL)
	}
	cfg += o.extra
	path := filepath.Join(g.dir, "agent-"+o.id+".yaml")
	writeFile(g.t, path, cfg)
	logPath := filepath.Join(g.dir, "agent-"+o.id+".log")
	hosts := ""
	if o.hosts != "" {
		hosts = "mount --bind " + o.hosts + " /etc/hosts && "
	}
	if !o.inCluster && hosts != "" {
		return startProcess(g.t, "agent "+o.id, logPath, o.env, "unshare", "--mount", "--", "sh", "-c",
			hosts+"exec "+g.agentBin+" --config "+path)
	}
	if !o.inCluster {
		return startProcess(g.t, "agent "+o.id, logPath, o.env, g.agentBin, "--config", path)
	}
	// In-cluster, for real: client-go's rest.InClusterConfig reads
	// KUBERNETES_SERVICE_HOST/PORT and the fixed paths
	// /var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt}. The agent
	// gets its own mount namespace with a tmpfs over /run and the directory
	// of o.tokenFile bound there, so the host is untouched. unshare and sh
	// exec, so the PID signalled is the agent's.
	saDir := filepath.Dir(o.tokenFile)
	if filepath.Base(o.tokenFile) != "token" {
		g.t.Fatalf("in-cluster agent: token file %s must be named \"token\"", o.tokenFile)
	}
	writeFile(g.t, filepath.Join(saDir, "ca.crt"), string(o.c.CAData))
	writeFile(g.t, filepath.Join(saDir, "namespace"), "keyhole-system")
	u, err := url.Parse(o.c.URL)
	if err != nil {
		g.t.Fatal(err)
	}
	env := append([]string{"KUBERNETES_SERVICE_HOST=" + u.Hostname(), "KUBERNETES_SERVICE_PORT=" + u.Port()}, o.env...)
	script := hosts + fmt.Sprintf("mount -t tmpfs tmpfs /run && mkdir -p %[1]s && mount --bind %[2]s %[1]s && exec %[3]s --config %[4]s",
		"/run/secrets/kubernetes.io/serviceaccount", saDir, g.agentBin, path)
	return startProcess(g.t, "agent "+o.id, logPath, env, "unshare", "--mount", "--", "sh", "-c", script)
}

// status asks the stub which agents are connected.
func (g *gateway) status(token string) map[string]proxy.ClusterStatus {
	g.t.Helper()
	req, _ := http.NewRequest("GET", g.url+proxy.ClustersPath, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := g.http.Do(req)
	if err != nil {
		g.t.Fatal(err)
	}
	defer resp.Body.Close()
	var list []proxy.ClusterStatus
	body, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(body, &list); err != nil {
		g.t.Fatalf("%s: %d %s (%v)", proxy.ClustersPath, resp.StatusCode, body, err)
	}
	out := map[string]proxy.ClusterStatus{}
	for _, c := range list {
		out[c.ID] = c
	}
	return out
}

func (g *gateway) agentIDs(token, cluster string) []string {
	var ids []string
	for _, a := range g.status(token)[cluster].Agents {
		ids = append(ids, a.ID)
	}
	return ids
}

func (g *gateway) waitAgents(token, cluster string, want ...string) {
	g.t.Helper()
	waitFor(g.t, 60*time.Second, fmt.Sprintf("agents %v of %s", want, cluster), func() bool {
		return strings.Join(g.agentIDs(token, cluster), ",") == strings.Join(want, ",")
	}, g.stub)
}

// kubectl runs kubectl with a gateway kubeconfig and extra env.
func (g *gateway) kubectl(kc string, env []string, stdin io.Reader, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), kubetest.KubectlTimeout)
	defer cancel()
	cmd := g.c.KubectlCmdAs(ctx, kc, args...)
	cmd.Env = append(cmd.Env, env...)
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), &kubetest.KubectlError{Args: args, Err: err, Stderr: errb.String()}
	}
	return out.String(), nil
}

// lineReader delivers a command's output lines with their arrival times.
type timedLine struct {
	text string
	at   time.Time
}

func readLines(r io.Reader) <-chan timedLine {
	ch := make(chan timedLine, 1024)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			ch <- timedLine{sc.Text(), time.Now()}
		}
	}()
	return ch
}

func nextLine(t testing.TB, ch <-chan timedLine, timeout time.Duration, what string) timedLine {
	t.Helper()
	select {
	case l, ok := <-ch:
		if !ok {
			t.Fatalf("%s: stream ended", what)
		}
		return l
	case <-time.After(timeout):
		t.Fatalf("%s: nothing within %v", what, timeout)
	}
	return timedLine{}
}

func readAll(resp *http.Response) string {
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// install registers cluster id, applies its generated manifest (so the
// agent's ServiceAccount and RBAC exist) and writes that ServiceAccount's
// token to a file, as a pod would have it. It returns the join secret file
// and the token file.
func (g *gateway) install(id string, labels ...string) (secretFile, tokenFile string) {
	g.t.Helper()
	var args []string
	for _, l := range labels {
		args = append(args, "--label", l)
	}
	return g.installWith(id, args...)
}

// installWith is install with more `stub register` arguments.
func (g *gateway) installWith(id string, args ...string) (secretFile, tokenFile string) {
	g.t.Helper()
	manifest, secretFile := g.registerWith(id, args...)
	g.c.Apply(g.t, manifest)
	tokenFile = filepath.Join(g.dir, "sa-token-"+id)
	writeFile(g.t, tokenFile, g.c.ServiceAccountToken(g.t, "keyhole-system", "keyhole-agent"))
	return secretFile, tokenFile
}

// user mints a kubeconfig for name and binds name to clusterRole in the
// cluster; it returns the kubeconfig and its token.
func (g *gateway) user(name, clusterRole string) (kubeconfig, token string) {
	g.t.Helper()
	kubeconfig = g.kubeconfig(name)
	g.bind(name, clusterRole)
	return kubeconfig, tokenOf(g.t, kubeconfig)
}

// bind binds user name to clusterRole in the cluster.
func (g *gateway) bind(name, clusterRole string) {
	g.t.Helper()
	extra := ""
	if clusterRole == "e2e-reader" {
		extra = readerRole
	}
	g.c.Apply(g.t, fmt.Sprintf(`apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: %s-%s}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: %s}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: %s}]
`, name, clusterRole, clusterRole, name)+extra)
}

// relay copies between a and b until both directions end; wg tracks its
// two goroutines.
// tcpRelay forwards each TCP connection it accepts to the address pick
// returns (pick is called from one goroutine only). It stands for a network
// path or a load balancer that a test breaks: pause(true) closes every
// connection and refuses new ones until pause(false); stop closes it for
// good (new connections are then refused by the kernel).
type tcpRelay struct {
	ln     net.Listener
	mu     sync.Mutex
	down   bool
	conns  []net.Conn
	routed []string // the backend of each connection
	wg     sync.WaitGroup
	once   sync.Once
}

func startTCPRelay(t testing.TB, pick func() string) *tcpRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &tcpRelay{ln: ln}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			front, err := ln.Accept()
			if err != nil {
				return
			}
			r.mu.Lock()
			down := r.down
			r.mu.Unlock()
			if down {
				front.Close()
				continue
			}
			to := pick()
			r.mu.Lock()
			r.routed = append(r.routed, to)
			r.mu.Unlock()
			back, err := net.DialTimeout("tcp", to, 5*time.Second)
			if err != nil {
				front.Close()
				continue
			}
			r.mu.Lock()
			r.conns = append(r.conns, front, back)
			r.mu.Unlock()
			relay(front, back, &r.wg)
		}
	}()
	t.Cleanup(r.stop)
	return r
}

// relayTo is a pick for one backend.
func relayTo(addr string) func() string { return func() string { return addr } }

func (r *tcpRelay) addr() string { return r.ln.Addr().String() }
func (r *tcpRelay) port() string { return strconv.Itoa(r.ln.Addr().(*net.TCPAddr).Port) }

func (r *tcpRelay) closeConns() {
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
}

func (r *tcpRelay) pause(down bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.down = down
	if down {
		r.closeConns()
	}
}

func (r *tcpRelay) stop() {
	r.once.Do(func() {
		r.ln.Close()
		r.mu.Lock()
		r.closeConns()
		r.mu.Unlock()
		r.wg.Wait()
	})
}

// routedTo is the backend of each connection so far.
func (r *tcpRelay) routedTo() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.routed)
}

func relay(a, b net.Conn, wg *sync.WaitGroup) {
	wg.Add(2)
	go func() { defer wg.Done(); _, _ = io.Copy(b, a); b.Close() }()
	go func() { defer wg.Done(); _, _ = io.Copy(a, b); a.Close() }()
}

// baseConfig is the stub config startGateway wrote; setConfig replaces the
// file with it plus extra YAML, as an operator's edit would.
func (g *gateway) setConfig(extra string) {
	g.t.Helper()
	if g.base == "" {
		b, err := os.ReadFile(g.cfg)
		if err != nil {
			g.t.Fatal(err)
		}
		g.base = string(b)
	}
	if err := statefileWrite(g.cfg, g.base+extra); err != nil {
		g.t.Fatal(err)
	}
}

// statefileWrite replaces path atomically, so the stub never reads half a file.
func statefileWrite(path, body string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// jwtShape matches any JWT (base64url JSON header and payload).
var jwtShape = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.`)

// noSecretsLogged fails if the stub's log or audit file, or any of the given
// processes' logs, contains one of the secrets.
func (g *gateway) noSecretsLogged(t *testing.T, secrets map[string]string, procs ...*process) {
	t.Helper()
	texts := map[string]string{"stub log": g.stub.logText()}
	if b, err := os.ReadFile(filepath.Join(g.dir, "audit.log")); err == nil {
		texts["audit log"] = string(b)
	}
	for _, p := range procs {
		texts[p.name+" log"] = p.logText()
	}
	for where, text := range texts {
		if m := jwtShape.FindString(text); m != "" {
			t.Errorf("the %s contains a JWT: %.40s…", where, m)
		}
		for what, v := range secrets {
			if v != "" && strings.Contains(text, v) {
				t.Errorf("the %s contains %s", where, what)
			}
		}
	}
}

// get sends GET path to the stub with token and returns the response and
// its body.
func (g *gateway) get(t *testing.T, path, token string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", g.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := g.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	return resp, readAll(resp)
}

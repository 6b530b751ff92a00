// Package kubetest runs a real Kubernetes control plane for tests: etcd,
// kube-apiserver v1.33 and nodesim (a node simulator that answers exec,
// attach, port-forward and logs like a kubelet; see hack/tools/nodesim).
//
// The binaries come from the directory named by the environment variable
// KEYHOLE_TESTBIN; build them once with
//
//	export KEYHOLE_TESTBIN="$(hack/testbin.sh)"
//
// Everything listens on 127.0.0.1 only. kubectl must be on PATH.
package kubetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/keyhole-dev/keyhole/internal/testbed"
)

// EnvTestBin names the directory holding kube-apiserver, etcd and nodesim.
const EnvTestBin = testbed.EnvTestBin

// PortAnnotationPrefix + "<port>" on a pod makes nodesim forward that pod port
// to the TCP address in the annotation's value (e.g. "127.0.0.1:23456");
// without it pod port P goes to 127.0.0.1:P.
const PortAnnotationPrefix = "nodesim.keyhole.dev/port-"

// AdminUser is the user of AdminKubeconfig / AdminToken (group system:masters).
const AdminUser = "admin"

// Timeouts. The machine may be small and loaded; these bound every wait.
var (
	StartTimeout   = 120 * time.Second // per component
	KubectlTimeout = 90 * time.Second  // per Kubectl call
	PodTimeout     = 60 * time.Second  // CreatePod
)

// Cluster is a running control plane. Fields are read-only.
type Cluster struct {
	URL             string // https://127.0.0.1:PORT of kube-apiserver
	CAFile          string // CA that signed the apiserver serving cert (and all other test certs)
	CAData          []byte
	AdminKubeconfig string // kubeconfig for user "admin" (group system:masters), token auth
	AdminToken      string // bearer token of AdminUser
	KubeSystemUID   string // UID of the kube-system namespace
	NodeName        string // "sim-node"
	NodeAddress     string // 127.0.0.1: the node's InternalIP and every pod's IP
	KubeletPort     int    // nodesim's HTTPS port (the kubelet endpoint)
	Dir             string // working directory (t.TempDir()); component logs are *.log here
	LogDir          string // nodesim container logs: <LogDir>/<ns>_<pod>_<container>.log (see AppendLog)
	KubectlPath     string // kubectl found on PATH

	// Files for components that want to talk to the kubelet like the API server does.
	KubeletClientCertFile, KubeletClientKeyFile string

	ca     *testbed.CA
	rest   *rest.Config
	client kubernetes.Interface

	mu     sync.Mutex
	tokens map[string]string // "ns/name" -> service-account token
}

// Start brings up etcd, kube-apiserver and nodesim on free 127.0.0.1 ports,
// in t.TempDir(), and stops them (by PID) in t.Cleanup. Binaries come from
// the directory in $KEYHOLE_TESTBIN; if it is unset or a binary is missing,
// the test fails telling to run hack/testbin.sh. apiServerArgs are added
// to kube-apiserver's flags (e.g. --authentication-config=FILE).
func Start(t testing.TB, apiServerArgs ...string) *Cluster {
	t.Helper()
	bin := testbed.TestBin(t, "kubetest", "etcd", "kube-apiserver", "nodesim")
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatalf("kubetest: kubectl not found on PATH: %v", err)
	}

	dir := t.TempDir()
	c := &Cluster{
		Dir:         dir,
		NodeName:    "sim-node",
		NodeAddress: "127.0.0.1",
		LogDir:      filepath.Join(dir, "nodesim", "logs"),
		KubectlPath: kubectl,
		tokens:      map[string]string{},
	}
	var procs []*testbed.Proc
	t.Cleanup(func() {
		// Stop in reverse order: nodesim, kube-apiserver, etcd.
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].Stop(10 * time.Second)
		}
		if t.Failed() {
			for _, p := range procs {
				t.Logf("kubetest: last lines of %s (%s):\n%s", p.Name, p.LogPath, testbed.Tail(p.LogPath, 60))
			}
		}
	})
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("kubetest: "+format, args...) // the cleanup above prints the logs' tails
	}

	if err := c.writePKI(); err != nil {
		t.Fatalf("kubetest: PKI: %v", err)
	}

	// etcd
	var etcdURL string
	for attempt := 1; ; attempt++ {
		clientPort, peerPort := testbed.FreePort(t, "kubetest"), testbed.FreePort(t, "kubetest")
		etcdURL = "http://127.0.0.1:" + strconv.Itoa(clientPort)
		peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
		p := startProc(t, "etcd", filepath.Join(dir, "etcd.log"), filepath.Join(bin, "etcd"),
			"--name=kubetest",
			"--data-dir="+filepath.Join(dir, "etcd-data"),
			"--listen-client-urls="+etcdURL,
			"--advertise-client-urls="+etcdURL,
			"--listen-peer-urls="+peerURL,
			"--initial-advertise-peer-urls="+peerURL,
			"--initial-cluster=kubetest="+peerURL,
			"--initial-cluster-state=new",
			"--logger=zap", "--log-outputs=stderr",
		)
		procs = append(procs, p)
		err := testbed.WaitFor(p, StartTimeout, func() bool { return testbed.HTTPOK(nil, etcdURL+"/health", "", `"health":"true"`) })
		if err == nil {
			break
		}
		if p.Exited() && attempt < 5 && strings.Contains(testbed.Tail(p.LogPath, 50), "address already in use") {
			t.Logf("kubetest: etcd port clash, retrying")
			procs = procs[:len(procs)-1]
			_ = os.RemoveAll(filepath.Join(dir, "etcd-data"))
			continue
		}
		fail("etcd did not become healthy: %v", err)
	}

	// kube-apiserver
	tlsClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.ca.Pool()}}}
	defer tlsClient.CloseIdleConnections()
	for attempt := 1; ; attempt++ {
		port := testbed.FreePort(t, "kubetest")
		c.URL = "https://127.0.0.1:" + strconv.Itoa(port)
		f := func(n string) string { return filepath.Join(dir, "pki", n) }
		p := startProc(t, "kube-apiserver", filepath.Join(dir, "kube-apiserver.log"), filepath.Join(bin, "kube-apiserver"), append(slices.Clip(apiServerArgs),
			"--bind-address=127.0.0.1",
			"--secure-port="+strconv.Itoa(port),
			"--advertise-address=127.0.0.1",
			"--endpoint-reconciler-type=none",
			"--etcd-servers="+etcdURL,
			"--cert-dir="+f("generated"),
			"--tls-cert-file="+f("apiserver.crt"),
			"--tls-private-key-file="+f("apiserver.key"),
			"--client-ca-file="+f("ca.crt"),
			"--token-auth-file="+f("tokens.csv"),
			"--authorization-mode=Node,RBAC",
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file="+f("sa.key"),
			"--service-account-signing-key-file="+f("sa.key"),
			"--service-cluster-ip-range=10.96.0.0/16",
			"--kubelet-client-certificate="+f("kubelet-client.crt"),
			"--kubelet-client-key="+f("kubelet-client.key"),
			"--kubelet-certificate-authority="+f("ca.crt"),
			"--kubelet-preferred-address-types=InternalIP",
			"--enable-priority-and-fairness=false",
			"--profiling=false",
			"--allow-privileged=true",
			"--logging-format=text",
		)...,
		)
		procs = append(procs, p)
		err := testbed.WaitFor(p, StartTimeout, func() bool { return testbed.HTTPOK(tlsClient, c.URL+"/readyz", c.AdminToken, "ok") })
		if err == nil {
			break
		}
		if p.Exited() && attempt < 5 && strings.Contains(testbed.Tail(p.LogPath, 50), "address already in use") {
			t.Logf("kubetest: kube-apiserver port clash, retrying")
			procs = procs[:len(procs)-1]
			continue
		}
		fail("kube-apiserver did not become ready at %s/readyz: %v", c.URL, err)
	}

	c.AdminKubeconfig = filepath.Join(dir, "admin.kubeconfig")
	if err := c.writeKubeconfig(c.AdminKubeconfig, AdminUser, c.AdminToken); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	// Own dialer: client-go then does not cache the transport globally, and
	// the cleanup can close its connections (no goroutines left behind).
	conns := &connTracker{conns: map[*trackedConn]struct{}{}}
	t.Cleanup(conns.closeAll)
	c.rest = &rest.Config{
		Dial:            conns.DialContext,
		Host:            c.URL,
		BearerToken:     c.AdminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.CAData},
		QPS:             100,
		Burst:           200,
		UserAgent:       "kubetest",
	}
	c.client, err = kubernetes.NewForConfig(c.rest)
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	for _, ns := range []string{"kube-system", "default"} {
		var got *corev1.Namespace
		err := testbed.Poll(ctx, 100*time.Millisecond, func() bool {
			got, err = c.client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
			return err == nil
		})
		if err != nil {
			fail("namespace %s did not appear: %v", ns, err)
		}
		if ns == "kube-system" {
			c.KubeSystemUID = string(got.UID)
		}
	}

	// nodesim
	portFile := filepath.Join(dir, "nodesim", "port")
	if err := os.MkdirAll(filepath.Dir(portFile), 0o755); err != nil {
		t.Fatal(err)
	}
	f := func(n string) string { return filepath.Join(dir, "pki", n) }
	p := startProc(t, "nodesim", filepath.Join(dir, "nodesim.log"), filepath.Join(bin, "nodesim"),
		"--kubeconfig="+c.AdminKubeconfig,
		"--node-name="+c.NodeName,
		"--address="+c.NodeAddress,
		"--port=0",
		"--port-file="+portFile,
		"--tls-cert-file="+f("kubelet.crt"),
		"--tls-private-key-file="+f("kubelet.key"),
		"--client-ca-file="+f("ca.crt"),
		"--data-dir="+filepath.Join(dir, "nodesim"),
	)
	procs = append(procs, p)
	err = testbed.WaitFor(p, StartTimeout, func() bool {
		b, err := os.ReadFile(portFile)
		if err != nil {
			return false
		}
		c.KubeletPort, err = strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			return false
		}
		n, err := c.client.CoreV1().Nodes().Get(ctx, c.NodeName, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				return int(n.Status.DaemonEndpoints.KubeletEndpoint.Port) == c.KubeletPort
			}
		}
		return false
	})
	if err != nil {
		fail("node %s did not become Ready: %v", c.NodeName, err)
	}
	return c
}

// writePKI writes Dir/pki: one CA for everything, apiserver and kubelet
// serving certificates, the apiserver's kubelet client certificate, the
// service-account signing key and the token file.
func (c *Cluster) writePKI() error {
	pki := filepath.Join(c.Dir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return err
	}
	var err error
	c.ca, err = testbed.NewCA("kubetest-ca")
	if err != nil {
		return err
	}
	c.CAData = c.ca.CertPEM
	c.CAFile = filepath.Join(pki, "ca.crt")
	if err := writeFile(c.CAFile, c.CAData); err != nil {
		return err
	}
	lo := []net.IP{net.ParseIP("127.0.0.1")}
	type spec struct {
		name   string
		cn     string
		orgs   []string
		server bool
		ips    []net.IP
		dns    []string
	}
	for _, s := range []spec{
		{"apiserver", "kube-apiserver", nil, true, append(lo, net.ParseIP("10.96.0.1")), []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}},
		{"kubelet", "system:node:sim-node", []string{"system:nodes"}, true, lo, []string{"localhost", "sim-node"}},
		{"kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, false, nil, nil},
	} {
		certPEM, keyPEM, err := c.ca.Issue(s.cn, s.orgs, s.server, s.ips, s.dns)
		if err != nil {
			return err
		}
		if err := writeFile(filepath.Join(pki, s.name+".crt"), certPEM); err != nil {
			return err
		}
		if err := writeFile(filepath.Join(pki, s.name+".key"), keyPEM); err != nil {
			return err
		}
	}
	c.KubeletClientCertFile = filepath.Join(pki, "kubelet-client.crt")
	c.KubeletClientKeyFile = filepath.Join(pki, "kubelet-client.key")
	saKey, err := testbed.NewKeyPEM()
	if err != nil {
		return err
	}
	if err := writeFile(filepath.Join(pki, "sa.key"), saKey); err != nil {
		return err
	}
	c.AdminToken = randHex(24)
	tokens := fmt.Sprintf("%s,%s,%s,\"system:masters\"\n", c.AdminToken, AdminUser, "kubetest-admin")
	return writeFile(filepath.Join(pki, "tokens.csv"), []byte(tokens))
}

func (c *Cluster) writeKubeconfig(path, user, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: c.URL, CertificateAuthorityData: c.CAData}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = "kubetest"
	return clientcmd.WriteToFile(*cfg, path)
}

// RESTConfig returns a copy of the admin client configuration.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.rest) }

// Client returns an admin clientset.
func (c *Cluster) Client() kubernetes.Interface { return c.client }

// KubectlCmd returns an unstarted kubectl command using the admin kubeconfig,
// for long-running uses (logs -f, port-forward, attach). ctx bounds it.
func (c *Cluster) KubectlCmd(ctx context.Context, args ...string) *exec.Cmd {
	return c.KubectlCmdAs(ctx, c.AdminKubeconfig, args...)
}

// KubectlCmdAs is KubectlCmd with another kubeconfig.
func (c *Cluster) KubectlCmdAs(ctx context.Context, kubeconfig string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, c.KubectlPath, append([]string{"--kubeconfig=" + kubeconfig}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "HOME="+c.Dir) // no user kubectl cache/config
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Kubectl runs kubectl with the admin kubeconfig (bounded by KubectlTimeout).
// On failure err includes kubectl's stderr; errors.As(err, **exec.ExitError)
// gives the exit code.
func (c *Cluster) Kubectl(t testing.TB, args ...string) (stdout string, err error) {
	t.Helper()
	return c.KubectlInput(t, nil, args...)
}

// KubectlInput is Kubectl with stdin.
func (c *Cluster) KubectlInput(t testing.TB, stdin io.Reader, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), KubectlTimeout)
	defer cancel()
	cmd := c.KubectlCmd(ctx, args...)
	return runCmd(ctx, cmd, stdin)
}

// runCmd runs a prepared command (see KubectlCmd) and returns
// stdout, with stderr inside the error.
func runCmd(ctx context.Context, cmd *exec.Cmd, stdin io.Reader) (string, error) {
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errb
	err := cmd.Run()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, ctx.Err())
		}
		return out.String(), &KubectlError{Args: cmd.Args[1:], Err: err, Stderr: errb.String()}
	}
	return out.String(), nil
}

// KubectlError is the error of a failed kubectl run.
type KubectlError struct {
	Args   []string
	Err    error // usually *exec.ExitError
	Stderr string
}

func (e *KubectlError) Error() string {
	return fmt.Sprintf("kubectl %s: %v; stderr: %s", strings.Join(e.Args, " "), e.Err, strings.TrimSpace(e.Stderr))
}

func (e *KubectlError) Unwrap() error { return e.Err }

// ExitCode returns the exit code of a kubectl error (-1 if it did not exit).
func ExitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// Apply runs `kubectl apply -f -` with manifestYAML; fatal on error.
func (c *Cluster) Apply(t testing.TB, manifestYAML string) {
	t.Helper()
	if out, err := c.KubectlInput(t, strings.NewReader(manifestYAML), "apply", "-f", "-"); err != nil {
		t.Fatalf("kubetest: apply: %v\n%s", err, out)
	}
}

// EnsureNamespace creates the namespace and its "default" ServiceAccount if
// missing (no controller-manager runs here to do it).
func (c *Cluster) EnsureNamespace(t testing.TB, namespace string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), KubectlTimeout)
	defer cancel()
	_, err := c.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("kubetest: creating namespace %s: %v", namespace, err)
	}
	c.ensureSA(t, ctx, namespace, "default")
}

func (c *Cluster) ensureSA(t testing.TB, ctx context.Context, namespace, name string) {
	t.Helper()
	_, err := c.client.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("kubetest: creating serviceaccount %s/%s: %v", namespace, name, err)
	}
}

// ServiceAccountToken creates namespace and ServiceAccount if missing and
// returns a 24 h token for it (TokenRequest API). The token is created once
// per cluster and service account; later calls return the same token.
func (c *Cluster) ServiceAccountToken(t testing.TB, namespace, name string) string {
	t.Helper()
	key := namespace + "/" + name
	c.mu.Lock()
	defer c.mu.Unlock()
	if tok, ok := c.tokens[key]; ok {
		return tok
	}
	c.EnsureNamespace(t, namespace)
	ctx, cancel := context.WithTimeout(context.Background(), KubectlTimeout)
	defer cancel()
	c.ensureSA(t, ctx, namespace, name)
	exp := int64(24 * 3600)
	tr, err := c.client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: token for %s: %v", key, err)
	}
	c.tokens[key] = tr.Status.Token
	return tr.Status.Token
}

// ServiceAccountKubeconfig is ServiceAccountToken written into a kubeconfig
// (default namespace = namespace); it returns the file's path.
func (c *Cluster) ServiceAccountKubeconfig(t testing.TB, namespace, name string) string {
	t.Helper()
	tok := c.ServiceAccountToken(t, namespace, name)
	path := filepath.Join(c.Dir, "sa-"+namespace+"-"+name+".kubeconfig")
	cfg := clientcmdapi.NewConfig()
	user := "system:serviceaccount:" + namespace + ":" + name
	cfg.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: c.URL, CertificateAuthorityData: c.CAData}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: tok}
	cfg.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: user, Namespace: namespace}
	cfg.CurrentContext = "kubetest"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	return path
}

// CreatePod creates a pod on the simulated node (spec.nodeName set; one
// container per name, default "main"; image "sim", command ["cat"], stdin
// open) and waits until it is Running and Ready. The namespace and its
// default ServiceAccount are created if missing.
func (c *Cluster) CreatePod(t testing.TB, namespace, name string, annotations map[string]string, containers ...string) {
	t.Helper()
	if len(containers) == 0 {
		containers = []string{"main"}
	}
	c.EnsureNamespace(t, namespace)
	no := false
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Annotations: annotations},
		Spec: corev1.PodSpec{
			NodeName:                     c.NodeName,
			AutomountServiceAccountToken: &no,
		},
	}
	for _, cn := range containers {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{
			Name: cn, Image: "sim", Command: []string{"cat"}, Stdin: true,
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), PodTimeout)
	defer cancel()
	if _, err := c.client.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("kubetest: creating pod %s/%s: %v", namespace, name, err)
	}
	var last *corev1.Pod
	err := testbed.Poll(ctx, 50*time.Millisecond, func() bool {
		p, err := c.client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		last = p
		if p.Status.Phase != corev1.PodRunning {
			return false
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodReady {
				return cond.Status == corev1.ConditionTrue
			}
		}
		return false
	})
	if err != nil {
		var st any
		if last != nil {
			st = last.Status
		}
		t.Fatalf("kubetest: pod %s/%s not Running within %v: %v (status %+v)\nnodesim log:\n%s", namespace, name, PodTimeout, err, st, testbed.Tail(filepath.Join(c.Dir, "nodesim.log"), 30))
	}
}

// LogPath is the file nodesim serves as the log of a container.
func (c *Cluster) LogPath(namespace, pod, container string) string {
	return filepath.Join(c.LogDir, namespace+"_"+pod+"_"+container+".log")
}

// AppendLog appends line (a newline is added if missing) to the log of that
// container, as served by `kubectl logs` (follow=true sees it within ~20 ms).
func (c *Cluster) AppendLog(t testing.TB, namespace, pod, container, line string) {
	t.Helper()
	if !strings.HasSuffix(line, "\n") {
		line += "\n"
	}
	f, err := os.OpenFile(c.LogPath(namespace, pod, container), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	defer f.Close()
	if _, err := f.WriteString(line); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
}

// --- helpers ------------------------------------------------------------

// connTracker dials TCP connections and can close all that are still open.
type connTracker struct {
	d     net.Dialer
	mu    sync.Mutex
	conns map[*trackedConn]struct{}
}

type trackedConn struct {
	net.Conn
	t *connTracker
}

func (c *trackedConn) Close() error {
	c.t.mu.Lock()
	delete(c.t.conns, c)
	c.t.mu.Unlock()
	return c.Conn.Close()
}

func (t *connTracker) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := t.d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: conn, t: t}
	t.mu.Lock()
	t.conns[tc] = struct{}{}
	t.mu.Unlock()
	return tc, nil
}

func (t *connTracker) closeAll() {
	t.mu.Lock()
	conns := t.conns
	t.conns = map[*trackedConn]struct{}{}
	t.mu.Unlock()
	for c := range conns {
		_ = c.Conn.Close()
	}
}

// startProc starts a component; it fails the test if it cannot.
func startProc(t testing.TB, name, logPath, path string, args ...string) *testbed.Proc {
	t.Helper()
	p, err := testbed.StartProc(name, logPath, path, args...)
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	return p
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func writeFile(path string, data []byte) error {
	return os.WriteFile(path, data, 0o600)
}

package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keyhole-dev/keyhole/certs"
	"github.com/keyhole-dev/keyhole/internal/kubetest"
	"github.com/keyhole-dev/keyhole/internal/testbed"
)

// acmeDomain is the stub's public name in the ACME tests. Pebble resolves
// it through pebble-challtestsrv's DNS, which answers 127.0.0.1, and then
// really validates the challenge against the stub.
const acmeDomain = "stub.keyhole.test"

// pebbleCA is a running Pebble ACME server with its DNS.
type pebbleCA struct {
	dirURL string // ACME directory
	caFile string // CA of Pebble's own HTTPS (the stub's tls.acme.caFile)
	mgmt   string // management API: /roots/0 is the root it issues under
	proc   *process
	client *http.Client
}

// startPebble starts pebble-challtestsrv (DNS only) and Pebble, which
// validates tls-alpn-01 on tlsPort and http-01 on httpPort of 127.0.0.1
// and issues certificates valid for validity. Pebble's renewal info (ARI)
// suggests renewing a day around two thirds of the validity, clamped to
// it: certificates shorter than a few days are due at a random time from
// their issue on, so tests that must not see renewals use a long validity.
func startPebble(t *testing.T, tlsPort, httpPort int, validity time.Duration) *pebbleCA {
	t.Helper()
	bin := testbed.TestBin(t, "e2e", "pebble", "pebble-challtestsrv")
	dir := t.TempDir()
	ca, err := testbed.NewCA("pebble-https-ca")
	if err != nil {
		t.Fatal(err)
	}
	crt, key, err := ca.Issue("127.0.0.1", nil, true, []net.IP{net.ParseIP("127.0.0.1")}, []string{"localhost"})
	if err != nil {
		t.Fatal(err)
	}
	p := &pebbleCA{caFile: filepath.Join(dir, "https-ca.crt")}
	writeFile(t, p.caFile, string(ca.CertPEM))
	writeFile(t, filepath.Join(dir, "https.crt"), string(crt))
	writeFile(t, filepath.Join(dir, "https.key"), string(key))

	dnsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	dns := startProcess(t, "challtestsrv", filepath.Join(dir, "challtestsrv.log"), nil, filepath.Join(bin, "pebble-challtestsrv"),
		"-dnsserver", dnsAddr, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
		"-management", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "")
	waitFor(t, 30*time.Second, "challtestsrv DNS", func() bool { return dialOK(dnsAddr) }, dns)

	listen, mgmt := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	conf, _ := json.Marshal(map[string]any{"pebble": map[string]any{
		"listenAddress": listen, "managementListenAddress": mgmt,
		"certificate": filepath.Join(dir, "https.crt"), "privateKey": filepath.Join(dir, "https.key"),
		"httpPort": httpPort, "tlsPort": tlsPort, "ocspResponderURL": "", "externalAccountBindingRequired": false,
		"retryAfter": map[string]int{"authz": 1, "order": 1}, "keyAlgorithm": "ecdsa",
		"profiles": map[string]any{"default": map[string]any{"description": "test", "validityPeriod": int(validity.Seconds())}},
	}})
	writeFile(t, filepath.Join(dir, "pebble.json"), string(conf))
	// No random sleeps before validation, no deliberately rejected nonces:
	// the test counts orders and should not wait for Pebble's chaos.
	env := []string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0"}
	p.proc = startProcess(t, "pebble", filepath.Join(dir, "pebble.log"), env, filepath.Join(bin, "pebble"),
		"-config", filepath.Join(dir, "pebble.json"), "-dnsserver", dnsAddr)
	p.dirURL, p.mgmt = "https://"+listen+"/dir", "https://"+mgmt
	p.client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}, Timeout: 10 * time.Second}
	t.Cleanup(p.client.CloseIdleConnections)
	waitFor(t, 30*time.Second, "pebble", func() bool {
		resp, err := p.client.Get(p.dirURL)
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == 200
	}, p.proc)
	return p
}

func dialOK(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// rootPEM is Pebble's issuing root, from its management API (a new one on
// every Pebble start).
func (p *pebbleCA) rootPEM(t *testing.T) string {
	t.Helper()
	resp, err := p.client.Get(p.mgmt + "/roots/0")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if blk, _ := pem.Decode(b); blk == nil || resp.StatusCode != 200 {
		t.Fatalf("pebble /roots/0: %d %q", resp.StatusCode, b)
	}
	return string(b)
}

// roots is a pool of rootPEM.
func (p *pebbleCA) roots(t *testing.T) *x509.CertPool {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(p.rootPEM(t))) {
		t.Fatal("pebble's root does not parse")
	}
	return pool
}

var pebbleOrderRE = regexp.MustCompile(`Added order "([^"]+)" to the db`)

// orders lists the orders Pebble created, from its log.
func (p *pebbleCA) orders() []string {
	var ids []string
	for _, m := range pebbleOrderRE.FindAllStringSubmatch(p.proc.logText(), -1) {
		ids = append(ids, m[1])
	}
	return ids
}

// served does a verifying TLS handshake with the stub at addr for
// acmeDomain and returns the leaf it serves.
func served(addr string, roots *x509.CertPool) (*x509.Certificate, error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second},
		Config: &tls.Config{ServerName: acmeDomain, RootCAs: roots, NextProtos: []string{"h2", "http/1.1"}}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.(*tls.Conn).ConnectionState().PeerCertificates[0], nil
}

// servedUnverified is served without verification (an expired certificate
// is still the one served).
func servedUnverified(addr string) (*x509.Certificate, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{ServerName: acmeDomain, InsecureSkipVerify: true})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0], nil
}

// waitServed waits until the stub at addr serves a certificate for
// acmeDomain that verifies against roots.
func waitServed(t *testing.T, addr string, roots *x509.CertPool, timeout time.Duration, logs ...*process) *x509.Certificate {
	t.Helper()
	var leaf *x509.Certificate
	waitFor(t, timeout, "a Pebble certificate on "+addr, func() bool {
		var err error
		leaf, err = served(addr, roots)
		if err != nil {
			time.Sleep(200 * time.Millisecond)
		}
		return err == nil
	}, logs...)
	return leaf
}

// acmeStub writes a stub config with tls.acme and starts the stub (with
// wrap, if given, as a command prefix).
func acmeStub(t *testing.T, name, dir string, port int, p *pebbleCA, acme, extra string, wrap ...string) *process {
	t.Helper()
	stubBin, _ := binaries(t)
	cfg := filepath.Join(dir, name+".yaml")
	writeFile(t, cfg, fmt.Sprintf(`apiVersion: keyhole.dev/v1alpha1
kind: StubConfig
listen: 127.0.0.1:%d
publicURL: https://%s:%d
stateDir: %s
log: {level: debug}
tls:
  acme: {directoryURL: %q, caFile: %q, agreeTOS: true, email: ops@keyhole.test%s}
%s`, port, acmeDomain, port, filepath.Join(dir, name+"-state"), p.dirURL, p.caFile, acme, extra))
	args := append(append([]string{}, wrap...), stubBin, "serve", "--config", cfg)
	return startProcess(t, name, filepath.Join(dir, name+".log"), nil, args[0], args[1:]...)
}

// httpsVia is an HTTPS client that reaches acmeDomain at addr, trusting
// only roots.
func httpsVia(addr string, roots *x509.CertPool) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}}
}

// TestACMETLSALPN: the stub obtains its certificate from Pebble with
// tls-alpn-01 answered on its main port, serves it, and after a restart
// loads it from the state directory instead of ordering again.
func TestACMETLSALPN(t *testing.T) {
	port := freePort(t)
	p := startPebble(t, port, freePort(t), 30*24*time.Hour)
	dir := t.TempDir()
	stub := acmeStub(t, "stub", dir, port, p, "", "")
	start := time.Now()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	roots := p.roots(t)
	leaf := waitServed(t, addr, roots, 90*time.Second, stub, p.proc)
	t.Logf("certificate from Pebble after %v: serial %x, issuer %q, %v", time.Since(start).Round(time.Millisecond),
		leaf.SerialNumber, leaf.Issuer.CommonName, leaf.DNSNames)
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != acmeDomain {
		t.Fatalf("certificate names %v", leaf.DNSNames)
	}
	// HTTP over it, HTTP/2 included (acme-tls/1 is only for validation).
	cl := httpsVia(addr, roots)
	defer cl.CloseIdleConnections()
	resp, err := cl.Get("https://" + acmeDomain + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(resp)
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Fatalf("healthz: %d %s %q", resp.StatusCode, resp.Proto, body)
	}
	// kubectl verifies it against Pebble's root too.
	rootFile := filepath.Join(dir, "pebble-root.pem")
	writeFile(t, rootFile, p.rootPEM(t))
	kubectl := exec.Command("kubectl", "--server=https://"+addr, "--tls-server-name="+acmeDomain,
		"--certificate-authority="+rootFile, "--token=unused-by-healthz", "--request-timeout=30s", "get", "--raw", "/healthz")
	kubectl.Env = append(os.Environ(), "KUBECONFIG="+filepath.Join(dir, "empty.kubeconfig"))
	if out, err := kubectl.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("kubectl get --raw /healthz with Pebble's root: %v %q", err, out)
	}
	if !strings.Contains(stub.logText(), `"challenge":"tls-alpn-01"`) {
		t.Error("the stub did not log serving the tls-alpn-01 challenge")
	}
	if o := p.orders(); len(o) != 1 {
		t.Fatalf("pebble orders %v, want 1", o)
	}
	// Restart: the certificate comes from stateDir/acme, no new order.
	stub.stop()
	stub = acmeStub(t, "stub", dir, port, p, "", "")
	again := waitServed(t, addr, roots, 60*time.Second, stub, p.proc)
	if again.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Fatalf("after restart serial %x, before %x", again.SerialNumber, leaf.SerialNumber)
	}
	if o := p.orders(); len(o) != 1 {
		t.Fatalf("pebble orders after restart %v, want 1", o)
	}
}

// TestACMEHTTP01: the stub answers http-01 on tls.acme.httpListen.
func TestACMEHTTP01(t *testing.T) {
	port, httpPort := freePort(t), freePort(t)
	p := startPebble(t, port, httpPort, 30*24*time.Hour)
	stub := acmeStub(t, "stub", t.TempDir(), port, p, fmt.Sprintf(", challenge: http-01, httpListen: \"127.0.0.1:%d\"", httpPort), "")
	leaf := waitServed(t, fmt.Sprintf("127.0.0.1:%d", port), p.roots(t), 90*time.Second, stub, p.proc)
	t.Logf("certificate via http-01: serial %x", leaf.SerialNumber)
	if !strings.Contains(p.proc.logText(), "Attempting to validate w/ HTTP") {
		t.Error("pebble did not validate over HTTP")
	}
	if o := p.orders(); len(o) != 1 {
		t.Fatalf("pebble orders %v, want 1", o)
	}
}

// TestACMEReplicas: two replicas with hub.enabled share certificates and
// locks in Secrets of the hub: exactly one order, the same certificate on
// both. Pebble validates through a small TCP balancer (as a load balancer
// would stand in front of replicas) that sends each connection to the
// replica NOT holding the order lock, so the challenge is always answered
// by the other replica, from the challenge data in the Secrets.
//
// The replicas use the ServiceAccount and Role of the stub's kustomize base
// (install/kustomize/stub), so the Role is shown to suffice.
func TestACMEReplicas(t *testing.T) {
	c := kubetest.Start(t)
	ns, hub := acmeHub(t, c)
	port1, port2 := freePort(t), freePort(t)
	addr1, addr2 := fmt.Sprintf("127.0.0.1:%d", port1), fmt.Sprintf("127.0.0.1:%d", port2)
	lockSecret := certs.LockSecretName("issue_cert_" + acmeDomain)
	lb := startTCPRelay(t, func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		to := addr1
		if s, err := c.Client().CoreV1().Secrets(ns).Get(ctx, lockSecret, metav1.GetOptions{}); err == nil &&
			strings.HasPrefix(s.Annotations[certs.AnnotationHolder], "replica1/") {
			to = addr2
		}
		return to
	})
	p := startPebble(t, lb.ln.Addr().(*net.TCPAddr).Port, freePort(t), 30*24*time.Hour)
	dir := t.TempDir()
	binaries(t) // built before the clock starts
	start := time.Now()
	// Both at once (milliseconds apart), to contend for the order lock.
	r1 := acmeStub(t, "replica1", dir, port1, p, "", hub("replica1"))
	r2 := acmeStub(t, "replica2", dir, port2, p, "", hub("replica2"))
	roots := p.roots(t)
	l1 := waitServed(t, addr1, roots, 120*time.Second, r1, r2, p.proc)
	l2 := waitServed(t, addr2, roots, 120*time.Second, r1, r2, p.proc)
	t.Logf("both replicas serve a Pebble certificate %v after start: serials %x and %x", time.Since(start).Round(time.Millisecond), l1.SerialNumber, l2.SerialNumber)
	if l1.SerialNumber.Cmp(l2.SerialNumber) != 0 {
		t.Fatalf("replicas serve different certificates: %x and %x", l1.SerialNumber, l2.SerialNumber)
	}
	if o := p.orders(); len(o) != 1 {
		t.Fatalf("pebble orders %v, want exactly 1", o)
	}
	var orderer, answerer *process
	for _, r := range []*process{r1, r2} {
		if strings.Contains(r.logText(), `"msg":"certificate obtained successfully"`) {
			orderer = r
		} else {
			answerer = r
		}
	}
	if orderer == nil || answerer == nil {
		t.Fatal("not exactly one replica logged obtaining the certificate")
	}
	t.Logf("%s ordered; pebble's validation connections went to %v", orderer.name, lb.routedTo())
	if !strings.Contains(answerer.logText(), `"distributed":true`) {
		t.Errorf("%s did not answer the challenge from the shared storage", answerer.name)
	}
	// The certificate is in Secrets, by hashed name with the key annotated.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := c.Client().CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: certs.LabelStorage + "=value"})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, s := range l.Items {
		keys = append(keys, s.Annotations[certs.AnnotationKey])
		if s.Labels[certs.LabelManagedBy] != certs.ManagedBy {
			t.Errorf("Secret %s lacks %s=%s", s.Name, certs.LabelManagedBy, certs.ManagedBy)
		}
	}
	want := fmt.Sprintf("/%s/%s.crt", acmeDomain, acmeDomain)
	if !slicesContainsSuffix(keys, want) {
		t.Fatalf("no Secret for *%s among %v", want, keys)
	}
	t.Logf("%d Secrets hold the ACME state: %v", len(keys), keys)
	// No lock is left once both are done.
	waitFor(t, 30*time.Second, "lock Secrets to be released", func() bool {
		l, err := c.Client().CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: certs.LabelStorage + "=lock"})
		return err == nil && len(l.Items) == 0
	}, r1, r2)
}

// acmeHub prepares the hub for replicas: the namespace, ServiceAccount,
// Role and RoleBinding of the stub's kustomize base (install/kustomize/stub),
// so the Role is shown to suffice. It returns the namespace and the hub
// section of a replica's config.
func acmeHub(t *testing.T, c *kubetest.Cluster) (string, func(id string) string) {
	t.Helper()
	ns, hub := acmeHubNoRole(t, c)
	applyBase(t, c, "role.yaml", "rolebinding.yaml")
	return ns, hub
}

// acmeHubNoRole is acmeHub without the Role and RoleBinding: the
// ServiceAccount may do nothing yet.
func acmeHubNoRole(t *testing.T, c *kubetest.Cluster) (string, func(id string) string) {
	t.Helper()
	const ns = "keyhole" // the base's namespace
	applyBase(t, c, "namespace.yaml", "serviceaccount.yaml")
	kubeconfig := c.ServiceAccountKubeconfig(t, ns, "keyhole-stub")
	return ns, func(id string) string {
		return fmt.Sprintf("hub: {enabled: true, kubeconfig: %q, namespace: %s, replicaID: %s}\n", kubeconfig, ns, id)
	}
}

// applyBase applies files of install/kustomize/stub.
func applyBase(t *testing.T, c *kubetest.Cluster, files ...string) {
	t.Helper()
	var docs []string
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join("..", "install", "kustomize", "stub", f))
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, string(b))
	}
	c.Apply(t, strings.Join(docs, "\n---\n"))
}

// TestACMEHubLate: a replica starts before it may read Secrets in the hub
// (the Role is not applied yet). It does not exit: it logs why it cannot
// start managing the certificate and retries; once the Role is there it
// obtains the certificate.
func TestACMEHubLate(t *testing.T) {
	c := kubetest.Start(t)
	_, hub := acmeHubNoRole(t, c)
	port := freePort(t)
	p := startPebble(t, port, freePort(t), 30*24*time.Hour)
	stub := acmeStub(t, "replica1", t.TempDir(), port, p, "", hub("replica1"))
	msg := "cannot start managing the ACME certificate; retrying"
	waitFor(t, 60*time.Second, "the replica to report the forbidden store", func() bool {
		return strings.Contains(stub.logText(), msg)
	}, stub)
	for _, l := range strings.Split(stub.logText(), "\n") {
		if strings.Contains(l, msg) {
			t.Logf("replica logged: %.400s", l)
			for _, w := range []string{"forbidden", `Secrets in hub namespace \"keyhole\"`, "retry_in"} {
				if !strings.Contains(l, w) {
					t.Errorf("message lacks %q", w)
				}
			}
			break
		}
	}
	granted := time.Now()
	applyBase(t, c, "role.yaml", "rolebinding.yaml")
	leaf := waitServed(t, fmt.Sprintf("127.0.0.1:%d", port), p.roots(t), 120*time.Second, stub, p.proc)
	t.Logf("certificate %x %v after the Role was applied", leaf.SerialNumber, time.Since(granted).Round(time.Millisecond))
}

// TestACMEReplicaCrash: the replica holding the order lock is killed
// (SIGKILL) while Pebble validates its order. Its lock Secret stays behind;
// the other replica waits out the lock's expiry (30 s after the last
// renewal), takes the lock over, orders and serves the certificate.
func TestACMEReplicaCrash(t *testing.T) {
	c := kubetest.Start(t)
	ns, hub := acmeHub(t, c)
	port1, port2 := freePort(t), freePort(t)
	addr1, addr2 := fmt.Sprintf("127.0.0.1:%d", port1), fmt.Sprintf("127.0.0.1:%d", port2)
	lockSecret := certs.LockSecretName("issue_cert_" + acmeDomain)
	var r1, r2 *process
	var killed *process
	var killedAt time.Time
	ready := make(chan struct{})
	lb := startTCPRelay(t, func() string {
		<-ready // r1 and r2 are set
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := c.Client().CoreV1().Secrets(ns).Get(ctx, lockSecret, metav1.GetOptions{})
		if killed == nil && err == nil {
			// The first validation connection: kill the lock holder.
			killed = r2
			if strings.HasPrefix(s.Annotations[certs.AnnotationHolder], "replica1/") {
				killed = r1
			}
			killed.kill()
			killedAt = time.Now()
		}
		if killed == r1 {
			return addr2
		}
		return addr1
	})
	p := startPebble(t, lb.ln.Addr().(*net.TCPAddr).Port, freePort(t), 30*24*time.Hour)
	dir := t.TempDir()
	binaries(t)
	r1 = acmeStub(t, "replica1", dir, port1, p, "", hub("replica1"))
	r2 = acmeStub(t, "replica2", dir, port2, p, "", hub("replica2"))
	close(ready)
	roots := p.roots(t)
	waitFor(t, 60*time.Second, "a replica to be killed holding the lock", func() bool {
		return len(lb.routedTo()) > 0 // routedTo's lock orders pick's writes before the reads below
	}, r1, r2, p.proc)
	survivor, dead, at := r1, killed, killedAt
	addr := addr1
	if dead == r1 {
		survivor, addr = r2, addr2
	}
	leaf := waitServed(t, addr, roots, 150*time.Second, survivor, p.proc)
	took := time.Since(at)
	t.Logf("%s killed holding the order lock; %s serves %x %v later; pebble orders %d",
		dead.name, survivor.name, leaf.SerialNumber, took.Round(time.Millisecond), len(p.orders()))
	if !strings.Contains(survivor.logText(), "took over an expired ACME storage lock") {
		t.Errorf("%s did not log taking over the lock", survivor.name)
	}
	// The lock expires 30 s after its last renewal (every 10 s), so at
	// least 20 s after the kill; 15 s leaves room for clocks and latency.
	if took < 15*time.Second {
		t.Errorf("certificate %v after the kill: the lock (30 s) cannot have expired", took)
	}
}

func slicesContainsSuffix(l []string, suffix string) bool {
	for _, s := range l {
		if strings.HasSuffix(s, suffix) {
			return true
		}
	}
	return false
}

// TestACMEStoreFull: the certificate store (stateDir/acme, a 512 KiB
// tmpfs in the stub's own mount namespace) fills up. Renewal fails with a
// message naming the directory and the fix; the stub keeps serving its
// certificate and the stored one is intact; once space is freed the next
// retry (certmagic's backoff: one minute) renews.
func TestACMEStoreFull(t *testing.T) {
	ns := tmpfsNamespace(t)
	port := freePort(t)
	// Short certificates: Pebble's renewal info (ARI) puts the renewal at
	// a random time within their minute.
	p := startPebble(t, port, freePort(t), time.Minute)
	dir := t.TempDir()
	acmeDir := filepath.Join(dir, "stub-state", "acme")
	if err := os.MkdirAll(acmeDir, 0o700); err != nil {
		t.Fatal(err)
	}
	// A mount namespace of its own: a 512 KiB tmpfs over stateDir/acme,
	// then the stub.
	wrap := append(ns, "sh", "-c", `mount -t tmpfs -o size=512k keyhole-acme "$0" && exec "$@"`, acmeDir)
	stub := acmeStub(t, "stub", dir, port, p, ", renewCheckInterval: 1s", "", wrap...)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	roots := p.roots(t)
	first := waitServed(t, addr, roots, 90*time.Second, stub, p.proc)
	t.Logf("first certificate %x, valid until %v", first.SerialNumber, first.NotAfter)

	// The stub's view of its store, through /proc.
	store := filepath.Join("/proc", fmt.Sprint(stub.cmd.Process.Pid), "root", acmeDir)
	certDir := filepath.Join(store, "certificates")
	var snapshot map[string][]byte
	filler := filepath.Join(store, "filler")
	fill := func() {
		f, err := os.OpenFile(filler, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatalf("filling the stub's tmpfs: %v", err)
		}
		defer f.Close()
		buf := make([]byte, 4096)
		for i := 0; i < 1024; i++ { // at most 4 MiB; the tmpfs is 512 KiB
			if _, err := f.Write(buf); err != nil {
				if !strings.Contains(err.Error(), "no space left") {
					t.Fatalf("filling: %v", err)
				}
				return
			}
		}
		t.Fatal("4 MiB written into a 512 KiB tmpfs: is stateDir/acme not the tmpfs?")
	}
	fill()
	ordersFull := len(p.orders())
	snapshot = readTree(t, certDir)
	cur, err := servedUnverified(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("store full; stub serves %x; %d files stored", cur.SerialNumber, len(snapshot))

	// Renewal comes (at a random time within the certificate's minute)
	// and fails on the full store.
	failMsg := "cannot write to the certificate store"
	waitFor(t, 3*time.Minute, "a renewal to fail on the full store", func() bool {
		return strings.Contains(stub.logText(), failMsg)
	}, stub, p.proc)
	failedAt := time.Now()
	// certmagic checks that the store is writable before it orders, so a
	// full store wastes no order.
	if n := len(p.orders()); n != ordersFull {
		t.Errorf("pebble orders went from %d to %d while the store was full", ordersFull, n)
	}
	var line string
	for _, l := range strings.Split(stub.logText(), "\n") {
		if strings.Contains(l, failMsg) {
			line = l
			break
		}
	}
	t.Logf("stub logged: %s", line)
	for _, w := range []string{acmeDir, "no space left on device", "free space on the filesystem holding " + acmeDir} {
		if !strings.Contains(line, w) {
			t.Errorf("failure message lacks %q", w)
		}
	}
	// Still serving the certificate it had; nothing stored was lost.
	for i := 0; i < 5; i++ {
		got, err := servedUnverified(addr)
		if err != nil {
			t.Fatal(err)
		}
		if got.SerialNumber.Cmp(cur.SerialNumber) != 0 {
			t.Fatalf("serves %x after the failed renewal, had %x", got.SerialNumber, cur.SerialNumber)
		}
		time.Sleep(200 * time.Millisecond)
	}
	after := readTree(t, certDir)
	for name, b := range snapshot {
		if string(after[name]) != string(b) {
			t.Errorf("stored %s changed or vanished after the failed renewal", name)
		}
	}
	if len(after) != len(snapshot) {
		t.Errorf("stored files: %d before, %d after", len(snapshot), len(after))
	}
	// Free the space: the next retry renews.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	var renewed *x509.Certificate
	waitFor(t, 4*time.Minute, "renewal after space was freed", func() bool {
		got, err := servedUnverified(addr)
		if err == nil && got.SerialNumber.Cmp(cur.SerialNumber) != 0 {
			renewed = got
			return true
		}
		time.Sleep(500 * time.Millisecond)
		return false
	}, stub, p.proc)
	t.Logf("renewed %v after the failure (certmagic retries after 1 min): %x; pebble orders %d",
		time.Since(failedAt).Round(time.Second), renewed.SerialNumber, len(p.orders()))
	if _, err := served(addr, roots); err != nil {
		t.Fatalf("renewed certificate does not verify: %v", err)
	}
	if string(readTree(t, certDir)[filepath.Join("127.0.0.1-"+portOf(p.dirURL)+"-dir", acmeDomain, acmeDomain+".crt")]) == "" {
		t.Errorf("renewed certificate not stored: %v", keysOf(readTree(t, certDir)))
	}
}

// tmpfsNamespace returns the unshare command line under which a process
// may mount a tmpfs of its own: a new user and mount namespace (works
// unprivileged where user namespaces are allowed), else, for root, a new
// mount namespace alone. It fails the test saying why neither works.
func tmpfsNamespace(t *testing.T) []string {
	t.Helper()
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatalf("unshare (util-linux) is needed to give the stub a small tmpfs: %v", err)
	}
	var tried []string
	for _, ns := range [][]string{
		{unshare, "--user", "--map-root-user", "--mount", "--propagation", "private"},
		{unshare, "--mount", "--propagation", "private"},
	} {
		probe := exec.Command(ns[0], append(ns[1:], "sh", "-c", `mount -t tmpfs -o size=4k probe "$0"`, t.TempDir())...)
		out, err := probe.CombinedOutput()
		if err == nil {
			return ns
		}
		tried = append(tried, fmt.Sprintf("%v: %v %s", ns, err, out))
	}
	t.Fatalf("cannot mount a tmpfs in a namespace of its own (need unprivileged user namespaces, or root):\n%s", strings.Join(tried, "\n"))
	return nil
}

func portOf(u string) string {
	_, port, _ := net.SplitHostPort(strings.TrimSuffix(strings.TrimPrefix(u, "https://"), "/dir"))
	return port
}

func keysOf(m map[string][]byte) []string {
	var l []string
	for k := range m {
		l = append(l, k)
	}
	return l
}

// readTree reads every file under dir: relative path -> content.
func readTree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	m := map[string][]byte{}
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		m[rel] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

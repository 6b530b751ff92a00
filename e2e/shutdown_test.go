package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

// running is a kubectl left running; its exit is recorded.
type running struct {
	name   string
	cmd    *exec.Cmd
	lines  <-chan timedLine
	stderr *bytes.Buffer
	stdin  io.WriteCloser
	done   chan struct{}
	err    error
	at     time.Time
}

func (g *gateway) startKubectl(t *testing.T, name, kc string, args ...string) *running {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	cmd := g.c.KubectlCmdAs(ctx, kc, args...)
	r := &running{name: name, cmd: cmd, stderr: &bytes.Buffer{}, done: make(chan struct{})}
	cmd.Stderr = r.stderr
	// Our own pipe, so Wait does not race the reader of stdout.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = pw
	if r.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	err = cmd.Start()
	pw.Close() // the child holds the write end now
	if err != nil {
		t.Fatal(err)
	}
	r.lines = readLines(pr)
	go func() {
		defer close(r.done)
		defer cancel()
		r.err = cmd.Wait()
		r.at = time.Now()
	}()
	t.Cleanup(func() { cancel(); <-r.done; pr.Close() })
	return r
}

// exitCode is 0 for a nil error, else kubetest.ExitCode.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	return kubetest.ExitCode(err)
}

// next returns r's next output line (before the stop).
func (r *running) next(t *testing.T, timeout time.Duration) string {
	t.Helper()
	return nextLine(t, r.lines, timeout, r.name).text
}

// code is the status of GET path at the stub (0: no answer).
func (g *gateway) code(path string) int {
	resp, err := g.http.Get(g.url + path)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// rawWatch opens a watch with Go's client over HTTP/1.1 or HTTP/2 and reads
// its first event.
func (g *gateway) rawWatch(t *testing.T, token string, h2 bool, path string) (*http.Response, *bufio.Reader) {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(g.caPEM)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: h2}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	t.Cleanup(tr.CloseIdleConnections)
	req, _ := http.NewRequest("GET", g.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 || (resp.ProtoMajor == 2) != h2 {
		t.Fatalf("%s: %s over %s", path, resp.Status, resp.Proto)
	}
	br := bufio.NewReader(resp.Body)
	if _, err := br.ReadBytes('\n'); err != nil {
		t.Fatalf("%s: first event: %v", path, err)
	}
	return resp, br
}

// TestStubGracefulShutdown: on SIGTERM the stub fails /readyz at once (and
// serves on through shutdownDelay), then stops accepting, ends a watch and
// logs -f with a proper end of the response (kubectl exits, Go clients see
// a clean EOF over HTTP/1.1 and HTTP/2), closes an exec session, lets a
// plain list in flight finish with all its data, and exits.
func TestStubGracefulShutdown(t *testing.T) {
	const delay, bound = 2 * time.Second, 20 * time.Second
	c := kubetest.Start(t)
	g := startGateway(t, c)
	g.stub.stop()
	g.setConfig("shutdownDelay: 2s\nshutdownTimeout: 20s\n")
	g.restartStub(t)
	waitFor(t, 60*time.Second, "stub to come back", func() bool { return g.code("/healthz") == http.StatusOK }, g.stub)
	secretFile, tokenFile := g.install("e2e")
	g.startAgent(agentOpts{cluster: "e2e", id: "a1", secretFile: secretFile, apiURL: c.URL, tokenFile: tokenFile, c: c, extra: drainFast})
	alice, aliceTok := g.user("alice", "cluster-admin")
	g.waitAgents(aliceTok, "e2e", "a1")
	const items = 3000
	fillConfigMaps(t, c, "bulk", items)
	c.CreatePod(t, "default", "sh", nil)
	c.AppendLog(t, "default", "sh", "main", "first")
	c.EnsureNamespace(t, "w")
	if _, err := c.Client().CoreV1().ConfigMaps("w").Create(context.Background(), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "seen"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// Long streams, each seen working.
	watch := g.startKubectl(t, "kubectl get -w", alice, "get", "configmaps", "-n", "w", "-w", "-o", "name")
	if l := watch.next(t, 30*time.Second); l != "configmap/seen" {
		t.Fatalf("watch: %q", l)
	}
	logs := g.startKubectl(t, "kubectl logs -f", alice, "logs", "-f", "sh")
	if l := logs.next(t, 30*time.Second); l != "first" {
		t.Fatalf("logs -f: %q", l)
	}
	execi := g.startKubectl(t, "kubectl exec -i", alice, "exec", "-i", "sh", "--", "cat")
	if _, err := io.WriteString(execi.stdin, "ping\n"); err != nil {
		t.Fatal(err)
	}
	if l := execi.next(t, 30*time.Second); l != "ping" {
		t.Fatalf("exec: %q", l)
	}
	_, w1 := g.rawWatch(t, aliceTok, false, "/clusters/e2e/api/v1/namespaces/w/configmaps?watch=true")
	_, w2 := g.rawWatch(t, aliceTok, true, "/clusters/e2e/api/v1/namespaces/w/configmaps?watch=true")
	// A plain list in flight: its reader takes a pause across the stop, so
	// the stub must wait for it.
	req, _ := http.NewRequest("GET", g.url+"/clusters/e2e/api/v1/namespaces/bulk/configmaps", nil)
	req.Header.Set("Authorization", "Bearer "+aliceTok)
	listResp, err := g.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer listResp.Body.Close()
	head := make([]byte, 16<<10)
	if _, err := io.ReadFull(listResp.Body, head); err != nil {
		t.Fatal(err)
	}

	term := time.Now()
	g.stub.signal(syscall.SIGTERM)
	// Not ready at once; still serving through shutdownDelay.
	waitFor(t, delay, "/readyz to fail", func() bool { return g.code("/readyz") == http.StatusServiceUnavailable }, g.stub)
	notReady := time.Since(term)
	_, err = g.kubectl(alice, nil, nil, "get", "ns", "kube-system", "-o", "name")
	if err != nil && time.Since(term) < delay {
		t.Fatalf("a new request during shutdownDelay: %v", err)
	}
	t.Logf("a new kubectl get during shutdownDelay, done %v after SIGTERM: %v", time.Since(term).Round(time.Millisecond), err)
	time.Sleep(delay + time.Second) // the listener is closed now, the list still waits for its reader
	rest, err := io.ReadAll(listResp.Body)
	listDone := time.Since(term)
	if err != nil {
		t.Fatalf("the list in flight was cut after %v: %v", listDone, err)
	}
	var list struct {
		Items []json.RawMessage `json:"items"`
	}
	if err := json.Unmarshal(append(head, rest...), &list); err != nil || len(list.Items) != items {
		t.Fatalf("the list in flight: %d items, %v", len(list.Items), err)
	}

	// Every long stream ends, each in the way its client understands.
	for _, r := range []*running{watch, logs, execi} {
		select {
		case <-r.done:
		case <-time.After(bound):
			t.Fatalf("%s still running %v after SIGTERM (a hang)", r.name, bound)
		}
		lines := strings.Split(strings.TrimSpace(r.stderr.String()), "\n")
		t.Logf("%s ended %v after SIGTERM: exit %d, last stderr line %q", r.name, r.at.Sub(term).Round(time.Millisecond), exitCode(r.err), lines[len(lines)-1])
		if r == execi {
			continue // its connection is closed: at layer 4 there is no gentler end to give
		}
		if s := r.stderr.String(); strings.Contains(s, "INTERNAL_ERROR") || strings.Contains(s, "unexpected EOF") || strings.Contains(s, "stream error") {
			t.Errorf("%s saw its stream cut, not ended: %s", r.name, s)
		}
	}
	if code := exitCode(logs.err); code != 0 {
		t.Errorf("kubectl logs -f exit code %d after a clean end", code)
	}
	for name, br := range map[string]*bufio.Reader{"HTTP/1.1 watch": w1, "HTTP/2 watch": w2} {
		if _, err := io.ReadAll(br); err != nil {
			t.Errorf("%s: %v, want a clean end (chunked terminator / END_STREAM)", name, err)
		}
	}
	g.waitStubExit(t, bound)
	exited := time.Since(term)
	stopped := logMsg(g.stub, "stopped serving")
	t.Logf("SIGTERM: /readyz 503 after %v; list of %d items in flight completed at %v; stub exited after %v (shutdownDelay %v); stub: %s",
		notReady.Round(time.Millisecond), items, listDone.Round(time.Millisecond), exited.Round(time.Millisecond), delay, stopped)
	if !strings.Contains(stopped, `"streams_ended":5`) || !strings.Contains(stopped, `"streams_left":0`) {
		t.Errorf("the stub did not end the 5 long streams itself: %s", stopped)
	}
}

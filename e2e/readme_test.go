package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

// readmeBlock returns the command lines of the README's fenced block
// between <!-- name ... --> and <!-- /name -->.
func readmeBlock(t *testing.T, name string) []string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(filepath.Dir(file)), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i, j := strings.Index(s, "<!-- "+name), strings.Index(s, "<!-- /"+name+" -->")
	if i < 0 || j < i {
		t.Fatalf("README.md has no block %q", name)
	}
	var lines []string
	for _, l := range strings.Split(s[i:j], "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "<!--") && !strings.HasPrefix(l, "```") {
			lines = append(lines, l)
		}
	}
	return lines
}

// TestReadmeFirstFiveMinutes follows the README's first-five-minutes path
// as a newcomer would, with the test API server standing in for their
// cluster (their kubeconfig is its admin kubeconfig): the stub on its
// embedded defaults, then the README's lines as written, `go run
// ./cmd/stub` and `go run ./cmd/agent` being the binaries built from this
// checkout. It ends with `kubectl get pods -A` through Keyhole listing a
// pod of that cluster.
func TestReadmeFirstFiveMinutes(t *testing.T) {
	stubBin, agentBin := binaries(t)
	c := kubetest.Start(t)
	c.CreatePod(t, "default", "hello-keyhole", nil)
	aggregateView(t, c)
	home, work, bin := t.TempDir(), t.TempDir(), t.TempDir()
	if err := os.Symlink(c.KubectlPath, filepath.Join(bin, "kubectl")); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "HOME="+home, "XDG_STATE_HOME=", "KEYHOLE_CONFIG=", "KUBECONFIG="+c.AdminKubeconfig,
		"PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := func(name string, args ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Dir, cmd.Env = work, env
		log, err := os.Create(filepath.Join(work, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Signal(os.Interrupt)
			_ = cmd.Wait()
			log.Close()
			if t.Failed() {
				b, _ := os.ReadFile(log.Name())
				t.Logf("%s's output:\n%s", name, b)
			}
		})
		return cmd
	}

	// The README's first command: the gateway on its embedded defaults.
	start("stub", stubBin)
	caFile := filepath.Join(home, ".local/state/keyhole/tls/ca.crt")
	waitFor(t, 60*time.Second, "the stub on :8443", func() bool {
		ca, err := os.ReadFile(caFile)
		if err != nil {
			return false
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca)
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://localhost:8443/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	lines := readmeBlock(t, "quickstart-local")
	if len(lines) < 4 {
		t.Fatalf("the README's block: %q", lines)
	}
	subst := strings.NewReplacer("go run ./cmd/stub", stubBin, "go run ./cmd/agent", agentBin)
	for i, line := range lines {
		cmdline := subst.Replace(line)
		if code, _, _ := strings.Cut(cmdline, "#"); strings.HasSuffix(strings.TrimSpace(code), "&") {
			// A long-running command: started, stopped at the end.
			start("agent", "bash", "-c", "exec "+strings.TrimSuffix(strings.TrimSpace(code), "&"))
			continue
		}
		last := i == len(lines)-1
		var out, errb bytes.Buffer
		var err error
		deadline := time.Now().Add(45 * time.Second)
		for {
			out.Reset()
			errb.Reset()
			cmd := exec.CommandContext(ctx, "bash", "-c", "set -euo pipefail; "+cmdline)
			cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = work, env, &out, &errb
			err = cmd.Run()
			// The last line waits for the agent's tunnel, as a person
			// would try again; every other line must work at once.
			if err == nil || !last || time.Now().After(deadline) {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("README line %q: %v\n%s%s", line, err, out.String(), errb.String())
		}
		t.Logf("$ %s\n%s%s", line, out.String(), errb.String())
		if last && !strings.Contains(out.String(), "hello-keyhole") {
			t.Fatalf("%q through Keyhole does not list the cluster's pod:\n%s", line, out.String())
		}
	}
}

// aggregateView does for the ClusterRole view what kube-controller-manager's
// clusterrole-aggregation controller does in a real cluster (the test
// control plane runs no controller manager): its rules become those of the
// ClusterRoles labelled to aggregate to it.
func aggregateView(t *testing.T, c *kubetest.Cluster) {
	t.Helper()
	ctx := context.Background()
	rbac := c.Client().RbacV1().ClusterRoles()
	parts, err := rbac.List(ctx, metav1.ListOptions{LabelSelector: "rbac.authorization.k8s.io/aggregate-to-view=true"})
	if err != nil {
		t.Fatal(err)
	}
	view, err := rbac.Get(ctx, "view", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	view.Rules = nil
	for _, p := range parts.Items {
		view.Rules = append(view.Rules, p.Rules...)
	}
	if len(view.Rules) == 0 {
		t.Fatal("no ClusterRole aggregates to view")
	}
	if _, err := rbac.Update(ctx, view, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

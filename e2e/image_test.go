package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

// imageSummary is the part of hack/image's images.json this test reads.
type imageSummary struct {
	Name      string `json:"name"`
	Platforms []struct {
		Arch            string `json:"arch"`
		Manifest        string `json:"manifest"`
		Config          string `json:"config"`
		CompressedBytes int64  `json:"compressedBytes"`
		Archive         string `json:"archive"`
		Tag             string `json:"tag"`
	} `json:"platforms"`
}

// TestImages builds the stub and agent images the way a release does
// (hack/image.sh, for this machine's architecture only), loads them into a
// real container runtime (Debian's podman with runc; hack/podman.sh
// installs it) and runs them: the stub container serves on the image's own
// command (serve --config /etc/keyhole/stub.yaml) with its state on a
// volume; `register` and `kubeconfig` run from the stub image; an agent
// container, given its config, join secret, the stub's CA and a kubeconfig
// for the test API server as mounted files, connects; and kubectl reaches
// the cluster through the stub. Both containers run as the image's user
// 65532 and stop cleanly on SIGTERM (exit code 0).
func TestImages(t *testing.T) {
	pm := newPodman(t)
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(file))
	out := t.TempDir()
	start := time.Now()
	build := exec.Command(filepath.Join(root, "hack", "image.sh"), "--version", "e2e", "--platforms", runtime.GOARCH, out)
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("hack/image.sh: %v\n%s", err, b)
	} else {
		t.Logf("hack/image.sh (linux/%s only) in %.0fs:\n%s", runtime.GOARCH, time.Since(start).Seconds(), b)
	}
	raw, err := os.ReadFile(filepath.Join(out, "images.json"))
	if err != nil {
		t.Fatal(err)
	}
	var sums []imageSummary
	if err := json.Unmarshal(raw, &sums); err != nil {
		t.Fatal(err)
	}
	tags := map[string]string{}
	for _, s := range sums {
		p := s.Platforms[0]
		if _, err := pm.run("load", "--input", filepath.Join(out, p.Archive)); err != nil {
			t.Fatal(err)
		}
		tags[s.Name] = p.Tag
		// podman's image ID is the config digest hack/image reported.
		id, err := pm.run("image", "inspect", "--format", "{{.Id}} {{.Config.User}} {{index .Config.Labels \"org.opencontainers.image.version\"}}", p.Tag)
		if err != nil {
			t.Fatal(err)
		}
		if want := strings.TrimPrefix(p.Config, "sha256:") + " 65532:65532 e2e"; strings.TrimSpace(id) != want {
			t.Fatalf("%s: podman sees %q, want %q", p.Tag, strings.TrimSpace(id), want)
		}
	}
	stubImage, agentImage := tags["keyhole-stub"], tags["keyhole-agent"]
	if stubImage == "" || agentImage == "" {
		t.Fatalf("images.json lacks an image: %s", raw)
	}

	// The stub: the image's own command reads /etc/keyhole/stub.yaml, a
	// mounted file here as the ConfigMap is in Kubernetes.
	c := kubetest.Start(t)
	port := freePort(t)
	stubURL := fmt.Sprintf("https://127.0.0.1:%d", port)
	cfgDir, stateDir := containerDir(t, 0o755), containerDir(t, 0o700)
	writeContainerFile(t, filepath.Join(cfgDir, "stub.yaml"), fmt.Sprintf(`apiVersion: keyhole.dev/v1alpha1
kind: StubConfig
listen: 127.0.0.1:%d
publicURL: %s
stateDir: /var/lib/keyhole
log: {level: debug}
`, port, stubURL))
	stubVolumes := []string{"--volume", cfgDir + ":/etc/keyhole:ro", "--volume", stateDir + ":/var/lib/keyhole"}
	stub := pm.start("stub", append(stubVolumes, stubImage)...)
	var caPEM []byte
	pm.waitFor(60*time.Second, "the stub container to listen", func() bool {
		if b, err := os.ReadFile(filepath.Join(stateDir, "tls", "ca.crt")); err == nil {
			caPEM = b
		} else {
			return false
		}
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			conn.Close()
		}
		return err == nil
	}, stub)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("stub CA: %q", caPEM)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 10 * time.Second}
	t.Cleanup(hc.CloseIdleConnections)
	resp, err := hc.Get(stubURL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(resp); resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz: %d %s", resp.StatusCode, body)
	}
	pm.runsAs(stub, 65532)

	// Admin commands from the stub image, on the same config and state.
	admin := func(args ...string) string {
		t.Helper()
		o, err := pm.run(append(append(append([]string{"run", "--rm"}, runFlags...), stubVolumes...),
			append([]string{stubImage}, append(args, "--config", "/etc/keyhole/stub.yaml")...)...)...)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	manifest := admin("register", "img", "--secret-out", "/var/lib/keyhole/img.secret", "--image", agentImage)
	c.Apply(t, manifest) // the agent's ServiceAccount and RBAC
	secret, err := os.ReadFile(filepath.Join(stateDir, "img.secret"))
	if err != nil {
		t.Fatal(err)
	}
	kcSA, err := os.ReadFile(c.ServiceAccountKubeconfig(t, "keyhole-system", "keyhole-agent"))
	if err != nil {
		t.Fatal(err)
	}

	// The agent: everything it needs as mounted files.
	agentDir := containerDir(t, 0o700)
	writeContainerFile(t, filepath.Join(agentDir, "join-secret"), string(secret))
	writeContainerFile(t, filepath.Join(agentDir, "stub-ca.crt"), string(caPEM))
	writeContainerFile(t, filepath.Join(agentDir, "kubeconfig"), string(kcSA))
	writeContainerFile(t, filepath.Join(agentDir, "agent.yaml"), fmt.Sprintf(`apiVersion: keyhole.dev/v1alpha1
kind: AgentConfig
stubURL: %s
cluster: img
agentID: img-container
joinSecretFile: /etc/keyhole/join-secret
stubCAFile: /etc/keyhole/stub-ca.crt
kubeconfig: /etc/keyhole/kubeconfig
log: {level: debug}
`, stubURL))
	agent := pm.start("agent", "--volume", agentDir+":/etc/keyhole:ro", agentImage, "--config", "/etc/keyhole/agent.yaml")
	pm.runsAs(agent, 65532)

	kc := filepath.Join(t.TempDir(), "user.kubeconfig")
	writeFile(t, kc, admin("kubeconfig", "--user", "image-user"))
	c.Apply(t, `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: image-user-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: image-user}]
`+readerRole)
	direct, err := c.Kubectl(t, "get", "namespace", "kube-system", "-o", "jsonpath={.metadata.uid}")
	if err != nil || direct == "" {
		t.Fatalf("direct: %q %v", direct, err)
	}
	var via, lastErr string
	pm.waitFor(60*time.Second, "kubectl through the stub and agent containers", func() bool {
		o, err := pm.kubectl(c, kc, "--context", "img", "get", "namespace", "kube-system", "-o", "jsonpath={.metadata.uid}")
		if err != nil {
			lastErr = err.Error()
			return false
		}
		via = o
		return via != ""
	}, stub, agent)
	t.Logf("kubectl through the containers: kube-system %s (last error before: %q)", via, lastErr)
	if via != direct {
		t.Fatalf("through the gateway kube-system is %q, directly %q: not the same cluster", via, direct)
	}
	// The cluster's RBAC decides for the caller (impersonated by the agent).
	if o, _ := pm.kubectl(c, kc, "--context", "img", "auth", "can-i", "create", "configmaps"); strings.TrimSpace(o) != "no" {
		t.Fatalf("can-i create configmaps as image-user: %q, want no", o)
	}
	if logs := pm.logText(agent); !strings.Contains(logs, `"agent":"img-container"`) {
		t.Fatalf("the agent container's log does not show the agent:\n%s", logs)
	}

	// SIGTERM (podman stop) ends both cleanly: PID 1 is the binary itself.
	for _, name := range []string{agent, stub} {
		if _, err := pm.run("stop", "--time", "40", name); err != nil {
			t.Fatal(err)
		}
		code, err := pm.run("inspect", "--format", "{{.State.ExitCode}}", name)
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(code) != "0" {
			t.Errorf("%s exited with %s after SIGTERM:\n%s", name, code, lastLines(pm.logText(name), 20))
		}
	}
}

// podman runs Debian's podman on a private store (under the test's
// temporary directory, removed afterwards) with the flags this kind of
// machine needs: runc rather than crun, cgroupfs, events in a file.
type podman struct {
	t      *testing.T
	bin    string
	global []string
	dir    string
}

func newPodman(t *testing.T) *podman {
	t.Helper()
	bin, err := exec.LookPath("podman")
	if err != nil {
		t.Fatal("podman is not installed: run hack/podman.sh (hack/testbin.sh does) to install Debian's podman and runc at the pinned versions")
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		t.Fatal("runc is not installed: run hack/podman.sh")
	}
	dir := t.TempDir()
	return &podman{t: t, bin: bin, dir: dir, global: []string{
		"--root", filepath.Join(dir, "storage"), "--runroot", filepath.Join(dir, "run"),
		"--tmpdir", filepath.Join(dir, "tmp"), "--storage-driver", "vfs",
		"--runtime", runc, "--cgroup-manager", "cgroupfs", "--events-backend", "file",
	}}
}

// run runs one podman command and returns its stdout.
func (p *podman) run(args ...string) (string, error) {
	p.t.Helper()
	cmd := exec.Command(p.bin, append(append([]string{}, p.global...), args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("podman %s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// runFlags are the flags of every container: the host's network (the test
// API server and the stub listen on 127.0.0.1) and limits this machine
// allows (podman's default of 1048576 open files is above the hard limit
// here, and runc fails with "error setting rlimit ... operation not
// permitted").
var runFlags = []string{"--network=host", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=1000:1000"}

// start runs a container in the background (runFlags) and
// returns its name; it is removed at cleanup. The user is the image's.
func (p *podman) start(role string, args ...string) string {
	p.t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "keyhole-e2e-" + role + "-" + hex.EncodeToString(b)
	if _, err := p.run(append([]string{"run", "--detach", "--name", name}, append(runFlags, args...)...)...); err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(func() {
		if _, err := p.run("rm", "--force", "--time", "5", name); err != nil {
			p.t.Log(err)
		}
	})
	return name
}

// kubectl runs kubectl with kubeconfig kc, bounded by kubetest.KubectlTimeout.
func (p *podman) kubectl(c *kubetest.Cluster, kc string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(p.t.Context(), kubetest.KubectlTimeout)
	defer cancel()
	cmd := c.KubectlCmdAs(ctx, kc, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// logText is a container's log (stdout and stderr).
func (p *podman) logText(name string) string {
	cmd := exec.Command(p.bin, append(append([]string{}, p.global...), "logs", name)...)
	b, _ := cmd.CombinedOutput()
	return string(b)
}

// waitFor polls ok until timeout, then fails printing the containers' logs.
func (p *podman) waitFor(timeout time.Duration, what string, ok func() bool, containers ...string) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, c := range containers {
				fmt.Fprintf(&b, "\n--- container %s log:\n%s", c, lastLines(p.logText(c), 40))
			}
			p.t.Fatalf("timed out after %v waiting for %s%s", timeout, what, b.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// lastLines is the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// runsAs fails unless the container's main process runs as uid (read from
// the host's /proc: the image has no shell to ask).
func (p *podman) runsAs(name string, uid int) {
	p.t.Helper()
	pid, err := p.run("inspect", "--format", "{{.State.Pid}}", name)
	if err != nil {
		p.t.Fatal(err)
	}
	status, err := os.ReadFile("/proc/" + strings.TrimSpace(pid) + "/status")
	if err != nil {
		p.t.Fatalf("container %s: %v\n%s", name, err, lastLines(p.logText(name), 20))
	}
	want := fmt.Sprintf("Uid:\t%d\t%d\t%d\t%d", uid, uid, uid, uid)
	if !strings.Contains(string(status), want) {
		p.t.Fatalf("container %s does not run as %d:\n%s", name, uid, status)
	}
}

// containerDir is a temporary directory owned by the images' user 65532
// (as Kubernetes' fsGroup would make a volume).
func containerDir(t *testing.T, mode os.FileMode) string {
	t.Helper()
	d := filepath.Join(t.TempDir(), "v")
	if err := os.Mkdir(d, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(d, 65532, 65532); err != nil {
		t.Fatalf("chown to the images' user 65532 needs root: %v", err)
	}
	return d
}

// writeContainerFile writes a file only the images' user reads.
func writeContainerFile(t *testing.T, path, body string) {
	t.Helper()
	writeFile(t, path, body)
	if err := os.Chown(path, 65532, 65532); err != nil {
		t.Fatal(err)
	}
}

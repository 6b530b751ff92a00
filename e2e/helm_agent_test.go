package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/keyhole-dev/keyhole/install"
	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

// helmAgent registers a cluster at a real stub, installs the agent's chart
// with the values for that registration (install.AgentHelmValues, what
// `stub register --helm-values` prints), runs the chart's Deployment from
// what the API server holds as a kubelet would (runAsPod: the test API
// server runs no pods), and reaches the cluster with kubectl through the
// stub. Then a changed value rolls the Deployment, and an uninstall
// removes every object, cluster-scoped RBAC included.
func helmAgent(t *testing.T, c *kubetest.Cluster, h *helmCLI) {
	const ns, release, id = "keyhole-system", "keyhole-agent", "helm-e2e"
	g := startGateway(t, c)
	manifest, secretFile := g.registerWith(id)

	// The values for this registration: the parameters of the manifest
	// `stub register` printed, CA and join secret included.
	reg := typedObjects(t, manifest, "", "")
	var secret *corev1.Secret
	for _, o := range reg {
		if s, ok := o.(*corev1.Secret); ok {
			secret = s
		}
	}
	if secret == nil {
		t.Fatalf("stub register printed no Secret:\n%s", manifest)
	}
	if got := readTrimmed(t, secretFile); got != string(secret.Data["join-secret"]) {
		t.Fatalf("--secret-out and the manifest's Secret hold different join secrets")
	}
	p := install.AgentParams{Cluster: id, StubURL: g.publicURL, StubCAPEM: secret.Data["stub-ca.crt"],
		JoinSecret: string(secret.Data["join-secret"]), Image: deploymentImage(t, reg)}
	if len(p.StubCAPEM) == 0 {
		t.Fatal("the self-signed stub's manifest has no stub-ca.crt")
	}
	values, err := install.AgentHelmValues(p)
	if err != nil {
		t.Fatal(err)
	}
	valuesFile := writeValues(t, g.dir, id+"-values.yaml", values)
	t.Run("chart renders what stub register printed", func(t *testing.T) {
		compareChart(t, typedObjects(t, h.must("template", release, agentChart, "-n", ns, "-f", valuesFile), "keyhole-agent", release), reg)
	})

	start := time.Now()
	out := h.must("install", release, agentChart, "-n", ns, "--create-namespace", "-f", valuesFile)
	t.Logf("helm install: %v", time.Since(start).Round(time.Millisecond))
	for _, want := range []string{`for cluster "` + id + `"`, "rollout status deploy/keyhole-agent", "--context " + id + " get namespaces"} {
		if !strings.Contains(out, want) {
			t.Errorf("install output (NOTES) lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, p.JoinSecret) {
		t.Errorf("the install output shows the join secret")
	}

	d := deployment(t, c, ns, "keyhole-agent")
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Fatalf("replicas %v, want 2", d.Spec.Replicas)
	}
	viewer, viewerTok := g.user("helm-viewer", "e2e-reader")
	var pods []*process
	var names []string
	health := map[string]int{}
	for i := range int(*d.Spec.Replicas) {
		name := fmt.Sprintf("keyhole-agent-7d4b9c8f6d-%c%c2x9", 'a'+i, 'k'+i)
		health[name] = freePort(t)
		pods = append(pods, runAsPod(t, g, c, d, name, health[name]))
		names = append(names, name)
	}
	start = time.Now()
	waitFor(t, 90*time.Second, "both agents of the chart at the stub", func() bool {
		return slices.Equal(slices.Sorted(slices.Values(g.agentIDs(viewerTok, id))), names)
	}, append(pods, g.stub)...)
	t.Logf("both agents connected %v after start", time.Since(start).Round(time.Millisecond))
	for _, pod := range pods {
		if !strings.Contains(pod.logText(), `"api_source":"in-cluster"`) {
			t.Errorf("%s did not use the pod's in-cluster configuration:\n%s", pod.name, pod.tail(10))
		}
	}

	// The pod's probes, as the chart declares them, answer.
	ctr := d.Spec.Template.Spec.Containers[0]
	for _, name := range names {
		for what, pr := range map[string]*corev1.Probe{"readiness": ctr.ReadinessProbe, "liveness": ctr.LivenessProbe} {
			if pr == nil || pr.HTTPGet == nil || pr.HTTPGet.Port.String() != "health" {
				t.Fatalf("%s probe %+v, want an HTTP GET on port health", what, pr)
			}
			u := fmt.Sprintf("http://127.0.0.1:%d%s", health[name], pr.HTTPGet.Path)
			resp, err := http.Get(u)
			if err != nil {
				t.Errorf("%s: %s probe %s: %v", name, what, u, err)
				continue
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("%s: %s probe %s: %s", name, what, u, resp.Status)
			}
		}
	}

	// The cluster through the stub, with a kubeconfig the stub made.
	out, err = g.kubectl(viewer, nil, nil, "--context", id, "get", "namespaces", "-o", "name")
	if err != nil {
		t.Fatalf("kubectl get namespaces through the stub: %v", err)
	}
	for _, want := range []string{"namespace/kube-system", "namespace/" + ns} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl get namespaces through the stub lacks %s:\n%s", want, out)
		}
	}
	t.Logf("kubectl get namespaces through the stub:\n%s", out)

	// A changed value rolls the Deployment.
	h.must("upgrade", release, agentChart, "-n", ns, "-f", valuesFile, "--set", "config.log.level=info")
	d2 := deployment(t, c, ns, "keyhole-agent")
	if d2.Generation <= d.Generation || d2.Spec.Template.Annotations["checksum/config"] == d.Spec.Template.Annotations["checksum/config"] {
		t.Errorf("a config change did not roll the agents: generation %d -> %d, checksum/config %s -> %s", d.Generation, d2.Generation,
			d.Spec.Template.Annotations["checksum/config"], d2.Spec.Template.Annotations["checksum/config"])
	}
	if d2.Spec.Template.Annotations["checksum/secret"] != d.Spec.Template.Annotations["checksum/secret"] {
		t.Errorf("the Secret did not change, its checksum did")
	}
	cm, err := c.Client().CoreV1().ConfigMaps(ns).Get(context.Background(), "keyhole-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(cm.Data["agent.yaml"], "level: info") {
		t.Errorf("agent.yaml after the upgrade:\n%s", cm.Data["agent.yaml"])
	}

	for _, pod := range pods {
		pod.stop()
	}
	// A new join secret (stub register --rotate) rolls them too.
	h.must("upgrade", release, agentChart, "-n", ns, "-f", valuesFile, "--set", "config.log.level=info,joinSecret=khj_rotated-not-real")
	d3 := deployment(t, c, ns, "keyhole-agent")
	if d3.Generation <= d2.Generation || d3.Spec.Template.Annotations["checksum/secret"] == d2.Spec.Template.Annotations["checksum/secret"] {
		t.Errorf("a new join secret did not roll the agents: generation %d -> %d, checksum/secret %s -> %s", d2.Generation, d3.Generation,
			d2.Spec.Template.Annotations["checksum/secret"], d3.Spec.Template.Annotations["checksum/secret"])
	}
	h.must("uninstall", release, "-n", ns)
	if left := releaseObjects(t, c, ns, release); len(left) > 0 {
		t.Errorf("left after helm uninstall: %v", left)
	}
}

// runAsPod runs the agent binary as a kubelet would run the container of
// Deployment d as pod podName: the container's args and env (the downward
// API's pod name and namespace), each volume the container mounts filled
// from the ConfigMap or Secret the API server holds and mounted at its
// mountPath (read-only where the Deployment says so), and the
// ServiceAccount's token, CA and namespace where client-go's in-cluster
// configuration reads them. It all happens in a mount namespace of the
// agent's own, with an overlay over /etc, so the host is untouched. The one
// change: every pod has a network namespace of its own, but these share the
// host's, so the config's healthListen (":8081") becomes
// 127.0.0.1:healthPort; the probes are then asked there.
func runAsPod(t *testing.T, g *gateway, c *kubetest.Cluster, d *appsv1.Deployment, podName string, healthPort int) *process {
	t.Helper()
	ctx := context.Background()
	ns, spec := d.Namespace, d.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	ctr := spec.Containers[0]
	root := filepath.Join(g.dir, "pod-"+podName)
	for _, sub := range []string{"volumes", "etc-upper", "etc-work", "serviceaccount"} {
		if err := os.MkdirAll(filepath.Join(root, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	sh := func(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
	script := []string{fmt.Sprintf("mount -t overlay overlay -o lowerdir=/etc,upperdir=%s,workdir=%s /etc",
		sh(filepath.Join(root, "etc-upper")), sh(filepath.Join(root, "etc-work")))}

	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	for _, m := range ctr.VolumeMounts {
		v, ok := volumes[m.Name]
		if !ok {
			t.Fatalf("volume mount %s has no volume", m.Name)
		}
		if !strings.HasPrefix(m.MountPath, "/etc/") {
			t.Fatalf("volume %s: mount path %s is outside /etc, which this runner does not cover", m.Name, m.MountPath)
		}
		src := filepath.Join(root, "volumes", m.Name)
		if err := os.Mkdir(src, 0o700); err != nil {
			t.Fatal(err)
		}
		files := map[string][]byte{}
		switch {
		case v.ConfigMap != nil:
			cm, err := c.Client().CoreV1().ConfigMaps(ns).Get(ctx, v.ConfigMap.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatalf("volume %s: %v", m.Name, err)
			}
			for k, s := range cm.Data {
				files[k] = []byte(s)
			}
		case v.Secret != nil:
			s, err := c.Client().CoreV1().Secrets(ns).Get(ctx, v.Secret.SecretName, metav1.GetOptions{})
			if err != nil {
				t.Fatalf("volume %s: %v", m.Name, err)
			}
			files = s.Data
		default:
			t.Fatalf("volume %s: only ConfigMap and Secret volumes are covered", m.Name)
		}
		for k, b := range files {
			if k == "agent.yaml" {
				b = withHealthListen(t, b, fmt.Sprintf("127.0.0.1:%d", healthPort))
			}
			writeFile(t, filepath.Join(src, k), string(b))
		}
		script = append(script, fmt.Sprintf("mkdir -p %[1]s && mount --bind %[2]s %[1]s", sh(m.MountPath), sh(src)))
		if m.ReadOnly {
			script = append(script, "mount -o remount,bind,ro "+sh(m.MountPath))
		}
	}

	// The ServiceAccount's files, where rest.InClusterConfig reads them.
	saDir := filepath.Join(root, "serviceaccount")
	writeFile(t, filepath.Join(saDir, "token"), c.ServiceAccountToken(t, ns, spec.ServiceAccountName))
	writeFile(t, filepath.Join(saDir, "ca.crt"), string(c.CAData))
	writeFile(t, filepath.Join(saDir, "namespace"), ns)
	script = append(script, "mount -t tmpfs tmpfs /run",
		"mkdir -p /run/secrets/kubernetes.io/serviceaccount",
		"mount --bind "+sh(saDir)+" /run/secrets/kubernetes.io/serviceaccount")

	u, err := url.Parse(c.URL)
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"KUBERNETES_SERVICE_HOST=" + u.Hostname(), "KUBERNETES_SERVICE_PORT=" + u.Port()}
	for _, e := range ctr.Env {
		switch {
		case e.ValueFrom == nil:
			env = append(env, e.Name+"="+e.Value)
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name":
			env = append(env, e.Name+"="+podName)
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace":
			env = append(env, e.Name+"="+ns)
		default:
			t.Fatalf("env %s: %+v is not covered", e.Name, e.ValueFrom)
		}
	}
	if len(ctr.Command) != 0 {
		t.Fatalf("command %v: the image's entrypoint (the agent) is what this runner runs", ctr.Command)
	}
	exe := "exec " + sh(g.agentBin)
	for _, a := range ctr.Args {
		exe += " " + sh(a)
	}
	script = append(script, exe)
	return startProcess(t, podName, filepath.Join(g.dir, podName+".log"), env,
		"unshare", "--mount", "--", "sh", "-ec", strings.Join(script, "\n"))
}

// withHealthListen sets healthListen in an agent.yaml.
func withHealthListen(t testing.TB, agentYAML []byte, addr string) []byte {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal(agentYAML, &m); err != nil {
		t.Fatalf("agent.yaml: %v", err)
	}
	if m["healthListen"] != ":8081" {
		t.Fatalf("agent.yaml healthListen %v, want :8081 (the container port)", m["healthListen"])
	}
	m["healthListen"] = addr
	out, err := yaml.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

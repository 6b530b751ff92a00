package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/keyhole-dev/keyhole/config"
	"github.com/keyhole-dev/keyhole/install"
	"github.com/keyhole-dev/keyhole/internal/kubetest"
	"github.com/keyhole-dev/keyhole/internal/testbed"
)

// The Helm charts (install/helm), with the real helm built by hack/helm.sh
// (hack/testbin.sh): Helm v4 for everything, Helm v3 for lint and
// template.
const (
	stubChart  = "../install/helm/keyhole-stub"
	agentChart = "../install/helm/keyhole-agent"
)

// helmVersions are the helm binaries of $KEYHOLE_TESTBIN the charts must
// work with.
var helmVersions = []string{"helm", "helm3"}

// helmCLI runs one helm binary with its own empty cache, config and data
// directories, and with no kubeconfig but the one given.
type helmCLI struct {
	t   testing.TB
	bin string
	env []string
}

func newHelm(t testing.TB, name, kubeconfig string) *helmCLI {
	t.Helper()
	bin := filepath.Join(testbed.TestBin(t, "helm", name), name)
	home := t.TempDir()
	if kubeconfig == "" {
		kubeconfig = filepath.Join(home, "no-kubeconfig")
	}
	return &helmCLI{t: t, bin: bin, env: []string{"HOME=" + home, "KUBECONFIG=" + kubeconfig,
		"HELM_CACHE_HOME=" + filepath.Join(home, "cache"), "HELM_CONFIG_HOME=" + filepath.Join(home, "config"), "HELM_DATA_HOME=" + filepath.Join(home, "data")}}
}

// run runs helm; the error holds its stderr.
func (h *helmCLI) run(args ...string) (string, error) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*kubetest.KubectlTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.bin, args...)
	cmd.Env = append(os.Environ(), h.env...)
	cmd.WaitDelay = 5 * time.Second
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %v; stderr: %s", filepath.Base(h.bin), strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// must is run that fails the test on an error.
func (h *helmCLI) must(args ...string) string {
	h.t.Helper()
	out, err := h.run(args...)
	if err != nil {
		h.t.Fatalf("%v\n%s", err, out)
	}
	return out
}

// kustomize renders a kustomize directory with the real kubectl.
func kustomize(t testing.TB, dir string) string {
	t.Helper()
	out, err := exec.Command("kubectl", "kustomize", filepath.Join("../install/kustomize", dir)).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%v: %s", err, ee.Stderr)
		}
		t.Fatalf("kubectl kustomize %s: %v", dir, err)
	}
	return string(out)
}

// writeValues writes Helm values to a file in dir.
func writeValues(t testing.TB, dir, name string, values []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, values, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// The labels Helm charts add by convention; the kustomize bases and
// AgentManifest do not have them.
var helmLabelKeys = []string{"app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "app.kubernetes.io/version", "helm.sh/chart"}

// typedObjects decodes a multi-document manifest strictly (a field the
// Kubernetes types lack is an error, where decodeObjects drops it) into
// typed objects. With chart set, the manifest is that chart's rendering
// for release: every object must carry Helm's labels and every pod
// template a checksum/config annotation, and those are removed, leaving
// what the kustomize bases and AgentManifest render.
func typedObjects(t testing.TB, manifest, chart, release string) []runtime.Object {
	t.Helper()
	var objs []runtime.Object
	for _, doc := range yamlDocs(t, manifest) {
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			t.Fatalf("%v:\n%s", err, doc)
		}
		if string(j) == "null" {
			continue // a document of comments only
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(j); err != nil {
			t.Fatalf("%v:\n%s", err, doc)
		}
		what := u.GetKind() + " " + u.GetName()
		if chart != "" {
			labels := u.GetLabels()
			for k, want := range map[string]string{"app.kubernetes.io/instance": release, "app.kubernetes.io/managed-by": "Helm"} {
				if labels[k] != want {
					t.Errorf("%s: label %s=%q, want %q", what, k, labels[k], want)
				}
			}
			if !strings.HasPrefix(labels["helm.sh/chart"], chart+"-") || labels["app.kubernetes.io/version"] == "" {
				t.Errorf("%s: labels %v lack helm.sh/chart=%s-VERSION or app.kubernetes.io/version", what, labels, chart)
			}
			if u.GetKind() == "Deployment" {
				sel, _, _ := unstructured.NestedStringMap(u.Object, "spec", "selector", "matchLabels")
				if sel["app.kubernetes.io/instance"] != release {
					t.Errorf("%s: selector %v does not select the release's pods only", what, sel)
				}
				ann, _, _ := unstructured.NestedStringMap(u.Object, "spec", "template", "metadata", "annotations")
				if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(ann["checksum/config"]) {
					t.Errorf("%s: pod template annotations %v lack checksum/config", what, ann)
				}
				for k := range ann {
					if strings.HasPrefix(k, "checksum/") {
						delete(ann, k)
					}
				}
				if len(ann) == 0 {
					unstructured.RemoveNestedField(u.Object, "spec", "template", "metadata", "annotations")
				} else if err := unstructured.SetNestedStringMap(u.Object, ann, "spec", "template", "metadata", "annotations"); err != nil {
					t.Fatal(err)
				}
			}
			deleteKeys(u.Object, helmLabelKeys)
		}
		obj, err := scheme.Scheme.New(u.GroupVersionKind())
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, obj, true); err != nil {
			t.Fatalf("%s does not decode strictly: %v", what, err)
		}
		obj.GetObjectKind().SetGroupVersionKind(u.GroupVersionKind())
		if s, ok := obj.(*corev1.Secret); ok { // stringData is written into data
			for k, v := range s.StringData {
				if s.Data == nil {
					s.Data = map[string][]byte{}
				}
				s.Data[k] = []byte(v)
			}
			s.StringData = nil
		}
		objs = append(objs, obj)
	}
	return objs
}

// deleteKeys deletes the keys from every map in v, however deep.
func deleteKeys(v any, keys []string) {
	switch v := v.(type) {
	case map[string]any:
		for _, k := range keys {
			delete(v, k)
		}
		for _, e := range v {
			deleteKeys(e, keys)
		}
	case []any:
		for _, e := range v {
			deleteKeys(e, keys)
		}
	}
}

// compareChart says where a chart's objects (typedObjects with the chart)
// and the reference's differ. The reference's Namespace has no
// counterpart: Helm makes it (--create-namespace) and does not own it.
// ConfigMaps are compared by the config they hold, parsed.
func compareChart(t *testing.T, chart, ref []runtime.Object) {
	t.Helper()
	byKey := map[string]runtime.Object{}
	for _, o := range chart {
		byKey[objectKey(o)] = o
	}
	for _, r := range ref {
		k := objectKey(r)
		if _, ok := r.(*corev1.Namespace); ok {
			if _, ok := byKey[k]; ok {
				t.Errorf("the chart renders %s: Helm creates the namespace", k)
			}
			delete(byKey, k)
			continue
		}
		c, ok := byKey[k]
		if !ok {
			t.Errorf("%s is in the reference but not in the chart", k)
			continue
		}
		delete(byKey, k)
		if rc, ok := r.(*corev1.ConfigMap); ok {
			cc := c.(*corev1.ConfigMap)
			compareConfigData(t, k, rc, cc)
			rc, cc = rc.DeepCopy(), cc.DeepCopy()
			rc.Data, cc.Data = nil, nil
			r, c = rc, cc
		}
		if !equality.Semantic.DeepEqual(r, c) {
			t.Errorf("%s differs (- reference only, + chart only):\n%s", k, lineDiff(t, r, c))
		}
	}
	for k := range byKey {
		t.Errorf("%s is in the chart but not in the reference", k)
	}
}

// compareConfigData compares a stub.yaml as YAML (the chart's values hold
// the base's file) and validates it as the stub would; an agent.yaml as
// the agent loads it (AgentManifest writes every field); other keys as
// they are.
func compareConfigData(t *testing.T, what string, ref, chart *corev1.ConfigMap) {
	t.Helper()
	if got, want := slices.Sorted(maps.Keys(chart.Data)), slices.Sorted(maps.Keys(ref.Data)); !slices.Equal(got, want) {
		t.Errorf("%s: keys %v, want %v", what, got, want)
	}
	for key, rv := range ref.Data {
		cv := chart.Data[key]
		switch key {
		case "stub.yaml":
			var rm, cm map[string]any
			if err := yaml.Unmarshal([]byte(rv), &rm); err != nil {
				t.Fatal(err)
			}
			if err := yaml.Unmarshal([]byte(cv), &cm); err != nil {
				t.Fatalf("%s stub.yaml: %v", what, err)
			}
			if !equality.Semantic.DeepEqual(rm, cm) {
				t.Errorf("%s stub.yaml differs (- reference only, + chart only):\n%s", what, lineDiff(t, rm, cm))
			}
			if _, err := config.ParseStub("stub.yaml", []byte(cv), config.Env{Hostname: "keyhole-stub-5d8f9c7b6d-x2x9z", PodNamespace: "keyhole"}); err != nil {
				t.Errorf("%s stub.yaml does not validate: %v", what, err)
			}
		case "agent.yaml":
			ra, ca := agentConfig(t, ref, false), agentConfig(t, chart, false)
			if !equality.Semantic.DeepEqual(ra, ca) {
				t.Errorf("%s agent.yaml differs (- reference only, + chart only):\n%s", what, lineDiff(t, ra, ca))
			}
		default:
			if rv != cv {
				t.Errorf("%s %s: %q, want %q", what, key, cv, rv)
			}
		}
	}
}

// objectList names a rendering's objects, for the log.
func objectList(objs []runtime.Object) string {
	var names []string
	for _, o := range objs {
		m, _ := meta.Accessor(o)
		names = append(names, o.GetObjectKind().GroupVersionKind().Kind+" "+m.GetName())
	}
	return strings.Join(names, ", ")
}

// agentParams are the agent of the chart tests without a stub: the
// example overlay's cluster and stub, a private CA.
func agentParams(t testing.TB) install.AgentParams {
	t.Helper()
	ca, err := testbed.NewCA("keyhole-helm-test")
	if err != nil {
		t.Fatal(err)
	}
	return install.AgentParams{Cluster: "prod", StubURL: "https://keyhole.example.com", StubCAPEM: ca.CertPEM,
		JoinSecret: "khj_not-a-real-secret", Image: "ghcr.io/keyhole-dev/keyhole-agent:v0.1.0"}
}

// TestHelmChartsRender renders both charts with Helm 4 and Helm 3 and
// compares them, object by object, with what they must equal: the stub's
// chart with its default values with the stub's kustomize base; the
// agent's chart with the values `stub register` prints
// (install.AgentHelmValues) with AgentManifest for the same cluster; with
// an existing Secret, with the agent's example overlay. It also checks
// that bad values are refused with a message naming the key.
func TestHelmChartsRender(t *testing.T) {
	dir := t.TempDir()
	p := agentParams(t)
	values, err := install.AgentHelmValues(p)
	if err != nil {
		t.Fatal(err)
	}
	valuesFile := writeValues(t, dir, "prod-values.yaml", values)
	manifest, err := install.AgentManifest(p)
	if err != nil {
		t.Fatal(err)
	}
	stubBase := typedObjects(t, kustomize(t, "stub"), "", "")
	agentOverlay := typedObjects(t, kustomize(t, "examples/agent"), "", "")
	registered := typedObjects(t, string(manifest), "", "")
	for _, name := range helmVersions {
		t.Run(name, func(t *testing.T) {
			h := newHelm(t, name, "")
			t.Logf("%s", strings.TrimSpace(h.must("version", "--short")))

			stub := typedObjects(t, h.must("template", "keyhole-stub", stubChart, "-n", "keyhole"), "keyhole-stub", "keyhole-stub")
			t.Logf("keyhole-stub renders %d objects: %s", len(stub), objectList(stub))
			t.Run("stub chart is the kustomize base", func(t *testing.T) { compareChart(t, stub, stubBase) })

			agent := typedObjects(t, h.must("template", "keyhole-agent", agentChart, "-n", "keyhole-system", "-f", valuesFile), "keyhole-agent", "keyhole-agent")
			t.Logf("keyhole-agent renders %d objects: %s", len(agent), objectList(agent))
			t.Run("agent chart is what stub register prints", func(t *testing.T) { compareChart(t, agent, registered) })

			existing := typedObjects(t, h.must("template", "keyhole-agent", agentChart, "-n", "keyhole-system",
				"--set", "cluster=prod,stubURL=https://keyhole.example.com,existingSecret=keyhole-agent,image.tag=v0.1.0"), "keyhole-agent", "keyhole-agent")
			t.Run("agent chart with existingSecret is the example overlay", func(t *testing.T) { compareChart(t, existing, agentOverlay) })

			t.Run("agent chart with existingSecret and stubCA", func(t *testing.T) {
				objs := typedObjects(t, h.must("template", "keyhole-agent", agentChart, "-n", "keyhole-system", "-f", valuesFile,
					"--set", "joinSecret=,existingSecret=agent-join"), "keyhole-agent", "keyhole-agent")
				caInConfigMap(t, objs, string(p.StubCAPEM), "agent-join")
			})
			t.Run("lint --strict", func(t *testing.T) {
				h.must("lint", "--strict", stubChart)
				h.must("lint", "--strict", agentChart, "-f", valuesFile)
				h.must("lint", "--strict", agentChart, "--set", "cluster=prod,stubURL=https://keyhole.example.com,existingSecret=keyhole-agent")
			})
			t.Run("bad values are refused, naming the key", func(t *testing.T) { badValues(t, h, valuesFile) })
		})
	}
}

// caInConfigMap checks an agent rendering with an existing Secret and a
// stub CA: the pod mounts that Secret, the chart makes none, and the CA is
// in the ConfigMap, in the file agent.yaml names under the mount path of
// the ConfigMap's volume.
func caInConfigMap(t *testing.T, objs []runtime.Object, caPEM, secretName string) {
	t.Helper()
	var cm *corev1.ConfigMap
	var d *appsv1.Deployment
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.ConfigMap:
			cm = o
		case *appsv1.Deployment:
			d = o
		case *corev1.Secret:
			t.Errorf("the chart renders Secret %s beside existingSecret", o.Name)
		}
	}
	if cm == nil || d == nil {
		t.Fatalf("no ConfigMap or Deployment in %s", objectList(objs))
	}
	mounts := map[string]string{}
	for _, m := range d.Spec.Template.Spec.Containers[0].VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	var cmDir string
	for _, v := range d.Spec.Template.Spec.Volumes {
		switch {
		case v.ConfigMap != nil && v.ConfigMap.Name == cm.Name:
			cmDir = mounts[v.Name]
		case v.Secret != nil && v.Secret.SecretName != secretName:
			t.Errorf("the pod mounts Secret %s, want %s", v.Secret.SecretName, secretName)
		}
	}
	ac := agentConfig(t, cm, false)
	if filepath.Dir(ac.StubCAFile) != cmDir || cm.Data[filepath.Base(ac.StubCAFile)] != caPEM {
		t.Errorf("stubCAFile %q: want the CA in the ConfigMap mounted at %q; ConfigMap keys %v", ac.StubCAFile, cmDir, slices.Sorted(maps.Keys(cm.Data)))
	}
}

// badValues: a misspelt key, a value of the wrong shape and a missing
// required one each make helm fail with a message naming the key.
func badValues(t *testing.T, h *helmCLI, agentValues string) {
	for _, tc := range []struct {
		chart string
		args  []string
		want  []string // all in the error
	}{
		{stubChart, []string{"--set", "replica=2"}, []string{"replica"}},
		{stubChart, []string{"--set", "image.tags=v1"}, []string{"tags"}},
		{stubChart, []string{"--set", "config.publicUrl=https://x.example.com"}, []string{"publicUrl"}},
		{stubChart, []string{"--set", "config.publicURL=http://x.example.com"}, []string{"publicURL"}},
		{stubChart, []string{"--set", "replicas=three"}, []string{"replicas"}},
		{stubChart, []string{"--set", "image.pullPolicy=Sometimes"}, []string{"pullPolicy"}},
		{stubChart, []string{"--set", "serviceAccount.create=false"}, []string{"serviceAccount.name"}},
		{agentChart, nil, []string{"cluster", "stub register"}},
		{agentChart, []string{"--set", "cluster=prod"}, []string{"stubURL"}},
		{agentChart, []string{"--set", "cluster=prod,stubURL=https://s.example.com"}, []string{"joinSecret or existingSecret"}},
		{agentChart, []string{"-f", agentValues, "--set", "existingSecret=mine"}, []string{"joinSecret and existingSecret"}},
		{agentChart, []string{"-f", agentValues, "--set", "cluster=Prod_1"}, []string{"cluster"}},
		{agentChart, []string{"-f", agentValues, "--set", "joinsecret=x"}, []string{"joinsecret"}},
		{agentChart, []string{"-f", agentValues, "--set", "config.healthListen=:9000"}, []string{"healthListen"}},
		{agentChart, []string{"-f", agentValues, "--set", "stubCA=not-a-pem"}, []string{"stubCA"}},
	} {
		args := append([]string{"template", "x", tc.chart}, tc.args...)
		out, err := h.run(args...)
		if err == nil {
			t.Errorf("helm %v: no error; rendered:\n%.300s", tc.args, out)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("helm %v: error does not name %q: %v", tc.args, w, err)
			}
		}
	}
}

// platformValues are what a platform team sets; the API server must take
// the rendering (--validate=strict catches anything put in the wrong place).
const platformValues = `
image: {pullPolicy: IfNotPresent, digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
imagePullSecrets: [{name: regcred}]
replicas: 4
resources: {requests: {cpu: 50m, memory: 64Mi}, limits: {memory: 256Mi}}
nodeSelector: {kubernetes.io/os: linux}
tolerations: [{key: dedicated, operator: Equal, value: keyhole, effect: NoSchedule}]
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/arch, operator: In, values: [amd64, arm64]}]}]
podAnnotations: {prometheus.io/scrape: "true"}
podLabels: {team: platform}
serviceAccount: {name: keyhole-runner, annotations: {iam.example.com/role: keyhole}}
`

// TestHelmInstall installs, upgrades and uninstalls both charts with the
// real Helm in the real test API server, after a server-side dry run of
// their renderings, and runs the agent from what the agent's chart created
// against a real stub: kubectl reaches the cluster through the stub.
func TestHelmInstall(t *testing.T) {
	c := kubetest.Start(t)
	h := newHelm(t, "helm", c.AdminKubeconfig)
	dir := t.TempDir()
	p := agentParams(t)
	values, err := install.AgentHelmValues(p)
	if err != nil {
		t.Fatal(err)
	}
	valuesFile := writeValues(t, dir, "prod-values.yaml", values)
	platformFile := writeValues(t, dir, "platform.yaml", []byte(platformValues))

	t.Run("server dry run", func(t *testing.T) {
		// Namespaced objects need their namespace for a server-side dry run.
		c.EnsureNamespace(t, "keyhole-dry")
		for _, tc := range []struct {
			what string
			args []string
			n    int // objects
		}{
			{"stub, defaults", []string{"keyhole-stub", stubChart}, 8},
			{"stub, platform values", []string{"keyhole-stub", stubChart, "-f", platformFile, "--set", "podDisruptionBudget.minAvailable=50%,service.type=ClusterIP,metricsService.enabled=false,config.metrics.listen="}, 7},
			{"agent, stub register's values", []string{"keyhole-agent", agentChart, "-f", valuesFile}, 6},
			{"agent, existing Secret, platform values", []string{"keyhole-agent", agentChart, "-f", valuesFile, "-f", platformFile, "--set", "joinSecret=,existingSecret=agent-join"}, 5},
		} {
			manifest := h.must(append(append([]string{"template"}, tc.args...), "-n", "keyhole-dry")...)
			out, err := c.KubectlInput(t, strings.NewReader(manifest), "apply", "--dry-run=server", "--validate=strict", "-f", "-")
			if err != nil {
				t.Errorf("%s: server dry run: %v\n%s", tc.what, err, out)
				continue
			}
			if n := strings.Count(out, "(server dry run)"); n != tc.n {
				t.Errorf("%s: %d objects accepted, want %d:\n%s", tc.what, n, tc.n, out)
			}
			t.Logf("%s: %d objects accepted by the API server (dry run)", tc.what, tc.n)
			if strings.Contains(tc.what, "platform") {
				for _, want := range []string{"kubernetes.io/os: linux", "key: dedicated", "nodeAffinity:", "prometheus.io/scrape", "team: platform",
					"serviceAccountName: keyhole-runner", "@sha256:0123", "imagePullPolicy: IfNotPresent", "name: regcred", "replicas: 4", "memory: 256Mi"} {
					if !strings.Contains(manifest, want) {
						t.Errorf("%s: rendering lacks %q", tc.what, want)
					}
				}
			}
		}
		// The dry run does reject what the API server would.
		bad := strings.Replace(h.must("template", "keyhole-stub", stubChart, "-n", "keyhole-dry"), "minAvailable:", "minAvailabel:", 1)
		if out, err := c.KubectlInput(t, strings.NewReader(bad), "apply", "--dry-run=server", "--validate=strict", "-f", "-"); err == nil || !strings.Contains(err.Error(), "minAvailabel") {
			t.Errorf("a misspelt field passed the server dry run: %v\n%s", err, out)
		}
	})

	t.Run("stub: install, upgrade, uninstall", func(t *testing.T) { helmLifecycle(t, c, h) })
	t.Run("agent from the chart connects to a real stub", func(t *testing.T) { helmAgent(t, c, h) })
}

// deployment reads a Deployment from the API server.
func deployment(t testing.TB, c *kubetest.Cluster, ns, name string) *appsv1.Deployment {
	t.Helper()
	d, err := c.Client().AppsV1().Deployments(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// helmLifecycle installs the stub's chart, upgrades it without and with a
// change of config, and uninstalls it.
func helmLifecycle(t *testing.T, c *kubetest.Cluster, h *helmCLI) {
	const ns, release = "keyhole", "keyhole-stub"
	start := time.Now()
	out := h.must("install", release, stubChart, "-n", ns, "--create-namespace")
	t.Logf("helm install: %v", time.Since(start).Round(time.Millisecond))
	for _, want := range []string{"keyhole-stub register", "create secret tls keyhole-stub-tls", "WARNING: config.publicURL is still the example"} {
		if !strings.Contains(out, want) {
			t.Errorf("install output (NOTES) lacks %q:\n%s", want, out)
		}
	}
	d1 := deployment(t, c, ns, "keyhole-stub")
	sum1 := d1.Spec.Template.Annotations["checksum/config"]

	// The same values again: nothing about the pods changes.
	h.must("upgrade", release, stubChart, "-n", ns)
	if d := deployment(t, c, ns, "keyhole-stub"); d.Generation != d1.Generation || d.Spec.Template.Annotations["checksum/config"] != sum1 {
		t.Errorf("an upgrade with the same values changed the pod template: generation %d -> %d, checksum %s -> %s",
			d1.Generation, d.Generation, sum1, d.Spec.Template.Annotations["checksum/config"])
	}

	// A changed config rolls the Deployment: new checksum, new generation.
	start = time.Now()
	out = h.must("upgrade", release, stubChart, "-n", ns, "--set", "config.publicURL=https://keyhole.corp.test")
	t.Logf("helm upgrade: %v", time.Since(start).Round(time.Millisecond))
	if strings.Contains(out, "WARNING") {
		t.Errorf("NOTES still warn with publicURL set:\n%s", out)
	}
	d2 := deployment(t, c, ns, "keyhole-stub")
	sum2 := d2.Spec.Template.Annotations["checksum/config"]
	if d2.Generation <= d1.Generation || sum2 == sum1 || sum2 == "" {
		t.Errorf("a config change did not roll the Deployment: generation %d -> %d, checksum %s -> %s", d1.Generation, d2.Generation, sum1, sum2)
	}
	cm, err := c.Client().CoreV1().ConfigMaps(ns).Get(context.Background(), "keyhole-stub", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(cm.Data["stub.yaml"], "publicURL: https://keyhole.corp.test") {
		t.Errorf("stub.yaml after the upgrade:\n%s", cm.Data["stub.yaml"])
	}
	t.Logf("config change: generation %d -> %d, checksum/config %.12s -> %.12s", d1.Generation, d2.Generation, sum1, sum2)
	if out := h.must("history", release, "-n", ns); strings.Count(out, "\n") != 4 { // header + 3 revisions
		t.Errorf("helm history:\n%s", out)
	}

	start = time.Now()
	h.must("uninstall", release, "-n", ns)
	t.Logf("helm uninstall: %v", time.Since(start).Round(time.Millisecond))
	if left := releaseObjects(t, c, ns, release); len(left) > 0 {
		t.Errorf("left after helm uninstall: %v", left)
	}
	if out := h.must("list", "-n", ns, "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("helm list after uninstall: %q", out)
	}
}

// releaseObjects lists the objects of a release (by its instance label)
// that the API server still has, of every kind the charts render.
func releaseObjects(t testing.TB, c *kubetest.Cluster, ns, release string) []string {
	t.Helper()
	ctx := context.Background()
	sel := metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + release}
	var left []string
	add := func(kind string, n int, err error) {
		if err != nil {
			t.Fatalf("listing %s: %v", kind, err)
		}
		if n > 0 {
			left = append(left, fmt.Sprintf("%d %s", n, kind))
		}
	}
	cs := c.Client()
	d, err := cs.AppsV1().Deployments(ns).List(ctx, sel)
	add("Deployments", len(d.Items), err)
	cm, err := cs.CoreV1().ConfigMaps(ns).List(ctx, sel)
	add("ConfigMaps", len(cm.Items), err)
	s, err := cs.CoreV1().Secrets(ns).List(ctx, sel)
	add("Secrets", len(s.Items), err)
	sa, err := cs.CoreV1().ServiceAccounts(ns).List(ctx, sel)
	add("ServiceAccounts", len(sa.Items), err)
	svc, err := cs.CoreV1().Services(ns).List(ctx, sel)
	add("Services", len(svc.Items), err)
	pdb, err := cs.PolicyV1().PodDisruptionBudgets(ns).List(ctx, sel)
	add("PodDisruptionBudgets", len(pdb.Items), err)
	r, err := cs.RbacV1().Roles(ns).List(ctx, sel)
	add("Roles", len(r.Items), err)
	rb, err := cs.RbacV1().RoleBindings(ns).List(ctx, sel)
	add("RoleBindings", len(rb.Items), err)
	cr, err := cs.RbacV1().ClusterRoles().List(ctx, sel)
	add("ClusterRoles", len(cr.Items), err)
	crb, err := cs.RbacV1().ClusterRoleBindings().List(ctx, sel)
	add("ClusterRoleBindings", len(crb.Items), err)
	rel, err := cs.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: "owner=helm,name=" + release})
	add("Helm release Secrets", len(rel.Items), err)
	return left
}

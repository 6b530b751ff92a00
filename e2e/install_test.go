package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/keyhole-dev/keyhole/config"
	"github.com/keyhole-dev/keyhole/ha"
	"github.com/keyhole-dev/keyhole/install"
	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

// TestInstallBases renders the kustomize bases and the example overlays
// with the real `kubectl kustomize`, has the test API server validate them
// (`kubectl apply --dry-run=server --validate=strict`), applies them for
// real and asks the API server what their ServiceAccounts may do. It also
// checks that the agent base and the example overlay are what
// `stub register` generates.
func TestInstallBases(t *testing.T) {
	c := kubetest.Start(t)
	const kdir = "../install/kustomize"
	render := func(dir string) string {
		t.Helper()
		out, err := c.Kubectl(t, "kustomize", filepath.Join(kdir, dir))
		if err != nil {
			t.Fatalf("kubectl kustomize %s: %v", dir, err)
		}
		return out
	}
	rendered := map[string]string{}
	for _, dir := range []string{"stub", "agent", "examples/stub", "examples/agent"} {
		rendered[dir] = render(dir)
	}
	// Namespaced objects need their namespace to exist for a server-side
	// dry run (the Namespace in the same stream is not created by it).
	for _, ns := range []string{"keyhole", "keyhole-system"} {
		c.EnsureNamespace(t, ns)
	}
	dryRun := func(what, manifest string) (string, error) {
		return c.KubectlInput(t, strings.NewReader(manifest), "apply", "--dry-run=server", "--validate=strict", "-f", "-")
	}
	for dir, manifest := range rendered {
		out, err := dryRun(dir, manifest)
		if err != nil {
			t.Errorf("%s: server dry run: %v\n%s", dir, err, out)
			continue
		}
		objs := decodeObjects(t, manifest)
		if n := strings.Count(out, "(server dry run)"); n != len(objs) {
			t.Errorf("%s: %d objects accepted, want %d:\n%s", dir, n, len(objs), out)
		}
		t.Logf("%s: %d objects accepted by the API server (dry run)", dir, len(objs))
	}

	// The dry run does reject what the API server would: a misspelt field.
	bad := strings.Replace(rendered["stub"], "minAvailable:", "minAvailabel:", 1)
	if bad == rendered["stub"] {
		t.Fatal("the stub base has no minAvailable to misspell")
	}
	if out, err := dryRun("stub (misspelt)", bad); err == nil || !strings.Contains(err.Error(), "minAvailabel") {
		t.Errorf("a misspelt field passed the server dry run: %v\n%s", err, out)
	}

	// What `stub register` prints passes too, CA and all.
	ca := c.CAData
	gen, err := install.AgentManifest(install.AgentParams{Cluster: "prod", StubURL: "https://keyhole.example.com", StubCAPEM: ca,
		JoinSecret: "khj_not-a-real-secret", Image: "ghcr.io/keyhole-dev/keyhole-agent:v0.1.0"})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := dryRun("register", string(gen)); err != nil {
		t.Errorf("stub register's manifest: server dry run: %v\n%s", err, out)
	}

	t.Run("agent base is what register generates", func(t *testing.T) {
		base := decodeObjects(t, rendered["agent"])
		img := deploymentImage(t, base)
		gen, err := install.AgentManifest(install.AgentParams{Cluster: "any", StubURL: "https://keyhole.example.com", JoinSecret: "x", Image: img})
		if err != nil {
			t.Fatal(err)
		}
		got := decodeObjects(t, string(gen))
		for _, o := range got {
			m, _ := meta.Accessor(o)
			delete(m.GetLabels(), "keyhole.dev/cluster")
		}
		for _, d := range deployments(got) {
			delete(d.Spec.Template.Labels, "keyhole.dev/cluster")
		}
		compareObjects(t, base, got, false)
	})
	t.Run("example overlay is what register generates", func(t *testing.T) {
		overlay := decodeObjects(t, rendered["examples/agent"])
		gen, err := install.AgentManifest(install.AgentParams{Cluster: "prod", StubURL: "https://keyhole.example.com", JoinSecret: "x",
			Image: deploymentImage(t, overlay)})
		if err != nil {
			t.Fatal(err)
		}
		compareObjects(t, overlay, decodeObjects(t, string(gen)), true)
	})

	// Applied for real: the ServiceAccounts may do what they need, and no more.
	for _, dir := range []string{"stub", "agent"} {
		if out, err := c.KubectlInput(t, strings.NewReader(rendered[dir]), "apply", "-f", "-"); err != nil {
			t.Fatalf("%s: apply: %v\n%s", dir, err, out)
		}
	}
	type check struct {
		ns   string // "" = cluster scope, "*" = all namespaces
		args string
		want bool
	}
	canI := map[string][]check{
		"system:serviceaccount:keyhole:keyhole-stub": {
			{"keyhole", "get leases.coordination.k8s.io/keyhole-stub-leader", true},
			{"keyhole", "create leases.coordination.k8s.io", true},
			{"keyhole", "update leases.coordination.k8s.io/keyhole-replica-keyhole-stub-abc", true},
			{"keyhole", "delete leases.coordination.k8s.io", true},
			{"keyhole", "watch leases.coordination.k8s.io", true},
			{"keyhole", "get secrets/keyhole-state", true},
			{"keyhole", "create secrets", true},
			{"keyhole", "update secrets", true},
			{"keyhole", "patch secrets", true},
			{"keyhole", "list secrets", true},
			{"keyhole", "watch secrets", true},
			{"keyhole", "delete secrets", true},
			{"keyhole", "get configmaps", false},
			{"keyhole", "create pods", false},
			{"keyhole", "create roles.rbac.authorization.k8s.io", false},
			{"keyhole", "create rolebindings.rbac.authorization.k8s.io", false},
			{"default", "get secrets", false},
			{"kube-system", "get secrets", false},
			{"kube-system", "update leases.coordination.k8s.io", false},
			{"*", "list secrets", false},
			{"", "list namespaces", false},
			{"", "list nodes", false},
			{"", "impersonate users", false},
			{"", "create clusterrolebindings.rbac.authorization.k8s.io", false},
		},
		"system:serviceaccount:keyhole-system:keyhole-agent": {
			{"", "impersonate users", true},
			{"", "impersonate groups", true},
			{"", "get namespaces/kube-system", true},
			{"", "create subjectaccessreviews.authorization.k8s.io", true},
			{"", "get namespaces/default", false},
			{"", "list namespaces", false},
			{"", "impersonate serviceaccounts", false},
			{"", "impersonate userextras/scopes", false},
			{"keyhole-system", "get secrets", false},
			{"*", "list pods", false},
			{"*", "get secrets", false},
			{"", "create clusterrolebindings.rbac.authorization.k8s.io", false},
		},
	}
	for sa, checks := range canI {
		for _, ck := range checks {
			args := append([]string{"auth", "can-i"}, strings.Fields(ck.args)...)
			switch ck.ns {
			case "":
			case "*":
				args = append(args, "--all-namespaces")
			default:
				args = append(args, "-n", ck.ns)
			}
			args = append(args, "--as", sa)
			out, err := c.Kubectl(t, args...)
			got := strings.TrimSpace(out) == "yes"
			if err != nil && kubetest.ExitCode(err) != 1 {
				t.Errorf("kubectl %s: %v", strings.Join(args, " "), err)
				continue
			}
			if got != ck.want {
				t.Errorf("%s: can-i %s (namespace %q) = %v, want %v", sa, ck.args, ck.ns, got, ck.want)
			}
		}
	}
	t.Run("ha works with the stub's ServiceAccount", func(t *testing.T) { haAsStub(t, c) })

	// Nothing cluster-wide for the stub: in another namespace its list of
	// rights names neither Secrets nor Leases.
	out, err := c.Kubectl(t, "auth", "can-i", "--list", "-n", "default", "--as", "system:serviceaccount:keyhole:keyhole-stub")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "secrets") || strings.Contains(out, "leases") {
		t.Errorf("the stub's ServiceAccount has rights outside its namespace:\n%s", out)
	}
}

// decodeObjects decodes a multi-document manifest into typed objects.
func decodeObjects(t *testing.T, manifest string) []runtime.Object {
	t.Helper()
	var objs []runtime.Object
	for _, doc := range yamlDocs(t, manifest) {
		o, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("decoding %s: %v", doc, err)
		}
		objs = append(objs, o)
	}
	return objs
}

// yamlDocs splits a multi-document manifest, leaving out empty documents.
func yamlDocs(t testing.TB, manifest string) [][]byte {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(manifest)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(bytes.TrimSpace(doc)) != 0 {
			docs = append(docs, doc)
		}
	}
}

func objectKey(o runtime.Object) string {
	m, _ := meta.Accessor(o)
	return fmt.Sprintf("%T %s/%s", o, m.GetNamespace(), m.GetName())
}

func deployments(objs []runtime.Object) []*appsv1.Deployment {
	var out []*appsv1.Deployment
	for _, o := range objs {
		if d, ok := o.(*appsv1.Deployment); ok {
			out = append(out, d)
		}
	}
	return out
}

func deploymentImage(t *testing.T, objs []runtime.Object) string {
	t.Helper()
	ds := deployments(objs)
	if len(ds) != 1 || len(ds[0].Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("want one Deployment with one container, got %d", len(ds))
	}
	return ds[0].Spec.Template.Spec.Containers[0].Image
}

// compareObjects says where kustomize's rendering and AgentManifest's
// differ. The generated Secret has no counterpart (the operator creates it
// from --secret-out). ConfigMaps are compared by the agent config they
// hold, decoded and validated; with fullConfig the configs must be equal,
// else only the keys the base sets (the base leaves stubURL and cluster
// empty).
func compareObjects(t *testing.T, rendered, generated []runtime.Object, fullConfig bool) {
	t.Helper()
	byKey := map[string]runtime.Object{}
	for _, o := range generated {
		byKey[objectKey(o)] = o
	}
	for _, r := range rendered {
		k := objectKey(r)
		g, ok := byKey[k]
		if !ok {
			t.Errorf("%s is rendered but not generated", k)
			continue
		}
		delete(byKey, k)
		if rc, ok := r.(*corev1.ConfigMap); ok {
			gc := g.(*corev1.ConfigMap)
			ra, ga := agentConfig(t, rc, !fullConfig), agentConfig(t, gc, false)
			if !fullConfig {
				ra.StubURL, ra.Cluster = ga.StubURL, ga.Cluster
			}
			if !equality.Semantic.DeepEqual(ra, ga) {
				t.Errorf("agent.yaml differs (- rendered only, + generated only):\n%s", lineDiff(t, ra, ga))
			}
			rc, gc = rc.DeepCopy(), gc.DeepCopy()
			rc.Data, gc.Data = nil, nil
			r, g = rc, gc
		}
		if !equality.Semantic.DeepEqual(r, g) {
			t.Errorf("%s differs (- rendered only, + generated only):\n%s", k, lineDiff(t, r, g))
		}
	}
	for k, o := range byKey {
		if _, ok := o.(*corev1.Secret); !ok {
			t.Errorf("%s is generated but not rendered", k)
		}
	}
}

// lineDiff lists the lines of a's and b's YAML that the other lacks.
func lineDiff(t *testing.T, a, b any) string {
	t.Helper()
	ya, err := yaml.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	yb, err := yaml.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	la, lb := strings.Split(string(ya), "\n"), strings.Split(string(yb), "\n")
	var out []string
	for _, l := range la {
		if !slices.Contains(lb, l) {
			out = append(out, "- "+l)
		}
	}
	for _, l := range lb {
		if !slices.Contains(la, l) {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}

// agentConfig loads the ConfigMap's agent.yaml as the agent would.
// partial: the base's, which names no stub and no cluster yet.
func agentConfig(t *testing.T, cm *corev1.ConfigMap, partial bool) config.Agent {
	t.Helper()
	data := cm.Data["agent.yaml"]
	if partial {
		data = strings.NewReplacer(`stubURL: ""`, "stubURL: https://placeholder.example", `cluster: ""`, "cluster: placeholder").Replace(data)
	}
	f := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(f, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	ac, err := config.LoadAgent(f, config.Env{})
	if err != nil {
		t.Fatalf("%s/%s agent.yaml: %v", cm.Namespace, cm.Name, err)
	}
	return ac
}

// haAsStub runs the stub's hub machinery (package ha: leader election,
// replica Leases, the shared state Secret) with the credentials of the
// base's ServiceAccount, as a replica in the pod would: the Role must
// suffice in the stub's namespace, and must not reach beyond it.
func haAsStub(t *testing.T, c *kubetest.Cluster) {
	const ns, id = "keyhole", "keyhole-stub-0"
	kc := c.ServiceAccountKubeconfig(t, ns, "keyhole-stub")
	cs, err := ha.NewClient(ha.ClientConfig{Kubeconfig: kc, ReplicaID: id})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	el, err := ha.NewElector(ha.ElectorConfig{Client: cs, Namespace: ns, ID: id, Timing: ha.Timing{LeaseDuration: 4 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: 500 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	reps, err := ha.NewReplicas(ha.ReplicasConfig{Client: cs, Namespace: ns, Self: id, LeaseDuration: 4 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(2)
	go func() { defer wg.Done(); el.Run(ctx) }()
	go func() { defer wg.Done(); reps.Run(ctx) }()
	start := time.Now()
	waitFor(t, 60*time.Second, "leadership and a live replica Lease", func() bool {
		return el.IsLeader() && slices.Contains(reps.Live(), id)
	})
	t.Logf("leader and replica Lease after %v", time.Since(start).Round(time.Millisecond))
	if reachable, _, err := reps.Hub(); !reachable {
		t.Errorf("hub not reachable with the stub's ServiceAccount: %v", err)
	}
	for _, name := range []string{ha.LeaderLease, ha.ReplicaLeasePrefix + id} {
		if _, err := c.Client().CoordinationV1().Leases(ns).Get(ctx, name, metav1.GetOptions{}); err != nil {
			t.Errorf("Lease %s/%s: %v", ns, name, err)
		}
	}
	if _, err := reps.CollectGarbage(ctx); err != nil {
		t.Errorf("replica Lease garbage collection: %v", err)
	}
	dir := t.TempDir()
	st := ha.NewState(cs, ns, map[string]string{"clusters.yaml": filepath.Join(dir, "clusters.yaml")}, nil)
	write := func([]byte) ([]byte, error) { return []byte("clusters: {}\n"), nil }
	if err := st.Update(ctx, "clusters.yaml", write); err != nil {
		t.Errorf("updating the shared state: %v", err)
	}
	if err := st.Pull(ctx); err != nil {
		t.Errorf("reading the shared state: %v", err)
	}
	if _, err := c.Client().CoreV1().Secrets(ns).Get(ctx, ha.StateSecret, metav1.GetOptions{}); err != nil {
		t.Errorf("Secret %s/%s: %v", ns, ha.StateSecret, err)
	}
	// The same in another namespace is forbidden.
	other := ha.NewState(cs, "default", map[string]string{"clusters.yaml": filepath.Join(dir, "other.yaml")}, nil)
	if err := other.Update(ctx, "clusters.yaml", write); !apierrors.IsForbidden(err) {
		t.Errorf("shared state in namespace default: %v, want forbidden", err)
	}
}

package install

import (
	"maps"
	"net"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/keyhole-dev/keyhole/config"
)

// These tests read the kustomize bases as files and decode them strictly;
// e2e/install_test.go renders them with the real kubectl and has the test
// API server validate them.

// kustomization is the part of a kustomization.yaml these tests read.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
}

func readKustomization(t *testing.T, dir string) kustomization {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	if err := yaml.Unmarshal(data, &k); err != nil {
		t.Fatalf("%s/kustomization.yaml: %v", dir, err)
	}
	return k
}

// decodeFile decodes dir/name strictly into obj.
func decodeFile(t *testing.T, dir, name string, obj any) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(data, obj); err != nil {
		t.Fatalf("%s/%s does not decode strictly: %v", dir, name, err)
	}
}

// Every resource of the agent's base is one AgentManifest renders, and no
// other file lies in the directory unused.
func TestAgentBaseIsWhatRegisterRenders(t *testing.T) {
	const dir = "kustomize/agent"
	k := readKustomization(t, dir)
	if got, want := slices.Sorted(slices.Values(k.Resources)), slices.Sorted(slices.Values(agentBaseFiles)); !slices.Equal(got, want) {
		t.Errorf("kustomization.yaml resources %v, AgentManifest renders %v", got, want)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "kustomization.yaml" && !slices.Contains(k.Resources, e.Name()) {
			t.Errorf("%s/%s is not a resource of the base", dir, e.Name())
		}
	}
	if _, err := loadAgentBase(); err != nil {
		t.Fatal(err)
	}
	// The base alone names no stub and no cluster: an agent started from it
	// exits and says which key to set.
	b, _ := loadAgentBase()
	f := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(f, []byte(b.cm.Data["agent.yaml"]), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = config.LoadAgent(f, config.Env{})
	if err == nil || !strings.Contains(err.Error(), "stubURL") || !strings.Contains(err.Error(), "cluster") {
		t.Errorf("the bare base's agent.yaml: error %v, want one naming stubURL and cluster", err)
	}
}

// stubBase is the stub's kustomize base decoded into typed objects.
type stubBase struct {
	ns      corev1.Namespace
	sa      corev1.ServiceAccount
	role    rbacv1.Role
	binding rbacv1.RoleBinding
	cm      corev1.ConfigMap
	deploy  appsv1.Deployment
	pdb     policyv1.PodDisruptionBudget
	svc     corev1.Service
	metrics corev1.Service
}

func loadStubBase(t *testing.T) *stubBase {
	t.Helper()
	const dir = "kustomize/stub"
	var b stubBase
	files := map[string]any{
		"namespace.yaml": &b.ns, "serviceaccount.yaml": &b.sa, "role.yaml": &b.role, "rolebinding.yaml": &b.binding,
		"configmap.yaml": &b.cm, "deployment.yaml": &b.deploy, "poddisruptionbudget.yaml": &b.pdb,
		"service.yaml": &b.svc, "service-metrics.yaml": &b.metrics,
	}
	k := readKustomization(t, dir)
	if got, want := slices.Sorted(slices.Values(k.Resources)), slices.Sorted(maps.Keys(files)); !slices.Equal(got, want) {
		t.Fatalf("kustomization.yaml resources %v, want %v", got, want)
	}
	for name, obj := range files {
		decodeFile(t, dir, name, obj)
	}
	return &b
}

func port(t *testing.T, hostPort string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(hostPort)
	if err != nil {
		t.Fatalf("%q: %v", hostPort, err)
	}
	return p
}

func TestStubBase(t *testing.T) {
	b := loadStubBase(t)
	ns := b.ns.Name
	for kind, om := range map[string]metav1.ObjectMeta{"ServiceAccount": b.sa.ObjectMeta, "Role": b.role.ObjectMeta, "RoleBinding": b.binding.ObjectMeta,
		"ConfigMap": b.cm.ObjectMeta, "Deployment": b.deploy.ObjectMeta, "PodDisruptionBudget": b.pdb.ObjectMeta, "Service": b.svc.ObjectMeta} {
		if om.Namespace != ns {
			t.Errorf("%s %s is in namespace %q, want %q", kind, om.Name, om.Namespace, ns)
		}
	}

	// RBAC: Leases and Secrets in its own namespace, nothing else.
	all := []string{"get", "list", "watch", "create", "update", "patch", "delete"}
	wantRules := []rbacv1.PolicyRule{
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: all},
		{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: all},
	}
	if !reflect.DeepEqual(b.role.Rules, wantRules) {
		t.Errorf("Role rules %+v, want %+v", b.role.Rules, wantRules)
	}
	if rr := b.binding.RoleRef; rr.Kind != "Role" || rr.Name != b.role.Name {
		t.Errorf("RoleBinding roleRef %+v, want Role %s", rr, b.role.Name)
	}
	if want := []rbacv1.Subject{{Kind: "ServiceAccount", Name: b.sa.Name, Namespace: ns}}; !reflect.DeepEqual(b.binding.Subjects, want) {
		t.Errorf("RoleBinding subjects %+v, want %+v", b.binding.Subjects, want)
	}

	// Deployment: 3 replicas, surge before stop, spread over nodes.
	d := b.deploy.Spec
	if d.Replicas == nil || *d.Replicas != 3 {
		t.Errorf("replicas %v, want 3", d.Replicas)
	}
	if ru := d.Strategy.RollingUpdate; ru == nil || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 {
		t.Errorf("rolling update %+v, want maxUnavailable 0", ru)
	}
	for k, v := range d.Selector.MatchLabels {
		if d.Template.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod template's labels", k, v)
		}
	}
	if !reflect.DeepEqual(b.pdb.Spec.Selector.MatchLabels, d.Selector.MatchLabels) || b.pdb.Spec.MinAvailable == nil || b.pdb.Spec.MinAvailable.IntValue() != 2 {
		t.Errorf("PodDisruptionBudget %+v, want minAvailable 2 of the Deployment's pods", b.pdb.Spec)
	}
	pod := d.Template.Spec
	if pod.ServiceAccountName != b.sa.Name {
		t.Errorf("pod runs as %q, want %q", pod.ServiceAccountName, b.sa.Name)
	}
	var hostSpread bool
	for _, c := range pod.TopologySpreadConstraints {
		hostSpread = hostSpread || c.TopologyKey == "kubernetes.io/hostname" && c.WhenUnsatisfiable == corev1.DoNotSchedule && c.MaxSkew == 1
	}
	if !hostSpread {
		t.Errorf("no hard spread over nodes: %+v", pod.TopologySpreadConstraints)
	}
	if g := pod.TerminationGracePeriodSeconds; g == nil || *g < 30 || *g > 60 {
		t.Errorf("terminationGracePeriodSeconds %v, want 30-60 s for a drain", g)
	}
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod security context %+v, want runAsNonRoot and seccomp RuntimeDefault", psc)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	if !strings.HasPrefix(c.Image, "ghcr.io/keyhole-dev/keyhole-stub:") {
		t.Errorf("image %q", c.Image)
	}
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
		t.Errorf("container security context %+v", sc)
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	if e := env["POD_NAMESPACE"]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.namespace" {
		t.Errorf("POD_NAMESPACE %+v, want the downward API's metadata.namespace", e)
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}

	// Volumes: where the ConfigMap, the TLS Secret and the state go.
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m
	}
	var configDir, tlsDir, stateDir string
	for _, v := range pod.Volumes {
		m, ok := mounts[v.Name]
		if !ok {
			t.Errorf("volume %s is not mounted", v.Name)
			continue
		}
		switch {
		case v.ConfigMap != nil && v.ConfigMap.Name == b.cm.Name:
			configDir = m.MountPath
		case v.Secret != nil && v.Secret.SecretName == "keyhole-stub-tls":
			tlsDir = m.MountPath
		case v.EmptyDir != nil:
			stateDir = m.MountPath
		}
		if v.EmptyDir == nil && !m.ReadOnly {
			t.Errorf("mount %s is writable", v.Name)
		}
	}
	cfgPath := env["KEYHOLE_CONFIG"].Value
	if path.Dir(cfgPath) != configDir || b.cm.Data[path.Base(cfgPath)] == "" {
		t.Fatalf("KEYHOLE_CONFIG=%q is not a key of the ConfigMap mounted at %q", cfgPath, configDir)
	}

	// The config is a valid StubConfig that fits the pod. A pod name
	// (Deployment name, ReplicaSet hash of up to 10, 5 random) is a valid
	// hub.replicaID.
	podName := b.deploy.Name + "-" + strings.Repeat("b", 10) + "-" + strings.Repeat("x", 5)
	cfg, err := config.ParseStub(cfgPath, []byte(b.cm.Data[path.Base(cfgPath)]), config.Env{Hostname: podName, PodNamespace: ns})
	if err != nil {
		t.Fatalf("stub.yaml does not validate: %v", err)
	}
	if !cfg.Hub.Enabled || cfg.Hub.Namespace != ns || cfg.Hub.Kubeconfig != "" || cfg.Hub.ReplicaID != podName {
		t.Errorf("hub %+v: want enabled, in-cluster, namespace from POD_NAMESPACE, replica ID the pod name", cfg.Hub)
	}
	if p := port(t, cfg.Listen); p != "8443" || ports["https"] != 8443 {
		t.Errorf("listen %q, container port https %d: want 8443 both", cfg.Listen, ports["https"])
	}
	if p := port(t, cfg.Metrics.Listen); p != "9090" || ports["metrics"] != 9090 {
		t.Errorf("metrics.listen %q, container port metrics %d: want 9090 both", cfg.Metrics.Listen, ports["metrics"])
	}
	if cfg.StateDir != stateDir {
		t.Errorf("stateDir %q is not the emptyDir mount %q", cfg.StateDir, stateDir)
	}
	if path.Dir(cfg.TLS.CertFile) != tlsDir || path.Base(cfg.TLS.CertFile) != corev1.TLSCertKey || path.Dir(cfg.TLS.KeyFile) != tlsDir || path.Base(cfg.TLS.KeyFile) != corev1.TLSPrivateKeyKey {
		t.Errorf("tls %+v: want the keys of a kubernetes.io/tls Secret mounted at %q", cfg.TLS, tlsDir)
	}
	// Probes over HTTPS on the stub's port.
	for name, p := range map[string]*corev1.Probe{"/readyz": c.ReadinessProbe, "/healthz": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != name || p.HTTPGet.Scheme != corev1.URISchemeHTTPS || p.HTTPGet.Port.String() != "https" {
			t.Errorf("probe %s: %+v, want HTTPS GET on port https", name, p)
		}
	}

	// Services: 443 to the stub's port; metrics on their own, in-cluster.
	if b.svc.Spec.Type != corev1.ServiceTypeLoadBalancer || len(b.svc.Spec.Ports) != 1 || b.svc.Spec.Ports[0].Port != 443 || b.svc.Spec.Ports[0].TargetPort.String() != "https" {
		t.Errorf("Service %+v, want LoadBalancer 443 -> https", b.svc.Spec)
	}
	if b.metrics.Spec.Type != corev1.ServiceTypeClusterIP || len(b.metrics.Spec.Ports) != 1 || b.metrics.Spec.Ports[0].TargetPort.String() != "metrics" {
		t.Errorf("metrics Service %+v, want ClusterIP -> metrics", b.metrics.Spec)
	}
	for _, s := range []corev1.Service{b.svc, b.metrics} {
		if !reflect.DeepEqual(s.Spec.Selector, d.Selector.MatchLabels) {
			t.Errorf("Service %s selects %v, want the Deployment's pods %v", s.Name, s.Spec.Selector, d.Selector.MatchLabels)
		}
	}
}

// The example overlays' config files are valid configs.
func TestExampleOverlayConfigs(t *testing.T) {
	ac, err := config.LoadAgent("kustomize/examples/agent/agent.yaml", config.Env{})
	if err != nil {
		t.Errorf("examples/agent/agent.yaml: %v", err)
	} else if ac.HealthListen != ":8081" || ac.JoinSecretFile != "/etc/keyhole/secret/join-secret" {
		t.Errorf("examples/agent/agent.yaml: healthListen %q joinSecretFile %q differ from the base", ac.HealthListen, ac.JoinSecretFile)
	}
	if _, err := config.LoadStub("kustomize/examples/stub/stub.yaml", config.Env{Hostname: "keyhole-stub-0", PodNamespace: "keyhole"}); err != nil {
		t.Errorf("examples/stub/stub.yaml: %v", err)
	}
}

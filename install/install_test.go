package install

import (
	"os"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/keyhole-dev/keyhole/certs"
	"github.com/keyhole-dev/keyhole/config"
)

// stubCA returns a real self-signed CA certificate in PEM, as `stub register`
// and `stub kubeconfig` pass it.
func stubCA(t *testing.T) []byte {
	t.Helper()
	b, err := certs.EnsureSelfSigned(t.TempDir(), []string{"kh.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	return b.CAPEM
}

func TestKubeconfig(t *testing.T) {
	ca := stubCA(t)
	cases := []struct {
		name     string
		p        KubeconfigParams
		wantIDs  []string // sorted
		wantUser string
	}{
		{"one cluster", KubeconfigParams{PublicURL: "https://kh.example.com", CAPEM: ca, Clusters: []string{"prod"}, User: "alice", Token: "kht_alice"},
			[]string{"prod"}, "keyhole-alice"},
		{"several, unsorted", KubeconfigParams{PublicURL: "https://kh.example.com:8443", CAPEM: ca, Clusters: []string{"zeta", "alpha", "mid-1"}, User: "bob", Token: "kht_bob"},
			[]string{"alpha", "mid-1", "zeta"}, "keyhole-bob"},
		{"public CA", KubeconfigParams{PublicURL: "https://kh.example.com", Clusters: []string{"b", "a"}, User: "carol", Token: "kht_carol"},
			[]string{"a", "b"}, "keyhole-carol"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := slices.Clone(tc.p.Clusters)
			out, err := Kubeconfig(tc.p)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(in, tc.p.Clusters) {
				t.Errorf("Kubeconfig reordered its argument: %v", tc.p.Clusters)
			}
			cfg, err := clientcmd.Load(out)
			if err != nil {
				t.Fatalf("clientcmd.Load: %v\n%s", err, out)
			}
			if err := clientcmd.Validate(*cfg); err != nil {
				t.Errorf("clientcmd.Validate: %v", err)
			}
			if cfg.CurrentContext != tc.wantIDs[0] {
				t.Errorf("current context %q, want %q", cfg.CurrentContext, tc.wantIDs[0])
			}
			if got := sortedKeys(cfg.Clusters); !slices.Equal(got, tc.wantIDs) {
				t.Errorf("clusters %v, want %v", got, tc.wantIDs)
			}
			if got := sortedKeys(cfg.Contexts); !slices.Equal(got, tc.wantIDs) {
				t.Errorf("contexts %v, want %v", got, tc.wantIDs)
			}
			if got := sortedKeys(cfg.AuthInfos); !slices.Equal(got, []string{tc.wantUser}) {
				t.Fatalf("users %v, want [%s]", got, tc.wantUser)
			}
			if tok := cfg.AuthInfos[tc.wantUser].Token; tok != tc.p.Token {
				t.Errorf("token %q, want %q", tok, tc.p.Token)
			}
			for _, id := range tc.wantIDs {
				c := cfg.Clusters[id]
				if want := tc.p.PublicURL + "/clusters/" + id; c.Server != want {
					t.Errorf("cluster %s: server %q, want %q", id, c.Server, want)
				}
				if string(c.CertificateAuthorityData) != string(tc.p.CAPEM) {
					t.Errorf("cluster %s: CA data %q, want %q", id, c.CertificateAuthorityData, tc.p.CAPEM)
				}
				if c.InsecureSkipTLSVerify {
					t.Errorf("cluster %s skips TLS verification", id)
				}
				ctx := cfg.Contexts[id]
				if ctx.Cluster != id || ctx.AuthInfo != tc.wantUser {
					t.Errorf("context %s: cluster %q user %q", id, ctx.Cluster, ctx.AuthInfo)
				}
				// What kubectl --context id would use.
				rc, err := clientcmd.NewDefaultClientConfig(*cfg, &clientcmd.ConfigOverrides{CurrentContext: id}).ClientConfig()
				if err != nil {
					t.Fatalf("context %s: %v", id, err)
				}
				if rc.Host != tc.p.PublicURL+"/clusters/"+id || rc.BearerToken != tc.p.Token || string(rc.TLSClientConfig.CAData) != string(tc.p.CAPEM) {
					t.Errorf("context %s: rest config host %q token %q CA %q", id, rc.Host, rc.BearerToken, rc.TLSClientConfig.CAData)
				}
			}
		})
	}
}

func TestKubeconfigNoClusters(t *testing.T) {
	for name, ids := range map[string][]string{"nil": nil, "empty": {}} {
		t.Run(name, func(t *testing.T) {
			out, err := Kubeconfig(KubeconfigParams{PublicURL: "https://kh.example.com", Clusters: ids, User: "alice", Token: "t"})
			if err == nil {
				t.Fatalf("no error; output:\n%s", out)
			}
			if !strings.Contains(err.Error(), "stub register") {
				t.Errorf("error %q does not point to `stub register`", err)
			}
		})
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// manifest is AgentManifest's output decoded strictly into typed objects.
type manifest struct {
	ns      corev1.Namespace
	sa      corev1.ServiceAccount
	role    rbacv1.ClusterRole
	binding rbacv1.ClusterRoleBinding
	secret  corev1.Secret
	cm      corev1.ConfigMap
	deploy  appsv1.Deployment
}

// splitDocs splits a multi-document YAML stream at its "---" separator
// lines. (A plain split on the substring "---\n" would also cut a PEM block
// in the Secret, whose "-----BEGIN CERTIFICATE-----" line ends in "---\n".)
func splitDocs(t *testing.T, out []byte) []string {
	t.Helper()
	s := string(out)
	if !strings.HasPrefix(s, "---\n") {
		t.Fatalf("manifest does not start with a document separator:\n%s", s)
	}
	var docs []string
	for _, d := range strings.Split("\n"+s, "\n---\n") {
		if strings.TrimSpace(d) != "" {
			docs = append(docs, d)
		}
	}
	return docs
}

func decodeManifest(t *testing.T, out []byte) *manifest {
	t.Helper()
	var m manifest
	want := []struct {
		kind, apiVersion string
		obj              any
	}{
		{"Namespace", "v1", &m.ns},
		{"ServiceAccount", "v1", &m.sa},
		{"ClusterRole", "rbac.authorization.k8s.io/v1", &m.role},
		{"ClusterRoleBinding", "rbac.authorization.k8s.io/v1", &m.binding},
		{"Secret", "v1", &m.secret},
		{"ConfigMap", "v1", &m.cm},
		{"Deployment", "apps/v1", &m.deploy},
	}
	docs := splitDocs(t, out)
	if len(docs) != len(want) {
		t.Fatalf("%d documents, want %d:\n%s", len(docs), len(want), out)
	}
	for i, d := range docs {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(d), &tm); err != nil {
			t.Fatalf("document %d: %v\n%s", i, err, d)
		}
		if tm.Kind != want[i].kind || tm.APIVersion != want[i].apiVersion {
			t.Fatalf("document %d is %s %s, want %s %s", i, tm.APIVersion, tm.Kind, want[i].apiVersion, want[i].kind)
		}
		if err := yaml.UnmarshalStrict([]byte(d), want[i].obj); err != nil {
			t.Fatalf("document %d (%s) does not decode strictly: %v\n%s", i, tm.Kind, err, d)
		}
	}
	return &m
}

func TestAgentRBACRulesLeastPrivilege(t *testing.T) {
	type grant struct{ group, resource, name, verb string }
	var got []grant
	for i, r := range AgentRBACRules {
		if len(r.NonResourceURLs) > 0 {
			t.Errorf("rule %d grants non-resource URLs %v", i, r.NonResourceURLs)
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					names := r.ResourceNames
					if len(names) == 0 {
						names = []string{""}
					}
					for _, n := range names {
						got = append(got, grant{g, res, n, v})
					}
				}
			}
		}
		for _, s := range slices.Concat(r.APIGroups, r.Resources, r.Verbs, r.ResourceNames) {
			if strings.Contains(s, "*") {
				t.Errorf("rule %d has a wildcard: %+v", i, r)
			}
		}
	}
	want := []grant{
		{"", "users", "", "impersonate"},
		{"", "groups", "", "impersonate"},
		{"", "namespaces", "kube-system", "get"},
		{"authorization.k8s.io", "subjectaccessreviews", "", "create"}, // kubectl --as: may the caller impersonate?
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("AgentRBACRules grant %+v, want exactly %+v", got, want)
	}
}

func TestAgentManifest(t *testing.T) {
	ca := stubCA(t)
	const joinSecret = "khj_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
	cases := []struct {
		name     string
		p        AgentParams
		wantNS   string
		replicas int32
	}{
		{"pinned CA, defaults", AgentParams{Cluster: "prod-eu", StubURL: "https://kh.example.com", StubCAPEM: ca, JoinSecret: joinSecret, Image: "ghcr.io/keyhole-dev/keyhole:v0.1.0"},
			"keyhole-system", 2},
		{"system roots", AgentParams{Cluster: "dev", StubURL: "https://kh.example.com:8443", JoinSecret: joinSecret, Image: "keyhole:dev"},
			"keyhole-system", 2},
		{"own namespace and replicas", AgentParams{Cluster: "c1", StubURL: "https://kh.example.com", StubCAPEM: ca, JoinSecret: joinSecret, Image: "keyhole:dev", Namespace: "infra", Replicas: 3},
			"infra", 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := AgentManifest(tc.p)
			if err != nil {
				t.Fatal(err)
			}
			m := decodeManifest(t, out)
			checkManifest(t, m, tc.p, tc.wantNS, tc.replicas)
		})
	}
}

func checkManifest(t *testing.T, m *manifest, p AgentParams, ns string, replicas int32) {
	t.Helper()
	if m.ns.Name != ns {
		t.Errorf("namespace %q, want %q", m.ns.Name, ns)
	}
	for kind, om := range map[string]metav1.ObjectMeta{"ServiceAccount": m.sa.ObjectMeta, "Secret": m.secret.ObjectMeta, "ConfigMap": m.cm.ObjectMeta, "Deployment": m.deploy.ObjectMeta} {
		if om.Namespace != ns || om.Name == "" {
			t.Errorf("%s %s/%s is not in namespace %s", kind, om.Namespace, om.Name, ns)
		}
	}
	if m.role.Namespace != "" || m.binding.Namespace != "" {
		t.Errorf("cluster-scoped objects carry a namespace: %q %q", m.role.Namespace, m.binding.Namespace)
	}

	// RBAC: exactly AgentRBACRules, bound to the agent's ServiceAccount only.
	if !reflect.DeepEqual(m.role.Rules, AgentRBACRules) {
		t.Errorf("ClusterRole rules %+v, want %+v", m.role.Rules, AgentRBACRules)
	}
	if m.role.AggregationRule != nil {
		t.Errorf("ClusterRole aggregates: %+v", m.role.AggregationRule)
	}
	if rr := m.binding.RoleRef; rr.APIGroup != "rbac.authorization.k8s.io" || rr.Kind != "ClusterRole" || rr.Name != m.role.Name {
		t.Errorf("binding roleRef %+v, want ClusterRole %s", rr, m.role.Name)
	}
	wantSubj := []rbacv1.Subject{{Kind: "ServiceAccount", Name: m.sa.Name, Namespace: ns}}
	if !reflect.DeepEqual(m.binding.Subjects, wantSubj) {
		t.Errorf("binding subjects %+v, want %+v", m.binding.Subjects, wantSubj)
	}

	// Deployment.
	d := m.deploy.Spec
	if d.Replicas == nil || *d.Replicas != replicas {
		t.Errorf("replicas %v, want %d", d.Replicas, replicas)
	}
	if d.Selector == nil || len(d.Selector.MatchLabels) == 0 {
		t.Fatal("deployment has no selector")
	}
	for k, v := range d.Selector.MatchLabels {
		if d.Template.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod template's labels %v", k, v, d.Template.Labels)
		}
	}
	pod := d.Template.Spec
	if pod.ServiceAccountName != m.sa.Name {
		t.Errorf("pod runs as ServiceAccount %q, want %q", pod.ServiceAccountName, m.sa.Name)
	}
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Error("pod is not runAsNonRoot")
	}
	if psc == nil || psc.RunAsUser == nil || *psc.RunAsUser != 65532 {
		t.Error("pod does not run as UID 65532")
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	if c.Image != p.Image {
		t.Errorf("image %q, want %q", c.Image, p.Image)
	}
	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("container has no securityContext")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("root filesystem is writable")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("privilege escalation is allowed")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("container is privileged")
	}
	if sc.RunAsUser != nil && *sc.RunAsUser != 65532 || sc.RunAsNonRoot != nil && !*sc.RunAsNonRoot {
		t.Errorf("container overrides the pod's user: %+v", sc)
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
		t.Errorf("capabilities %+v, want drop [ALL] and add none", sc.Capabilities)
	}

	// Where the Secret and ConfigMap are mounted.
	mounts := map[string]string{} // volume name -> mount path
	for _, vm := range c.VolumeMounts {
		mounts[vm.Name] = vm.MountPath
		if !vm.ReadOnly {
			t.Errorf("mount %s is writable", vm.Name)
		}
	}
	var secretDir, configDir string
	for _, v := range pod.Volumes {
		switch {
		case v.Secret != nil && v.Secret.SecretName == m.secret.Name:
			secretDir = mounts[v.Name]
		case v.ConfigMap != nil && v.ConfigMap.Name == m.cm.Name:
			configDir = mounts[v.Name]
		}
	}
	if secretDir == "" || configDir == "" {
		t.Fatalf("Secret mounted at %q, ConfigMap at %q: want both mounted", secretDir, configDir)
	}
	var cfgArg string
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--config="); ok {
			cfgArg = v
		}
	}
	if path.Dir(cfgArg) != configDir || m.cm.Data[path.Base(cfgArg)] == "" {
		t.Errorf("--config=%q is not a key of the ConfigMap mounted at %s", cfgArg, configDir)
	}

	// The ConfigMap's agent.yaml is a valid AgentConfig for this cluster.
	agentYAML, ok := m.cm.Data["agent.yaml"]
	if !ok {
		t.Fatalf("ConfigMap has no agent.yaml: %v", m.cm.Data)
	}
	f := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(f, []byte(agentYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	ac, err := config.LoadAgent(f, config.Env{})
	if err != nil {
		t.Fatalf("agent.yaml does not load: %v\n%s", err, agentYAML)
	}
	if ac.StubURL != p.StubURL || ac.Cluster != p.Cluster {
		t.Errorf("agent config stubURL %q cluster %q, want %q %q", ac.StubURL, ac.Cluster, p.StubURL, p.Cluster)
	}
	if ac.Kubeconfig != "" || ac.APIServer.URL != "" {
		t.Errorf("agent config does not use in-cluster credentials: kubeconfig %q apiServer %q", ac.Kubeconfig, ac.APIServer.URL)
	}
	if m.secret.Type != corev1.SecretTypeOpaque {
		t.Errorf("secret type %q", m.secret.Type)
	}
	secretData := map[string]string{}
	for k, v := range m.secret.Data {
		secretData[k] = string(v)
	}
	for k, v := range m.secret.StringData {
		secretData[k] = v
	}
	inSecret := func(key, file string) string {
		t.Helper()
		if path.Dir(file) != secretDir {
			t.Errorf("%s %q is not in the Secret's mount %s", key, file, secretDir)
			return ""
		}
		v, ok := secretData[path.Base(file)]
		if !ok {
			t.Errorf("%s %q: the Secret has no key %q (keys %v)", key, file, path.Base(file), sortedKeys(secretData))
		}
		return v
	}
	if got := inSecret("joinSecretFile", ac.JoinSecretFile); got != p.JoinSecret {
		t.Errorf("join secret in the Secret %q, want %q", got, p.JoinSecret)
	}
	if p.StubCAPEM != nil {
		if got := inSecret("stubCAFile", ac.StubCAFile); got != string(p.StubCAPEM) {
			t.Errorf("stub CA in the Secret %q, want %q", got, p.StubCAPEM)
		}
		if len(secretData) != 2 {
			t.Errorf("secret keys %v, want join-secret and stub-ca.crt", sortedKeys(secretData))
		}
	} else {
		if ac.StubCAFile != "" {
			t.Errorf("no CA given, but stubCAFile is %q", ac.StubCAFile)
		}
		if _, ok := secretData["stub-ca.crt"]; ok {
			t.Error("no CA given, but the Secret holds stub-ca.crt")
		}
		if len(secretData) != 1 {
			t.Errorf("secret keys %v, want only join-secret", sortedKeys(secretData))
		}
	}
}

func TestKubeloginKubeconfig(t *testing.T) {
	exec := Kubelogin(KubeloginParams{IssuerURL: "https://dex.example.com/dex", ClientID: "keyhole", ExtraScopes: []string{"email", "groups"},
		CAPEM: []byte("PEM"), ExtraArgs: []string{"--grant-type=device-code"}})
	want := []string{"oidc-login", "get-token", "--oidc-issuer-url=https://dex.example.com/dex", "--oidc-client-id=keyhole",
		"--oidc-extra-scope=email", "--oidc-extra-scope=groups", "--certificate-authority-data=UEVN", "--grant-type=device-code"}
	if exec.Command != "kubectl" || strings.Join(exec.Args, " ") != strings.Join(want, " ") || exec.APIVersion != "client.authentication.k8s.io/v1" {
		t.Fatalf("exec: %s %v (%s)", exec.Command, exec.Args, exec.APIVersion)
	}
	out, err := Kubeconfig(KubeconfigParams{PublicURL: "https://kh.example.com", Clusters: []string{"prod"}, User: "oidc", Exec: exec})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.Load(out)
	if err != nil {
		t.Fatal(err)
	}
	ai := cfg.AuthInfos["keyhole-oidc"]
	if ai == nil || ai.Token != "" || ai.Exec == nil || ai.Exec.Command != "kubectl" {
		t.Fatalf("user entry: %+v", ai)
	}
	if _, err := Kubeconfig(KubeconfigParams{PublicURL: "https://x", Clusters: []string{"a"}, User: "u", Token: "t", Exec: exec}); err == nil {
		t.Fatal("token and exec together accepted")
	}
}

// A CI job's kubeconfig runs `stub ci-token`, never interactively, and
// holds no secret.
func TestCITokenKubeconfig(t *testing.T) {
	for _, tc := range []struct {
		p       CITokenParams
		command string
		args    string
	}{
		{CITokenParams{Provider: CIGitHubActions, Audience: "keyhole"}, "stub", "ci-token --provider github-actions --audience keyhole"},
		{CITokenParams{Provider: CIGitLab, Audience: "keyhole", Command: "./bin/stub"}, "./bin/stub", "ci-token --provider gitlab --audience keyhole --token-env KEYHOLE_TOKEN"},
		{CITokenParams{Provider: CIGitLab, Audience: "k", TokenEnv: "DEPLOY"}, "stub", "ci-token --provider gitlab --audience k --token-env DEPLOY"},
	} {
		exec := CIToken(tc.p)
		if exec.Command != tc.command || strings.Join(exec.Args, " ") != tc.args || exec.APIVersion != "client.authentication.k8s.io/v1" ||
			exec.InteractiveMode != "Never" || len(exec.Env) != 0 || exec.InstallHint == "" {
			t.Errorf("%+v: %+v", tc.p, exec)
		}
		out, err := Kubeconfig(KubeconfigParams{PublicURL: "https://kh.example.com", Clusters: []string{"prod"}, User: "ci-" + tc.p.Provider, Exec: exec})
		if err != nil {
			t.Fatal(err)
		}
		if cfg, err := clientcmd.Load(out); err != nil || cfg.AuthInfos["keyhole-ci-"+tc.p.Provider].Exec == nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
}

// Package install renders what an operator hands to others: the kubeconfig
// a user runs kubectl with (one context per cluster, all through the stub)
// and the manifest a cluster owner applies to run the agent (Namespace,
// ServiceAccount, least-privilege RBAC, Secret, ConfigMap and a Deployment of
// two replicas). Manifests are built from the typed Kubernetes API objects,
// so what comes out is what the API server will accept.
package install

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"sort"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"

	"github.com/keyhole-dev/keyhole/config"
)

// KubeconfigParams describe a user's kubeconfig.
type KubeconfigParams struct {
	PublicURL string                   // the stub
	CAPEM     []byte                   // the stub's CA; nil when it chains to public roots
	Clusters  []string                 // one context per cluster
	User      string                   // name of the kubeconfig user entry
	Token     string                   // a static token, or
	Exec      *clientcmdapi.ExecConfig // a credential plugin (see Kubelogin)
}

// KubeloginParams describe an OIDC login through kubelogin
// (kubectl oidc-login, https://github.com/int128/kubelogin).
type KubeloginParams struct {
	IssuerURL, ClientID, ClientSecret string
	ExtraScopes                       []string
	CAPEM                             []byte   // the issuer's CA, when not a public one
	ExtraArgs                         []string // e.g. --grant-type=device-code
}

// Kubelogin returns the exec credential plugin entry that has kubectl run
// `kubectl oidc-login get-token` for the issuer: the person logs in once in
// a browser (or by device code), and kubelogin caches and refreshes the ID
// token that kubectl then presents to the stub.
func Kubelogin(p KubeloginParams) *clientcmdapi.ExecConfig {
	args := []string{"oidc-login", "get-token", "--oidc-issuer-url=" + p.IssuerURL, "--oidc-client-id=" + p.ClientID}
	if p.ClientSecret != "" {
		args = append(args, "--oidc-client-secret="+p.ClientSecret)
	}
	for _, s := range p.ExtraScopes {
		args = append(args, "--oidc-extra-scope="+s)
	}
	if len(p.CAPEM) > 0 {
		args = append(args, "--certificate-authority-data="+base64.StdEncoding.EncodeToString(p.CAPEM))
	}
	return &clientcmdapi.ExecConfig{
		APIVersion:      "client.authentication.k8s.io/v1",
		Command:         "kubectl",
		Args:            append(args, p.ExtraArgs...),
		InteractiveMode: clientcmdapi.IfAvailableExecInteractiveMode,
		InstallHint:     "kubelogin is not installed: see https://github.com/int128/kubelogin (e.g. kubectl krew install oidc-login)",
	}
}

// Kubeconfig returns a kubeconfig with a cluster and context per cluster ID,
// all using one user; the first cluster (sorted) is the current context.
func Kubeconfig(p KubeconfigParams) ([]byte, error) {
	if len(p.Clusters) == 0 {
		return nil, fmt.Errorf("no cluster is registered yet: run `stub register <cluster-id>` first")
	}
	ids := append([]string(nil), p.Clusters...)
	sort.Strings(ids)
	cfg := clientcmdapi.NewConfig()
	userKey := "keyhole-" + p.User
	if (p.Token == "") == (p.Exec == nil) {
		return nil, fmt.Errorf("a kubeconfig user needs a token or a credential plugin, not both or neither")
	}
	cfg.AuthInfos[userKey] = &clientcmdapi.AuthInfo{Token: p.Token, Exec: p.Exec}
	for _, id := range ids {
		cfg.Clusters[id] = &clientcmdapi.Cluster{Server: p.PublicURL + "/clusters/" + id, CertificateAuthorityData: p.CAPEM}
		cfg.Contexts[id] = &clientcmdapi.Context{Cluster: id, AuthInfo: userKey, Namespace: "default"}
	}
	cfg.CurrentContext = ids[0]
	return clientcmd.Write(*cfg)
}

// AgentParams describe an agent installation.
type AgentParams struct {
	Cluster    string
	StubURL    string
	StubCAPEM  []byte // pinned CA, nil for system roots
	JoinSecret string
	Image      string
	Namespace  string // default keyhole-system
	Replicas   int32  // default 2
}

// AgentRBACRules are all the agent may do in its cluster: impersonate users
// and groups (narrow them with resourceNames to limit who can be reached),
// read the kube-system namespace, whose UID is the cluster fingerprint, and
// ask whether a caller may impersonate someone else (kubectl --as).
var AgentRBACRules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"users", "groups"}, Verbs: []string{"impersonate"}},
	{APIGroups: []string{""}, Resources: []string{"namespaces"}, ResourceNames: []string{"kube-system"}, Verbs: []string{"get"}},
	{APIGroups: []string{"authorization.k8s.io"}, Resources: []string{"subjectaccessreviews"}, Verbs: []string{"create"}},
}

// AgentManifest returns a multi-document YAML manifest for the agent.
func AgentManifest(p AgentParams) ([]byte, error) {
	if p.Namespace == "" {
		p.Namespace = "keyhole-system"
	}
	if p.Replicas == 0 {
		p.Replicas = 2
	}
	name := "keyhole-agent"
	labels := map[string]string{"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "keyhole", "keyhole.dev/cluster": p.Cluster}
	sel := map[string]string{"app.kubernetes.io/name": name}
	meta := func(n string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: n, Namespace: p.Namespace, Labels: labels}
	}
	agentCfg := config.DefaultAgent()
	agentCfg.StubURL = p.StubURL
	agentCfg.Cluster = p.Cluster
	agentCfg.HealthListen = ":8081"
	agentCfg.JoinSecretFile = "/etc/keyhole/secret/join-secret"
	if p.StubCAPEM != nil {
		agentCfg.StubCAFile = "/etc/keyhole/secret/stub-ca.crt"
	}
	cfgYAML, err := yaml.Marshal(agentCfg)
	if err != nil {
		return nil, err
	}
	secretData := map[string]string{"join-secret": p.JoinSecret}
	if p.StubCAPEM != nil {
		secretData["stub-ca.crt"] = string(p.StubCAPEM)
	}
	uid, f, t := int64(65532), false, true
	objs := []any{
		&corev1.Namespace{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"}, ObjectMeta: metav1.ObjectMeta{Name: p.Namespace, Labels: labels}},
		&corev1.ServiceAccount{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"}, ObjectMeta: meta(name)},
		&rbacv1.ClusterRole{TypeMeta: metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRole"},
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}, Rules: AgentRBACRules},
		&rbacv1.ClusterRoleBinding{TypeMeta: metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRoleBinding"},
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: p.Namespace}}},
		&corev1.Secret{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"}, ObjectMeta: meta(name), Type: corev1.SecretTypeOpaque, StringData: secretData},
		&corev1.ConfigMap{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"}, ObjectMeta: meta(name), Data: map[string]string{"agent.yaml": string(cfgYAML)}},
		&appsv1.Deployment{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"}, ObjectMeta: meta(name),
			Spec: appsv1.DeploymentSpec{
				Replicas: &p.Replicas,
				Selector: &metav1.LabelSelector{MatchLabels: sel},
				Strategy: appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType, RollingUpdate: &appsv1.RollingUpdateDeployment{
					MaxUnavailable: &intstr.IntOrString{IntVal: 0}, MaxSurge: &intstr.IntOrString{IntVal: 1}}},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec: corev1.PodSpec{
						ServiceAccountName: name,
						SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: &t, RunAsUser: &uid, RunAsGroup: &uid,
							SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
						Affinity: &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{{
							Weight: 100, PodAffinityTerm: corev1.PodAffinityTerm{TopologyKey: "kubernetes.io/hostname", LabelSelector: &metav1.LabelSelector{MatchLabels: sel}}}}}},
						Containers: []corev1.Container{{
							Name: "agent", Image: p.Image, Args: []string{"--config=/etc/keyhole/config/agent.yaml"},
							Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
							SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: &f, ReadOnlyRootFilesystem: &t,
								Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
							Ports: []corev1.ContainerPort{{Name: "health", ContainerPort: 8081}},
							LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("health")}},
								PeriodSeconds: 10, FailureThreshold: 3},
							ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromString("health")}},
								PeriodSeconds: 5},
							VolumeMounts: []corev1.VolumeMount{
								{Name: "secret", MountPath: "/etc/keyhole/secret", ReadOnly: true},
								{Name: "config", MountPath: "/etc/keyhole/config", ReadOnly: true},
							},
						}},
						Volumes: []corev1.Volume{
							{Name: "secret", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: name}}},
							{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: name}}}},
						},
					},
				},
			}},
	}
	var buf bytes.Buffer
	for _, o := range objs {
		b, err := yaml.Marshal(o)
		if err != nil {
			return nil, err
		}
		buf.WriteString("---\n")
		buf.Write(b)
	}
	return buf.Bytes(), nil
}

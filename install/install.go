// Package install renders what an operator hands to others: the kubeconfig
// a user runs kubectl with (one context per cluster, all through the stub)
// and the manifest a cluster owner applies to run the agent (Namespace,
// ServiceAccount, least-privilege RBAC, Secret, ConfigMap and a Deployment of
// two replicas). It also holds the kustomize bases of the stub and the agent
// (install/kustomize); the agent manifest is built from the agent's base,
// decoded strictly into the typed Kubernetes API objects, so the two cannot
// drift and what comes out is what the API server will accept.
package install

import (
	"bytes"
	"cmp"
	"encoding/base64"
	"fmt"
	"maps"
	"path"
	"sort"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"

	"github.com/keyhole-dev/keyhole/config"
	"github.com/keyhole-dev/keyhole/credplugin"
)

// KubeconfigParams describe a user's kubeconfig.
type KubeconfigParams struct {
	PublicURL string                   // the stub
	CAPEM     []byte                   // the stub's CA; nil when it chains to public roots
	Clusters  []string                 // one context per cluster
	User      string                   // name of the kubeconfig user entry
	Token     string                   // a static token, or
	Exec      *clientcmdapi.ExecConfig // a credential plugin (see Kubelogin)
	// ClusterExec overrides Exec for some clusters: their contexts get a
	// user of their own ("keyhole-<User>-<cluster>") with this plugin, e.g.
	// a login that asks for a token bound to that cluster.
	ClusterExec map[string]*clientcmdapi.ExecConfig
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

// The CI systems `stub ci-token` gets ID tokens from, as package
// credplugin names them.
const (
	CIGitHubActions   = credplugin.GitHubActions
	CIGitLab          = credplugin.GitLab
	DefaultCITokenEnv = credplugin.DefaultTokenEnv
)

// CITokenParams describe the credential plugin of a CI job's kubeconfig.
type CITokenParams struct {
	Command  string // the stub binary as the job runs it: a name on PATH or a path; default "stub"
	Provider string // CIGitHubActions or CIGitLab
	Audience string // of the job's ID tokens
	TokenEnv string // CIGitLab: the id_tokens variable (default DefaultCITokenEnv)
}

// CIToken returns the exec credential plugin entry that has kubectl run
// `stub ci-token` for the job's ID token, again each time the last one
// expired: on GitHub Actions a fresh token from the job's token endpoint,
// on GitLab the job's id_tokens variable. The kubeconfig holds no secret.
func CIToken(p CITokenParams) *clientcmdapi.ExecConfig {
	args := []string{"ci-token", "--provider", p.Provider, "--audience", p.Audience}
	if p.Provider == CIGitLab {
		args = append(args, "--token-env", cmp.Or(p.TokenEnv, DefaultCITokenEnv))
	}
	return &clientcmdapi.ExecConfig{
		APIVersion:      "client.authentication.k8s.io/v1",
		Command:         cmp.Or(p.Command, "stub"),
		Args:            args,
		InteractiveMode: clientcmdapi.NeverExecInteractiveMode,
		InstallHint: "the job needs Keyhole's stub binary for `stub ci-token`, e.g. `go install github.com/keyhole-dev/keyhole/cmd/stub@VERSION` " +
			"or copied out of the stub image: see docs/authentication.md, GitHub Actions and GitLab CI",
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
		user := userKey
		if e, ok := p.ClusterExec[id]; ok {
			user = userKey + "-" + id
			cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Exec: e}
		}
		cfg.Contexts[id] = &clientcmdapi.Context{Cluster: id, AuthInfo: user, Namespace: "default"}
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
// ask whether a caller may impersonate someone else (kubectl --as). They
// are the ClusterRole of the kustomize base (kustomize/agent/clusterrole.yaml).
var AgentRBACRules = mustAgentRules()

// AgentManifest returns a multi-document YAML manifest for the agent: the
// kustomize base (kustomize/agent) with the cluster's namespace, replicas,
// image and config filled in, plus the Secret holding the join secret.
func AgentManifest(p AgentParams) ([]byte, error) {
	if p.Namespace == "" {
		p.Namespace = "keyhole-system"
	}
	if p.Replicas == 0 {
		p.Replicas = 2
	}
	b, err := loadAgentBase()
	if err != nil {
		return nil, err
	}
	label := func(om *metav1.ObjectMeta) {
		om.Labels = maps.Clone(om.Labels)
		if om.Labels == nil {
			om.Labels = map[string]string{}
		}
		om.Labels["keyhole.dev/cluster"] = p.Cluster
	}
	for _, om := range []*metav1.ObjectMeta{&b.ns.ObjectMeta, &b.sa.ObjectMeta, &b.role.ObjectMeta, &b.binding.ObjectMeta, &b.cm.ObjectMeta,
		&b.deploy.ObjectMeta, &b.deploy.Spec.Template.ObjectMeta} {
		label(om)
	}
	b.ns.Name = p.Namespace
	for _, om := range []*metav1.ObjectMeta{&b.sa.ObjectMeta, &b.cm.ObjectMeta, &b.deploy.ObjectMeta} {
		om.Namespace = p.Namespace
	}
	for i := range b.binding.Subjects {
		if b.binding.Subjects[i].Kind == rbacv1.ServiceAccountKind {
			b.binding.Subjects[i].Namespace = p.Namespace
		}
	}
	b.deploy.Spec.Replicas = &p.Replicas
	pod := &b.deploy.Spec.Template.Spec
	pod.Containers[0].Image = p.Image

	// The config: the base's agent.yaml with this cluster's stub and ID.
	const cfgKey = "agent.yaml"
	agentCfg := config.DefaultAgent()
	if err := yaml.UnmarshalStrict([]byte(b.cm.Data[cfgKey]), &agentCfg); err != nil {
		return nil, fmt.Errorf("install: agent base configmap.yaml %s: %w", cfgKey, err)
	}
	agentCfg.StubURL = p.StubURL
	agentCfg.Cluster = p.Cluster
	secretDir := path.Dir(agentCfg.JoinSecretFile)
	if p.StubCAPEM != nil {
		agentCfg.StubCAFile = secretDir + "/stub-ca.crt"
	}
	cfgYAML, err := yaml.Marshal(agentCfg)
	if err != nil {
		return nil, err
	}
	b.cm.Data = map[string]string{cfgKey: string(cfgYAML)}

	// The Secret: named as the pod's secret volume, keyed as the config's files.
	var secretName string
	for _, v := range pod.Volumes {
		if v.Secret != nil {
			secretName = v.Secret.SecretName
		}
	}
	if secretName == "" {
		return nil, fmt.Errorf("install: agent base deployment.yaml mounts no Secret")
	}
	secretData := map[string]string{path.Base(agentCfg.JoinSecretFile): p.JoinSecret}
	if p.StubCAPEM != nil {
		secretData[path.Base(agentCfg.StubCAFile)] = string(p.StubCAPEM)
	}
	secret := &corev1.Secret{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: secretName, Namespace: p.Namespace, Labels: b.sa.Labels},
		Type:       corev1.SecretTypeOpaque, StringData: secretData}

	var buf bytes.Buffer
	for _, o := range []any{&b.ns, &b.sa, &b.role, &b.binding, secret, &b.cm, &b.deploy} {
		out, err := yaml.Marshal(o)
		if err != nil {
			return nil, err
		}
		buf.WriteString("---\n")
		buf.Write(out)
	}
	return buf.Bytes(), nil
}

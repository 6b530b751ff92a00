package install

import (
	"embed"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// agentBaseFS holds the agent's kustomize base (install/kustomize/agent). It
// is the one description of the agent's objects: operators render it with
// `kubectl kustomize`, and AgentManifest fills it in for `stub register`.
//
//go:embed kustomize/agent/*.yaml
var agentBaseFS embed.FS

// agentBaseFiles are the base's resources, in the order AgentManifest
// writes them (the Secret goes before the ConfigMap).
var agentBaseFiles = []string{"namespace.yaml", "serviceaccount.yaml", "clusterrole.yaml", "clusterrolebinding.yaml", "configmap.yaml", "deployment.yaml"}

// agentBase is the agent's kustomize base decoded into typed objects.
type agentBase struct {
	ns      corev1.Namespace
	sa      corev1.ServiceAccount
	role    rbacv1.ClusterRole
	binding rbacv1.ClusterRoleBinding
	cm      corev1.ConfigMap
	deploy  appsv1.Deployment
}

// loadAgentBase decodes the embedded base strictly (an unknown field is an
// error), a fresh copy on every call so callers may change it.
func loadAgentBase() (*agentBase, error) {
	var b agentBase
	into := []any{&b.ns, &b.sa, &b.role, &b.binding, &b.cm, &b.deploy}
	for i, name := range agentBaseFiles {
		data, err := agentBaseFS.ReadFile("kustomize/agent/" + name)
		if err != nil {
			return nil, fmt.Errorf("install: agent base: %w", err)
		}
		if err := yaml.UnmarshalStrict(data, into[i]); err != nil {
			return nil, fmt.Errorf("install: agent base %s: %w", name, err)
		}
	}
	if n := len(b.deploy.Spec.Template.Spec.Containers); n != 1 {
		return nil, fmt.Errorf("install: agent base deployment.yaml: %d containers, want 1", n)
	}
	return &b, nil
}

// mustAgentRules returns the rules of the base's ClusterRole; the base is
// compiled in, so a failure is a build defect (the package's tests load it).
func mustAgentRules() []rbacv1.PolicyRule {
	b, err := loadAgentBase()
	if err != nil {
		panic(err)
	}
	return b.role.Rules
}

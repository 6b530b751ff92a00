package install

import (
	"bytes"
	"fmt"
	"strconv"
)

// LocalAgentParams describe an agent run outside its cluster, on a
// workstation or a VM that reaches both the stub and the cluster's API
// server through a kubeconfig.
type LocalAgentParams struct {
	Cluster        string
	StubURL        string
	StubCAFile     string // the stub's CA, a file path; empty for the system roots
	JoinSecretFile string // where `stub register --secret-out` wrote the secret
	Kubeconfig     string // absolute path of the kubeconfig that reaches the cluster
	Context        string // its context; empty: its current-context
}

// LocalAgentConfig returns an AgentConfig (YAML, with comments) for an
// agent run with `agent --config FILE` outside its cluster. The agent
// calls the API server with the kubeconfig's credentials, so that user
// needs what the agent's ClusterRole grants (AgentRBACRules): impersonate
// users and groups, get the kube-system namespace, create
// SubjectAccessReviews; a cluster admin has them.
func LocalAgentConfig(p LocalAgentParams) ([]byte, error) {
	if p.Cluster == "" || p.StubURL == "" || p.JoinSecretFile == "" || p.Kubeconfig == "" {
		return nil, fmt.Errorf("install: a local agent needs the cluster ID, the stub's URL, the join secret's file and a kubeconfig")
	}
	var b bytes.Buffer
	q := strconv.Quote
	fmt.Fprintf(&b, `# An agent run outside its cluster: agent --config THIS_FILE
# (from a checkout: go run ./cmd/agent --config THIS_FILE).
apiVersion: keyhole.dev/v1alpha1
kind: AgentConfig
stubURL: %s
cluster: %s
joinSecretFile: %s   # the join secret; keep it like a password
`, q(p.StubURL), q(p.Cluster), q(p.JoinSecretFile))
	if p.StubCAFile != "" {
		fmt.Fprintf(&b, "stubCAFile: %s   # the stub's self-signed CA\n", q(p.StubCAFile))
	}
	fmt.Fprintf(&b, "kubeconfig: %s   # the cluster's API server, with this kubeconfig's credentials\n", q(p.Kubeconfig))
	if p.Context != "" {
		fmt.Fprintf(&b, "context: %s\n", q(p.Context))
	}
	return b.Bytes(), nil
}

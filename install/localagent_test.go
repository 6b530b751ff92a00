package install

import (
	"strings"
	"testing"

	"github.com/keyhole-dev/keyhole/config"
)

// What LocalAgentConfig prints is a valid AgentConfig with exactly the
// values given, quoted so that odd paths survive.
func TestLocalAgentConfig(t *testing.T) {
	p := LocalAgentParams{Cluster: "my-cluster", StubURL: "https://localhost:8443", StubCAFile: "/home/me/.local/state/keyhole/tls/ca.crt",
		JoinSecretFile: "/home/me/my cluster: secret", Kubeconfig: "/home/me/.kube/config", Context: "kind-kind"}
	out, err := LocalAgentConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	c, err := config.ParseAgent("agent.yaml", out, config.Env{Hostname: "laptop", Nonce: "abc"})
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if c.StubURL != p.StubURL || c.Cluster != p.Cluster || c.StubCAFile != p.StubCAFile || c.JoinSecretFile != p.JoinSecretFile ||
		c.Kubeconfig != p.Kubeconfig || c.Context != p.Context {
		t.Errorf("parsed %+v from\n%s", c, out)
	}
	p.StubCAFile, p.Context = "", ""
	out, err = LocalAgentConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "stubCAFile") || strings.Contains(string(out), "context:") {
		t.Errorf("system roots and current context should leave both keys out:\n%s", out)
	}
	if _, err := LocalAgentConfig(LocalAgentParams{Cluster: "x"}); err == nil {
		t.Error("no error without a stub URL, secret file and kubeconfig")
	}
}

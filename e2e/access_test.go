package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

// TestPolicyAndLiveReload: per-cluster policy by ID and by label, changed
// on a running stub by editing its config file, without dropping tunnels or
// open streams; a broken edit changes nothing.
func TestPolicyAndLiveReload(t *testing.T) {
	c := kubetest.Start(t)
	g := startGateway(t, c)
	devSecret, tokenFile := g.install("dev", "env=dev")
	prodSecret, _ := g.install("prod", "env=prod")
	g.startAgent(agentOpts{cluster: "dev", id: "d1", secretFile: devSecret, apiURL: c.URL, tokenFile: tokenFile, c: c})
	g.startAgent(agentOpts{cluster: "prod", id: "p1", secretFile: prodSecret, apiURL: c.URL, tokenFile: tokenFile, c: c})
	alice := g.kubeconfig("alice", "devs")
	aliceTok := tokenOf(t, alice)
	bob, _ := g.user("bob", "cluster-admin")
	g.bind("alice", "cluster-admin")
	g.waitAgents(aliceTok, "dev", "d1")
	g.waitAgents(aliceTok, "prod", "p1")
	connectedAt := func() map[string]time.Time {
		out := map[string]time.Time{}
		for _, cs := range g.status(aliceTok) {
			for _, a := range cs.Agents {
				out[a.ID] = a.Connected
			}
		}
		return out
	}
	before := connectedAt()

	reach := func(kc, cluster string) error {
		_, err := g.kubectl(kc, nil, nil, "--context", cluster, "get", "configmaps", "-o", "name")
		return err
	}
	if err := reach(alice, "prod"); err != nil {
		t.Fatalf("no policy yet: alice should reach prod: %v", err)
	}
	// A watch through dev that must survive every reload.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watch := c.KubectlCmdAs(ctx, alice, "--context", "dev", "get", "configmaps", "--watch-only", "-o", "name")
	out, _ := watch.StdoutPipe()
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = watch.Wait() }()
	lines := readLines(out)
	time.Sleep(time.Second)

	waitReach := func(kc, cluster string, allowed bool) {
		t.Helper()
		var err error
		waitFor(t, 15*time.Second, "policy to take effect", func() bool {
			err = reach(kc, cluster)
			if allowed {
				return err == nil
			}
			return err != nil && strings.Contains(err.Error(), "may not reach cluster \""+cluster+"\"")
		}, g.stub)
	}
	g.setConfig(`policy:
- clusterSelector: {env: dev}
  groups: [devs]
- clusters: [prod]
  users: [bob]
`)
	waitReach(alice, "prod", false)
	waitReach(alice, "dev", true)
	waitReach(bob, "prod", true)
	waitReach(bob, "dev", false)
	if st := g.status(aliceTok); len(st) != 1 || st["dev"].ID != "dev" {
		t.Fatalf("alice should see only dev in the cluster list: %v", st)
	}
	_, err := g.kubectl(alice, nil, nil, "--context", "prod", "get", "configmaps")
	if err == nil || !strings.Contains(err.Error(), `Error from server (Forbidden): user "alice" may not reach cluster "prod" through this gateway (policy)`) {
		t.Fatalf("kubectl's message for a policy denial: %v", err)
	}

	// A broken edit is refused and logged; the policy in force stays.
	g.setConfig("policy:\n- clusters: [prod]\n  userz: [alice]\n")
	waitFor(t, 15*time.Second, "the stub to log the refused edit", func() bool {
		_ = reach(alice, "dev") // requests drive the re-check
		return strings.Contains(g.stub.logText(), "config change not applied")
	}, g.stub)
	waitReach(alice, "dev", true)
	waitReach(alice, "prod", false)

	g.setConfig(`policy:
- clusterSelector: {env: dev}
  groups: [devs]
- clusters: [prod]
  users: [bob, alice]
`)
	waitReach(alice, "prod", true)

	after := connectedAt()
	for id, at := range before {
		if !after[id].Equal(at) {
			t.Errorf("agent %s reconnected during the reloads (%v → %v)", id, at, after[id])
		}
	}
	if _, err := c.Client().CoreV1().ConfigMaps("default").Create(context.Background(),
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "after-reloads"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if l := nextLine(t, lines, 30*time.Second, "the watch opened before the reloads"); l.text != "configmap/after-reloads" {
		t.Fatalf("got %q", l.text)
	}
}

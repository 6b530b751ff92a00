package ha

import (
	"context"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes/fake"
)

// The constructors fill the defaults and refuse, with every problem named,
// what client-go's leaderelection would refuse later (or never notice).
func TestElectorConfig(t *testing.T) {
	cs := fake.NewClientset()
	ok := ElectorConfig{Client: cs, Namespace: "keyhole", ID: "r0"}
	e, err := NewElector(ok)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Timing{DefaultLeaseDuration, DefaultRenewDeadline, DefaultRetryPeriod}); e.timing != want {
		t.Fatalf("timing %+v, want the defaults %+v", e.timing, want)
	}
	if e, err := NewElector(ElectorConfig{Client: cs, Namespace: "keyhole", ID: "r0", Timing: Timing{LeaseDuration: time.Minute}}); err != nil ||
		e.timing != (Timing{time.Minute, DefaultRenewDeadline, DefaultRetryPeriod}) {
		t.Fatalf("one value given: %+v %v", e, err)
	}
	job := func(context.Context) {}
	cases := map[string]struct {
		cfg  ElectorConfig
		want []string
	}{
		"lease vs default renew":  {ElectorConfig{Client: cs, Namespace: "k", ID: "r", Timing: Timing{LeaseDuration: 5 * time.Second}}, []string{"leaseDuration 5s must be greater than renewDeadline 10s (default)"}},
		"jitter":                  {ElectorConfig{Client: cs, Namespace: "k", ID: "r", Timing: Timing{RenewDeadline: 2100 * time.Millisecond}}, []string{"renewDeadline 2.1s must be greater than retryPeriod 2s (default) × 1.2"}},
		"sub-second lease":        {ElectorConfig{Client: cs, Namespace: "k", ID: "r", Timing: Timing{500 * time.Millisecond, 200 * time.Millisecond, 100 * time.Millisecond}}, []string{"leaseDuration 500ms must be at least 1s"}},
		"negative":                {ElectorConfig{Client: cs, Namespace: "k", ID: "r", Timing: Timing{RetryPeriod: -time.Second}}, []string{"retryPeriod -1s must be positive"}},
		"missing everything":      {ElectorConfig{Jobs: []Job{job, nil}}, []string{"no client", "namespace is empty", "replica ID is empty", "job 1 is nil"}},
		"all problems, one error": {ElectorConfig{Client: cs, Namespace: "k", Timing: Timing{LeaseDuration: 5 * time.Second}}, []string{"replica ID", "leaseDuration 5s"}},
	}
	for name, tc := range cases {
		e, err := NewElector(tc.cfg)
		if err == nil || e != nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		for _, w := range append(tc.want, "leader election: ") {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", name, err, w)
			}
		}
	}
}

func TestReplicasConfig(t *testing.T) {
	cs := fake.NewClientset()
	r, err := NewReplicas(ReplicasConfig{Client: cs, Namespace: "keyhole", Self: "keyhole-stub-7d9c-x2"})
	if err != nil {
		t.Fatal(err)
	}
	if r.duration != DefaultLeaseDuration || r.Self() != "keyhole-stub-7d9c-x2" {
		t.Fatalf("duration %v self %q", r.duration, r.Self())
	}
	cases := map[string]struct {
		cfg  ReplicasConfig
		want []string
	}{
		"missing":          {ReplicasConfig{}, []string{"no client", "namespace is empty", "replica ID is empty"}},
		"not a name":       {ReplicasConfig{Client: cs, Namespace: "k", Self: "Stub_0"}, []string{`replica ID "Stub_0"`}},
		"sub-second lease": {ReplicasConfig{Client: cs, Namespace: "k", Self: "r0", LeaseDuration: 900 * time.Millisecond}, []string{"leaseDuration 900ms must be at least 1s"}},
	}
	for name, tc := range cases {
		r, err := NewReplicas(tc.cfg)
		if err == nil || r != nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		for _, w := range append(tc.want, "replica Leases: ") {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", name, err, w)
			}
		}
	}
}

func TestNewClient(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "") // not a pod, wherever the test runs
	if _, err := NewClient(ClientConfig{ReplicaID: "r0"}); err == nil || !strings.Contains(err.Error(), "set hub.kubeconfig") {
		t.Fatalf("outside a pod: %v", err)
	}
	if _, err := NewClient(ClientConfig{Kubeconfig: "/nonexistent/kubeconfig"}); err == nil || !strings.Contains(err.Error(), `hub.kubeconfig: "/nonexistent/kubeconfig"`) {
		t.Fatalf("missing kubeconfig: %v", err)
	}
}

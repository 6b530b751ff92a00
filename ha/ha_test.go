package ha

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

// fast is a quick election timing for tests (the product's default is 15 s,
// 10 s, 2 s).
var fast = Timing{LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 250 * time.Millisecond}

func TestHub(t *testing.T) {
	c := kubetest.Start(t)
	cs := c.Client()
	ns := "keyhole-ha"
	c.EnsureNamespace(t, ns)

	t.Run("twenty leader changes", func(t *testing.T) { leaderChanges(t, cs, ns+"-lc", c) })
	t.Run("lease lost while leading", func(t *testing.T) { leaseLost(t, cs, ns+"-ll", c) })
	t.Run("replicas", func(t *testing.T) { replicas(t, cs, ns+"-r", c) })
	t.Run("shared state", func(t *testing.T) { sharedState(t, cs, ns+"-s", c) })
}

type candidate struct {
	e      *Elector
	cancel context.CancelFunc
	done   chan struct{}
	jobRun atomic.Int64 // jobs running now
}

func startCandidate(t *testing.T, cs kubernetes.Interface, ns, id string) *candidate {
	cd := &candidate{done: make(chan struct{})}
	e, err := NewElector(ElectorConfig{Client: cs, Namespace: ns, ID: id, Timing: fast, Logger: zaptest.NewLogger(t).Named(id), Jobs: []Job{func(ctx context.Context) {
		cd.jobRun.Add(1)
		defer cd.jobRun.Add(-1)
		<-ctx.Done()
	}}})
	if err != nil {
		t.Fatal(err)
	}
	cd.e = e
	ctx, cancel := context.WithCancel(context.Background())
	cd.cancel = cancel
	go func() {
		defer close(cd.done)
		cd.e.Run(ctx)
	}()
	return cd
}

func (cd *candidate) stop() {
	cd.cancel()
	<-cd.done
}

func waitUntil(t *testing.T, d time.Duration, what string, ok func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !ok() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

func openFDs() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}

// leaderChanges stops the leader 20 times (a graceful stop releases the
// Lease) with a fresh candidate joining each time, and checks that exactly
// one leads at a time, the leader's job stops with it, and no goroutine or
// descriptor is left behind.
func leaderChanges(t *testing.T, cs kubernetes.Interface, ns string, c *kubetest.Cluster) {
	c.EnsureNamespace(t, ns)
	// Every candidate gets its own clientset, closed with it, so idle HTTP
	// connections are not mistaken for leaks (nor hide them).
	client := func() (kubernetes.Interface, func()) {
		rc := c.RESTConfig()
		hc, err := rest.HTTPClientFor(rc)
		if err != nil {
			t.Fatal(err)
		}
		cs, err := kubernetes.NewForConfigAndClient(rc, hc)
		if err != nil {
			t.Fatal(err)
		}
		// client-go's wrapping round trippers hide CloseIdleConnections
		// from http.Client; utilnet unwraps them.
		return cs, func() { utilnet.CloseIdleConnectionsFor(hc.Transport) }
	}
	type member struct {
		*candidate
		closeIdle func()
	}
	start := func(id string) member {
		cs, ci := client()
		return member{startCandidate(t, cs, ns, id), ci}
	}
	var fds0, g0 int
	opts := []goleak.Option{goleak.IgnoreCurrent()}
	members := []member{start("r0"), start("r1"), start("r2")}
	var handover []time.Duration
	for i := 0; i < 21; i++ {
		var lead member
		waitUntil(t, 10*time.Second, "a leader", func() bool {
			n := 0
			for _, m := range members {
				if m.e.IsLeader() {
					n++
					lead = m
				}
			}
			return n == 1 && lead.jobRun.Load() == 1
		})
		if i == 1 { // after a first change, everything is warm
			fds0, g0 = openFDs(), runtime.NumGoroutine()
		}
		if i == 20 {
			break
		}
		stopped := time.Now()
		lead.stop()
		lead.closeIdle()
		if lead.jobRun.Load() != 0 {
			t.Fatalf("change %d: the old leader's job still runs after it stopped", i)
		}
		members = slices.DeleteFunc(members, func(m member) bool { return m.candidate == lead.candidate })
		members = append(members, start(fmt.Sprintf("r%d", i+3)))
		waitUntil(t, 10*time.Second, "a new leader", func() bool {
			return slices.ContainsFunc(members, func(m member) bool { return m.e.IsLeader() })
		})
		handover = append(handover, time.Since(stopped))
	}
	slices.Sort(handover)
	t.Logf("20 graceful leader changes: handover median %v, max %v (retryPeriod %v)",
		handover[len(handover)/2].Round(time.Millisecond), handover[len(handover)-1].Round(time.Millisecond), fast.RetryPeriod)
	fds1, g1 := openFDs(), runtime.NumGoroutine()
	t.Logf("after change 1: %d fds, %d goroutines; after change 20: %d fds, %d goroutines", fds0, g0, fds1, g1)
	if fds1 > fds0+6 || g1 > g0+20 {
		t.Errorf("growth over 19 leader changes: fds %d -> %d, goroutines %d -> %d", fds0, fds1, g0, g1)
	}
	for _, m := range members {
		m.stop()
		m.closeIdle()
	}
	goleak.VerifyNone(t, opts...)
}

// leaseLost: another holder takes the Lease (as if this replica's renewals
// had been failing); the leader must notice, stop its leader-only work and
// become a candidate again.
func leaseLost(t *testing.T, cs kubernetes.Interface, ns string, c *kubetest.Cluster) {
	c.EnsureNamespace(t, ns)
	cd := startCandidate(t, cs, ns, "victim")
	defer cd.stop()
	waitUntil(t, 10*time.Second, "leading", cd.e.IsLeader)
	ctx := context.Background()
	leases := cs.CoordinationV1().Leases(ns)
	l, err := leases.Get(ctx, LeaderLease, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	thief := "thief"
	long := int32(30)
	now := metav1.NewMicroTime(time.Now())
	l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = &thief, &long, &now
	if _, err := leases.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	d := waitUntil(t, fast.RenewDeadline+5*time.Second, "stepping down", func() bool { return !cd.e.IsLeader() && cd.jobRun.Load() == 0 })
	t.Logf("leader stepped down %v after its Lease was taken (renewDeadline %v)", d.Round(time.Millisecond), fast.RenewDeadline)
	waitUntil(t, 5*time.Second, "seeing the thief as leader", func() bool { return cd.e.Leader() == thief })
	// The thief never renews: after its 30 s the victim would lead again;
	// hand the Lease back sooner to see it campaign.
	if err := leases.Delete(ctx, LeaderLease, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "leading again", cd.e.IsLeader)
}

func replicas(t *testing.T, cs kubernetes.Interface, ns string, c *kubetest.Cluster) {
	c.EnsureNamespace(t, ns)
	d := 3 * time.Second
	newReplicas := func(cs kubernetes.Interface, self string) *Replicas {
		r, err := NewReplicas(ReplicasConfig{Client: cs, Namespace: ns, Self: self, LeaseDuration: d, Logger: zaptest.NewLogger(t).Named(self)})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	a, b := newReplicas(cs, "a"), newReplicas(cs, "b")
	ctxA, stopA := context.WithCancel(context.Background())
	ctxB, stopB := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); a.Run(ctxA) }()
	go func() { defer wg.Done(); b.Run(ctxB) }()
	defer func() { stopA(); stopB(); wg.Wait() }()
	both := []string{"a", "b"}
	waitUntil(t, 10*time.Second, "both live", func() bool { return slices.Equal(a.Live(), both) && slices.Equal(b.Live(), both) })

	// A stopping replica withdraws its Lease: the other drops it at once.
	stopB()
	took := waitUntil(t, 10*time.Second, "b gone", func() bool { return slices.Equal(a.Live(), []string{"a"}) })
	t.Logf("a stopped replica left the live list after %v", took.Round(time.Millisecond))

	// A crashed replica's Lease stays; it is not live after its duration,
	// and the leader's garbage collection removes it a minute later.
	secs := int32(1)
	old := metav1.NewMicroTime(time.Now().Add(-2 * time.Minute))
	holder := "ghost"
	ghost := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: ReplicaLeasePrefix + holder, Namespace: ns, Labels: map[string]string{ReplicaLabel: holder}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &secs, RenewTime: &old}}
	if _, err := cs.CoordinationV1().Leases(ns).Create(context.Background(), ghost, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * d / 3)
	if slices.Contains(a.Live(), holder) {
		t.Fatalf("a stale Lease counts as live: %v", a.Live())
	}
	n, err := a.CollectGarbage(context.Background())
	if err != nil || n != 1 {
		t.Fatalf("garbage collection removed %d, %v; want 1", n, err)
	}

	// The hub unreachable: the replica keeps its last list and says so.
	dead := rest.CopyConfig(c.RESTConfig())
	dead.Host = "https://127.0.0.1:1"
	dcs := kubernetes.NewForConfigOrDie(dead)
	u := newReplicas(dcs, "u")
	ctxU, stopU := context.WithCancel(context.Background())
	doneU := make(chan struct{})
	go func() { defer close(doneU); u.Run(ctxU) }()
	waitUntil(t, 10*time.Second, "hub unreachable noticed", func() bool { ok, _, err := u.Hub(); return !ok && err != nil })
	if !slices.Equal(u.Live(), []string{"u"}) {
		t.Fatalf("live %v", u.Live())
	}
	stopU()
	<-doneU
}

func sharedState(t *testing.T, cs kubernetes.Interface, ns string, c *kubetest.Cluster) {
	c.EnsureNamespace(t, ns)
	dir1, dir2 := t.TempDir(), t.TempDir()
	files := func(dir string) map[string]string {
		return map[string]string{"clusters.yaml": filepath.Join(dir, "clusters.yaml")}
	}
	s1 := NewState(cs, ns, files(dir1), zaptest.NewLogger(t).Named("s1"))
	s2 := NewState(cs, ns, files(dir2), zaptest.NewLogger(t).Named("s2"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s2.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// Ten concurrent writers appending a line each: optimistic concurrency
	// keeps every line.
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- s1.Update(context.Background(), "clusters.yaml", func(cur []byte) ([]byte, error) {
				return append(cur, fmt.Sprintf("line %d\n", i)...), nil
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	lines := func(path string) int {
		b, _ := os.ReadFile(path)
		n := 0
		for _, c := range b {
			if c == '\n' {
				n++
			}
		}
		return n
	}
	waitUntil(t, 10*time.Second, "mirror on the other replica", func() bool { return lines(filepath.Join(dir2, "clusters.yaml")) == 10 })

	// Deleting the Secret removes the state everywhere.
	if err := cs.CoreV1().Secrets(ns).Delete(context.Background(), StateSecret, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "file removed", func() bool {
		_, err := os.Stat(filepath.Join(dir2, "clusters.yaml"))
		return os.IsNotExist(err)
	})

	// The hub unreachable: Pull fails with a message naming the Secret and
	// the files are kept.
	if err := s1.Update(context.Background(), "clusters.yaml", func([]byte) ([]byte, error) { return []byte("kept\n"), nil }); err != nil {
		t.Fatal(err)
	}
	dead := rest.CopyConfig(c.RESTConfig())
	dead.Host = "https://127.0.0.1:1"
	s3 := NewState(kubernetes.NewForConfigOrDie(dead), ns, files(dir1), zaptest.NewLogger(t).Named("s3"))
	err := s3.Pull(context.Background())
	if err == nil {
		t.Fatal("Pull from an unreachable hub succeeded")
	}
	t.Logf("unreachable hub: %v", err)
	if b, _ := os.ReadFile(filepath.Join(dir1, "clusters.yaml")); string(b) != "kept\n" {
		t.Fatalf("file changed to %q", b)
	}
	if _, herr := s3.Health(); herr == nil {
		t.Fatal("Health does not report the hub error")
	}
}

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

// informer is a client-go informer on the ConfigMaps of one namespace
// through the gateway, as controllers run them: it counts its lists and
// watches and records when each object was first seen.
type informer struct {
	lists, watches atomic.Int32
	mu             sync.Mutex
	seen           map[string]time.Time
	errs           []string
}

func startInformer(t *testing.T, kubeconfig, ns string) *informer {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(rc)
	ctx, cancel := context.WithCancel(context.Background())
	inf := &informer{seen: map[string]time.Time{}}
	lw := &cache.ListWatch{
		ListFunc: func(o metav1.ListOptions) (runtime.Object, error) {
			inf.lists.Add(1)
			return cs.CoreV1().ConfigMaps(ns).List(ctx, o)
		},
		WatchFunc: func(o metav1.ListOptions) (watch.Interface, error) {
			inf.watches.Add(1)
			return cs.CoreV1().ConfigMaps(ns).Watch(ctx, o)
		},
	}
	si := cache.NewSharedIndexInformer(lw, &corev1.ConfigMap{}, 0, cache.Indexers{})
	_ = si.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
		inf.mu.Lock()
		inf.errs = append(inf.errs, err.Error())
		inf.mu.Unlock()
	})
	if _, err := si.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: func(o any) {
		inf.mu.Lock()
		defer inf.mu.Unlock()
		if name := o.(*corev1.ConfigMap).Name; inf.seen[name].IsZero() {
			inf.seen[name] = time.Now()
		}
	}}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); si.RunWithContext(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, 30*time.Second, "the informer to sync", si.HasSynced)
	return inf
}

func (inf *informer) seenAt(name string) time.Time {
	inf.mu.Lock()
	defer inf.mu.Unlock()
	return inf.seen[name]
}

func (inf *informer) watchErrors() []string {
	inf.mu.Lock()
	defer inf.mu.Unlock()
	return append([]string(nil), inf.errs...)
}

// TestWhatClientsSee stops, in turn, the cluster's agent (SIGTERM, then
// SIGKILL, each restarted) and the stub (SIGTERM, then SIGKILL, each
// restarted), with an interactive `kubectl get -w` and a client-go informer
// open through the gateway each time. It checks and logs what each client
// sees: kubectl's exit code, how soon it exits and its last words; whether
// the informer recovers on its own, how, and how soon it sees an object
// created after the fault. docs/operations.md ("What clients see") is this
// test's table.
func TestWhatClientsSee(t *testing.T) {
	c := kubetest.Start(t)
	g := startGateway(t, c)
	secretFile, tokenFile := g.install("e2e")
	agent := func(id string) *process {
		return g.startAgent(agentOpts{cluster: "e2e", id: id, secretFile: secretFile, apiURL: c.URL, tokenFile: tokenFile, c: c, extra: drainFast})
	}
	// One agent, so that it carries every stream: a second one would take
	// new requests while the first drains, but which one carries a watch is
	// not for the test to choose.
	a1 := agent("a1")
	alice, aliceTok := g.user("alice", "cluster-admin")
	g.waitAgents(aliceTok, "e2e", "a1")
	c.EnsureNamespace(t, "w")
	create := func(name string) {
		t.Helper()
		if _, err := c.Client().CoreV1().ConfigMaps("w").Create(context.Background(), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	create("before")

	type fault struct {
		name  string
		do    func() (victim string) // makes the fault; returns what it stopped
		after func(victim string)    // brings the stopped part back
	}
	agentFault := func(sig syscall.Signal) func() string {
		return func() string { a1.signal(sig); return "agent" }
	}
	agentBack := func(string) {
		<-a1.done
		a1 = agent("a1")
		g.waitAgents(aliceTok, "e2e", "a1")
	}
	stubFault := func(sig syscall.Signal) func() string {
		return func() string { g.stub.signal(sig); return "stub" }
	}
	stubBack := func(string) {
		<-g.stub.done
		g.restartStub(t)
		waitFor(t, 60*time.Second, "the stub to come back", func() bool { return g.code("/healthz") == http.StatusOK }, g.stub)
		g.waitAgents(aliceTok, "e2e", "a1")
	}
	for i, f := range []fault{
		{"agent SIGTERM", agentFault(syscall.SIGTERM), agentBack},
		{"agent SIGKILL", agentFault(syscall.SIGKILL), agentBack},
		{"stub SIGTERM", stubFault(syscall.SIGTERM), stubBack},
		{"stub SIGKILL", stubFault(syscall.SIGKILL), stubBack},
	} {
		watchCmd := g.startKubectl(t, "kubectl get -w", alice, "get", "configmaps", "-n", "w", "-w", "-o", "name")
		if l := watchCmd.next(t, 30*time.Second); !strings.HasPrefix(l, "configmap/") {
			t.Fatalf("%s: kubectl get -w printed %q first", f.name, l)
		}
		inf := startInformer(t, alice, "w")
		lists, watches := inf.lists.Load(), inf.watches.Load()
		at := time.Now()
		victim := f.do()
		// kubectl get -w ends: it does not reconnect by itself.
		select {
		case <-watchCmd.done:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: kubectl get -w still running 30 s later", f.name)
		}
		ended := watchCmd.at.Sub(at)
		lines := strings.Split(strings.TrimSpace(watchCmd.stderr.String()), "\n")
		f.after(victim)
		back := time.Since(at)
		// The informer recovers by itself and sees what happened since.
		name := fmt.Sprintf("after-%d", i)
		create(name)
		waitFor(t, 90*time.Second, f.name+": the informer to see "+name, func() bool { return !inf.seenAt(name).IsZero() })
		errs := inf.watchErrors()
		t.Logf("%s (%s): kubectl get -w exit %d after %v, stderr %q; back after %v; informer: %d lists, %d watches since, watch errors %q, saw the new object %v after the fault",
			f.name, victim, exitCode(watchCmd.err), ended.Round(time.Millisecond), lines[len(lines)-1], back.Round(time.Millisecond),
			inf.lists.Load()-lists, inf.watches.Load()-watches, errs, inf.seenAt(name).Sub(at).Round(time.Millisecond))
	}
}

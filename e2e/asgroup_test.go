package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

// sarAuditPolicy makes kube-apiserver record every SubjectAccessReview it
// answers, and nothing else: the count of reviews an agent asked for.
const sarAuditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
- level: Metadata
  resources: [{group: authorization.k8s.io, resources: [subjectaccessreviews]}]
- level: None
`

// agentUser is the identity of the agents install() sets up.
const agentUser = "system:serviceaccount:keyhole-system:keyhole-agent"

// TestAsGroupReviews runs the input, kubectl --as=u --as-group=g1
// … --as-group=g40 get ns by an allowed impersonator, through the gateway
// and directly, with the real kubectl, stub, agent and kube-apiserver,
// whose audit log counts the SubjectAccessReviews the agent asks. It
// asserts the counts: 41 on a first call, none on a repeat within the
// agent's 10 s TTL, 41 for five identical calls at once, one per target
// for 300 copies of one group, none for a request over the limit. It logs
// the latencies (figures for docs/benchmarks.md), asserting none.
func TestAsGroupReviews(t *testing.T) {
	dir := t.TempDir()
	policy, auditLog := filepath.Join(dir, "audit-policy.yaml"), filepath.Join(dir, "apiserver-audit.log")
	writeFile(t, policy, sarAuditPolicy)
	c := kubetest.Start(t, "--audit-policy-file="+policy, "--audit-log-path="+auditLog, "--audit-log-mode=blocking")
	g := startGateway(t, c)
	secretFile, tokenFile := g.install("acc")
	agent := g.startAgent(agentOpts{cluster: "acc", id: "a1", secretFile: secretFile, apiURL: c.URL, tokenFile: tokenFile, c: c})

	// imp may impersonate any user and group; everyone authenticated may
	// list namespaces (what --as u runs as). The same rights for a
	// ServiceAccount, the direct caller.
	c.Apply(t, `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: e2e-impersonator}
rules:
- apiGroups: [""]
  resources: [users, groups]
  verbs: [impersonate]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: e2e-ns-reader}
rules:
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: e2e-ns-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-ns-reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:authenticated"}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: e2e-direct-impersonator}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-impersonator}
subjects: [{kind: ServiceAccount, name: imp, namespace: default}]
`)
	imp, impTok := g.user("imp", "e2e-impersonator")
	direct := c.ServiceAccountKubeconfig(t, "default", "imp")
	g.waitAgents(impTok, "acc", "a1")

	sars := func() int {
		data, _ := os.ReadFile(auditLog)
		n := 0
		for _, line := range strings.Split(string(data), "\n") {
			var ev auditv1.Event
			if json.Unmarshal([]byte(line), &ev) == nil && ev.Stage == auditv1.StageResponseComplete && ev.User.Username == agentUser &&
				ev.ObjectRef != nil && ev.ObjectRef.Resource == "subjectaccessreviews" {
				n++
			}
		}
		return n
	}
	// settled waits until the count stops moving (kube-apiserver writes a
	// record as its response completes) and returns it.
	settled := func() int {
		last, since := sars(), time.Now()
		for time.Since(since) < 500*time.Millisecond {
			time.Sleep(50 * time.Millisecond)
			if n := sars(); n != last {
				last, since = n, time.Now()
			}
		}
		return last
	}
	asArgs := func(user string, groups []string) []string {
		args := []string{"--as=" + user}
		for _, gr := range groups {
			args = append(args, "--as-group="+gr)
		}
		return append(args, "get", "ns", "-o", "name")
	}
	run := func(kc string, viaGateway bool, args []string) (time.Duration, error) {
		start := time.Now()
		var err error
		if viaGateway {
			_, err = g.kubectl(kc, nil, nil, args...)
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), kubetest.KubectlTimeout)
			defer cancel()
			err = c.KubectlCmdAs(ctx, kc, args...).Run()
		}
		return time.Since(start), err
	}
	mustRun := func(what, kc string, viaGateway bool, args []string) time.Duration {
		t.Helper()
		d, err := run(kc, viaGateway, args)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return d
	}
	// kubectl's discovery cache, filled for both servers, so each call
	// below is one request.
	mustRun("warm-up via the gateway", imp, true, []string{"get", "ns"})
	mustRun("warm-up direct", direct, false, []string{"get", "ns"})

	// The input, three times with targets the agent has not
	// decided yet, then repeated within the TTL.
	// requests are the paths of the requests the agent forwarded, from its
	// log (at debug), after the first skip bytes of it.
	requests := func(skip int) (paths []string, end int) {
		text := agent.logText()
		for _, line := range strings.Split(text[skip:], "\n") {
			var e struct{ Msg, Path string }
			if json.Unmarshal([]byte(line), &e) == nil && e.Msg == "request" {
				paths = append(paths, e.Path)
			}
		}
		return paths, len(text)
	}
	var cold, warm, directTimes []time.Duration
	for i := range 3 {
		user, groups := fmt.Sprintf("cold%d-u", i), groupNames(fmt.Sprintf("cold%d-g", i), 40)
		_, logAt := requests(0)
		before := settled()
		cold = append(cold, mustRun("first call", imp, true, asArgs(user, groups)))
		if n := settled() - before; n != 41 {
			t.Errorf("first call %d: %d SubjectAccessReviews, want 41 (the user and 40 groups, once each)", i, n)
		}
		paths, _ := requests(logAt)
		t.Logf("first call %d: kubectl's requests: %v", i, paths)
		before = settled()
		for range 3 {
			warm = append(warm, mustRun("repeat", imp, true, asArgs(user, groups)))
		}
		if n := settled() - before; n != 0 {
			t.Errorf("3 repeats within the TTL: %d SubjectAccessReviews, want 0", n)
		}
		directTimes = append(directTimes, mustRun("direct", direct, false, asArgs(user, groups)))
	}
	t.Logf("kubectl --as=U 40×--as-group get ns: direct %v; via the gateway first call %v, repeats within the TTL %v",
		medianDuration(directTimes), medianDuration(cold), medianDuration(warm))
	t.Logf("  samples: direct %v; first calls %v; repeats %v", directTimes, cold, warm)

	// Five identical calls at once, targets new to the agent: the reviews
	// are asked once and shared.
	parallel := func(what, user string, callers []string, groups []string) time.Duration {
		t.Helper()
		var mu sync.Mutex
		var worst time.Duration
		var wg sync.WaitGroup
		for _, kc := range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d, err := run(kc, true, asArgs(user, groups))
				if err != nil {
					t.Errorf("%s: %v", what, err)
				}
				mu.Lock()
				worst = max(worst, d)
				mu.Unlock()
			}()
		}
		wg.Wait()
		return worst
	}
	before := settled()
	same := parallel("five identical calls", "par-u", []string{imp, imp, imp, imp, imp}, groupNames("par-g", 40))
	if n := settled() - before; n != 41 {
		t.Errorf("five identical calls at once: %d SubjectAccessReviews, want 41", n)
	}
	// Five callers at once: five sets of decisions.
	var callers []string
	for i := range 5 {
		kc, _ := g.user(fmt.Sprintf("imp%d", i), "e2e-impersonator")
		callers = append(callers, kc)
	}
	before = settled()
	five := parallel("five callers", "five-u", callers, groupNames("five-g", 40))
	if n := settled() - before; n != 5*41 {
		t.Errorf("five callers at once: %d SubjectAccessReviews, want %d", n, 5*41)
	}
	t.Logf("five calls at once, targets new to the agent: slowest %v (one caller), %v (five callers)", same, five)

	// 300 copies of one group: one review for it, one for the user.
	var copies []string
	for range 300 {
		copies = append(copies, "solo")
	}
	before = settled()
	d := mustRun("300 copies of one group", imp, true, asArgs("u300", copies))
	if n := settled() - before; n != 2 {
		t.Errorf("--as-group solo ×300: %d SubjectAccessReviews, want 2", n)
	}
	t.Logf("--as=u300 --as-group=solo ×300: %v", d)

	// Over the limit: refused, in kubectl's words, before any review.
	before = settled()
	_, err := run(imp, true, asArgs("limit-u", groupNames("limit-g", 65)))
	if err == nil || !strings.Contains(err.Error(), "Error from server (BadRequest)") || !strings.Contains(err.Error(), "at most 64 per request") {
		t.Errorf("65 groups: %v, want BadRequest naming the limit of 64", err)
	}
	if n := settled() - before; n != 0 {
		t.Errorf("65 groups: %d SubjectAccessReviews, want 0", n)
	}
	if _, err := run(direct, false, asArgs("limit-u", groupNames("limit-g", 65))); err != nil {
		t.Logf("65 groups direct: %v", err) // the API server itself has no such limit
	}

	// The agent's own account of the first calls, at debug.
	var checked int
	for _, line := range strings.Split(agent.logText(), "\n") {
		if strings.Contains(line, `"impersonation checked"`) && strings.Contains(line, `"targets":41,"reviews":41`) {
			checked++
		}
	}
	if checked == 0 {
		t.Errorf("the agent logged no check of 41 targets with 41 reviews:\n%s", agent.tail(20))
	}
}

// groupNames is n group names prefix1 … prefixN.
func groupNames(prefix string, n int) []string {
	var gs []string
	for i := 1; i <= n; i++ {
		gs = append(gs, fmt.Sprintf("%s%d", prefix, i))
	}
	return gs
}

// medianDuration of ds (the upper one of an even count).
func medianDuration(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

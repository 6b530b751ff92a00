package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// fakeReviews answers SubjectAccessReviews with allow, records them, and
// counts how many are in flight at once.
type fakeReviews struct {
	allow func(authorizationv1.SubjectAccessReviewSpec) bool
	// fail, when set, is the error every review gets.
	fail error
	// gate, when set, holds each review until it is closed (or the
	// review's context ends).
	gate chan struct{}
	// releaseAt, when > 0, closes gate once that many reviews are in
	// flight at the same time.
	releaseAt int

	mu          sync.Mutex
	sent        []authorizationv1.SubjectAccessReviewSpec
	inflight    int
	maxInflight int
	released    bool
}

func (f *fakeReviews) Create(ctx context.Context, sar *authorizationv1.SubjectAccessReview, _ metav1.CreateOptions) (*authorizationv1.SubjectAccessReview, error) {
	f.mu.Lock()
	f.sent = append(f.sent, sar.Spec)
	f.inflight++
	f.maxInflight = max(f.maxInflight, f.inflight)
	if f.releaseAt > 0 && f.inflight == f.releaseAt && !f.released {
		f.released = true
		close(f.gate)
	}
	f.mu.Unlock()
	defer func() { f.mu.Lock(); f.inflight--; f.mu.Unlock() }()
	if f.gate != nil {
		select {
		case <-f.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Second):
			return nil, errors.New("fakeReviews: the gate never opened")
		}
	}
	if f.fail != nil {
		return nil, f.fail
	}
	out := sar.DeepCopy()
	out.Status.Allowed = f.allow(sar.Spec)
	if !out.Status.Allowed {
		out.Status.Reason = "no RBAC rule"
	}
	return out, nil
}

func (f *fakeReviews) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sent)
}

// fakeClock is a cache clock that moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) step(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// allowTeams: alice may impersonate user bob and every group named team-*.
func allowTeams(s authorizationv1.SubjectAccessReviewSpec) bool {
	ra := s.ResourceAttributes
	return s.User == "alice" && ra.Verb == "impersonate" &&
		((ra.Resource == "users" && ra.Name == "bob") || (ra.Resource == "groups" && strings.HasPrefix(ra.Name, "team-")))
}

func impersonate(resource, name string) authorizationv1.ResourceAttributes {
	return authorizationv1.ResourceAttributes{Verb: "impersonate", Resource: resource, Name: name}
}

func TestReviewKey(t *testing.T) {
	base := newReviewKey("alice", []string{"dev", "ops"}, impersonate("groups", "g"))
	same := map[string]reviewKey{
		"groups in another order": newReviewKey("alice", []string{"ops", "dev"}, impersonate("groups", "g")),
		"a group twice":           newReviewKey("alice", []string{"dev", "ops", "dev"}, impersonate("groups", "g")),
	}
	for name, k := range same {
		if k != base {
			t.Errorf("%s: another key", name)
		}
	}
	other := map[string]reviewKey{
		"another user":      newReviewKey("bob", []string{"dev", "ops"}, impersonate("groups", "g")),
		"fewer groups":      newReviewKey("alice", []string{"dev"}, impersonate("groups", "g")),
		"groups run on":     newReviewKey("alice", []string{"devops"}, impersonate("groups", "g")),
		"a comma in a name": newReviewKey("alice", []string{"dev,ops"}, impersonate("groups", "g")),
		"another target":    newReviewKey("alice", []string{"dev", "ops"}, impersonate("groups", "h")),
		"another resource":  newReviewKey("alice", []string{"dev", "ops"}, impersonate("users", "g")),
		"another verb":      newReviewKey("alice", []string{"dev", "ops"}, authorizationv1.ResourceAttributes{Verb: "create", Resource: "groups", Name: "g"}),
		"a namespace":       newReviewKey("alice", []string{"dev", "ops"}, authorizationv1.ResourceAttributes{Namespace: "x", Verb: "impersonate", Resource: "groups", Name: "g"}),
		"a subresource":     newReviewKey("alice", []string{"dev", "ops"}, authorizationv1.ResourceAttributes{Verb: "impersonate", Resource: "groups", Subresource: "s", Name: "g"}),
	}
	for name, k := range other {
		if k == base {
			t.Errorf("%s: the same key", name)
		}
	}
}

// Decisions, allowed and denied, are kept for the TTL per caller and
// target; errors are not kept.
func TestReviewerKeepsDecisions(t *testing.T) {
	f := &fakeReviews{allow: allowTeams}
	clock := &fakeClock{t: time.Unix(1000, 0)}
	rv := newReviewer(f, reviewTTL, reviewCacheSize, clock)
	ctx := context.Background()
	ask := func(user, group string, wantAllowed bool, wantHow how) {
		t.Helper()
		d, h, err := rv.decide(ctx, user, []string{"dev"}, impersonate("groups", group))
		if err != nil || d.allowed != wantAllowed || h != wantHow {
			t.Fatalf("%s → %s: %+v %v %v, want allowed=%v how=%v", user, group, d, h, err, wantAllowed, wantHow)
		}
	}
	ask("alice", "team-a", true, reviewed)
	ask("alice", "team-a", true, cached)
	ask("alice", "admins", false, reviewed)
	ask("alice", "admins", false, cached)
	ask("eve", "team-a", false, reviewed) // another caller, another decision
	if n := f.count(); n != 3 {
		t.Fatalf("%d reviews, want 3", n)
	}
	clock.step(reviewTTL - time.Millisecond)
	ask("alice", "team-a", true, cached)
	clock.step(2 * time.Millisecond)
	ask("alice", "team-a", true, reviewed)
	ask("alice", "admins", false, reviewed)

	f.fail = errors.New("etcd is sad")
	for range 2 {
		if _, h, err := rv.decide(ctx, "alice", nil, impersonate("groups", "team-b")); err == nil || h != reviewed {
			t.Fatalf("a failing review: %v %v, want an error, asked again each time", h, err)
		}
	}
	if n := f.count(); n != 7 {
		t.Fatalf("%d reviews, want 7", n)
	}
}

// At most size decisions are kept: the least recently used goes first.
func TestReviewerBounded(t *testing.T) {
	f := &fakeReviews{allow: allowTeams}
	rv := newReviewer(f, reviewTTL, 2, nil)
	ctx := context.Background()
	for _, g := range []string{"team-a", "team-b", "team-a", "team-c", "team-a", "team-b"} {
		if _, _, err := rv.decide(ctx, "alice", nil, impersonate("groups", g)); err != nil {
			t.Fatal(err)
		}
	}
	// team-a, team-b, (team-a kept), team-c evicts team-b, (team-a kept), team-b again.
	if n := f.count(); n != 4 {
		t.Fatalf("%d reviews, want 4", n)
	}
}

// Requests that need one review at the same time wait for one review;
// when the request that sent it goes away first, the others ask again.
func TestReviewerShares(t *testing.T) {
	f := &fakeReviews{allow: allowTeams, gate: make(chan struct{})}
	rv := newReviewer(f, reviewTTL, reviewCacheSize, nil)
	leaderCtx, leaderGone := context.WithCancel(context.Background())
	type answer struct {
		d   decision
		h   how
		err error
	}
	leader := make(chan answer, 1)
	go func() {
		d, h, err := rv.decide(leaderCtx, "alice", nil, impersonate("groups", "team-a"))
		leader <- answer{d, h, err}
	}()
	waitUntil(t, "the first review in flight", func() bool { return f.count() == 1 })
	const others = 4
	answers := make(chan answer, others)
	for range others {
		go func() {
			d, h, err := rv.decide(context.Background(), "alice", nil, impersonate("groups", "team-a"))
			answers <- answer{d, h, err}
		}()
	}
	waitUntil(t, "the others waiting for it", func() bool {
		rv.mu.Lock()
		defer rv.mu.Unlock()
		return rv.waiters == others
	})
	if n := f.count(); n != 1 {
		t.Fatalf("%d reviews for one question asked five times at once, want 1", n)
	}
	leaderGone()
	if a := <-leader; !errors.Is(a.err, context.Canceled) {
		t.Fatalf("the request that went away: %+v", a)
	}
	// One of the others sends the review again; the rest share it.
	waitUntil(t, "the review asked again", func() bool { return f.count() == 2 })
	close(f.gate)
	// One of the others asked again; the rest waited for its review (or,
	// woken later, found its decision kept).
	var reviewedN int
	for range others {
		a := <-answers
		if a.err != nil || !a.d.allowed {
			t.Fatalf("a waiting request: %+v", a)
		}
		if a.h == reviewed {
			reviewedN++
		}
	}
	if reviewedN != 1 || f.count() != 2 {
		t.Fatalf("%d of the others sent a review, %d sent in all; want 1 and 2", reviewedN, f.count())
	}
}

func waitUntil(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func testHop(f *fakeReviews) *AgentHop {
	return &AgentHop{cfg: AgentHopConfig{Cluster: "c1"}, log: zap.NewNop(), reviews: newReviewer(f, reviewTTL, reviewCacheSize, nil)}
}

func teams(prefix string, n int) []string {
	var gs []string
	for i := 1; i <= n; i++ {
		gs = append(gs, fmt.Sprintf("%s%d", prefix, i))
	}
	return gs
}

// The input: --as with 40 groups is 41 reviews, reviewConcurrency
// at once; a repeat is none; 300 copies of one group are one review; more
// than MaxImpersonatedGroups groups are refused before any review; the
// first refused target is named, as the API server names it.
func TestMayImpersonate(t *testing.T) {
	ctx := context.Background()
	t.Run("40 groups at once", func(t *testing.T) {
		f := &fakeReviews{allow: allowTeams, gate: make(chan struct{}), releaseAt: reviewConcurrency}
		a := testHop(f)
		st, tally := a.mayImpersonate(ctx, "alice", []string{"dev"}, "bob", teams("team-", 40))
		if st != nil {
			t.Fatal(st)
		}
		if f.count() != 41 || tally != (reviewTally{targets: 41, reviewed: 41}) {
			t.Fatalf("%d reviews, tally %+v; want 41", f.count(), tally)
		}
		if f.maxInflight != reviewConcurrency {
			t.Fatalf("at most %d reviews in flight, want %d", f.maxInflight, reviewConcurrency)
		}
		st, tally = a.mayImpersonate(ctx, "alice", []string{"dev"}, "bob", teams("team-", 40))
		if st != nil || f.count() != 41 || tally != (reviewTally{targets: 41, cached: 41}) {
			t.Fatalf("the repeat: %v, %d reviews, tally %+v", st, f.count(), tally)
		}
	})
	t.Run("300 copies of one group", func(t *testing.T) {
		f := &fakeReviews{allow: allowTeams}
		var gs []string
		for range 300 {
			gs = append(gs, "team-x")
		}
		if st, tally := testHop(f).mayImpersonate(ctx, "alice", nil, "bob", gs); st != nil || f.count() != 2 || tally.targets != 2 {
			t.Fatalf("%v, %d reviews, tally %+v; want 2 reviews", st, f.count(), tally)
		}
	})
	t.Run("the limit", func(t *testing.T) {
		f := &fakeReviews{allow: allowTeams}
		a := testHop(f)
		if st, _ := a.mayImpersonate(ctx, "alice", nil, "bob", teams("team-", MaxImpersonatedGroups)); st != nil {
			t.Fatalf("%d groups: %v", MaxImpersonatedGroups, st)
		}
		before := f.count()
		st, _ := a.mayImpersonate(ctx, "alice", nil, "bob", append(teams("team-", MaxImpersonatedGroups), "team-one-more"))
		want := fmt.Sprintf(`cluster "c1": the request impersonates 65 distinct groups (--as-group); this gateway checks at most %d per request`, MaxImpersonatedGroups)
		if st == nil || st.ErrStatus.Code != http.StatusBadRequest || st.ErrStatus.Message != want || f.count() != before {
			t.Fatalf("%d groups: %v, %d reviews; want 400 %q and none", MaxImpersonatedGroups+1, st, f.count()-before, want)
		}
	})
	t.Run("a refused group", func(t *testing.T) {
		f := &fakeReviews{allow: allowTeams}
		gs := append(teams("team-", 10), "admins", "auditors")
		st, _ := testHop(f).mayImpersonate(ctx, "alice", nil, "bob", gs)
		want := `groups "admins" is forbidden: User "alice" cannot impersonate resource "groups" in API group "" at the cluster scope`
		if st == nil || st.ErrStatus.Code != http.StatusForbidden || st.ErrStatus.Message != want {
			t.Fatalf("%v, want 403 %q", st, want)
		}
		st, _ = testHop(f).mayImpersonate(ctx, "alice", nil, "carol", gs)
		if st == nil || !strings.HasPrefix(st.ErrStatus.Message, `users "carol" is forbidden`) {
			t.Fatalf("%v, want the user named", st)
		}
	})
	t.Run("the API server fails", func(t *testing.T) {
		f := &fakeReviews{allow: allowTeams, fail: errors.New("etcd is sad")}
		a := testHop(f)
		for range 2 {
			st, _ := a.mayImpersonate(ctx, "alice", nil, "bob", teams("team-", 3))
			if st == nil || st.ErrStatus.Code != http.StatusServiceUnavailable || !strings.Contains(st.ErrStatus.Message, "etcd is sad") {
				t.Fatalf("%v, want 503 with the cause", st)
			}
		}
		f.fail = nil
		if st, tally := a.mayImpersonate(ctx, "alice", nil, "bob", teams("team-", 3)); st != nil || tally.reviewed != 4 {
			t.Fatalf("after the API server is back: %v, tally %+v (errors are not kept)", st, tally)
		}
	})
}

// Through the stub, the tunnel and the agent: the command, its
// repeat, five at once, and the limit as kubectl would print it.
func TestImpersonationManyGroups(t *testing.T) {
	api := newFakeAPI(t)
	c := newChain(t, restFor(api.Server), api)
	asBob := func(groups ...string) http.Header {
		return http.Header{"Impersonate-User": {"bob"}, "Impersonate-Group": groups}
	}
	// The fake lets alice impersonate groups named viewers only; 40 of
	// them, with a duplicate each, are 2 targets; the API server still
	// receives every group as asked.
	var many []string
	for range 40 {
		many = append(many, "viewers", "viewers")
	}
	before := len(api.reviews())
	resp, body := c.do(t, "GET", "/clusters/c1/api/v1/pods", "alice-token", asBob(many...))
	if resp.StatusCode != 200 || len(api.reviews())-before != 2 {
		t.Fatalf("%d %s; %d reviews, want 2", resp.StatusCode, body, len(api.reviews())-before)
	}
	if r, _ := api.lastRequest(); len(r.Header.Values("Impersonate-Group")) != 80 {
		t.Fatalf("the API server received %d Impersonate-Group values, want the 80 asked for", len(r.Header.Values("Impersonate-Group")))
	}
	before = len(api.reviews())
	var wg sync.WaitGroup
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if resp, body := c.do(t, "GET", "/clusters/c1/api/v1/pods", "alice-token", asBob(many...)); resp.StatusCode != 200 {
				t.Errorf("in parallel: %d %s", resp.StatusCode, body)
			}
		}()
	}
	wg.Wait()
	if n := len(api.reviews()) - before; n != 0 {
		t.Fatalf("repeats within the TTL made %d reviews, want 0", n)
	}

	groups := teams("g", MaxImpersonatedGroups+1)
	before = len(api.reviews())
	resp, body = c.do(t, "GET", "/clusters/c1/api/v1/pods", "alice-token", asBob(groups...))
	if st := statusOf(t, body); resp.StatusCode != 400 || st.Reason != metav1.StatusReasonBadRequest || !strings.Contains(st.Message, "at most 64 per request") {
		t.Fatalf("%d groups: %d %+v", len(groups), resp.StatusCode, st)
	}
	if n := len(api.reviews()) - before; n != 0 {
		t.Fatalf("the refused request made %d reviews", n)
	}
}

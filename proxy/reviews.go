package proxy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/cache"
	authorizationv1client "k8s.io/client-go/kubernetes/typed/authorization/v1"
	"k8s.io/client-go/rest"

	"github.com/keyhole-dev/keyhole/internal/kubestatus"
)

// Access reviews at the agent.
//
// The API server checks kubectl --as=u --as-group=g1 … in-process: one
// authorizer call per target, each a map lookup. The agent has to ask it
// over the network, with a SubjectAccessReview per target, so that cost is
// paid in round trips. Done one after the other through client-go's
// default rate limit (5 QPS, burst 10), 40 groups took 7.5 s. The
// reviewer keeps it close to the direct cost:
//
//   - a request's targets are reviewed once each (duplicates removed), all
//     at once, at most reviewConcurrency in flight (one HTTP/2 connection
//     carries them);
//   - a decision, allowed or denied, is kept for reviewTTL per caller (user
//     and groups) and attributes (verb, resource, name, …), in an LRU of
//     reviewCacheSize entries; an error is not kept. kubectl sends several
//     requests per command (discovery, then the call), scripts run it in
//     loops, and each of those requests carries the same --as;
//   - requests that need the same review at the same time wait for one
//     review, so five parallel kubectl calls cost what one does;
//   - reviews have their own client, whose rate limit is not shared with
//     anything else the agent asks;
//   - a request may name at most MaxImpersonatedGroups distinct groups;
//     more is refused (400) before any review.
//
// The TTL, cache size, rate limit and timeout are those of
// k8s.io/apiserver's delegated authorization (DelegatingAuthorizationOptions
// and the webhook authorizer), which is how aggregated API servers ask
// kube-apiserver the same question: 10 s for allowed and for denied
// decisions, 8192 entries, 200 QPS with a burst of 400, a 10 s timeout.
// kube-apiserver's own webhook authorizer keeps decisions longer (5 min
// allowed, 30 s denied); 10 s keeps a revoked or granted impersonation
// right in force at most 10 s longer at the agent than at the API server.
const (
	reviewTTL         = 10 * time.Second
	reviewCacheSize   = 8192
	reviewQPS         = 200
	reviewBurst       = 400
	reviewTimeout     = 10 * time.Second
	reviewConcurrency = 16
)

// MaxImpersonatedGroups is the largest number of distinct --as-group
// values a request may carry. Each costs a SubjectAccessReview at the
// agent (on a miss); 64 is well above any list typed on a command line or
// kept in a kubeconfig, and bounds one request to 65 reviews: four rounds
// of reviewConcurrency, and a sixth of the review client's burst.
const MaxImpersonatedGroups = 64

// reviewsConfig is the rest config of the reviewer's own client: base with
// the rate limit and timeout above. base is not changed.
func reviewsConfig(base *rest.Config) *rest.Config {
	rc := rest.CopyConfig(base)
	rc.QPS, rc.Burst, rc.Timeout = reviewQPS, reviewBurst, reviewTimeout
	rc.RateLimiter = nil // a limiter in base would override QPS and Burst
	return rc
}

// reviewer asks the API server SubjectAccessReviews and keeps their
// decisions (see above). Its methods may be called concurrently.
type reviewer struct {
	client    authorizationv1client.SubjectAccessReviewInterface
	ttl       time.Duration
	decisions *cache.LRUExpireCache // reviewKey → decision

	mu       sync.Mutex
	inflight map[reviewKey]*pendingReview
	waiters  int // calls waiting for another's review (for tests)

	sent atomic.Int64 // reviews sent to the API server, ever
}

// newReviewer returns a reviewer that keeps decisions for ttl, at most size
// of them, by clock (nil: the real one).
func newReviewer(client authorizationv1client.SubjectAccessReviewInterface, ttl time.Duration, size int, clock cache.Clock) *reviewer {
	var c *cache.LRUExpireCache
	if clock != nil {
		c = cache.NewLRUExpireCacheWithClock(size, clock)
	} else {
		c = cache.NewLRUExpireCache(size)
	}
	return &reviewer{client: client, ttl: ttl, decisions: c, inflight: map[reviewKey]*pendingReview{}}
}

// decision is what a review said.
type decision struct {
	allowed bool
	reason  string // the authorizer's reason, if any
}

// how says where a decision came from.
type how int

const (
	reviewed how = iota // this call sent the review
	cached              // a decision kept from an earlier review
	shared              // another request's review, in flight when asked
)

// pendingReview is a review in flight; done is closed when d and err are
// set.
type pendingReview struct {
	done chan struct{}
	d    decision
	err  error
	// abandoned: err is the context of the request that sent the review
	// ending, which says nothing about the review; the others ask again.
	abandoned bool
}

// reviewKey identifies a decision: the caller and the attributes. Groups
// are sorted and deduplicated (a review does not depend on their order)
// and encoded with their lengths, so no two lists share a key.
type reviewKey struct {
	user, groups                                        string
	namespace, verb, group, resource, subresource, name string
}

func newReviewKey(user string, groups []string, ra authorizationv1.ResourceAttributes) reviewKey {
	gs := slices.Compact(slices.Sorted(slices.Values(groups)))
	var b strings.Builder
	for _, g := range gs {
		b.WriteString(strconv.Itoa(len(g)))
		b.WriteByte(':')
		b.WriteString(g)
	}
	return reviewKey{user: user, groups: b.String(), namespace: ra.Namespace, verb: ra.Verb, group: ra.Group,
		resource: ra.Resource, subresource: ra.Subresource, name: ra.Name}
}

// decide says whether user in groups may do ra: from a kept decision, from
// a review another request has in flight, or by asking the API server.
// It returns an error only when there is no decision (the API server did
// not answer, or ctx ended first).
func (rv *reviewer) decide(ctx context.Context, user string, groups []string, ra authorizationv1.ResourceAttributes) (decision, how, error) {
	key := newReviewKey(user, groups, ra)
	for {
		rv.mu.Lock()
		if v, ok := rv.decisions.Get(key); ok {
			rv.mu.Unlock()
			return v.(decision), cached, nil
		}
		p, waiting := rv.inflight[key]
		if waiting {
			rv.waiters++
		} else {
			p = &pendingReview{done: make(chan struct{})}
			rv.inflight[key] = p
		}
		rv.mu.Unlock()
		if !waiting {
			rv.review(ctx, key, p, user, groups, ra)
			return p.d, reviewed, p.err
		}
		var ended error
		select {
		case <-p.done:
		case <-ctx.Done():
			ended = ctx.Err()
		}
		rv.mu.Lock()
		rv.waiters--
		rv.mu.Unlock()
		if ended != nil {
			return decision{}, shared, ended
		}
		if !p.abandoned {
			return p.d, shared, p.err
		}
	}
}

// review sends one SubjectAccessReview for p and settles it: the decision
// is kept (before p leaves inflight, so no one asks twice) and p.done
// closed.
func (rv *reviewer) review(ctx context.Context, key reviewKey, p *pendingReview, user string, groups []string, ra authorizationv1.ResourceAttributes) {
	rv.sent.Add(1)
	attrs := ra
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{User: user, Groups: groups, ResourceAttributes: &attrs}}
	res, err := rv.client.Create(ctx, sar, metav1.CreateOptions{})
	rv.mu.Lock()
	if err == nil {
		p.d = decision{allowed: res.Status.Allowed, reason: res.Status.Reason}
		rv.decisions.Add(key, p.d, rv.ttl)
	} else {
		p.err, p.abandoned = err, ctx.Err() != nil
	}
	delete(rv.inflight, key)
	rv.mu.Unlock()
	close(p.done)
}

// impersonationTarget is one thing kubectl --as asks to become.
type impersonationTarget struct{ resource, name string }

// impersonationTargets are the user, then each distinct group in the order
// given.
func impersonationTargets(asUser string, asGroups []string) []impersonationTarget {
	targets := []impersonationTarget{{"users", asUser}}
	seen := make(map[string]bool, len(asGroups))
	for _, g := range asGroups {
		if !seen[g] {
			seen[g] = true
			targets = append(targets, impersonationTarget{"groups", g})
		}
	}
	return targets
}

// errDenied stops a request's other reviews once one target is refused.
var errDenied = errors.New("impersonation denied")

// reviewTally is what one request's reviews cost, for the log.
type reviewTally struct {
	targets, reviewed, cached, shared int
}

// mayImpersonate asks whether user in groups may impersonate asUser and
// each of asGroups, as the API server itself would for kubectl --as. It
// returns the Status to answer with, or nil when every target is allowed,
// and what the check cost.
func (a *AgentHop) mayImpersonate(ctx context.Context, user string, groups []string, asUser string, asGroups []string) (*apierrors.StatusError, reviewTally) {
	targets := impersonationTargets(asUser, asGroups)
	tally := reviewTally{targets: len(targets)}
	if n := len(targets) - 1; n > MaxImpersonatedGroups {
		return apierrors.NewBadRequest(fmt.Sprintf("cluster %q: the request impersonates %d distinct groups (--as-group); this gateway checks at most %d per request",
			a.cfg.Cluster, n, MaxImpersonatedGroups)), tally
	}
	type result struct {
		d   decision
		how how
		err error
		ok  bool // decided or failed (not skipped)
	}
	results := make([]result, len(targets))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(reviewConcurrency)
	for i, tg := range targets {
		if gctx.Err() != nil {
			break // a target was refused, or the API server failed: no more reviews
		}
		g.Go(func() error {
			d, how, err := a.reviews.decide(gctx, user, groups, authorizationv1.ResourceAttributes{Verb: "impersonate", Resource: tg.resource, Name: tg.name})
			results[i] = result{d: d, how: how, err: err, ok: true}
			switch {
			case err != nil:
				return err
			case !d.allowed:
				return errDenied
			}
			return nil
		})
	}
	_ = g.Wait()
	var failed error
	for i, r := range results {
		if !r.ok {
			continue
		}
		if r.err == nil {
			switch r.how {
			case reviewed:
				tally.reviewed++
			case cached:
				tally.cached++
			case shared:
				tally.shared++
			}
		}
		if r.err == nil && !r.d.allowed {
			tg := targets[i]
			// The API server's own wording for a denied impersonation.
			return kubestatus.Forbidden(fmt.Sprintf("%s %q is forbidden: User %q cannot impersonate resource %q in API group \"\" at the cluster scope",
				tg.resource, tg.name, user, tg.resource)), tally
		}
		if r.err != nil && failed == nil && !errors.Is(r.err, context.Canceled) {
			failed = r.err
		}
	}
	if failed == nil && ctx.Err() != nil {
		failed = ctx.Err()
	}
	if failed != nil {
		return kubestatus.ServiceUnavailable(fmt.Sprintf("cluster %q: the agent cannot check impersonation rights: %v", a.cfg.Cluster, failed)), tally
	}
	return nil, tally
}

// logReviews writes what a request's impersonation check cost, at debug.
func logReviews(log *zap.Logger, t reviewTally, took time.Duration) {
	if ce := log.Check(zap.DebugLevel, "impersonation checked"); ce != nil {
		ce.Write(zap.Int("targets", t.targets), zap.Int("reviews", t.reviewed), zap.Int("cached", t.cached), zap.Int("shared", t.shared),
			zap.Duration("took", took))
	}
}

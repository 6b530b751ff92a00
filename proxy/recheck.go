package proxy

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/keyhole-dev/keyhole/audit"
	"github.com/keyhole-dev/keyhole/authn"
)

// Long-running requests (watches, followed logs, exec, attach and
// port-forward sessions) are admitted once, like every request, but live
// for as long as the client wants. So that one lives only as long as the
// credential and the policy that admitted it, the stub admits it again
// every RecheckInterval while it runs, and ends it when:
//
//   - the credential expired (at its expiry, not at the next check), unless
//     StubConfig.KeepStreamsPastExpiry;
//   - the credential no longer authenticates (a static token revoked or its
//     user removed, an issuer removed from the config) or now stands for
//     another identity;
//   - for a cookie request, its browser session no longer stands (signed
//     out on any replica, refresh failed, ended), or the ID token the
//     session now holds no longer authenticates; its expiry is the
//     session's end (BrowserSession.Expires);
//   - the cluster was unregistered;
//   - the policy no longer admits the user to the cluster.
//
// It ends a watch or followed log with a clean end of the response (the
// client re-lists and is refused with 401 or 403, as kube-apiserver would
// refuse it), and an upgraded session by closing it. The final audit
// record carries AnnotationEnded with the reason, and the stub logs it.

// DefaultRecheckInterval is StubConfig.RecheckInterval's default: a revoked
// credential or a policy change ends open streams within about this long.
const DefaultRecheckInterval = 5 * time.Second

// Reasons a long-running request is ended by the stub (audit
// annotation keyhole.dev/ended).
const (
	EndedExpired      = audit.EndedCredentialExpired
	EndedRevoked      = audit.EndedCredentialRevoked
	EndedPolicy       = audit.EndedPolicy
	EndedUnregistered = audit.EndedUnregistered
	EndedStopping     = audit.EndedStubStopping
)

// admission is what admitted a long-running request, for rechecks.
type admission struct {
	token   string
	user    *authn.User
	cluster string
	expires time.Time // zero: none known
	// browser: a cookie request's session, asked first at each recheck
	// (token is then the ID token it had at admission); expires is the
	// session's end.
	browser *BrowserSession
}

// endReason is why the stub ended a long-running request, set once.
type endReason struct {
	once          sync.Once
	reason, words string
}

func (e *endReason) set(reason, words string) bool {
	first := false
	e.once.Do(func() { e.reason, e.words, first = reason, words, true })
	return first
}

// end ends lr for reason; the first reason given is the one recorded.
//
// An upgraded session's client connection is closed first: cancelling
// closes the stream to the agent, which the agent passes on as the end of
// the client's input, and a remote command that then exits 0 (cat) would
// otherwise report success to a client whose session was cut.
func (lr *longReq) end(reason, words string) {
	lr.why.set(reason, words)
	lr.ended.Store(true)
	lr.mu.Lock()
	c := lr.client
	lr.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
	lr.cancel()
}

// Reason is why the stub ended lr ("" if it did not).
func (lr *longReq) Reason() (reason, words string) {
	if !lr.ended.Load() {
		return "", ""
	}
	lr.why.once.Do(func() {}) // a reason set concurrently is complete once Do returns
	return lr.why.reason, lr.why.words
}

// startRecheck admits a long-running request again every RecheckInterval
// until stop is called (the request returned) and ends it when it is no
// longer admitted. It holds no goroutine while it waits: each check runs on
// a timer (time.AfterFunc), so an idle watch costs the stub its handler's
// goroutine only. stop, which the request's owner calls after ending ctx,
// cancels the timers and waits for a check under way.
func (s *Stub) startRecheck(ctx context.Context, lr *longReq, a admission, log *zap.Logger) (stop func()) {
	var (
		mu      sync.Mutex
		stopped bool
		running sync.WaitGroup
		tick    *time.Timer
		expiry  *time.Timer
	)
	// run runs check unless stopped, counted in running.
	run := func(check func() (reason, words string)) {
		mu.Lock()
		if stopped {
			mu.Unlock()
			return
		}
		running.Add(1)
		mu.Unlock()
		defer running.Done()
		reason, words := check()
		if reason == "" || ctx.Err() != nil {
			return // still admitted, or it ended by itself meanwhile
		}
		log.Info("long-running request ended: no longer admitted", zap.String("ended", reason), zap.String("why", words))
		lr.end(reason, words)
	}
	mu.Lock()
	defer mu.Unlock()
	tick = time.AfterFunc(s.cfg.RecheckInterval, func() {
		run(func() (string, string) {
			reason, words := s.readmit(ctx, a)
			if reason == "" {
				mu.Lock()
				if !stopped {
					tick.Reset(s.cfg.RecheckInterval)
				}
				mu.Unlock()
			}
			return reason, words
		})
	})
	if !a.expires.IsZero() && !s.cfg.KeepStreamsPastExpiry {
		expiry = time.AfterFunc(time.Until(a.expires), func() {
			run(func() (string, string) {
				return EndedExpired, fmt.Sprintf("the caller's credential expired at %s", a.expires.UTC().Format(time.RFC3339))
			})
		})
	}
	return func() {
		mu.Lock()
		stopped = true
		tick.Stop()
		if expiry != nil {
			expiry.Stop()
		}
		mu.Unlock()
		running.Wait()
	}
}

// readmit asks authentication, the registry and the policy again; it
// returns why a long-running request may no longer run, or "".
func (s *Stub) readmit(ctx context.Context, a admission) (reason, words string) {
	pastExpiry := !a.expires.IsZero() && !time.Now().Before(a.expires)
	token := a.token
	if a.browser != nil {
		// The session first: a sign-out on any replica, or a failed
		// refresh, ends it; then its current ID token, as a bearer's.
		t, st := s.cfg.Sessions.Current(ctx, nil, a.browser)
		if st != nil {
			return EndedRevoked, "the browser session was signed out or ended: " + st.ErrStatus.Message
		}
		token = t
	}
	u, err := s.cfg.Auth.Authenticate(ctx, token)
	switch {
	case err != nil && pastExpiry && s.cfg.KeepStreamsPastExpiry:
		u = a.user // kept past expiry on purpose; the policy still applies
	case err != nil && pastExpiry:
		return EndedExpired, fmt.Sprintf("the caller's credential expired at %s", a.expires.UTC().Format(time.RFC3339))
	case err != nil:
		return EndedRevoked, "the caller's credential no longer authenticates: " + unauthorizedMessage(err)
	case u.Name != a.user.Name || !slices.Equal(u.Groups, a.user.Groups):
		return EndedRevoked, fmt.Sprintf("the caller's credential now stands for user %q, groups %v", u.Name, u.Groups)
	}
	c, ok := s.cfg.Clusters.Cluster(a.cluster)
	if !ok {
		return EndedUnregistered, fmt.Sprintf("cluster %q is no longer registered at this gateway", a.cluster)
	}
	if !s.cfg.Policy.Allowed(u, a.cluster, c.Labels) {
		return EndedPolicy, fmt.Sprintf("user %q may no longer reach cluster %q through this gateway (policy)", u.Name, a.cluster)
	}
	return "", ""
}

package ha

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// LeaderLease is the coordination.k8s.io Lease the replicas elect a leader
// with.
const LeaderLease = "keyhole-stub-leader"

// Job is work only the leader does. It runs from the moment this replica
// leads until ctx ends (leadership lost or the replica stopping), and must
// return promptly then.
type Job func(ctx context.Context)

// Timing is client-go leaderelection's: a crashed leader is replaced after
// LeaseDuration, a leader that cannot renew for RenewDeadline steps down,
// and candidates retry every RetryPeriod.
type Timing struct {
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// Elector runs leader election for one replica and the leader's jobs.
type Elector struct {
	cs     kubernetes.Interface
	ns, id string
	timing Timing
	jobs   []Job
	log    *zap.Logger

	leading atomic.Bool
	leader  atomic.Pointer[string]
	changes atomic.Int64 // times this replica became or stopped being leader
}

// NewElector elects among replicas in namespace ns; id is this replica's.
func NewElector(cs kubernetes.Interface, ns, id string, t Timing, log *zap.Logger, jobs ...Job) *Elector {
	if log == nil {
		log = zap.NewNop()
	}
	e := &Elector{cs: cs, ns: ns, id: id, timing: t, jobs: jobs, log: log}
	none := ""
	e.leader.Store(&none)
	return e
}

// IsLeader reports whether this replica leads now.
func (e *Elector) IsLeader() bool { return e.leading.Load() }

// Leader is the current leader's ID as last observed ("" if unknown).
func (e *Elector) Leader() string { return *e.leader.Load() }

// Transitions counts this replica's leadership changes (gained or lost).
func (e *Elector) Transitions() int64 { return e.changes.Load() }

// Run campaigns until ctx ends. Losing the Lease (the hub unreachable for
// RenewDeadline, or another holder) stops the jobs and makes this replica a
// candidate again; serving is not affected. When ctx ends while leading,
// the Lease is released so that another replica takes over within
// RetryPeriod instead of LeaseDuration.
func (e *Elector) Run(ctx context.Context) {
	for ctx.Err() == nil {
		e.term(ctx)
		select { // a short pause before campaigning again
		case <-ctx.Done():
		case <-time.After(e.timing.RetryPeriod):
		}
	}
}

// term is one leaderelection run: campaign, lead, lose.
func (e *Elector) term(ctx context.Context) {
	var (
		mu      sync.Mutex
		stopped bool
		jobs    sync.WaitGroup
	)
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: LeaderLease, Namespace: e.ns},
		Client:     e.cs.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: e.id},
	}
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		Name:            LeaderLease,
		LeaseDuration:   e.timing.LeaseDuration,
		RenewDeadline:   e.timing.RenewDeadline,
		RetryPeriod:     e.timing.RetryPeriod,
		ReleaseOnCancel: true,
		Callbacks: leaderelection.LeaderCallbacks{
			// client-go calls this in a goroutine of its own and does not
			// wait for it; the jobs are counted under mu so that term
			// waits for every one it started.
			OnStartedLeading: func(lctx context.Context) {
				mu.Lock()
				defer mu.Unlock()
				if stopped {
					return
				}
				e.leading.Store(true)
				e.changes.Add(1)
				e.log.Info("leading: starting leader-only work", zap.Int("jobs", len(e.jobs)))
				for _, j := range e.jobs {
					jobs.Add(1)
					go func() {
						defer jobs.Done()
						j(lctx)
					}()
				}
			},
			OnStoppedLeading: func() {
				if e.leading.Swap(false) {
					e.changes.Add(1)
					e.log.Warn("no longer leading: leader-only work stopped (serving goes on)")
				}
			},
			OnNewLeader: func(id string) {
				e.leader.Store(&id)
				if id != e.id {
					e.log.Info("leader is another replica", zap.String("leader", id))
				}
			},
		},
	})
	if err != nil {
		e.log.Error("leader election misconfigured", zap.Error(err)) // timing is validated in config
		<-ctx.Done()
		return
	}
	le.Run(ctx)
	mu.Lock()
	stopped = true
	mu.Unlock()
	jobs.Wait()
}

// Every returns a Job that calls f now and then every period.
func Every(period time.Duration, f func(ctx context.Context)) Job {
	return func(ctx context.Context) {
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			f(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}
}

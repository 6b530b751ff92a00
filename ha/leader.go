package ha

import (
	"cmp"
	"context"
	"errors"
	"fmt"
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
// and candidates retry every RetryPeriod. A zero field means its default.
type Timing struct {
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// Default leader election timing, client-go's usual values: a crashed
// leader is replaced within LeaseDuration + RetryPeriod, about 17 s.
const (
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
)

// complete fills t's zero fields with the defaults and checks the result
// with client-go leaderelection's rules (NewLeaderElector), plus whole
// seconds for the Lease. Every problem is returned, naming the values and
// which of them are defaults.
func (t Timing) complete() (Timing, error) {
	show := func(name string, v, def time.Duration) string {
		if v == 0 {
			return fmt.Sprintf("%s %v (default)", name, def)
		}
		return fmt.Sprintf("%s %v", name, v)
	}
	ld, rd, rp := show("leaseDuration", t.LeaseDuration, DefaultLeaseDuration),
		show("renewDeadline", t.RenewDeadline, DefaultRenewDeadline), show("retryPeriod", t.RetryPeriod, DefaultRetryPeriod)
	c := Timing{cmp.Or(t.LeaseDuration, DefaultLeaseDuration), cmp.Or(t.RenewDeadline, DefaultRenewDeadline), cmp.Or(t.RetryPeriod, DefaultRetryPeriod)}
	var errs []error
	if c.LeaseDuration < time.Second {
		errs = append(errs, fmt.Errorf("%s must be at least 1s (a Lease counts whole seconds)", ld))
	}
	if c.RenewDeadline < 0 {
		errs = append(errs, fmt.Errorf("%s must be positive", rd))
	}
	if c.RetryPeriod < 0 {
		errs = append(errs, fmt.Errorf("%s must be positive", rp))
	}
	if c.LeaseDuration <= c.RenewDeadline {
		errs = append(errs, fmt.Errorf("%s must be greater than %s", ld, rd))
	}
	if c.RenewDeadline <= time.Duration(leaderelection.JitterFactor*float64(c.RetryPeriod)) {
		errs = append(errs, fmt.Errorf("%s must be greater than %s × %v (client-go's jitter factor)", rd, rp, leaderelection.JitterFactor))
	}
	return c, errors.Join(errs...)
}

// ElectorConfig configures NewElector.
type ElectorConfig struct {
	// Client reaches the hub's API server (required).
	Client kubernetes.Interface
	// Namespace holds the LeaderLease (required).
	Namespace string
	// ID is this replica's identity in the Lease (required).
	ID string
	// Timing of the election; zero fields take the Default* values.
	Timing Timing
	// Jobs run while this replica leads.
	Jobs []Job
	// Logger; nil logs nothing.
	Logger *zap.Logger
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

// NewElector elects among the replicas in cfg.Namespace. It fills the
// timing's defaults and returns every problem of cfg, so that a bad value
// stops the start instead of a replica that silently never leads.
func NewElector(cfg ElectorConfig) (*Elector, error) {
	var errs []error
	if cfg.Client == nil {
		errs = append(errs, errors.New("no client for the hub"))
	}
	if cfg.Namespace == "" {
		errs = append(errs, errors.New("namespace is empty; name the namespace of the leader Lease"))
	}
	if cfg.ID == "" {
		errs = append(errs, errors.New("replica ID is empty; give each replica a name of its own (the pod name)"))
	}
	for i, j := range cfg.Jobs {
		if j == nil {
			errs = append(errs, fmt.Errorf("job %d is nil", i))
		}
	}
	t, err := cfg.Timing.complete()
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("leader election: %w", errors.Join(errs...))
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	e := &Elector{cs: cfg.Client, ns: cfg.Namespace, id: cfg.ID, timing: t, jobs: cfg.Jobs, log: log}
	none := ""
	e.leader.Store(&none)
	return e, nil
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
		// NewElector checked what client-go checks; reaching this is a bug.
		e.log.Error("leader election misconfigured", zap.Error(err))
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

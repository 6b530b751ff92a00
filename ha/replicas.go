package ha

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
)

// ReplicaLabel marks the per-replica Leases (its value is the replica ID).
const ReplicaLabel = "keyhole.dev/stub-replica"

// ReplicaLeasePrefix starts the name of each replica's own Lease.
const ReplicaLeasePrefix = "keyhole-replica-"

// Replicas announces this replica in the hub (a Lease of its own, renewed
// every third of its duration) and lists the live ones: those whose Lease
// was renewed within its duration. Agents are told the list, so each holds
// a session to every live replica. It also tells whether the hub answers.
type Replicas struct {
	cs       kubernetes.Interface
	ns, self string
	duration time.Duration
	log      *zap.Logger
	now      func() time.Time

	mu        sync.Mutex
	live      []string
	reachable bool
	since     time.Time // of the current reachable state
	lastErr   error
}

// ReplicasConfig configures NewReplicas.
type ReplicasConfig struct {
	// Client reaches the hub's API server (required).
	Client kubernetes.Interface
	// Namespace holds the replicas' Leases (required).
	Namespace string
	// Self is this replica's ID (required): it names its Lease
	// (ReplicaLeasePrefix+Self) and labels it, so it must fit both.
	Self string
	// LeaseDuration is how long a replica counts as live after its last
	// heartbeat; it beats every third of it. Zero: DefaultLeaseDuration.
	// At least 1s: a Lease counts whole seconds.
	LeaseDuration time.Duration
	// Logger; nil logs nothing.
	Logger *zap.Logger
}

// NewReplicas announces cfg.Self in cfg.Namespace. It fills the defaults
// and returns every problem of cfg.
func NewReplicas(cfg ReplicasConfig) (*Replicas, error) {
	var errs []error
	if cfg.Client == nil {
		errs = append(errs, errors.New("no client for the hub"))
	}
	if cfg.Namespace == "" {
		errs = append(errs, errors.New("namespace is empty; name the namespace of the replica Leases"))
	}
	if cfg.Self == "" {
		errs = append(errs, errors.New("replica ID is empty; give each replica a name of its own (the pod name)"))
	} else {
		for _, msg := range append(validation.IsDNS1123Subdomain(ReplicaLeasePrefix+cfg.Self), validation.IsValidLabelValue(cfg.Self)...) {
			errs = append(errs, fmt.Errorf("replica ID %q: %s", cfg.Self, msg))
		}
	}
	d := cmp.Or(cfg.LeaseDuration, DefaultLeaseDuration)
	if d < time.Second {
		errs = append(errs, fmt.Errorf("leaseDuration %v must be at least 1s (a Lease counts whole seconds)", d))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("replica Leases: %w", errors.Join(errs...))
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Replicas{cs: cfg.Client, ns: cfg.Namespace, self: cfg.Self, duration: d, log: log, now: time.Now,
		live: []string{cfg.Self}, reachable: true, since: time.Now()}, nil
}

// Self is this replica's ID.
func (r *Replicas) Self() string { return r.self }

// Live lists the live replicas' IDs, sorted; it always holds Self.
func (r *Replicas) Live() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.live)
}

// Hub reports whether the hub answered the last heartbeat, since when that
// is so, and the last error.
func (r *Replicas) Hub() (reachable bool, since time.Time, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reachable, r.since, r.lastErr
}

// Run heartbeats and lists until ctx ends, then deletes this replica's
// Lease (best effort, 2 s) so agents and peers stop counting on it at once.
func (r *Replicas) Run(ctx context.Context) {
	period := max(r.duration/3, 100*time.Millisecond)
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		r.beat(ctx, period)
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			err := r.cs.CoordinationV1().Leases(r.ns).Delete(dctx, ReplicaLeasePrefix+r.self, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				r.log.Warn("could not withdraw this replica's Lease; it expires by itself", zap.Error(err))
			}
			return
		case <-t.C:
		}
	}
}

func (r *Replicas) beat(ctx context.Context, timeout time.Duration) {
	bctx, cancel := context.WithTimeout(ctx, max(timeout, time.Second))
	defer cancel()
	err := r.renew(bctx)
	var live []string
	if err == nil {
		live, err = r.list(bctx)
	}
	if ctx.Err() != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if (err == nil) != r.reachable {
		r.reachable, r.since = err == nil, r.now()
		if err != nil {
			r.log.Warn("hub unreachable: serving on what this replica knows", zap.Error(err))
		} else {
			r.log.Info("hub reachable again")
		}
	}
	r.lastErr = err
	if err == nil {
		if !slices.Equal(live, r.live) {
			r.log.Info("live replicas", zap.Strings("replicas", live))
		}
		r.live = live
	}
}

func (r *Replicas) renew(ctx context.Context) error {
	leases := r.cs.CoordinationV1().Leases(r.ns)
	name := ReplicaLeasePrefix + r.self
	now := metav1.NewMicroTime(r.now())
	secs := int32(r.duration / time.Second)
	l, err := leases.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		l = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: r.ns,
			Labels: map[string]string{ReplicaLabel: r.self, "app.kubernetes.io/name": "keyhole-stub"}},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &r.self, LeaseDurationSeconds: &secs, AcquireTime: &now, RenewTime: &now}}
		_, err = leases.Create(ctx, l, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = &r.self, &secs, &now
	_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
	return err
}

func (r *Replicas) list(ctx context.Context) ([]string, error) {
	ls, err := r.cs.CoordinationV1().Leases(r.ns).List(ctx, metav1.ListOptions{LabelSelector: ReplicaLabel})
	if err != nil {
		return nil, err
	}
	live := []string{r.self}
	now := r.now()
	for _, l := range ls.Items {
		id := strings.TrimPrefix(l.Name, ReplicaLeasePrefix)
		if id != r.self && fresh(l, now, 0) {
			live = append(live, id)
		}
	}
	slices.Sort(live)
	return live, nil
}

// fresh: the Lease was renewed within its duration (plus grace).
func fresh(l coordinationv1.Lease, now time.Time, grace time.Duration) bool {
	if l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return false
	}
	d := time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
	return now.Before(l.Spec.RenewTime.Add(d + grace))
}

// CollectGarbage deletes the Leases of replicas gone for more than a
// minute (a SIGKILLed pod never withdraws its own). A leader job.
func (r *Replicas) CollectGarbage(ctx context.Context) (int, error) {
	leases := r.cs.CoordinationV1().Leases(r.ns)
	ls, err := leases.List(ctx, metav1.ListOptions{LabelSelector: ReplicaLabel})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, l := range ls.Items {
		if fresh(l, r.now(), time.Minute) {
			continue
		}
		err := leases.Delete(ctx, l.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &l.ResourceVersion}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return n, fmt.Errorf("delete stale replica Lease %s: %w", l.Name, err)
		}
		if err == nil {
			n++
		}
	}
	return n, nil
}

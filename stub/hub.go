package stub

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"

	"github.com/keyhole-dev/keyhole/config"
	"github.com/keyhole-dev/keyhole/ha"
)

// hub is a replica's part in a set of stub replicas (config hub.enabled):
// the shared state's mirror, its own replica Lease, and leader election
// with the leader-only housekeeping. Its goroutines are started by start
// and ended in two steps of the stop sequence: leave (with readiness)
// withdraws the replica's Lease and releases the leader Lease, so agents
// and the other replicas stop counting on this one and another leads
// within the retry period; stop (last) ends the state mirror, which serves
// until then, and waits for all of them.
type hub struct {
	client   kubernetes.Interface // the hub's API server
	ns, id   string
	replicas *ha.Replicas
	elector  *ha.Elector
	log      *zap.Logger

	leave, stop func()
	wg          sync.WaitGroup
}

// newHub builds the replica's part from cfg.Hub; nothing runs yet. Its
// errors are ha's validation of the hub section (names, timing).
func newHub(cfg config.Stub, cs kubernetes.Interface, state *State, log *zap.Logger) (*hub, error) {
	h := &hub{client: cs, ns: cfg.Hub.Namespace, id: cfg.Hub.ReplicaID, log: log, leave: func() {}, stop: func() {}}
	var err error
	h.replicas, err = ha.NewReplicas(ha.ReplicasConfig{Client: cs, Namespace: h.ns, Self: h.id,
		LeaseDuration: cfg.Hub.LeaseDuration.Duration, Logger: log.Named("replicas")})
	if err != nil {
		return nil, fmt.Errorf("hub: %w", err)
	}
	h.elector, err = ha.NewElector(ha.ElectorConfig{Client: cs, Namespace: h.ns, ID: h.id,
		Timing: ha.Timing{LeaseDuration: cfg.Hub.LeaseDuration.Duration, RenewDeadline: cfg.Hub.RenewDeadline.Duration,
			RetryPeriod: cfg.Hub.RetryPeriod.Duration},
		Logger: log.Named("leader"),
		// Leader-only housekeeping: one replica does it, not every one.
		Jobs: []ha.Job{
			ha.Every(time.Minute, h.collectReplicaLeases),
			ha.Every(10*time.Minute, func(ctx context.Context) { pruneTokens(ctx, state, log) }),
			ha.Every(10*time.Minute, func(ctx context.Context) { sessionHousekeeping(ctx, cfg, state, log) }),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("hub: %w", err)
	}
	return h, nil
}

// start runs the mirror of state, the replica Lease and the election until
// leave and stop.
func (h *hub) start(state *State) {
	leaveCtx, leave := context.WithCancel(context.Background())
	mirrorCtx, stop := context.WithCancel(context.Background())
	h.leave, h.stop = leave, func() { leave(); stop(); h.wg.Wait() }
	for _, run := range []func(){
		func() { state.mirror.Run(mirrorCtx) },
		func() { state.RunSessions(mirrorCtx) }, // browser session records, read until the end like the state
		func() { h.replicas.Run(leaveCtx) },
		func() { h.elector.Run(leaveCtx) },
	} {
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			run()
		}()
	}
	h.log.Info("replica of a set", zap.String("replica", h.id), zap.String("namespace", h.ns))
}

func (h *hub) collectReplicaLeases(ctx context.Context) {
	if n, err := h.replicas.CollectGarbage(ctx); err != nil {
		h.log.Warn("collect stale replica Leases", zap.Error(err))
	} else if n > 0 {
		h.log.Info("removed Leases of replicas gone for over a minute", zap.Int("removed", n))
	}
}

func pruneTokens(ctx context.Context, state *State, log *zap.Logger) {
	n, err := state.PruneTokens(ctx, time.Now())
	switch {
	case err != nil:
		log.Warn("prune expired tokens", zap.Error(err))
	case n > 0:
		log.Info("pruned expired static tokens", zap.Int("removed", n))
	}
}

// status is the replica's part of /readyz, on the public port: whether the
// hub answers (names and errors go to the log and metrics only). Serving
// goes on without the hub (on the state last mirrored), so a hub outage
// does not make replicas unready; it is said here, in the log and in
// keyhole_hub_reachable.
func (h *hub) status() string {
	if ok, since, _ := h.replicas.Hub(); !ok {
		return fmt.Sprintf("hub: unreachable since %s; serving on the state last mirrored\n", since.UTC().Format(time.RFC3339))
	}
	return "hub: reachable\n"
}

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"

	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/config"
	"github.com/keyhole-dev/keyhole/ha"
)

// hub is a replica's part in a set of stub replicas (config hub.enabled):
// shared state mirrored from the hub, its own replica Lease, and leader
// election with the leader-only housekeeping. Its goroutines end with the
// serve context (SIGTERM), which also releases the leader Lease and
// withdraws the replica's Lease at once; wait waits for them.
type hub struct {
	client   kubernetes.Interface // the hub's API server
	replicas *ha.Replicas
	elector  *ha.Elector
	state    *ha.State
	wg       sync.WaitGroup
}

func stateFiles(cfg config.Stub) map[string]string {
	return map[string]string{"clusters.yaml": cfg.ClustersFile(), "tokens.yaml": cfg.TokensFile()}
}

// startHub pulls the shared state once (so the first requests see it) and
// starts the replica's goroutines. A hub that does not answer at start is
// not fatal: the stub starts on the state files it has (none on a first
// start: every agent and token is refused until the hub answers).
func startHub(ctx context.Context, cfg config.Stub, log *zap.Logger) (*hub, error) {
	cs, err := ha.NewClient(ha.ClientConfig{Kubeconfig: cfg.Hub.Kubeconfig, ReplicaID: cfg.Hub.ReplicaID})
	if err != nil {
		return nil, err
	}
	ns, id := cfg.Hub.Namespace, cfg.Hub.ReplicaID
	h := &hub{client: cs, state: ha.NewState(cs, ns, stateFiles(cfg), log.Named("state"))}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = h.state.Pull(pctx)
	cancel()
	if err != nil {
		log.Warn("starting on the state files already here; they are kept in step once the hub answers", zap.Error(err))
	}
	h.replicas, err = ha.NewReplicas(ha.ReplicasConfig{Client: cs, Namespace: ns, Self: id, LeaseDuration: cfg.Hub.LeaseDuration.Duration, Logger: log.Named("replicas")})
	if err != nil {
		return nil, fmt.Errorf("hub: %w", err)
	}
	h.elector, err = ha.NewElector(ha.ElectorConfig{Client: cs, Namespace: ns, ID: id, Timing: ha.Timing{LeaseDuration: cfg.Hub.LeaseDuration.Duration,
		RenewDeadline: cfg.Hub.RenewDeadline.Duration, RetryPeriod: cfg.Hub.RetryPeriod.Duration}, Logger: log.Named("leader"), Jobs: []ha.Job{
		// Leader-only housekeeping: one replica does it, not every one.
		ha.Every(time.Minute, func(ctx context.Context) {
			if n, err := h.replicas.CollectGarbage(ctx); err != nil {
				log.Warn("collect stale replica Leases", zap.Error(err))
			} else if n > 0 {
				log.Info("removed Leases of replicas gone for over a minute", zap.Int("removed", n))
			}
		}),
		ha.Every(10*time.Minute, func(ctx context.Context) {
			n := 0
			err := h.state.Update(ctx, "tokens.yaml", func(path string) (err error) {
				n, err = authn.PruneExpired(path, time.Now())
				if n == 0 && err == nil {
					return errNothingToDo
				}
				return err
			})
			switch {
			case errors.Is(err, errNothingToDo):
			case err != nil:
				log.Warn("prune expired tokens", zap.Error(err))
			default:
				log.Info("pruned expired static tokens", zap.Int("removed", n))
			}
		}),
	}})
	if err != nil {
		return nil, fmt.Errorf("hub: %w", err)
	}
	for _, run := range []func(context.Context){h.state.Run, h.replicas.Run, h.elector.Run} {
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			run(ctx)
		}()
	}
	log.Info("replica of a set", zap.String("replica", id), zap.String("namespace", ns))
	return h, nil
}

func (h *hub) wait() { h.wg.Wait() }

// status is the replica's part of /readyz, on the public port: whether the
// hub answers (names and errors go to the log and metrics only).
func (h *hub) status() string {
	if ok, since, _ := h.replicas.Hub(); !ok {
		return fmt.Sprintf("hub: unreachable since %s; serving on the state last mirrored\n", since.UTC().Format(time.RFC3339))
	}
	return "hub: reachable\n"
}

var errNothingToDo = errors.New("nothing to do")

// updateState runs a state-file edit (register, kubeconfig) on the file
// itself for a single stub, or on the hub's shared state Secret for a set
// of replicas.
func updateState(cfg config.Stub, key string, edit func(path string) error) error {
	if !cfg.Hub.Enabled {
		return edit(stateFiles(cfg)[key])
	}
	cs, err := ha.NewClient(ha.ClientConfig{Kubeconfig: cfg.Hub.Kubeconfig, ReplicaID: cfg.Hub.ReplicaID})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := ha.NewState(cs, cfg.Hub.Namespace, stateFiles(cfg), nil)
	if err := st.Update(ctx, key, edit); err != nil {
		return fmt.Errorf("shared state %s/%s (key %s): %w", cfg.Hub.Namespace, ha.StateSecret, key, err)
	}
	return nil
}

// readState brings a hub's shared state into the local files before a
// command reads them; a single stub's files are the state.
func readState(cfg config.Stub) error {
	if !cfg.Hub.Enabled {
		return nil
	}
	cs, err := ha.NewClient(ha.ClientConfig{Kubeconfig: cfg.Hub.Kubeconfig, ReplicaID: cfg.Hub.ReplicaID})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("stateDir: %q: %w", cfg.StateDir, err)
	}
	return ha.NewState(cs, cfg.Hub.Namespace, stateFiles(cfg), nil).Pull(ctx)
}

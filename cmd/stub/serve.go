package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/keyhole-dev/keyhole/cmd/internal/cli"
	"github.com/keyhole-dev/keyhole/config"
	"github.com/keyhole-dev/keyhole/internal/logging"
	"github.com/keyhole-dev/keyhole/stub"
)

func newServeCmd(o rootOpts, stderr io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "serve",
		Short: "Run the gateway (what stub does with no command)",
		Long: `Serve runs the gateway until SIGTERM or Ctrl-C: the HTTPS port that kubectl,
browsers and agents share, health probes, metrics (metrics.listen) and, with
hub.enabled, its part in a set of replicas. It then stops in order: readiness
off, shutdownDelay, in-flight requests finish, long-running streams end cleanly.

Without a config it runs on the embedded defaults: :8443, a self-signed
certificate, state in ~/.local/state/keyhole.`,
		Example: `  # A first run on the embedded defaults
  stub serve

  # With a config file
  stub serve --config /etc/keyhole/stub.yaml
  KEYHOLE_CONFIG=/etc/keyhole/stub.yaml stub`,
		Args: cli.ExactArgs(),
		RunE: func(*cobra.Command, []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return serve(ctx, o.configPath(), stderr)
		},
	}
}

// serve runs the gateway until ctx ends (SIGTERM, Ctrl-C).
func serve(ctx context.Context, cfgPath string, stderr io.Writer) error {
	env := config.DiscoverEnv() // the one look at the environment; reloads reuse it
	cfg, err := config.LoadStub(cfgPath, env)
	if err != nil {
		return err
	}
	log, err := logging.New(cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return err
	}
	defer log.Sync()
	// client-go logs through klog (the hub's leader election and Secret
	// watch, its rate limiter's waits): into this log, not klog's own
	// stderr format.
	logging.RouteKlog(log.Named("client-go"))
	srv, err := stub.New(cfg, stub.Options{
		ConfigPath: cfgPath,
		Parse:      func(data []byte) (config.Stub, error) { return config.ParseStub(cfgPath, data, env) },
		Logger:     log,
		Version:    version,
		Started:    func(st stub.Started) { banner(stderr, st, cfgPath) },
	})
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}

// self is how the person runs this command: "go run ./cmd/stub" when go
// run built it in a temporary directory, else the binary as invoked.
func self() string {
	if exe := os.Args[0]; !strings.Contains(exe, "go-build") {
		return exe
	}
	return "go run ./cmd/stub"
}

// banner tells a person who just started the stub what to do next.
func banner(w io.Writer, st stub.Started, cfgPath string) {
	flag := configFlag(cfgPath)
	step1 := fmt.Sprintf(`  1. register a cluster and install its agent there:
       %[1]s register my-cluster%[2]s > agent.yaml && kubectl apply -f agent.yaml`, self(), flag)
	if u, err := url.Parse(st.PublicURL); err == nil && isLoopback(u.Hostname()) {
		// Pods cannot reach this machine's loopback: the agent runs here.
		step1 = fmt.Sprintf(`  1. register a cluster and run its agent on this machine, with your kubeconfig's
     current context (agents in the cluster need a publicURL it reaches: README):
       %[1]s register my-cluster%[2]s --agent-config --secret-out my-cluster.secret > agent.yaml
       %[3]s --config agent.yaml`, self(), flag, agentCommand())
	}
	fmt.Fprintf(w, `
Keyhole stub is up on %s (listening on %s; %s).
Next steps:
%s
  2. give yourself a kubeconfig, and a role in the cluster:
       %s kubeconfig --user you@example.com%s > keyhole.kubeconfig
       kubectl create clusterrolebinding you-view --clusterrole=view --user=you@example.com
       kubectl --kubeconfig keyhole.kubeconfig get pods -A

`, st.PublicURL, st.Addr, st.TLS, step1, self(), flag)
}

// agentCommand is how to run the agent beside this stub: go run from the
// checkout when the stub runs that way, else the agent binary named as
// this one is (stub: agent, keyhole-stub: keyhole-agent).
func agentCommand() string {
	if s := self(); s != "go run ./cmd/stub" {
		dir, base := filepath.Split(s)
		return dir + strings.Replace(base, "stub", "agent", 1)
	}
	return "go run ./cmd/agent"
}

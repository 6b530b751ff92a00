package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/keyhole-dev/keyhole/config"
	"github.com/keyhole-dev/keyhole/internal/logging"
	"github.com/keyhole-dev/keyhole/stub"
)

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
	flag := ""
	if cfgPath != "" {
		flag = " --config " + cfgPath
	}
	fmt.Fprintf(w, `
Keyhole stub is up on %s (listening on %s; %s).
Next steps:
  1. register a cluster and install its agent there:
       %[5]s register my-cluster%[4]s > agent.yaml && kubectl apply -f agent.yaml
  2. give yourself a kubeconfig:
       %[5]s kubeconfig --user you@example.com%[4]s > keyhole.kubeconfig
       kubectl --kubeconfig keyhole.kubeconfig get ns

`, st.PublicURL, st.Addr, st.TLS, flag, self())
}

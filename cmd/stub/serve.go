package main

import (
	"context"
	"fmt"
	"io"

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
	log, err := logging.New(cfg.Log.Level)
	if err != nil {
		return err
	}
	defer log.Sync()
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
       go run ./cmd/stub register my-cluster%s > agent.yaml && kubectl apply -f agent.yaml
  2. give yourself a kubeconfig:
       go run ./cmd/stub kubeconfig --user you@example.com%s > keyhole.kubeconfig
       kubectl --kubeconfig keyhole.kubeconfig get ns

`, st.PublicURL, st.Addr, st.TLS, flag, flag)
}

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/keyhole-dev/keyhole/config"
	"github.com/keyhole-dev/keyhole/install"
	"github.com/keyhole-dev/keyhole/stub"
	"github.com/keyhole-dev/keyhole/tunnel"
)

const defaultImage = "ghcr.io/keyhole-dev/keyhole-agent"

// stateTimeout bounds a command's reads and writes of a hub's shared state.
const stateTimeout = 30 * time.Second

// adminFlags is the flag set of an admin command, with its --config.
func adminFlags(name string) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("stub "+name, flag.ContinueOnError)
	return fs, fs.String("config", os.Getenv("KEYHOLE_CONFIG"), "path of the stub's StubConfig file")
}

// openState loads the config at cfgPath and opens the state it names.
func openState(cfgPath string) (config.Stub, *stub.State, error) {
	cfg, err := config.LoadStub(cfgPath, config.DiscoverEnv())
	if err != nil {
		return cfg, nil, err
	}
	st, err := stub.StateFor(cfg, nil)
	return cfg, st, err
}

func register(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := adminFlags("register")
	image := fs.String("image", defaultImage+":"+imageTag(), "agent container image")
	rotate := fs.Bool("rotate", false, "issue a new join secret for an already registered cluster (sessions of the old one stay up)")
	disconnect := fs.Bool("disconnect", false, "with --rotate: also close the sessions the old secret opened (a leaked secret)")
	expires := fs.Duration("expires", 0, "the join secret's lifetime, e.g. 2160h; afterwards agents must get a new one (default: no expiry)")
	secretOut := fs.String("secret-out", "", "also write the join secret to this file (mode 0600), for agents run outside a cluster")
	audience := fs.String("caller-audience", "", "the cluster's agents verify callers themselves: hand them only ID tokens issued for this audience (e.g. an IdP client ID of its own), which are then accepted for this cluster only")
	var labels stringList
	fs.Var(&labels, "label", "cluster label key=value (repeatable)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: stub register CLUSTER-ID [--config FILE] [--image IMG] [--label k=v] [--rotate [--disconnect]] [--expires DURATION] [--secret-out FILE]")
	}
	if *disconnect && !*rotate {
		return errors.New("--disconnect goes with --rotate")
	}
	lm, err := parseLabels(labels)
	if err != nil {
		return err
	}
	cfg, st, err := openState(*cfgPath)
	if err != nil {
		return err
	}
	bundle, err := stub.LoadBundle(cfg)
	if err != nil {
		return err
	}
	if *audience != "" && *rotate {
		return errors.New("--caller-audience is set at registration; unregister and register the cluster again to change it")
	}
	secret, err := registerOrRotate(st, pos[0], *rotate, *disconnect, stub.RegisterOptions{Labels: lm, Expires: parseExpiry(*expires), CallerAudience: *audience})
	if err != nil {
		return err
	}
	if *secretOut != "" {
		if err := os.WriteFile(*secretOut, []byte(secret+"\n"), 0o600); err != nil {
			return err
		}
	}
	manifest, err := install.AgentManifest(install.AgentParams{Cluster: pos[0], StubURL: cfg.PublicURL, StubCAPEM: bundle.CAPEM, JoinSecret: secret, Image: *image})
	if err != nil {
		return err
	}
	_, err = stdout.Write(manifest)
	fmt.Fprintf(stderr, "registered cluster %q. The manifest on stdout holds its join secret (shown only now): apply it in that cluster with `kubectl apply -f -`.\n", pos[0])
	return err
}

// registerOrRotate does register's change of the state and words its
// refusals for the command line.
func registerOrRotate(st *stub.State, id string, rotate, disconnect bool, o stub.RegisterOptions) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), stateTimeout)
	defer cancel()
	if !rotate {
		secret, err := st.Register(ctx, id, o)
		switch {
		case errors.Is(err, stub.ErrClusterExists):
			return "", fmt.Errorf("cluster %q is already registered (use --rotate to issue a new join secret)", id)
		case errors.Is(err, stub.ErrAudienceInUse):
			return "", fmt.Errorf("--caller-audience: %w; give each verifying cluster an audience of its own", err)
		}
		return secret, err
	}
	if o.Labels != nil {
		return "", errors.New("--label cannot change the labels of a registered cluster with --rotate; unregister and register it again")
	}
	secret, err := st.Rotate(ctx, id, stub.RotateOptions{Disconnect: disconnect, Expires: o.Expires})
	if errors.Is(err, stub.ErrClusterNotFound) {
		return "", fmt.Errorf("cluster %q is not registered: register it without --rotate", id)
	}
	return secret, err
}

func parseLabels(labels []string) (map[string]string, error) {
	if len(labels) == 0 {
		return nil, nil
	}
	lm := map[string]string{}
	for _, l := range labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--label %q: want key=value", l)
		}
		lm[k] = v
	}
	return lm, nil
}

// unregister removes a cluster: its join secret stops working and its
// agents' sessions are closed within tunnel.SessionCheckInterval.
func unregister(args []string, stderr io.Writer) error {
	fs, cfgPath := adminFlags("unregister")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: stub unregister CLUSTER-ID [--config FILE]")
	}
	_, st, err := openState(*cfgPath)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), stateTimeout)
	defer cancel()
	if err := st.Unregister(ctx, pos[0]); errors.Is(err, stub.ErrClusterNotFound) {
		return fmt.Errorf("cluster %q is not registered", pos[0])
	} else if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "unregistered cluster %q: its agents are disconnected within %v; delete the agent from that cluster.\n", pos[0], tunnel.SessionCheckInterval)
	return nil
}

func imageTag() string {
	if version == "dev" {
		return "latest"
	}
	return version
}

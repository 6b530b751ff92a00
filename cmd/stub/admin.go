package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
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

// registerFlags are the choices of `stub register`.
type registerFlags struct {
	cfgPath, image, secretOut, audience *string
	rotate, disconnect                  *bool
	expires                             *time.Duration
	labels                              stringList
}

func parseRegister(args []string) (registerFlags, string, error) {
	fs, cfgPath := adminFlags("register")
	f := registerFlags{cfgPath: cfgPath,
		image:      fs.String("image", defaultImage+":"+imageTag(), "agent container image"),
		rotate:     fs.Bool("rotate", false, "issue a new join secret for an already registered cluster (sessions of the old one stay up)"),
		disconnect: fs.Bool("disconnect", false, "with --rotate: also close the sessions the old secret opened (a leaked secret)"),
		expires:    fs.Duration("expires", 0, "the join secret's lifetime, e.g. 2160h; afterwards agents must get a new one (default: no expiry)"),
		secretOut:  fs.String("secret-out", "", "also write the join secret to this file (mode 0600), for agents run outside a cluster"),
		audience:   fs.String("caller-audience", "", "the cluster's agents verify callers themselves: hand them only ID tokens issued for this audience (e.g. an IdP client ID of its own), which are then accepted for this cluster only")}
	fs.Var(&f.labels, "label", "cluster label key=value (repeatable)")
	pos, err := parseInterspersed(fs, args)
	switch {
	case err != nil:
		return f, "", err
	case len(pos) != 1:
		return f, "", errors.New("usage: stub register CLUSTER-ID [--config FILE] [--image IMG] [--label k=v] [--rotate [--disconnect]] [--expires DURATION] [--secret-out FILE] [--caller-audience AUD]")
	case *f.disconnect && !*f.rotate:
		return f, "", errors.New("--disconnect goes with --rotate")
	case *f.audience != "" && *f.rotate:
		return f, "", errors.New("--caller-audience is set at registration; unregister and register the cluster again to change it")
	}
	return f, pos[0], nil
}

func register(args []string, stdout, stderr io.Writer) error {
	f, id, err := parseRegister(args)
	if err != nil {
		return err
	}
	lm, err := parseLabels(f.labels)
	if err != nil {
		return err
	}
	expires, err := parseExpiry(*f.expires)
	if err != nil {
		return err
	}
	cfg, st, err := openState(*f.cfgPath)
	if err != nil {
		return err
	}
	if err := checkCallerAudience(cfg, id, *f.audience); err != nil {
		return err
	}
	bundle, err := stub.LoadBundle(cfg)
	if err != nil {
		return err
	}
	secretFile, err := openSecretOut(*f.secretOut) // before the state changes: a bad path changes nothing
	if err != nil {
		return err
	}
	secret, err := registerOrRotate(st, id, *f.rotate, *f.disconnect, stub.RegisterOptions{Labels: lm, Expires: expires, CallerAudience: *f.audience})
	if err := secretFile.finish(secret, err); err != nil {
		return err
	}
	manifest, err := install.AgentManifest(install.AgentParams{Cluster: id, StubURL: cfg.PublicURL, StubCAPEM: bundle.CAPEM, JoinSecret: secret, Image: *f.image})
	if err != nil {
		return err
	}
	_, err = stdout.Write(manifest)
	fmt.Fprintf(stderr, "registered cluster %q. The manifest on stdout holds its join secret (shown only now): apply it in that cluster with `kubectl apply -f -`.\n", id)
	if u, perr := url.Parse(cfg.PublicURL); perr == nil && isLoopback(u.Hostname()) {
		fmt.Fprintf(stderr, "note: the manifest sends agents to %s (publicURL), which is this machine only: an agent in a cluster cannot reach it. Set publicURL in the config to an address the cluster can reach.\n", cfg.PublicURL)
	}
	return err
}

// checkCallerAudience refuses a caller audience that everyday logins carry
// (an issuer's login client ID): every user's token would then be handed to
// that cluster's agents and bound to it.
func checkCallerAudience(cfg config.Stub, id, aud string) error {
	for i, j := range cfg.Authentication.JWT {
		if aud != "" && j.Login != nil && j.Login.ClientID == aud {
			return fmt.Errorf("--caller-audience %q is authentication.jwt[%d].login.clientID, the audience of everyday logins: every user's token would go to this cluster's agents; give the cluster an audience of its own (e.g. %q)", aud, i, aud+"-"+id)
		}
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// secretOut is --secret-out's file, opened before the registration.
type secretOut struct {
	f       *os.File
	created bool
}

// openSecretOut opens path for the join secret without changing it yet.
func openSecretOut(path string) (*secretOut, error) {
	if path == "" {
		return &secretOut{}, nil
	}
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("--secret-out %q: %w (nothing was registered)", path, err)
	}
	return &secretOut{f: f, created: errors.Is(statErr, os.ErrNotExist)}, nil
}

// finish writes the secret if the registration (regErr) succeeded, and
// removes a file it created otherwise.
func (o *secretOut) finish(secret string, regErr error) error {
	if o.f == nil {
		return regErr
	}
	defer o.f.Close()
	if regErr != nil {
		if o.created {
			_ = os.Remove(o.f.Name())
		}
		return regErr
	}
	if err := o.f.Truncate(0); err != nil {
		return fmt.Errorf("--secret-out %q: %w (the cluster IS registered: issue a new secret with --rotate)", o.f.Name(), err)
	}
	if _, err := o.f.WriteString(secret + "\n"); err != nil {
		return fmt.Errorf("--secret-out %q: %w (the cluster IS registered: issue a new secret with --rotate)", o.f.Name(), err)
	}
	return nil
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

// revoke removes every static token of a user: requests with them are
// refused at once and their open watches and exec sessions end within
// streams.recheckInterval.
func revoke(args []string, stderr io.Writer) error {
	fs, cfgPath := adminFlags("revoke")
	user := fs.String("user", "", "the user whose static tokens to revoke (as given to `stub kubeconfig --user`)")
	if _, err := parseInterspersed(fs, args); err != nil {
		return err
	}
	if *user == "" {
		return errors.New("usage: stub revoke --user NAME [--config FILE]")
	}
	_, st, err := openState(*cfgPath)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), stateTimeout)
	defer cancel()
	n, err := st.RevokeTokens(ctx, *user)
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("user %q has no static token (OIDC users are revoked at their IdP, or dropped from the policy)", *user)
	}
	fmt.Fprintf(stderr, "revoked %d static token(s) of %q: refused from now on; their open streams end within the stub's streams.recheckInterval.\n", n, *user)
	return nil
}

func imageTag() string {
	if version == "dev" {
		return "latest"
	}
	return version
}

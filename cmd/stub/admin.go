package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/config"
	"github.com/keyhole-dev/keyhole/install"
	"github.com/keyhole-dev/keyhole/tunnel"
)

const defaultImage = "ghcr.io/keyhole-dev/keyhole-agent"

func register(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("stub register", flag.ContinueOnError)
	cfgPath := fs.String("config", os.Getenv("KEYHOLE_CONFIG"), "path of the stub's StubConfig file")
	image := fs.String("image", defaultImage+":"+imageTag(), "agent container image")
	rotate := fs.Bool("rotate", false, "issue a new join secret for an already registered cluster (sessions of the old one stay up)")
	disconnect := fs.Bool("disconnect", false, "with --rotate: also close the sessions the old secret opened (a leaked secret)")
	expires := fs.Duration("expires", 0, "the join secret's lifetime, e.g. 2160h; afterwards agents must get a new one (default: no expiry)")
	secretOut := fs.String("secret-out", "", "also write the join secret to this file (mode 0600), for agents run outside a cluster")
	var labels stringList
	fs.Var(&labels, "label", "cluster label key=value (repeatable)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("usage: stub register CLUSTER-ID [--config FILE] [--image IMG] [--label k=v] [--rotate [--disconnect]] [--expires DURATION] [--secret-out FILE]")
	}
	cfg, err := config.LoadStub(*cfgPath, config.DiscoverEnv())
	if err != nil {
		return err
	}
	lm := map[string]string{}
	for _, l := range labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return fmt.Errorf("--label %q: want key=value", l)
		}
		lm[k] = v
	}
	if len(lm) == 0 {
		lm = nil
	}
	bundle, err := loadBundle(cfg)
	if err != nil {
		return err
	}
	var secret string
	err = updateState(cfg, "clusters.yaml", func(path string) (err error) {
		secret, err = tunnel.Register(path, pos[0], tunnel.RegisterOptions{Labels: lm, Rotate: *rotate, Disconnect: *disconnect, Expires: parseExpiry(*expires)})
		return err
	})
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

// unregister removes a cluster: its join secret stops working and its
// agents' sessions are closed within tunnel.SessionCheckInterval.
func unregister(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("stub unregister", flag.ContinueOnError)
	cfgPath := fs.String("config", os.Getenv("KEYHOLE_CONFIG"), "path of the stub's StubConfig file")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("usage: stub unregister CLUSTER-ID [--config FILE]")
	}
	cfg, err := config.LoadStub(*cfgPath, config.DiscoverEnv())
	if err != nil {
		return err
	}
	if err := updateState(cfg, "clusters.yaml", func(path string) error { return tunnel.Unregister(path, pos[0]) }); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "unregistered cluster %q: its agents are disconnected within %v; delete the agent from that cluster.\n", pos[0], tunnel.SessionCheckInterval)
	return nil
}

func kubeconfig(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("stub kubeconfig", flag.ContinueOnError)
	cfgPath := fs.String("config", os.Getenv("KEYHOLE_CONFIG"), "path of the stub's StubConfig file")
	user := fs.String("user", "", "user name the clusters' RBAC will see (required for a static token)")
	oidcLogin := fs.Bool("oidc", false, "log in through an OIDC issuer of the config with kubelogin instead of a static token")
	issuerURL := fs.String("issuer", "", "with --oidc: which issuer (default: the only one with a login section)")
	var loginArgs stringList
	fs.Var(&loginArgs, "login-arg", "with --oidc: extra kubelogin argument, e.g. --grant-type=device-code (repeatable)")
	expires := fs.Duration("expires", 0, "token lifetime, e.g. 720h (default: no expiry)")
	var groups, only stringList
	fs.Var(&groups, "group", "group of the user (repeatable)")
	fs.Var(&only, "cluster", "only this cluster (repeatable; default: every registered cluster)")
	if _, err := parseInterspersed(fs, args); err != nil {
		return err
	}
	if *user == "" && !*oidcLogin {
		return fmt.Errorf("usage: stub kubeconfig --user NAME [--group G]... [--cluster ID]... [--expires 720h] [--config FILE]\n   or: stub kubeconfig --oidc [--issuer URL] [--login-arg ARG]... [--cluster ID]... [--config FILE]")
	}
	cfg, err := config.LoadStub(*cfgPath, config.DiscoverEnv())
	if err != nil {
		return err
	}
	bundle, err := loadBundle(cfg)
	if err != nil {
		return err
	}
	if err := readState(cfg); err != nil {
		return err
	}
	cf, err := tunnel.OpenClustersFile(cfg.ClustersFile())
	if err != nil {
		return err
	}
	ids := []string(only)
	if len(ids) == 0 {
		for _, c := range cf.List() {
			ids = append(ids, c.ID)
		}
	}
	for _, id := range ids {
		if _, ok := cf.Get(id); !ok {
			return fmt.Errorf("--cluster %q is not registered (see `stub register`)", id)
		}
	}
	if len(ids) == 0 {
		return fmt.Errorf("no cluster is registered yet: run `stub register CLUSTER-ID` first")
	}
	params := install.KubeconfigParams{PublicURL: cfg.PublicURL, CAPEM: bundle.CAPEM, Clusters: ids, User: *user}
	note := fmt.Sprintf("kubeconfig for %q with contexts %s; its token is stored only as a hash.", *user, strings.Join(ids, ", "))
	if *oidcLogin {
		is, err := loginIssuer(cfg, *issuerURL)
		if err != nil {
			return err
		}
		ca, err := issuerCA(is.Issuer)
		if err != nil {
			return err
		}
		params.User = "oidc"
		params.Exec = install.Kubelogin(install.KubeloginParams{IssuerURL: is.Issuer.URL, ClientID: is.Login.ClientID,
			ClientSecret: is.Login.ClientSecret, ExtraScopes: is.Login.ExtraScopes, CAPEM: ca, ExtraArgs: loginArgs})
		note = fmt.Sprintf("kubeconfig logging in through %s with kubelogin, contexts %s.", is.Issuer.URL, strings.Join(ids, ", "))
	} else {
		err = updateState(cfg, "tokens.yaml", func(path string) (err error) {
			params.Token, err = authn.AddToken(path, *user, groups, parseExpiry(*expires), "kubeconfig "+time.Now().UTC().Format(time.RFC3339))
			return err
		})
		if err != nil {
			return err
		}
	}
	kc, err := install.Kubeconfig(params)
	if err != nil {
		return err
	}
	_, err = stdout.Write(kc)
	fmt.Fprintln(stderr, note)
	return err
}

// loginIssuer picks the issuer a --oidc kubeconfig logs in with.
func loginIssuer(cfg config.Stub, want string) (authn.JWTAuthenticatorConfig, error) {
	var found []authn.JWTAuthenticatorConfig
	for _, j := range cfg.Authentication.JWT {
		if j.Login != nil && (want == "" || j.Issuer.URL == want) {
			found = append(found, j)
		}
	}
	switch {
	case len(found) == 1:
		return found[0], nil
	case len(found) == 0 && want != "":
		return authn.JWTAuthenticatorConfig{}, fmt.Errorf("--issuer %q: no authentication.jwt entry with that issuer.url and a login section", want)
	case len(found) == 0:
		return authn.JWTAuthenticatorConfig{}, fmt.Errorf("--oidc: no authentication.jwt entry of the config has a login section (login.clientID)")
	default:
		return authn.JWTAuthenticatorConfig{}, fmt.Errorf("--oidc: several issuers have a login section; pick one with --issuer")
	}
}

func issuerCA(is authn.Issuer) ([]byte, error) {
	if is.CertificateAuthorityFile != "" {
		return os.ReadFile(is.CertificateAuthorityFile)
	}
	return []byte(is.CertificateAuthority), nil
}

func imageTag() string {
	if version == "dev" {
		return "latest"
	}
	return version
}

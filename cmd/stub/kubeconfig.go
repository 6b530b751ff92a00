package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/config"
	"github.com/keyhole-dev/keyhole/install"
	"github.com/keyhole-dev/keyhole/stub"
)

// kubeconfigFlags are the choices of `stub kubeconfig`.
type kubeconfigFlags struct {
	cfgPath, user, issuer *string
	audienceScope         *string
	oidc                  *bool
	expires               *time.Duration
	loginArgs, groups     stringList
	clusters              stringList
}

func kubeconfig(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := adminFlags("kubeconfig")
	f := kubeconfigFlags{cfgPath: cfgPath,
		user:   fs.String("user", "", "user name the clusters' RBAC will see (required for a static token)"),
		oidc:   fs.Bool("oidc", false, "log in through an OIDC issuer of the config with kubelogin instead of a static token"),
		issuer: fs.String("issuer", "", "with --oidc: which issuer (default: the only one with a login section)"),
		audienceScope: fs.String("audience-scope", "audience:server:client_id:%s",
			"with --oidc: the scope that asks the IdP for a token whose audience is a verifying cluster's caller audience (%s); Dex's cross-client form by default"),
		expires: fs.Duration("expires", 0, "token lifetime, e.g. 720h (default: no expiry)")}
	fs.Var(&f.loginArgs, "login-arg", "with --oidc: extra kubelogin argument, e.g. --grant-type=device-code (repeatable)")
	fs.Var(&f.groups, "group", "group of the user (repeatable)")
	fs.Var(&f.clusters, "cluster", "only this cluster (repeatable; default: every registered cluster)")
	if _, err := parseInterspersed(fs, args); err != nil {
		return err
	}
	if *f.user == "" && !*f.oidc {
		return errors.New("usage: stub kubeconfig --user NAME [--group G]... [--cluster ID]... [--expires 720h] [--config FILE]\n   or: stub kubeconfig --oidc [--issuer URL] [--login-arg ARG]... [--cluster ID]... [--config FILE]")
	}
	cfg, st, err := openState(*f.cfgPath)
	if err != nil {
		return err
	}
	bundle, err := stub.LoadBundle(cfg)
	if err != nil {
		return err
	}
	ids, err := kubeconfigClusters(st, f.clusters, !*f.oidc)
	if err != nil {
		return err
	}
	params := install.KubeconfigParams{PublicURL: cfg.PublicURL, CAPEM: bundle.CAPEM, Clusters: ids, User: *f.user}
	note, err := kubeconfigUser(cfg, st, f, &params)
	if err != nil {
		return err
	}
	kc, err := install.Kubeconfig(params)
	if err != nil {
		return err
	}
	_, err = stdout.Write(kc)
	fmt.Fprintln(stderr, note)
	return err
}

// kubeconfigClusters is the list of contexts: the clusters asked for, all
// registered, or every registered cluster; for a static token, none whose
// agents verify callers (they accept only ID tokens issued for them).
func kubeconfigClusters(st *stub.State, only []string, static bool) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), stateTimeout)
	defer cancel()
	if err := st.Pull(ctx); err != nil {
		return nil, err
	}
	var ids []string
	for _, c := range st.Clusters() {
		if len(only) == 0 && !(static && c.CallerAudience != "") {
			ids = append(ids, c.ID)
		}
	}
	for _, id := range only {
		c, ok := st.Cluster(id)
		switch {
		case !ok:
			return nil, fmt.Errorf("--cluster %q is not registered (see `stub register`)", id)
		case static && c.CallerAudience != "":
			return nil, fmt.Errorf("--cluster %q: its agents verify callers themselves and accept no static token; use `stub kubeconfig --oidc`", id)
		}
		ids = append(ids, id)
	}
	if len(ids) == 0 {
		return nil, errors.New("no cluster to put in the kubeconfig: run `stub register CLUSTER-ID` first (clusters whose agents verify callers need `stub kubeconfig --oidc`)")
	}
	return ids, nil
}

// kubeconfigUser sets the kubeconfig's user: a kubelogin exec plugin
// (--oidc) or a freshly minted static token. It returns the note for
// stderr.
func kubeconfigUser(cfg config.Stub, st *stub.State, f kubeconfigFlags, params *install.KubeconfigParams) (string, error) {
	ids := strings.Join(params.Clusters, ", ")
	if !*f.oidc {
		expires, err := parseExpiry(*f.expires)
		if err != nil {
			return "", err
		}
		ctx, cancel := context.WithTimeout(context.Background(), stateTimeout)
		defer cancel()
		tok, err := st.AddToken(ctx, stub.TokenRequest{User: *f.user, Groups: f.groups, Expires: expires,
			Description: "kubeconfig " + time.Now().UTC().Format(time.RFC3339)})
		params.Token = tok
		return fmt.Sprintf("kubeconfig for %q with contexts %s; its token is stored only as a hash.", *f.user, ids), err
	}
	is, err := loginIssuer(cfg, *f.issuer)
	if err != nil {
		return "", err
	}
	ca, err := issuerCA(is.Issuer)
	if err != nil {
		return "", err
	}
	params.User = "oidc"
	login := install.KubeloginParams{IssuerURL: is.Issuer.URL, ClientID: is.Login.ClientID,
		ClientSecret: is.Login.ClientSecret, ExtraScopes: is.Login.ExtraScopes, CAPEM: ca, ExtraArgs: f.loginArgs}
	params.Exec = install.Kubelogin(login)
	// A cluster whose agents verify callers gets a login of its own, for a
	// token bound to it (proxy/callers.go).
	for _, id := range params.Clusters {
		if c, _ := st.Cluster(id); c.CallerAudience != "" {
			if !strings.Contains(*f.audienceScope, "%s") {
				return "", fmt.Errorf("--audience-scope %q: must contain %%s, where cluster %q's caller audience goes", *f.audienceScope, id)
			}
			bound := login
			bound.ExtraScopes = append(slices.Clone(login.ExtraScopes), fmt.Sprintf(*f.audienceScope, c.CallerAudience))
			if params.ClusterExec == nil {
				params.ClusterExec = map[string]*clientcmdapi.ExecConfig{}
			}
			params.ClusterExec[id] = install.Kubelogin(bound)
		}
	}
	return fmt.Sprintf("kubeconfig logging in through %s with kubelogin, contexts %s.", is.Issuer.URL, ids), nil
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
		return authn.JWTAuthenticatorConfig{}, errors.New("--oidc: no authentication.jwt entry of the config has a login section (login.clientID)")
	default:
		return authn.JWTAuthenticatorConfig{}, errors.New("--oidc: several issuers have a login section; pick one with --issuer")
	}
}

func issuerCA(is authn.Issuer) ([]byte, error) {
	if is.CertificateAuthorityFile != "" {
		return os.ReadFile(is.CertificateAuthorityFile)
	}
	return []byte(is.CertificateAuthority), nil
}

package stub

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/certs"
	"github.com/keyhole-dev/keyhole/config"
	"github.com/keyhole-dev/keyhole/install"
)

// DefaultAudienceScope asks Dex for an ID token whose audience is a
// verifying cluster's caller audience (Dex's cross-client scope; %s is the
// audience).
const DefaultAudienceScope = "audience:server:client_id:%s"

// OIDCKubeconfigOptions are the choices of a kubeconfig that logs in
// through an OIDC issuer with kubelogin.
type OIDCKubeconfigOptions struct {
	// Issuer is the issuer.url of the authentication.jwt entry to log in
	// with; "" picks the only entry with a login section.
	Issuer string
	// Clusters are the contexts, in order: registered clusters, at least
	// one (the caller decides which: every cluster, or those a user may
	// reach).
	Clusters []string
	// AudienceScope is the scope that asks for a token bound to a verifying
	// cluster's caller audience (%s); "" is DefaultAudienceScope.
	AudienceScope string
	// LoginArgs are extra kubelogin arguments, e.g. --grant-type=device-code.
	LoginArgs []string
}

// OIDCKubeconfig returns the kubeconfig of `stub kubeconfig --oidc`: one
// context per cluster, the stub's CA from bundle (nil or empty when the
// certificate chains to public roots), and a kubelogin exec plugin for the
// issuer's login section. A cluster whose agents verify callers gets a
// login of its own, asking for a token bound to its caller audience
// (proxy/callers.go). The browser sign-in's landing page offers the same
// file.
func OIDCKubeconfig(cfg config.Stub, st *State, bundle *certs.Bundle, o OIDCKubeconfigOptions) ([]byte, error) {
	if len(o.Clusters) == 0 {
		return nil, errors.New("no cluster to put in the kubeconfig: run `stub register CLUSTER-ID` first")
	}
	scope := o.AudienceScope
	if scope == "" {
		scope = DefaultAudienceScope
	}
	is, err := LoginIssuer(cfg, o.Issuer)
	if err != nil {
		return nil, err
	}
	ca, err := issuerCA(is.Issuer)
	if err != nil {
		return nil, err
	}
	params := install.KubeconfigParams{PublicURL: cfg.PublicURL, Clusters: o.Clusters, User: "oidc"}
	if bundle != nil {
		params.CAPEM = bundle.CAPEM
	}
	login := install.KubeloginParams{IssuerURL: is.Issuer.URL, ClientID: is.Login.ClientID,
		ClientSecret: is.Login.ClientSecret, ExtraScopes: is.Login.ExtraScopes, CAPEM: ca, ExtraArgs: o.LoginArgs}
	params.Exec = install.Kubelogin(login)
	for _, id := range o.Clusters {
		c, ok := st.Cluster(id)
		if !ok {
			return nil, fmt.Errorf("cluster %q is not registered (see `stub register`)", id)
		}
		if c.CallerAudience == "" {
			continue
		}
		if !strings.Contains(scope, "%s") {
			return nil, fmt.Errorf("--audience-scope %q: must contain %%s, where cluster %q's caller audience goes", scope, id)
		}
		bound := login
		bound.ExtraScopes = append(slices.Clone(login.ExtraScopes), fmt.Sprintf(scope, c.CallerAudience))
		if params.ClusterExec == nil {
			params.ClusterExec = map[string]*clientcmdapi.ExecConfig{}
		}
		params.ClusterExec[id] = install.Kubelogin(bound)
	}
	return install.Kubeconfig(params)
}

// LoginIssuer picks the authentication.jwt entry a --oidc kubeconfig logs
// in with: the one whose issuer.url is want and that has a login section,
// or, with want "", the only one with a login section.
func LoginIssuer(cfg config.Stub, want string) (authn.JWTAuthenticatorConfig, error) {
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

package stub

import (
	"context"
	"strings"
	"testing"

	apiserverv1beta1 "k8s.io/apiserver/pkg/apis/apiserver/v1beta1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/certs"
	"github.com/keyhole-dev/keyhole/config"
)

func jwtIssuer(url, clientID string) authn.JWTAuthenticatorConfig {
	j := authn.JWTAuthenticatorConfig{Issuer: authn.Issuer{Issuer: apiserverv1beta1.Issuer{URL: url,
		CertificateAuthority: "-----BEGIN CERTIFICATE-----\nissuer-ca\n-----END CERTIFICATE-----\n"}}}
	if clientID != "" {
		j.Login = &authn.Login{ClientID: clientID, ExtraScopes: []string{"email", "groups"}}
	}
	return j
}

// The --oidc kubeconfig: one context per cluster, kubelogin for the
// issuer, and for a verifying cluster a login of its own that asks for a
// token with its caller audience.
func TestOIDCKubeconfig(t *testing.T) {
	st := openDir(t)
	ctx := context.Background()
	for id, aud := range map[string]string{"prod": "", "acc": "keyhole-acc"} {
		if _, err := st.Register(ctx, id, RegisterOptions{CallerAudience: aud}); err != nil {
			t.Fatal(err)
		}
	}
	cfg := config.Stub{PublicURL: "https://keyhole.example.test:8443"}
	cfg.Authentication.JWT = []authn.JWTAuthenticatorConfig{jwtIssuer("https://ci.example.test", ""), jwtIssuer("https://dex.example.test/dex", "keyhole")}
	bundle := &certs.Bundle{CAPEM: []byte("-----BEGIN CERTIFICATE-----\nstub-ca\n-----END CERTIFICATE-----\n")}

	kc, err := OIDCKubeconfig(cfg, st, bundle, OIDCKubeconfigOptions{Clusters: []string{"prod", "acc"}, LoginArgs: []string{"--grant-type=device-code"}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := clientcmd.Load(kc)
	if err != nil {
		t.Fatalf("%v\n%s", err, kc)
	}
	if len(c.Contexts) != 2 {
		t.Fatalf("contexts: %v", c.Contexts)
	}
	for _, cl := range c.Clusters {
		if !strings.Contains(string(cl.CertificateAuthorityData), "stub-ca") || !strings.HasPrefix(cl.Server, cfg.PublicURL+"/clusters/") {
			t.Fatalf("cluster entry %+v", cl)
		}
	}
	var plain, bound string
	for name, u := range c.AuthInfos {
		if u.Exec == nil {
			t.Fatalf("user %s has no exec plugin", name)
		}
		args := strings.Join(u.Exec.Args, " ")
		if strings.Contains(args, "audience:server:client_id:keyhole-acc") {
			bound = args
		} else {
			plain = args
		}
	}
	for _, want := range []string{"oidc-login", "https://dex.example.test/dex", "keyhole", "--grant-type=device-code"} {
		if !strings.Contains(plain, want) || !strings.Contains(bound, want) {
			t.Fatalf("kubelogin args lack %q:\nplain %s\nbound %s", want, plain, bound)
		}
	}

	// Choosing by issuer, and the refusals.
	if _, err := OIDCKubeconfig(cfg, st, nil, OIDCKubeconfigOptions{Issuer: "https://dex.example.test/dex", Clusters: []string{"prod"}}); err != nil {
		t.Fatalf("public-roots stub (nil bundle): %v", err)
	}
	for name, tc := range map[string]struct {
		cfg  config.Stub
		o    OIDCKubeconfigOptions
		want string
	}{
		"no cluster":     {cfg, OIDCKubeconfigOptions{}, "no cluster"},
		"unregistered":   {cfg, OIDCKubeconfigOptions{Clusters: []string{"nope"}}, `"nope" is not registered`},
		"unknown issuer": {cfg, OIDCKubeconfigOptions{Issuer: "https://ci.example.test", Clusters: []string{"prod"}}, "no authentication.jwt entry with that issuer.url and a login section"},
		"bad scope":      {cfg, OIDCKubeconfigOptions{Clusters: []string{"acc"}, AudienceScope: "aud"}, "must contain %s"},
		"two logins": {config.Stub{Authentication: config.Authentication{JWT: []authn.JWTAuthenticatorConfig{
			jwtIssuer("https://a.example.test", "a"), jwtIssuer("https://b.example.test", "b")}}}, OIDCKubeconfigOptions{Clusters: []string{"prod"}}, "pick one with --issuer"},
	} {
		if _, err := OIDCKubeconfig(tc.cfg, st, bundle, tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
}

package main

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/keyhole-dev/keyhole/cmd/internal/cli"
	"github.com/keyhole-dev/keyhole/config"
	"github.com/keyhole-dev/keyhole/install"
	"github.com/keyhole-dev/keyhole/stub"
)

// kubeconfigFlags are the choices of `stub kubeconfig`.
type kubeconfigFlags struct {
	user, issuer, audienceScope string
	ci, audience                string
	tokenEnv, ciCommand         string
	oidc                        bool
	expires                     time.Duration
	loginArgs, groups, clusters []string
}

func newKubeconfigCmd(o rootOpts, stdout, stderr io.Writer) *cobra.Command {
	var f kubeconfigFlags
	cmd := &cobra.Command{
		Use:   "kubeconfig (--user NAME | --oidc | --ci PROVIDER --audience AUD)",
		Short: "Print a kubeconfig with a context per cluster: a static token, an OIDC login, or a CI job's",
		Long: `Kubeconfig prints a kubeconfig with one context per registered cluster the user
may reach (or the --cluster ones), in one of three kinds:

  --user NAME    mints a static token for NAME (and --group); the state keeps
                 only its hash. "stub tokens" lists, expires and revokes it.
  --oidc         logs in through an OIDC issuer of the config with kubelogin
                 (kubectl oidc-login); it holds no secret.
  --ci PROVIDER  for CI jobs on github-actions or gitlab: kubectl runs
                 "stub ci-token" for the job's own ID token; it holds no secret.

Clusters whose agents verify callers take no static token: use --oidc, or --ci
with their caller audience.`,
		Example: `  # A static token for a user, valid 30 days
  stub kubeconfig --user alice@example.com --group platform --expires 720h > alice.kubeconfig
  kubectl --kubeconfig alice.kubeconfig --context prod get ns

  # Only some clusters
  stub kubeconfig --user deploy-bot --cluster prod --cluster staging > bot.kubeconfig

  # Log in with kubelogin (device code where no browser opens)
  stub kubeconfig --oidc --login-arg=--grant-type=device-code > oidc.kubeconfig

  # For GitHub Actions jobs, whose ID tokens have audience keyhole
  stub kubeconfig --ci github-actions --audience keyhole > ci.kubeconfig`,
		Args: cli.ExactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if n := btoi(f.user != "") + btoi(f.oidc) + btoi(f.ci != ""); n != 1 {
				return cli.Usage(cmd, errors.New("choose one kind of kubeconfig: --user NAME (a static token), --oidc (kubelogin) or --ci PROVIDER --audience AUD (CI jobs)"))
			}
			return kubeconfig(o.configPath(), f, stdout, stderr)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.user, "user", "", "user name the clusters' RBAC will see (a static token)")
	fs.StringArrayVar(&f.groups, "group", nil, "with --user: group of the user (repeatable)")
	fs.DurationVar(&f.expires, "expires", 0, "with --user: the token's lifetime, e.g. 720h (default: no expiry)")
	fs.BoolVar(&f.oidc, "oidc", false, "log in through an OIDC issuer of the config with kubelogin instead of a static token")
	fs.StringVar(&f.issuer, "issuer", "", "with --oidc: which issuer (default: the only one with a login section)")
	fs.StringVar(&f.audienceScope, "audience-scope", stub.DefaultAudienceScope,
		"with --oidc: the scope that asks the IdP for a token whose audience is a verifying cluster's caller audience (%s); Dex's cross-client form by default")
	fs.StringArrayVar(&f.loginArgs, "login-arg", nil, "with --oidc: extra kubelogin argument, e.g. --login-arg=--grant-type=device-code (repeatable)")
	fs.StringVar(&f.ci, "ci", "", "a kubeconfig for CI jobs on "+install.CIGitHubActions+" or "+install.CIGitLab+
		": its user runs \"stub ci-token\" for the job's own ID token, again whenever the last one expired; it holds no secret")
	fs.StringVar(&f.audience, "audience", "", "with --ci: the audience of the job's ID tokens (one of an authentication.jwt issuer's audiences)")
	fs.StringVar(&f.tokenEnv, "token-env", install.DefaultCITokenEnv, "with --ci "+install.CIGitLab+": the variable of the job's id_tokens entry")
	fs.StringVar(&f.ciCommand, "ci-command", "stub", "with --ci: the stub binary as the job runs it (a name on PATH or a path)")
	fs.StringArrayVar(&f.clusters, "cluster", nil, "write contexts for only this cluster (repeatable; default: every registered cluster the user can reach); the token itself reaches what the policy allows")
	_ = cmd.RegisterFlagCompletionFunc("ci", cobra.FixedCompletions([]string{install.CIGitHubActions, install.CIGitLab}, cobra.ShellCompDirectiveNoFileComp))
	_ = cmd.RegisterFlagCompletionFunc("cluster", completeClusters(o))
	return cmd
}

func kubeconfig(cfgPath string, f kubeconfigFlags, stdout, stderr io.Writer) error {
	if err := checkCIFlags(f); err != nil {
		return err
	}
	cfg, st, err := openState(cfgPath)
	if err != nil {
		return err
	}
	bundle, err := stub.LoadBundle(cfg)
	if err != nil {
		return err
	}
	ids, err := kubeconfigClusters(st, f.clusters, refusedBy(f))
	if err != nil {
		return err
	}
	if f.oidc {
		kc, err := stub.OIDCKubeconfig(cfg, st, bundle, stub.OIDCKubeconfigOptions{Issuer: f.issuer, Clusters: ids,
			AudienceScope: f.audienceScope, LoginArgs: f.loginArgs})
		if err != nil {
			return err
		}
		is, _ := stub.LoginIssuer(cfg, f.issuer) // found: OIDCKubeconfig succeeded
		_, err = stdout.Write(kc)
		fmt.Fprintf(stderr, "kubeconfig logging in through %s with kubelogin, contexts %s.\n", is.Issuer.URL, strings.Join(ids, ", "))
		return err
	}
	params := install.KubeconfigParams{PublicURL: cfg.PublicURL, CAPEM: bundle.CAPEM, Clusters: ids, User: f.user}
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

// kubeconfigClusters is the list of contexts: the clusters asked for, or
// every registered cluster the kubeconfig's user can reach (refused says
// why it cannot reach one; "" when it can).
func kubeconfigClusters(st *stub.State, only []string, refused func(stub.Cluster) string) ([]string, error) {
	ctx, cancel := stateContext()
	defer cancel()
	if err := st.Pull(ctx); err != nil {
		return nil, err
	}
	var ids []string
	for _, c := range st.Clusters() {
		if len(only) == 0 && refused(c) == "" {
			ids = append(ids, c.ID)
		}
	}
	for _, id := range only {
		c, ok := st.Cluster(id)
		if !ok {
			return nil, fmt.Errorf("--cluster %q is not registered (see `stub register`)", id)
		}
		if why := refused(c); why != "" {
			return nil, fmt.Errorf("--cluster %q: %s", id, why)
		}
		ids = append(ids, id)
	}
	if len(ids) == 0 {
		return nil, errors.New("no cluster to put in the kubeconfig: run `stub register CLUSTER-ID` first (clusters whose agents verify callers need `stub kubeconfig --oidc`, or --ci with their caller audience)")
	}
	return ids, nil
}

// refusedBy says which clusters the user a kubeconfig's flags describe
// cannot reach: a cluster whose agents verify callers accepts only ID
// tokens issued for its caller audience. Static tokens are none; a
// GitHub Actions job asks for a token per cluster, with its audience; a
// GitLab job's token has the one audience of its id_tokens entry.
func refusedBy(f kubeconfigFlags) func(stub.Cluster) string {
	return func(c stub.Cluster) string {
		switch {
		case c.CallerAudience == "" || f.oidc || f.ci == install.CIGitHubActions:
			return ""
		case f.ci == install.CIGitLab && c.CallerAudience != f.audience:
			return fmt.Sprintf("its agents verify callers themselves and accept only ID tokens for audience %q: make its kubeconfig with --audience %[1]q --token-env VAR, and give the job `id_tokens: {VAR: {aud: %[1]q}}`", c.CallerAudience)
		case f.ci == install.CIGitLab:
			return ""
		}
		return "its agents verify callers themselves and accept no static token; use `stub kubeconfig --oidc`"
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// checkCIFlags checks the --ci flags before anything is read.
func checkCIFlags(f kubeconfigFlags) error {
	if f.ci == "" {
		for _, fl := range []struct {
			name string
			set  bool
		}{{"--audience", f.audience != ""}, {"--token-env", f.tokenEnv != install.DefaultCITokenEnv}, {"--ci-command", f.ciCommand != "stub"}} {
			if fl.set {
				return fmt.Errorf("%s goes with --ci", fl.name)
			}
		}
		return nil
	}
	switch {
	case f.ci != install.CIGitHubActions && f.ci != install.CIGitLab:
		return fmt.Errorf("--ci %q: use %s or %s", f.ci, install.CIGitHubActions, install.CIGitLab)
	case f.audience == "":
		return errors.New("--ci needs --audience: the audience of the job's ID tokens, as listed in an authentication.jwt issuer's audiences (e.g. keyhole)")
	case len(f.groups) > 0 || f.expires != 0:
		return errors.New("--group and --expires are for static tokens: a CI job's groups come from its token's claims (claimMappings), and each token expires on its own")
	case f.ci != install.CIGitLab && f.tokenEnv != install.DefaultCITokenEnv:
		return fmt.Errorf("--token-env goes with --ci %s (GitHub Actions tokens come from the job's token endpoint)", install.CIGitLab)
	case f.ciCommand == "":
		return errors.New("--ci-command: must name the stub binary as the job runs it, e.g. stub or ./bin/stub")
	}
	return nil
}

// kubeconfigUser sets the kubeconfig's user for a static token or a CI
// job (--oidc kubeconfigs are stub.OIDCKubeconfig's). It returns the note
// for stderr.
func kubeconfigUser(cfg config.Stub, st *stub.State, f kubeconfigFlags, params *install.KubeconfigParams) (string, error) {
	ids := strings.Join(params.Clusters, ", ")
	if f.ci != "" {
		return ciUser(cfg, st, f, params)
	}
	expires, err := parseExpiry("--expires", f.expires)
	if err != nil {
		return "", err
	}
	ctx, cancel := stateContext()
	defer cancel()
	tok, err := st.AddToken(ctx, stub.TokenRequest{User: f.user, Groups: f.groups, Expires: expires,
		Description: "kubeconfig " + time.Now().UTC().Format(time.RFC3339)})
	params.Token = tok
	return fmt.Sprintf("kubeconfig for %q with contexts %s; its token is stored only as a hash (token ID %s: `stub tokens revoke %[3]s` ends it).",
		f.user, ids, stub.TokenIDOf(tok)), err
}

// ciUser makes the kubeconfig's user a CI job's: the credential plugin
// `stub ci-token`. On GitHub Actions, a cluster whose agents verify
// callers gets a user of its own asking for a token with its caller
// audience.
func ciUser(cfg config.Stub, st *stub.State, f kubeconfigFlags, params *install.KubeconfigParams) (string, error) {
	if !issuerAccepts(cfg, f.audience) {
		return "", fmt.Errorf("--audience %q: no authentication.jwt issuer of the config lists it in its audiences, so the stub would refuse every token; add it to the CI issuer's issuer.audiences", f.audience)
	}
	p := install.CITokenParams{Command: f.ciCommand, Provider: f.ci, Audience: f.audience, TokenEnv: f.tokenEnv}
	params.User = "ci-" + f.ci
	params.Exec = install.CIToken(p)
	for _, id := range params.Clusters {
		if c, _ := st.Cluster(id); c.CallerAudience != "" && c.CallerAudience != p.Audience {
			bound := p
			bound.Audience = c.CallerAudience
			if params.ClusterExec == nil {
				params.ClusterExec = map[string]*clientcmdapi.ExecConfig{}
			}
			params.ClusterExec[id] = install.CIToken(bound)
		}
	}
	how := "a fresh ID token from the job's token endpoint whenever the last one expired"
	if f.ci == install.CIGitLab {
		how = "the job's ID token from $" + p.TokenEnv + " (GitLab issues it once, valid for the job's timeout)"
	}
	return fmt.Sprintf("kubeconfig for %s jobs with contexts %s: kubectl runs `%s ci-token` for %s, audience %q; it holds no secret.",
		f.ci, strings.Join(params.Clusters, ", "), p.Command, how, p.Audience), nil
}

// issuerAccepts says whether an authentication.jwt issuer lists aud.
func issuerAccepts(cfg config.Stub, aud string) bool {
	for _, j := range cfg.Authentication.JWT {
		if slices.Contains(j.Issuer.Audiences, aud) {
			return true
		}
	}
	return false
}

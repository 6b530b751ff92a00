package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/keyhole-dev/keyhole/cmd/internal/cli"
	"github.com/keyhole-dev/keyhole/credplugin"
)

func newCITokenCmd(env func() credplugin.Env, stdout io.Writer) *cobra.Command {
	var provider, audience, tokenEnv string
	cmd := &cobra.Command{
		Use:   "ci-token --provider PROVIDER [--audience AUD]",
		Short: "The kubectl credential plugin of a CI kubeconfig (stub kubeconfig --ci)",
		Long: `Ci-token is the kubectl exec credential plugin that "stub kubeconfig --ci" puts
in a CI job's kubeconfig: it prints an ExecCredential with the job's own OIDC
ID token, fetched from GitHub Actions' token endpoint (for --audience) or read
from the variable of a GitLab id_tokens entry. kubectl runs it again once the
token expired. It reads no config and holds no secret.`,
		Example: `  # What kubectl runs in a GitHub Actions job (permissions: id-token: write)
  stub ci-token --provider github-actions --audience keyhole

  # In a GitLab job with id_tokens: {KEYHOLE_ID_TOKEN: {aud: keyhole}}
  stub ci-token --provider gitlab --audience keyhole`,
		Args: cli.ExactArgs(),
		RunE: func(*cobra.Command, []string) error {
			return ciToken(env(), provider, audience, tokenEnv, stdout)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&provider, "provider", "", "the CI system: "+credplugin.GitHubActions+" or "+credplugin.GitLab)
	fs.StringVar(&audience, "audience", "", "the audience of the ID token (required for "+credplugin.GitHubActions+"; checked for "+credplugin.GitLab+")")
	fs.StringVar(&tokenEnv, "token-env", credplugin.DefaultTokenEnv, "with --provider "+credplugin.GitLab+": the variable of the job's id_tokens entry")
	_ = cmd.RegisterFlagCompletionFunc("provider", cobra.FixedCompletions([]string{credplugin.GitHubActions, credplugin.GitLab}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// ciEnv is what `stub ci-token` reads and calls: the process's
// environment and the CI system's token endpoint.
func ciEnv() credplugin.Env {
	return credplugin.Env{Getenv: os.Getenv, Client: &http.Client{Timeout: 30 * time.Second},
		Now: time.Now, RetryWait: time.Second, UserAgent: "keyhole-stub-ci-token/" + version}
}

// ciToken is `stub ci-token`, the credential plugin of a kubeconfig made by
// `stub kubeconfig --ci` (package credplugin).
func ciToken(env credplugin.Env, provider, audience, tokenEnv string, stdout io.Writer) error {
	cred, err := credplugin.ExecCredential(env, provider, audience, tokenEnv)
	if err != nil {
		return fmt.Errorf("ci-token: %w", err)
	}
	return json.NewEncoder(stdout).Encode(cred)
}

package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/keyhole-dev/keyhole/credplugin"
)

// ciToken is `stub ci-token`, the credential plugin of a kubeconfig made by
// `stub kubeconfig --ci` (package credplugin).
func ciToken(args []string, stdout, stderr io.Writer) error {
	return ciTokenWith(args, stdout, stderr, credplugin.Env{Getenv: os.Getenv, Client: &http.Client{Timeout: 30 * time.Second},
		Now: time.Now, RetryWait: time.Second, UserAgent: "keyhole-stub-ci-token/" + version})
}

func ciTokenWith(args []string, stdout, stderr io.Writer, env credplugin.Env) error {
	fs := flag.NewFlagSet("stub ci-token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	provider := fs.String("provider", "", "the CI system: "+credplugin.GitHubActions+" or "+credplugin.GitLab)
	audience := fs.String("audience", "", "the audience of the ID token (required for "+credplugin.GitHubActions+"; checked for "+credplugin.GitLab+")")
	tokenEnv := fs.String("token-env", credplugin.DefaultTokenEnv, "with --provider "+credplugin.GitLab+": the variable of the job's id_tokens entry")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("ci-token: unexpected argument %q", fs.Arg(0))
	}
	cred, err := credplugin.ExecCredential(env, *provider, *audience, *tokenEnv)
	if err != nil {
		return fmt.Errorf("ci-token: %w", err)
	}
	return json.NewEncoder(stdout).Encode(cred)
}

// Command stub is Keyhole's public side: it terminates TLS, authenticates
// callers, and forwards their Kubernetes API requests through agent tunnels.
// Its subcommands administer the state it serves from (clusters, static
// tokens), on a state directory or on a hub's shared Secret, as the config
// says; `stub --help` lists them.
package main

import (
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/keyhole-dev/keyhole/cmd/internal/cli"
	"github.com/keyhole-dev/keyhole/credplugin"
)

var version = "dev"

func main() {
	cli.Main("stub", func() error { return run(os.Args[1:], os.Stdout, os.Stderr) })
}

// run parses args and runs the command they name.
func run(args []string, stdout, stderr io.Writer) error {
	return cli.Execute(newRoot(stdout, stderr, ciEnv), args)
}

// rootOpts are the flags every command shares.
type rootOpts struct {
	config *string
	flag   *cobra.Command // the root, whose persistent --config this is
}

// configPath is --config, or $KEYHOLE_CONFIG when it was not given.
func (o rootOpts) configPath() string {
	if o.flag.PersistentFlags().Changed("config") {
		return *o.config
	}
	return os.Getenv("KEYHOLE_CONFIG")
}

// newRoot builds the command tree.
// ciEnv gives ci-token its environment (tests give their own).
func newRoot(stdout, stderr io.Writer, ciEnv func() credplugin.Env) *cobra.Command {
	root := &cobra.Command{
		Use:   "stub",
		Short: "Keyhole stub: the public side of the gateway to private clusters' Kubernetes APIs",
		Long: `Keyhole stub is the public side of the gateway: it terminates TLS, authenticates
callers (static tokens, OIDC, CI workload identity), applies the policy, audits,
and forwards each Kubernetes API request through the tunnel an agent in the
private cluster keeps open.

With no command, stub serves (as "stub serve"). The other commands administer
its state (registered clusters, static tokens): in the state directory of the
config, or, with hub.enabled, in the hub's shared Secret, so they work the same
on a single stub and on a set of replicas.

Every command but ci-token reads the config given by --config or
$KEYHOLE_CONFIG (embedded defaults without either).`,
		Example: `  # Serve with the embedded defaults (self-signed certificate, state in ~/.local/state/keyhole)
  stub

  # Register a cluster and install its agent there
  stub register prod --label env=prod > prod-agent.yaml
  kubectl --context prod apply -f prod-agent.yaml

  # Give a user a kubeconfig with a static token, list and revoke tokens
  stub kubeconfig --user alice@example.com --expires 720h > alice.kubeconfig
  stub tokens list
  stub tokens revoke --user alice@example.com

  # See the clusters, their agents and health
  stub clusters`,
		Version: version,
	}
	o := rootOpts{flag: root}
	o.config = root.PersistentFlags().String("config", "", "path of the stub's StubConfig file (default $KEYHOLE_CONFIG, else the embedded defaults)")
	_ = root.MarkPersistentFlagFilename("config", "yaml", "yml")
	serveCmd := newServeCmd(o, stderr)
	// stub with no command serves; an unknown word is an unknown command
	// (cobra's check, with suggestions, for a root without Args).
	root.RunE = serveCmd.RunE
	root.AddGroup(&cobra.Group{ID: "serve", Title: "Serving:"}, &cobra.Group{ID: "clusters", Title: "Clusters:"},
		&cobra.Group{ID: "access", Title: "Access:"})
	for _, c := range []*cobra.Command{serveCmd} {
		c.GroupID = "serve"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{newRegisterCmd(o, stdout, stderr), newUnregisterCmd(o, stderr), newClustersCmd(o, stdout, stderr)} {
		c.GroupID = "clusters"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{newKubeconfigCmd(o, stdout, stderr), newTokensCmd(o, stdout, stderr), newRevokeCmd(o, stderr), newCITokenCmd(ciEnv, stdout)} {
		c.GroupID = "access"
		root.AddCommand(c)
	}
	root.AddCommand(newVersionCmd(stdout))
	cli.Setup(root, stdout, stderr)
	return root
}

func newVersionCmd(stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print the stub's version",
		Long:    "Version prints the version the stub was built as (also: stub --version).",
		Args:    cli.ExactArgs(),
		Example: "  stub version",
		RunE: func(*cobra.Command, []string) error {
			_, err := io.WriteString(stdout, version+"\n")
			return err
		},
	}
}

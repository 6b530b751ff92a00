package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/keyhole-dev/keyhole/cmd/internal/cli"
	"github.com/keyhole-dev/keyhole/config"
	"github.com/keyhole-dev/keyhole/install"
	"github.com/keyhole-dev/keyhole/stub"
	"github.com/keyhole-dev/keyhole/tunnel"
)

const defaultImage = "ghcr.io/keyhole-dev/keyhole-agent"

// stateTimeout bounds a command's reads and writes of a hub's shared state.
const stateTimeout = 30 * time.Second

// openState loads the config at cfgPath and opens the state it names.
func openState(cfgPath string) (config.Stub, *stub.State, error) {
	cfg, err := config.LoadStub(cfgPath, config.DiscoverEnv())
	if err != nil {
		return cfg, nil, err
	}
	st, err := stub.StateFor(cfg, nil)
	return cfg, st, err
}

// stateContext bounds one command's reads and writes of the state.
func stateContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), stateTimeout)
}

// parseExpiry turns a lifetime flag (--expires) into an end (nil: none).
func parseExpiry(flag string, d time.Duration) (*time.Time, error) {
	switch {
	case d < 0:
		return nil, fmt.Errorf("%s %v: a lifetime must be positive, e.g. 720h; leave it out for no expiry", flag, d)
	case d == 0:
		return nil, nil
	}
	t := time.Now().Add(d).UTC().Truncate(time.Second)
	return &t, nil
}

// secretFlags are the flags of a command that issues a join secret and
// prints the agent manifest holding it (register, clusters rotate-secret).
type secretFlags struct {
	image, secretOut string
	expires          time.Duration
	// What goes to stdout instead of the manifest.
	helmValues, agentConfig bool
	kubeconfig, context     string // --agent-config: how the agent reaches its API server
	cfgPath                 string // --config, to repeat in advice
}

// configFlag is " --config PATH" to repeat in a suggested command, or "".
func configFlag(path string) string {
	if path == "" {
		return ""
	}
	return " --config " + path
}

func (f *secretFlags) add(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringVar(&f.image, "image", defaultImage+":"+imageTag(), "agent container image in the manifest (build it with hack/image.sh; see the README)")
	fs.DurationVar(&f.expires, "expires", 0, "the join secret's lifetime, e.g. 2160h; afterwards agents must get a new one (default: no expiry)")
	fs.StringVar(&f.secretOut, "secret-out", "", "also write the join secret to this file (mode 0600), for agents run outside a cluster or the kustomize install")
	_ = cmd.MarkFlagFilename("secret-out")
	fs.BoolVar(&f.helmValues, "helm-values", false, "print values for the keyhole-agent Helm chart (install/helm/keyhole-agent) instead of the manifest")
	fs.BoolVar(&f.agentConfig, "agent-config", false, "print an AgentConfig for an agent run on this machine with a kubeconfig (go run ./cmd/agent --config FILE) instead of the manifest; needs --secret-out")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "with --agent-config: the kubeconfig that reaches the cluster's API server (default: the first file of $KUBECONFIG, else ~/.kube/config)")
	fs.StringVar(&f.context, "context", "", "with --agent-config: the kubeconfig context of that cluster (default: its current-context)")
	_ = cmd.MarkFlagFilename("kubeconfig")
	cmd.MarkFlagsMutuallyExclusive("helm-values", "agent-config")
}

// checkOutput refuses output flags that do not go together.
func (f secretFlags) checkOutput(cmd *cobra.Command) error {
	switch {
	case f.agentConfig && f.secretOut == "":
		return cli.Usage(cmd, errors.New("--agent-config writes a config that names the join secret's file: add --secret-out FILE, e.g. --secret-out my-cluster.secret"))
	case !f.agentConfig && (f.kubeconfig != "" || f.context != ""):
		return cli.Usage(cmd, errors.New("--kubeconfig and --context are for --agent-config (an agent run on this machine); the manifest's agents use their ServiceAccount"))
	case f.agentConfig && cmd.Flags().Changed("image"):
		return cli.Usage(cmd, errors.New("--image is for the manifest and --helm-values; an agent run with --agent-config is this machine's binary"))
	}
	return nil
}

// agentKubeconfig is --kubeconfig, or kubectl's default (the first file of
// $KUBECONFIG, else ~/.kube/config), as an absolute path, and the context
// the agent is to use: --context, else that file's current-context, pinned
// so that a later `kubectl config use-context` cannot point the agent at
// another cluster. Both are checked before anything is registered.
func (f secretFlags) agentKubeconfig() (path, context string, err error) {
	path = f.kubeconfig
	if path == "" {
		path = clientcmd.NewDefaultClientConfigLoadingRules().GetDefaultFilename()
	}
	if path, err = filepath.Abs(path); err != nil {
		return "", "", err
	}
	kc, err := clientcmd.LoadFromFile(path)
	if err != nil {
		return "", "", fmt.Errorf("--agent-config: kubeconfig %s: %w; name the cluster's kubeconfig with --kubeconfig FILE (nothing was registered)", path, err)
	}
	context = f.context
	if context == "" {
		if context = kc.CurrentContext; context == "" {
			return "", "", fmt.Errorf("--agent-config: kubeconfig %s has no current-context: name the cluster's with --context NAME (`kubectl config get-contexts` lists them; nothing was registered)", path)
		}
	}
	if _, ok := kc.Contexts[context]; !ok {
		names := slices.Sorted(maps.Keys(kc.Contexts))
		return "", "", fmt.Errorf("--agent-config: context %q is not in kubeconfig %s (it has %v): pick one with --context NAME, or name the file that has it with --kubeconfig FILE (nothing was registered)", context, path, names)
	}
	if _, err := clientcmd.NewNonInteractiveClientConfig(*kc, context, &clientcmd.ConfigOverrides{}, nil).ClientConfig(); err != nil {
		return "", "", fmt.Errorf("--agent-config: kubeconfig %s, context %q: %w (nothing was registered)", path, context, err)
	}
	return path, context, nil
}

// registerFlags are the choices of `stub register`.
type registerFlags struct {
	secretFlags
	audience           string
	rotate, disconnect bool
	labels             []string
}

func newRegisterCmd(o rootOpts, stdout, stderr io.Writer) *cobra.Command {
	var f registerFlags
	cmd := &cobra.Command{
		Use:   "register CLUSTER-ID",
		Short: "Register a cluster and print its agent manifest (with a new join secret)",
		Long: `Register adds a cluster and prints the manifest that installs its agent there:
Namespace, ServiceAccount, RBAC, the Secret with the cluster's join secret
(256 random bits; the stub keeps only its hash, so it is shown only now), the
agent's ConfigMap and Deployment. Apply it in that cluster.

With --rotate it issues a new join secret for a registered cluster instead
(also spelt "stub clusters rotate-secret"): handshakes must use the new one at
once, sessions of the old one stay up unless --disconnect (a leaked secret).`,
		Example: `  # Register a cluster with a label for the policy, and install its agent
  stub register prod --label env=prod > prod-agent.yaml
  kubectl --context prod apply -f prod-agent.yaml

  # A join secret valid for 90 days, also written to a file
  stub register edge-1 --expires 2160h --secret-out edge-1.secret > edge-1-agent.yaml

  # A leaked join secret: a new one, and the old one's sessions are closed
  stub register prod --rotate --disconnect > prod-agent.yaml

  # A cluster whose agents verify callers' ID tokens themselves
  stub register pci --caller-audience keyhole-pci > pci-agent.yaml`,
		Args:              cli.ExactArgs("CLUSTER-ID"),
		ValidArgsFunction: noCompletion,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(cmd); err != nil {
				return err
			}
			if err := f.checkOutput(cmd); err != nil {
				return err
			}
			return register(o.configPath(), args[0], f, stdout, stderr)
		},
	}
	f.secretFlags.add(cmd)
	fs := cmd.Flags()
	fs.BoolVar(&f.rotate, "rotate", false, "issue a new join secret for an already registered cluster (sessions of the old one stay up)")
	fs.BoolVar(&f.disconnect, "disconnect", false, "with --rotate: also close the sessions the old secret opened (a leaked secret)")
	fs.StringArrayVar(&f.labels, "label", nil, "cluster label key=value, for the policy's clusterSelector (repeatable)")
	fs.StringVar(&f.audience, "caller-audience", "", "the cluster's agents verify callers themselves: hand them only ID tokens issued for this audience (e.g. an IdP client ID of its own), which are then accepted for this cluster only")
	return cmd
}

// check refuses flag combinations that mean nothing.
func (f registerFlags) check(cmd *cobra.Command) error {
	switch {
	case f.disconnect && !f.rotate:
		return cli.Usage(cmd, errors.New("--disconnect goes with --rotate"))
	case f.audience != "" && f.rotate:
		return errors.New("--caller-audience is set at registration; unregister and register the cluster again to change it")
	}
	return nil
}

func register(cfgPath, id string, f registerFlags, stdout, stderr io.Writer) error {
	lm, err := parseLabels(f.labels)
	if err != nil {
		return err
	}
	expires, err := parseExpiry("--expires", f.expires)
	if err != nil {
		return err
	}
	cfg, st, err := openState(cfgPath)
	if err != nil {
		return err
	}
	if err := checkCallerAudience(cfg, id, f.audience); err != nil {
		return err
	}
	f.cfgPath = cfgPath
	return issueSecret(cfg, id, f.secretFlags, f.rotate, stdout, stderr, func() (string, error) {
		return registerOrRotate(st, id, f.rotate, f.disconnect, stub.RegisterOptions{Labels: lm, Expires: expires, CallerAudience: f.audience})
	}, fmt.Sprintf("registered cluster %q.", id))
}

// issueSecret runs change (a registration or rotation that returns the new
// join secret), writes --secret-out and prints the agent manifest with the
// secret, then note on stderr.
func issueSecret(cfg config.Stub, id string, f secretFlags, rotating bool, stdout, stderr io.Writer, change func() (string, error), note string) error {
	bundle, err := stub.LoadBundle(cfg)
	if err != nil {
		return err
	}
	kubeconfig, kubeContext := "", ""
	if f.agentConfig { // before the state changes, as the next
		if kubeconfig, kubeContext, err = f.agentKubeconfig(); err != nil {
			return err
		}
	}
	p := install.AgentParams{Cluster: id, StubURL: cfg.PublicURL, StubCAPEM: bundle.CAPEM, JoinSecret: "not-yet", Image: f.image}
	if f.helmValues { // rendered once before the state changes: a value it refuses (an image) changes nothing
		if _, err := install.AgentHelmValues(p); err != nil {
			return fmt.Errorf("%w (nothing was registered)", err)
		}
	}
	secretFile, err := openSecretOut(f.secretOut, rotating) // before the state changes: a bad path changes nothing
	if err != nil {
		return err
	}
	secret, err := change()
	if err := secretFile.finish(secret, err); err != nil {
		return err
	}
	var out []byte
	p.JoinSecret = secret
	switch {
	case f.agentConfig:
		out, err = localAgentConfig(id, cfg.PublicURL, bundle.CAPEM, f.secretOut, kubeconfig, kubeContext)
		note += fmt.Sprintf(" The join secret is in %s. Run the agent on this machine with the AgentConfig on stdout: go run ./cmd/agent --config FILE (or: agent --config FILE).", f.secretOut)
	case f.helmValues:
		out, err = install.AgentHelmValues(p)
		note += " The Helm values on stdout hold the join secret (shown only now): install the keyhole-agent chart in that cluster with them (the command is at their top)."
	default:
		out, err = install.AgentManifest(p)
		note += " The manifest on stdout holds the join secret (shown only now): apply it in that cluster with `kubectl apply -f -`."
	}
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	fmt.Fprintln(stderr, note)
	if f.agentConfig {
		return err
	}
	if u, perr := url.Parse(cfg.PublicURL); perr == nil && isLoopback(u.Hostname()) {
		fmt.Fprintf(stderr, "note: agents in the cluster will dial %s (publicURL), which is this machine only: a pod cannot reach it. Set publicURL in the config to an address the cluster can reach (README: \"An agent in the cluster\"), or run the agent on this machine instead: %s register %s%s --rotate --agent-config --secret-out %s.secret\n", cfg.PublicURL, self(), id, configFlag(f.cfgPath), id)
	}
	if version == "dev" && f.image == defaultImage+":"+imageTag() {
		fmt.Fprintf(stderr, "note: the image %s is not published: build it with hack/image.sh --platforms amd64 out/ and load out/keyhole-agent-linux-amd64.tar into the cluster (kind: kind load image-archive out/keyhole-agent-linux-amd64.tar), or give --image of your own.\n", f.image)
	}
	return err
}

// localAgentConfig is the AgentConfig of --agent-config: the join secret in
// --secret-out's file (written already), the stub's CA (when it has its own)
// in a file beside it, and the kubeconfig of the cluster.
func localAgentConfig(id, publicURL string, caPEM []byte, secretOut, kubeconfig, context string) ([]byte, error) {
	secretPath, err := filepath.Abs(secretOut)
	if err != nil {
		return nil, err
	}
	caPath := ""
	if caPEM != nil {
		caPath = filepath.Join(filepath.Dir(secretPath), id+"-stub-ca.crt")
		if err := os.WriteFile(caPath, caPEM, 0o644); err != nil {
			return nil, fmt.Errorf("writing the stub's CA beside the join secret: %w", err)
		}
	}
	return install.LocalAgentConfig(install.LocalAgentParams{Cluster: id, StubURL: publicURL, StubCAFile: caPath,
		JoinSecretFile: secretPath, Kubeconfig: kubeconfig, Context: context})
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
func openSecretOut(path string, rotating bool) (*secretOut, error) {
	if path == "" {
		return &secretOut{}, nil
	}
	fi, statErr := os.Lstat(path)
	switch {
	case errors.Is(statErr, os.ErrNotExist):
	case statErr != nil:
		return nil, fmt.Errorf("--secret-out %q: %w (nothing was registered)", path, statErr)
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("--secret-out %q is a %s, not a regular file: name a file to create (nothing was registered)", path, kindOf(fi.Mode()))
	case !rotating:
		// It may hold another cluster's secret: never overwrite it by a
		// registration. A rotation rewrites its own cluster's file.
		return nil, fmt.Errorf("--secret-out %q exists: name a new file, or remove it first; only a rotation (--rotate, clusters rotate-secret) rewrites a secret file (nothing was registered)", path)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("--secret-out %q: %w (nothing was registered)", path, err)
	}
	if err := f.Chmod(0o600); err != nil { // a file that was there keeps its mode otherwise
		f.Close()
		return nil, fmt.Errorf("--secret-out %q: %w (nothing was registered)", path, err)
	}
	return &secretOut{f: f, created: statErr != nil}, nil
}

// kindOf names a non-regular file's type for an error.
func kindOf(m os.FileMode) string {
	switch {
	case m&os.ModeSymlink != 0:
		return "symbolic link"
	case m.IsDir():
		return "directory"
	case m&os.ModeDevice != 0:
		return "device"
	default:
		return "special file"
	}
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
	ctx, cancel := stateContext()
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

func newUnregisterCmd(o rootOpts, stderr io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "unregister CLUSTER-ID",
		Short: "Remove a cluster: its join secret stops working, its agents are disconnected",
		Long: `Unregister removes a cluster: its join secret is refused from now on, and every
stub closes its agents' sessions within a few seconds (ending the streams
they carried). A caller audience it had is retired: tokens issued for it are
refused everywhere, and no cluster may take it again. Delete the agent from
that cluster afterwards.`,
		Example: `  stub unregister prod
  kubectl --context prod delete namespace keyhole-system`,
		Args:              cli.ExactArgs("CLUSTER-ID"),
		ValidArgsFunction: completeClusters(o),
		RunE: func(_ *cobra.Command, args []string) error {
			return unregister(o.configPath(), args[0], stderr)
		},
	}
}

// unregister removes a cluster: its join secret stops working and its
// agents' sessions are closed within tunnel.SessionCheckInterval.
func unregister(cfgPath, id string, stderr io.Writer) error {
	_, st, err := openState(cfgPath)
	if err != nil {
		return err
	}
	ctx, cancel := stateContext()
	defer cancel()
	if err := st.Unregister(ctx, id); errors.Is(err, stub.ErrClusterNotFound) {
		return fmt.Errorf("cluster %q is not registered (`stub clusters` lists them)", id)
	} else if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "unregistered cluster %q: its agents are disconnected within %v; delete the agent from that cluster.\n", id, tunnel.SessionCheckInterval)
	return nil
}

// imageTag is the agent image's tag: this binary's version; "dev" (what
// hack/image.sh builds by default) for a build without one.
func imageTag() string { return version }

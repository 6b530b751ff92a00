// Command stub is Keyhole's public side: it terminates TLS, authenticates
// callers, and forwards their Kubernetes API requests through agent tunnels.
//
//	stub [serve] [--config FILE]      run the gateway (embedded defaults without --config)
//	stub register ID [flags]          register a cluster; print the agent manifest
//	stub unregister ID                remove a cluster; its agents are disconnected
//	stub revoke --user NAME           revoke a user's static tokens; their streams end
//	stub kubeconfig --user NAME ...   mint a token; print a kubeconfig for every cluster
//	stub ci-token --provider P ...    a CI job's kubectl credential plugin (stub kubeconfig --ci)
//	stub version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

var version = "dev"

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); errors.Is(err, flag.ErrHelp) {
		return // the flag set printed the usage
	} else if err != nil {
		fmt.Fprintln(os.Stderr, "stub:", err)
		os.Exit(1)
	}
}

// usage is what `stub help` and `stub --help` print.
const usage = `Keyhole stub: the public side of the gateway.

  stub [serve] [--config FILE]      run the gateway (embedded defaults without --config)
  stub register ID [flags]          register a cluster; print the agent manifest
  stub unregister ID                remove a cluster; its agents are disconnected
  stub kubeconfig --user NAME ...   mint a token; print a kubeconfig for every cluster
  stub kubeconfig --oidc ...        print a kubeconfig that logs in with kubelogin
  stub kubeconfig --ci PROVIDER ... print a kubeconfig for CI jobs (github-actions, gitlab)
  stub ci-token --provider P ...    the credential plugin such a kubeconfig runs
  stub revoke --user NAME           revoke a user's static tokens; their streams end
  stub version

Each command but ci-token takes --config FILE (or $KEYHOLE_CONFIG); "stub COMMAND -h" lists its flags.
`

func run(args []string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		fs := flag.NewFlagSet("stub serve", flag.ContinueOnError)
		fs.SetOutput(stderr)
		fs.Usage = func() { fmt.Fprint(stderr, usage+"\nFlags of serve:\n"); fs.PrintDefaults() }
		cfgPath := fs.String("config", os.Getenv("KEYHOLE_CONFIG"), "path of a StubConfig file (default: embedded defaults)")
		if err := fs.Parse(args); err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return serve(ctx, *cfgPath, stderr)
	case "register":
		return register(args, stdout, stderr)
	case "unregister":
		return unregister(args, stderr)
	case "revoke":
		return revoke(args, stderr)
	case "kubeconfig":
		return kubeconfig(args, stdout, stderr)
	case "ci-token":
		return ciToken(args, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, version)
		return nil
	case "help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		return fmt.Errorf("unknown command %q: use serve, register, unregister, kubeconfig, ci-token, revoke or version (stub help lists them)", cmd)
	}
}

// parseInterspersed parses flags that may come before or after positional
// arguments and returns the positionals.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// parseExpiry turns an --expires lifetime into an end (nil: none).
func parseExpiry(d time.Duration) (*time.Time, error) {
	switch {
	case d < 0:
		return nil, fmt.Errorf("--expires %v: a lifetime must be positive, e.g. 720h; leave it out for no expiry", d)
	case d == 0:
		return nil, nil
	}
	t := time.Now().Add(d).UTC().Truncate(time.Second)
	return &t, nil
}

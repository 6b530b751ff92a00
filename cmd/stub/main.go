// Command stub is Keyhole's public side: it terminates TLS, authenticates
// callers, and forwards their Kubernetes API requests through agent tunnels.
//
//	stub [serve] [--config FILE]      run the gateway (embedded defaults without --config)
//	stub register ID [flags]          register a cluster; print the agent manifest
//	stub unregister ID                remove a cluster; its agents are disconnected
//	stub kubeconfig --user NAME ...   mint a token; print a kubeconfig for every cluster
//	stub version
package main

import (
	"context"
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
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "stub:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		fs := flag.NewFlagSet("stub serve", flag.ContinueOnError)
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
	case "kubeconfig":
		return kubeconfig(args, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, version)
		return nil
	default:
		return fmt.Errorf("unknown command %q: use serve, register, unregister, kubeconfig or version", cmd)
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

func parseExpiry(d time.Duration) *time.Time {
	if d <= 0 {
		return nil
	}
	t := time.Now().Add(d).UTC().Truncate(time.Second)
	return &t
}

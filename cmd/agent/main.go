// Command agent runs inside a private cluster: it dials the stub, proves
// which cluster it serves, and serves the stub's streams by calling its own
// API server with its ServiceAccount and Impersonate-* headers.
//
//	agent --config FILE       run (the config may also come from $KEYHOLE_CONFIG)
//	agent version             (or agent --version)
//	agent completion SHELL
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/cmd/internal/cli"
	"github.com/keyhole-dev/keyhole/config"
	"github.com/keyhole-dev/keyhole/internal/logging"
	"github.com/keyhole-dev/keyhole/proxy"
	"github.com/keyhole-dev/keyhole/tunnel"
)

var version = "dev"

func main() {
	cli.Main("agent", func() error { return cli.Execute(newRoot(os.Stdout, os.Stderr), os.Args[1:]) })
}

// newRoot builds the agent's command tree: the root runs the agent.
func newRoot(stdout, stderr io.Writer) *cobra.Command {
	var cfgPath string
	root := &cobra.Command{
		Use:   "agent",
		Short: "Keyhole agent: serves a private cluster's API to the stub through an outbound tunnel",
		Long: `Keyhole agent runs inside (or beside) a private cluster. It dials the stub
(through HTTPS_PROXY when set), proves which cluster it serves with the
cluster's join secret, keeps the tunnel up, and serves the stub's streams:
each becomes a request to its own API server, made with its ServiceAccount
and Impersonate-* headers for the caller, so the cluster's RBAC decides.

Its AgentConfig file names the stub, the cluster, the join secret file and how
to reach the API server (in-cluster by default, or kubeconfig, or apiServer).
"stub register" prints a manifest with all of it. It runs until SIGTERM, then
drains streams in flight for drainTimeout.`,
		Example: `  # In a pod (the manifest "stub register" prints)
  agent --config=/etc/keyhole/config/agent.yaml

  # Beside a cluster, with a kubeconfig in the config
  KEYHOLE_CONFIG=agent.yaml agent`,
		Version: version,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("config") {
				cfgPath = os.Getenv("KEYHOLE_CONFIG")
			}
			return run(cfgPath)
		},
	}
	root.Flags().StringVar(&cfgPath, "config", "", "path of the AgentConfig file (default $KEYHOLE_CONFIG)")
	_ = root.MarkFlagFilename("config", "yaml", "yml")
	root.AddCommand(&cobra.Command{
		Use:     "version",
		Short:   "Print the agent's version",
		Long:    "Version prints the version the agent was built as (also: agent --version).",
		Example: "  agent version",
		Args:    cli.ExactArgs(),
		RunE: func(*cobra.Command, []string) error {
			_, err := io.WriteString(stdout, version+"\n")
			return err
		},
	})
	cli.Setup(root, stdout, stderr)
	return root
}

// run runs the agent of the config at cfgPath until SIGTERM or Ctrl-C.
func run(cfgPath string) error {
	cfg, err := config.LoadAgent(cfgPath, config.DiscoverEnv())
	if err != nil {
		return err
	}
	log, err := logging.New(cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return err
	}
	defer log.Sync()
	log = log.With(zap.String("cluster", cfg.Cluster), zap.String("agent", cfg.AgentID))
	// client-go logs through klog (its rate limiter's waits, among others):
	// into this log, not klog's own stderr format.
	logging.RouteKlog(log.Named("client-go"))

	rc, source, err := restConfig(cfg)
	if err != nil {
		return err
	}
	apiProxy, err := setAPIServerProxy(rc, cfg)
	if err != nil {
		return err
	}
	stubTLS := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.StubCAFile != "" {
		pem, err := os.ReadFile(cfg.StubCAFile)
		if err != nil {
			return fmt.Errorf("stubCAFile: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("stubCAFile %q: no PEM certificate in it", cfg.StubCAFile)
		}
		stubTLS.RootCAs = pool
	}
	var verifier *authn.JWT
	if len(cfg.CallerVerification.JWT) > 0 {
		if verifier, err = authn.NewJWT(cfg.CallerVerification.JWT); err != nil {
			return fmt.Errorf("callerVerification: %w", err)
		}
		defer verifier.Close()
		log.Info("verifying callers' OIDC tokens at the agent", zap.Int("issuers", len(cfg.CallerVerification.JWT)))
	}
	handler, err := proxy.NewAgentHop(proxy.AgentHopConfig{Cluster: cfg.Cluster, AgentID: cfg.AgentID, Rest: rc, Verifier: verifier, Identities: cfg.Identities, Logger: log.Named("proxy")})
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fp, err := fingerprint(ctx, rc, log)
	if err != nil {
		return err
	}
	agent, err := tunnel.NewAgent(tunnel.AgentConfig{
		StubURL: cfg.StubURL, Cluster: cfg.Cluster, AgentID: cfg.AgentID, Fingerprint: fp, Version: version, Attributes: handler.Attributes(),
		Secret: func() (string, error) {
			b, err := os.ReadFile(cfg.JoinSecretFile)
			return strings.TrimSpace(string(b)), err
		},
		TLS: stubTLS, Handler: handler, Logger: log.Named("tunnel"),
		KeepAliveInterval: cfg.Tunnel.KeepAliveInterval.Duration, KeepAliveTimeout: cfg.Tunnel.KeepAliveTimeout.Duration,
		DrainTimeout: cfg.DrainTimeout.Duration,
	})
	if err != nil {
		return err
	}
	if cfg.HealthListen != "" {
		hl, err := net.Listen("tcp", cfg.HealthListen)
		if err != nil {
			return fmt.Errorf("healthListen: %q: %w", cfg.HealthListen, err)
		}
		hs := &http.Server{Handler: healthMux(agent), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = hs.Serve(hl) }()
		defer hs.Close()
	}
	log.Info("agent starting", zap.String("stub", cfg.StubURL), zap.String("api_server", rc.Host), zap.String("api_source", source),
		zap.String("api_proxy", apiProxy), zap.String("fingerprint", fp), zap.String("version", version))
	return agent.Run(ctx)
}

// restConfig returns how to reach the API server and where that came from.
// In-cluster and apiServer configs name a token file, which client-go
// re-reads as the kubelet rotates it.
func restConfig(cfg config.Agent) (*rest.Config, string, error) {
	switch {
	case cfg.Kubeconfig != "":
		rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: cfg.Kubeconfig},
			&clientcmd.ConfigOverrides{CurrentContext: cfg.Context}).ClientConfig()
		if err != nil {
			if cfg.Context != "" {
				return nil, "", fmt.Errorf("kubeconfig %q, context %q: %w", cfg.Kubeconfig, cfg.Context, err)
			}
			return nil, "", fmt.Errorf("kubeconfig %q: %w", cfg.Kubeconfig, err)
		}
		return rc, "kubeconfig", nil
	case cfg.APIServer.URL != "":
		return &rest.Config{Host: cfg.APIServer.URL, BearerTokenFile: cfg.APIServer.TokenFile,
			TLSClientConfig: rest.TLSClientConfig{CAFile: cfg.APIServer.CAFile}}, "config", nil
	default:
		rc, err := rest.InClusterConfig()
		if err != nil {
			return nil, "", fmt.Errorf("in-cluster config: %w (outside a cluster set kubeconfig or apiServer in the config)", err)
		}
		return rc, "in-cluster", nil
	}
}

// setAPIServerProxy decides how the agent reaches its own API server:
// through apiServer.proxyURL or the kubeconfig's proxy-url when one is
// given, else directly. Never through HTTPS_PROXY: that proxy is for the
// tunnel to the stub (tunnel.AgentConfig.Proxy), and client-go would
// otherwise apply it to the API server too (rest.Config.Proxy nil means
// http.ProxyFromEnvironment), sending the fingerprint read and every
// proxied request to a proxy that usually cannot reach the cluster's
// Service network (e.g. 172.30.0.1 on OpenShift, not in a NO_PROXY of
// 10.0.0.0/8) and must not see its traffic. It returns what it chose, for
// the log, without a password.
func setAPIServerProxy(rc *rest.Config, cfg config.Agent) (string, error) {
	switch {
	case cfg.APIServer.ProxyURL != "":
		u, err := url.Parse(cfg.APIServer.ProxyURL)
		if err != nil {
			return "", fmt.Errorf("apiServer.proxyURL: %w", err)
		}
		rc.Proxy = http.ProxyURL(u)
		return u.Redacted(), nil
	case rc.Proxy != nil: // the kubeconfig's proxy-url
		u, err := rc.Proxy(&http.Request{URL: &url.URL{Scheme: "https", Host: "api"}})
		if err != nil || u == nil {
			return "kubeconfig proxy-url", err
		}
		return u.Redacted(), nil
	default:
		rc.Proxy = func(*http.Request) (*url.URL, error) { return nil, nil }
		return "none", nil
	}
}

// fingerprint reads the cluster fingerprint, retrying while the API server
// is not reachable yet.
func fingerprint(ctx context.Context, rc *rest.Config, log *zap.Logger) (string, error) {
	b := tunnel.DefaultBackoff
	for n := 0; ; n++ {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		fp, err := proxy.Fingerprint(rctx, rc)
		cancel()
		if err == nil {
			return fp, nil
		}
		wait := b.Wait(n)
		log.Warn("cannot read cluster fingerprint yet", zap.Error(err), zap.Duration("retry_in", wait))
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(wait):
		}
	}
}

// healthMux answers the pod's probes: /healthz while the process serves,
// /readyz only while the tunnel to the stub is up.
func healthMux(a *tunnel.Agent) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.Connected() {
			http.Error(w, "the tunnel to the stub is down", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

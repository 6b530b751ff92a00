package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"

	"github.com/keyhole-dev/keyhole/audit"
	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/config"
	"github.com/keyhole-dev/keyhole/ha"
	"github.com/keyhole-dev/keyhole/internal/logging"
	"github.com/keyhole-dev/keyhole/proxy"
	"github.com/keyhole-dev/keyhole/tunnel"
)

func serve(ctx context.Context, cfgPath string, stderr io.Writer) error {
	env := config.DiscoverEnv()
	cfg, err := config.LoadStub(cfgPath, env)
	if err != nil {
		return err
	}
	log, err := logging.New(cfg.Log.Level)
	if err != nil {
		return err
	}
	defer log.Sync()
	bundle, err := loadBundle(cfg)
	if err != nil {
		return err
	}
	var hb *hub // a replica of a set (hub.enabled); nil for a single stub
	if cfg.Hub.Enabled {
		hctx, stopHub := context.WithCancel(ctx) // ends with SIGTERM, or with an early error return
		if hb, err = startHub(hctx, cfg, log); err != nil {
			stopHub()
			return err
		}
		defer hb.wait()
		defer stopHub()
	}
	clusters, err := tunnel.OpenClustersFile(cfg.ClustersFile())
	if err != nil {
		return err
	}
	tokens, err := authn.OpenTokenFile(cfg.TokensFile())
	if err != nil {
		return err
	}
	first, err := buildAccess(cfg, tokens)
	if err != nil {
		return err
	}
	acc, err := newLive(cfgPath, env, first, tokens, log.Named("config"))
	if err != nil {
		return err
	}
	if cfg.Policy == nil {
		log.Warn("no policy configured: every authenticated caller may reach every cluster (set policy in the config to restrict)")
	}
	tcfg := tunnel.ServerConfig{Auth: clusters, Logger: log.Named("tunnel"),
		KeepAliveInterval: cfg.Tunnel.KeepAliveInterval.Duration, KeepAliveTimeout: cfg.Tunnel.KeepAliveTimeout.Duration,
		MaxSessions: cfg.Tunnel.MaxSessions, MaxHandshakesPerSecond: cfg.Tunnel.MaxHandshakesPerSecond}
	if hb != nil {
		tcfg.Replicas = hb.replicas // agents hold a session to every replica
	}
	tsrv, err := tunnel.NewServer(tcfg)
	if err != nil {
		return err
	}
	defer tsrv.Close()
	var sink audit.Sink
	if cfg.Audit.Path != "" {
		if sink, err = audit.OpenFileSink(cfg.Audit.Path); err != nil {
			return fmt.Errorf("audit.path: %q: %w", cfg.Audit.Path, err)
		}
		defer sink.Close()
	} else {
		log.Warn("no audit.path configured: requests are not audited")
	}
	var metrics *proxy.Metrics
	if cfg.Metrics.Listen != "" {
		metrics = proxy.NewMetrics(tsrv)
		if hb != nil {
			metrics.Register(ha.Collectors(hb.elector, hb.replicas)...)
		}
		mln, err := net.Listen("tcp", cfg.Metrics.Listen)
		if err != nil {
			return fmt.Errorf("metrics.listen: %q: %w", cfg.Metrics.Listen, err)
		}
		msrv := &http.Server{Handler: metrics.Handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: zap.NewStdLog(log.Named("metrics"))}
		go func() { _ = msrv.Serve(mln) }()
		defer msrv.Close()
		log.Info("metrics listening", zap.String("addr", mln.Addr().String()))
	}
	stub, err := proxy.NewStub(proxy.StubConfig{Dialer: tsrv, Clusters: clusters, Auth: acc, Policy: acc, Audit: sink, Metrics: metrics, Logger: log.Named("proxy")})
	if err != nil {
		return err
	}
	defer stub.Close()

	// Health from the data path: the prober is owned here and stopped (and
	// waited for) before the tunnel server closes.
	probeCtx, stopProbe := context.WithCancel(ctx)
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		p := &proxy.Prober{Target: tsrv, Logger: log.Named("probe")}
		if hb != nil {
			p.Replicas = hb.replicas.Live
		}
		p.Run(probeCtx)
	}()
	defer func() { stopProbe(); <-probeDone }()

	mux := http.NewServeMux()
	mux.Handle(tunnel.ConnectPath, tsrv)
	mux.Handle(proxy.ClustersPrefix, stub)
	mux.Handle(proxy.ClustersPath, proxy.ClustersHandler(acc, acc, clusters, tsrv))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	stopping := make(chan struct{}) // closed on SIGTERM: not ready from then on
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		select {
		case <-stopping:
			http.Error(w, "stopping", http.StatusServiceUnavailable)
			return
		default:
		}
		_, _ = io.WriteString(w, "ok\n")
		if hb != nil {
			// Serving goes on without the hub (on the state last
			// mirrored), so a hub outage does not make replicas unready;
			// it is said here, in the log and in keyhole_hub_reachable.
			_, _ = io.WriteString(w, hb.status())
		}
	})
	mux.Handle("/", proxy.NotFoundHandler())

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %q: %w (pick a free port in the config's listen key)", cfg.Listen, err)
	}
	var hubClient kubernetes.Interface // ACME's store shares the replica's hub client
	if hb != nil {
		hubClient = hb.client
	}
	tlsCfg, stopTLS, err := serverTLS(cfg, bundle, hubClient, log.Named("tls")) // cmd/stub/tls.go
	if err != nil {
		ln.Close()
		return err
	}
	defer stopTLS()
	srv := &http.Server{
		Handler:   mux,
		TLSConfig: tlsCfg,
		// No ReadTimeout or WriteTimeout: watches, logs -f, exec and
		// port-forward live as long as the client wants. Liveness comes
		// from TCP, HTTP/2 pings and yamux keepalive instead.
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// An HTTP/2 connection with nothing to say (an idle watch) is pinged
		// after 30 s: load balancers that cut idle connections (often at
		// 60 s) see traffic, and a client that vanished is found within 45 s.
		HTTP2:          &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 15 * time.Second},
		MaxHeaderBytes: 1 << 20,
		ErrorLog:       zap.NewStdLog(log.Named("http")),
	}
	caNote := tlsNote(cfg, bundle)
	log.Info("stub listening", zap.String("addr", ln.Addr().String()), zap.String("public_url", cfg.PublicURL),
		zap.String("state_dir", cfg.StateDir), zap.String("version", version))
	fmt.Fprintf(stderr, `
Keyhole stub is up on %s (listening on %s; %s).
Next steps:
  1. register a cluster and install its agent there:
       go run ./cmd/stub register my-cluster%s > agent.yaml && kubectl apply -f agent.yaml
  2. give yourself a kubeconfig:
       go run ./cmd/stub kubeconfig --user you@example.com%s > keyhole.kubeconfig
       kubectl --kubeconfig keyhole.kubeconfig get ns

`, cfg.PublicURL, ln.Addr(), caNote, cfgFlag(cfgPath), cfgFlag(cfgPath))

	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	// Graceful stop: not ready at once; after shutdownDelay, no new
	// connections, plain requests in flight get up to shutdownTimeout,
	// watches, logs -f and upgraded sessions are ended cleanly now
	// (proxy/drain.go); then (deferred) agent sessions close, and agents
	// reconnect, to another replica or to this one restarted.
	close(stopping)
	log.Info("shutting down: /readyz now fails", zap.Duration("shutdown_delay", cfg.ShutdownDelay.Duration), zap.Duration("shutdown_timeout", cfg.ShutdownTimeout.Duration))
	if d := cfg.ShutdownDelay.Duration; d > 0 {
		select {
		case <-time.After(d):
		case err := <-errc:
			return err
		}
	}
	start := time.Now()
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout.Duration)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(sctx) }() // closes the listener, waits for plain requests
	ended, left := stub.Drain(sctx)
	err = <-shut
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		log.Warn("shutdown", zap.Error(err))
	}
	srv.Close()
	log.Info("stopped serving", zap.Duration("took", time.Since(start)), zap.Int("streams_ended", ended), zap.Int("streams_left", left),
		zap.Bool("timed_out", errors.Is(err, context.DeadlineExceeded)))
	start, sessions := time.Now(), len(tsrv.Agents(""))
	tsrv.Close() // agents reconnect: to another replica, or to this one restarted
	log.Info("agent sessions closed", zap.Int("sessions", sessions), zap.Duration("took", time.Since(start)))
	return nil
}

func cfgFlag(p string) string {
	if p == "" {
		return ""
	}
	return " --config " + p
}

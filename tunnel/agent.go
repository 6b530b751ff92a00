package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"go.uber.org/zap"
)

// AgentConfig configures the agent side of the tunnel.
type AgentConfig struct {
	// StubURL is the stub's base URL, e.g. https://keyhole.example.com.
	StubURL     string
	Cluster     string
	AgentID     string
	Fingerprint string
	Version     string
	// VerifiesCallers asks the stub to forward callers' OIDC tokens, which
	// this agent verifies itself.
	VerifiesCallers bool
	// Secret returns the join secret; it is called before every dial so a
	// rotated secret file is picked up without a restart.
	Secret func() (string, error)
	// TLS verifies the stub: nil RootCAs means the system roots.
	TLS *tls.Config
	// Proxy chooses an HTTP CONNECT proxy; nil means http.ProxyFromEnvironment
	// (HTTPS_PROXY, NO_PROXY).
	Proxy func(*http.Request) (*url.URL, error)
	// Handler serves every stream the stub opens, as HTTP/1.1.
	Handler http.Handler
	Logger  *zap.Logger

	KeepAliveInterval time.Duration
	KeepAliveTimeout  time.Duration
	Backoff           Backoff
	// DrainTimeout bounds a graceful stop: after ctx ends, the agent tells
	// the stub to open no new streams (yamux GoAway), lets requests and
	// exec/port-forward streams in flight finish for up to this long, then
	// closes the session. Default 25 s, inside Kubernetes' default 30 s
	// termination grace period.
	DrainTimeout time.Duration
}

// DefaultDrainTimeout is AgentConfig.DrainTimeout's default.
const DefaultDrainTimeout = 25 * time.Second

// Backoff is full-jitter exponential backoff: the n-th wait is uniform in
// [0, min(Max, Base·2ⁿ)). A session that lasted StableAfter resets n, so a
// stub restart does not make a fleet of agents reconnect in lock-step.
type Backoff struct {
	Base, Max, StableAfter time.Duration
}

// DefaultBackoff is used for zero fields of AgentConfig.Backoff.
var DefaultBackoff = Backoff{Base: 500 * time.Millisecond, Max: 30 * time.Second, StableAfter: 30 * time.Second}

// Wait returns the wait before retry n (0-based).
func (b Backoff) Wait(n int) time.Duration {
	ceiling := b.Max
	if n < 32 {
		if d := b.Base << n; d > 0 && d < ceiling {
			ceiling = d
		}
	}
	if ceiling <= 0 {
		return 0
	}
	return rand.N(ceiling)
}

// Agent keeps one session to the stub open and serves it.
type Agent struct {
	cfg       AgentConfig
	mux       *yamux.Config
	connected atomic.Bool
}

// NewAgent validates cfg.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	var errs []error
	u, err := url.Parse(cfg.StubURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		errs = append(errs, fmt.Errorf("stub URL %q must be an https:// URL with a host", cfg.StubURL))
	}
	if !ValidClusterID(cfg.Cluster) {
		errs = append(errs, fmt.Errorf("cluster %q must be a DNS label (lower-case letters, digits, '-')", cfg.Cluster))
	}
	if !agentIDPattern.MatchString(cfg.AgentID) {
		errs = append(errs, fmt.Errorf("agent ID %q must be letters, digits, '-', '_' or '.'", cfg.AgentID))
	}
	if cfg.Fingerprint == "" {
		errs = append(errs, errors.New("fingerprint is required"))
	}
	if cfg.Secret == nil || cfg.Handler == nil {
		errs = append(errs, errors.New("Secret and Handler are required"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Proxy == nil {
		cfg.Proxy = http.ProxyFromEnvironment
	}
	b := &cfg.Backoff
	if b.Base <= 0 {
		b.Base = DefaultBackoff.Base
	}
	if b.Max <= 0 {
		b.Max = DefaultBackoff.Max
	}
	if b.StableAfter <= 0 {
		b.StableAfter = DefaultBackoff.StableAfter
	}
	cfg.StubURL = strings.TrimRight(cfg.StubURL, "/")
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	mc := MuxConfig(cfg.KeepAliveInterval, cfg.KeepAliveTimeout, cfg.Logger)
	if err := yamux.VerifyConfig(mc); err != nil {
		return nil, fmt.Errorf("tunnel: %w", err)
	}
	return &Agent{cfg: cfg, mux: mc}, nil
}

// Connected reports whether a session to the stub is up.
func (a *Agent) Connected() bool { return a.connected.Load() }

// Run connects, serves, and reconnects with backoff until ctx ends. It
// returns nil when ctx is cancelled.
func (a *Agent) Run(ctx context.Context) error {
	log := a.cfg.Logger
	retries := 0
	for {
		start := time.Now()
		err := a.runOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) >= a.cfg.Backoff.StableAfter {
			retries = 0
		}
		wait := a.cfg.Backoff.Wait(retries)
		retries++
		var busy *busyError
		if errors.As(err, &busy) {
			wait = max(wait, busy.after) // the stub said when
			log.Info("stub is busy; coming back when it asked", zap.Duration("retry_in", wait))
		} else if errors.Is(err, ErrRefused) {
			log.Error("stub refused this agent", zap.Error(err), zap.Duration("retry_in", wait))
		} else {
			log.Warn("tunnel down", zap.Error(err), zap.Duration("retry_in", wait))
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil
		}
	}
}

func (a *Agent) runOnce(ctx context.Context) error {
	sess, err := a.Dial(ctx)
	if err != nil {
		return err
	}
	log := a.cfg.Logger
	log.Info("tunnel up", zap.String("stub", a.cfg.StubURL))
	a.connected.Store(true)
	defer a.connected.Store(false)
	srv := &http.Server{
		Handler:           a.cfg.Handler,
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          zap.NewStdLog(log.Named("http")),
	}
	ln := newListener(sess)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err = <-served: // the session died under us
		srv.Close()
		sess.Close()
		return fmt.Errorf("session ended: %w", err)
	case <-ctx.Done():
	}
	a.drain(sess, srv, served)
	return nil
}

// drain stops the session gracefully: no new streams (GoAway, which makes
// the stub pick another agent), then requests in flight (Shutdown) and
// upgraded streams (which Shutdown does not track) get up to DrainTimeout
// to finish before the session closes.
func (a *Agent) drain(sess *yamux.Session, srv *http.Server, served <-chan error) {
	log := a.cfg.Logger
	start := time.Now()
	_ = sess.GoAway()
	dctx, cancel := context.WithTimeout(context.Background(), a.cfg.DrainTimeout)
	defer cancel()
	_ = srv.Shutdown(dctx) // closes the listener and idle connections, waits for active requests
	for sess.NumStreams() > 0 && dctx.Err() == nil {
		select {
		case <-sess.CloseChan():
		case <-dctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	left := sess.NumStreams()
	srv.Close()
	sess.Close()
	<-served
	log.Info("tunnel drained", zap.Duration("took", time.Since(start)), zap.Int("streams_cut", left))
}

// Dial performs the handshake and returns the agent's end of the session.
func (a *Agent) Dial(ctx context.Context) (*yamux.Session, error) {
	secret, err := a.cfg.Secret()
	if err != nil {
		return nil, fmt.Errorf("read join secret: %w", err)
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if a.cfg.TLS != nil {
		tlsCfg = a.cfg.TLS.Clone()
	}
	tlsCfg.NextProtos = []string{"http/1.1"} // upgrades need HTTP/1.1
	tr := &http.Transport{
		Proxy:                 a.cfg.Proxy,
		DialContext:           (&net.Dialer{Timeout: DefaultHandshakeTimeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tlsCfg,
		TLSNextProto:          map[string]func(string, *tls.Conn) http.RoundTripper{},
		TLSHandshakeTimeout:   DefaultHandshakeTimeout,
		ResponseHeaderTimeout: DefaultHandshakeTimeout,
		DisableKeepAlives:     true,
	}
	defer tr.CloseIdleConnections()
	dctx, cancel := context.WithTimeout(ctx, 2*DefaultHandshakeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(dctx, http.MethodGet, a.cfg.StubURL+ConnectPath, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", UpgradeProtocol)
	req.Header.Set("Authorization", "Bearer "+secret)
	req.Header.Set(HeaderCluster, a.cfg.Cluster)
	req.Header.Set(HeaderAgent, a.cfg.AgentID)
	req.Header.Set(HeaderFingerprint, a.cfg.Fingerprint)
	if a.cfg.Version != "" {
		req.Header.Set(HeaderVersion, a.cfg.Version)
	}
	if a.cfg.VerifiesCallers {
		req.Header.Set(HeaderVerifiesCallers, "jwt")
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return nil, fmt.Errorf("dial stub %s: %w", a.cfg.StubURL, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body.Close()
		if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && resp.StatusCode == http.StatusServiceUnavailable && secs > 0 {
			return nil, &busyError{after: time.Duration(min(secs, 600)) * time.Second, msg: strings.TrimSpace(string(msg))}
		}
		return nil, fmt.Errorf("%w: %s: %s", ErrRefused, resp.Status, strings.TrimSpace(string(msg)))
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return nil, errors.New("stub answered 101 without a usable connection")
	}
	sess, err := yamux.Server(&coalescingWriter{ReadWriteCloser: rwc}, a.mux)
	if err != nil {
		rwc.Close()
		return nil, err
	}
	return sess, nil
}

// busyError is a 503 with Retry-After: the stub asks to come back later.
type busyError struct {
	after time.Duration
	msg   string
}

func (e *busyError) Error() string {
	return fmt.Sprintf("stub is busy, retry after %v: %s", e.after, e.msg)
}
func (e *busyError) Unwrap() error { return ErrBusy }

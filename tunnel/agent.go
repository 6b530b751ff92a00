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
	"slices"
	"strconv"
	"strings"
	"sync"
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
	// Attributes are sent on every handshake and listed by the stub in
	// AgentInfo.Attributes. The tunnel gives them no meaning (package proxy
	// does); NewAgent refuses more than MaxAttributes, keys that are not DNS
	// labels and values over MaxAttributeValueLen bytes or not printable.
	Attributes map[string]string
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

	// dialStub, when set, makes the connection to the stub instead of the
	// agent's own dial (Proxy, then TCP, then TLS with the TLS config): the
	// handshake and the session run over whatever conn it returns, taken
	// to be past TLS already if there is any. StubURL still names the
	// host in the request. It is unexported: it exists so this package's
	// tests can run the tunnel over net.Pipe and plain TCP as well as TLS.
	dialStub func(ctx context.Context, network, addr string) (net.Conn, error)
}

// DefaultDrainTimeout is AgentConfig.DrainTimeout's default.
const DefaultDrainTimeout = 25 * time.Second

// Backoff is full-jitter exponential backoff: the n-th wait is uniform in
// [0, min(Max, Base·2ⁿ)). It comes before every redial, the first one after
// a lost session included; a session that lasted StableAfter resets n, so
// after a stub restart each agent of a fleet waits a random time in
// [0, Base) and they do not reconnect in lock-step.
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

// Agent keeps sessions to the stub open and serves them: one session to a
// single stub, or one to every live replica when the stub runs as several
// replicas behind a load balancer (the handshake names the replica reached
// and the live ones; the agent dials again until it holds each), so that
// losing a replica costs only the streams it carried.
type Agent struct {
	cfg  AgentConfig
	mux  *yamux.Config
	live liveness

	mu   sync.Mutex
	held map[string]*session // by replica ID ("" for a single stub)
	want []string            // live replicas as last advertised
	wake chan struct{}       // a session ended or want changed
	// stableEnd: a session that had lasted Backoff.StableAfter ended, so
	// the next reconnect starts from the shortest backoff again.
	stableEnd   bool
	wantChanged bool
	// lost: a session ended under us (not by ctx), so the next dial waits
	// its backoff first.
	lost bool
}

// maxMisdirectedWait caps the wait after reaching a replica already held.
const maxMisdirectedWait = 5 * time.Second

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
	if err := checkAttributes(cfg.Attributes); err != nil {
		errs = append(errs, err)
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
	cfg.Attributes = cloneAttributes(cfg.Attributes) // the caller may change its map later
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	mc, lv := muxConfig(cfg.KeepAliveInterval, cfg.KeepAliveTimeout, cfg.Logger)
	if err := yamux.VerifyConfig(mc); err != nil {
		return nil, fmt.Errorf("tunnel: %w", err)
	}
	return &Agent{cfg: cfg, mux: mc, live: lv, held: map[string]*session{}, wake: make(chan struct{}, 1)}, nil
}

// Connected reports whether a session to the stub is up.
func (a *Agent) Connected() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.held) > 0
}

// Replicas lists the stub replicas this agent holds sessions to (empty
// names a single stub), sorted.
func (a *Agent) Replicas() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	ids := make([]string, 0, len(a.held))
	for id := range a.held {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func (a *Agent) signal() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// missing reports whether a dial is due: no session at all, or a live
// replica without one.
func (a *Agent) missing() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.held) == 0 {
		return true
	}
	for _, id := range a.want {
		if a.held[id] == nil {
			return true
		}
	}
	return false
}

// setWant records the live replicas a stub advertised.
func (a *Agent) setWant(ids []string) {
	if len(ids) == 0 {
		return
	}
	a.mu.Lock()
	changed := !slices.Equal(a.want, ids)
	a.want = ids
	a.wantChanged = a.wantChanged || changed
	a.mu.Unlock()
	if changed {
		a.cfg.Logger.Info("stub replicas", zap.Strings("live", ids))
		a.signal()
	}
}

func (a *Agent) heldIDs() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var ids []string
	for id := range a.held {
		if id != "" {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// Run connects, serves, and reconnects with backoff until ctx ends; with
// stub replicas it keeps a session to each. It returns nil when ctx is
// cancelled, after every session drained.
func (a *Agent) Run(ctx context.Context) error {
	log := a.cfg.Logger
	var sessions sync.WaitGroup
	defer sessions.Wait()
	retries, misses := 0, 0
	for {
		for !a.missing() {
			select {
			case <-ctx.Done():
				return nil
			case <-a.wake:
			}
		}
		a.mu.Lock()
		if a.stableEnd {
			retries, a.stableEnd = 0, false
		}
		if a.wantChanged {
			misses, a.wantChanged = 0, false // news of a replica: look for it at once
		}
		lost := a.lost
		a.lost = false
		a.mu.Unlock()
		if lost {
			// Every agent of a fleet sees its session end at the same
			// moment when the stub restarts: redialing at once would be
			// the herd the jitter is there to prevent.
			wait := a.cfg.Backoff.Wait(retries)
			retries++
			log.Info("reconnecting after a lost session", zap.Duration("retry_in", wait))
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil
			}
		}
		sess, hs, err := a.dial(ctx, a.heldIDs())
		if ctx.Err() != nil {
			if sess != nil {
				sess.Close()
			}
			return nil
		}
		a.setWant(hs.replicas)
		var wait time.Duration
		var mis *misdirectedError
		var busy *busyError
		switch {
		case err == nil:
			misses = 0
			a.mu.Lock()
			dup := a.held[hs.replica] != nil
			if !dup {
				a.held[hs.replica] = sess
			}
			a.mu.Unlock()
			if dup { // cannot happen with a well-behaved stub; never replace a live session
				sess.Close()
				break
			}
			log.Info("tunnel up", zap.String("stub", a.cfg.StubURL), zap.String("replica", hs.replica))
			sessions.Add(1)
			go func() {
				defer sessions.Done()
				start := time.Now()
				err := a.serve(ctx, sess)
				a.mu.Lock()
				delete(a.held, hs.replica)
				if time.Since(start) >= a.cfg.Backoff.StableAfter {
					a.stableEnd = true
				}
				if err != nil && ctx.Err() == nil {
					a.lost = true
				}
				a.mu.Unlock()
				if err != nil && ctx.Err() == nil {
					log.Warn("tunnel down", zap.String("replica", hs.replica), zap.Error(err))
				}
				a.signal()
			}()
			// Another replica may still be missing: look for it soon, but
			// not all agents at once.
			wait = rand.N(a.cfg.Backoff.Base)
		case errors.As(err, &mis):
			// The load balancer sent us to a replica we hold already. Such
			// refusals are cheap and finding the missing replica may take
			// a few tries, so the wait stays short (a missing replica that
			// is dead leaves the live list within its Lease duration).
			wait = min(a.cfg.Backoff.Wait(misses), maxMisdirectedWait)
			misses++
			log.Debug("reached a replica already held; trying again for the others", zap.String("replica", mis.replica), zap.Duration("retry_in", wait))
		case errors.As(err, &busy):
			wait = max(a.cfg.Backoff.Wait(retries), busy.after) // the stub said when
			retries++
			log.Info("stub is busy; coming back when it asked", zap.Duration("retry_in", wait))
		case errors.Is(err, ErrRefused):
			wait = a.cfg.Backoff.Wait(retries)
			retries++
			log.Error("stub refused this agent", zap.Error(err), zap.Duration("retry_in", wait))
		default:
			wait = a.cfg.Backoff.Wait(retries)
			retries++
			log.Warn("cannot reach the stub", zap.Error(err), zap.Duration("retry_in", wait))
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

// serve serves the stub's streams on sess until the session dies (an
// error) or ctx ends (a graceful drain, nil).
func (a *Agent) serve(ctx context.Context, sess *session) error {
	log := a.cfg.Logger
	srv := &http.Server{
		Handler:           a.learnReplicas(a.cfg.Handler),
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          zap.NewStdLog(log.Named("http")),
	}
	ln := newListener(sess.Session)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served: // the session died under us
		srv.Close()
		sess.Close()
		return fmt.Errorf("session ended: %w", err)
	case <-ctx.Done():
	}
	a.drain(sess, srv, served)
	return nil
}

// learnReplicas reads the live replica list the stub sends on its probes
// (the stub strips Keyhole-* headers from callers, so only the stub can set
// it), so a replica added later is found without a reconnect.
func (a *Agent) learnReplicas(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if v := r.Header.Get(HeaderReplicas); v != "" {
			a.setWant(splitReplicas(v))
		}
		next.ServeHTTP(w, r)
	})
}

// drain stops the session gracefully: no new streams (GoAway, which makes
// the stub pick another agent), then requests in flight (Shutdown) and
// upgraded streams (which Shutdown does not track) get up to DrainTimeout
// to finish before the session closes.
func (a *Agent) drain(sess *session, srv *http.Server, served <-chan error) {
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
	sess, _, err := a.dial(ctx, nil)
	if err != nil {
		return nil, err
	}
	return sess.Session, nil
}

// handshake is what the stub said about its replicas.
type handshake struct {
	replica  string   // the replica reached ("" for a single stub)
	replicas []string // the live replicas
}

// dial is Dial telling the stub which replicas' sessions it holds already;
// reaching one of those is a *misdirectedError.
func (a *Agent) dial(ctx context.Context, held []string) (*session, handshake, error) {
	var hs handshake
	secret, err := a.cfg.Secret()
	if err != nil {
		return nil, hs, fmt.Errorf("read join secret: %w", err)
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if a.cfg.TLS != nil {
		tlsCfg = a.cfg.TLS.Clone()
	}
	tlsCfg.NextProtos = []string{"http/1.1"} // upgrades need HTTP/1.1
	tr := &http.Transport{
		Proxy:                 a.cfg.Proxy,
		DialContext:           (&net.Dialer{Timeout: DefaultHandshakeTimeout, KeepAlive: 30 * time.Second, Control: setSockLowat}).DialContext,
		TLSClientConfig:       tlsCfg,
		TLSNextProto:          map[string]func(string, *tls.Conn) http.RoundTripper{},
		TLSHandshakeTimeout:   DefaultHandshakeTimeout,
		ResponseHeaderTimeout: DefaultHandshakeTimeout,
		DisableKeepAlives:     true,
	}
	if a.cfg.dialStub != nil {
		tr.Proxy, tr.DialTLSContext = nil, a.cfg.dialStub // used for https URLs, in place of DialContext and TLS
	}
	defer tr.CloseIdleConnections()
	dctx, cancel := context.WithTimeout(ctx, 2*DefaultHandshakeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(dctx, http.MethodGet, a.cfg.StubURL+ConnectPath, nil)
	if err != nil {
		return nil, hs, err
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
	if len(a.cfg.Attributes) > 0 {
		req.Header.Set(HeaderAttributes, encodeAttributes(a.cfg.Attributes))
	}
	if len(held) > 0 {
		req.Header.Set(HeaderHeldReplicas, strings.Join(held, ","))
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return nil, hs, fmt.Errorf("dial stub %s: %w", a.cfg.StubURL, err)
	}
	hs = handshake{replica: resp.Header.Get(HeaderReplica), replicas: splitReplicas(resp.Header.Get(HeaderReplicas))}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body.Close()
		if resp.StatusCode == http.StatusMisdirectedRequest && hs.replica != "" {
			return nil, hs, &misdirectedError{replica: hs.replica}
		}
		if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && resp.StatusCode == http.StatusServiceUnavailable && secs > 0 {
			return nil, hs, &busyError{after: time.Duration(min(secs, 600)) * time.Second, msg: strings.TrimSpace(string(msg))}
		}
		return nil, hs, fmt.Errorf("%w: %s: %s", ErrRefused, resp.Status, strings.TrimSpace(string(msg)))
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return nil, hs, errors.New("stub answered 101 without a usable connection")
	}
	sess, err := startSession(rwc, false, a.mux, a.live, a.cfg.Logger.With(zap.String("replica", hs.replica)))
	if err != nil {
		rwc.Close()
		return nil, hs, err
	}
	return sess, hs, nil
}

// misdirectedError: the stub replica reached is one whose session the agent
// holds already (421).
type misdirectedError struct{ replica string }

func (e *misdirectedError) Error() string {
	return fmt.Sprintf("reached stub replica %q, which this agent is connected to already", e.replica)
}

// splitReplicas parses a comma-separated replica list, dropping anything
// that is not a plausible replica ID.
func splitReplicas(v string) []string {
	var ids []string
	for _, id := range strings.Split(v, ",") {
		if id = strings.TrimSpace(id); id != "" && len(id) <= 63 && agentIDPattern.MatchString(id) {
			ids = append(ids, id)
		}
	}
	if len(ids) > 64 {
		ids = ids[:64]
	}
	slices.Sort(ids)
	return slices.Compact(ids)
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

package tunnel

import (
	"bufio"
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"go.uber.org/zap"
)

// AgentAuthenticator checks an agent's join secret for a cluster. It returns
// nil, ErrUnknownCluster, ErrSecretExpired or ErrBadSecret (possibly
// wrapped). Implementations must compare secrets in constant time.
type AgentAuthenticator interface {
	AuthenticateAgent(cluster, secret string) error
}

// SessionChecker, when the AgentAuthenticator implements it, is asked every
// SessionCheckInterval whether each session may stay: nil, or why not
// (the cluster unregistered, the secret revoked by a rotation that
// disconnects, or expired). Sessions it refuses are closed.
type SessionChecker interface {
	CheckSession(cluster string, secretSHA256 [sha256.Size]byte) error
}

// SessionCheckInterval is how often sessions are checked against the
// registered clusters (see SessionChecker), unless ServerConfig says.
const SessionCheckInterval = 5 * time.Second

// ServerConfig configures the stub side of the tunnel.
type ServerConfig struct {
	Auth              AgentAuthenticator
	Logger            *zap.Logger
	KeepAliveInterval time.Duration // default DefaultKeepAliveInterval
	KeepAliveTimeout  time.Duration // default DefaultKeepAliveTimeout
	// MaxHandshakes bounds agent handshakes in progress at once; beyond it
	// an agent is told to come back later (503 with a Retry-After spread
	// over RetryAfterMin..RetryAfterMax). Default 64.
	MaxHandshakes                int
	RetryAfterMin, RetryAfterMax time.Duration // default 5 s, 30 s

	// MaxHandshakesPerSecond bounds handshakes started per second (a token
	// bucket with a burst of one second's worth); 0 means no bound.
	MaxHandshakesPerSecond int
	// MaxSessions bounds the agent sessions this server holds; beyond it
	// agents are told to come back later. Default DefaultMaxSessions.
	MaxSessions int
	// SessionCheckInterval: default SessionCheckInterval.
	SessionCheckInterval time.Duration
	// Replicas, when the stub runs as several replicas, names this one and
	// the live ones, so that agents hold a session to each. Nil: one stub.
	Replicas ReplicaSet
}

// ReplicaSet is this stub replica and its live peers (see ha.Replicas).
type ReplicaSet interface {
	Self() string
	Live() []string
}

// Server accepts agent sessions (it is the http.Handler for ConnectPath),
// keeps the registry of live sessions by cluster and opens streams to them.
type Server struct {
	auth       AgentAuthenticator
	log        *zap.Logger
	mux        *yamux.Config
	live       liveness
	handshakes chan struct{} // a slot per handshake in progress
	retryMin   time.Duration
	retryMax   time.Duration
	rate       *tokenBucket  // nil: no bound on handshakes per second
	replicas   ReplicaSet    // nil: a single stub
	stop       chan struct{} // closed by Close: ends the session checker
	closeOnce  sync.Once
	refused    atomic.Int64 // handshakes told to come back later

	mu       sync.Mutex
	clusters map[string]*clusterAgents
	connects map[string]int64 // sessions ever opened, by cluster (reconnects show here)
	closed   bool
	wg       sync.WaitGroup // one per session watcher

	// Guarded by mu: session slots taken (see admit) and their bound.
	held, maxSessions int
}

type clusterAgents struct {
	agents []*agentSession
	next   uint64 // round-robin start among equally loaded agents
}

type agentSession struct {
	cluster, id, fingerprint, version, remote string
	attributes                                map[string]string // as the handshake stated them; never changed
	connected                                 time.Time
	sess                                      *session
	streams                                   atomic.Int64
	secretSHA256                              [sha256.Size]byte // of the join secret it presented
}

// AgentInfo describes a connected agent.
type AgentInfo struct {
	Cluster     string `json:"cluster"`
	ID          string `json:"id"`
	Fingerprint string `json:"fingerprint"`
	Version     string `json:"version,omitempty"`
	// Attributes are what the agent stated on its handshake
	// (AgentConfig.Attributes), within the bounds; a copy.
	Attributes map[string]string `json:"attributes,omitempty"`
	Remote     string            `json:"remote"`
	Connected  time.Time         `json:"connected"`
	Streams    int64             `json:"streams"`
}

// NewServer validates cfg and returns a Server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Auth == nil {
		return nil, errors.New("tunnel: ServerConfig.Auth is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	mc, lv := muxConfig(cfg.KeepAliveInterval, cfg.KeepAliveTimeout, cfg.Logger)
	if err := yamux.VerifyConfig(mc); err != nil {
		return nil, fmt.Errorf("tunnel: %w", err)
	}
	if cfg.MaxHandshakes <= 0 {
		cfg.MaxHandshakes = 64
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = DefaultMaxSessions
	}
	if cfg.RetryAfterMin <= 0 {
		cfg.RetryAfterMin = 5 * time.Second
	}
	if cfg.RetryAfterMax < cfg.RetryAfterMin {
		cfg.RetryAfterMax = max(30*time.Second, cfg.RetryAfterMin)
	}
	s := &Server{auth: cfg.Auth, log: cfg.Logger, mux: mc, live: lv, clusters: map[string]*clusterAgents{}, maxSessions: cfg.MaxSessions,
		handshakes: make(chan struct{}, cfg.MaxHandshakes), retryMin: cfg.RetryAfterMin, retryMax: cfg.RetryAfterMax,
		replicas: cfg.Replicas}
	if cfg.MaxHandshakesPerSecond > 0 {
		s.rate = newTokenBucket(cfg.MaxHandshakesPerSecond, cfg.MaxHandshakesPerSecond)
	}
	s.stop = make(chan struct{})
	if sc, ok := cfg.Auth.(SessionChecker); ok {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			t := time.NewTicker(cmp.Or(cfg.SessionCheckInterval, SessionCheckInterval))
			defer t.Stop()
			for {
				select {
				case <-s.stop:
					return
				case <-t.C:
					s.checkSessions(sc)
				}
			}
		}()
	}
	return s, nil
}

var idPattern = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// ValidClusterID reports whether id is a usable cluster ID: a DNS label
// (lower-case letters, digits and '-', at most 63 characters).
func ValidClusterID(id string) bool { return idPattern.MatchString(id) }

var agentIDPattern = regexp.MustCompile(`^[A-Za-z0-9][-A-Za-z0-9_.]{0,252}$`)

func refuse(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Connection", "close")
	w.WriteHeader(code)
	fmt.Fprintln(w, msg)
}

// ServeHTTP performs the agent handshake and, on success, hijacks the
// connection and keeps the session registered until it ends.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Too many agents at once (a stub restart under a large fleet) or a
	// full stub: send this one away for a random while (limits.go).
	adm := s.admit(w)
	if adm == nil {
		return
	}
	defer adm.done()
	cluster := r.Header.Get(HeaderCluster)
	agentID := r.Header.Get(HeaderAgent)
	fp := r.Header.Get(HeaderFingerprint)
	log := s.log.With(zap.String("cluster", cluster), zap.String("agent", agentID), zap.String("remote_addr", r.RemoteAddr))
	if r.Method != http.MethodGet || !strings.EqualFold(r.Header.Get("Upgrade"), UpgradeProtocol) || r.ProtoMajor != 1 || r.ProtoMinor < 1 {
		refuse(w, http.StatusBadRequest, "expected an HTTP/1.1 GET with Upgrade: "+UpgradeProtocol)
		return
	}
	if !ValidClusterID(cluster) || !agentIDPattern.MatchString(agentID) || fp == "" || len(fp) > 128 {
		log.Info("agent refused: malformed handshake")
		refuse(w, http.StatusBadRequest, "handshake needs "+HeaderCluster+" (a DNS label), "+HeaderAgent+" and "+HeaderFingerprint)
		return
	}
	attrs, err := parseAttributes(r.Header.Get(HeaderAttributes))
	if err != nil {
		log.Info("agent refused: attributes out of bounds", zap.Error(err))
		refuse(w, http.StatusBadRequest, err.Error())
		return
	}
	secret, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || secret == "" {
		log.Info("agent refused: no join secret")
		refuse(w, http.StatusUnauthorized, "missing join secret (Authorization: Bearer)")
		return
	}
	if err := s.auth.AuthenticateAgent(cluster, secret); err != nil {
		switch {
		case errors.Is(err, ErrUnknownCluster):
			log.Info("agent refused: unknown cluster")
			refuse(w, http.StatusNotFound, fmt.Sprintf("cluster %q is not registered at this stub", cluster))
		case errors.Is(err, ErrSecretExpired):
			log.Warn("agent refused: join secret expired", zap.Error(err))
			// CLI-neutral on purpose: the command that issues a secret
			// belongs to the stub's CLI (docs/operations.md names it).
			refuse(w, http.StatusUnauthorized, fmt.Sprintf("the join secret of cluster %q expired (%v): issue a new one for this cluster at the stub and give it to the agent", cluster, err))
		case errors.Is(err, ErrBadSecret):
			log.Warn("agent refused: join secret does not match")
			refuse(w, http.StatusUnauthorized, fmt.Sprintf("join secret is not valid for cluster %q", cluster))
		default:
			log.Error("agent authentication failed", zap.Error(err))
			refuse(w, http.StatusServiceUnavailable, "stub cannot check join secrets right now")
		}
		return
	}
	if other := s.fingerprintConflict(cluster, fp); other != "" {
		log.Warn("agent refused: fingerprint differs", zap.String("fingerprint", fp), zap.String("connected_fingerprint", other))
		refuse(w, http.StatusConflict, fmt.Sprintf("cluster %q is served by agents of another cluster (kube-system UID %s, yours %s): was a join secret copied?", cluster, other, fp))
		return
	}

	replicaHeaders := ""
	if s.replicas != nil {
		self, live := s.replicas.Self(), strings.Join(s.replicas.Live(), ",")
		w.Header().Set(HeaderReplica, self)
		w.Header().Set(HeaderReplicas, live)
		if slices.Contains(splitReplicas(r.Header.Get(HeaderHeldReplicas)), self) {
			// Behind a load balancer an agent looking for the replicas it
			// lacks lands on ones it has; never replace a live session.
			refuse(w, http.StatusMisdirectedRequest, fmt.Sprintf("this agent holds a session to replica %q already", self))
			return
		}
		replicaHeaders = HeaderReplica + ": " + self + "\r\n" + HeaderReplicas + ": " + live + "\r\n"
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		log.Error("hijack agent connection", zap.Error(err))
		refuse(w, http.StatusInternalServerError, "cannot upgrade this connection (HTTP/2?)")
		return
	}
	_ = conn.SetDeadline(time.Now().Add(DefaultHandshakeTimeout))
	if _, err := brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + UpgradeProtocol + "\r\n" + replicaHeaders + "\r\n"); err == nil {
		err = brw.Flush()
	}
	if err != nil {
		conn.Close()
		log.Info("agent left during handshake", zap.Error(err))
		return
	}
	_ = conn.SetDeadline(time.Time{})
	setNotSentLowat(conn)
	sess, err := startSession(readerConn{brw.Reader, conn}, true, s.mux, s.live, log)
	if err != nil {
		conn.Close()
		log.Error("start session", zap.Error(err))
		return
	}
	a := &agentSession{cluster: cluster, id: agentID, fingerprint: fp, version: r.Header.Get(HeaderVersion), attributes: attrs,
		remote: r.RemoteAddr, connected: time.Now(), sess: sess, secretSHA256: sha256.Sum256([]byte(secret))}
	replaced, err := s.add(a)
	if err != nil {
		sess.Close()
		log.Warn("agent refused after upgrade", zap.Error(err))
		return
	}
	adm.keep() // the session slot is the watcher's to release
	if replaced != nil {
		log.Info("agent reconnected; closing its previous session")
		replaced.Close()
	}
	log.Info("agent connected", zap.String("fingerprint", fp))
	// The watcher owns the session's registration: it ends with the session
	// (closed by either side or by a failed keepalive) or with Server.Close.
	go func() {
		defer s.wg.Done()
		<-sess.CloseChan()
		s.remove(a)
		s.sessionEnded()
		log.Info("agent disconnected", zap.Duration("connected_for", time.Since(a.connected)))
	}()
}

// readerConn reads through the handshake's buffered reader (which may hold
// bytes the agent sent right after the 101) and writes and closes the conn.
type readerConn struct {
	r *bufio.Reader
	net.Conn
}

func (c readerConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (s *Server) fingerprintConflict(cluster, fp string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ca := s.clusters[cluster]; ca != nil {
		for _, a := range ca.agents {
			if a.fingerprint != fp {
				return a.fingerprint
			}
		}
	}
	return ""
}

// add registers a; if the same agent ID was already connected, the older
// session is unregistered and returned for the caller to close.
func (s *Server) add(a *agentSession) (replaced *session, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("stub is shutting down")
	}
	ca := s.clusters[a.cluster]
	if ca == nil {
		ca = &clusterAgents{}
		s.clusters[a.cluster] = ca
	}
	if s.connects == nil {
		s.connects = map[string]int64{}
	}
	s.connects[a.cluster]++
	for i, old := range ca.agents {
		if old.fingerprint != a.fingerprint {
			return nil, ErrFingerprint // a racing handshake got in first
		}
		if old.id == a.id {
			// The same agent reconnected before its old session was seen
			// dead: the new session wins.
			ca.agents = append(ca.agents[:i:i], ca.agents[i+1:]...)
			replaced = old.sess
			break
		}
	}
	ca.agents = append(ca.agents, a)
	s.wg.Add(1)
	return replaced, nil
}

func (s *Server) remove(a *agentSession) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ca := s.clusters[a.cluster]
	if ca == nil {
		return
	}
	for i, x := range ca.agents {
		if x == a {
			ca.agents = append(ca.agents[:i:i], ca.agents[i+1:]...)
			break
		}
	}
	if len(ca.agents) == 0 {
		delete(s.clusters, a.cluster)
	}
}

// pick returns the live agent of cluster with the fewest open streams,
// starting the scan at a rotating position so equal loads alternate.
func (s *Server) pick(cluster string, skip map[*agentSession]bool) *agentSession {
	s.mu.Lock()
	defer s.mu.Unlock()
	ca := s.clusters[cluster]
	if ca == nil || len(ca.agents) == 0 {
		return nil
	}
	n := len(ca.agents)
	start := int(ca.next % uint64(n))
	ca.next++
	var best *agentSession
	for i := 0; i < n; i++ {
		a := ca.agents[(start+i)%n]
		if skip[a] || a.sess.IsClosed() {
			continue
		}
		if best == nil || a.streams.Load() < best.streams.Load() {
			best = a
		}
	}
	return best
}

// DialCluster opens a stream to an agent of cluster. It tries each live
// agent once if opening fails; it returns ErrNoAgent (wrapped) when none is
// connected.
func (s *Server) DialCluster(ctx context.Context, cluster string) (net.Conn, error) {
	var skip map[*agentSession]bool
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		a := s.pick(cluster, skip)
		if a == nil {
			return nil, fmt.Errorf("cluster %q: %w", cluster, ErrNoAgent)
		}
		st, err := a.sess.OpenStream()
		if err == nil {
			a.streams.Add(1)
			return newStream(st, func() { a.streams.Add(-1) }), nil
		}
		s.log.Debug("open stream failed; trying another agent", zap.String("cluster", cluster), zap.String("agent", a.id), zap.Error(err))
		if skip == nil {
			skip = map[*agentSession]bool{}
		}
		skip[a] = true
	}
}

// Agents lists the connected agents of cluster ("" for all clusters).
func (s *Server) Agents(cluster string) []AgentInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []AgentInfo
	for id, ca := range s.clusters {
		if cluster != "" && id != cluster {
			continue
		}
		for _, a := range ca.agents {
			out = append(out, AgentInfo{Cluster: a.cluster, ID: a.id, Fingerprint: a.fingerprint, Version: a.version, Attributes: cloneAttributes(a.attributes),
				Remote: a.remote, Connected: a.connected, Streams: a.streams.Load()})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Cluster != out[j].Cluster {
			return out[i].Cluster < out[j].Cluster
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Close refuses new sessions, closes every session and waits for their
// watchers.
func (s *Server) Close() error {
	s.closeOnce.Do(func() { close(s.stop) })
	s.mu.Lock()
	s.closed = true
	var all []*session
	for _, ca := range s.clusters {
		for _, a := range ca.agents {
			all = append(all, a.sess)
		}
	}
	s.mu.Unlock()
	for _, sess := range all {
		sess.Close()
	}
	s.wg.Wait()
	return nil
}

func (s *Server) find(cluster, id string) *agentSession {
	if ca := s.clusters[cluster]; ca != nil {
		for _, a := range ca.agents {
			if a.id == id {
				return a
			}
		}
	}
	return nil
}

// DialAgent opens a stream to one agent, for probes.
func (s *Server) DialAgent(cluster, id string) (net.Conn, error) {
	s.mu.Lock()
	a := s.find(cluster, id)
	s.mu.Unlock()
	if a == nil {
		return nil, fmt.Errorf("agent %s of cluster %q: %w", id, cluster, ErrNoAgent)
	}
	st, err := a.sess.OpenStream()
	if err != nil {
		return nil, err
	}
	a.streams.Add(1)
	return newStream(st, func() { a.streams.Add(-1) }), nil
}

// PingAgent returns the session's round trip as measured by its last
// liveness ping (each end pings every KeepAliveInterval), or an error when
// none was answered within KeepAliveInterval+KeepAliveTimeout.
func (s *Server) PingAgent(cluster, id string) (time.Duration, error) {
	s.mu.Lock()
	a := s.find(cluster, id)
	s.mu.Unlock()
	if a == nil {
		return 0, ErrNoAgent
	}
	return a.sess.lastRTT(s.live)
}

// checkSessions closes the sessions whose join secret is no longer good.
func (s *Server) checkSessions(sc SessionChecker) {
	s.mu.Lock()
	var all []*agentSession
	for _, ca := range s.clusters {
		all = append(all, ca.agents...)
	}
	s.mu.Unlock()
	for _, a := range all {
		if err := sc.CheckSession(a.cluster, a.secretSHA256); err != nil {
			s.log.Warn("closing an agent session: its join secret is no longer valid", zap.String("cluster", a.cluster),
				zap.String("agent", a.id), zap.String("reason", err.Error()))
			a.sess.Close()
		}
	}
}

// Connects counts the agent sessions opened since start, by cluster: a
// rising count without new agents means agents reconnect.
func (s *Server) Connects() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.connects)
}

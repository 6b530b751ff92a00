package tunnel

import (
	"errors"
	"time"

	"github.com/hashicorp/yamux"
	"go.uber.org/zap"
)

// Wire constants of the handshake; see docs/protocol.md.
const (
	ConnectPath       = "/tunnel/v1/connect"
	UpgradeProtocol   = "keyhole-tunnel/1"
	HeaderCluster     = "Keyhole-Cluster"
	HeaderAgent       = "Keyhole-Agent"
	HeaderFingerprint = "Keyhole-Fingerprint"
	HeaderVersion     = "Keyhole-Agent-Version"
	// HeaderAttributes carries the agent's attributes (AgentConfig.Attributes),
	// form-encoded: "k=v&k2=v2". The tunnel bounds them and keeps them; it
	// gives them no meaning.
	HeaderAttributes = "Keyhole-Agent-Attributes"
	// Stub replicas: the agent lists the replicas it holds sessions to
	// (HeaderHeldReplicas); the stub names itself (HeaderReplica) and the
	// live replicas (HeaderReplicas) in its answer, and answers 421 when
	// the agent holds a session to it already. Probes carry HeaderReplicas
	// too.
	HeaderHeldReplicas = "Keyhole-Held-Replicas"
	HeaderReplica      = "Keyhole-Replica"
	HeaderReplicas     = "Keyhole-Replicas"
)

// Errors a stub returns to DialCluster callers and an agent sees on refusal.
var (
	// ErrNoAgent means the cluster has no connected agent right now.
	ErrNoAgent = errors.New("no connected agent")
	// ErrUnknownCluster means the cluster ID is not registered.
	ErrUnknownCluster = errors.New("unknown cluster")
	// ErrBadSecret means the join secret does not match the registered one.
	ErrBadSecret = errors.New("join secret does not match")
	// ErrSecretExpired means the join secret was valid but its time is up.
	ErrSecretExpired = errors.New("join secret expired")
	// ErrFingerprint means the agent serves a different cluster than the
	// agents already connected under that cluster ID.
	ErrFingerprint = errors.New("cluster fingerprint differs from connected agents")
	// ErrRefused wraps any refusal of the stub seen by an agent; errors.Is
	// on it tells a refusal from a network failure.
	ErrRefused = errors.New("stub refused the agent")
	// ErrBusy wraps a refusal that asks the agent to come back later.
	ErrBusy = errors.New("stub is busy")
)

// Timing defaults. A session is closed when, for KeepAliveInterval +
// KeepAliveTimeout, nothing arrived on it or a write to its connection made
// no progress (see link.watch): an agent that vanished without closing its
// connection (power loss, a middlebox dropping state) is noticed within
// that, while a busy link is never taken for a dead one.
const (
	DefaultKeepAliveInterval = 5 * time.Second
	DefaultKeepAliveTimeout  = 5 * time.Second
	DefaultHandshakeTimeout  = 10 * time.Second
	// drainTimeout bounds how long a closed stream keeps discarding what its
	// peer still sends, so the peer is never left blocked on a full window.
	drainTimeout = 30 * time.Second
	// frameWriteTimeout bounds how long one frame may wait to be sent
	// (yamux's ConnectionWriteTimeout). A dead link is found by the
	// liveness watch, not by this: on a thin link a frame may queue behind
	// many others that are all moving, and failing it would cut a healthy
	// stream.
	frameWriteTimeout = 5 * time.Minute
)

// muxConfig returns the yamux configuration both ends use and the liveness
// rule their sessions are watched by. The 256 KiB default window is kept on
// purpose: larger windows measured worse (slower stream set-up under bulk
// load, more CPU from re-growing receive buffers). yamux's keepalive is off:
// its ping answer queues behind data, so it took busy sessions for dead ones
// (link.watch replaces it).
func muxConfig(keepAlive, timeout time.Duration, log *zap.Logger) (*yamux.Config, liveness) {
	lv := newLiveness(keepAlive, timeout)
	c := yamux.DefaultConfig()
	c.EnableKeepAlive = false
	c.KeepAliveInterval = lv.interval // unused with keepalive off, but verified
	c.ConnectionWriteTimeout = frameWriteTimeout
	c.AcceptBacklog = 1024
	c.StreamOpenTimeout = 30 * time.Second
	c.StreamCloseTimeout = 5 * time.Minute
	c.LogOutput = nil
	c.Logger = zap.NewStdLog(log.Named("yamux"))
	return c, lv
}

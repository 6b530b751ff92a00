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

// Timing defaults. Keepalive detects an agent that vanished without closing
// its connection (power loss, a middlebox dropping state) within
// KeepAliveInterval + KeepAliveTimeout.
const (
	DefaultKeepAliveInterval = 5 * time.Second
	DefaultKeepAliveTimeout  = 5 * time.Second
	DefaultHandshakeTimeout  = 10 * time.Second
	// drainTimeout bounds how long a closed stream keeps discarding what its
	// peer still sends, so the peer is never left blocked on a full window.
	drainTimeout = 30 * time.Second
)

// MuxConfig returns the yamux configuration both ends use. The 256 KiB
// default window is kept on purpose: larger windows measured worse (slower
// stream set-up under bulk load, more CPU from re-growing receive buffers).
func MuxConfig(keepAlive, timeout time.Duration, log *zap.Logger) *yamux.Config {
	c := yamux.DefaultConfig()
	if keepAlive <= 0 {
		keepAlive = DefaultKeepAliveInterval
	}
	if timeout <= 0 {
		timeout = DefaultKeepAliveTimeout
	}
	c.EnableKeepAlive = true
	c.KeepAliveInterval = keepAlive
	// yamux uses this both for a keepalive ping's answer and for queueing a
	// frame; loopback and WAN links alike answer pings within it.
	c.ConnectionWriteTimeout = timeout
	c.AcceptBacklog = 1024
	c.StreamOpenTimeout = 30 * time.Second
	c.StreamCloseTimeout = 5 * time.Minute
	c.LogOutput = nil
	c.Logger = zap.NewStdLog(log.Named("yamux"))
	return c
}

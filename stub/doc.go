// Package stub is the stub application: the public side of Keyhole, as
// one Server that cmd/stub builds from a config and runs.
//
// New(config, Options) checks what can be checked before serving (the
// certificate material, the state, the authentication config); Run(ctx)
// starts the parts in dependency order (the hub's state mirror and Leases,
// the tunnel server, the audit sink, metrics, the stub hop, the prober,
// the HTTPS listener) and, when ctx ends or serving fails, runs the one
// stop sequence written in server.go's stop, in order: readiness off,
// shutdownDelay, HTTP shutdown with the drain of long-running requests,
// TLS, prober, metrics, agent sessions, issuer discovery, the hub, the
// audit sink. Each step is logged; a start that fails half-way runs the
// same sequence for what it started.
//
// Authentication and policy are re-read from the config file when it
// changes (access.go); listeners, TLS, the hub and the state directory need
// a restart.
//
// State (state.go) is the one owner of the stub's state: registered
// clusters (join secret hashes, labels, caller audiences) and static token
// hashes, with typed operations and two backends, a directory for a single
// stub and the hub's shared Secret for replicas (hub.go), behind one
// versioned codec (codec.go). It implements what the lower packages ask
// for through their interfaces: tunnel.AgentAuthenticator and
// tunnel.SessionChecker, authn.StaticTokens and proxy.ClusterRegistry.
//
// What operators see and change (inventory.go) goes through the same
// backends: ClusterInfos and TokenInfos list the state without a secret, a
// token or a hash of either (a token is named by TokenID, derived from its
// hash), RevokeTokenIDs and ExpireToken change tokens. What only a running
// stub knows, its agents and their health, is read from its metrics by
// ReadLive (live.go).
//
// The command line's own wording ("use --rotate") lives in cmd/stub; this
// package returns sentinel errors (ErrClusterExists, ErrClusterNotFound,
// ErrAudienceInUse, ErrAudienceRetired, ErrInvalidClusterID,
// ErrInvalidLabel, ErrTokenNotFound).
package stub

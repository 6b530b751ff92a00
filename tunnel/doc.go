// Package tunnel is the link between an agent inside a private cluster and the
// public stub.
//
// The agent dials out. It sends one HTTP/1.1 request to the stub,
//
//	GET /tunnel/v1/connect HTTP/1.1
//	Connection: Upgrade
//	Upgrade: keyhole-tunnel/1
//	Authorization: Bearer <join secret>
//	Keyhole-Cluster: prod-eu
//	Keyhole-Agent: agent-7d9c-x2
//	Keyhole-Fingerprint: <UID of the kube-system namespace>
//	Keyhole-Agent-Attributes: <k=v&k2=v2, optional>
//
// and, once the stub has checked the join secret against the hash it stores
// for that cluster, receives "101 Switching Protocols". From then on the
// connection carries a yamux session: the stub is the yamux client and opens
// one stream per proxied HTTP connection; the agent is the yamux server and
// serves every accepted stream as an HTTP/1.1 connection. Because the stub's
// http.Transport keeps those connections alive, a client's keep-alive
// connection rides one long-lived stream instead of paying a stream set-up
// per request. Refusals come back as plain HTTP errors before the upgrade
// (401 bad secret, 404 unknown cluster, 409 fingerprint mismatch), so an agent
// can log exactly why it was turned away.
//
// Going through an HTTP upgrade, rather than a bespoke TLS port, means the
// tunnel shares the stub's HTTPS port and passes through HTTP CONNECT proxies
// and load balancers that allow upgrades.
//
// What the package guarantees:
//   - a session is registered only after its handshake succeeded and is
//     removed the moment it closes (keepalive failure included), so no new
//     stream is ever opened on a session known to be dead;
//   - agents of one cluster ID must report the same fingerprint; a different
//     one is refused while others are connected;
//   - new streams go to the connected agent of the cluster with the fewest
//     open streams;
//   - every stream handed out has CloseWrite (a yamux half-close), and Close
//     on it frees the peer even when the peer is blocked writing to us.
//
// What it does not do: it knows nothing of Kubernetes, of users or of HTTP
// beyond the handshake; package proxy builds on it. An agent's attributes
// (a bounded map of strings on the handshake) are carried and listed, never
// interpreted: their meaning belongs to the package that sets them.
package tunnel

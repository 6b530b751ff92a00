// Package proxy holds the two HTTP hops of Keyhole.
//
// The stub hop (Stub) receives kubectl's request at /clusters/{id}/…,
// authenticates the caller (bearer Authorization, or for a WebSocket the
// base64url.bearer.authorization.k8s.io subprotocol), refuses what a caller
// may not send (Impersonate-* beyond --as), strips Authorization, cookies,
// bearer subprotocols and any Keyhole-* identity header, attaches the
// caller's identity as Keyhole-User / Keyhole-Group, and forwards the request
// with an http.Transport whose connections are tunnel streams to an agent of
// that cluster. Connections are kept alive, so a client's keep-alive
// connection rides one long-lived stream.
//
// Both hops set their headers in ReverseProxy's Rewrite, which runs after
// the hop-by-hop headers are removed, so that a header named in Connection
// cannot remove one they set. The stub writes the final audit record, log
// line and metrics of a request however it ends, including when
// ReverseProxy aborts it with http.ErrAbortHandler (ending.go). The agent
// asks create for pod sessions that would otherwise need only get
// (connect.go).
//
// The agent hop (AgentHop) serves those streams. It turns the identity headers
// into Impersonate-User / Impersonate-Group, lets client-go's transport add
// the agent's own ServiceAccount token (re-read as it rotates), and forwards
// to the API server: over HTTP/2 for plain requests, over HTTP/1.1 for
// upgrades, because SPDY and WebSocket upgrades cannot ride HTTP/2.
//
// Upgrades (exec, attach, port-forward, cp; SPDY and WebSocket) are proxied by
// httputil.ReverseProxy: after the 101 both hops copy bytes in both
// directions and pass half-close on (a tunnel stream's CloseWrite is a yamux
// FIN). Streaming responses (watch, logs -f: no Content-Length) are flushed
// on every write, so they are never buffered, and neither hop sets a timeout that
// would cut a long stream.
//
// With StubConfig.Sessions, the stub hop also takes cookie requests from
// the browser console: a request without a bearer token that carries the
// browser session cookie. It accepts them only from the stub's own origin,
// with the console's custom header, never to the proxy subresources or to
// clusters whose agents verify callers, and authenticates the session's
// current ID token exactly as a bearer token (browser.go). Clusters'
// Access-Control-* and Set-Cookie headers never reach a caller.
//
// Every failure the caller can see is a Kubernetes Status with the right code
// (401, 403, 404, 502, 503), so kubectl prints it readably.
package proxy

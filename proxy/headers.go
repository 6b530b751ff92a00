package proxy

import (
	"encoding/base64"
	"errors"
	"net/http"
	"net/textproto"
	"strings"
	"unicode/utf8"
)

// Headers that carry the caller's identity from the stub to the agent. The
// stub deletes any a caller sends before setting its own; the agent deletes
// them before calling the API server.
const (
	HeaderUser      = "Keyhole-User"
	HeaderGroup     = "Keyhole-Group"
	HeaderRequestID = "Keyhole-Request-Id"
	// HeaderServedBy, on a response from an agent, names the agent that
	// served it; the stub records it and removes it. Its wire name is the
	// one tunnel.HeaderAgent uses on the handshake request (another
	// message), kept so stubs and agents of different versions still agree.
	HeaderServedBy = "Keyhole-Agent"
	// HeaderAsUser and HeaderAsGroup carry kubectl --as / --as-group: the
	// agent honours them only if a SubjectAccessReview says the caller may
	// impersonate them.
	HeaderAsUser  = "Keyhole-As-User"
	HeaderAsGroup = "Keyhole-As-Group"
	// HeaderCallerToken carries the caller's OIDC token, only to clusters
	// whose agents verify callers themselves (AttrVerifiesCallers).
	HeaderCallerToken = "Keyhole-Caller-Token"
	// HeaderProbe marks the stub's health probe (probe.go). Callers can never
	// send it: the stub deletes every Keyhole-* header a caller sends.
	HeaderProbe    = "Keyhole-Probe"
	identityPrefix = "Keyhole-"
)

// AttrVerifiesCallers is the agent attribute (tunnel.AgentConfig.Attributes)
// by which an agent hop says that it verifies callers itself: set by
// AgentHop.Attributes and shown in the cluster list. It decides nothing:
// callers' tokens go only to clusters the operator registered with a caller
// audience (callers.go). Its value is the kind of token verified, today
// only "jwt".
const AttrVerifiesCallers = "verifies-callers"

const verifiesCallersJWT = "jwt"

// hasPrefixHeader reports whether h has a header whose canonical name starts
// with prefix (also canonical).
func hasPrefixHeader(h http.Header, prefix string) bool {
	for k := range h {
		if strings.HasPrefix(textproto.CanonicalMIMEHeaderKey(k), prefix) {
			return true
		}
	}
	return false
}

// deletePrefix removes every header whose canonical name starts with prefix.
func deletePrefix(h http.Header, prefix string) {
	for k := range h {
		if strings.HasPrefix(textproto.CanonicalMIMEHeaderKey(k), prefix) {
			delete(h, k)
		}
	}
}

// BearerProtocolPrefix starts a WebSocket subprotocol that carries a bearer
// token (base64url, no padding): browsers cannot set headers on a
// WebSocket, so kube-apiserver also accepts the token there
// (k8s.io/apiserver/pkg/authentication/request/websocket). Both hops remove
// every such entry from Sec-WebSocket-Protocol before forwarding: a
// caller's credential never reaches an agent or the API server, where it
// would be a second credential beside the agent's own.
const BearerProtocolPrefix = "base64url.bearer.authorization.k8s.io."

const headerWebSocketProtocol = "Sec-Websocket-Protocol" // canonical form of Sec-WebSocket-Protocol

// wsBearer is what a request's Sec-WebSocket-Protocol says about bearer
// tokens.
type wsBearer struct {
	found int      // bearer entries, in any letter case
	token string   // the decoded token of the first one spelled as kube-apiserver reads it
	err   error    // why the entries cannot serve as the caller's credential
	kept  []string // the other subprotocols, in order
}

// parseBearerProtocols reads h's Sec-WebSocket-Protocol (every value, each a
// comma-separated list, as RFC 6455 §11.3.4 allows) without changing h. An
// entry is a bearer entry if it starts with BearerProtocolPrefix in any
// letter case; only the exact spelling is a credential, as for
// kube-apiserver, and only one alongside at least one other subprotocol
// (the one the server echoes back).
func parseBearerProtocols(h http.Header) wsBearer {
	var b wsBearer
	for _, v := range h[headerWebSocketProtocol] {
		for _, p := range strings.Split(v, ",") {
			p = strings.TrimSpace(p)
			if len(p) < len(BearerProtocolPrefix) || !strings.EqualFold(p[:len(BearerProtocolPrefix)], BearerProtocolPrefix) {
				if p != "" {
					b.kept = append(b.kept, p)
				}
				continue
			}
			b.found++
			switch {
			case b.found > 1:
				b.err = errors.New("more than one base64url.bearer.authorization.k8s.io subprotocol")
			case !strings.HasPrefix(p, BearerProtocolPrefix):
				b.err = errors.New("the bearer subprotocol is not spelled base64url.bearer.authorization.k8s.io.<token>")
			default:
				tok, err := base64.RawURLEncoding.DecodeString(p[len(BearerProtocolPrefix):])
				switch {
				case err != nil:
					b.err = errors.New("the bearer subprotocol is not base64url without padding")
				case !utf8.Valid(tok) || len(tok) == 0:
					b.err = errors.New("the bearer subprotocol carries no valid token")
				default:
					b.token = string(tok)
				}
			}
		}
	}
	if b.found > 0 && b.err == nil && len(b.kept) == 0 {
		b.err = errors.New("a bearer subprotocol needs at least one other subprotocol (e.g. v5.channel.k8s.io)")
	}
	return b
}

// dropBearerProtocols removes every bearer entry from h's
// Sec-WebSocket-Protocol, keeping the other subprotocols in order, and
// removes the header when nothing is left. A header without bearer entries
// is left exactly as it was.
func dropBearerProtocols(h http.Header) {
	b := parseBearerProtocols(h)
	switch {
	case b.found == 0:
	case len(b.kept) == 0:
		h.Del(headerWebSocketProtocol)
	default:
		h[headerWebSocketProtocol] = []string{strings.Join(b.kept, ", ")}
	}
}

// isWebSocket reports whether r asks to upgrade to a WebSocket (what
// kube-apiserver's wsstream.IsWebSocketRequest checks).
func isWebSocket(r *http.Request) bool {
	return isUpgrade(r.Header) && strings.EqualFold(strings.TrimSpace(r.Header.Get("Upgrade")), "websocket")
}

// frontProxyPrefix starts the API server's default front-proxy identity
// headers (X-Remote-User, X-Remote-Group, X-Remote-Extra-*; the
// --requestheader-*-headers flags). The API server believes them only from
// a client with its front-proxy certificate, so they matter only where an
// agent authenticates with one; callers may send none of them either way.
const frontProxyPrefix = "X-Remote-"

package proxy

import (
	"net/http"
	"net/textproto"
	"strings"
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
// by which an agent hop that verifies callers itself asks the stub for their
// OIDC tokens: set by AgentHop.Attributes, read by AgentsVerifyCallers. Its
// value is the kind of token verified, today only "jwt".
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

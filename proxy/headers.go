package proxy

import (
	"net/http"
	"net/textproto"
	"strings"
)

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

// Package origin decides whether a browser request comes from the stub's
// own origin, from the headers browsers set and page scripts cannot:
// Sec-Fetch-Site (Fetch Metadata) and Origin. Both the cookie rules of
// proxy and the sign-in pages of web use it.
package origin

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// Of returns the origin (RFC 6454 serialization: scheme://host[:port],
// host lower-cased, the scheme's default port left out) of a public URL
// such as the stub's publicURL, or an error naming what is wrong with it.
func Of(publicURL string) (string, error) {
	u, err := url.Parse(publicURL)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return "", fmt.Errorf("origin of %q: want an http(s) URL with a host", publicURL)
	}
	host, port := strings.ToLower(u.Hostname()), u.Port()
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port == "" || (u.Scheme == "https" && port == "443") || (u.Scheme == "http" && port == "80") {
		return u.Scheme + "://" + host, nil
	}
	return u.Scheme + "://" + host + ":" + port, nil
}

// Header names browsers set on requests (page scripts cannot set them).
const (
	HeaderSecFetchSite = "Sec-Fetch-Site"
	HeaderOrigin       = "Origin"
)

// Request is what a check looks at: the request's Sec-Fetch-Site and
// Origin header values ("" when absent).
type Request struct {
	SecFetchSite string
	Origin       string
	// Repeated says that a header came more than once; no browser sends
	// that, and a request that does is never same-origin.
	Repeated string
}

// FromHeader reads a Request from h.
func FromHeader(h http.Header) Request {
	r := Request{SecFetchSite: h.Get(HeaderSecFetchSite), Origin: h.Get(HeaderOrigin)}
	for _, k := range []string{HeaderSecFetchSite, HeaderOrigin} {
		if len(h.Values(k)) > 1 {
			r.Repeated = k
		}
	}
	return r
}

// SameOrigin reports whether r comes from origin (as Of returns it), and
// if not, says why in words fit for a Status message. It holds when
// Sec-Fetch-Site is "same-origin" or, for browsers that do not send it,
// Origin is present and equal to origin; a present Origin must always be
// equal, but for "null" with Sec-Fetch-Site "same-origin": that is what
// a form POST from a page of origin with Referrer-Policy: no-referrer
// (the stub's own pages) carries (the Fetch standard serializes the
// Origin of a non-CORS request under that policy as "null"; Chromium
// does), while an opaque initiator (a sandboxed frame, a redirect from
// another origin) is never "same-origin". A request with neither header
// is refused: every browser that runs the console sends one of them on
// requests a page makes.
func SameOrigin(r Request, origin string) (bool, string) {
	if r.Repeated != "" {
		return false, r.Repeated + " was sent more than once"
	}
	ownNoReferrerForm := r.Origin == "null" && strings.EqualFold(r.SecFetchSite, "same-origin")
	if r.Origin != "" && !equal(r.Origin, origin) && !ownNoReferrerForm {
		return false, fmt.Sprintf("Origin %q is not %s", r.Origin, origin)
	}
	switch strings.ToLower(r.SecFetchSite) {
	case "same-origin":
		return true, ""
	case "":
		if r.Origin == "" {
			return false, "neither Sec-Fetch-Site nor Origin was sent"
		}
		return true, ""
	default:
		return false, fmt.Sprintf("Sec-Fetch-Site is %q", r.SecFetchSite)
	}
}

// SameOriginUpgrade reports whether a WebSocket upgrade comes from origin:
// its Origin must be present and equal (browsers send no Sec-Fetch-Site on
// WebSocket handshakes, and a missing Origin is refused).
func SameOriginUpgrade(r Request, origin string) (bool, string) {
	if r.Repeated != "" {
		return false, r.Repeated + " was sent more than once"
	}
	if r.Origin == "" {
		return false, "the upgrade carries no Origin"
	}
	if !equal(r.Origin, origin) {
		return false, fmt.Sprintf("Origin %q is not %s", r.Origin, origin)
	}
	return true, ""
}

// equal compares a request's Origin with origin: an Origin header is a
// bare scheme://host[:port]; anything else (a path, user info, "null")
// never matches. Scheme and host compare without case, and a default port
// written out equals one left out.
func equal(got, origin string) bool {
	u, err := url.Parse(got)
	if err != nil || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return false
	}
	o, err := Of(got)
	return err == nil && o == origin
}

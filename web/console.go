package web

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"strings"
	"time"
)

// The console (issue 11; docs/console.md) is a single page built by
// hack/console.sh from web/console/src into web/console/dist, which is
// committed: the stub serves it with no Node at build or run time.

//go:embed console/dist/index.html console/dist/console.js console/dist/console.css console/dist/xterm.js
var consoleFS embed.FS

// Paths of the console: the page (ConsolePath, and any path under it, for
// deep links) and its assets (ConsoleAssetsPath + console.js, console.css,
// and xterm.js, which the terminal view loads when a terminal opens).
const (
	ConsolePath       = "/console"
	ConsoleAssetsPath = "/keyhole/console/"
)

// ConsoleCSP is the Content-Security-Policy of the console's page, with
// ConsoleStyleNonce where each response has its own nonce (see
// ConsoleCSPWith): script from the stub's origin only (no inline script,
// no eval); style sheets from the stub's origin, and style elements only
// with the page's nonce; connections to the stub's origin only.
//
// The nonce is for the style elements xterm.js (the terminal view) makes
// at run time: a new random value per response, in the header and in the
// page's <meta name="keyhole-style-nonce">, which the console gives to
// the style elements it creates (web/console/src/stylenonce.ts). Markup
// injected into the page cannot carry it (it would have to know it first,
// and no injected script runs), so inline style stays refused.
const ConsoleCSP = "default-src 'none'; script-src 'self'; style-src 'self' 'nonce-" + ConsoleStyleNonce + "'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

// ConsoleStyleNonce stands for the response's style nonce in ConsoleCSP.
const ConsoleStyleNonce = "{style-nonce}"

// ConsoleCSPWith is ConsoleCSP with nonce as the style nonce.
func ConsoleCSPWith(nonce string) string {
	return strings.Replace(ConsoleCSP, ConsoleStyleNonce, nonce, 1)
}

// consoleNonceMeta is the page's nonce element as built (empty).
const consoleNonceMeta = `<meta name="keyhole-style-nonce" content="">`

// newStyleNonce is a fresh nonce: 128 random bits, base64url.
func newStyleNonce() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

// consoleAsset is one embedded file of the console.
type consoleAsset struct {
	body        []byte
	contentType string
	etag        string
}

func newConsoleAsset(name, contentType string) consoleAsset {
	b, err := consoleFS.ReadFile("console/dist/" + name)
	if err != nil {
		panic(err) // embedded above: always there
	}
	sum := sha256.Sum256(b)
	return consoleAsset{body: b, contentType: contentType, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
}

var consoleAssets = map[string]consoleAsset{
	"console.js":  newConsoleAsset("console.js", "text/javascript; charset=utf-8"),
	"console.css": newConsoleAsset("console.css", "text/css; charset=utf-8"),
	"xterm.js":    newConsoleAsset("xterm.js", "text/javascript; charset=utf-8"),
}

// consoleIndex is the console's page. Its body's data-kubeconfig
// attribute, empty as built, is set to the kubeconfig download's path when
// the stub offers it (Config.Kubeconfig): the download takes the signed-in
// session's issuer when no issuer is named.
func (s *Sessions) consoleIndex() []byte {
	b, err := consoleFS.ReadFile("console/dist/index.html")
	if err != nil {
		panic(err)
	}
	if s.cfg.Kubeconfig != nil {
		b = bytes.Replace(b, []byte(`<body data-kubeconfig="">`), []byte(`<body data-kubeconfig="`+KubeconfigPath+`">`), 1)
	}
	return b
}

// serveConsole serves the console's page for ConsolePath and every path
// under it. The page is the same for everyone but for its style nonce (a
// new one in each response, see ConsoleCSP) and holds nothing of the
// session: it learns who is signed in from /keyhole/v1/clusters, with the
// console header, and shows "Sign in" when that answers 401.
func (s *Sessions) serveConsole() http.Handler {
	page := s.consoleIndex()
	if !bytes.Contains(page, []byte(consoleNonceMeta)) {
		panic("web: the console's index.html lacks " + consoleNonceMeta) // built from web/console/src: always there
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		nonce := newStyleNonce()
		b := bytes.Replace(page, []byte(consoleNonceMeta), []byte(`<meta name="keyhole-style-nonce" content="`+nonce+`">`), 1)
		pageHeaders(w.Header())
		w.Header().Set("Content-Security-Policy", ConsoleCSPWith(nonce))
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
	})
}

// serveConsoleAssets serves ConsoleAssetsPath + console.js, console.css and
// xterm.js (and nothing else: 404).
func serveConsoleAssets(w http.ResponseWriter, r *http.Request) {
	a, ok := consoleAssets[strings.TrimPrefix(r.URL.Path, ConsoleAssetsPath)]
	if !ok {
		http.NotFound(w, r)
		return
	}
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-cache") // revalidated by ETag: a new stub serves its own bundle at once
	h.Set("Content-Security-Policy", "default-src 'none'")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set("Content-Type", a.contentType)
	h.Set("ETag", a.etag)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
}

package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"net/http"
	"strings"
	"time"
)

// The console (issue 11; docs/console.md) is a single page built by
// hack/console.sh from web/console/src into web/console/dist, which is
// committed: the stub serves it with no Node at build or run time.

//go:embed console/dist/index.html console/dist/console.js console/dist/console.css
var consoleFS embed.FS

// Paths of the console: the page (ConsolePath, and any path under it, for
// deep links) and its assets (ConsoleAssetsPath + console.js, console.css).
const (
	ConsolePath       = "/console"
	ConsoleAssetsPath = "/keyhole/console/"
)

// ConsoleCSP is the Content-Security-Policy of the console's page: script
// and style from the stub's origin only (no inline script or style, no
// eval), and connections to the stub's origin only.
const ConsoleCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

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
// under it. The page is the same for everyone and holds nothing of the
// session: it learns who is signed in from /keyhole/v1/clusters, with the
// console header, and shows "Sign in" when that answers 401.
func (s *Sessions) serveConsole() http.Handler {
	page := s.consoleIndex()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pageHeaders(w.Header())
		w.Header().Set("Content-Security-Policy", ConsoleCSP)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(page))
	})
}

// serveConsoleAssets serves ConsoleAssetsPath + console.js and console.css
// (and nothing else: 404).
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

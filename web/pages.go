package web

import (
	"bytes"
	"embed"
	"errors"
	"html"
	"html/template"
	"io/fs"
	"net/http"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/internal/origin"
	"github.com/keyhole-dev/keyhole/proxy"
)

// The pages have no script at all, inline or not, and one stylesheet.

//go:embed templates/*.html
var templateFS embed.FS

//go:embed assets
var assetFS embed.FS

var pages = template.Must(template.ParseFS(templateFS, "templates/*.html"))

// PageCSP is the Content-Security-Policy of every page.
const PageCSP = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// pageHeaders are the headers of every page and redirect web serves.
func pageHeaders(h http.Header) {
	h.Set("Content-Security-Policy", PageCSP)
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer") // the callback's URL holds the code
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Strict-Transport-Security", "max-age=31536000")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
}

// simplePage is a page with a title, a text, and perhaps a next page to
// move on to at once (To).
type simplePage struct {
	Title, Text, To string
	Refresh         template.HTML // set by render from To
}

// homePage is the landing page: signed out (Logins, Message) or signed in.
type homePage struct {
	Title   string
	Refresh template.HTML
	Message string
	Logins  []Login
	Then    string // signed out: the page of this origin the sign-in returns to ("" for /)

	User       *authn.User
	Groups     []string // the first maxGroupsShown
	MoreGroups int
	IssuerName string
	IssuerURL  string
	Ends       time.Time
	Clusters   []proxy.ClusterStatus
	Kubeconfig string // the download's URL, or ""
}

// maxGroupsShown: the landing page lists this many groups, then "and N
// more".
const maxGroupsShown = 20

func (s *Sessions) render(w http.ResponseWriter, code int, name string, data any) {
	if p, ok := data.(simplePage); ok && p.To != "" {
		p.Refresh = metaRefresh(p.To)
		data = p
	}
	var buf bytes.Buffer
	err := pages.ExecuteTemplate(&buf, name, data)
	if err != nil {
		s.log.Error("page not rendered", zap.String("template", name), zap.Error(err))
		code = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString("internal error\n")
	}
	pageHeaders(w.Header())
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

func (s *Sessions) problem(w http.ResponseWriter, code int, title, text string) {
	s.render(w, code, "problem.html", simplePage{Title: title, Text: text})
}

// metaRefresh moves the browser on to to (a path of this origin, or the
// IdP's end-session URL) at once.
func metaRefresh(to string) template.HTML {
	return template.HTML(`<meta http-equiv="refresh" content="0;url=` + html.EscapeString(to) + `">`)
}

// pageMaySeeSession: a page shows the session only to a navigation the
// user made (Sec-Fetch-Site none), one from this origin, or a browser
// that sends no Fetch Metadata; another site that links here sees the
// signed-out page, which says nothing of clusters.
func pageMaySeeSession(r *http.Request) bool {
	switch strings.ToLower(r.Header.Get(origin.HeaderSecFetchSite)) {
	case "", "none", "same-origin":
		return true
	}
	return false
}

// signedIn finds r's session and its user, for a page: nil when signed
// out, with a message when the session just ended.
func (s *Sessions) signedIn(w http.ResponseWriter, r *http.Request) (u *authn.User, token string, h *handle, ends time.Time, msg string) {
	if !pageMaySeeSession(r) {
		return nil, "", nil, time.Time{}, ""
	}
	u, token, bs, found, err := s.sessionOf(w, r)
	switch {
	case !found:
		return nil, "", nil, time.Time{}, ""
	case errors.Is(err, errSessionEnded):
		return nil, "", nil, time.Time{}, "Your session has ended; sign in again."
	case err != nil:
		return nil, "", nil, time.Time{}, "Your sign-in is no longer accepted: " + err.Error()
	}
	return u, token, bs.Ref.(*handle), bs.Expires, ""
}

// errSessionEnded: the session cookie no longer opens, or the session no
// longer stands (signed out, expired, refresh failed).
var errSessionEnded = errors.New("the browser session has ended")

// sessionOf finds r's session (found: r carries the cookie), its current
// ID token and the user it authenticates as; err is errSessionEnded, or
// why the token no longer authenticates.
func (s *Sessions) sessionOf(w http.ResponseWriter, r *http.Request) (u *authn.User, token string, bs *proxy.BrowserSession, found bool, err error) {
	bs, found, st := s.Open(w, r)
	if !found {
		return nil, "", nil, false, nil
	}
	if st != nil {
		return nil, "", nil, true, errSessionEnded
	}
	token, st = s.Current(r.Context(), w, bs)
	if st != nil {
		return nil, "", nil, true, errSessionEnded
	}
	u, err = s.cfg.Auth.Authenticate(r.Context(), token)
	if err != nil {
		return nil, "", nil, true, err
	}
	return u, token, bs, true, nil
}

// serveHome serves the landing page, GET /.
func (s *Sessions) serveHome(w http.ResponseWriter, r *http.Request) {
	logins := s.cfg.Logins.BrowserLogins()
	user, token, h, ends, msg := s.signedIn(w, r)
	// ?then=/console/…: the console's "Sign in" asks to come back to the
	// page the user was on (a deep link survives sign-in; it only
	// navigates, and only to a path of this origin).
	then := safeThen(r.URL.Query().Get("then"))
	if then == "/" {
		then = ""
	}
	if user == nil {
		if len(logins) == 0 {
			s.problem(w, http.StatusNotFound, "Not found", "This stub has no browser sign-in; use kubectl with a kubeconfig from `stub kubeconfig`.")
			return
		}
		s.render(w, http.StatusOK, "home.html", homePage{Title: "Sign in", Message: msg, Logins: logins, Then: then})
		return
	}
	if then != "" {
		pageHeaders(w.Header())
		http.Redirect(w, r, then, http.StatusSeeOther)
		return
	}
	p := homePage{Title: user.Name, User: user, Ends: ends.UTC()}
	p.Groups = user.Groups
	if n := len(p.Groups); n > maxGroupsShown {
		p.Groups, p.MoreGroups = p.Groups[:maxGroupsShown], n-maxGroupsShown
	}
	if l, ok := s.login(h.c.Iss); ok {
		p.IssuerName, p.IssuerURL = l.Name, l.IssuerURL
		if s.cfg.Kubeconfig != nil {
			p.Kubeconfig = KubeconfigPath + "?issuer=" + l.ID
		}
	}
	if s.cfg.Clusters != nil {
		p.Clusters = slices.Clone(s.cfg.Clusters(user, token))
		slices.SortFunc(p.Clusters, func(a, b proxy.ClusterStatus) int { return strings.Compare(a.ID, b.ID) })
	}
	s.render(w, http.StatusOK, "home.html", p)
}

// serveKubeconfig serves GET KubeconfigPath?issuer=ID: the kubeconfig
// `stub kubeconfig --oidc --issuer URL` prints, for a signed-in user.
func (s *Sessions) serveKubeconfig(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Kubeconfig == nil {
		s.problem(w, http.StatusNotFound, "Not found", "This stub offers no kubeconfig download.")
		return
	}
	if !pageMaySeeSession(r) {
		s.problem(w, http.StatusForbidden, "Refused", "The kubeconfig is downloaded from the stub's own page.")
		return
	}
	user, token, h, _, _ := s.signedIn(w, r)
	if user == nil {
		s.problem(w, http.StatusUnauthorized, "Not signed in", "Sign in first.")
		return
	}
	id := r.URL.Query().Get("issuer")
	if id == "" {
		id = h.c.Iss
	}
	l, ok := s.login(id)
	if !ok {
		s.problem(w, http.StatusNotFound, "Unknown issuer", "This stub has no browser sign-in with that issuer.")
		return
	}
	b, err := s.cfg.Kubeconfig(user, token, l.IssuerURL)
	if err != nil {
		s.log.Error("kubeconfig not made", zap.Error(err))
		s.problem(w, http.StatusInternalServerError, "No kubeconfig", "The kubeconfig could not be made: "+err.Error())
		return
	}
	pageHeaders(w.Header())
	w.Header().Set("Content-Type", "application/yaml")
	w.Header().Set("Content-Disposition", `attachment; filename="keyhole.kubeconfig"`)
	_, _ = w.Write(b)
}

// assets serves the stylesheet (and whatever else assets/ holds).
func (s *Sessions) assets() http.Handler {
	sub, err := fs.Sub(assetFS, "assets")
	if err != nil {
		panic(err) // the embedded tree always has it
	}
	files := http.StripPrefix(AssetsPath, http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("Content-Security-Policy", "default-src 'none'")
		w.Header().Set("Cross-Origin-Resource-Policy", "same-origin")
		if strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r) // no directory listings
			return
		}
		files.ServeHTTP(w, r)
	})
}

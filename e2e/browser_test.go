package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"

	"github.com/keyhole-dev/keyhole/audit"
	"github.com/keyhole-dev/keyhole/internal/browsertest"
	"github.com/keyhole-dev/keyhole/internal/idptest"
	"github.com/keyhole-dev/keyhole/internal/kubetest"
	"github.com/keyhole-dev/keyhole/internal/testbed"
	"github.com/keyhole-dev/keyhole/proxy"
	"github.com/keyhole-dev/keyhole/web"
)

// Names the browser maps to 127.0.0.1: the stub's public name, a sibling
// subdomain of it (same site: SameSite does not separate them) and another
// site.
const (
	browserStubHost  = "keyhole.example.test"
	browserSibling   = "evil.example.test"
	browserOtherSite = "attacker.test"
)

// browserActionTimeout bounds one action in a tab.
const browserActionTimeout = 30 * time.Second

// TestBrowserSignIn: a person signs in to the real stub with real Chromium
// through real Dex's pages (a confidential client with PKCE, configured by
// editing the running stub's config, as operators do); the landing page
// shows who they are and the cluster, and offers the kubeconfig `stub
// kubeconfig --oidc` prints; the session works for the stub's own origin
// with the custom header only; no token is readable by page scripts; a
// watch opened from the page ends within seconds of signing out in another
// tab, and the old cookie is refused afterwards. Then, signed in again,
// pages of another site and of a sibling subdomain try every way a page
// has to use the session (fetch no-cors and cors with credentials, a
// preflighted fetch, an image, a WebSocket exec, a self-submitting form):
// nothing reaches the agent, and whatever reaches the stub is an audited
// refusal.
func TestBrowserSignIn(t *testing.T) {
	const (
		cluster   = "kh-browser-e2e" // looked for in the signed-out page
		email     = "alice@example.com"
		password  = "alice-pw-1"
		webClient = "keyhole-web"
	)
	start := time.Now()
	c := kubetest.Start(t)
	g := startGatewayWith(t, c, gatewayOptions{publicHost: browserStubHost,
		extra: "streams: {recheckInterval: 1s}\nbrowser: {sessionMaxAge: 2h, sessionIdleTimeout: 1h}\n"})
	home := g.publicURL + "/"
	webSecret := "web-secret-" + fmt.Sprint(time.Now().UnixNano())
	dex := idptest.Start(t, idptest.Options{
		Users:      []idptest.User{{Email: email, Password: password, Groups: []string{"dev"}}},
		WebClients: []idptest.Client{{ID: webClient, Secret: webSecret, RedirectURIs: []string{g.publicURL + web.CallbackPath}}},
	})
	secret, tokenFile := g.install(cluster)
	agent := g.startAgent(agentOpts{cluster: cluster, id: "b1", secretFile: secret, apiURL: c.URL, tokenFile: tokenFile, c: c})
	_, adminTok := g.user("admin", "cluster-admin")
	g.waitAgents(adminTok, cluster, "b1")
	c.Apply(t, `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: browser-dev-readers}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "oidc:dev"}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: browser-e2e, namespace: default}
data: {hello: browser}
`+readerRole)

	// The issuer, its browser login and the policy, added to the running
	// stub.
	loginPath := configureBrowserLogin(t, g, dex, webClient, webSecret)

	atk := startAttacker(t, g.publicURL, cluster)
	dexAddr := strings.TrimPrefix(strings.TrimSuffix(dex.Issuer, "/dex"), "https://")
	b := browsertest.Start(t, browsertest.Options{
		HostResolverRules: fmt.Sprintf("MAP %s 127.0.0.1, MAP %s 127.0.0.1, MAP %s 127.0.0.1", browserStubHost, browserSibling, browserOtherSite),
		Trust: []*x509.Certificate{
			browsertest.LeafCertificate(t, strings.TrimPrefix(g.url, "https://")),
			browsertest.LeafCertificate(t, dexAddr),
			atk.cert,
		},
	})
	tab := b.Ctx
	t.Logf("set-up (cluster, stub, agent, Dex, Chromium) in %v", time.Since(start).Round(time.Millisecond))

	// 1. Signed out: a sign-in button, and nothing about clusters.
	resp, err := runIn(tab, chromedp.NavigateResponse(home))
	if err != nil || resp.Status != 200 {
		t.Fatalf("GET %s: %v, %v\n%s", home, resp, err, g.stub.tail(20))
	}
	signedOut := mustEval[string](t, tab, "document.documentElement.outerHTML")
	if !strings.Contains(signedOut, `href="`+loginPath+`"`) || !strings.Contains(signedOut, "Sign in with Dex") {
		t.Fatalf("the signed-out signedOut has no sign-in button for Dex:\n%s", signedOut)
	}
	if strings.Contains(signedOut, cluster) {
		t.Fatalf("the signed-out signedOut names cluster %q:\n%s", cluster, signedOut)
	}
	t.Logf("signed out: GET / %d, Content-Security-Policy %q", resp.Status, headerOf(resp.Headers, "Content-Security-Policy"))

	// 2. Sign in through Dex's own pages.
	signedIn := time.Now()
	signIn(t, tab, g, email, password)
	t.Logf("signed in through Dex's pages in %v", time.Since(signedIn).Round(time.Millisecond))
	if loc, _ := runIn(tab, chromedp.Location()); loc != home {
		t.Fatalf("after sign-in the browser is at %q, want %q", loc, home)
	}
	if who := mustEval[string](t, tab, `document.querySelector("section.who h1").textContent`); who != email {
		t.Fatalf("the landing page shows %q, want %q", who, email)
	}
	// The cluster's row says ready (the prober's verdict may lag the
	// agent's connection: reload, once a second, until it does).
	var row []string
	reloads, lastLoad := 0, time.Now()
	pollTab(t, tab, 60*time.Second, "the landing page to show the cluster ready", func() (bool, error) {
		var err error
		row, err = eval[[]string](tab, fmt.Sprintf(`(() => { for (const tr of document.querySelectorAll("section.clusters tbody tr")) {
			const cells = [...tr.cells].map(c => c.textContent.trim()); if (cells[0] === %q) return cells; } return []; })()`, cluster))
		if err == nil && len(row) > 1 && row[1] == "ready" {
			return true, nil
		}
		if time.Since(lastLoad) > time.Second {
			_ = doIn(tab, chromedp.Reload())
			reloads, lastLoad = reloads+1, time.Now()
		}
		return false, err
	})
	t.Logf("landing page: user %s, cluster row %q (after %d reloads)", email, row, reloads)
	if groups := mustEval[string](t, tab, `document.querySelector("section.who .groups").textContent`); !strings.Contains(groups, "oidc:dev") {
		t.Errorf("the landing page's groups: %q, want oidc:dev among them", groups)
	}

	// 3. The session at work, from the page's own origin. The landing
	// page has no script and its CSP allows it no connection at all
	// (default-src 'none'): a fetch from it is the CSP's to refuse, before
	// any request leaves. The requests below are what a page of the
	// stub's origin that may connect (the console to come) sends: the
	// tab bypasses the landing page's CSP (DevTools' Page.setBypassCSP).
	violated := mustEval[string](t, tab, fmt.Sprintf(`new Promise(resolve => {
		document.addEventListener("securitypolicyviolation", e => resolve(e.effectiveDirective));
		fetch("/clusters/%s/api/v1/namespaces/default/configmaps", {headers: {%q: "1"}}).then(r => resolve("fetched: " + r.status), e => setTimeout(() => resolve("rejected: " + e), 1000));
	})`, cluster, proxy.HeaderConsole))
	if violated != "connect-src" {
		t.Errorf("a fetch from the landing page: %q, want the CSP's connect-src to refuse it", violated)
	}
	t.Logf("a fetch from the landing page as served: refused by its CSP (%s)", violated)
	if _, err := callIn(tab, page.SetBypassCSP, page.SetBypassCSPParams{Enabled: true}); err != nil {
		t.Fatal(err)
	}
	if err := doIn(tab, chromedp.Reload()); err != nil {
		t.Fatal(err)
	}
	list := pageFetch(t, tab, "/clusters/"+cluster+"/api/v1/namespaces/default/configmaps", true)
	var cms struct {
		Kind  string
		Items []struct{ Metadata struct{ Name string } }
	}
	if list.Status != 200 || json.Unmarshal([]byte(list.Body), &cms) != nil || cms.Kind != "ConfigMapList" {
		t.Fatalf("fetch with %s: %d %s", proxy.HeaderConsole, list.Status, list.Body)
	}
	var names []string
	for _, it := range cms.Items {
		names = append(names, it.Metadata.Name)
	}
	if !strings.Contains(strings.Join(names, ","), "browser-e2e") {
		t.Fatalf("the ConfigMapList has %v, want browser-e2e among them", names)
	}
	t.Logf("fetch with %s: 1: %d, a %s of %v", proxy.HeaderConsole, list.Status, cms.Kind, names)
	bare := pageFetch(t, tab, "/clusters/"+cluster+"/api/v1/namespaces/default/configmaps", false)
	if bare.Status != 403 || !strings.Contains(bare.Body, proxy.HeaderConsole) {
		t.Fatalf("fetch without %s: %d %s, want a 403 naming the header", proxy.HeaderConsole, bare.Status, bare.Body)
	}
	t.Logf("fetch without the header: %d %s", bare.Status, statusText(bare.Body))

	// The kubeconfig download is what `stub kubeconfig --oidc` prints.
	href := mustEval[string](t, tab, `document.querySelector("section.kubeconfig a[download]").getAttribute("href")`)
	if want := web.KubeconfigPath + "?issuer=" + web.IssuerID(dex.Issuer); href != want {
		t.Errorf("the kubeconfig link is %q, want %q", href, want)
	}
	dl := pageFetch(t, tab, href, false)
	cli := g.stubCmd("kubeconfig", "--oidc", "--issuer", dex.Issuer)
	if dl.Status != 200 || dl.Body != cli {
		t.Errorf("the kubeconfig download (%d, %d bytes) differs from `stub kubeconfig --oidc --issuer %s` (%d bytes):\n--- download:\n%s\n--- stub kubeconfig:\n%s",
			dl.Status, len(dl.Body), dex.Issuer, len(cli), dl.Body, cli)
	} else {
		for _, want := range []string{g.publicURL + "/clusters/" + cluster, "--oidc-issuer-url=" + dex.Issuer, "--oidc-client-id=keyhole"} {
			if !strings.Contains(dl.Body, want) {
				t.Errorf("the kubeconfig lacks %q:\n%s", want, dl.Body)
			}
		}
		t.Logf("kubeconfig download: %d bytes, the same as `stub kubeconfig --oidc --issuer %s`", len(dl.Body), dex.Issuer)
	}

	// What page scripts and DevTools see of the session.
	if ck := mustEval[string](t, tab, "document.cookie"); ck != "" {
		t.Errorf("document.cookie is %q, want empty (every cookie HttpOnly)", ck)
	}
	if n := mustEval[int](t, tab, "localStorage.length + sessionStorage.length"); n != 0 {
		t.Errorf("web storage holds %d items, want none", n)
	}
	if m := jwtShape.FindString(mustEval[string](t, tab, "document.documentElement.outerHTML + location.href")); m != "" {
		t.Errorf("the landing page or its URL holds a JWT: %.40s…", m)
	}
	session := sessionCookie(t, tab, home)
	if session == nil {
		t.Fatalf("no %s cookie for %s", web.SessionCookie, home)
	}
	if !session.HTTPOnly || !session.Secure || session.SameSite != network.CookieSameSiteStrict || session.Path != "/" || session.Domain != browserStubHost ||
		!session.Session || jwtShape.MatchString(session.Value) || session.Size > 4096 {
		t.Errorf("cookie %s: HttpOnly %v, Secure %v, SameSite %q, Path %q, Domain %q, session %v, %d bytes; want HttpOnly, Secure, Strict, /, host-only, a session cookie, no JWT",
			session.Name, session.HTTPOnly, session.Secure, session.SameSite, session.Path, session.Domain, session.Session, session.Size)
	}
	t.Logf(`DevTools: document.cookie "", web storage empty; cookie %s: HttpOnly %v, Secure %v, SameSite %s, Path %s, Domain %s, %d bytes`,
		session.Name, session.HTTPOnly, session.Secure, session.SameSite, session.Path, session.Domain, session.Size)

	// 4. A watch opened from the page ends when the user signs out in
	// another tab.
	watchPath := "/clusters/" + cluster + "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=0"
	mustEval[bool](t, tab, fmt.Sprintf(`(() => {
		const w = window.kwatch = {state: "starting", text: "", chunks: 0};
		fetch(%q, {headers: {%q: "1"}}).then(async r => {
			w.status = r.status; w.state = "open";
			const rd = r.body.getReader(), dec = new TextDecoder();
			for (;;) { const {done, value} = await rd.read(); if (done) break; w.chunks++; w.text += dec.decode(value, {stream: true}); }
			w.state = "ended";
		}).catch(e => { w.state = "failed: " + e; });
		return true; })()`, watchPath, proxy.HeaderConsole))
	pollJS(t, tab, 30*time.Second, "the watch to deliver its first events", `kwatch.state === "open" && kwatch.text.includes("browser-e2e")`)
	opened := time.Now()
	if st := mustEval[int](t, tab, "kwatch.status"); st != 200 {
		t.Fatalf("the watch: %d", st)
	}
	// It outlives several rechecks (1 s) and still delivers.
	pollTab(t, tab, 10*time.Second, "3 recheck intervals", func() (bool, error) { return time.Since(opened) > 3*time.Second, nil })
	c.Apply(t, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: after-rechecks, namespace: default}\n")
	pollJS(t, tab, 30*time.Second, "the open watch to deliver a new ConfigMap", `kwatch.state === "open" && kwatch.text.includes("after-rechecks")`)
	t.Logf("watch: open for %v, %d chunks, still open after 3 rechecks", time.Since(opened).Round(time.Millisecond), mustEval[int](t, tab, "kwatch.chunks"))

	other := b.NewTab(t)
	if err := doIn(other, chromedp.Navigate(home)); err != nil {
		t.Fatal(err)
	}
	if who := mustEval[string](t, other, `document.querySelector("section.who h1")?.textContent ?? ""`); who != email {
		t.Fatalf("the second tab's landing page shows %q, want %q", who, email)
	}
	loggedOut := time.Now()
	if err := doIn(other, chromedp.Click(chromedp.CSS(`form[action="/keyhole/logout"] button`))); err != nil {
		t.Fatalf("click Sign out: %v", err)
	}
	pollJS(t, other, 30*time.Second, "the second tab to show the signed-out page",
		`location.href === `+jsString(home)+` && document.querySelector("section.signin") !== null`, g.stub)
	t.Logf("signed out in the second tab (POST %s) in %v", web.LogoutPath, time.Since(loggedOut).Round(time.Millisecond))
	pollJS(t, tab, 15*time.Second, "the watch to end after the sign-out", `kwatch.state !== "open"`, g.stub)
	watchEnd := mustEval[string](t, tab, "kwatch.state")
	t.Logf("watch: %s %v after the sign-out was clicked", watchEnd, time.Since(loggedOut).Round(time.Millisecond))
	if watchEnd != "ended" {
		t.Errorf("the watch ended as %q, want a clean end of the response", watchEnd)
	}
	after := pageFetch(t, tab, "/clusters/"+cluster+"/api/v1/namespaces/default/configmaps", true)
	if after.Status != 401 {
		t.Errorf("a fetch after the sign-out: %d %s, want 401", after.Status, after.Body)
	}
	t.Logf("fetch after the sign-out: %d %s", after.Status, statusText(after.Body))
	if ck := sessionCookie(t, tab, home); ck != nil {
		t.Errorf("the session cookie is still in the browser after the sign-out")
	}
	// The old cookie, put back as a thief holding it would, no longer
	// works: the session ended at the stub, not only in this browser.
	if _, err := callIn(tab, network.SetCookie, network.SetCookieParams{Name: session.Name, Value: session.Value, URL: home,
		Secure: new(true), HTTPOnly: new(true), SameSite: network.CookieSameSiteStrict, Path: "/"}); err != nil {
		t.Fatal(err)
	}
	replay := pageFetch(t, tab, "/clusters/"+cluster+"/api/v1/namespaces/default/configmaps", true)
	if replay.Status != 401 || !strings.Contains(replay.Body, "has ended") {
		t.Errorf("the old cookie after the sign-out: %d %s, want 401 saying the session has ended", replay.Status, replay.Body)
	}
	t.Logf("the old cookie after the sign-out: %d %s", replay.Status, statusText(replay.Body))

	evs := readAudit(t, g, 0)
	var signInID, watchEnded string
	for _, ev := range evs {
		if ev.Annotations[audit.AnnotationBrowserEvent] == audit.BrowserEventSignIn && signInID == "" {
			signInID = ev.Annotations[audit.AnnotationBrowserSession]
		}
	}
	if signInID == "" {
		t.Fatalf("no sign-in Event in the audit log")
	}
	var signOut, cookieRequests bool
	for _, ev := range evs {
		a := ev.Annotations
		switch {
		case a[audit.AnnotationBrowserEvent] == audit.BrowserEventSignOut && a[audit.AnnotationBrowserSession] == signInID && ev.ResponseStatus.Code == 200:
			signOut = true
		case strings.Contains(ev.RequestURI, "watch=1") && ev.Stage == auditv1.StageResponseComplete:
			watchEnded = a[audit.AnnotationEnded]
			if a[audit.AnnotationBrowserSession] != signInID || ev.User.Username != email {
				t.Errorf("the watch's record: session %q user %q, want %q %q", a[audit.AnnotationBrowserSession], ev.User.Username, signInID, email)
			}
		case ev.Verb == "list" && ev.ObjectRef != nil && ev.ObjectRef.Resource == "configmaps" && ev.ResponseStatus.Code == 200:
			cookieRequests = a[audit.AnnotationBrowserSession] == signInID && a[audit.AnnotationAgent] == "b1" && ev.User.Username == email
		}
	}
	if !signOut {
		t.Errorf("no sign-out Event for session %s in the audit log", signInID)
	}
	if watchEnded != audit.EndedCredentialRevoked {
		t.Errorf("the watch's record says it ended %q, want %q", watchEnded, audit.EndedCredentialRevoked)
	}
	if !cookieRequests {
		t.Errorf("the cookie request's list record lacks the session %s, agent b1 or user %s", signInID, email)
	}
	t.Logf("audit: sign-in and sign-out Events of session %s; the watch's record: ended %s", signInID, watchEnded)

	// 5. Signed in again, pages of another site and of a sibling
	// subdomain try to use the session.
	if err := doIn(tab, chromedp.Navigate(home)); err != nil {
		t.Fatal(err)
	}
	signIn(t, tab, g, email, password)
	for _, site := range []struct {
		name, host string
		sameSite   bool
	}{{"cross-site", browserOtherSite, false}, {"same-site sibling", browserSibling, true}} {
		t.Run(site.name, func(t *testing.T) {
			attackFrom(t, g, b, atk, agent, site.host, site.sameSite)
		})
	}
	// The session survived every refusal.
	if still := pageFetch(t, tab, "/clusters/"+cluster+"/api/v1/namespaces/default/configmaps", true); still.Status != 200 {
		t.Errorf("the session after the attacks: %d %s", still.Status, still.Body)
	}
	favicons := 0
	for _, ev := range readAudit(t, g, 0) {
		if ev.RequestURI == "/favicon.ico" {
			favicons++
		}
	}
	t.Logf("the browser asked the stub for /favicon.ico %d times, once per page of the stub's origin it loaded (each an audited refusal)", favicons)
	g.noSecretsLogged(t, map[string]string{"the web client's secret": webSecret, "alice's password": password, "the session cookie": session.Value}, agent)
}

// attacker serves the pages of another site: the same server answers as
// attacker.test and as evil.example.test, with its own certificate.
type attacker struct {
	port string
	cert *x509.Certificate
}

func startAttacker(t *testing.T, stubURL, cluster string) *attacker {
	t.Helper()
	ca, err := testbed.NewCA("attacker CA")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(browserOtherSite, nil, true, nil, []string{browserOtherSite, browserSibling})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.Host)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		switch r.URL.Path {
		case "/attack":
			fmt.Fprintf(w, attackPage, stubURL, cluster, host)
		case "/form":
			fmt.Fprintf(w, formPage, stubURL+"/clusters/"+cluster+"/api/v1/namespaces/default/configmaps?attempt="+host+"-form")
		default:
			http.NotFound(w, r)
		}
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	return &attacker{port: port, cert: cert}
}

// attackPage runs each attempt in turn and reports what the page saw.
// Every URL carries attempt=<host>-<kind>, to find its audit record.
const attackPage = `<!doctype html><title>a page of another site</title>
<script>
const T = %q, C = %q, S = %q;
const target = kind => T + "/clusters/" + C + "/api/v1/namespaces?attempt=" + S + "-" + kind;
const within = (p, ms) => Promise.race([p, new Promise(r => setTimeout(() => r("no outcome within " + ms + " ms"), ms))]);
async function tryFetch(kind, init) {
  try {
    const r = await fetch(target(kind), init);
    let body = "";
    try { body = (await r.text()).slice(0, 160); } catch (e) { body = "(body: " + e + ")"; }
    return "response: type " + r.type + ", status " + r.status + (body ? ", body " + body : "");
  } catch (e) { return "rejected: " + e; }
}
function tryImage() {
  return new Promise(resolve => {
    const i = new Image();
    i.onload = () => resolve("load event (" + i.naturalWidth + "x" + i.naturalHeight + ")");
    i.onerror = () => resolve("error event");
    i.src = target("img");
  });
}
function tryWebSocket() {
  return new Promise(resolve => {
    let opened = false, got = 0;
    const ws = new WebSocket(T.replace("https:", "wss:") + "/clusters/" + C +
      "/api/v1/namespaces/default/pods/victim/exec?command=id&stdout=true&attempt=" + S + "-ws", ["v5.channel.k8s.io"]);
    ws.onopen = () => { opened = true; };
    ws.onmessage = () => { got++; };
    ws.onclose = e => resolve((opened ? "opened (" + got + " messages), then " : "") + "closed, code " + e.code);
  });
}
async function attack() {
  const out = {};
  out.nocors = await within(tryFetch("nocors", {credentials: "include", mode: "no-cors"}), 10000);
  out.cors = await within(tryFetch("cors", {credentials: "include", mode: "cors"}), 10000);
  out.corsheader = await within(tryFetch("corsheader", {credentials: "include", mode: "cors", headers: {"X-Keyhole-Console": "1"}}), 10000);
  out.img = await within(tryImage(), 10000);
  out.ws = await within(tryWebSocket(), 10000);
  return out;
}
</script>
<p>Nothing to see here.</p>
`

// formPage posts a form to the stub as soon as it has loaded.
const formPage = `<!doctype html><title>a self-submitting form</title>
<form method="post" action="%s"><input name="metadata" value="{}"></form>
<script>window.addEventListener("load", () => setTimeout(() => document.forms[0].submit(), 50));</script>
`

// attackFrom runs the attacker's pages on host in a new tab of b, with the
// user signed in, and checks what reached the stub and the agent.
func attackFrom(t *testing.T, g *gateway, b *browsertest.Browser, atk *attacker, agent *process, host string, sameSite bool) {
	auditFrom := fileSize(t, filepath.Join(g.dir, "audit.log"))
	agentFrom := fileSize(t, agent.log)
	tab := b.NewTab(t)
	base := "https://" + host + ":" + atk.port
	if err := doIn(tab, chromedp.Navigate(base+"/attack")); err != nil {
		t.Fatalf("open %s/attack: %v", base, err)
	}
	seen := mustEval[map[string]string](t, tab, "attack()")
	// The form: a top-level POST navigation to the stub.
	if err := doIn(tab, chromedp.Navigate(base+"/form")); err != nil {
		t.Logf("open %s/form: %v (the form may have left the page already)", base, err)
	}
	pollTab(t, tab, browserActionTimeout, "the form's POST to land on the stub", func() (bool, error) {
		loc, err := runIn(tab, chromedp.Location())
		return strings.HasPrefix(loc, g.publicURL+"/clusters/"), err
	})
	formText, _ := runIn(tab, chromedp.Evaluate[string]("document.body ? document.body.innerText : ''"))
	seen["form"] = "the browser landed on the stub, which says: " + statusText(formText)

	kinds := []string{"nocors", "cors", "corsheader", "img", "ws", "form"}
	arrives := map[string]bool{"nocors": true, "cors": true, "img": true, "ws": true, "form": true} // corsheader: its preflight at most
	records := map[string][]auditv1.Event{}
	var window []auditv1.Event
	waitFor(t, 20*time.Second, "an audit record of each attempt that a browser sends", func() bool {
		window = readAudit(t, g, auditFrom)
		clear(records)
		for _, ev := range window {
			if _, kind, ok := strings.Cut(attemptOf(ev), host+"-"); ok {
				records[kind] = append(records[kind], ev)
			}
		}
		for k := range arrives {
			if len(records[k]) == 0 {
				return false
			}
		}
		return true
	}, g.stub)

	for _, kind := range kinds {
		var got []string
		for _, ev := range records[kind] {
			a := ev.Annotations
			cookie := a[audit.AnnotationBrowserSession] != ""
			verb := ev.Verb
			if verb == "" {
				verb = "(no verb: OPTIONS)"
			}
			got = append(got, fmt.Sprintf("%s %d (cookie: %v) %q", verb, ev.ResponseStatus.Code, cookie, ev.ResponseStatus.Message))
			if c := ev.ResponseStatus.Code; c != 401 && c != 403 {
				t.Errorf("%s: the stub answered %d, want a refusal (401 or 403)", kind, c)
			}
			if agent := a[audit.AnnotationAgent]; agent != "" {
				t.Errorf("%s: reached agent %s", kind, agent)
			}
			if ev.User.Username != "" {
				t.Errorf("%s: audited as user %q: the session was used", kind, ev.User.Username)
			}
			switch {
			case kind == "corsheader":
				// A preflight (OPTIONS: no Kubernetes verb, in these
				// records as in kube-apiserver's) carries no cookie, and
				// the GET it guards ("list") is never sent.
				if ev.Verb != "" || ev.ResponseStatus.Code != 401 {
					t.Errorf("corsheader: verb %q %d reached the stub; only its preflight may, and is refused", ev.Verb, ev.ResponseStatus.Code)
				}
				if cookie {
					t.Errorf("corsheader: the preflight carried the session cookie")
				}
			case sameSite:
				// The sibling is the same site: the browser sends the
				// Strict cookie, and the origin and header rules refuse.
				if !cookie || ev.ResponseStatus.Code != 403 {
					t.Errorf("%s from the sibling: cookie %v, %d; want the cookie sent and a 403", kind, cookie, ev.ResponseStatus.Code)
				}
			default:
				// Another site: the Strict cookie stays home, so the
				// stub sees no credential at all.
				if cookie || ev.ResponseStatus.Code != 401 {
					t.Errorf("%s from another site: cookie %v, %d; want no cookie and a 401", kind, cookie, ev.ResponseStatus.Code)
				}
			}
		}
		if len(got) == 0 {
			got = []string{"nothing reached the stub"}
		}
		t.Logf("%-10s page saw: %s\n%12s stub saw: %s", kind, seen[kind], "", strings.Join(got, "; "))
	}
	for _, ev := range window {
		if a := ev.Annotations[audit.AnnotationAgent]; a != "" {
			t.Errorf("an audit record of the attack window reached agent %s: %s %s %d", a, ev.Verb, ev.RequestURI, ev.ResponseStatus.Code)
		}
		if attemptOf(ev) == "" {
			t.Logf("another record in the window: %s %s %d %q", ev.Verb, ev.RequestURI, ev.ResponseStatus.Code, ev.ResponseStatus.Message)
		}
	}
	// The agent's log names every request it serves (debug level): none
	// of these.
	agentLog := readFrom(t, agent.log, agentFrom)
	for _, l := range strings.Split(agentLog, "\n") {
		if strings.Contains(l, "/api/v1/namespaces") || strings.Contains(l, "/exec") {
			t.Errorf("the agent logged a request of the attack window: %s", l)
		}
	}
	t.Logf("audit records in the window: %d; agent log lines in the window: %d, none about these paths", len(window), strings.Count(agentLog, "\n"))
}

// signIn signs in at the stub through Dex's pages, from the stub's
// signed-out landing page (tab is there), and waits for the signed-in
// landing page.
func signIn(t *testing.T, tab context.Context, g *gateway, email, password string) {
	t.Helper()
	if err := doIn(tab, chromedp.Click(chromedp.CSS("section.signin a.button"))); err != nil {
		t.Fatalf("click the sign-in button: %v", err)
	}
	// Dex's login form (or, should Dex remember the user, straight back).
	pollJS(t, tab, browserActionTimeout, "Dex's login form or the landing page", `document.querySelector("#login, section.who") !== null`)
	if mustEval[bool](t, tab, `document.querySelector("#login") !== null`) {
		loc, _ := runIn(tab, chromedp.Location())
		t.Logf("Dex's login page: %s", strings.SplitN(loc, "?", 2)[0])
		if err := doIn(tab,
			chromedp.SendKeys(chromedp.ID("login"), email),
			chromedp.SendKeys(chromedp.ID("password"), password),
			chromedp.Click(chromedp.ID("submit-login")),
		); err != nil {
			t.Fatalf("Dex's login form: %v", err)
		}
	}
	pollJS(t, tab, browserActionTimeout, "the signed-in landing page",
		`location.pathname === "/" && document.querySelector("section.who h1") !== null`, g.stub)
}

// fetched is what a fetch from the page got.
type fetched struct {
	Status int    `json:"status"`
	Body   string `json:"body"`
}

// pageFetch fetches path from the page in tab (its own origin), with the
// console header or without.
func pageFetch(t *testing.T, tab context.Context, path string, console bool) fetched {
	t.Helper()
	headers := "{}"
	if console {
		headers = fmt.Sprintf(`{%q: "1"}`, proxy.HeaderConsole)
	}
	return mustEval[fetched](t, tab, fmt.Sprintf(`fetch(%q, {headers: %s}).then(async r => ({status: r.status, body: await r.text()}))`, path, headers))
}

// sessionCookie is the browser's session cookie for u, as DevTools shows
// it, or nil.
func sessionCookie(t *testing.T, tab context.Context, u string) *network.Cookie {
	t.Helper()
	res, err := callIn(tab, network.GetCookies, network.GetCookiesParams{URLs: []string{u}})
	if err != nil {
		t.Fatalf("Network.getCookies: %v", err)
	}
	for _, c := range res.Cookies {
		if c.Name == web.SessionCookie {
			return c
		}
	}
	return nil
}

// doIn runs steps in tab, bounded in time.
func doIn(tab context.Context, steps ...chromedp.Action[chromedp.Void]) error {
	ctx, cancel := context.WithTimeout(tab, browserActionTimeout)
	defer cancel()
	return chromedp.Do(ctx, steps...)
}

// runIn runs one action in tab, bounded in time.
func runIn[T any](tab context.Context, a chromedp.Action[T]) (T, error) {
	ctx, cancel := context.WithTimeout(tab, browserActionTimeout)
	defer cancel()
	return chromedp.Run(ctx, a)
}

// eval evaluates a JavaScript expression in tab, awaiting a promise.
func eval[T any](tab context.Context, expr string) (T, error) {
	return runIn(tab, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
}

// mustEval is eval that fails the test on an error.
func mustEval[T any](t *testing.T, tab context.Context, expr string) T {
	t.Helper()
	v, err := eval[T](tab, expr)
	if err != nil {
		t.Fatalf("evaluate %.80q: %v", expr, err)
	}
	return v
}

// pollJS waits until the JavaScript expression is true in tab, or fails
// the test after timeout. Evaluations that fail (a page loading) are tried
// again.
func pollJS(t *testing.T, tab context.Context, timeout time.Duration, what, expr string, logs ...*process) {
	t.Helper()
	pollTab(t, tab, timeout, what, func() (bool, error) { return eval[bool](tab, expr) }, logs...)
}

// pollTab calls ok until it holds, or fails the test after timeout.
func pollTab(t *testing.T, tab context.Context, timeout time.Duration, what string, ok func() (bool, error), logs ...*process) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		done, err := ok()
		if done && err == nil {
			return
		}
		if time.Now().After(deadline) {
			loc, _ := runIn(tab, chromedp.Location())
			text, _ := eval[string](tab, "document.body ? document.body.innerText.slice(0, 600) : ''")
			var b strings.Builder
			for _, p := range logs {
				fmt.Fprintf(&b, "\n--- %s log:\n%s", p.name, p.tail(30))
			}
			t.Fatalf("timed out after %v waiting for %s (last error: %v); the tab is at %s showing:\n%s%s", timeout, what, err, loc, text, b.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func jsString(s string) string { b, _ := json.Marshal(s); return string(b) }

// statusText is the message of a Kubernetes Status body, or the body.
func statusText(body string) string {
	var st struct {
		Code    int
		Message string
	}
	if json.Unmarshal([]byte(body), &st) == nil && st.Message != "" {
		return fmt.Sprintf("(Status %d) %s", st.Code, st.Message)
	}
	if len(body) > 200 {
		body = body[:200] + "…"
	}
	return body
}

// readAudit returns the stub's audit records from byte offset from on.
func readAudit(t *testing.T, g *gateway, from int64) []auditv1.Event {
	t.Helper()
	var evs []auditv1.Event
	sc := bufio.NewScanner(strings.NewReader(readFrom(t, filepath.Join(g.dir, "audit.log"), from)))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev auditv1.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			continue // a line being written
		}
		if ev.ResponseStatus == nil {
			ev.ResponseStatus = &metav1.Status{}
		}
		evs = append(evs, ev)
	}
	return evs
}

func readFrom(t *testing.T, path string, from int64) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		if os.IsNotExist(err) {
			return ""
		}
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	// Only whole lines.
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[:i+1]
	} else {
		b = nil
	}
	return string(b)
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		if os.IsNotExist(err) {
			return 0
		}
		t.Fatal(err)
	}
	return fi.Size()
}

// attemptOf is the attempt=… of a record's request URI, or "".
func attemptOf(ev auditv1.Event) string {
	u, err := url.Parse(ev.RequestURI)
	if err != nil {
		return ""
	}
	return u.Query().Get("attempt")
}

// callIn sends a DevTools command to tab, bounded in time.
func callIn[P, R any](tab context.Context, cmd cdp.Command[P, R], params P) (R, error) {
	ctx, cancel := context.WithTimeout(tab, browserActionTimeout)
	defer cancel()
	return chromedp.Call(ctx, cmd, params)
}

// headerOf is header name of a DevTools response, whatever its case.
func headerOf(h network.Headers, name string) any {
	for k, v := range h {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return nil
}

// configureBrowserLogin adds Dex as an issuer with a browser login (the
// confidential client webClient, its secret webSecret) and a policy that lets oidc:dev and admin
// reach every cluster to g's running stub, waits until the landing page
// offers the sign-in, and returns the sign-in's path.
func configureBrowserLogin(t *testing.T, g *gateway, dex *idptest.Dex, webClient, webSecret string) string {
	t.Helper()
	secretFile := filepath.Join(g.dir, "web-client-secret")
	writeFile(t, secretFile, webSecret+"\n")
	g.setConfig(fmt.Sprintf(`authentication:
  jwt:
  - issuer:
      url: %s
      audiences: [keyhole, %s]
      audienceMatchPolicy: MatchAny
      certificateAuthorityFile: %s
    claimValidationRules:
    - expression: 'claims.?email_verified.orValue(true) == true'
      message: the email is not verified
    claimMappings:
      username: {expression: 'claims.email'}
      groups: {expression: 'dyn(claims.?groups.orValue([])).map(g, "oidc:" + g)'}
    login:
      clientID: keyhole
      extraScopes: [email, groups]
      browser:
        clientID: %s
        clientSecretFile: %s
        name: Dex
policy:
- clusters: ["*"]
  groups: ["oidc:dev"]
- clusters: ["*"]
  users: [admin]
`, dex.Issuer, webClient, dex.CAFile, webClient, secretFile))
	loginPath := web.LoginPath + "?issuer=" + web.IssuerID(dex.Issuer)
	waitFor(t, 30*time.Second, "the browser sign-in to be configured", func() bool {
		resp, err := g.http.Get(g.url + "/")
		if err != nil {
			return false
		}
		return resp.StatusCode == 200 && strings.Contains(readAll(resp), `href="`+loginPath+`"`)
	}, g.stub)
	return loginPath
}

package e2e

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/keyhole-dev/keyhole/internal/browsertest"
	"github.com/keyhole-dev/keyhole/internal/idptest"
	"github.com/keyhole-dev/keyhole/internal/kubetest"
	"github.com/keyhole-dev/keyhole/web"
)

// consoleEnv is what a console test runs against: a real cluster (with
// nodesim), the stub with browser sign-in through Dex, one agent for
// cluster, and Chromium with one tab on the stub's public name. Users sign
// in as Dex users; their Kubernetes user is their email, their groups
// "oidc:<group>" (configureBrowserLogin), and the policy lets oidc:dev
// reach every cluster.
type consoleEnv struct {
	t        *testing.T
	c        *kubetest.Cluster
	g        *gateway
	dex      *idptest.Dex
	b        *browsertest.Browser
	tab      context.Context
	cluster  string
	adminTok string // a static token bound to cluster-admin, for kubectl through the gateway
	console  string // the console's URL

	mu       sync.Mutex
	messages []chromedp.ConsoleMessage
	mark     int // messages before this index are not checked by noErrors
}

// consoleEnvOptions tune startConsoleEnv.
type consoleEnvOptions struct {
	cluster string         // default "kh-console"
	users   []idptest.User // Dex users; default carol@example.com / carol-pw-1 in group dev
	extra   string         // more stub config YAML (see gatewayOptions.extra)
	// hostRules are more Chromium host-resolver rules ("MAP name 127.0.0.1").
	hostRules []string
	trust     []*x509.Certificate // more certificates for Chromium to trust
}

// Console test users.
const (
	consoleEmail    = "carol@example.com"
	consolePassword = "carol-pw-1"
)

// startConsoleEnv brings up everything; the tab is signed out, on no page.
// Every console error and CSP violation from here on is collected for
// noErrors.
func startConsoleEnv(t *testing.T, o consoleEnvOptions) *consoleEnv {
	t.Helper()
	start := time.Now()
	if o.cluster == "" {
		o.cluster = "kh-console"
	}
	if len(o.users) == 0 {
		o.users = []idptest.User{{Email: consoleEmail, Password: consolePassword, Groups: []string{"dev"}}}
	}
	const webClient = "keyhole-web"
	e := &consoleEnv{t: t, cluster: o.cluster}
	e.c = kubetest.Start(t)
	extra := "browser: {sessionMaxAge: 2h, sessionIdleTimeout: 1h}\n" + o.extra
	e.g = startGatewayWith(t, e.c, gatewayOptions{publicHost: browserStubHost, extra: extra})
	webSecret := "web-secret-" + fmt.Sprint(time.Now().UnixNano())
	e.dex = idptest.Start(t, idptest.Options{
		Users:      o.users,
		WebClients: []idptest.Client{{ID: webClient, Secret: webSecret, RedirectURIs: []string{e.g.publicURL + web.CallbackPath}}},
	})
	secret, tokenFile := e.g.install(o.cluster, "env=e2e")
	e.g.startAgent(agentOpts{cluster: o.cluster, id: "c1", secretFile: secret, apiURL: e.c.URL, tokenFile: tokenFile, c: e.c})
	_, e.adminTok = e.g.user("admin", "cluster-admin")
	e.g.waitAgents(e.adminTok, o.cluster, "c1")
	configureBrowserLogin(t, e.g, e.dex, webClient, webSecret)

	dexAddr := strings.TrimPrefix(strings.TrimSuffix(e.dex.Issuer, "/dex"), "https://")
	rules := append([]string{fmt.Sprintf("MAP %s 127.0.0.1", browserStubHost)}, o.hostRules...)
	e.b = browsertest.Start(t, browsertest.Options{
		HostResolverRules: strings.Join(rules, ", "),
		Trust: append([]*x509.Certificate{
			browsertest.LeafCertificate(t, strings.TrimPrefix(e.g.url, "https://")),
			browsertest.LeafCertificate(t, dexAddr),
		}, o.trust...),
	})
	e.tab = e.b.Ctx
	e.console = e.g.publicURL + web.ConsolePath
	// A laptop screen, for the layout and the screenshots.
	if _, err := callIn(e.tab, emulation.SetDeviceMetricsOverride, emulation.SetDeviceMetricsOverrideParams{Width: 1366, Height: 800, DeviceScaleFactor: 1}); err != nil {
		t.Fatalf("Emulation.setDeviceMetricsOverride: %v", err)
	}
	e.watchMessages(e.tab)
	t.Logf("console env (cluster, stub, agent, Dex, Chromium) up in %v", time.Since(start).Round(time.Millisecond))
	return e
}

// watchMessages collects tab's console messages and CSP violations.
func (e *consoleEnv) watchMessages(tab context.Context) {
	msgCtx, stop := context.WithCancel(tab)
	e.t.Cleanup(stop)
	stream := chromedp.Console(msgCtx)
	go func() {
		for m, err := range stream {
			if err != nil {
				return
			}
			e.mu.Lock()
			e.messages = append(e.messages, m)
			e.mu.Unlock()
		}
	}()
	if _, err := callIn(tab, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: cspWatch}); err != nil {
		e.t.Fatalf("Page.addScriptToEvaluateOnNewDocument: %v", err)
	}
}

// signIn signs email in through Dex, starting at path (a console deep
// link, or "" for the console), and waits until the tab is back there
// signed in. It binds nothing in the cluster: see bind.
func (e *consoleEnv) signIn(email, password, path string) {
	e.t.Helper()
	if path == "" {
		path = web.ConsolePath
	}
	e.open(path)
	pollJS(e.t, e.tab, browserActionTimeout, "the console's Sign in", `document.body.dataset.state === "signed-out"`, e.g.stub)
	if err := doIn(e.tab, chromedp.Click(chromedp.CSS("section.signin a.button"))); err != nil {
		e.t.Fatalf("click the console's Sign in: %v", err)
	}
	// The landing page, signed out: its sign-in button (it carries ?then=).
	pollJS(e.t, e.tab, browserActionTimeout, "the landing page's sign-in", `location.pathname === "/" && document.querySelector("section.signin a.button") !== null && document.readyState === "complete"`, e.g.stub)
	if err := doIn(e.tab, chromedp.Click(chromedp.CSS("section.signin a.button"))); err != nil {
		e.t.Fatalf("click the landing page's sign-in: %v", err)
	}
	pollJS(e.t, e.tab, browserActionTimeout, "Dex's login form or the console", `document.querySelector("#login") !== null || location.pathname.startsWith("/console")`, e.g.stub)
	if mustEval[bool](e.t, e.tab, `document.querySelector("#login") !== null`) {
		if err := doIn(e.tab,
			chromedp.SendKeys(chromedp.ID("login"), email),
			chromedp.SendKeys(chromedp.ID("password"), password),
			chromedp.Click(chromedp.ID("submit-login")),
		); err != nil {
			e.e2eFatal("Dex's login form: %v", err)
		}
	}
	want := strings.SplitN(path, "?", 2)[0]
	pollJS(e.t, e.tab, browserActionTimeout, "the console at "+want+" after sign-in",
		fmt.Sprintf(`location.pathname === %s && document.body.dataset.state !== "signed-out"`, jsString(want)), e.g.stub)
	e.mu.Lock()
	e.mark = len(e.messages) // the signed-out page's 401 is an expected failed load
	e.mu.Unlock()
}

func (e *consoleEnv) e2eFatal(format string, args ...any) {
	e.t.Helper()
	e.t.Fatalf(format+"\n--- stub log:\n%s", append(args, e.g.stub.tail(30))...)
}

// open navigates the tab to path on the stub's public origin.
func (e *consoleEnv) open(path string) {
	e.t.Helper()
	if err := doIn(e.tab, chromedp.Navigate(e.g.publicURL+path)); err != nil {
		e.e2eFatal("open %s: %v", path, err)
	}
}

// bind grants a Kubernetes user (a Dex user's email) or group
// ("oidc:dev") a ClusterRole, cluster-wide (namespace "") or in namespace.
func (e *consoleEnv) bind(kind, subject, clusterRole, namespace string) {
	e.t.Helper()
	name := strings.NewReplacer("@", "-", ".", "-", ":", "-").Replace(fmt.Sprintf("%s-%s", subject, clusterRole))
	if namespace == "" {
		e.c.Apply(e.t, fmt.Sprintf(`apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: %s}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: %s}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: %s, name: %q}]
`, name, clusterRole, kind, subject))
		return
	}
	e.c.Apply(e.t, fmt.Sprintf(`apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: %s, namespace: %s}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: %s}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: %s, name: %q}]
`, name, namespace, clusterRole, kind, subject))
}

// noErrors fails the test for any CSP violation in the tab's current
// document and any console error or exception since sign-in.
func (e *consoleEnv) noErrors(when string) {
	e.t.Helper()
	if v := mustEval[[]string](e.t, e.tab, `window.__cspViolations || ["the CSP watch is not installed"]`); len(v) > 0 {
		e.t.Errorf("%s: CSP violations: %q", when, v)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, m := range e.messages[e.mark:] {
		if m.Type == chromedp.ConsoleError || m.IsException() || strings.Contains(m.Text, "Content Security Policy") {
			e.t.Errorf("%s: console message from %s: %s", when, m.URL, m)
		}
	}
	e.mark = len(e.messages)
}

// expectErrors marks the console messages so far as expected (a refusal
// the test provoked), so that noErrors does not report them.
func (e *consoleEnv) expectErrors() {
	e.mu.Lock()
	e.mark = len(e.messages)
	e.mu.Unlock()
}

// screenshot saves the tab as $KEYHOLE_SCREENSHOTS/<name>.png when that
// is set (hack/screenshots.sh refreshes docs/console/ from it); otherwise
// it does nothing.
func (e *consoleEnv) screenshot(name string) {
	e.t.Helper()
	dir := os.Getenv("KEYHOLE_SCREENSHOTS")
	if dir == "" {
		return
	}
	shot, err := callIn(e.tab, page.CaptureScreenshot, page.CaptureScreenshotParams{Format: page.CaptureScreenshotFormatPng})
	if err != nil {
		e.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	b := shot.Data
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), b, 0o644); err != nil {
		e.t.Errorf("screenshot %s: %v", name, err)
	}
}

// axeScript is axe-core (pinned in web/console/package.json, installed by
// hack/console.sh, which hack/test.sh runs first): the accessibility
// checker, evaluated in the tab through DevTools (the console's CSP does
// not govern that, and the console never loads it).
var axeScript struct {
	once sync.Once
	src  string
	err  error
}

// axeViolation is one failed axe-core rule.
type axeViolation struct {
	ID     string `json:"id"`
	Impact string `json:"impact"`
	Help   string `json:"help"`
	Nodes  []struct {
		Target []any  `json:"target"`
		HTML   string `json:"html"`
	} `json:"nodes"`
}

// accessible runs axe-core's WCAG 2 A and AA rules (labels, names, roles,
// contrast, …) on the tab's current page, in its current color scheme,
// and fails the test for each violation of impact serious or critical.
// It returns how many rules passed.
func (e *consoleEnv) accessible(when string) int {
	e.t.Helper()
	axeScript.once.Do(func() {
		var b []byte
		b, axeScript.err = os.ReadFile(filepath.Join("..", "web", "console", "node_modules", "axe-core", "axe.min.js"))
		axeScript.src = string(b)
	})
	if axeScript.err != nil {
		e.t.Fatalf("axe-core is not installed (run hack/console.sh, which hack/test.sh runs first): %v", axeScript.err)
	}
	if _, err := eval[bool](e.tab, axeScript.src+";true"); err != nil {
		e.t.Fatalf("load axe-core: %v", err)
	}
	type result struct {
		Violations []axeViolation `json:"violations"`
		Passes     int            `json:"passes"`
	}
	r := mustEval[result](e.t, e.tab, `axe.run(document, {runOnly: {type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}, resultTypes: ["violations"]})
		.then(r => ({violations: r.violations, passes: r.passes.length}))`)
	for _, v := range r.Violations {
		if v.Impact != "serious" && v.Impact != "critical" {
			continue
		}
		var where []string
		for i, n := range v.Nodes {
			if i == 3 {
				where = append(where, fmt.Sprintf("… %d more", len(v.Nodes)-3))
				break
			}
			where = append(where, fmt.Sprint(n.Target)+" "+n.HTML)
		}
		e.t.Errorf("%s: accessibility (axe-core %s, %s): %s\n  %s", when, v.ID, v.Impact, v.Help, strings.Join(where, "\n  "))
	}
	return r.Passes
}

// colorScheme switches the tab's prefers-color-scheme ("light", "dark").
func (e *consoleEnv) colorScheme(scheme string) {
	e.t.Helper()
	if _, err := callIn(e.tab, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}}}); err != nil {
		e.t.Fatalf("Emulation.setEmulatedMedia: %v", err)
	}
}

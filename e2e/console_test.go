package e2e

import (
	"context"
	"crypto/x509"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/keyhole-dev/keyhole/internal/browsertest"
	"github.com/keyhole-dev/keyhole/internal/idptest"
	"github.com/keyhole-dev/keyhole/internal/kubetest"
	"github.com/keyhole-dev/keyhole/web"
)

// cspWatch is installed in every document of the tab before its own
// scripts run (Page.addScriptToEvaluateOnNewDocument, which the page's CSP
// does not govern): it records the page's CSP violations.
const cspWatch = `window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", e => window.__cspViolations.push(e.violatedDirective + " " + e.blockedURI));`

// TestConsole: the console's clusters view in real Chromium, through the
// real stub, agent, kube-apiserver and Dex. Signed out, /console loads and
// offers only "Sign in"; signed in through Dex, it lists the clusters the
// user may reach, with the connected one ready (the page refreshes by
// itself), filters them as the user types, offers the kubectl command and
// the kubeconfig download, and the page reports no CSP violation and no
// console error.
func TestConsole(t *testing.T) {
	const (
		cluster   = "kh-console-e2e"
		idle      = "kh-console-idle" // registered, no agent: never ready
		email     = "carol@example.com"
		password  = "carol-pw-1"
		webClient = "keyhole-web"
	)
	start := time.Now()
	c := kubetest.Start(t)
	g := startGatewayWith(t, c, gatewayOptions{publicHost: browserStubHost,
		extra: "browser: {sessionMaxAge: 2h, sessionIdleTimeout: 1h}\n"})
	webSecret := "web-secret-" + fmt.Sprint(time.Now().UnixNano())
	dex := idptest.Start(t, idptest.Options{
		Users:      []idptest.User{{Email: email, Password: password, Groups: []string{"dev"}}},
		WebClients: []idptest.Client{{ID: webClient, Secret: webSecret, RedirectURIs: []string{g.publicURL + web.CallbackPath}}},
	})
	secret, tokenFile := g.install(cluster, "env=e2e", "team=console")
	g.register(idle, "env=staging")
	g.startAgent(agentOpts{cluster: cluster, id: "c1", secretFile: secret, apiURL: c.URL, tokenFile: tokenFile, c: c})
	_, adminTok := g.user("admin", "cluster-admin")
	g.waitAgents(adminTok, cluster, "c1")

	configureBrowserLogin(t, g, dex, webClient, webSecret)

	dexAddr := strings.TrimPrefix(strings.TrimSuffix(dex.Issuer, "/dex"), "https://")
	b := browsertest.Start(t, browsertest.Options{
		HostResolverRules: fmt.Sprintf("MAP %s 127.0.0.1", browserStubHost),
		Trust: []*x509.Certificate{
			browsertest.LeafCertificate(t, strings.TrimPrefix(g.url, "https://")),
			browsertest.LeafCertificate(t, dexAddr),
		},
	})
	tab := b.Ctx
	console := g.publicURL + web.ConsolePath
	t.Logf("set-up (cluster, stub, agent, Dex, Chromium) in %v", time.Since(start).Round(time.Millisecond))

	// Everything the page writes to the console, and its CSP violations.
	var (
		mu       sync.Mutex
		messages []chromedp.ConsoleMessage
	)
	msgCtx, stopMessages := context.WithCancel(tab)
	defer stopMessages()
	stream := chromedp.Console(msgCtx)
	go func() {
		for m, err := range stream {
			if err != nil {
				return
			}
			mu.Lock()
			messages = append(messages, m)
			mu.Unlock()
		}
	}()
	if _, err := callIn(tab, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: cspWatch}); err != nil {
		t.Fatalf("Page.addScriptToEvaluateOnNewDocument: %v", err)
	}
	noViolations := func(when string) {
		t.Helper()
		if v := mustEval[[]string](t, tab, `window.__cspViolations || ["the CSP watch is not installed"]`); len(v) > 0 {
			t.Errorf("%s: CSP violations: %q", when, v)
		}
	}

	// 1. Signed out: the page loads and offers only "Sign in", to /.
	resp, err := runIn(tab, chromedp.NavigateResponse(console))
	if err != nil || resp.Status != 200 {
		t.Fatalf("GET %s: %v, %v\n%s", console, resp, err, g.stub.tail(20))
	}
	nonce := mustEval[string](t, tab, `document.querySelector('meta[name="keyhole-style-nonce"]').content`)
	if csp := headerOf(resp.Headers, "Content-Security-Policy"); nonce == "" || csp != web.ConsoleCSPWith(nonce) {
		t.Errorf("GET /console: Content-Security-Policy %q, want %q (the page's style nonce %q)", csp, web.ConsoleCSPWith(nonce), nonce)
	}
	pollJS(t, tab, browserActionTimeout, "the signed-out console", `document.body.dataset.state === "signed-out"`, g.stub)
	if href := mustEval[string](t, tab, `document.querySelector("section.signin a").getAttribute("href")`); href != "/?then=%2Fconsole" {
		t.Errorf("the signed-out console's Sign in link goes to %q, want /?then=%%2Fconsole (back here once signed in)", href)
	}
	if text := mustEval[string](t, tab, "document.documentElement.outerHTML"); strings.Contains(text, cluster) || strings.Contains(text, idle) {
		t.Errorf("the signed-out console names a cluster:\n%s", text)
	}
	noViolations("signed out")

	// 2. Sign in through Dex (from the landing page, which links to the
	// console), then open the console as a person would: by the link.
	if err := doIn(tab, chromedp.Navigate(g.publicURL+"/")); err != nil {
		t.Fatal(err)
	}
	signIn(t, tab, g, email, password)
	// The signed-out page's 401 from /keyhole/v1/clusters is in the console
	// as a failed load; from here on, nothing may fail.
	mu.Lock()
	signedOutMessages := len(messages)
	mu.Unlock()
	navStart := time.Now()
	if err := doIn(tab, chromedp.Click(chromedp.CSS(`section.clusters a[href="/console"]`))); err != nil {
		t.Fatalf("follow the landing page's link to the console: %v", err)
	}
	rows := func() []string {
		return mustEval[[]string](t, tab, `[...document.querySelectorAll("#cluster-table tbody tr")].map(tr => tr.dataset.cluster)`)
	}
	pollJS(t, tab, browserActionTimeout, "the console's cluster list", `document.querySelectorAll("#cluster-table tbody tr").length === 2`, g.stub)
	firstRows := time.Since(navStart)
	rendered := mustEval[float64](t, tab, `performance.getEntriesByName("keyhole-clusters-rendered")[0].startTime`)
	t.Logf("time to first render of the cluster list: %.0f ms after navigation start (page's own mark); %v from the click as the test saw it",
		rendered, firstRows.Round(time.Millisecond))
	if got := rows(); len(got) != 2 || got[0] != cluster || got[1] != idle {
		t.Fatalf("the console lists %q, want [%s %s]", got, cluster, idle)
	}

	// The connected cluster turns ready by the page's own refresh.
	cells := func(id string) []string {
		return mustEval[[]string](t, tab, fmt.Sprintf(`[...document.querySelector('#cluster-table tr[data-cluster=%q]').cells].map(c => c.textContent.trim())`, id))
	}
	readyStart := time.Now()
	pollTab(t, tab, 60*time.Second, "the console to show "+cluster+" ready", func() (bool, error) {
		row := cells(cluster)
		return len(row) > 4 && row[1] == "ready" && row[4] != "–", nil
	}, g.stub)
	row := cells(cluster)
	t.Logf("console row after %v (no reload): %q", time.Since(readyStart).Round(time.Millisecond), row)
	if row[2] != "1" || !strings.HasSuffix(row[3], " ms") || !strings.HasPrefix(row[4], "v1.") || !strings.HasSuffix(row[5], "ago") ||
		!strings.Contains(row[6], "env=e2e") || !strings.Contains(row[7], "--context "+cluster) {
		t.Errorf("the row of %s: %q; want 1 agent, a round trip, the API server version, last seen, its labels and the kubectl command", cluster, row)
	}
	if idleRow := cells(idle); idleRow[1] != "not ready" || idleRow[2] != "0" || idleRow[5] != "never" {
		t.Errorf("the row of %s (no agent): %q", idle, idleRow)
	}

	// The kubeconfig link downloads the file the landing page offers.
	href := mustEval[string](t, tab, fmt.Sprintf(`document.querySelector('#cluster-table tr[data-cluster=%q] a[download]').getAttribute("href")`, cluster))
	if href != web.KubeconfigPath {
		t.Errorf("the kubeconfig link is %q, want %s", href, web.KubeconfigPath)
	}
	kc := mustEval[fetched](t, tab, fmt.Sprintf(`fetch(%q).then(async r => ({status: r.status, body: await r.text()}))`, href))
	if kc.Status != 200 || !strings.Contains(kc.Body, "name: "+cluster) || !strings.Contains(kc.Body, dex.Issuer) {
		t.Errorf("GET %s from the console: %d\n%s", href, kc.Status, kc.Body)
	}

	// 3. Search: by label, then by name; the query stays in the URL.
	search := func(q string) {
		t.Helper()
		mustEval[bool](t, tab, `(() => { document.getElementById("cluster-search").value = ""; return true; })()`)
		if err := doIn(tab, chromedp.Focus(chromedp.ID("cluster-search")), chromedp.SendKeys(chromedp.ID("cluster-search"), q)); err != nil {
			t.Fatalf("type %q in the search box: %v", q, err)
		}
	}
	search("env=staging")
	pollJS(t, tab, 5*time.Second, "the search to keep only "+idle,
		fmt.Sprintf(`(() => { const r = [...document.querySelectorAll("#cluster-table tbody tr")].map(tr => tr.dataset.cluster); return r.length === 1 && r[0] === %q; })()`, idle))
	if s := mustEval[string](t, tab, `document.getElementById("cluster-summary").textContent`); !strings.HasPrefix(s, "1 of 2 clusters match.") {
		t.Errorf("the summary after filtering: %q", s)
	}
	if q := mustEval[string](t, tab, `new URLSearchParams(location.search).get("q")`); q != "env=staging" {
		t.Errorf("the URL's query after filtering: %q", q)
	}
	search("CONSOLE-E2E")
	pollJS(t, tab, 5*time.Second, "the search to keep only "+cluster,
		fmt.Sprintf(`(() => { const r = [...document.querySelectorAll("#cluster-table tbody tr")].map(tr => tr.dataset.cluster); return r.length === 1 && r[0] === %q; })()`, cluster))
	// A refresh keeps the filter and the search box's focus.
	time.Sleep(6 * time.Second)
	if got := rows(); len(got) != 1 || got[0] != cluster {
		t.Errorf("after a refresh the filtered list is %q", got)
	}
	if id := mustEval[string](t, tab, `document.activeElement.id`); id != "cluster-search" {
		t.Errorf("after a refresh the focus is on %q, not the search box", id)
	}
	search("no-such-cluster")
	pollJS(t, tab, 5*time.Second, "the search to keep nothing", `document.querySelectorAll("#cluster-table tbody tr").length === 0`)
	// A deep link with a query filters at once.
	if err := doIn(tab, chromedp.Navigate(console+"/clusters?q=team%3Dconsole")); err != nil {
		t.Fatal(err)
	}
	pollJS(t, tab, browserActionTimeout, "the deep link's filtered list",
		fmt.Sprintf(`(() => { const r = [...document.querySelectorAll("#cluster-table tbody tr")].map(tr => tr.dataset.cluster); return r.length === 1 && r[0] === %q; })()`, cluster))

	// 4. No CSP violation, no console error.
	noViolations("signed in")
	stopMessages()
	mu.Lock()
	defer mu.Unlock()
	for _, m := range messages[signedOutMessages:] {
		if m.Type == chromedp.ConsoleError || m.IsException() || strings.Contains(m.Text, "Content Security Policy") {
			t.Errorf("console message from %s: %s", m.URL, m)
		}
	}
	t.Logf("console messages seen signed in: %d, none an error or a CSP report", len(messages)-signedOutMessages)

	// The watch is not vacuous: a connection the CSP forbids is reported.
	mustEval[bool](t, tab, `fetch("https://`+browserOtherSite+`/").then(() => true, () => true)`)
	pollJS(t, tab, 5*time.Second, "the CSP to report a forbidden connection",
		`window.__cspViolations.length === 1 && window.__cspViolations[0].startsWith("connect-src")`)
}

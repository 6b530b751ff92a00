package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// TestConsoleTour walks the console's main views as one user: the cluster
// list, a cluster, a namespace, its pods, a pod, its YAML, its log, a
// terminal and the edit view. On each, in light and in dark, axe-core's
// WCAG 2 A/AA rules (names, labels, roles, contrast) find nothing serious
// or critical, and the page reports no CSP violation and no error. The
// way from the cluster list into a cluster is taken with the keyboard
// only (Tab to the link, Enter). The screenshots of docs/console.md that
// no other test takes come from here.
func TestConsoleTour(t *testing.T) {
	const ns = "shop"
	e := startConsoleEnv(t, consoleEnvOptions{})
	c := e.c
	e.bind("User", consoleEmail, "cluster-admin", "")
	c.EnsureNamespace(t, ns)
	c.Apply(t, fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: %s, labels: {app: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: app, image: registry.example/web:1.4}]}
`, ns))
	c.CreatePod(t, ns, "web-0", nil, "app", "sidecar")
	c.CreatePod(t, ns, "web-1", nil, "app")
	for i := range 30 {
		c.AppendLog(t, ns, "web-0", "app", fmt.Sprintf("GET /healthz 200 %d ms", 1+i%7))
	}

	e.signIn(consoleEmail, consolePassword, "")
	pollJS(t, e.tab, browserActionTimeout, "the cluster list", `document.body.dataset.state === "clusters" && document.querySelector("#cluster-table tbody tr") !== null`, e.g.stub)
	pollJS(t, e.tab, 60*time.Second, "the cluster to be ready", fmt.Sprintf(`document.querySelector('#cluster-table tr[data-cluster=%q] td.ready') !== null`, e.cluster), e.g.stub)

	// Keyboard only: Tab until the cluster's link has the focus, Enter.
	clusterLink := fmt.Sprintf("/console/c/%s", e.cluster)
	mustEval[bool](t, e.tab, `(document.activeElement && document.activeElement.blur(), true)`)
	tabs := 0
	for ; tabs < 40; tabs++ {
		if err := doIn(e.tab, chromedp.KeyEvent(kb.Tab)); err != nil {
			t.Fatalf("press Tab: %v", err)
		}
		if mustEval[string](t, e.tab, `document.activeElement ? (document.activeElement.getAttribute("href") || "") : ""`) == clusterLink {
			break
		}
	}
	if tabs == 40 {
		t.Fatalf("40 presses of Tab never reached the link to %s", clusterLink)
	}
	if v := mustEval[bool](t, e.tab, `getComputedStyle(document.activeElement).outlineStyle !== "none"`); !v {
		t.Error("the focused link has no visible focus outline")
	}
	if err := doIn(e.tab, chromedp.KeyEvent(kb.Enter)); err != nil {
		t.Fatalf("press Enter: %v", err)
	}
	pollJS(t, e.tab, browserActionTimeout, "the cluster view after Enter", `document.body.dataset.state === "cluster"`, e.g.stub)
	t.Logf("keyboard: %d presses of Tab from the top of the cluster list to the cluster's link; Enter opened it", tabs+1)
	e.open("/console")
	pollJS(t, e.tab, browserActionTimeout, "the cluster list", `document.body.dataset.state === "clusters"`, e.g.stub)

	type stop struct {
		name, path, ready, shot string
		// then: a button to press once ready, and what shows after it
		then, after string
	}
	base := "/console/c/" + e.cluster
	stops := []stop{
		{"the cluster list", "/console", `document.body.dataset.state === "clusters" && document.querySelector("#cluster-table td.ready") !== null`, "clusters", "", ""},
		{"the cluster", base, `document.body.dataset.state === "cluster"`, "", "", ""},
		{"the namespace", base + "/ns/" + ns, `document.body.dataset.state === "namespace" && document.body.textContent.includes("web-1")`, "dark", "", ""},
		{"the pods", base + "/ns/" + ns + "/pods", `document.body.dataset.state === "list" && document.querySelectorAll("#list-table tbody tr[data-name]").length === 2`, "", "", ""},
		{"a pod", base + "/ns/" + ns + "/pods/web-0", `document.body.dataset.state === "object" && document.querySelector('#object-actions[aria-busy="false"] [data-action="exec"]') !== null`, "", "", ""},
		{"a pod's YAML", base + "/ns/" + ns + "/pods/web-0?tab=yaml", `document.body.dataset.state === "object" && document.querySelector("#object-yaml") !== null && document.querySelector("#object-yaml").textContent.includes("web-0")`, "", "", ""},
		{"a Deployment's edit view", base + "/ns/" + ns + "/deployments.apps/web?tab=edit", `document.body.dataset.state === "object" && document.querySelector("textarea") !== null`, "", "", ""},
		{"a log", base + "/ns/" + ns + "/pods/web-0/log?container=app", `document.body.dataset.state === "log" && document.querySelector("#log-lines").textContent.includes("GET /healthz")`, "", "", ""},
		{"a terminal", base + "/ns/" + ns + "/pods/web-0/exec?container=app", `document.body.dataset.state === "exec-ready"`, "",
			"terminal-connect", `document.body.dataset.state === "exec"`}, // opened by a link: nothing runs before Connect
	}
	passes := 0
	for _, s := range stops {
		for _, scheme := range []string{"light", "dark"} {
			e.colorScheme(scheme)
			e.open(s.path)
			pollJS(t, e.tab, browserActionTimeout, s.name+" ("+scheme+")", s.ready, e.g.stub)
			if s.then != "" {
				if err := doIn(e.tab, chromedp.Click(chromedp.ID(s.then))); err != nil {
					t.Fatalf("%s: press %s: %v", s.name, s.then, err)
				}
				pollJS(t, e.tab, browserActionTimeout, s.name+" after "+s.then, s.after, e.g.stub)
			}
			passes += e.accessible(s.name + " (" + scheme + ")")
			e.noErrors(s.name + " (" + scheme + ")")
			if s.shot != "" && (scheme == "dark") == (s.shot == "dark") {
				e.screenshot("" + s.shot)
			}
		}
	}
	e.colorScheme("light")

	// From the pod's page (a move within the console), Terminal connects
	// at once: only a page opened by a link waits for Connect.
	e.open(base + "/ns/" + ns + "/pods/web-0")
	pollJS(t, e.tab, browserActionTimeout, "the pod's Terminal action", `document.querySelector('#object-actions[aria-busy="false"] [data-action="exec"]') !== null`, e.g.stub)
	if err := doIn(e.tab, chromedp.Click(chromedp.CSS(`#object-actions [data-action="exec"]`))); err != nil {
		t.Fatalf("click Terminal: %v", err)
	}
	pollJS(t, e.tab, browserActionTimeout, "the terminal connected from the pod's page", `document.body.dataset.state === "exec"`, e.g.stub)
	e.noErrors("the terminal from the pod's page")
	t.Logf("axe-core: %d views × 2 color schemes, %d rule passes in all, no serious or critical violation", len(stops), passes)
}

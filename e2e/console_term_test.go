package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"

	"github.com/keyhole-dev/keyhole/audit"
	"github.com/keyhole-dev/keyhole/internal/idptest"
	"github.com/keyhole-dev/keyhole/internal/kubetest"
	"github.com/keyhole-dev/keyhole/internal/testbed"
)

// TestConsoleTerminal: a pod's log, terminal and attach in the console, in
// real Chromium through the real stub, agent, kube-apiserver (WebSocket
// exec and attach, which kube-apiserver 1.33 translates to SPDY toward the
// node) and nodesim (real commands on a real pty).
//
// Logs: a deep link survives sign-in; seeded lines show; an appended line
// shows (latency measured); container (init container too), previous
// instance, timestamps, tail length, follow and wrap work; a flood of
// lines leaves the page with its bound and says so; the download holds the
// expected bytes. Terminal: a command runs, `stty size` follows a resize,
// a paste cannot end bracketed paste, OSC 52 cannot write the clipboard,
// 24-bit color needs no CSP exception beyond the style nonce, and the exit
// status shows. Attach works. Audit records. A user without create
// pods/exec is not offered a terminal and a crafted WebSocket from the page
// is refused (audited). Signing out in another tab ends the terminal, which
// says so.
func TestConsoleTerminal(t *testing.T) {
	const (
		ns        = "term"
		pod       = "app-0"
		daveEmail = "dave@example.com"
		davePw    = "dave-pw-1"
	)
	e := startConsoleEnv(t, consoleEnvOptions{
		extra: "streams: {recheckInterval: 1s}\n",
		users: []idptest.User{
			{Email: consoleEmail, Password: consolePassword, Groups: []string{"dev"}},
			{Email: daveEmail, Password: davePw, Groups: []string{"dev"}},
		},
	})
	tab, c := e.tab, e.c
	start := time.Now()
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		e.mu.Lock()
		for _, m := range e.messages {
			t.Logf("browser console: %s %s", m.URL, m)
		}
		e.mu.Unlock()
		t.Logf("--- stub log:\n%s\n--- agent log:\n%s", e.g.stub.tail(80), testbed.Tail(filepath.Join(e.g.dir, "agent-c1.log"), 40))
	})

	// carol may read pods, their logs and events (the pod's page shows
	// them), exec and attach in the namespace; dave may get pods, pods/log and pods/exec, which lets a
	// WebSocket exec through a 1.33 API server, but not the agent. (No
	// controller-manager runs, so the aggregated roles "edit" and "view"
	// are empty here.)
	c.EnsureNamespace(t, ns)
	c.Apply(t, `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: term-user}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get, list, watch]}
- {apiGroups: [""], resources: [pods/log], verbs: [get]}
- {apiGroups: [""], resources: [pods/exec, pods/attach], verbs: [get, create]}
- {apiGroups: [""], resources: [events], verbs: [get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: term-no-exec}
rules:
- {apiGroups: [""], resources: [pods, pods/log, pods/exec], verbs: [get]}
`)
	e.bind("User", consoleEmail, "term-user", ns)
	e.bind("User", daveEmail, "term-no-exec", ns)
	createTermPod(t, c, ns, pod, t.TempDir())
	auditFrom := fileSize(t, filepath.Join(e.g.dir, "audit.log"))

	// Seeded logs: the containers, the init container, a previous instance.
	for i := 1; i <= 5; i++ {
		c.AppendLog(t, ns, pod, "app", fmt.Sprintf("seed-%d", i))
	}
	c.AppendLog(t, ns, pod, "sidecar", "sidecar-1")
	c.AppendLog(t, ns, pod, "setup", "setup-done")
	c.AppendLog(t, ns, pod, "app.previous", "previous-1") // nodesim: the previous instance's log

	// 1. The log view by deep link, through sign-in.
	base := fmt.Sprintf("/console/c/%s/ns/%s/pods/%s", e.cluster, ns, pod)
	e.signIn(consoleEmail, consolePassword, base+"/log?container=app")
	lines := func() []string {
		return mustEval[[]string](t, tab, `[...document.querySelectorAll("#log-lines .ln")].map(l => l.textContent)`)
	}
	waitLines := func(what, cond string) {
		t.Helper()
		pollJS(t, tab, browserActionTimeout, what, `(() => { const l = [...document.querySelectorAll("#log-lines .ln")].map(l => l.textContent); return `+cond+`; })()`, e.g.stub)
	}
	pollJS(t, tab, browserActionTimeout, "the log view streaming", `document.body.dataset.state === "log"`, e.g.stub)
	waitLines("the seeded lines", `l.length === 5 && l[4] === "seed-5"`)
	if got := lines(); !slices.Equal(got, []string{"seed-1", "seed-2", "seed-3", "seed-4", "seed-5"}) {
		t.Errorf("the log view shows %q", got)
	}
	if s := mustEval[string](t, tab, `document.getElementById("log-status").textContent`); !strings.Contains(s, "Following the log of app") {
		t.Errorf("the log status: %q", s)
	}
	e.noErrors("log view")
	t.Logf("log view: signed in through the deep link, seeded lines shown (%v since the pod was made)", time.Since(start).Round(time.Millisecond))

	// 2. Appended lines appear; the latency from AppendLog to the line in
	// the page (the page's own clock, through a MutationObserver).
	mustEval[bool](t, tab, `(() => { window.__seen = {};
		new MutationObserver(ms => { for (const m of ms) for (const n of m.addedNodes) {
			const t = n.textContent; if (t && t.startsWith("latency-")) window.__seen[t] = performance.timeOrigin + performance.now(); } })
			.observe(document.getElementById("log-lines"), {childList: true}); return true; })()`)
	var lat []time.Duration
	for i := 1; i <= 10; i++ {
		line := fmt.Sprintf("latency-%d", i)
		sent := time.Now()
		c.AppendLog(t, ns, pod, "app", line)
		pollJS(t, tab, 10*time.Second, line+" in the page", fmt.Sprintf(`window.__seen[%q] !== undefined`, line), e.g.stub)
		at := mustEval[float64](t, tab, fmt.Sprintf(`window.__seen[%q]`, line))
		lat = append(lat, time.Duration(at*float64(time.Millisecond))-time.Duration(sent.UnixNano()))
	}
	slices.Sort(lat)
	t.Logf("log latency, AppendLog to the line in the page (10 lines): p50 %v, max %v (min %v); nodesim polls the file every 20 ms",
		lat[len(lat)/2].Round(100*time.Microsecond), lat[len(lat)-1].Round(100*time.Microsecond), lat[0].Round(100*time.Microsecond))
	if st := mustEval[string](t, tab, `document.getElementById("log-status").textContent`); st != "Following the log of app." {
		t.Logf("the log view's status after the latency lines: %q (the stream broke and was followed again)", st)
	}
	e.screenshot("term-logs")

	// 3. Options: container, init container, previous, timestamps, tail.
	choose := func(id, value string) {
		t.Helper()
		mustEval[bool](t, tab, fmt.Sprintf(`(() => { const s = document.getElementById(%q); s.focus(); s.value = %q;
			s.dispatchEvent(new Event("change", {bubbles: true})); return s.value === %q; })()`, id, value, value))
	}
	click := func(sel string) {
		t.Helper()
		if err := doIn(tab, chromedp.Click(chromedp.CSS(sel))); err != nil {
			t.Fatalf("click %s: %v", sel, err)
		}
	}
	query := func() string { return mustEval[string](t, tab, `location.search`) }
	choose("log-container", "sidecar")
	waitLines("the sidecar's log", `l.length === 1 && l[0] === "sidecar-1"`)
	choose("log-container", "setup")
	waitLines("the init container's log", `l.length === 1 && l[0] === "setup-done"`)
	if q := query(); q != "?container=setup" {
		t.Errorf("the address after choosing the init container: %q", q)
	}
	choose("log-container", "app")
	waitLines("app's log again", `l.length === 15 && l[14] === "latency-10"`)
	click("#log-previous")
	waitLines("the previous instance's log", `l.length === 1 && l[0] === "previous-1"`)
	pollJS(t, tab, 5*time.Second, "the status of a finished log", `document.getElementById("log-status").textContent.includes("not following")`)
	click("#log-previous")
	waitLines("the current instance again", `l.length === 15`)
	choose("log-container", "sidecar")
	waitLines("the sidecar again", `l.length === 1`)
	click("#log-previous")
	pollJS(t, tab, browserActionTimeout, "no previous sidecar", `document.getElementById("log-status").textContent.includes("No previous instance of sidecar")`)
	t.Logf("no previous instance: %q", mustEval[string](t, tab, `document.getElementById("log-status").textContent`))
	e.expectErrors() // the browser logs the 400 as a failed load
	choose("log-container", "app")
	waitLines("app again", `l.length === 15`)
	click("#log-timestamps")
	waitLines("timestamped lines", `l.length === 15 && document.querySelectorAll("#log-lines .ln .ts").length === 15`)
	tsLine := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z seed-1$`)
	if l := lines()[0]; !tsLine.MatchString(l) {
		t.Errorf("a timestamped line: %q", l)
	}
	click("#log-timestamps")
	waitLines("lines without timestamps", `l.length === 15 && l[0] === "seed-1"`)
	var bulk strings.Builder
	for i := 1; i <= 150; i++ {
		fmt.Fprintf(&bulk, "bulk-%03d\n", i)
	}
	c.AppendLog(t, ns, pod, "app", bulk.String())
	waitLines("165 lines", `l.length === 165 && l[164] === "bulk-150"`)
	choose("log-tail", "100")
	waitLines("the last 100 lines", `l.length === 100 && l[0] === "bulk-051" && l[99] === "bulk-150"`)
	if q := query(); q != "?container=app&tail=100" {
		t.Errorf("the address with tail 100: %q", q)
	}
	click("#log-wrap")
	if !mustEval[bool](t, tab, `document.getElementById("log-lines").classList.contains("nowrap") && location.search.includes("wrap=0")`) {
		t.Errorf("unchecking Wrap lines does not stop wrapping")
	}
	click("#log-wrap")
	click("#log-follow")
	pollJS(t, tab, browserActionTimeout, "the log, not followed", `document.getElementById("log-status").textContent.includes("not following") && location.search.includes("follow=0")`)
	click("#log-follow")
	pollJS(t, tab, browserActionTimeout, "the log, followed again", `document.getElementById("log-status").textContent.includes("Following")`)
	e.noErrors("log options")
	t.Logf("log options: containers app, sidecar, init setup; previous; timestamps; tail 100; wrap; follow off and on")

	// 4. The download: the view's selection (the last 100 lines), as a
	// file, never shown in the page.
	dl := t.TempDir()
	if _, err := callIn(tab, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{Behavior: browser.SetDownloadBehaviorBehaviorAllow, DownloadPath: dl}); err != nil {
		t.Fatalf("Browser.setDownloadBehavior: %v", err)
	}
	full, err := os.ReadFile(c.LogPath(ns, pod, "app"))
	if err != nil {
		t.Fatal(err)
	}
	all := strings.SplitAfter(string(full), "\n")
	all = all[:len(all)-1] // after the last newline
	want := strings.Join(all[len(all)-100:], "")
	click("#log-download")
	file := filepath.Join(dl, pod+"-app.log")
	pollTab(t, tab, browserActionTimeout, "the download", func() (bool, error) {
		b, err := os.ReadFile(file)
		return err == nil && len(b) == len(want), nil
	}, e.g.stub)
	if b, _ := os.ReadFile(file); string(b) != want {
		t.Errorf("the download holds %d bytes, want the last 100 lines of the log (%d bytes)", len(b), len(want))
	}
	note := mustEval[string](t, tab, `document.getElementById("log-download-status").textContent`)
	cli := mustEval[string](t, tab, `document.getElementById("log-kubectl-full").textContent`)
	t.Logf("download: %d bytes, as expected; the page says %q; the whole log: %s", len(want), note, cli)
	if !strings.Contains(cli, "logs -n term app-0 -c app > app-0-app.log") {
		t.Errorf("the kubectl command for the whole log: %q", cli)
	}

	e.accessible("log view")
	checkActions(t, e, base, []string{"logs", "exec", "attach"}, nil)

	// 5. A flood: the page keeps its bound and says so.
	e.open(base + "/log?container=app")
	pollJS(t, tab, browserActionTimeout, "the log view again", `document.body.dataset.state === "log"`, e.g.stub)
	choose("log-tail", "all")
	waitLines("the whole log", `l.length === 165`)
	var flood strings.Builder
	const floodN = 12000
	for i := 1; i <= floodN; i++ {
		fmt.Fprintf(&flood, "flood-%05d %s\n", i, strings.Repeat("x", 60))
	}
	floodStart := time.Now()
	c.AppendLog(t, ns, pod, "app", flood.String())
	waitLines("the end of the flood", fmt.Sprintf(`l.length > 0 && l[l.length-1].startsWith("flood-%05d")`, floodN))
	shown := mustEval[int](t, tab, `document.querySelectorAll("#log-lines .ln").length`)
	dropped := mustEval[string](t, tab, `document.getElementById("log-dropped").hidden ? "" : document.getElementById("log-dropped").textContent`)
	t.Logf("flood: %d lines (%d KB) shown to their end in %v; the page holds %d lines and says %q",
		floodN, flood.Len()/1024, time.Since(floodStart).Round(time.Millisecond), shown, dropped)
	if shown != 10000 || !strings.Contains(dropped, "Earlier lines dropped") || !strings.Contains(dropped, "2,165 dropped") {
		t.Errorf("after the flood the page holds %d lines and says %q; want 10000 and the 2,165 dropped", shown, dropped)
	}
	e.noErrors("log flood")

	// 6. The terminal, by deep link: a page opened by a link (from any
	// site) starts nothing until the user presses Connect.
	status := func() string {
		return mustEval[string](t, tab, `document.getElementById("terminal-status").textContent`)
	}
	connectByLink := func(path, mode string) {
		t.Helper()
		from := fileSize(t, filepath.Join(e.g.dir, "audit.log"))
		e.open(path)
		pollJS(t, tab, browserActionTimeout, "the "+mode+" view waiting for Connect", `document.body.dataset.state === "`+mode+`-ready"`, e.g.stub)
		if s := status(); !strings.Contains(s, "Press Connect") {
			t.Errorf("a %s opened by a link says %q before Connect", mode, s)
		}
		for _, ev := range readAudit(t, e.g, from) {
			if (ev.ObjectRef != nil && ev.ObjectRef.Subresource == mode) || strings.Contains(ev.RequestURI, "/"+mode+"?") {
				t.Errorf("a %s opened by a link reached the cluster before Connect: %s %s", mode, ev.Verb, ev.RequestURI)
			}
		}
		if err := doIn(tab, chromedp.Click(chromedp.ID("terminal-connect"))); err != nil {
			t.Fatalf("click Connect: %v", err)
		}
		pollJS(t, tab, browserActionTimeout, "the "+mode+" connected", `document.body.dataset.state === "`+mode+`"`, e.g.stub)
	}
	connectByLink(base+"/exec?container=app", "exec")
	if s := status(); s != "connected (bash)" {
		t.Errorf("the terminal's status: %q", s)
	}
	screen := func() string {
		return mustEval[string](t, tab, `document.querySelector("#terminal .xterm-rows")?.innerText ?? ""`)
	}
	// press presses a key (no text: the terminal's keydown handler makes
	// its bytes), with modifiers (2: Ctrl).
	press := func(key, code string, vk, modifiers int64) {
		t.Helper()
		for _, typ := range []input.DispatchKeyEventType{input.DispatchKeyEventTypeRawKeyDown, input.DispatchKeyEventTypeKeyUp} {
			if _, err := callIn(tab, input.DispatchKeyEvent, input.DispatchKeyEventParams{Type: typ, Key: key, Code: code,
				WindowsVirtualKeyCode: vk, NativeVirtualKeyCode: vk, Modifiers: modifiers}); err != nil {
				t.Fatalf("press %s: %v", key, err)
			}
		}
	}
	// typeIn types s into the terminal: text as a keyboard's input events
	// deliver it (Input.insertText), and each "\r" as the Enter key.
	typeIn := func(s string) {
		t.Helper()
		if err := doIn(tab, chromedp.Focus(chromedp.CSS("#terminal .xterm-helper-textarea"))); err != nil {
			t.Fatalf("focus the terminal: %v", err)
		}
		for i, part := range strings.Split(s, "\r") {
			if i > 0 {
				press("Enter", "Enter", 13, 0)
			}
			if part != "" {
				if _, err := callIn(tab, input.InsertText, input.InsertTextParams{Text: part}); err != nil {
					t.Fatalf("type %q: %v", part, err)
				}
			}
		}
	}
	waitScreen := func(what string, ok func(string) bool) string {
		t.Helper()
		var last string
		pollTab(t, tab, browserActionTimeout, what, func() (bool, error) {
			last = screen()
			return ok(last), nil
		}, e.g.stub)
		return last
	}
	typeIn("echo hello-$((6*7))\r")
	waitScreen("hello-42 in the terminal", func(s string) bool { return strings.Contains(s, "\nhello-42") || strings.HasPrefix(s, "hello-42") })
	t.Logf("terminal: typed echo hello-$((6*7)), read hello-42")

	// Copy: a double click selects the word, Ctrl+Shift+C copies it. (The
	// page may use the clipboard: DevTools grants it, as a user would.)
	origin := e.g.publicURL
	for _, p := range []string{"clipboard-read", "clipboard-write"} {
		if _, err := callIn(tab, browser.SetPermission, browser.SetPermissionParams{Permission: &browser.PermissionDescriptor{Name: p, AllowWithoutSanitization: true},
			Setting: browser.PermissionSettingGranted, Origin: origin}); err != nil {
			t.Fatalf("Browser.setPermission %s: %v", p, err)
		}
	}
	if _, err := callIn(tab, emulation.SetFocusEmulationEnabled, emulation.SetFocusEmulationEnabledParams{Enabled: true}); err != nil {
		t.Fatal(err)
	}
	clipboard := func() string { return mustEval[string](t, tab, `navigator.clipboard.readText()`) }
	box := mustEval[[]float64](t, tab, `(() => { const row = [...document.querySelectorAll("#terminal .xterm-rows > div")].find(r => r.textContent.startsWith("hello-42"));
		const b = row.getBoundingClientRect(); return [b.left + 20, b.top + b.height / 2]; })()`)
	if err := doIn(tab, chromedp.MouseClickXY(box[0], box[1], chromedp.ClickCount(2))); err != nil {
		t.Fatalf("double-click hello-42: %v", err)
	}
	press("C", "KeyC", 67, 2|8)
	pollTab(t, tab, 5*time.Second, "the copied selection", func() (bool, error) { return clipboard() == "hello-42", nil })
	t.Logf("copy: a double click on hello-42 and Ctrl+Shift+C put %q on the clipboard", clipboard())
	// 24-bit color: xterm styles the cell with a style attribute, which
	// the console sets through the CSSOM (no CSP violation, noErrors).
	typeIn(`printf '\e[38;2;255;120;0mtrue%s\e[0m\n' color-ok` + "\r")
	waitScreen("the 24-bit color line", func(s string) bool { return strings.Contains(s, "\ntruecolor-ok") })
	if col := mustEval[string](t, tab, `[...document.querySelectorAll("#terminal .xterm-rows span")].filter(s => s.textContent.includes("truecolor-ok")).map(s => getComputedStyle(s).color).join()`); col != "rgb(255, 120, 0)" {
		t.Errorf("the 24-bit colored text's color: %q, want rgb(255, 120, 0)", col)
	}
	e.screenshot("term-terminal")
	e.noErrors("terminal")
	// xterm's own style elements carry the page's nonce and apply; one
	// without it is refused (the CSP is enforced for styles: the nonce is
	// what lets xterm's through).
	styles := mustEval[[]string](t, tab, `[...document.querySelectorAll("#terminal style")].map(s => s.nonce ? "nonce" : "none")`)
	if len(styles) != 3 || slices.Contains(styles, "none") || mustEval[string](t, tab, `getComputedStyle(document.querySelector("#terminal .xterm-rows span")).display`) != "inline-block" {
		t.Errorf("xterm's style elements: %q, want 3 with the nonce, applied", styles)
	}
	violation := mustEval[string](t, tab, `new Promise(res => {
		document.addEventListener("securitypolicyviolation", ev => res(ev.effectiveDirective), {once: true});
		const st = Document.prototype.createElement.call(document, "style"); st.textContent = "body { color: red }"; document.head.append(st);
		setTimeout(() => res("no violation"), 2000); })`)
	if violation != "style-src-elem" {
		t.Errorf("a style element without the nonce: %q, want refused (style-src-elem)", violation)
	}
	mustEval[bool](t, tab, `(() => { window.__cspViolations = []; return true; })()`)
	e.expectErrors()
	t.Logf("CSP: xterm's %d style elements carry the nonce and apply; a style element without it is refused (%s)", len(styles), violation)
	e.accessible("terminal")

	// 7. Resize: stty size follows the viewport.
	sizes := 0
	size := func() (int, int) {
		t.Helper()
		sizes++
		sizeRE := regexp.MustCompile(fmt.Sprintf(`size%d-(\d+)x(\d+)`, sizes))
		typeIn(fmt.Sprintf("clear; echo size%d-$(stty size | tr ' ' x)\r", sizes))
		s := waitScreen("stty size", func(s string) bool { return sizeRE.MatchString(s) })
		m := sizeRE.FindStringSubmatch(s)
		r, _ := strconv.Atoi(m[1])
		c, _ := strconv.Atoi(m[2])
		return r, c
	}
	rowsShown := func() int {
		return mustEval[int](t, tab, `document.querySelectorAll("#terminal .xterm-rows > div").length`)
	}
	r1, c1 := size()
	if r1 != rowsShown() {
		t.Errorf("stty size says %d rows, the terminal shows %d", r1, rowsShown())
	}
	if _, err := callIn(tab, emulation.SetDeviceMetricsOverride, emulation.SetDeviceMetricsOverrideParams{Width: 1000, Height: 620, DeviceScaleFactor: 1}); err != nil {
		t.Fatal(err)
	}
	pollTab(t, tab, browserActionTimeout, "the terminal to follow the viewport", func() (bool, error) { return rowsShown() < r1, nil })
	r2, c2 := size()
	t.Logf("resize: 1366x800 → 1000x620: stty size %dx%d → %dx%d (rows shown %d)", r1, c1, r2, c2, rowsShown())
	if r2 >= r1 || c2 >= c1 || r2 != rowsShown() {
		t.Errorf("after the resize stty size says %d rows %d columns (before %d %d; shown %d rows)", r2, c2, r1, c1, rowsShown())
	}
	if _, err := callIn(tab, emulation.SetDeviceMetricsOverride, emulation.SetDeviceMetricsOverrideParams{Width: 1366, Height: 800, DeviceScaleFactor: 1}); err != nil {
		t.Fatal(err)
	}
	pollTab(t, tab, browserActionTimeout, "the terminal back to its size", func() (bool, error) { return rowsShown() == r1, nil })

	// 8. Paste cannot end bracketed paste: with bracketed paste on,
	// cat -v shows what the terminal sent. The pasted ESC [ 2 0 1 ~ loses
	// its ESC, so the only end bracket is the terminal's own, after the
	// text. (The text is put on the clipboard, and Ctrl+Shift+V has the
	// browser paste it.)
	typeIn("clear; printf '\\e[?2004h'; echo cat-$((3+4))-ready; cat -v\r")
	waitScreen("cat -v running, bracketed paste on", func(s string) bool { return strings.Contains(s, "cat-7-ready") })
	mustEval[bool](t, tab, `navigator.clipboard.writeText("PASTE\x1b[201~rm -rf /tmp/keyhole-pasted\n").then(() => true)`)
	if err := doIn(tab, chromedp.Focus(chromedp.CSS("#terminal .xterm-helper-textarea"))); err != nil {
		t.Fatal(err)
	}
	press("V", "KeyV", 86, 2|8) // Ctrl+Shift+V: the browser pastes the clipboard
	typeIn("END\r")
	got := waitScreen("cat -v's echo of the paste", func(s string) bool {
		return strings.Contains(s, "^[[200~PASTE") && strings.Contains(s, "^[[201~END")
	})
	if strings.Contains(got, "^[[201~rm") || !strings.Contains(got, "^[[200~PASTE[201~rm -rf /tmp/keyhole-pasted") || !strings.Contains(got, "^[[201~END") {
		t.Errorf("what the shell got from the paste:\n%s\nwant ^[[200~PASTE[201~rm -rf /tmp/keyhole-pasted, then ^[[201~ (the one end bracket) before END", got)
	}
	for _, l := range strings.Split(got, "\n") {
		if strings.Contains(l, "PASTE") || strings.Contains(l, "END") {
			t.Logf("paste, as cat -v read it: %s", strings.TrimRight(l, " \u00a0"))
		}
	}
	press("d", "KeyD", 68, 2) // ^D: cat ends

	// 9. OSC 52 from the container cannot write the clipboard.
	const before = "keyhole-clipboard-before"
	if got := mustEval[string](t, tab, `navigator.clipboard.writeText("`+before+`").then(() => navigator.clipboard.readText())`); got != before {
		t.Fatalf("the clipboard cannot be set and read in this browser: %q", got)
	}
	typeIn("clear; printf '\\e]52;c;%s\\a' $(printf pwned-by-osc52 | base64); echo osc-$((1+1))-done\r")
	waitScreen("the OSC 52 printf's end", func(s string) bool { return strings.Contains(s, "osc-2-done") })
	if got := mustEval[string](t, tab, `navigator.clipboard.readText()`); got != before {
		t.Errorf("after OSC 52 the clipboard holds %q, want %q (unchanged)", got, before)
	}
	t.Logf("OSC 52 printed: the clipboard still holds %q", before)

	// 10. The exit status.
	typeIn("exit 3\r")
	pollJS(t, tab, browserActionTimeout, "the exit status", `document.body.dataset.state === "exec-ended"`, e.g.stub)
	if s := status(); s != "bash exited with status 3" {
		t.Errorf("after exit 3 the status says %q", s)
	}
	waitScreen("the exit in the terminal", func(s string) bool { return strings.Contains(s, "[exited with status 3]") })
	e.noErrors("terminal session")

	// 11. Attach to a container without tty: the view echoes the line and
	// sends it on Enter; the container's cat sends it back.
	connectByLink(base+"/attach?container=sidecar", "attach")
	t.Logf("attach: %q", status())
	typeIn("attach-hello\r")
	waitScreen("the container's answer", func(s string) bool { return strings.Count(s, "attach-hello") == 2 })
	click("#terminal-disconnect")
	pollJS(t, tab, browserActionTimeout, "detached", `document.body.dataset.state === "attach-ended"`, e.g.stub)
	if s := status(); s != "disconnected" {
		t.Errorf("after Disconnect the status says %q", s)
	}
	e.noErrors("attach")

	// 12. Signed out in another tab: the open terminal ends and says so.
	connectByLink(base+"/exec?container=app", "exec")
	typeIn("echo before-$((2+2))-signout\r")
	waitScreen("a command before the sign-out", func(s string) bool { return strings.Contains(s, "before-4-signout") })
	// A third tab follows the log meanwhile.
	logTab := e.b.NewTab(t)
	if err := doIn(logTab, chromedp.Navigate(e.g.publicURL+base+"/log?container=sidecar")); err != nil {
		t.Fatal(err)
	}
	pollJS(t, logTab, browserActionTimeout, "the log followed in a third tab", `document.body.dataset.state === "log"`, e.g.stub)
	other := e.b.NewTab(t)
	if err := doIn(other, chromedp.Navigate(e.console)); err != nil {
		t.Fatal(err)
	}
	pollJS(t, other, browserActionTimeout, "the other tab's Sign out", `document.querySelector("#session form button") !== null`)
	signedOut := time.Now()
	if err := doIn(other, chromedp.Click(chromedp.CSS("#session form button"))); err != nil {
		t.Fatalf("click Sign out in the other tab: %v", err)
	}
	pollJS(t, tab, 30*time.Second, "the terminal to end after the sign-out", `document.body.dataset.state === "exec-ended"`, e.g.stub)
	t.Logf("signed out in another tab: the terminal ended %v after the click and says %q", time.Since(signedOut).Round(time.Millisecond), status())
	if s := status(); !strings.Contains(s, "the browser session ended") || !strings.Contains(s, "Sign in again") {
		t.Errorf("after the sign-out the terminal says %q", s)
	}
	waitScreen("the end in the terminal", func(s string) bool { return strings.Contains(s, "[the browser session ended]") })
	pollJS(t, logTab, 30*time.Second, "the followed log to end after the sign-out", `document.body.dataset.state === "log-ended"`, e.g.stub)
	if s := mustEval[string](t, logTab, `document.getElementById("log-status").textContent`); !strings.Contains(s, "the browser session ended") || !strings.Contains(s, "Sign in again") {
		t.Errorf("after the sign-out the log view says %q", s)
	} else {
		t.Logf("the followed log in the third tab says %q", s)
	}
	e.expectErrors()

	// The audit records so far: the followed log, the exec and attach
	// sessions (start and end), each with carol's browser session.
	var logFollow, execStart, execEnd, attachStart, attachEnd int
	var endings []string
	count := func() {
		logFollow, execStart, execEnd, attachStart, attachEnd, endings = 0, 0, 0, 0, 0, nil
		for _, ev := range readAudit(t, e.g, auditFrom) {
			if ev.ObjectRef == nil || ev.ObjectRef.Name != pod || ev.User.Username != consoleEmail {
				continue
			}
			if ev.Annotations[audit.AnnotationBrowserSession] == "" {
				t.Errorf("record without the browser session: %s %s", ev.Verb, ev.RequestURI)
			}
			switch sub := ev.ObjectRef.Subresource; {
			case sub == "log" && strings.Contains(ev.RequestURI, "follow=true") && ev.Stage == auditv1.StageResponseComplete:
				logFollow++
			case (sub == "exec" || sub == "attach") && ev.Stage == auditv1.StageResponseStarted:
				if sub == "exec" {
					execStart++
				} else {
					attachStart++
				}
			case (sub == "exec" || sub == "attach") && ev.Stage == auditv1.StageResponseComplete && ev.ResponseStatus.Code == 101:
				if sub == "exec" {
					execEnd++
				} else {
					attachEnd++
				}
				endings = append(endings, fmt.Sprintf("%s %s after %s", sub, ev.Annotations[audit.AnnotationEnded], ev.Annotations[audit.AnnotationDuration]))
			}
		}
	}
	pollTab(t, tab, 10*time.Second, "the sessions' audit records", func() (bool, error) {
		count()
		return execEnd == 2 && attachEnd == 1, nil
	})
	t.Logf("audit (carol): %d followed-log records, exec %d started / %d ended, attach %d / %d; endings %q", logFollow, execStart, execEnd, attachStart, attachEnd, endings)
	if logFollow == 0 || execStart != 2 || execEnd != 2 || attachStart != 1 || attachEnd != 1 {
		t.Errorf("audit: want followed logs, 2 exec sessions and 1 attach session, each started and ended")
	}
	if len(endings) == 3 && !strings.HasPrefix(endings[len(endings)-1], "exec "+audit.EndedCredentialRevoked) {
		t.Errorf("the last exec's end record says %q, want it ended as %s (the sign-out)", endings[len(endings)-1], audit.EndedCredentialRevoked)
	}

	// 13. dave may get pods/exec but not create it: the terminal is not
	// offered, the exec view opens no socket, and a crafted WebSocket from
	// the page is refused by the agent (and audited).
	daveFrom := fileSize(t, filepath.Join(e.g.dir, "audit.log"))
	e.signIn(daveEmail, davePw, base+"/exec?container=app")
	pollJS(t, tab, browserActionTimeout, "dave's header", `document.getElementById("session-user")?.textContent === `+jsString(daveEmail))
	pollJS(t, tab, browserActionTimeout, "the exec view's refusal", `document.body.dataset.state === "exec-denied"`, e.g.stub)
	if s := status(); !strings.Contains(s, "Not allowed") || !strings.Contains(s, "pods/exec") {
		t.Errorf("the exec view for dave says %q", s)
	}
	if mustEval[bool](t, tab, `document.querySelector("#terminal .xterm") !== null || typeof window.KeyholeXterm !== "undefined"`) {
		t.Errorf("the exec view for dave loaded the terminal")
	}
	t.Logf("dave's exec view: %q", status())
	e.noErrors("dave's exec view")
	checkActions(t, e, base, []string{"logs"}, []string{"exec", "attach"})
	crafted := mustEval[map[string]any](t, tab, fmt.Sprintf(`new Promise(res => {
		const ws = new WebSocket("wss://" + location.host + %q, ["v5.channel.k8s.io"]); let opened = false;
		ws.onopen = () => { opened = true; ws.close(); }; ws.onclose = ev => res({opened, code: ev.code}); })`,
		fmt.Sprintf("/clusters/%s/api/v1/namespaces/%s/pods/%s/exec?container=app&command=id&stdout=true", e.cluster, ns, pod)))
	e.expectErrors()
	t.Logf("a crafted WebSocket exec from dave's page: %v", crafted)
	if crafted["opened"] != false {
		t.Errorf("a crafted WebSocket exec from dave's page opened: %v", crafted)
	}
	var refusal string
	pollTab(t, tab, 10*time.Second, "the refusal's audit record", func() (bool, error) {
		for _, ev := range readAudit(t, e.g, daveFrom) {
			if ev.ObjectRef != nil && ev.ObjectRef.Subresource == "exec" {
				if ev.User.Username != daveEmail || ev.ResponseStatus.Code != 403 || ev.Annotations[audit.AnnotationBrowserSession] == "" {
					return false, fmt.Errorf("an exec record of dave's: user %q, code %d, %v", ev.User.Username, ev.ResponseStatus.Code, ev.Annotations)
				}
				refusal = fmt.Sprintf("%s %s: %d %s, user %s, browser session %s", ev.Verb, ev.RequestURI, ev.ResponseStatus.Code, ev.ResponseStatus.Reason, ev.User.Username, ev.Annotations[audit.AnnotationBrowserSession])
				return true, nil
			}
		}
		return false, nil
	})
	t.Logf("audit: the crafted exec refused: %s", refusal)
	t.Logf("TestConsoleTerminal's steps took %v", time.Since(start).Round(time.Second))
}

// createTermPod makes a pod with an init container and two containers
// (cat, stdin open, no tty) on the simulated node, and waits until it runs.
// Its HOME is home (nodesim runs commands on the host: a shell there then
// reads no start-up files of the machine's user).
func createTermPod(t *testing.T, c *kubetest.Cluster, ns, name, home string) {
	t.Helper()
	no := false
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			NodeName:                     c.NodeName,
			AutomountServiceAccountToken: &no,
			InitContainers:               []corev1.Container{{Name: "setup", Image: "sim", Command: []string{"true"}}},
			Containers: []corev1.Container{
				{Name: "app", Image: "sim", Command: []string{"cat"}, Stdin: true, Env: []corev1.EnvVar{{Name: "HOME", Value: home}}},
				{Name: "sidecar", Image: "sim", Command: []string{"cat"}, Stdin: true, Env: []corev1.EnvVar{{Name: "HOME", Value: home}}},
			},
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), kubetest.PodTimeout)
	defer cancel()
	if _, err := c.Client().CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s/%s: %v", ns, name, err)
	}
	for {
		got, err := c.Client().CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil && got.Status.Phase == corev1.PodRunning {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pod %s/%s not running: %v", ns, name, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// checkActions opens the pod's page and, once its actions show, checks
// that want are offered and notWant are not. Until the object page lands
// (another part of the console), the address shows "Not found" and there
// is nothing to check.
func checkActions(t *testing.T, e *consoleEnv, base string, want, notWant []string) {
	t.Helper()
	e.open(base)
	pollJS(t, e.tab, browserActionTimeout, "the pod's page", `document.body.dataset.state !== undefined`, e.g.stub)
	if mustEval[string](t, e.tab, `document.body.dataset.state`) == "notfound" {
		t.Logf("the pod's page is not part of this console yet: its actions are not checked here")
		return
	}
	pollJS(t, e.tab, browserActionTimeout, "the pod's actions", `document.querySelector('#object-actions[aria-busy="false"]') !== null`, e.g.stub)
	for _, id := range want {
		if !mustEval[bool](t, e.tab, fmt.Sprintf(`document.querySelector('#object-actions [data-action=%q]') !== null`, id)) {
			t.Errorf("the pod's page does not offer %s", id)
		}
	}
	for _, id := range notWant {
		if mustEval[bool](t, e.tab, fmt.Sprintf(`document.querySelector('#object-actions [data-action=%q]') !== null`, id)) {
			t.Errorf("the pod's page offers %s", id)
		}
	}
	t.Logf("the pod's page offers %q", mustEval[[]string](t, e.tab, `[...document.querySelectorAll("#object-actions [data-action]")].map(a => a.dataset.action)`))
}

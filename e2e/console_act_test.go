package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	appsv1 "k8s.io/api/apps/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/keyhole-dev/keyhole/audit"
	"github.com/keyhole-dev/keyhole/internal/idptest"
	"github.com/keyhole-dev/keyhole/internal/testbed"
)

// TestConsoleActions: acting on objects from the console where RBAC
// allows (issue 11, item 5), in real Chromium through the real stub,
// agent, kube-apiserver, nodesim and Dex. As a user with `edit` in the
// namespace: scale a Deployment to 3, restart it, edit its YAML and apply
// it with server-side apply (kubectl sees the label, managedFields the
// manager keyhole-console), meet a conflict with another field manager in
// the API server's words and force it, have invalid YAML caught in the
// page with its line (nothing sent), delete a pod, and get the API
// server's Forbidden when the permission is gone while the action is still
// shown. As a user with only `view`: nothing is offered, and a crafted
// PATCH and DELETE from the page are refused by the API server. Every
// request is in the stub's audit log with the user and the browser
// session. (No controller-manager runs: what is checked is the spec.)
//
// The test drives the object page's hooks: #object-actions holds the
// actions as [data-action=…] links and buttons, with aria-busy="false"
// once they are known; messages appear in role=status and role=alert.
func TestConsoleActions(t *testing.T) {
	const (
		ns      = "act"
		dave    = "dave@example.com"
		davePw  = "dave-pw-1"
		manager = "keyhole-console"
	)
	start := time.Now()
	e := startConsoleEnv(t, consoleEnvOptions{users: []idptest.User{
		{Email: consoleEmail, Password: consolePassword, Groups: []string{"dev"}},
		{Email: dave, Password: davePw, Groups: []string{"dev"}},
	}})
	cs := e.c.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// Seed: a Deployment, a StatefulSet and a (running) pod.
	e.c.EnsureNamespace(t, ns)
	one := int32(1)
	template := func(app string) corev1.PodTemplateSpec {
		return corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": app}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Image: "sim", Command: []string{"cat"}}}},
		}
	}
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Labels: map[string]string{"app": "web"}},
		Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: template("web")},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.AppsV1().StatefulSets(ns).Create(ctx, &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Labels: map[string]string{"app": "db"}},
		Spec: appsv1.StatefulSetSpec{Replicas: &one, ServiceName: "db", Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			Template: template("db")},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.c.CreatePod(t, ns, "victim", nil)
	aggregateRoles(t, ctx, cs, "view", "edit")
	e.bind("User", consoleEmail, "edit", ns)
	e.bind("User", dave, "view", ns)

	base := "/console/c/" + e.cluster + "/ns/" + ns
	deployPage := base + "/deployments.apps/web"
	apiBase := "/clusters/" + e.cluster

	// actions waits until the object page shows its actions and returns
	// their ids.
	actions := func(what string) []string {
		t.Helper()
		pollJS(t, e.tab, browserActionTimeout, what+": the object's actions",
			`(() => { const a = document.querySelector("#object-actions"); return a !== null && a.getAttribute("aria-busy") === "false"; })()`, e.g.stub)
		return mustEval[[]string](t, e.tab, `[...document.querySelectorAll("#object-actions [data-action]")].map(a => a.dataset.action)`)
	}
	// messages is what the page says (role=status and role=alert).
	messages := func() string {
		return mustEval[string](t, e.tab, `[...document.querySelectorAll("[role=status], [role=alert]")].map(e => e.textContent).join("\n")`)
	}
	waitMessage := func(what, substr string) {
		t.Helper()
		pollTab(t, e.tab, browserActionTimeout, what, func() (bool, error) {
			return strings.Contains(messages(), substr), nil
		}, e.g.stub)
	}
	click := func(what, css string) {
		t.Helper()
		if err := doIn(e.tab, chromedp.Click(chromedp.CSS(css))); err != nil {
			e.e2eFatal("click %s (%s): %v", what, css, err)
		}
	}
	// confirmDialog waits for the action's dialog, checks it names what it
	// will change, and presses its OK button.
	confirmDialog := func(what string, mustSay ...string) {
		t.Helper()
		pollJS(t, e.tab, browserActionTimeout, what+": the dialog", `document.querySelector("dialog.act-dialog[open]") !== null`)
		text := mustEval[string](t, e.tab, `document.querySelector("dialog.act-dialog[open]").textContent`)
		for _, s := range mustSay {
			if !strings.Contains(text, s) {
				t.Errorf("%s: the dialog says %q; want it to say %q", what, text, s)
			}
		}
		click(what+": OK", "dialog.act-dialog[open] .act-ok")
		pollJS(t, e.tab, browserActionTimeout, what+": the dialog to close", `document.querySelector("dialog.act-dialog") === null`)
	}
	has := func(list []string, id string) bool {
		for _, x := range list {
			if x == id {
				return true
			}
		}
		return false
	}
	deployment := func() *appsv1.Deployment {
		t.Helper()
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		wctx, wcancel := context.WithTimeout(ctx, browserActionTimeout)
		defer wcancel()
		if err := testbed.Poll(wctx, 50*time.Millisecond, ok); err != nil {
			e.e2eFatal("waiting for %s: %v", what, err)
		}
	}
	kubectl := func(args ...string) string {
		t.Helper()
		out, err := e.c.Kubectl(t, args...)
		if err != nil {
			t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}

	// trail is the user's requests in the audit log (for failures).
	trail := func(user string) string {
		var b strings.Builder
		for _, ev := range readAudit(t, e.g, 0) {
			if ev.User.Username == user && ev.Stage == auditv1.StageResponseComplete {
				fmt.Fprintf(&b, "\n  %s %s %d %s", ev.Verb, ev.RequestURI, ev.ResponseStatus.Code, ev.ResponseStatus.Message)
			}
		}
		return b.String()
	}

	// 1. The edit user opens the Deployment by a deep link: all four are
	// offered.
	e.signIn(consoleEmail, consolePassword, deployPage)
	opened := time.Now()
	got := actions("the Deployment, as the edit user")
	t.Logf("the Deployment's actions %q shown %v after sign-in landed", got, time.Since(opened).Round(time.Millisecond))
	for _, id := range []string{"scale", "restart", "edit", "delete"} {
		if !has(got, id) {
			t.Fatalf("the edit user is not offered %q on the Deployment: %q; the user's requests:%s", id, got, trail(consoleEmail))
		}
	}
	e.noErrors("the Deployment's page")
	passed := e.accessible("the Deployment's page")

	// 2. Scale to 3.
	click("Scale", `#object-actions [data-action="scale"]`)
	pollJS(t, e.tab, browserActionTimeout, "the scale dialog", `document.activeElement && document.activeElement.id === "act-number"`)
	mustEval[bool](t, e.tab, `(() => { document.getElementById("act-number").select(); return true; })()`)
	if err := doIn(e.tab, chromedp.KeyEvent("3")); err != nil {
		t.Fatal(err)
	}
	e.screenshot("act-scale")
	passed += e.accessible("the scale dialog")
	confirmDialog("scale", `Deployment "web"`, "Replicas")
	waitMessage("the scale's message", "scaled to 3")
	waitFor("spec.replicas = 3", func() bool { d := deployment(); return d.Spec.Replicas != nil && *d.Spec.Replicas == 3 })
	t.Logf("scaled: spec.replicas = 3 (client-go); the page says %q", messages())
	actions("the Deployment, read again after the scale")

	// 3. Restart.
	before := time.Now().Add(-time.Second).Truncate(time.Second)
	click("Restart", `#object-actions [data-action="restart"]`)
	confirmDialog("restart", `Restart Deployment "web"?`, "kubectl.kubernetes.io/restartedAt")
	waitMessage("the restart's message", "restarted at")
	var restartedAt time.Time
	waitFor("the restartedAt annotation", func() bool {
		v := deployment().Spec.Template.Annotations["kubectl.kubernetes.io/restartedAt"]
		ts, err := time.Parse(time.RFC3339, v)
		restartedAt = ts
		return err == nil
	})
	if restartedAt.Before(before) || restartedAt.After(time.Now().Add(time.Second)) {
		t.Errorf("restartedAt %v is not the time of the click (after %v)", restartedAt, before)
	}
	t.Logf("restarted: the pod template's restartedAt is %s", restartedAt.Format(time.RFC3339))
	actions("the Deployment, read again after the restart")
	e.noErrors("scale and restart")

	// 4. Edit YAML: add a label and apply.
	click("Edit YAML", `#object-actions [data-action="edit"]`)
	pollJS(t, e.tab, browserActionTimeout, "the edit view",
		`location.search === "?tab=edit" && document.getElementById("edit-yaml") !== null && document.getElementById("edit-yaml").value.includes("name: web") && document.getElementById("edit-yaml").getAttribute("aria-busy") === "false"`, e.g.stub)
	text := mustEval[string](t, e.tab, `document.getElementById("edit-yaml").value`)
	for _, noise := range []string{"managedFields", "resourceVersion", "uid:", "creationTimestamp", "\nstatus:"} {
		if strings.Contains(text, noise) {
			t.Errorf("the editor shows %q:\n%s", noise, text)
		}
	}
	if !strings.Contains(text, "replicas: 3") || !strings.Contains(text, "kubectl.kubernetes.io/restartedAt") {
		t.Errorf("the editor does not show the scaled, restarted Deployment:\n%s", text)
	}
	// typeAt puts the cursor at byte i of the editor's text (ASCII) and
	// types keys there, as a person would.
	typeAt := func(from, to int, keys string) {
		t.Helper()
		mustEval[bool](t, e.tab, fmt.Sprintf(`(() => { const a = document.getElementById("edit-yaml"); a.focus(); a.setSelectionRange(%d, %d); return true; })()`, from, to))
		if err := doIn(e.tab, chromedp.KeyEvent(keys)); err != nil {
			t.Fatal(err)
		}
	}
	labels := strings.Index(text, "\n  labels:\n")
	if labels < 0 {
		t.Fatalf("no metadata.labels in the editor:\n%s", text)
	}
	at := labels + len("\n  labels:\n")
	typeAt(at, at, "    tier: frontend\n")
	mustEval[bool](t, e.tab, `(() => { document.getElementById("edit-yaml").scrollTop = 0; return true; })()`) // for the screenshot: the new label in view
	e.screenshot("act-edit")
	passed += e.accessible("the edit view")
	e.colorScheme("dark")
	passed += e.accessible("the edit view, dark")
	e.colorScheme("light")
	click("Apply", "#edit-apply")
	waitMessage("the apply's message", "Applied: Deployment \"web\"")
	if v := kubectl("get", "deployment", "web", "-n", ns, "-o", "jsonpath={.metadata.labels.tier}"); v != "frontend" {
		t.Errorf("kubectl sees label tier=%q after the apply, want frontend", v)
	}
	applied := false
	for _, mf := range deployment().ManagedFields {
		if mf.Manager == manager && mf.Operation == metav1.ManagedFieldsOperationApply && strings.Contains(string(mf.FieldsV1.Raw), `"f:tier"`) {
			applied = true
		}
	}
	if !applied {
		t.Errorf("managedFields have no Apply by %s owning the label: %+v", manager, deployment().ManagedFields)
	}
	t.Logf("applied: kubectl sees tier=frontend; managedFields: %s (Apply) owns it", manager)

	// 5. Invalid YAML is caught in the page, with its line; nothing is sent.
	text = mustEval[string](t, e.tab, `document.getElementById("edit-yaml").value`)
	at = strings.Index(text, "\n  labels:\n") + len("\n  labels:\n")
	badLine := strings.Count(text[:at], "\n") + 1
	mustEval[bool](t, e.tab, `(() => { window.__patches = 0; const f = window.fetch; window.fetch = (u, i) => { if (i && i.method === "PATCH") window.__patches++; return f(u, i); }; return true; })()`)
	typeAt(at, at, "    broken: x: y\n")
	invalidFrom := fileSize(t, e.g.dir+"/audit.log")
	click("Apply (invalid YAML)", "#edit-apply")
	waitMessage("the YAML error", "Nothing was sent")
	alert := mustEval[string](t, e.tab, `document.getElementById("edit-error").textContent`)
	if want := fmt.Sprintf("at line %d, column", badLine); !strings.Contains(alert, want) {
		t.Errorf("the YAML error says %q; want it to name %q", alert, want)
	}
	if n := mustEval[int](t, e.tab, `window.__patches`); n != 0 {
		t.Errorf("the page sent %d PATCH requests for invalid YAML", n)
	}
	t.Logf("invalid YAML: %q", alert)

	// 6. A conflict: another field manager owns a label the user changes.
	if out, err := e.c.KubectlInput(t, strings.NewReader(fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: %s, labels: {owner: other}}
`, ns)), "apply", "--server-side", "--field-manager=other", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply --server-side --field-manager=other: %v\n%s", err, out)
	}
	click("Reload", "#edit-reload")
	confirmDialog("discard the edits", "Discard your changes?")
	pollJS(t, e.tab, browserActionTimeout, "the reloaded text", `document.getElementById("edit-yaml").value.includes("owner: other") && !document.getElementById("edit-yaml").value.includes("broken")`)
	text = mustEval[string](t, e.tab, `document.getElementById("edit-yaml").value`)
	i := strings.Index(text, "owner: other")
	typeAt(i+len("owner: "), i+len("owner: other"), "console")
	// The API server's words for this conflict, asked with a dry run.
	_, conflict := cs.AppsV1().Deployments(ns).Patch(ctx, "web", types.ApplyPatchType,
		[]byte(`{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","labels":{"owner":"console"}}}`),
		metav1.PatchOptions{FieldManager: manager, DryRun: []string{metav1.DryRunAll}})
	if !apierrors.IsConflict(conflict) {
		t.Fatalf("a dry-run apply of owner=console: %v, want a conflict", conflict)
	}
	click("Apply (conflict)", "#edit-apply")
	pollJS(t, e.tab, browserActionTimeout, "the conflict and its force button", `document.getElementById("edit-force") !== null`)
	shown := mustEval[string](t, e.tab, `document.querySelector("#edit-error > p").textContent`)
	if shown != conflict.Error() {
		t.Errorf("the page shows the conflict as %q; the API server words it %q", shown, conflict.Error())
	}
	if label := mustEval[string](t, e.tab, `document.getElementById("edit-force").textContent`); label != "Apply anyway (force)" {
		t.Errorf("the force button says %q", label)
	}
	t.Logf("conflict shown as the API server words it: %q", shown)
	e.screenshot("act-conflict")
	passed += e.accessible("the conflict")
	e.expectErrors() // the 409 is a failed load in the console
	click("Apply anyway (force)", "#edit-force")
	waitMessage("the forced apply's message", "Applied (forced)")
	if v := kubectl("get", "deployment", "web", "-n", ns, "-o", "jsonpath={.metadata.labels.owner}"); v != "console" {
		t.Errorf("kubectl sees owner=%q after the forced apply, want console", v)
	}
	for _, mf := range deployment().ManagedFields {
		if mf.Manager == "other" && strings.Contains(string(mf.FieldsV1.Raw), `"f:owner"`) {
			t.Errorf("after the forced apply, %q still owns the label: %s", mf.Manager, mf.FieldsV1.Raw)
		}
	}
	e.noErrors("the forced apply")

	// 7. Delete the pod.
	e.open(base + "/pods/victim")
	got = actions("the pod")
	if !has(got, "delete") || !has(got, "edit") || has(got, "scale") || has(got, "restart") {
		t.Errorf("the pod offers %q; want delete and edit, no scale or restart", got)
	}
	click("Delete", `#object-actions [data-action="delete"]`)
	pollJS(t, e.tab, browserActionTimeout, "the delete dialog", `document.querySelector("dialog.act-dialog[open]") !== null`)
	if f := mustEval[string](t, e.tab, `document.activeElement.textContent`); f != "Cancel" {
		t.Errorf("the delete dialog opens with the focus on %q, not Cancel", f)
	}
	e.colorScheme("dark")
	passed += e.accessible("the delete dialog, dark")
	e.colorScheme("light")
	confirmDialog("delete the pod", `Delete Pod "victim"?`, `namespace "act"`)
	pollTab(t, e.tab, browserActionTimeout, "the deletion's message", func() (bool, error) {
		m := messages()
		return strings.Contains(m, `Pod "victim" is terminating`) || strings.Contains(m, `Pod "victim" deleted`), nil
	}, e.g.stub)
	waitFor("the pod gone or terminating", func() bool {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "victim", metav1.GetOptions{})
		return apierrors.IsNotFound(err) || (err == nil && p.DeletionTimestamp != nil)
	})
	t.Logf("deleted: the page says %q", messages())
	e.expectErrors() // the page reads the deleted pod again: a 404

	// 8. The permission goes while the action is still shown: the API
	// server refuses, and the page shows its words.
	e.open(base + "/statefulsets.apps/db")
	got = actions("the StatefulSet")
	for _, id := range []string{"scale", "restart", "edit", "delete"} {
		if !has(got, id) {
			t.Errorf("the edit user is not offered %q on the StatefulSet: %q", id, got)
		}
	}
	if err := cs.RbacV1().RoleBindings(ns).Delete(ctx, "carol-example-com-edit", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("RBAC to refuse carol's delete", func() bool {
		r, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
			User: consoleEmail, ResourceAttributes: &authzv1.ResourceAttributes{Verb: "delete", Group: "apps", Resource: "statefulsets", Namespace: ns, Name: "db"},
		}}, metav1.CreateOptions{})
		return err == nil && !r.Status.Allowed
	})
	click("Delete (no longer allowed)", `#object-actions [data-action="delete"]`)
	confirmDialog("delete the StatefulSet", `Delete StatefulSet "db"?`)
	forbidden := fmt.Sprintf(`statefulsets.apps "db" is forbidden: User "%s" cannot delete resource "statefulsets" in API group "apps" in the namespace "%s"`, consoleEmail, ns)
	waitMessage("the API server's Forbidden", forbidden)
	if _, err := cs.AppsV1().StatefulSets(ns).Get(ctx, "db", metav1.GetOptions{}); err != nil {
		t.Errorf("the StatefulSet after the refused delete: %v", err)
	}
	t.Logf("refused: the page says %q", forbidden)
	e.expectErrors()

	// 9. The view user: nothing offered; a crafted attempt is refused.
	if _, err := callIn(e.tab, network.ClearBrowserCookies, cdp.Empty{}); err != nil {
		t.Fatal(err)
	}
	e.signIn(dave, davePw, deployPage)
	if got := actions("the Deployment, as the view user"); len(got) != 0 {
		t.Errorf("the view user is offered %q on the Deployment", got)
	}
	e.open(base + "/statefulsets.apps/db")
	if got := actions("the StatefulSet, as the view user"); len(got) != 0 {
		t.Errorf("the view user is offered %q on the StatefulSet", got)
	}
	// A deep link to the edit view says why there is nothing to edit.
	e.open(deployPage + "?tab=edit")
	pollJS(t, e.tab, browserActionTimeout, "the edit view, as the view user", `document.getElementById("edit-not-offered") !== null`, e.g.stub)
	if mustEval[bool](t, e.tab, `document.getElementById("edit-yaml") !== null`) {
		t.Errorf("the view user is shown the editor")
	}
	e.noErrors("the view user's pages")
	crafted := func(method, path, contentType, body string) fetched {
		t.Helper()
		return mustEval[fetched](t, e.tab, fmt.Sprintf(`fetch(%s, {method: %s, headers: {"X-Keyhole-Console": "1", "Content-Type": %s}, body: %s}).then(async r => ({status: r.status, body: await r.text()}))`,
			jsString(path), jsString(method), jsString(contentType), jsString(body)))
	}
	patch := crafted("PATCH", apiBase+"/apis/apps/v1/namespaces/"+ns+"/deployments/web/scale?fieldManager="+manager, "application/merge-patch+json", `{"spec":{"replicas":7}}`)
	wantPatch := fmt.Sprintf(`deployments.apps "web" is forbidden: User "%s" cannot patch resource "deployments/scale" in API group "apps" in the namespace "%s"`, dave, ns)
	if patch.Status != 403 || !strings.Contains(statusText(patch.Body), wantPatch) {
		t.Errorf("the view user's crafted scale: %d %s; want 403 %q", patch.Status, patch.Body, wantPatch)
	}
	del := crafted("DELETE", apiBase+"/apis/apps/v1/namespaces/"+ns+"/statefulsets/db", "application/json", `{}`)
	if del.Status != 403 || !strings.Contains(statusText(del.Body), `cannot delete resource "statefulsets"`) {
		t.Errorf("the view user's crafted delete: %d %s; want 403", del.Status, del.Body)
	}
	t.Logf("crafted by the view user: PATCH %d %s; DELETE %d %s", patch.Status, statusText(patch.Body), del.Status, statusText(del.Body))
	e.expectErrors()
	if d := deployment(); *d.Spec.Replicas != 3 {
		t.Errorf("the crafted scale changed spec.replicas to %d", *d.Spec.Replicas)
	}

	// 10. The audit log: every action, with its user and browser session.
	type want struct {
		what, user, verb, resource, sub, name string
		code                                  int32
		query                                 string
	}
	wants := []want{
		{"scale", consoleEmail, "patch", "deployments", "scale", "web", 200, "fieldManager=" + manager},
		{"restart", consoleEmail, "patch", "deployments", "", "web", 200, "fieldManager=" + manager},
		{"apply", consoleEmail, "patch", "deployments", "", "web", 200, "fieldManager=" + manager},
		{"the conflict", consoleEmail, "patch", "deployments", "", "web", 409, "fieldManager=" + manager},
		{"the forced apply", consoleEmail, "patch", "deployments", "", "web", 200, "force=true"},
		{"the pod's deletion", consoleEmail, "delete", "pods", "", "victim", 200, ""},
		{"the refused deletion", consoleEmail, "delete", "statefulsets", "", "db", 403, ""},
		{"the view user's crafted scale", dave, "patch", "deployments", "scale", "web", 403, ""},
		{"the view user's crafted delete", dave, "delete", "statefulsets", "", "db", 403, ""},
	}
	matches := func(ev auditv1.Event, w want) bool {
		r := ev.ObjectRef
		return ev.Stage == auditv1.StageResponseComplete && r != nil && ev.User.Username == w.user && ev.Verb == w.verb &&
			r.Resource == w.resource && r.Subresource == w.sub && r.Name == w.name && r.Namespace == ns &&
			ev.ResponseStatus.Code == w.code && strings.Contains(ev.RequestURI, w.query)
	}
	// The actions happened one after the other, so their records are in
	// that order: each want takes the first matching record after the
	// previous one's (the restart and the apply look alike otherwise).
	var found []auditv1.Event
	pollTab(t, e.tab, browserActionTimeout, "the audit records of the actions", func() (bool, error) {
		evs := readAudit(t, e.g, 0)
		found = found[:0]
		next := 0
		for _, w := range wants {
			i := next
			for i < len(evs) && !matches(evs[i], w) {
				i++
			}
			if i == len(evs) {
				return false, fmt.Errorf("no record of %s after the previous action's", w.what)
			}
			found = append(found, evs[i])
			next = i + 1
		}
		return true, nil
	}, e.g.stub)
	sessions := map[string]string{}
	for i, w := range wants {
		ev := found[i]
		s := ev.Annotations[audit.AnnotationBrowserSession]
		if s == "" {
			t.Errorf("the record of %s has no %s annotation", w.what, audit.AnnotationBrowserSession)
		} else if prev, ok := sessions[w.user]; ok && prev != s {
			t.Errorf("the record of %s is from session %s; the user's other actions from %s", w.what, s, prev)
		}
		sessions[w.user] = s
		t.Logf("audit: %s: %s %s %d by %s, session %s", w.what, ev.Verb, ev.RequestURI, ev.ResponseStatus.Code, ev.User.Username, s)
	}
	if sessions[consoleEmail] == sessions[dave] {
		t.Errorf("both users' records carry the same browser session %q", sessions[dave])
	}
	// The invalid YAML sent nothing: the first PATCH of the Deployment
	// after it is the conflict.
	for _, ev := range readAudit(t, e.g, invalidFrom) {
		if ev.Verb == "patch" && ev.ObjectRef != nil && ev.ObjectRef.Name == "web" && ev.Stage == auditv1.StageResponseComplete {
			if ev.ResponseStatus.Code != 409 {
				t.Errorf("the first PATCH after the invalid YAML is %s %d, not the conflict's 409", ev.RequestURI, ev.ResponseStatus.Code)
			}
			break
		}
	}
	// SelfSubjectAccessReviews the pages asked for the edit user.
	ssar := 0
	for _, ev := range readAudit(t, e.g, 0) {
		if ev.User.Username == consoleEmail && ev.ObjectRef != nil && ev.ObjectRef.Resource == "selfsubjectaccessreviews" && ev.Stage == auditv1.StageResponseComplete {
			ssar++
		}
	}
	t.Logf("SelfSubjectAccessReviews sent for the edit user over 3 object pages (some repeated after the 30 s cache or a refusal): %d", ssar)
	t.Logf("axe-core WCAG 2 A/AA: %d rule passes over 6 checks (pages, dialogs, light and dark), no serious or critical violation reported above", passed)
	t.Logf("TestConsoleActions took %v", time.Since(start).Round(time.Millisecond))
}

// aggregateRoles does what kube-controller-manager's ClusterRole
// aggregation controller would (the test control plane runs no
// controller-manager): it fills each aggregated ClusterRole ("view", then
// "edit", which takes view's rules) with the rules of the ClusterRoles its
// aggregationRule selects. The roles are then the cluster's own view and
// edit.
func aggregateRoles(t *testing.T, ctx context.Context, cs kubernetes.Interface, names ...string) {
	t.Helper()
	for _, name := range names {
		role, err := cs.RbacV1().ClusterRoles().Get(ctx, name, metav1.GetOptions{})
		if err != nil || role.AggregationRule == nil {
			t.Fatalf("ClusterRole %s: %v (aggregation rule %v)", name, err, role.AggregationRule)
		}
		role.Rules = nil
		for _, sel := range role.AggregationRule.ClusterRoleSelectors {
			ls, err := metav1.LabelSelectorAsSelector(&sel)
			if err != nil {
				t.Fatal(err)
			}
			parts, err := cs.RbacV1().ClusterRoles().List(ctx, metav1.ListOptions{LabelSelector: ls.String()})
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range parts.Items {
				if p.Name != name && !ls.Empty() && ls.Matches(labels.Set(p.Labels)) {
					role.Rules = append(role.Rules, p.Rules...)
				}
			}
		}
		if _, err := cs.RbacV1().ClusterRoles().Update(ctx, role, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("fill ClusterRole %s: %v", name, err)
		}
		t.Logf("ClusterRole %s: %d rules aggregated", name, len(role.Rules))
	}
}

// A minimal object page, registered only when no other module has
// registered the "object" view (the browse part's object page replaces it
// whichever is imported first): the object's name and state, its actions
// in #object-actions (aria-busy until they are known), their messages
// (role=status, role=alert), its YAML, and the tabs other modules
// register (?tab=edit). It keeps acting on objects usable on its own.

import { getJSON, messageOf } from "./api";
import { groupVersionOf, objectPath, renderActions, showIn } from "./actions";
import { toYAML } from "./edit";
import { age, el } from "./dom";
import { formatRes, href, link, type Route } from "./router";
import { objectTab, objectTabs, registerView, viewFor, type KubeObject, type ObjectContext, type ViewContext } from "./views";

async function objectView(ctx: ViewContext): Promise<void> {
  const r = ctx.route as Extract<Route, { view: "object" }>;
  const self = href(r);
  const trail: [string, string?][] = [[r.cluster, href({ view: "cluster", cluster: r.cluster })]];
  if (r.namespace) trail.push([r.namespace, href({ view: "namespace", cluster: r.cluster, namespace: r.namespace })]);
  trail.push([formatRes(r.res), href({ view: "list", cluster: r.cluster, namespace: r.namespace, res: r.res })], [r.name]);
  ctx.crumbs(trail);
  ctx.setTitle(r.name);

  const gv = await groupVersionOf(r.cluster, r.res.group);
  const path = objectPath(r, gv);
  const title = el("h1", {}, r.name);
  const state = el("p", { id: "object-state", class: "muted" });
  const actions = el("div", { id: "object-actions", class: "act-actions", role: "group", "aria-label": "Actions", "aria-busy": "true" });
  const status = el("div", { id: "object-status", role: "status", class: "act-status" });
  const alert = el("div", { id: "object-error", role: "alert", class: "act-alert" });
  const tabs = el("nav", { class: "act-tabs", "aria-label": "Views of the object" });
  const panel = el("section", { id: "object-panel" });
  ctx.main.replaceChildren(title, state, actions, status, alert, tabs, panel);
  const show = showIn(status, alert);
  const tab = ctx.params.get("tab") ?? "";

  let first = true;
  const read = async (): Promise<void> => {
    // Busy from the moment the object is read again (after an action).
    actions.setAttribute("aria-busy", "true");
    let obj: KubeObject;
    try {
      obj = await getJSON<KubeObject>(path, ctx.signal);
    } catch (e) {
      if (ctx.signal.aborted) return;
      state.textContent = messageOf(e);
      actions.replaceChildren();
      actions.setAttribute("aria-busy", "false");
      return;
    }
    const o: ObjectContext = {
      cluster: r.cluster, namespace: r.namespace, res: r.res, name: r.name, object: obj, signal: ctx.signal,
      changed: () => void read(),
    };
    title.textContent = `${obj.kind ?? formatRes(r.res)} ${r.name}`;
    const words = [r.namespace ? `Namespace ${r.namespace}` : "Cluster-scoped", `created ${age(obj.metadata.creationTimestamp)} ago`];
    if (obj.metadata.deletionTimestamp) words.push("Terminating");
    else if (typeof obj.spec?.replicas === "number") words.push(`${obj.spec.replicas} desired ${obj.spec.replicas === 1 ? "replica" : "replicas"}`);
    state.textContent = words.join(" · ");
    await renderActions(actions, o, show);
    if (!first) return;
    first = false;
    const avail = await Promise.all(objectTabs().map(async (t) => ((await t.available?.(o)) ?? true) ? t : null));
    tabs.replaceChildren(
      link(self, "YAML", tab === "" ? { "aria-current": "page" } : {}),
      ...avail.filter((t) => t !== null).map((t) => link(`${self}?tab=${encodeURIComponent(t.id)}`, t.label, t.id === tab ? { "aria-current": "page" } : {})));
    const t = objectTab(tab);
    if (t) await t.render(o, panel);
    else panel.replaceChildren(el("h2", {}, "YAML"), el("pre", { class: "act-yaml-view", tabindex: "0" }, toYAML(withoutManagedFields(obj))));
  };
  await read();
}

function withoutManagedFields(obj: KubeObject): KubeObject {
  const o = structuredClone(obj);
  delete o.metadata.managedFields;
  return o;
}

if (!viewFor("object")) registerView("object", objectView);

// The namespace view (/console/c/{cluster}/ns/{ns}): the namespace's
// workloads with their status, its pods and its recent Events, all live,
// and a link to every namespaced kind the cluster offers.

import { messageOf } from "../api";
import { el } from "../dom";
import { formatRes, href, link, type Route } from "../router";
import { registerView } from "../views";
import { listable } from "./clusterview";
import { LiveTable } from "./livetable";
import { pluralTitle, searchBox, titles } from "./names";
import { builtin, kinds, ref, type Kind } from "./resources";

type NamespaceRoute = Extract<Route, { view: "namespace" }>;

const WORKLOADS: [string, string][] = [
  ["deployments", "apps"], ["statefulsets", "apps"], ["daemonsets", "apps"], ["jobs", "batch"], ["cronjobs", "batch"],
];

registerView("namespace", (ctx) => {
  const r = ctx.route as NamespaceRoute;
  ctx.setTitle(`${r.namespace} · ${r.cluster}`);
  ctx.crumbs([[r.cluster, href({ view: "cluster", cluster: r.cluster })], [r.namespace]]);
  const q = ctx.params.get("q") ?? "";
  const tables: LiveTable[] = [];
  const section = (k: Kind, rows: number, opts: Partial<ConstructorParameters<typeof LiveTable>[0]> = {}) => {
    const id = `ns-${k.resource}`;
    const t = new LiveTable({ cluster: r.cluster, kind: k, namespace: r.namespace, signal: ctx.signal,
      caption: `${pluralTitle(k)} in ${r.namespace}`, rows, tableId: `${id}-table`, ...opts });
    tables.push(t);
    return el("section", { id, class: "ns-part", "aria-labelledby": `${id}-title` },
      el("h2", { id: `${id}-title` }, link(href({ view: "list", cluster: r.cluster, namespace: r.namespace, res: ref(k) }), pluralTitle(k))),
      t.root);
  };
  const workloads = WORKLOADS.map(([resource, group]) => section(builtin({ resource, group })!, 6));
  const pods = section(builtin({ resource: "pods", group: "" })!, 12, {
    onFirst: () => { document.body.dataset.state = "namespace"; },
  });
  const events = section(builtin({ resource: "events", group: "" })!, 8, { newestFirst: true, noun: ["event", "events"] });
  const nav = el("nav", { class: "kind-links", "aria-label": `Kinds in ${r.namespace}` }, el("span", { class: "muted" }, "Loading kinds…"));
  const search = searchBox("browse-search", "Filter", "name or label (app=web)", q, (v) => { for (const t of tables) t.setQuery(v); });
  ctx.main.replaceChildren(el("section", { "aria-labelledby": "namespace-title" },
    el("h1", { id: "namespace-title" }, `Namespace ${r.namespace}`),
    nav, search,
    el("h2", { class: "group-title" }, "Workloads"),
    el("div", { class: "ns-grid" }, ...workloads),
    pods, events));
  for (const t of tables) t.start(q);
  kinds(r.cluster).then(({ kinds: ks }) => {
    if (ctx.signal.aborted) return;
    const names = titles(listable(ks).filter((k) => k.namespaced));
    const ns = [...names.keys()].sort((a, b) => names.get(a)!.localeCompare(names.get(b)!));
    nav.replaceChildren(el("h2", { class: "visually-hidden" }, "Kinds"), el("ul", {}, ...ns.map((k) =>
      el("li", { "data-res": formatRes(ref(k)) }, link(href({ view: "list", cluster: r.cluster, namespace: r.namespace, res: ref(k) }), names.get(k)!, { title: formatRes(ref(k)) })))));
  }, (e: unknown) => {
    if (!ctx.signal.aborted) nav.replaceChildren(el("span", { class: "problem" }, `Discovery failed: ${messageOf(e)}`));
  });
});

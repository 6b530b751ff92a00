// The cluster view (/console/c/{cluster}): its namespaces (live) and every
// kind of resource its API server offers (discovery, CRDs included), the
// cluster-scoped ones (Nodes, Namespaces, CRDs …) and the namespaced ones
// (listed across all namespaces from here). One filter (?q=) narrows both.

import { messageOf } from "../api";
import { el } from "../dom";
import { formatRes, href, link, type Route } from "../router";
import { registerView } from "../views";
import { LiveTable, parseQuery } from "./livetable";
import { pluralTitle, searchBox, titles } from "./names";
import { builtin, kinds, ref, type Kind } from "./resources";

type ClusterRoute = Extract<Route, { view: "cluster" }>;

// kindsTable lists kinds; words filter by kind, resource, group and short
// names.
export function kindsTable(cluster: string, list: Kind[], caption: string, id: string, namespace?: string): { root: HTMLElement; filter(q: string): void } {
  const tbody = el("tbody");
  const count = el("p", { class: "muted", role: "status" });
  const sorted = [...list].sort((a, b) => (a.group === b.group ? a.kind.localeCompare(b.kind) : a.group === "" ? -1 : b.group === "" ? 1 : a.group.localeCompare(b.group)));
  const names = titles(list);
  const rows = sorted.map((k) => {
    const res = formatRes(ref(k));
    const tr = el("tr", { "data-res": res },
      el("th", { scope: "row" }, link(href({ view: "list", cluster, namespace: k.namespaced ? namespace : undefined, res: ref(k) }), names.get(k) ?? pluralTitle(k))),
      el("td", {}, el("code", {}, res)),
      el("td", {}, k.group ? `${k.group}/${k.version}` : k.version),
      el("td", {}, k.shortNames.join(", ")));
    const hay = [k.kind, res, k.group, ...k.shortNames, ...k.categories].join(" ").toLowerCase();
    return { tr, hay };
  });
  const filter = (q: string) => {
    const { words } = parseQuery(q);
    const shown = rows.filter((r) => words.every((w) => r.hay.includes(w)));
    tbody.replaceChildren(...shown.map((r) => r.tr));
    count.textContent = shown.length === rows.length ? `${rows.length} kinds.` : `${shown.length} of ${rows.length} kinds match.`;
  };
  const root = el("div", { class: "kinds" }, count, el("div", { class: "table-scroll" }, el("table", { id, class: "kinds-table" },
    el("caption", { class: "visually-hidden" }, caption),
    el("thead", {}, el("tr", {}, ...["Kind", "Resource", "API version", "Short names"].map((h) => el("th", { scope: "col" }, h)))),
    tbody)));
  return { root, filter };
}

// listable keeps the kinds one can list (not reviews, bindings, tokens …).
export function listable(ks: Kind[]): Kind[] {
  return ks.filter((k) => k.verbs.includes("list"));
}

registerView("cluster", (ctx) => {
  const r = ctx.route as ClusterRoute;
  ctx.setTitle(r.cluster);
  ctx.crumbs([[r.cluster]]);
  const q = ctx.params.get("q") ?? "";
  const nsTable = new LiveTable({
    cluster: r.cluster, kind: builtin({ resource: "namespaces", group: "" })!, signal: ctx.signal,
    caption: `Namespaces of ${r.cluster}`, tableId: "namespace-table", summaryId: "namespace-summary", rows: 12,
    hrefFor: (row) => href({ view: "namespace", cluster: r.cluster, namespace: row.name }),
    onFirst: () => { document.body.dataset.state = "cluster"; },
  });
  const clusterKinds = el("div", {}, el("p", { class: "muted" }, "Asking the API server what it offers…"));
  const nsKinds = el("div", {});
  let filters: ((q: string) => void)[] = [];
  const search = searchBox("browse-search", "Filter", "name, label (app=web) or kind", q, (v) => {
    nsTable.setQuery(v);
    for (const f of filters) f(v);
  }, "namespace-table");
  ctx.main.replaceChildren(el("section", { "aria-labelledby": "cluster-title" },
    el("h1", { id: "cluster-title" }, `Cluster ${r.cluster}`),
    search,
    el("section", { "aria-labelledby": "ns-title" }, el("h2", { id: "ns-title" }, "Namespaces"), nsTable.root),
    el("section", { "aria-labelledby": "ck-title" }, el("h2", { id: "ck-title" }, "Cluster-scoped kinds"), clusterKinds),
    el("section", { "aria-labelledby": "nk-title" }, el("h2", { id: "nk-title" }, "Namespaced kinds"),
      el("p", { class: "muted" }, "Each lists the kind across all namespaces."), nsKinds)));
  nsTable.start(q);
  kinds(r.cluster, true).then(({ kinds: ks, mode }) => {
    if (ctx.signal.aborted) return;
    const all = listable(ks);
    const c = kindsTable(r.cluster, all.filter((k) => !k.namespaced), "Cluster-scoped kinds", "cluster-kinds");
    const n = kindsTable(r.cluster, all.filter((k) => k.namespaced), "Namespaced kinds", "namespaced-kinds");
    clusterKinds.replaceChildren(c.root);
    nsKinds.replaceChildren(n.root, el("p", { class: "muted" }, mode === "aggregated" ? "From aggregated discovery." : "From discovery (legacy documents)."));
    filters = [c.filter, n.filter];
    for (const f of filters) f(q);
  }, (e: unknown) => {
    if (ctx.signal.aborted) return;
    clusterKinds.replaceChildren(el("p", { class: "problem", role: "alert" }, `Discovery failed: ${messageOf(e)}`));
  });
});

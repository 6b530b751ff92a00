// The list view (/console/c/{cluster}[/ns/{ns}]/{res}): any resource kind,
// in one namespace, across all namespaces, or cluster-scoped; live from a
// watch; filtered by name or label (?q=); virtualised, so it stays
// responsive at thousands of rows.

import { el } from "../dom";
import { formatRes, href, link, type Route } from "../router";
import { registerView } from "../views";
import { LiveTable } from "./livetable";
import { pluralTitle, searchBox } from "./names";
import { resolve } from "./resources";

type ListRoute = Extract<Route, { view: "list" }>;

registerView("list", async (ctx) => {
  const r = ctx.route as ListRoute;
  const crumbs: [string, string?][] = [[r.cluster, href({ view: "cluster", cluster: r.cluster })]];
  if (r.namespace) crumbs.push([r.namespace, href({ view: "namespace", cluster: r.cluster, namespace: r.namespace })]);
  crumbs.push([formatRes(r.res)]);
  ctx.crumbs(crumbs);
  ctx.setTitle(`${formatRes(r.res)}${r.namespace ? ` · ${r.namespace}` : ""}`);
  const k = await resolve(r.cluster, r.res);
  if (ctx.signal.aborted) return;
  const title = pluralTitle(k);
  crumbs[crumbs.length - 1] = [title];
  ctx.crumbs(crumbs);
  const q = ctx.params.get("q") ?? "";
  let marked = false;
  const t = new LiveTable({
    cluster: r.cluster, kind: k, namespace: k.namespaced ? r.namespace : undefined, signal: ctx.signal,
    caption: `${title}${r.namespace && k.namespaced ? ` in ${r.namespace}` : ""}`, tableId: "list-table", summaryId: "list-summary",
    onFirst: () => {
      if (!marked) {
        marked = true;
        performance.mark("keyhole-list-rendered");
      }
      document.body.dataset.state = "list";
    },
  });
  const scope: (Node | string)[] = [];
  if (k.namespaced && r.namespace) {
    scope.push("In namespace ", link(href({ view: "namespace", cluster: r.cluster, namespace: r.namespace }), r.namespace), " · ",
      link(href({ view: "list", cluster: r.cluster, res: r.res }), "all namespaces"));
  } else if (k.namespaced) {
    scope.push("In all namespaces");
  } else {
    scope.push("Cluster-scoped");
  }
  scope.push(" · ", el("code", {}, `${k.group ? k.group + "/" : ""}${k.version} ${k.kind}`));
  ctx.main.replaceChildren(el("section", { class: "list", "aria-labelledby": "list-title" },
    el("h1", { id: "list-title" }, title),
    el("p", { class: "muted" }, ...scope),
    searchBox("list-search", `Filter ${title.toLowerCase()}`, "name, or label: app=web tier!=db", q, (v) => t.setQuery(v), "list-table"),
    t.root));
  t.start(q);
});

// The clusters view: every cluster the gateway's policy lets the user
// reach, with its health from the data path, refreshed every 5 s while the
// tab is visible, searchable, with the kubectl command and the kubeconfig
// download beside each.

import { apiFetch, errorOf, messageOf } from "./api";
import { filterClusters, lastSeen, rttOf, versionsOf, type ClusterStatus } from "./clusters";
import { el, formatAgo } from "./dom";
import { href, link } from "./router";
import { registerView, type ViewContext } from "./views";

const CLUSTERS_URL = "/keyhole/v1/clusters";
const REFRESH_MS = 5000;

type Load =
  | { kind: "ok"; clusters: ClusterStatus[] }
  | { kind: "signed-out" }
  | { kind: "error"; message: string };

async function loadClusters(signal: AbortSignal): Promise<Load> {
  try {
    const resp = await apiFetch(CLUSTERS_URL, { signal });
    if (!resp.ok) {
      const e = await errorOf(resp);
      return { kind: "error", message: `HTTP ${resp.status}: ${e.message}` };
    }
    const body: unknown = await resp.json();
    if (!Array.isArray(body)) {
      return { kind: "error", message: "The stub's answer is not a list of clusters." };
    }
    return { kind: "ok", clusters: body as ClusterStatus[] };
  } catch (e) {
    if (e instanceof Error && "status" in e && (e as { status: number }).status === 401) return { kind: "signed-out" };
    return { kind: "error", message: "The stub did not answer: " + messageOf(e) };
  }
}

class ClustersView {
  private readonly main: HTMLElement;
  private readonly kubeconfigURL: string;
  private readonly signal: AbortSignal;
  private query: HTMLInputElement | null = null;
  private tbody: HTMLTableSectionElement | null = null;
  private summary: HTMLElement | null = null;
  private problem: HTMLElement | null = null;
  private clusters: ClusterStatus[] = [];
  private rendered = false;
  private timer: number | undefined;

  constructor(ctx: ViewContext, kubeconfigURL: string) {
    this.main = ctx.main;
    this.signal = ctx.signal;
    this.kubeconfigURL = kubeconfigURL;
  }

  start(): void {
    void this.refresh();
    const onVisible = () => {
      if (!document.hidden) void this.refresh();
    };
    document.addEventListener("visibilitychange", onVisible);
    this.signal.addEventListener("abort", () => {
      window.clearTimeout(this.timer);
      document.removeEventListener("visibilitychange", onVisible);
    });
  }

  private schedule(): void {
    window.clearTimeout(this.timer);
    if (this.signal.aborted) return;
    this.timer = window.setTimeout(() => {
      if (document.hidden) this.schedule();
      else void this.refresh();
    }, REFRESH_MS);
  }

  private async refresh(): Promise<void> {
    const got = await loadClusters(this.signal);
    if (this.signal.aborted) return;
    switch (got.kind) {
      case "signed-out":
        return; // main.ts shows "Sign in"; signing in is a navigation
      case "error":
        this.showProblem(got.message);
        break;
      case "ok":
        this.clusters = got.clusters;
        this.showClusters();
        break;
    }
    this.schedule();
  }

  private showProblem(message: string): void {
    if (!this.problem) {
      this.main.replaceChildren(el("p", { class: "problem", role: "alert" }, message));
      return;
    }
    this.problem.textContent = message;
    this.problem.hidden = false;
  }

  // skeleton builds the clusters view once; refreshes fill its table, so
  // the search box keeps its focus and text.
  private skeleton(): void {
    const params = new URLSearchParams(location.search);
    const query = el("input", {
      id: "cluster-search", type: "search", autocomplete: "off", spellcheck: "false",
      placeholder: "name or label, e.g. env=prod", "aria-controls": "cluster-table",
    });
    query.value = params.get("q") ?? "";
    query.addEventListener("input", () => {
      const u = new URL(location.href);
      if (query.value) u.searchParams.set("q", query.value);
      else u.searchParams.delete("q");
      history.replaceState(null, "", u);
      this.fillTable();
    });
    const summary = el("p", { id: "cluster-summary", role: "status", "aria-live": "polite", class: "muted" });
    const problem = el("p", { class: "problem", role: "alert" });
    problem.hidden = true;
    const tbody = el("tbody");
    const table = el("table", { id: "cluster-table", class: "clusters" },
      el("caption", { class: "visually-hidden" }, "Clusters you may reach, with their health"),
      el("thead", {}, el("tr", {},
        ...["Cluster", "State", "Agents", "Round trip", "API server", "Last seen", "Labels", "kubectl"].map(
          (h) => el("th", { scope: "col" }, h)))),
      tbody);
    const section = el("section", { "aria-labelledby": "clusters-title" },
      el("h1", { id: "clusters-title" }, "Clusters"),
      el("div", { class: "search" }, el("label", { for: "cluster-search" }, "Search clusters"), query),
      summary, problem,
      el("div", { class: "table-scroll" }, table));
    this.main.replaceChildren(section);
    this.query = query;
    this.tbody = tbody;
    this.summary = summary;
    this.problem = problem;
  }

  private showClusters(): void {
    if (!this.tbody) this.skeleton();
    if (this.problem) this.problem.hidden = true;
    this.fillTable();
    document.body.dataset.state = "clusters";
    if (!this.rendered) {
      this.rendered = true;
      performance.mark("keyhole-clusters-rendered");
    }
  }

  private fillTable(): void {
    if (!this.tbody || !this.summary || !this.query) return;
    const now = new Date();
    const shown = filterClusters(this.clusters, this.query.value);
    this.tbody.replaceChildren(...shown.map((c) => this.row(c, now)));
    const total = this.clusters.length;
    let text: string;
    if (total === 0) text = "There is no cluster you may reach.";
    else if (shown.length === total) text = `${total} cluster${total === 1 ? "" : "s"}.`;
    else text = `${shown.length} of ${total} clusters match.`;
    this.summary.textContent = `${text} Updated ${now.toLocaleTimeString()}.`;
  }

  private row(c: ClusterStatus, now: Date): HTMLTableRowElement {
    const seen = lastSeen(c);
    const rtt = rttOf(c);
    const errors = c.agents.map((a) => a.health.error).filter((e): e is string => !!e);
    const state = el("td", { class: c.ready ? "ready" : "not-ready" }, c.ready ? "ready" : "not ready");
    if (!c.ready && errors.length > 0) state.title = errors.join("\n");
    const labels = el("td", { class: "labels" });
    for (const [k, v] of Object.entries(c.labels ?? {}).sort(([a], [b]) => a.localeCompare(b))) {
      labels.append(el("span", { class: "label" }, `${k}=${v}`), " ");
    }
    const cmd = `kubectl --kubeconfig keyhole.kubeconfig --context ${c.id} get namespaces`;
    const copy = el("button", { type: "button", class: "copy", "aria-label": `Copy the kubectl command for ${c.id}` }, "Copy");
    copy.addEventListener("click", () => {
      navigator.clipboard.writeText(cmd).then(
        () => { copy.textContent = "Copied"; },
        () => { copy.textContent = "Copy failed"; });
    });
    const kubectl = el("td", { class: "kubectl" }, el("code", {}, cmd), " ", copy);
    if (this.kubeconfigURL) {
      kubectl.append(" ", el("a", { href: this.kubeconfigURL, download: "keyhole.kubeconfig",
        "aria-label": `Download a kubeconfig (for ${c.id} and your other clusters)` }, "kubeconfig"));
    }
    const tr = el("tr", { "data-cluster": c.id },
      c.kubectlOnly
        ? el("th", { scope: "row" }, c.id, " ", el("span", { class: "label", title: "Its agents verify callers themselves and accept only ID tokens issued for this cluster: use kubectl with `stub kubeconfig --oidc`." }, "kubectl only"))
        : el("th", { scope: "row" }, link(href({ view: "cluster", cluster: c.id }), c.id)),
      state,
      el("td", { class: "num" }, String(c.agents.length)),
      el("td", { class: "num" }, rtt === null ? "–" : `${rtt.toFixed(rtt < 1 ? 2 : rtt < 10 ? 1 : 0)} ms`),
      el("td", {}, versionsOf(c).join(", ") || "–"),
      seen ? el("td", {}, el("time", { datetime: seen.toISOString(), title: seen.toLocaleString() }, formatAgo(seen, now)))
        : el("td", {}, "never"),
      labels,
      kubectl);
    return tr;
  }
}

registerView("clusters", (ctx) => {
  ctx.setTitle("Clusters");
  ctx.crumbs([]);
  new ClustersView(ctx, document.body.dataset.kubeconfig ?? "").start();
});

// LiveTable: a list of any resource kind, kept live by a ListWatch and
// drawn with the server's own columns (the Table format, which is how
// kubectl prints: the API server runs kubectl's printers for built-in
// kinds, so a pod's STATUS reads CrashLoopBackOff or Terminating exactly
// as kubectl words it, and a CRD's additionalPrinterColumns for custom
// kinds). Rows are kept compact (the cells, a few metadata fields) and
// keyed by uid; changes are applied once per animation frame; only the
// rows in view are in the DOM (a virtualised table), so 5,000 pods stay
// responsive.

import { ApiError, messageOf } from "../api";
import { age, el } from "../dom";
import { href, link } from "../router";
import { collectionPath, ref, type Kind } from "./resources";
import { ACCEPT_TABLE, listWatch, type EventType, type ListBody, type WatchState } from "./watch";

interface ColumnDefinition {
  name: string;
  type?: string;
  format?: string;
  description?: string;
  priority?: number;
}

interface TableRow {
  cells: unknown[];
  object?: { metadata?: RowMeta; [k: string]: unknown };
}

interface RowMeta {
  name?: string;
  namespace?: string;
  uid?: string;
  labels?: Record<string, string>;
  creationTimestamp?: string;
  deletionTimestamp?: string;
}

interface Table extends ListBody {
  columnDefinitions?: ColumnDefinition[];
  rows?: TableRow[];
}

interface Column {
  name: string;
  index: number; // in the server's cells; -1: the namespace (from metadata)
  age: "" | "created" | "seen"; // recomputed (from creationTimestamp, or an event's last time) as time passes
  status: boolean;
  description: string;
}

export interface Row {
  key: string;
  name: string;
  namespace: string;
  cells: string[];
  labels?: Record<string, string>;
  created?: string;
  time: number; // events: when last seen (ms), for newest-first
}

export interface LiveTableOptions {
  cluster: string;
  kind: Kind;
  namespace?: string; // none: all namespaces (or a cluster-scoped kind)
  signal: AbortSignal;
  caption: string;
  tableId?: string;
  summaryId?: string;
  rows?: number; // show at most this many rows' height (else fill the window)
  wide?: string[]; // server columns of priority > 0 to show too (pods: IP, Node)
  drop?: string[]; // server columns not to show
  fieldSelector?: string;
  newestFirst?: boolean; // events
  hrefFor?(row: Row): string;
  noun?: [string, string]; // singular, plural ("pod", "pods")
  onFirst?(): void;
}

// Per-kind choices over the server's columns.
const WIDE: Record<string, string[]> = { pods: ["IP", "Node"], events: [] };

// Secrets are listed without any object data (includeObject=None when one
// namespace is listed, only metadata across all namespaces): the Table's
// DATA column is the key count, and no value is ever in the response.
function includeObject(k: Kind, namespace: string | undefined, newestFirst: boolean): string {
  if (k.group === "" && k.resource === "secrets") return namespace ? "None" : "Metadata";
  if (newestFirst) return "Object"; // events: their times, for the order
  return "Metadata";
}

function cellText(v: unknown): string {
  if (v === null || v === undefined) return "";
  if (typeof v === "string") return v;
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  return JSON.stringify(v);
}

function statusClass(s: string): string {
  if (/^(Running|Completed|Succeeded|Active|Ready|Bound|Available|True)$/.test(s)) return "ok";
  if (/^(Pending|ContainerCreating|PodInitializing|Terminating|Init:|NotReady|Unknown)/.test(s)) return "warn";
  if (/(Error|BackOff|Failed|Evicted|OOMKilled|Err|Invalid|Lost|Unschedulable)/.test(s)) return "bad";
  return "";
}

// parseQuery splits a filter into name words (matched against names) and
// label selector terms (key=value, key!=value, !key: sent to the server).
export function parseQuery(q: string): { words: string[]; selector: string } {
  const words: string[] = [];
  const sel: string[] = [];
  for (const w of q.trim().split(/\s+/)) {
    if (w === "") continue;
    if (w.includes("=") || w.startsWith("!")) sel.push(w);
    else words.push(w.toLowerCase());
  }
  return { words, selector: sel.join(",") };
}

// Drawing costs, for tests and the docs (window.__keyholeList).
export const renderStats = { renders: 0, ms: 0, maxMs: 0, rowsBuilt: 0 };
(window as unknown as { __keyholeList: typeof renderStats }).__keyholeList = renderStats;

const ROW_FALLBACK_PX = 33;
const OVERSCAN = 10;

export class LiveTable {
  readonly root: HTMLElement;
  private readonly o: LiveTableOptions;
  private readonly scroller: HTMLElement;
  private readonly table: HTMLTableElement;
  private readonly thead: HTMLTableSectionElement;
  private readonly tbody: HTMLTableSectionElement;
  private readonly summary: HTMLElement;
  private readonly stateEl: HTMLElement;
  private readonly problem: HTMLElement;
  private columns: Column[] = [];
  private nameIndex = 0;
  private rows = new Map<string, Row>();
  private view: Row[] = [];
  private pending = new Map<string, Row | null>();
  private frame = 0;
  private rowPx = ROW_FALLBACK_PX;
  private trs = new WeakMap<Row, HTMLTableRowElement>();
  private words: string[] = [];
  private selector = "";
  private watchAbort: AbortController | null = null;
  private listed = false;
  private ageTimer = 0;
  private first = true;
  private lastRange = "";
  private sized = false;

  constructor(o: LiveTableOptions) {
    this.o = o;
    this.summary = el("span", { id: o.summaryId ?? "", role: "status", "aria-live": "polite" }, "Loading…");
    if (!o.summaryId) this.summary.removeAttribute("id");
    this.stateEl = el("span", { class: "watch-state muted" });
    this.problem = el("p", { class: "problem", role: "alert" });
    this.problem.hidden = true;
    this.thead = el("thead");
    this.tbody = el("tbody");
    this.table = el("table", { class: "live-table" }, el("caption", { class: "visually-hidden" }, o.caption), this.thead, this.tbody);
    if (o.tableId) this.table.id = o.tableId;
    this.scroller = el("div", { class: "vscroll", tabindex: "0", role: "region", "aria-label": o.caption }, this.table);
    this.root = el("div", { class: "live", "data-res": o.kind.resource },
      el("p", { class: "list-status" }, this.summary, " ", this.stateEl), this.problem, this.scroller);
    this.scroller.addEventListener("scroll", () => this.schedule(), { passive: true });
    const onResize = () => { this.fit(); this.schedule(); };
    window.addEventListener("resize", onResize);
    o.signal.addEventListener("abort", () => {
      window.removeEventListener("resize", onResize);
      window.clearInterval(this.ageTimer);
      if (this.frame) cancelAnimationFrame(this.frame);
      this.watchAbort?.abort();
    });
  }

  private get noun(): [string, string] {
    if (this.o.noun) return this.o.noun;
    const k = this.o.kind;
    return [k.kind.replace(/([a-z])([A-Z])/g, "$1 $2").toLowerCase(), k.resource];
  }

  // start lists and watches with the filter q (see parseQuery).
  start(q = ""): void {
    const p = parseQuery(q);
    this.words = p.words;
    this.selector = p.selector;
    this.restart();
    // Ages move on: the rows in view have theirs written again in place
    // (no row is rebuilt, so a focused link keeps its focus).
    this.ageTimer = window.setInterval(() => {
      if (document.hidden) return;
      const now = new Date();
      for (const td of this.tbody.querySelectorAll<HTMLElement>("td[data-ts]")) {
        const text = age(td.dataset.ts, now);
        if (td.textContent !== text) td.textContent = text;
      }
    }, 10_000);
  }

  // setQuery filters by name at once; a changed label selector lists and
  // watches again with it (the server filters).
  setQuery(q: string): void {
    const p = parseQuery(q);
    this.words = p.words;
    if (p.selector !== this.selector) {
      this.selector = p.selector;
      this.restart();
      return;
    }
    this.rebuild();
    this.render(true);
  }

  get total(): number {
    return this.rows.size;
  }

  private restart(): void {
    this.watchAbort?.abort();
    const ac = new AbortController();
    this.watchAbort = ac;
    this.o.signal.addEventListener("abort", () => ac.abort(), { once: true });
    const k = this.o.kind;
    void listWatch({
      path: collectionPath(this.o.cluster, k, this.o.namespace),
      accept: ACCEPT_TABLE,
      query: {
        includeObject: includeObject(k, this.o.namespace, !!this.o.newestFirst),
        labelSelector: this.selector || undefined,
        fieldSelector: this.o.fieldSelector,
      },
      signal: ac.signal,
      onList: (b) => this.onList(b as Table),
      onEvent: (t, obj) => this.onEvent(t, obj as Table),
      onState: (s) => this.onState(s),
    });
  }

  private onState(s: WatchState): void {
    switch (s.state) {
      case "listing": this.stateEl.textContent = this.listed ? "Listing again…" : ""; break;
      case "live": this.stateEl.textContent = "Live."; this.problem.hidden = true; break;
      case "reconnecting":
        this.stateEl.textContent = `Reconnecting in ${(s.inMs / 1000).toFixed(1)} s (${s.message})…`;
        break;
      case "failed":
        if (s.error instanceof ApiError && s.error.status === 401) return; // main.ts shows Sign in
        this.stateEl.textContent = "";
        this.problem.textContent = messageOf(s.error);
        this.problem.hidden = false;
        if (!this.listed) this.summary.textContent = `Cannot list ${this.noun[1]}.`;
        this.firstDone();
        break;
    }
  }

  private setColumns(defs: ColumnDefinition[]): void {
    const wide = (this.o.wide ?? WIDE[this.o.kind.resource] ?? []).map((s) => s.toLowerCase());
    const drop = (this.o.drop ?? []).map((s) => s.toLowerCase());
    const cols: Column[] = [];
    this.nameIndex = Math.max(0, defs.findIndex((d) => d.format === "name" || d.name.toLowerCase() === "name"));
    defs.forEach((d, i) => {
      const n = d.name.toLowerCase();
      if (drop.includes(n)) return;
      if ((d.priority ?? 0) > 0 && !wide.includes(n)) return;
      cols.push({
        name: d.name, index: i, description: d.description ?? "",
        age: n === "age" && (d.description ?? "").startsWith("CreationTimestamp") ? "created"
          : n === "last seen" && this.o.newestFirst ? "seen" : "",
        status: n === "status",
      });
    });
    if (this.o.kind.namespaced && !this.o.namespace) {
      cols.unshift({ name: "Namespace", index: -1, age: "", status: false, description: "" });
    }
    this.columns = cols;
    this.thead.replaceChildren(el("tr", {}, ...cols.map((c) => {
      const th = el("th", { scope: "col" }, c.name);
      if (c.description) th.title = c.description.split(".")[0];
      return th;
    })));
  }

  private rowOf(tr: TableRow): Row {
    const md = tr.object?.metadata ?? {};
    const name = md.name ?? cellText(tr.cells[this.nameIndex]);
    const namespace = md.namespace ?? this.o.namespace ?? "";
    const cells = this.columns.map((c) => (c.index < 0 ? namespace : cellText(tr.cells[c.index])));
    let time = 0;
    if (this.o.newestFirst && tr.object) {
      const ev = tr.object as { lastTimestamp?: string; eventTime?: string; series?: { lastObservedTime?: string } };
      const t = ev.series?.lastObservedTime ?? ev.lastTimestamp ?? ev.eventTime ?? md.creationTimestamp;
      time = t ? new Date(t).getTime() : 0;
    }
    // Only these fields are kept: the rest of the response is dropped.
    return {
      key: md.uid || `${namespace}/${name}`, name, namespace, cells,
      labels: md.labels, created: md.creationTimestamp, time,
    };
  }

  private onList(t: Table): void {
    this.setColumns(t.columnDefinitions ?? []);
    this.rows = new Map();
    for (const r of t.rows ?? []) {
      const row = this.rowOf(r);
      this.rows.set(row.key, row);
    }
    this.pending.clear();
    this.trs = new WeakMap();
    this.listed = true;
    this.rebuild();
    this.render(true);
    this.firstDone();
  }

  private firstDone(): void {
    if (!this.first) return;
    this.first = false;
    this.o.onFirst?.();
  }

  private onEvent(type: EventType, t: Table): void {
    for (const r of t.rows ?? []) {
      const row = this.rowOf(r);
      this.pending.set(row.key, type === "DELETED" ? null : row);
    }
    this.schedule(true);
  }

  private schedule(changed = false): void {
    if (changed) this.dirty = true;
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      if (this.dirty) {
        this.dirty = false;
        for (const [k, row] of this.pending) {
          if (row) this.rows.set(k, row);
          else this.rows.delete(k);
        }
        this.pending.clear();
        this.rebuild();
        this.render(true);
      } else {
        this.render(false);
      }
    });
  }
  private dirty = false;

  // rebuild filters and sorts the rows (namespace, then name; events
  // newest first).
  private rebuild(): void {
    const words = this.words;
    let v = [...this.rows.values()];
    if (words.length > 0) {
      v = v.filter((r) => {
        const n = (r.namespace ? r.namespace + "/" : "") + r.name.toLowerCase();
        return words.every((w) => n.toLowerCase().includes(w));
      });
    }
    if (this.o.newestFirst) v.sort((a, b) => b.time - a.time || (a.name < b.name ? -1 : 1));
    else v.sort((a, b) => (a.namespace < b.namespace ? -1 : a.namespace > b.namespace ? 1 : a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    this.view = v;
    const total = this.rows.size;
    const [one, many] = this.noun;
    const where = this.o.namespace ? "" : this.o.kind.namespaced ? " in all namespaces" : "";
    let text: string;
    if (total === 0) text = `No ${many}${where}.`;
    else if (v.length === total) text = `${total.toLocaleString("en")} ${total === 1 ? one : many}${where}.`;
    else text = `${v.length.toLocaleString("en")} of ${total.toLocaleString("en")} ${many} match.`;
    if (this.summary.textContent !== text) this.summary.textContent = text;
    if (total === 0) this.root.dataset.empty = "";
    else delete this.root.dataset.empty;
    this.table.setAttribute("aria-rowcount", String(v.length + 1));
  }

  // fit sizes the scroller: rows' height, or what the window has left
  // (as a maximum: a short list takes only its rows' room).
  private fit(): void {
    if (this.o.rows) {
      this.viewPx = (this.o.rows + 1) * this.rowPx + 4;
    } else {
      const top = this.scroller.getBoundingClientRect().top + window.scrollY;
      this.viewPx = Math.max(240, window.innerHeight - top - 24);
    }
    this.scroller.style.maxHeight = `${this.viewPx}px`;
  }
  private viewPx = 0;

  // render draws the rows in view (and OVERSCAN more each side) between
  // two spacer rows that stand for the rest.
  private render(changed: boolean): void {
    const t0 = performance.now();
    this.draw(changed);
    const ms = performance.now() - t0;
    renderStats.renders++;
    renderStats.ms += ms;
    renderStats.maxMs = Math.max(renderStats.maxMs, ms);
  }

  private draw(changed: boolean): void {
    if (!this.scroller.isConnected) return;
    if (!this.sized) {
      this.sized = true;
      this.fit();
    }
    const n = this.view.length;
    const top = this.scroller.scrollTop;
    const h = this.viewPx || window.innerHeight;
    const from = Math.max(0, Math.floor(top / this.rowPx) - OVERSCAN);
    const to = Math.min(n, Math.ceil((top + h) / this.rowPx) + OVERSCAN);
    const range = `${from}:${to}:${n}`;
    if (!changed && range === this.lastRange) return;
    this.lastRange = range;
    const cols = this.columns.length || 1;
    const spacer = (rows: number) => {
      const tr = el("tr", { class: "spacer", "aria-hidden": "true" }, el("td", { colspan: String(cols) }));
      tr.style.height = `${rows * this.rowPx}px`;
      return tr;
    };
    const now = new Date();
    const trs: HTMLTableRowElement[] = [];
    for (let i = from; i < to; i++) {
      const row = this.view[i];
      let tr = this.trs.get(row);
      if (!tr) {
        renderStats.rowsBuilt++;
        tr = this.rowElement(row, now);
        this.trs.set(row, tr);
      }
      tr.setAttribute("aria-rowindex", String(i + 2));
      trs.push(tr);
    }
    this.tbody.replaceChildren(spacer(from), ...trs, spacer(n - to));
    if (trs.length > 0 && this.rowPx === ROW_FALLBACK_PX) {
      const measured = trs[0].getBoundingClientRect().height;
      if (measured > 0 && Math.abs(measured - this.rowPx) > 0.5) {
        this.rowPx = measured;
        this.fit();
        this.lastRange = "";
        this.draw(true);
        return;
      }
    }
  }

  private rowElement(row: Row, now: Date): HTMLTableRowElement {
    const tr = el("tr", { "data-name": row.name, "data-key": row.key });
    if (row.namespace) tr.dataset.namespace = row.namespace;
    this.columns.forEach((c, i) => {
      let text = row.cells[i];
      const ts = c.age === "created" ? row.created : c.age === "seen" && row.time ? new Date(row.time).toISOString() : undefined;
      if (ts) text = age(ts, now);
      if (c.index === this.nameIndex) {
        const to = this.o.hrefFor ? this.o.hrefFor(row)
          : href({ view: "object", cluster: this.o.cluster, namespace: row.namespace || undefined, res: ref(this.o.kind), name: row.name });
        tr.append(el("th", { scope: "row" }, link(to, text)));
        return;
      }
      const td = el("td", {}, text);
      if (ts) td.dataset.ts = ts;
      if (c.index < 0 && row.namespace) {
        td.replaceChildren(link(href({ view: "namespace", cluster: this.o.cluster, namespace: row.namespace }), row.namespace));
      }
      if (c.status) {
        const cls = statusClass(text);
        if (cls) td.className = cls;
      }
      if (text.length > 40) td.title = text;
      tr.append(td);
    });
    return tr;
  }
}

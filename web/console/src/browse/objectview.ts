// The object view (/console/c/{cluster}[/ns/{ns}]/{res}/{name}): the key
// fields of any object, its labels and annotations, its Events (live), a
// YAML view (?tab=yaml), and the actions other modules offer for it
// (views.ts actionsFor). The object is kept live by a list+watch narrowed
// to its name.
//
// Secrets: the page shows the keys, never the values; each key has a
// Reveal button that reads the Secret again and shows that value only
// (Hide forgets it). The values of a read are dropped as soon as the keys
// are taken from it, and the watch that keeps the page live reads
// metadata only.

import { stringify } from "yaml";
import { can } from "../access";
import { ApiError, apiFetch, check, getJSON, messageOf } from "../api";
import { el, type Child } from "../dom";
import { formatRes, href, link, type Route } from "../router";
import { actionsFor, objectTab, objectTabs, registerView, type Action, type KubeObject, type ObjectContext, type ObjectTab, type ViewContext } from "../views";
import { LiveTable } from "./livetable";
import { builtin, collectionPath, kindOf, objectPath, ref, resolve, type Kind } from "./resources";
import { conditions, dl, kindSummary, labelsOf, table, when } from "./summary";
import { ACCEPT_JSON, ACCEPT_METADATA, ACCEPT_METADATA_LIST, ACCEPT_TABLE, listWatch, type WatchState } from "./watch";
import { pluralTitle } from "./names";

type ObjectRoute = Extract<Route, { view: "object" }>;

const LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration";

interface SecretKey {
  name: string;
  bytes: number;
}

function b64Bytes(s: string): number {
  const pad = s.endsWith("==") ? 2 : s.endsWith("=") ? 1 : 0;
  return Math.floor((s.length * 3) / 4) - pad;
}

// decodeValue turns a Secret's base64 value into text, or says it is not.
export function decodeValue(b64: string): { text: string } | { binary: number } {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  try {
    return { text: new TextDecoder("utf-8", { fatal: true }).decode(bytes) };
  } catch {
    return { binary: bytes.length };
  }
}

class ObjectPage {
  private readonly ctx: ViewContext;
  private readonly r: ObjectRoute;
  private readonly kind: Kind;
  private readonly secret: boolean;
  private readonly path: string;
  private obj: KubeObject | null = null;
  private secretKeys: SecretKey[] = [];
  private revealed = new Map<string, string>(); // key → base64 value, while shown
  private revealErrors = new Map<string, string>();
  private deleted = false;
  private liveNote = "";
  private eventsStarted = false;
  private readonly octx: ObjectContext;
  private tab: string; // "summary", "yaml" or a registered tab (views.registerObjectTab)
  private extraTabs: ObjectTab[] = [];
  private extraShown = "";
  private readonly extraPanel = el("div", { id: "object-tab-panel", class: "panel" });
  private showManaged = false;

  private readonly heading = el("h1");
  private readonly meta = el("p", { class: "muted object-meta" });
  private readonly banner = el("p", { class: "problem", role: "alert" });
  private readonly actions = el("div", { id: "object-actions", class: "actions", role: "group", "aria-label": "Actions", "aria-busy": "true" });
  private readonly actionResult = el("p", { id: "object-action-result", role: "status", "aria-live": "polite" });
  private readonly tabs = el("nav", { class: "tabs", "aria-label": "Views of this object" });
  private readonly summary = el("div", { id: "object-summary", class: "panel" });
  private readonly events = el("section", { id: "object-events", "aria-labelledby": "object-events-title" },
    el("h2", { id: "object-events-title" }, "Events"));
  private readonly yamlPanel = el("div", { id: "object-yaml-panel", class: "panel" });
  private readonly yaml = el("pre", { id: "object-yaml", class: "yaml", tabindex: "0", "aria-label": "YAML" });
  private readonly summaryPanel = el("div", { class: "panel" });

  constructor(ctx: ViewContext, r: ObjectRoute, kind: Kind) {
    this.ctx = ctx;
    this.r = r;
    this.kind = kind;
    this.secret = kind.group === "" && kind.resource === "secrets";
    this.path = objectPath(r.cluster, kind, r.namespace, r.name);
    const tab = ctx.params.get("tab") ?? "";
    this.tab = tab === "yaml" || objectTab(tab) ? tab : "summary";
    const self = this;
    this.octx = {
      cluster: r.cluster, namespace: r.namespace, res: r.res, name: r.name,
      object: { metadata: { name: r.name, namespace: r.namespace } },
      signal: ctx.signal,
      changed: () => { void self.reread(true); },
    };
  }

  start(): void {
    const r = this.r;
    this.heading.textContent = `${this.kind.kind} ${r.name}`;
    this.banner.hidden = true;
    const managed = el("input", { type: "checkbox", id: "yaml-managed" });
    managed.addEventListener("change", () => { this.showManaged = managed.checked; this.renderYAML(); });
    const copy = el("button", { type: "button", class: "copy" }, "Copy YAML");
    copy.addEventListener("click", () => {
      navigator.clipboard.writeText(this.yaml.textContent ?? "").then(() => { copy.textContent = "Copied"; }, () => { copy.textContent = "Copy failed"; });
    });
    this.yamlPanel.append(el("p", { class: "yaml-tools" },
      el("label", { for: "yaml-managed" }, managed, " Show managedFields"), " ", copy,
      this.secret ? el("span", { class: "muted" }, " Values stay hidden unless revealed on the Summary tab.") : ""), this.yaml);
    this.summaryPanel.append(this.summary, this.events);
    this.ctx.main.replaceChildren(el("section", { class: "object", "aria-labelledby": "object-title" },
      this.heading, this.meta, this.banner, this.actions, this.actionResult, this.tabs, this.summaryPanel, this.yamlPanel, this.extraPanel));
    this.heading.id = "object-title";
    this.renderTabs();
    if (this.secret) void this.startSecret();
    else this.startWatch();
  }

  // --- tabs

  private renderTabs(): void {
    const mk = (id: string, text: string) => {
      const u = new URL(location.href);
      if (id === "summary") u.searchParams.delete("tab");
      else u.searchParams.set("tab", id);
      const a = el("a", { href: u.pathname + u.search, "data-tab": id }, text);
      if (this.tab === id) a.setAttribute("aria-current", "page");
      a.addEventListener("click", (ev) => {
        if (ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
        ev.preventDefault();
        history.pushState(null, "", u.pathname + u.search);
        this.tab = id;
        this.renderTabs();
      });
      return a;
    };
    this.tabs.replaceChildren(mk("summary", "Summary"), mk("yaml", "YAML"), ...this.extraTabs.map((t) => mk(t.id, t.label)));
    const extra = objectTab(this.tab);
    this.summaryPanel.hidden = this.tab !== "summary";
    this.yamlPanel.hidden = this.tab !== "yaml";
    this.extraPanel.hidden = !extra;
    if (this.tab === "yaml") this.renderYAML();
    if (extra && this.obj && this.extraShown !== extra.id) {
      this.extraShown = extra.id;
      void extra.render(this.octx, this.extraPanel);
    }
  }

  // --- reading the object

  private startWatch(): void {
    void listWatch({
      path: collectionPath(this.r.cluster, this.kind, this.r.namespace),
      accept: ACCEPT_JSON,
      query: { fieldSelector: `metadata.name=${this.r.name}` },
      signal: this.ctx.signal,
      onList: (b) => {
        const items = (b as { items?: KubeObject[] }).items ?? [];
        if (items.length === 0) this.gone(`${this.kind.kind} ${this.r.name} was not found.`);
        else this.show(items[0]);
      },
      onEvent: (t, o) => {
        if (t === "DELETED") this.gone(`${this.kind.kind} ${this.r.name} was deleted.`);
        else this.show(o as unknown as KubeObject);
      },
      onState: (s) => this.watchState(s),
    });
  }

  private watchState(s: WatchState): void {
    if (s.state === "failed") {
      if (s.error instanceof ApiError && s.error.status === 401) return;
      // May get but not list or watch: read it once.
      this.liveNote = `Not live: ${messageOf(s.error)}`;
      void this.reread(false);
    } else if (s.state === "reconnecting") {
      this.liveNote = `Reconnecting (${s.message})…`;
      this.renderMeta();
    } else if (s.state === "live") {
      if (this.liveNote.startsWith("Reconnecting")) { this.liveNote = ""; this.renderMeta(); }
    }
  }

  // reread GETs the object (after an action, or without a watch).
  private async reread(actions: boolean): Promise<void> {
    if (actions) this.actions.setAttribute("aria-busy", "true");
    if (this.secret) {
      await this.readSecret();
    } else {
      try {
        this.show(await getJSON<KubeObject>(this.path, this.ctx.signal));
      } catch (e) {
        if (this.ctx.signal.aborted) return;
        if (e instanceof ApiError && e.status === 404) this.gone(`${this.kind.kind} ${this.r.name} was not found.`);
        else this.fail(e);
      }
    }
    if (actions) void this.renderActions();
  }

  private async startSecret(): Promise<void> {
    await this.readSecret();
    if (this.ctx.signal.aborted || !this.obj) return;
    // Live by metadata only: a new resourceVersion reads the keys again.
    void listWatch({
      path: collectionPath(this.r.cluster, this.kind, this.r.namespace),
      accept: ACCEPT_METADATA_LIST,
      watchAccept: ACCEPT_METADATA,
      query: { fieldSelector: `metadata.name=${this.r.name}` },
      signal: this.ctx.signal,
      onList: (b) => {
        const items = (b as { items?: KubeObject[] }).items ?? [];
        if (items.length === 0) this.gone(`Secret ${this.r.name} was deleted.`);
        else if (items[0].metadata.resourceVersion !== this.obj?.metadata.resourceVersion) void this.readSecret();
      },
      onEvent: (t, o) => {
        if (t === "DELETED") this.gone(`Secret ${this.r.name} was deleted.`);
        else if ((o as unknown as KubeObject).metadata.resourceVersion !== this.obj?.metadata.resourceVersion) void this.readSecret();
      },
      onState: (s) => {
        if (s.state === "failed" && !(s.error instanceof ApiError && s.error.status === 401)) {
          this.liveNote = `Not live: ${messageOf(s.error)}`;
          this.renderMeta();
        }
      },
    });
  }

  // readSecret GETs the Secret, keeps its keys and sizes and a copy with
  // every value removed, and drops the values.
  private async readSecret(): Promise<void> {
    let s: KubeObject & { data?: Record<string, string> | null; stringData?: unknown };
    try {
      s = await getJSON(this.path, this.ctx.signal);
    } catch (e) {
      if (this.ctx.signal.aborted) return;
      if (e instanceof ApiError && e.status === 404) this.gone(`Secret ${this.r.name} was not found.`);
      else this.fail(e);
      return;
    }
    const data = s.data ?? {};
    const keys = Object.keys(data).sort().map((k) => ({ name: k, bytes: b64Bytes(data[k]) }));
    s.data = null; // the values go now
    delete s.stringData;
    const changed = s.metadata.resourceVersion !== this.obj?.metadata.resourceVersion;
    if (changed) this.revealed.clear(); // a revealed value of an older version is stale
    this.secretKeys = keys;
    this.show(s);
  }

  private async reveal(key: string): Promise<void> {
    this.revealErrors.delete(key);
    try {
      const s = await getJSON<{ data?: Record<string, string> | null }>(this.path, this.ctx.signal);
      const v = s.data?.[key];
      s.data = null;
      if (v === undefined) this.revealErrors.set(key, "This key is no longer in the Secret.");
      else this.revealed.set(key, v);
    } catch (e) {
      this.revealErrors.set(key, messageOf(e));
    }
    this.renderSummary();
    if (this.tab === "yaml") this.renderYAML();
    (this.summary.querySelector(`[data-secret-key="${CSS.escape(key)}"] button`) as HTMLElement | null)?.focus();
  }

  private hide(key: string): void {
    this.revealed.delete(key);
    this.revealErrors.delete(key);
    this.renderSummary();
    if (this.tab === "yaml") this.renderYAML();
    (this.summary.querySelector(`[data-secret-key="${CSS.escape(key)}"] button`) as HTMLElement | null)?.focus();
  }

  // --- showing it

  private fail(e: unknown): void {
    this.banner.textContent = messageOf(e);
    this.banner.hidden = false;
    if (!this.obj) {
      this.summary.replaceChildren(el("p", { class: "problem" }, `Cannot read ${this.kind.kind} ${this.r.name}: ${messageOf(e)}`));
      document.body.dataset.state = "object";
    }
  }

  private gone(message: string): void {
    this.deleted = true;
    if (!this.obj) this.actions.setAttribute("aria-busy", "false");
    this.banner.textContent = message;
    this.banner.hidden = false;
    if (!this.obj) this.summary.replaceChildren(el("p", {}, message));
    document.body.dataset.state = "object";
  }

  private show(o: KubeObject): void {
    const first = this.obj === null;
    this.obj = o;
    this.octx.object = o;
    if (this.deleted) { this.deleted = false; this.banner.hidden = true; }
    this.renderMeta();
    this.renderSummary();
    if (this.tab === "yaml") this.renderYAML();
    if (!this.eventsStarted && o.metadata.uid) void this.startEvents(o.metadata.uid);
    if (first) {
      void this.renderActions();
      void Promise.all(objectTabs().map(async (t) => ((await t.available?.(this.octx)) ?? true) ? t : null))
        .then((ts) => { this.extraTabs = ts.filter((t) => t !== null); this.renderTabs(); });
      this.renderTabs();
      document.body.dataset.state = "object";
    }
  }

  private renderMeta(): void {
    const o = this.obj;
    const parts: Child[] = [];
    if (o?.metadata.namespace) {
      parts.push("Namespace ", link(href({ view: "namespace", cluster: this.r.cluster, namespace: o.metadata.namespace }), o.metadata.namespace), " · ");
    }
    if (o?.metadata.creationTimestamp) parts.push("created ", when(o.metadata.creationTimestamp), " · ");
    parts.push(el("code", {}, `${o?.apiVersion ?? this.kind.version} ${this.kind.kind}`));
    if (o?.metadata.deletionTimestamp) parts.push(" · ", el("strong", {}, "being deleted"));
    if (this.liveNote) parts.push(" · ", this.liveNote);
    this.meta.replaceChildren(...parts);
  }

  private async owners(o: KubeObject): Promise<Child[]> {
    const out: Child[] = [];
    for (const ow of o.metadata.ownerReferences ?? []) {
      const k = await kindOf(this.r.cluster, ow.apiVersion, ow.kind);
      const text = `${ow.kind} ${ow.name}`;
      out.push(k ? link(href({ view: "object", cluster: this.r.cluster, namespace: k.namespaced ? o.metadata.namespace : undefined, res: ref(k), name: ow.name }), text, { "data-owner": ow.kind }) : text);
      out.push(ow.controller ? " (controller) " : " ");
    }
    return out;
  }

  private renderSummary(): void {
    const o = this.obj;
    if (!o) return;
    const parts: Node[] = [];
    const own = kindSummary(this.r.cluster, this.kind.kind, o);
    if (this.secret) parts.push(this.secretSummary(o));
    else if (own) parts.push(...own);
    else parts.push(this.columnsBox());
    const cond = conditions(o);
    if (cond) parts.push(cond);
    const ownersBox = el("dd", {});
    const meta = dl([
      ["Name", o.metadata.name],
      ["UID", el("code", {}, o.metadata.uid ?? "")],
      ["Labels", labelsOf(o.metadata.labels)],
    ]);
    if ((o.metadata.ownerReferences ?? []).length > 0) {
      meta.append(el("dt", {}, "Owners"), ownersBox);
      void this.owners(o).then((c) => ownersBox.replaceChildren(...c));
    }
    parts.push(el("h2", {}, "Metadata"), meta);
    const ann = Object.entries(o.metadata.annotations ?? {}).sort(([a], [b]) => a.localeCompare(b));
    if (ann.length > 0) {
      parts.push(table("Annotations", ["Key", "Value"], ann.map(([k, v]) => {
        if (this.secret && k === LAST_APPLIED) return [k, el("span", { class: "muted" }, "(hidden: kubectl's copy of the applied Secret, values included)")];
        const shown = v.length > 400 ? `${v.slice(0, 400)}… (${v.length - 400} more characters: see the YAML)` : v;
        return [k, el("code", { class: "wrap" }, shown)];
      }), { id: "object-annotations" }));
    }
    this.summary.replaceChildren(...parts);
  }

  // columnsBox shows the server's columns for this object (kubectl get's
  // line, CRD printer columns included), for kinds without their own
  // summary.
  private columnsRV = "";
  private columnsEl: HTMLElement | null = null;
  private columnsBox(): HTMLElement {
    const rv = this.obj?.metadata.resourceVersion ?? "";
    if (this.columnsEl && rv === this.columnsRV) return this.columnsEl;
    const box = el("div", { class: "columns-box" });
    this.columnsRV = rv;
    this.columnsEl = box;
    void (async () => {
      try {
        const resp = await check(await apiFetch(this.path, { signal: this.ctx.signal, headers: { Accept: ACCEPT_TABLE } }));
        const t = (await resp.json()) as { columnDefinitions?: { name: string; priority?: number }[]; rows?: { cells: unknown[] }[] };
        const cells = t.rows?.[0]?.cells ?? [];
        box.replaceChildren(dl((t.columnDefinitions ?? []).map((c, i) => [c.name, cells[i] === null || cells[i] === undefined ? "" : String(cells[i])])));
      } catch {
        box.replaceChildren();
      }
    })();
    return box;
  }

  private secretSummary(o: KubeObject): HTMLElement {
    const rows = this.secretKeys.map((k) => {
      const tr = el("tr", { "data-secret-key": k.name });
      const v = this.revealed.get(k.name);
      const err = this.revealErrors.get(k.name);
      let value: Child;
      const btn = el("button", { type: "button" });
      if (v !== undefined) {
        const d = decodeValue(v);
        value = "text" in d ? el("pre", { class: "secret-value" }, d.text) : el("span", { class: "muted" }, `binary, ${d.binary} bytes`);
        btn.textContent = "Hide";
        btn.dataset.hide = k.name;
        btn.setAttribute("aria-label", `Hide the value of ${k.name}`);
        btn.addEventListener("click", () => this.hide(k.name));
      } else {
        value = err ? el("span", { class: "problem", role: "alert" }, err) : el("span", { class: "muted" }, "hidden");
        btn.textContent = "Reveal";
        btn.dataset.reveal = k.name;
        btn.setAttribute("aria-label", `Reveal the value of ${k.name}`);
        btn.addEventListener("click", () => { btn.disabled = true; void this.reveal(k.name); });
      }
      tr.append(el("th", { scope: "row" }, el("code", {}, k.name)), el("td", { class: "num" }, `${k.bytes} bytes`), el("td", {}, value), el("td", {}, btn));
      return tr;
    });
    return el("div", {},
      dl([["Type", String((o as { type?: string }).type ?? "Opaque")], ["Keys", String(this.secretKeys.length)]]),
      el("div", { class: "table-scroll" }, el("table", { id: "secret-keys", class: "fields-table" },
        el("caption", {}, "Keys (values are read only when you reveal one)"),
        el("thead", {}, el("tr", {}, ...["Key", "Size", "Value", ""].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, ...rows))));
  }

  private renderYAML(): void {
    const o = this.obj;
    if (!o) { this.yaml.textContent = ""; return; }
    // kubectl's order: apiVersion, kind, metadata, then the rest (list
    // items come without apiVersion and kind).
    const { apiVersion, kind, metadata, ...rest } = o;
    const copy = JSON.parse(JSON.stringify({
      apiVersion: apiVersion ?? (this.kind.group ? `${this.kind.group}/${this.kind.version}` : this.kind.version),
      kind: kind ?? this.kind.kind, metadata, ...rest,
    })) as KubeObject & { data?: Record<string, string> | null };
    if (!this.showManaged) delete copy.metadata.managedFields;
    if (this.secret) {
      const data: Record<string, string> = {};
      for (const k of this.secretKeys) data[k.name] = this.revealed.get(k.name) ?? `(hidden: ${k.bytes} bytes)`;
      copy.data = this.secretKeys.length ? data : null;
      if (copy.data === null) delete copy.data;
      if (copy.metadata.annotations?.[LAST_APPLIED]) copy.metadata.annotations[LAST_APPLIED] = "(hidden: holds the Secret's values)";
    }
    this.yaml.textContent = stringify(copy, { lineWidth: 0 });
  }

  // --- events and actions

  private async startEvents(uid: string): Promise<void> {
    this.eventsStarted = true;
    // Ask first: a user who may see an object need not see its Events,
    // and a refused watch would only be noise.
    const ns = this.kind.namespaced ? this.r.namespace : undefined;
    const [list, watch] = await Promise.all([
      can(this.r.cluster, { verb: "list", resource: "events", namespace: ns }),
      can(this.r.cluster, { verb: "watch", resource: "events", namespace: ns }),
    ]);
    if (this.ctx.signal.aborted) return;
    if (!list || !watch) {
      this.events.append(el("p", { class: "muted", "data-events": "forbidden" },
        `You may not list and watch Events ${ns ? `in namespace ${ns}` : "across namespaces"}, so this object's Events are not shown.`));
      return;
    }
    const evKind = builtin({ resource: "events", group: "" })!;
    const t = new LiveTable({
      cluster: this.r.cluster, kind: evKind, namespace: this.kind.namespaced ? this.r.namespace : undefined,
      signal: this.ctx.signal, caption: `Events of ${this.kind.kind} ${this.r.name}`,
      rows: 8, newestFirst: true, drop: ["Object"], fieldSelector: `involvedObject.uid=${uid}`,
      noun: ["event", "events"],
    });
    this.events.append(t.root);
    t.start();
  }

  private async renderActions(): Promise<void> {
    let acts: Action[] = [];
    try {
      acts = await actionsFor(this.octx);
    } catch {
      acts = [];
    }
    if (this.ctx.signal.aborted) return;
    this.actions.replaceChildren(...acts.map((a) => this.actionElement(a)));
    this.actions.hidden = acts.length === 0;
    this.actions.setAttribute("aria-busy", "false");
  }

  private actionElement(a: Action): HTMLElement {
    if (a.href) {
      const l = link(a.href, a.label, { "data-action": a.id, class: "button" + (a.danger ? " danger" : "") });
      return l;
    }
    const b = el("button", { type: "button", "data-action": a.id, class: a.danger ? "danger" : "" }, a.label);
    b.addEventListener("click", () => {
      if (a.confirm) this.confirm(a, b);
      else void this.runAction(a, b);
    });
    return b;
  }

  private confirm(a: Action, b: HTMLButtonElement): void {
    this.actions.querySelector(".confirm")?.remove();
    const yes = el("button", { type: "button", "data-confirm": "yes", class: a.danger ? "danger" : "" }, a.label);
    const no = el("button", { type: "button", "data-confirm": "no", class: "secondary" }, "Cancel");
    const box = el("div", { class: "confirm", role: "alertdialog", "aria-label": a.label }, el("span", {}, a.confirm ?? ""), " ", yes, " ", no);
    yes.addEventListener("click", () => { box.remove(); void this.runAction(a, b); });
    no.addEventListener("click", () => { box.remove(); b.focus(); });
    this.actions.append(box);
    yes.focus();
  }

  private async runAction(a: Action, b: HTMLButtonElement): Promise<void> {
    if (!a.run) return;
    b.disabled = true;
    this.actionResult.className = "";
    this.actionResult.textContent = `${a.label}…`;
    try {
      const msg = await a.run();
      this.actionResult.textContent = msg || `${a.label}: done.`;
    } catch (e) {
      this.actionResult.className = "problem";
      this.actionResult.textContent = `${a.label}: ${messageOf(e)}`;
    } finally {
      b.disabled = false;
    }
    void this.reread(true);
  }
}

registerView("object", async (ctx) => {
  const r = ctx.route as ObjectRoute;
  ctx.setTitle(`${r.name} · ${formatRes(r.res)}`);
  const crumbs: [string, string?][] = [[r.cluster, href({ view: "cluster", cluster: r.cluster })]];
  if (r.namespace) crumbs.push([r.namespace, href({ view: "namespace", cluster: r.cluster, namespace: r.namespace })]);
  const kind = await resolve(r.cluster, r.res);
  crumbs.push([pluralTitle(kind), href({ view: "list", cluster: r.cluster, namespace: kind.namespaced ? r.namespace : undefined, res: r.res })], [r.name]);
  ctx.crumbs(crumbs);
  if (ctx.signal.aborted) return;
  new ObjectPage(ctx, r, kind).start();
});

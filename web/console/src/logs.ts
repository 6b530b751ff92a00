// The log view: a container's log, followed as it is written
// (GET …/pods/{pod}/log?follow=true read as a stream), with the container,
// previous instance, timestamps and tail length to choose, line wrap, and
// a download.
//
// A log may be endless, so the page never holds all of it: lines arrive
// through a stream reader, are added once per animation frame, and only
// the last MAX_LINES lines (at most MAX_CHARS characters) stay in the
// page; the view says how many earlier lines it dropped. The download is
// bounded too (DOWNLOAD_LIMIT bytes, saved as a Blob), and the view shows
// the kubectl command that writes the whole log to a file.
//
// Pod logs are the cluster's (and the workload's) text: they are shown with
// textContent only, never as markup.

import { apiFetch, clusterURL, errorOf, messageOf } from "./api";
import { el } from "./dom";
import {
  containerLabel, containerState, containersOf, kubectlContext, loadPod, pickContainer, podCrumbs,
  probeCluster, probeSession, shellQuote, signInAgain, type ContainerInfo, type PodRoute,
} from "./podview";
import { registerView, type KubeObject, type ViewContext } from "./views";

export const MAX_LINES = 10_000;
export const MAX_CHARS = 4_000_000;
const MAX_LINE = 64 * 1024; // a longer line is cut into pieces
export const DOWNLOAD_LIMIT = 16 * 1024 * 1024;
const TAILS = ["100", "1000", "10000", "all"];
const DEFAULT_TAIL = "1000";
const MAX_RESUMES = 3; // a broken followed stream starts again by itself, at most this often a minute

export interface LogOptions {
  container: string;
  previous: boolean;
  timestamps: boolean;
  tail: string; // a number of lines, or "all"
  follow: boolean;
  wrap: boolean;
}

function readOptions(params: URLSearchParams, container: string): LogOptions {
  const tail = params.get("tail") ?? DEFAULT_TAIL;
  return {
    container,
    previous: params.get("previous") === "1",
    timestamps: params.get("timestamps") === "1",
    tail: tail === "all" || /^[1-9][0-9]{0,6}$/.test(tail) ? tail : DEFAULT_TAIL,
    follow: params.get("follow") !== "0",
    wrap: params.get("wrap") !== "0",
  };
}

// query is the view's own query for o (defaults left out).
function query(o: LogOptions): string {
  const q = new URLSearchParams();
  q.set("container", o.container);
  if (o.previous) q.set("previous", "1");
  if (o.timestamps) q.set("timestamps", "1");
  if (o.tail !== DEFAULT_TAIL) q.set("tail", o.tail);
  if (!o.follow) q.set("follow", "0");
  if (!o.wrap) q.set("wrap", "0");
  return "?" + q.toString();
}

// logURL is the API path of the log for o.
function logURL(r: PodRoute, o: LogOptions, extra: Record<string, string> = {}): string {
  const q = new URLSearchParams({ container: o.container });
  if (o.follow && !o.previous) q.set("follow", "true");
  if (o.previous) q.set("previous", "true");
  if (o.timestamps) q.set("timestamps", "true");
  if (o.tail !== "all") q.set("tailLines", o.tail);
  for (const [k, v] of Object.entries(extra)) q.set(k, v);
  return clusterURL(r.cluster, `/api/v1/namespaces/${encodeURIComponent(r.namespace)}/pods/${encodeURIComponent(r.pod)}/log?${q}`);
}

// kubectlLogs is the kubectl command for o: what the view shows, or with
// toFile the whole log (no tail, no follow) into a file.
function kubectlLogs(r: PodRoute, o: LogOptions, toFile: string | null): string {
  const a = [kubectlContext(r.cluster), "logs", "-n", shellQuote(r.namespace), shellQuote(r.pod), "-c", shellQuote(o.container)];
  if (o.previous) a.push("--previous");
  if (o.timestamps) a.push("--timestamps");
  if (toFile) return `${a.join(" ")} > ${shellQuote(toFile)}`;
  a.push(o.tail === "all" ? "--tail=-1" : `--tail=${o.tail}`);
  if (o.follow && !o.previous) a.push("-f");
  return a.join(" ");
}

// CSI matches the terminal control sequences (colors, cursor moves) some
// programs write to their logs: not shown (the download keeps them).
const CSI = /\x1b\[[0-9;:?<=>]*[ -/]*[@-~]/g;

// Lines is the bounded list of lines in the page.
class Lines {
  readonly box: HTMLElement;
  readonly dropNote: HTMLElement;
  readonly count: HTMLElement;
  private pending: string[] = [];
  private frame = 0;
  private shown = 0;
  private chars: number[] = []; // lengths of the lines shown, oldest first (from head)
  private head = 0;
  private totalChars = 0;
  private dropped = 0;
  private total = 0;
  timestamps = false;

  constructor() {
    this.box = el("div", { id: "log-lines", class: "log-lines", tabindex: "0", role: "log", "aria-live": "off", "aria-label": "Log lines" });
    this.dropNote = el("p", { id: "log-dropped", class: "muted" });
    this.dropNote.hidden = true;
    this.count = el("span", { id: "log-count", class: "muted" });
  }

  clear(): void {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.pending = [];
    this.box.replaceChildren();
    this.shown = this.head = this.totalChars = this.dropped = this.total = 0;
    this.chars = [];
    this.dropNote.hidden = true;
    this.count.textContent = "";
  }

  // add queues lines; they are shown at the next animation frame. A
  // hidden tab runs no frames: the queue then keeps only what would stay.
  add(lines: string[]): void {
    for (const l of lines) this.pending.push(l);
    this.total += lines.length;
    if (this.pending.length > MAX_LINES) {
      const cut = this.pending.length - MAX_LINES;
      this.pending.splice(0, cut);
      this.dropped += cut;
    }
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  // flush shows the queued lines and drops the oldest beyond the bounds.
  flush(): void {
    this.frame = 0;
    if (this.pending.length === 0) return;
    const stick = this.box.scrollHeight - this.box.scrollTop - this.box.clientHeight < 8;
    const frag = document.createDocumentFragment();
    for (const raw of this.pending) {
      const text = raw.replace(CSI, "");
      const line = document.createElement("div");
      line.className = "ln";
      const sp = this.timestamps ? text.indexOf(" ") : -1;
      if (sp > 0) {
        line.append(el("span", { class: "ts" }, text.slice(0, sp + 1)), text.slice(sp + 1));
      } else {
        line.textContent = text;
      }
      frag.append(line);
      this.chars.push(text.length);
      this.totalChars += text.length;
      this.shown++;
    }
    this.pending = [];
    this.box.append(frag);
    let drop = 0;
    while (this.shown - drop > MAX_LINES || (this.totalChars > MAX_CHARS && this.shown - drop > 1)) {
      this.totalChars -= this.chars[this.head + drop];
      drop++;
    }
    if (drop > 0) {
      const r = document.createRange();
      r.setStartBefore(this.box.firstChild!);
      r.setEndAfter(this.box.children[drop - 1]);
      r.deleteContents();
      this.head += drop;
      this.shown -= drop;
      this.dropped += drop;
      if (this.head > 4 * MAX_LINES) {
        this.chars = this.chars.slice(this.head);
        this.head = 0;
      }
    }
    if (this.dropped > 0) {
      this.dropNote.hidden = false;
      this.dropNote.textContent = `Earlier lines dropped: the page keeps the last ${MAX_LINES.toLocaleString("en")} lines ` +
        `(${this.dropped.toLocaleString("en")} dropped so far). Download, or the kubectl command below, has the whole log.`;
    }
    this.count.textContent = `${this.shown.toLocaleString("en")} line${this.shown === 1 ? "" : "s"} shown`;
    if (stick) this.box.scrollTop = this.box.scrollHeight;
  }

  get lineCount(): number {
    return this.total;
  }
}

class LogView {
  private readonly lines = new Lines();
  private readonly status = el("p", { id: "log-status", role: "status", class: "log-status" });
  private readonly kubectl = el("code", { id: "log-kubectl" });
  private readonly fullCmd = el("code", { id: "log-kubectl-full" });
  private readonly downloadNote = el("p", { id: "log-download-status", role: "status", class: "muted" });
  private readonly actions = el("span", { class: "log-actions" });
  private stream: AbortController | null = null;
  private opts!: LogOptions;
  private containers: ContainerInfo[] = [];

  constructor(private readonly ctx: ViewContext, private readonly r: PodRoute, private pod: KubeObject) {}

  start(): void {
    const { ctx } = this;
    this.containers = containersOf(this.pod);
    const c = pickContainer(this.pod, this.containers, ctx.params.get("container"));
    if (!c) {
      ctx.main.replaceChildren(el("p", { class: "problem", role: "alert" },
        ctx.params.get("container") ? `The pod has no container named ${ctx.params.get("container")}.` : "The pod has no container."));
      return;
    }
    this.opts = readOptions(ctx.params, c.name);
    ctx.main.replaceChildren(this.skeleton());
    ctx.signal.addEventListener("abort", () => this.stream?.abort());
    void this.run();
  }

  private skeleton(): HTMLElement {
    const o = this.opts;
    const container = el("select", { id: "log-container" });
    for (const c of this.containers) {
      const opt = el("option", { value: c.name }, containerLabel(c));
      opt.selected = c.name === o.container;
      container.append(opt);
    }
    container.addEventListener("change", () => this.change({ container: container.value, previous: false }));
    const tail = el("select", { id: "log-tail" });
    const tails = TAILS.includes(o.tail) ? TAILS : [o.tail, ...TAILS];
    for (const t of tails) {
      const opt = el("option", { value: t }, t === "all" ? "all" : `last ${Number(t).toLocaleString("en")}`);
      opt.selected = t === o.tail;
      tail.append(opt);
    }
    tail.addEventListener("change", () => this.change({ tail: tail.value }));
    const check = (id: string, label: string, on: boolean, f: (v: boolean) => void) => {
      const box = el("input", { id, type: "checkbox" });
      box.checked = on;
      box.addEventListener("change", () => f(box.checked));
      return el("span", { class: "check" }, box, el("label", { for: id }, label));
    };
    const download = el("button", { type: "button", id: "log-download" }, "Download");
    download.addEventListener("click", () => void this.download(download));
    this.lines.box.classList.toggle("nowrap", !o.wrap);
    this.lines.timestamps = o.timestamps;
    const state = containerState(this.pod, o.container);
    return el("section", { class: "log-view", "aria-labelledby": "log-title" },
      el("h1", { id: "log-title" }, `Log of ${this.r.pod}`),
      el("div", { class: "log-controls" },
        el("span", { class: "field" }, el("label", { for: "log-container" }, "Container"), container),
        el("span", { class: "field" }, el("label", { for: "log-tail" }, "Lines"), tail),
        check("log-previous", "Previous instance", o.previous, (v) => this.change({ previous: v })),
        check("log-timestamps", "Timestamps", o.timestamps, (v) => this.change({ timestamps: v })),
        check("log-follow", "Follow", o.follow, (v) => this.change({ follow: v })),
        check("log-wrap", "Wrap lines", o.wrap, (v) => this.setWrap(v)),
        download),
      el("p", { class: "muted log-meta" },
        el("span", { id: "log-container-state" }, `${o.container}: ${state.text}${state.restarts ? `, ${state.restarts} restart${state.restarts === 1 ? "" : "s"}` : ""}`),
        " · ", this.lines.count, this.actions),
      this.status,
      this.lines.dropNote,
      this.lines.box,
      this.downloadNote,
      el("details", { class: "log-cli" },
        el("summary", {}, "With kubectl"),
        el("p", {}, "This view: ", this.kubectl),
        el("p", {}, "The whole log, to a file: ", this.fullCmd)));
  }

  private setWrap(on: boolean): void {
    this.opts.wrap = on;
    this.lines.box.classList.toggle("nowrap", !on);
    history.replaceState(null, "", location.pathname + query(this.opts));
  }

  // change applies new options: the address follows (replaced, so Back
  // leaves the view) and the stream starts again.
  private change(p: Partial<LogOptions>): void {
    this.opts = { ...this.opts, ...p };
    history.replaceState(null, "", location.pathname + query(this.opts));
    this.lines.timestamps = this.opts.timestamps;
    const st = containerState(this.pod, this.opts.container);
    const cs = document.getElementById("log-container-state");
    if (cs) cs.textContent = `${this.opts.container}: ${st.text}${st.restarts ? `, ${st.restarts} restart${st.restarts === 1 ? "" : "s"}` : ""}`;
    const prev = document.getElementById("log-previous") as HTMLInputElement | null;
    if (prev) prev.checked = this.opts.previous;
    void this.run();
  }

  private say(text: string, kind: "" | "problem" = "", ...more: Node[]): void {
    this.status.className = "log-status" + (kind ? " " + kind : "");
    this.status.replaceChildren(text.replace(/\s+$/, more.length ? " " : ""), ...more);
  }

  // breaks are the times of the followed stream's recent breaks.
  private breaks: number[] = [];

  // mayResume reports whether a broken followed stream is started again
  // by itself: at most MAX_RESUMES times a minute.
  private mayResume(): boolean {
    const now = Date.now();
    this.breaks = this.breaks.filter((t) => now - t < 60_000);
    this.breaks.push(now);
    return this.breaks.length <= MAX_RESUMES;
  }

  // run (re)starts the stream for the current options. resumed: after
  // the previous stream broke (the view says so).
  private async run(resumed = false): Promise<void> {
    this.stream?.abort();
    const ac = new AbortController();
    this.stream = ac;
    const { r, opts: o } = this;
    this.lines.clear();
    this.actions.replaceChildren();
    this.kubectl.textContent = kubectlLogs(r, o, null);
    this.fullCmd.textContent = kubectlLogs(r, o, `${r.pod}-${o.container}${o.previous ? "-previous" : ""}.log`);
    this.say(`Reading the log of ${o.container}…`);
    let resp: Response;
    try {
      resp = await apiFetch(logURL(r, o), { signal: ac.signal, headers: { Accept: "text/plain, */*" } });
    } catch (e) {
      if (ac.signal.aborted) return;
      await this.failed(e);
      return;
    }
    if (!resp.ok || !resp.body) {
      const e = await errorOf(resp);
      if (ac.signal.aborted) return;
      if (resp.status === 400 && o.previous) this.say(`No previous instance of ${o.container}: ${e.message}`, "problem");
      else if (resp.status === 403) this.say(`Refused: ${e.message}`, "problem");
      else if (resp.status >= 500) await this.failed(e);
      else this.say(`The log could not be read: ${e.message}`, "problem");
      return;
    }
    const following = o.follow && !o.previous;
    this.say(following ? `Following the log of ${o.container}${resumed ? ` (again, after the stream broke ${this.breaks.length}× in the last minute)` : ""}.` :
      `Reading the log of ${o.container}${o.previous ? " (previous instance)" : ""}…`);
    document.body.dataset.state = "log";
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let partial = "";
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (ac.signal.aborted) return;
        if (done) break;
        const text = partial + dec.decode(value, { stream: true });
        const parts = text.split("\n");
        partial = parts.pop() ?? "";
        while (partial.length > MAX_LINE) {
          parts.push(partial.slice(0, MAX_LINE));
          partial = partial.slice(MAX_LINE);
        }
        if (parts.length) this.lines.add(parts);
      }
      partial += dec.decode();
      if (partial) this.lines.add([partial]);
    } catch (e) {
      if (ac.signal.aborted) return;
      this.lines.flush();
      if (following && this.mayResume()) {
        // A followed log broke off (the connection, not the API server's
        // end): start it again, from its tail, after a short pause.
        this.say(`The log stream broke (${messageOf(e)}); following it again…`, "problem");
        await new Promise((res) => window.setTimeout(res, 500 * this.breaks.length));
        if (!ac.signal.aborted) void this.run(true);
        return;
      }
      await this.failed(e);
      return;
    }
    if (ac.signal.aborted) return;
    this.lines.flush();
    if (!following) {
      this.say(`The log of ${o.container}${o.previous ? " (previous instance)" : ""}: ${this.lines.lineCount.toLocaleString("en")} lines (not following).`);
      return;
    }
    await this.ended();
  }

  // ended words why a followed log's stream ended.
  private async ended(): Promise<void> {
    const o = this.opts;
    const again = this.againButton("Follow again");
    if (await probeSession() === "ended") {
      this.say("The log stream ended: the browser session ended (signed out, expired or revoked). ", "problem", signInAgain());
      document.body.dataset.state = "log-ended";
      return;
    }
    let why = "The log stream ended (the API server closed it).";
    try {
      this.pod = await loadPod(this.r, this.ctx.signal);
      const st = containerState(this.pod, o.container);
      if (st.terminated) why = `The log stream ended: container ${o.container} exited (exit code ${st.exitCode ?? "?"}).`;
    } catch (e) {
      if (this.ctx.signal.aborted) return;
      why = `The log stream ended: ${messageOf(e)}`;
    }
    this.say(why + " ", "problem", again);
    document.body.dataset.state = "log-ended";
  }

  // failed words a failed request or a broken stream.
  private async failed(e: unknown): Promise<void> {
    const again = this.againButton("Try again");
    if (await probeSession() === "ended") {
      this.say("The log stream ended: the browser session ended (signed out, expired or revoked). ", "problem", signInAgain());
    } else {
      const c = await probeCluster(this.r.cluster);
      if (c && !c.ready) {
        this.say(`The cluster ${this.r.cluster} is unreachable${c.error ? ": " + c.error : ""}. `, "problem", again);
      } else {
        this.say(`The connection to the cluster failed: ${messageOf(e)} `, "problem", again);
      }
    }
    document.body.dataset.state = "log-ended";
  }

  private againButton(label: string): HTMLButtonElement {
    const b = el("button", { type: "button", id: "log-again" }, label);
    b.addEventListener("click", () => void this.run());
    return b;
  }

  // download saves the log for the current options (never followed) as a
  // file, at most DOWNLOAD_LIMIT bytes of it, without showing it.
  private async download(button: HTMLButtonElement): Promise<void> {
    const { r, opts: o } = this;
    const name = `${r.pod}-${o.container}${o.previous ? "-previous" : ""}.log`;
    button.disabled = true;
    this.downloadNote.textContent = `Downloading ${name}…`;
    try {
      const resp = await apiFetch(logURL(r, { ...o, follow: false }, { limitBytes: String(DOWNLOAD_LIMIT) }),
        { signal: this.ctx.signal, headers: { Accept: "text/plain, */*" } });
      if (!resp.ok) throw await errorOf(resp);
      const blob = await resp.blob();
      const url = URL.createObjectURL(new Blob([blob], { type: "text/plain" }));
      const a = el("a", { href: url, download: name });
      a.hidden = true;
      document.body.append(a);
      a.click();
      a.remove();
      window.setTimeout(() => URL.revokeObjectURL(url), 60_000);
      const what = o.tail === "all" ? "the log" : `the last ${Number(o.tail).toLocaleString("en")} lines`;
      this.downloadNote.textContent = blob.size >= DOWNLOAD_LIMIT
        ? `Saved ${name}: the first ${DOWNLOAD_LIMIT / 1024 / 1024} MiB of ${what} (${blob.size.toLocaleString("en")} bytes; the download stops there). For the whole log: ${this.fullCmd.textContent}`
        : `Saved ${name}: ${what}, ${blob.size.toLocaleString("en")} bytes.`;
    } catch (e) {
      if (!this.ctx.signal.aborted) this.downloadNote.textContent = `The download failed: ${messageOf(e)}`;
    } finally {
      button.disabled = false;
    }
  }
}

registerView("log", async (ctx) => {
  const r = ctx.route as PodRoute;
  ctx.setTitle(`Log · ${r.pod}`);
  podCrumbs(ctx, r, "Log");
  ctx.main.replaceChildren(el("p", { role: "status", class: "muted" }, "Loading the pod…"));
  const pod = await loadPod(r, ctx.signal);
  if (ctx.signal.aborted) return;
  new LogView(ctx, r, pod).start();
});

// The terminal (exec) and attach views: xterm.js (loaded on demand, see
// xterm-entry.ts) on a WebSocket to the pod's exec or attach subresource
// through the gateway, in the Kubernetes channel protocol (channel.ts).
//
// The stub admits the WebSocket by its Origin (a browser sends no custom
// header on a WebSocket) and the browser session; the agent admits it
// only if the user may create pods/exec (pods/attach), as kubectl's POST
// would need; the view asks the same (SelfSubjectAccessReview) first and
// opens no socket when the answer is no.
//
// Safety: pasted text loses its control characters before it reaches the
// terminal (it can never end bracketed paste early); output cannot write
// the clipboard (no clipboard addon; OSC 52 is swallowed); a deep link
// opens a shell but never runs a command (S15): the only choice a link
// carries is the container and the shell, bash or sh.

import type { Terminal as XTerminal } from "@xterm/xterm";
import type { FitAddon as XFitAddon } from "@xterm/addon-fit";
import { forgetAccess, can } from "./access";
import { clusterURL, wsURL } from "./api";
import {
  CLOSE, ERROR, PROTOCOLS, STDERR, STDIN, STDOUT, closeFrame, frame, notFound, parseStatus, resizeFrame, sanitizePaste, type Outcome,
} from "./channel";
import { el } from "./dom";
import {
  containerLabel, containersOf, kubectlContext, loadPod, pickContainer, podCrumbs, probeCluster, probeSession, shellQuote,
  signInAgain, type ContainerInfo, type PodRoute,
} from "./podview";
import { openedInConsole } from "./router";
import { allowTerminalStyles } from "./stylenonce";
import { registerView, type KubeObject, type ViewContext } from "./views";

type Mode = "exec" | "attach";
type Shell = "auto" | "bash" | "sh";

interface Xterm {
  Terminal: typeof XTerminal;
  FitAddon: typeof XFitAddon;
}

const XTERM_JS = "/keyhole/console/xterm.js";
let xtermLoad: Promise<Xterm> | null = null;

// loadXterm loads dist/xterm.js once (script-src 'self' allows it).
function loadXterm(): Promise<Xterm> {
  xtermLoad ??= new Promise<Xterm>((resolve, reject) => {
    const got = (window as unknown as { KeyholeXterm?: Xterm }).KeyholeXterm;
    if (got) {
      resolve(got);
      return;
    }
    const s = document.createElement("script");
    s.src = XTERM_JS;
    s.onload = () => {
      const x = (window as unknown as { KeyholeXterm?: Xterm }).KeyholeXterm;
      if (x) resolve(x);
      else reject(new Error("the terminal's script did not load"));
    };
    s.onerror = () => {
      xtermLoad = null;
      reject(new Error("the terminal's script could not be loaded"));
    };
    document.head.append(s);
  });
  return xtermLoad;
}

// One connection: its socket and what it learned.
interface Conn {
  ws: WebSocket;
  path: string; // the API path it opened
  shell: string; // the command run (exec), "" for attach
  opened: boolean;
  output: boolean; // any stdout/stderr seen
  outcome: Outcome | null;
  closing: boolean; // closed by the view (Disconnect, another container, leaving)
  status: string; // the error stream's text so far
  decoder: TextDecoder; // of the error stream
}

class TermView {
  private readonly status = el("p", { id: "terminal-status", role: "status", class: "terminal-status" });
  private readonly box = el("div", { id: "terminal", class: "terminal-box" });
  private readonly connectBtn = el("button", { type: "button", id: "terminal-connect" }, "Connect");
  private readonly disconnectBtn = el("button", { type: "button", id: "terminal-disconnect", class: "secondary" }, "Disconnect");
  private readonly cli = el("code", { id: "terminal-kubectl" });
  private term: XTerminal | null = null;
  private conn: Conn | null = null;
  private container!: ContainerInfo;
  private shell: Shell = "auto";
  private line = ""; // the line being typed, when the session has no tty (attach)

  constructor(private readonly ctx: ViewContext, private readonly r: PodRoute, private readonly mode: Mode,
    private readonly pod: KubeObject) {}

  private get tty(): boolean {
    return this.mode === "exec" || this.container.tty;
  }

  private get stdin(): boolean {
    return this.mode === "exec" || this.container.stdin;
  }

  async start(): Promise<void> {
    const { ctx, r, mode } = this;
    // Init containers have finished (or not started) by the time one
    // could exec into them; the pod's containers and ephemeral ones run.
    const list = containersOf(this.pod).filter((c) => c.kind !== "init");
    const c = pickContainer(this.pod, list, ctx.params.get("container"));
    if (!c) {
      ctx.main.replaceChildren(el("p", { class: "problem", role: "alert" },
        ctx.params.get("container") ? `The pod has no running container named ${ctx.params.get("container")}.` : "The pod has no container."));
      return;
    }
    this.container = c;
    const asked = ctx.params.get("shell");
    this.shell = asked === "bash" || asked === "sh" ? asked : "auto";
    ctx.main.replaceChildren(this.skeleton(list));
    this.updateCLI();

    // May the user? Asked before any socket opens.
    const allowed = await can(r.cluster, { verb: "create", resource: "pods", subresource: mode, namespace: r.namespace, name: r.pod });
    if (ctx.signal.aborted) return;
    if (!allowed) {
      this.say(`Not allowed: the cluster's RBAC does not let you create pods/${mode} in the namespace ${r.namespace}, ` +
        `so the console opens no ${mode === "exec" ? "terminal" : "attach session"} (nothing was sent to the pod).`, "problem");
      this.connectBtn.disabled = this.disconnectBtn.disabled = true;
      document.body.dataset.state = `${mode}-denied`;
      return;
    }

    this.say("Loading the terminal…");
    const x = await loadXterm();
    if (ctx.signal.aborted) return;
    const unstyle = allowTerminalStyles();
    const term = new x.Terminal({
      cursorBlink: true,
      convertEol: !this.tty,
      fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", "Liberation Mono", monospace',
      fontSize: 14,
      lineHeight: 1.2, // room for the descenders ("_") in the DOM renderer's rows
      scrollback: 5000,
      theme: { background: "#16191e", foreground: "#e6e8eb", cursor: "#e6e8eb", selectionBackground: "#3b5a85" },
      // Links that output makes (OSC 8) open only as web links, in a
      // new tab with no opener and no referrer.
      linkHandler: {
        activate: (_ev, uri) => {
          if (/^https?:\/\//i.test(uri)) window.open(uri, "_blank", "noopener,noreferrer");
        },
      },
    });
    const fit = new x.FitAddon();
    term.loadAddon(fit);
    // OSC 52 (set or read the clipboard) does nothing: no handler in
    // xterm.js without the clipboard addon; this one swallows it anyway.
    term.parser.registerOscHandler(52, () => true);
    this.term = term;
    term.open(this.box);

    // Paste: the text, less its control characters, through xterm's own
    // paste (which brackets it when the program asked for bracketed
    // paste). Caught before xterm's listeners on the textarea.
    const onPaste = (ev: ClipboardEvent) => {
      ev.preventDefault();
      ev.stopImmediatePropagation();
      const text = ev.clipboardData?.getData("text/plain") ?? "";
      if (text && this.stdin) term.paste(sanitizePaste(text));
    };
    this.box.addEventListener("paste", onPaste, { capture: true });
    // Ctrl+Shift+C copies the selection (a selection is copied by the
    // browser's own Copy too); Ctrl+Shift+V is left to the browser, which
    // pastes (the paste event above). Plain Ctrl+C and Ctrl+V go to the
    // program, as in a terminal.
    term.attachCustomKeyEventHandler((ev) => {
      if (ev.type !== "keydown" || !ev.ctrlKey || !ev.shiftKey || ev.altKey || ev.metaKey) return true;
      if (ev.code === "KeyC") {
        const sel = term.getSelection();
        if (sel) navigator.clipboard?.writeText(sel).catch(() => this.say("The selection could not be copied (the browser refused the clipboard).", "problem"));
        ev.preventDefault();
        return false;
      }
      return ev.code !== "KeyV";
    });
    term.onData((d) => this.input(d));
    term.onBinary((d) => this.send(frame(STDIN, Uint8Array.from(d, (ch) => ch.charCodeAt(0) & 0xff))));
    term.onResize(({ cols, rows }) => {
      if (this.conn?.opened && this.tty) this.send(resizeFrame(cols, rows));
    });
    let pending = 0;
    const refit = () => {
      if (pending) return;
      pending = requestAnimationFrame(() => {
        pending = 0;
        if (this.box.clientWidth > 0 && this.box.clientHeight > 0) fit.fit();
      });
    };
    const ro = new ResizeObserver(refit);
    ro.observe(this.box);
    window.addEventListener("resize", refit);
    fit.fit();

    ctx.signal.addEventListener("abort", () => {
      this.closeConn();
      ro.disconnect();
      window.removeEventListener("resize", refit);
      if (pending) cancelAnimationFrame(pending);
      this.box.removeEventListener("paste", onPaste, { capture: true });
      term.dispose();
      unstyle();
    });
    if (openedInConsole()) {
      this.connect();
      return;
    }
    // Opened by loading this address (a link from anywhere, even another
    // site): nothing starts in the pod until the user asks.
    const what = mode === "exec" ? `a shell (${this.shell === "auto" ? "bash, else sh" : this.shell})` : "the container's process";
    this.say(`Press Connect to start ${what} in container ${this.container.name} of pod ${r.pod}. ` +
      "This page was opened by a link, so nothing runs until you do.");
    document.body.dataset.state = `${mode}-ready`;
    this.connectBtn.focus();
  }

  private skeleton(list: ContainerInfo[]): HTMLElement {
    const { mode } = this;
    const container = el("select", { id: "terminal-container" });
    for (const c of list) {
      const opt = el("option", { value: c.name }, containerLabel(c));
      opt.selected = c.name === this.container.name;
      container.append(opt);
    }
    container.addEventListener("change", () => {
      const c = list.find((x) => x.name === container.value);
      if (!c) return;
      this.container = c;
      this.restart();
    });
    const controls = el("div", { class: "terminal-controls" },
      el("span", { class: "field" }, el("label", { for: "terminal-container" }, "Container"), container));
    if (mode === "exec") {
      const shell = el("select", { id: "terminal-shell" });
      for (const [v, label] of [["auto", "bash, else sh"], ["bash", "bash"], ["sh", "sh"]]) {
        const opt = el("option", { value: v }, label);
        opt.selected = v === this.shell;
        shell.append(opt);
      }
      shell.addEventListener("change", () => {
        this.shell = shell.value as Shell;
        this.restart();
      });
      controls.append(el("span", { class: "field" }, el("label", { for: "terminal-shell" }, "Shell"), shell));
    }
    this.connectBtn.addEventListener("click", () => this.restart());
    this.disconnectBtn.addEventListener("click", () => {
      if (!this.conn || this.conn.closing) return;
      this.closeConn();
    });
    controls.append(this.connectBtn, this.disconnectBtn);
    const title = mode === "exec" ? `Terminal in ${this.r.pod}` : `Attached to ${this.r.pod}`;
    return el("section", { class: "terminal-view", "aria-labelledby": "terminal-title" },
      el("h1", { id: "terminal-title" }, title),
      controls,
      this.status,
      this.box,
      el("details", { class: "terminal-cli" }, el("summary", {}, "With kubectl"), el("p", {}, this.cli)));
  }

  private updateCLI(): void {
    const { r } = this;
    const base = `${kubectlContext(r.cluster)} ${this.mode} -n ${shellQuote(r.namespace)} ${shellQuote(r.pod)} -c ${shellQuote(this.container.name)}`;
    if (this.mode === "exec") {
      const sh = this.shell === "auto" ? "sh -c 'command -v bash >/dev/null && exec bash || exec sh'" : this.shell;
      this.cli.textContent = `${base} -it -- ${sh}`;
    } else {
      this.cli.textContent = `${base}${this.stdin ? " -i" : ""}${this.container.tty ? " -t" : ""}`;
    }
  }

  private say(text: string, kind: "" | "problem" = "", ...more: Node[]): void {
    this.status.className = "terminal-status" + (kind ? " " + kind : "");
    this.status.replaceChildren(text, ...more);
  }

  // restart follows the choices (address, command line) and connects
  // again, with a clean screen.
  private restart(): void {
    const q = new URLSearchParams({ container: this.container.name });
    if (this.mode === "exec" && this.shell !== "auto") q.set("shell", this.shell);
    history.replaceState(null, "", `${location.pathname}?${q}`);
    this.updateCLI();
    this.closeConn();
    this.term?.reset();
    this.line = "";
    if (this.term) this.term.options.convertEol = !this.tty;
    this.connect();
  }

  private closeConn(): void {
    const c = this.conn;
    if (!c || c.closing) return;
    c.closing = true;
    if (c.ws.readyState === WebSocket.OPEN || c.ws.readyState === WebSocket.CONNECTING) c.ws.close(1000);
  }

  private send(data: Uint8Array): void {
    const c = this.conn;
    if (c?.opened && !c.closing && c.ws.readyState === WebSocket.OPEN) c.ws.send(data);
  }

  // input is what the user typed or pasted. With a tty, as it is (the
  // pty's line discipline echoes and edits); without one (attach to a
  // container without tty), the view edits the line itself, echoes it,
  // and sends it on Enter.
  private input(d: string): void {
    if (!this.stdin) return;
    if (this.tty) {
      this.send(frame(STDIN, d));
      return;
    }
    const term = this.term!;
    for (const ch of d) {
      if (ch === "\r" || ch === "\n") {
        term.write("\r\n");
        this.send(frame(STDIN, this.line + "\n"));
        this.line = "";
      } else if (ch === "\x7f" || ch === "\b") {
        if (this.line) {
          this.line = Array.from(this.line).slice(0, -1).join("");
          term.write("\b \b");
        }
      } else if (ch === "\x04") { // ^D: the line so far, or EOF
        if (this.line) {
          this.send(frame(STDIN, this.line));
          this.line = "";
        } else if (this.conn?.ws.protocol === "v5.channel.k8s.io") {
          this.send(closeFrame(STDIN));
        }
      } else if (ch === "\x03") { // ^C: no signals without a tty; drop the line
        this.line = "";
        term.write("^C\r\n");
      } else if (ch >= " ") {
        this.line += ch;
        term.write(ch);
      }
    }
  }

  private connect(): void {
    const { r, mode } = this;
    const c = this.container;
    this.connectBtn.textContent = "Reconnect";
    this.disconnectBtn.disabled = false;
    const q = new URLSearchParams({ container: c.name });
    let shell = "";
    if (mode === "exec") {
      shell = this.shell === "auto" ? "bash" : this.shell;
      q.set("command", shell);
      q.set("stdin", "true");
      q.set("stdout", "true");
      q.set("tty", "true");
    } else {
      if (c.stdin) q.set("stdin", "true");
      q.set("stdout", "true");
      if (!c.tty) q.set("stderr", "true");
      if (c.tty) q.set("tty", "true");
    }
    this.startConn(clusterURL(r.cluster, `/api/v1/namespaces/${encodeURIComponent(r.namespace)}/pods/${encodeURIComponent(r.pod)}/${mode}?${q}`), shell);
  }

  private startConn(path: string, shell: string): void {
    const ws = new WebSocket(wsURL(path), PROTOCOLS);
    ws.binaryType = "arraybuffer";
    const conn: Conn = { ws, path, shell, opened: false, output: false, outcome: null, closing: false, status: "", decoder: new TextDecoder() };
    this.conn = conn;
    const what = this.mode === "exec" ? `${shell} in ${this.container.name}` : this.container.name;
    this.say(`Connecting to ${what}…`);
    ws.onopen = () => {
      if (conn.closing) return;
      conn.opened = true;
      if (this.mode === "exec") this.say(`connected (${shell})`);
      else this.say(`attached to ${this.container.name}${this.stdin ? "" : " (output only: the container has no stdin)"}` +
        `${this.container.tty ? "" : ` (no tty: the console edits and echoes each line, and sends it on Enter)`}`);
      document.body.dataset.state = this.mode;
      if (this.tty && this.term) this.send(resizeFrame(this.term.cols, this.term.rows));
      this.term?.focus();
    };
    ws.onmessage = (ev: MessageEvent) => {
      if (conn !== this.conn || !(ev.data instanceof ArrayBuffer)) return;
      const b = new Uint8Array(ev.data);
      if (b.length === 0) return;
      const data = b.subarray(1);
      switch (b[0]) {
        case STDOUT:
        case STDERR:
          if (data.length) {
            conn.output = true;
            this.term?.write(data);
          }
          break;
        case ERROR:
          conn.status += conn.decoder.decode(data, { stream: true });
          break;
        case CLOSE:
          break;
      }
    };
    ws.onclose = (ev: CloseEvent) => {
      if (conn.status) conn.outcome = parseStatus(conn.status);
      void this.ended(conn, ev);
    };
  }

  // ended says how the session ended, finding out why when the socket
  // alone does not say (a browser learns nothing of a refused handshake).
  private async ended(conn: Conn, ev: CloseEvent): Promise<void> {
    if (this.ctx.signal.aborted || conn !== this.conn) return;
    const { mode, r } = this;
    const ended = () => {
      document.body.dataset.state = `${mode}-ended`;
      this.disconnectBtn.disabled = true;
    };
    if (conn.closing) {
      this.say("disconnected");
      ended();
      return;
    }
    const o = conn.outcome;
    if (o?.kind === "exit") {
      const msg = `exited with status ${o.code}`;
      this.term?.write(`\r\n\x1b[2m[${msg}]\x1b[0m\r\n`);
      this.say(mode === "exec" ? `${conn.shell} ${msg}` : `the container's process ${msg}`);
      ended();
      return;
    }
    if (o?.kind === "failure") {
      if (mode === "exec" && this.shell === "auto" && conn.shell === "bash" && !conn.output && notFound(o)) {
        this.say("bash is not in this container: trying sh…");
        this.startConn(conn.path.replace(/([?&])command=bash(&|$)/, "$1command=sh$2"), "sh");
        return;
      }
      this.say(`The session failed: ${o.message}`, "problem");
      ended();
      return;
    }
    // No outcome: the connection itself ended, or never opened.
    const session = await probeSession();
    if (this.ctx.signal.aborted || conn !== this.conn) return;
    if (session === "ended") {
      this.term?.write("\r\n\x1b[2m[the browser session ended]\x1b[0m\r\n");
      this.say(`The ${mode === "exec" ? "terminal" : "attach session"} ended: the browser session ended (signed out, expired or revoked), ` +
        "and the gateway closed it. ", "problem", signInAgain());
      ended();
      return;
    }
    if (!conn.opened) {
      forgetAccess();
      const allowed = await can(r.cluster, { verb: "create", resource: "pods", subresource: mode, namespace: r.namespace, name: r.pod });
      if (this.ctx.signal.aborted || conn !== this.conn) return;
      if (!allowed) {
        this.say(`Refused: you may not create pods/${mode} in the namespace ${r.namespace} (the cluster's RBAC).`, "problem");
        ended();
        return;
      }
    }
    const cluster = await probeCluster(r.cluster);
    if (this.ctx.signal.aborted || conn !== this.conn) return;
    if (cluster && !cluster.ready) {
      this.say(`The cluster ${r.cluster} is unreachable${cluster.error ? ": " + cluster.error : ""}.`, "problem");
    } else if (!conn.opened) {
      this.say(`The ${mode === "exec" ? "terminal" : "attach session"} could not connect (the gateway or the cluster refused the WebSocket, code ${ev.code}).`, "problem");
    } else {
      this.say(`The connection ended (WebSocket code ${ev.code}${ev.reason ? ": " + ev.reason : ""}).`, "problem");
    }
    ended();
  }
}

function open(mode: Mode) {
  return async (ctx: ViewContext) => {
    const r = ctx.route as PodRoute;
    ctx.setTitle(`${mode === "exec" ? "Terminal" : "Attach"} · ${r.pod}`);
    podCrumbs(ctx, r, mode === "exec" ? "Terminal" : "Attach");
    ctx.main.replaceChildren(el("p", { role: "status", class: "muted" }, "Loading the pod…"));
    const pod = await loadPod(r, ctx.signal);
    if (ctx.signal.aborted) return;
    await new TermView(ctx, r, mode, pod).start();
  };
}

registerView("exec", open("exec"));
registerView("attach", open("attach"));

// Keyhole's console (docs/console.md): a single page under /console that
// shows the clusters the gateway lets the user reach and lets them look
// into and act on each, through /clusters/{id}/… with the browser session:
// the same gateway path, identity, policy and audit as kubectl.
//
// main.ts owns the page: the header, the breadcrumb trail, the signed-out
// state, and dispatching the address (router.ts) to the view registered for
// it (views.ts). Each view module registers itself on import.

import { setSignedOutHandler } from "./api";
import { showSession } from "./session";
import { el } from "./dom";
import { href, link, markInConsole, parse, setNavigateHandler, type Route } from "./router";
import { viewFor } from "./views";
import "./clustersview";
import "./browse/index";
import "./apps";
import "./act";
import "./term";

let current: AbortController | null = null;
let signedOut = false;

function crumbsNav(): HTMLElement {
  let nav = document.getElementById("crumbs");
  if (!nav) {
    nav = el("nav", { id: "crumbs", "aria-label": "Breadcrumb" });
    document.querySelector("header")?.append(nav);
  }
  return nav;
}

function setCrumbs(trail: [string, string?][]): void {
  const nav = crumbsNav();
  const items: Node[] = [link(href({ view: "clusters" }), "Clusters")];
  for (const [text, to] of trail) {
    items.push(el("span", { class: "sep", "aria-hidden": "true" }, "/"));
    items.push(to ? link(to, text) : el("span", { "aria-current": "page" }, text));
  }
  nav.replaceChildren(...items);
}

// showSignedOut replaces whatever is shown with "Sign in", which returns
// to this very address once signed in (a deep link survives sign-in; it
// only navigates).
function showSignedOut(message: string): void {
  if (signedOut) return;
  signedOut = true;
  current?.abort();
  const main = document.getElementById("main");
  if (!main) return;
  const then = location.pathname + location.search;
  const section = el("section", { class: "signin", "aria-labelledby": "signin-title" },
    el("h1", { id: "signin-title" }, "Sign in"),
    el("p", {}, "Sign in to see the clusters you may reach."),
    el("p", {}, el("a", { class: "button", href: "/?then=" + encodeURIComponent(then) }, "Sign in")));
  if (message) section.append(el("p", { class: "muted" }, message));
  main.replaceChildren(section);
  crumbsNav().replaceChildren();
  document.title = "Sign in · Keyhole";
  document.body.dataset.state = "signed-out";
}

function notFound(main: HTMLElement, r: Route): void {
  main.replaceChildren(el("section", {},
    el("h1", {}, "Not found"),
    el("p", {}, "The console has no page at this address."),
    el("p", {}, link(href({ view: "clusters" }), "Go to the clusters"))));
  document.body.dataset.state = "notfound";
  void r;
}

// render shows the view of the current address, ending the previous one
// (its watches and sockets close on its signal).
function render(): void {
  if (signedOut) return;
  const main = document.getElementById("main");
  if (!main) return;
  current?.abort();
  const ac = new AbortController();
  current = ac;
  const route = parse(location.pathname);
  main.replaceChildren();
  delete document.body.dataset.state;
  const view = viewFor(route.view);
  if (!view) {
    notFound(main, route);
    return;
  }
  const result = view({
    main, route, signal: ac.signal,
    params: new URLSearchParams(location.search),
    setTitle: (t) => { document.title = `${t} · Keyhole`; },
    crumbs: setCrumbs,
  });
  if (result instanceof Promise) {
    result.catch((e: unknown) => {
      if (ac.signal.aborted) return;
      main.replaceChildren(el("p", { class: "problem", role: "alert" }, String(e instanceof Error ? e.message : e)));
    });
  }
  main.focus({ preventScroll: true });
}

function start(): void {
  setSignedOutHandler(showSignedOut);
  setNavigateHandler(render);
  window.addEventListener("popstate", () => {
    markInConsole();
    render();
  });
  render();
  const header = document.querySelector("header");
  if (header) void showSession(header);
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();

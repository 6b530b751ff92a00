// The console's addresses. Every view has a path under /console, so a
// link to a cluster, namespace, object, log or terminal can be shared and
// bookmarked, and survives sign-in (the sign-in returns to it). A link only
// navigates: no address runs a command or changes anything.
//
//   /console, /console/clusters?q=…          the clusters view
//   /console/c/{cluster}                       the cluster: its namespaces and resource kinds
//   /console/c/{cluster}/ns/{ns}               a namespace: its workloads and resource kinds
//   /console/c/{cluster}[/ns/{ns}]/{res}       a list (cluster-scoped, all namespaces, or one)
//   /console/c/{cluster}[/ns/{ns}]/{res}/{name}          one object (?tab=yaml|events|edit)
//   /console/c/{cluster}/ns/{ns}/pods/{pod}/log          a container's log (?container=&previous=&timestamps=&tail=)
//   /console/c/{cluster}/ns/{ns}/pods/{pod}/exec         a terminal (?container=)
//   /console/c/{cluster}/ns/{ns}/pods/{pod}/attach       attached to a container (?container=)
//
// {res} is a resource as kubectl names it: its plural for the core group
// ("pods"), plural.group otherwise ("deployments.apps").

export const BASE = "/console";

export interface ResourceRef {
  resource: string; // plural, lower case
  group: string; // "" for the core group
}

export type Route =
  | { view: "clusters" }
  | { view: "cluster"; cluster: string }
  | { view: "namespace"; cluster: string; namespace: string }
  | { view: "list"; cluster: string; namespace?: string; res: ResourceRef }
  | { view: "object"; cluster: string; namespace?: string; res: ResourceRef; name: string }
  | { view: "log" | "exec" | "attach"; cluster: string; namespace: string; pod: string }
  | { view: "notfound"; path: string };

export type ViewName = Route["view"];

// parseRes reads "deployments.apps" or "pods".
export function parseRes(s: string): ResourceRef {
  const i = s.indexOf(".");
  return i < 0 ? { resource: s, group: "" } : { resource: s.slice(0, i), group: s.slice(i + 1) };
}

// formatRes writes a ResourceRef as parseRes reads it.
export function formatRes(r: ResourceRef): string {
  return r.group ? `${r.resource}.${r.group}` : r.resource;
}

// parse reads a path (location.pathname) into a Route.
export function parse(pathname: string): Route {
  if (pathname !== BASE && !pathname.startsWith(BASE + "/")) return { view: "notfound", path: pathname };
  let parts: string[];
  try {
    parts = pathname.slice(BASE.length).split("/").filter((p) => p !== "").map(decodeURIComponent);
  } catch {
    return { view: "notfound", path: pathname }; // a malformed %-escape
  }
  // No name in Kubernetes holds a "/" or is "." or "..": a segment that
  // decodes to one would make the API path differ from what the page shows.
  if (parts.some((p) => p.includes("/") || p === "." || p === "..")) return { view: "notfound", path: pathname };
  if (parts.length === 0 || (parts.length === 1 && parts[0] === "clusters")) return { view: "clusters" };
  if (parts[0] !== "c" || parts.length < 2) return { view: "notfound", path: pathname };
  const cluster = parts[1];
  let rest = parts.slice(2);
  if (rest.length === 0) return { view: "cluster", cluster };
  let namespace: string | undefined;
  if (rest[0] === "ns") {
    if (rest.length < 2) return { view: "notfound", path: pathname };
    namespace = rest[1];
    rest = rest.slice(2);
    if (rest.length === 0) return { view: "namespace", cluster, namespace };
  }
  const res = parseRes(rest[0]);
  if (rest.length === 1) return { view: "list", cluster, namespace, res };
  if (rest.length === 2) return { view: "object", cluster, namespace, res, name: rest[1] };
  if (rest.length === 3 && namespace && res.resource === "pods" && res.group === "" &&
      (rest[2] === "log" || rest[2] === "exec" || rest[2] === "attach")) {
    return { view: rest[2], cluster, namespace, pod: rest[1] };
  }
  return { view: "notfound", path: pathname };
}

const seg = encodeURIComponent;

// href is the path of a Route (without a query).
export function href(r: Route): string {
  const c = (id: string) => `${BASE}/c/${seg(id)}`;
  const ns = (id: string, n?: string) => (n ? `${c(id)}/ns/${seg(n)}` : c(id));
  switch (r.view) {
    case "clusters": return BASE;
    case "cluster": return c(r.cluster);
    case "namespace": return ns(r.cluster, r.namespace);
    case "list": return `${ns(r.cluster, r.namespace)}/${seg(formatRes(r.res))}`;
    case "object": return `${ns(r.cluster, r.namespace)}/${seg(formatRes(r.res))}/${seg(r.name)}`;
    case "log": case "exec": case "attach":
      return `${ns(r.cluster, r.namespace)}/pods/${seg(r.pod)}/${r.view}`;
    case "notfound": return r.path;
  }
}

let onNavigate: () => void = () => {};

// inConsole is set once the user has moved within the console (a link of
// the console, back or forward): the page was not just opened by a link
// from elsewhere. A view that would start something (a terminal) waits
// for a click when it is not set: another site can open any console
// address in a new tab, and its requests would carry the session.
let inConsole = false;

// openedInConsole reports whether the current view was reached by moving
// within the console, rather than by loading the page at its address.
export function openedInConsole(): boolean {
  return inConsole;
}

// markInConsole records a move within the console (main.ts, on popstate).
export function markInConsole(): void {
  inConsole = true;
}

// setNavigateHandler sets what runs when the address changes (main.ts).
export function setNavigateHandler(f: () => void): void {
  onNavigate = f;
}

// navigate goes to a console path (with its query) without reloading.
export function navigate(to: string, replace = false): void {
  inConsole = true;
  if (replace) history.replaceState(null, "", to);
  else history.pushState(null, "", to);
  onNavigate();
}

// link is an <a> to a console path that navigates in place (a plain
// click) or opens a tab (middle click, Ctrl/Cmd click) like any link.
export function link(to: string, text: string, props: Partial<Record<string, string>> = {}): HTMLAnchorElement {
  const a = document.createElement("a");
  for (const [k, v] of Object.entries(props)) if (v !== undefined) a.setAttribute(k, v);
  a.href = to;
  a.textContent = text;
  a.addEventListener("click", (ev) => {
    if (ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
    ev.preventDefault();
    navigate(to);
  });
  return a;
}

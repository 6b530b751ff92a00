// What the log, terminal and attach views share: the pod and its
// containers, the breadcrumb trail, and the probes that word why a stream
// ended (the browser session, the cluster's health).

import { CONSOLE_HEADER, clusterURL, getJSON } from "./api";
import { el } from "./dom";
import { href, type Route } from "./router";
import type { KubeObject, ViewContext } from "./views";

export type PodRoute = Extract<Route, { view: "log" | "exec" | "attach" }>;

export interface ContainerInfo {
  name: string;
  kind: "container" | "init" | "ephemeral";
  stdin: boolean;
  tty: boolean;
}

// loadPod reads the pod (get pods).
export function loadPod(r: PodRoute, signal: AbortSignal): Promise<KubeObject> {
  return getJSON<KubeObject>(clusterURL(r.cluster,
    `/api/v1/namespaces/${encodeURIComponent(r.namespace)}/pods/${encodeURIComponent(r.pod)}`), signal);
}

// containersOf lists the pod's containers, then its init and ephemeral
// containers (every one of them has a log).
export function containersOf(pod: KubeObject): ContainerInfo[] {
  const out: ContainerInfo[] = [];
  const add = (list: unknown, kind: ContainerInfo["kind"]) => {
    if (!Array.isArray(list)) return;
    for (const c of list as { name?: unknown; stdin?: unknown; tty?: unknown }[]) {
      if (typeof c.name === "string") out.push({ name: c.name, kind, stdin: c.stdin === true, tty: c.tty === true });
    }
  };
  add(pod.spec?.containers, "container");
  add(pod.spec?.initContainers, "init");
  add(pod.spec?.ephemeralContainers, "ephemeral");
  return out;
}

// pickContainer is the container asked for (?container=), else the one the
// pod names as its default (kubectl's annotation), else the first.
export function pickContainer(pod: KubeObject, list: ContainerInfo[], asked: string | null): ContainerInfo | undefined {
  if (asked) return list.find((c) => c.name === asked);
  const dflt = pod.metadata.annotations?.["kubectl.kubernetes.io/default-container"];
  return list.find((c) => c.name === dflt) ?? list.find((c) => c.kind === "container") ?? list[0];
}

// containerLabel names a container in a picker: "app", "setup (init)".
export function containerLabel(c: ContainerInfo): string {
  return c.kind === "container" ? c.name : `${c.name} (${c.kind})`;
}

// containerState says how a container is, from the pod's status:
// "running", "terminated (exit code 1, Error)", "waiting (CrashLoopBackOff)".
export function containerState(pod: KubeObject, name: string): { text: string; terminated: boolean; exitCode?: number; restarts: number } {
  type Status = { name: string; restartCount?: number; state?: Record<string, { exitCode?: number; reason?: string }> };
  const all: Status[] = [
    ...((pod.status?.containerStatuses ?? []) as Status[]),
    ...((pod.status?.initContainerStatuses ?? []) as Status[]),
    ...((pod.status?.ephemeralContainerStatuses ?? []) as Status[]),
  ];
  const st = all.find((s) => s.name === name);
  if (!st?.state) return { text: "unknown", terminated: false, restarts: 0 };
  const restarts = st.restartCount ?? 0;
  if (st.state.running) return { text: "running", terminated: false, restarts };
  if (st.state.terminated) {
    const t = st.state.terminated;
    return { text: `terminated (exit code ${t.exitCode ?? "?"}${t.reason ? ", " + t.reason : ""})`, terminated: true, exitCode: t.exitCode, restarts };
  }
  if (st.state.waiting) return { text: `waiting${st.state.waiting.reason ? " (" + st.state.waiting.reason + ")" : ""}`, terminated: false, restarts };
  return { text: "unknown", terminated: false, restarts };
}

// podCrumbs sets the trail: cluster / namespace / pods / pod / last.
export function podCrumbs(ctx: ViewContext, r: PodRoute, last: string): void {
  const pods = { resource: "pods", group: "" };
  ctx.crumbs([
    [r.cluster, href({ view: "cluster", cluster: r.cluster })],
    [r.namespace, href({ view: "namespace", cluster: r.cluster, namespace: r.namespace })],
    ["pods", href({ view: "list", cluster: r.cluster, namespace: r.namespace, res: pods })],
    [r.pod, href({ view: "object", cluster: r.cluster, namespace: r.namespace, res: pods, name: r.pod })],
    [last],
  ]);
}

// probeSession asks the stub whether the browser session still stands,
// without the console's signed-out handler (which would replace the view
// and the output it shows): "ended" on a 401.
export async function probeSession(): Promise<"ok" | "ended" | "unknown"> {
  try {
    const r = await fetch("/keyhole/v1/session", { headers: { [CONSOLE_HEADER]: "1" }, credentials: "same-origin", cache: "no-store" });
    if (r.status === 401) return "ended";
    return r.ok ? "ok" : "unknown";
  } catch {
    return "unknown";
  }
}

// probeCluster asks the stub for the cluster's health (the clusters
// list): whether an agent serves it, and the last error seen.
export async function probeCluster(cluster: string): Promise<{ ready: boolean; error: string } | null> {
  try {
    const r = await fetch("/keyhole/v1/clusters", { headers: { [CONSOLE_HEADER]: "1", Accept: "application/json" }, credentials: "same-origin", cache: "no-store" });
    if (!r.ok) return null;
    const list = (await r.json()) as { id: string; ready: boolean; agents?: { health?: { error?: string } }[] }[];
    const c = Array.isArray(list) ? list.find((x) => x.id === cluster) : undefined;
    if (!c) return { ready: false, error: "the gateway does not list this cluster for you" };
    const error = (c.agents ?? []).map((a) => a.health?.error ?? "").filter((e) => e).join("; ");
    return { ready: c.ready, error: error || (c.agents?.length ? "" : "no agent is connected") };
  } catch {
    return null;
  }
}

// signInAgain is a "Sign in again" link that comes back to this address.
export function signInAgain(): HTMLAnchorElement {
  return el("a", { class: "button", href: "/?then=" + encodeURIComponent(location.pathname + location.search) }, "Sign in again");
}

// kubectlContext is the kubectl prefix for a cluster, as the clusters view
// words it (the console's kubeconfig names a context per cluster).
export function kubectlContext(cluster: string): string {
  return `kubectl --kubeconfig keyhole.kubeconfig --context ${cluster}`;
}

// shellQuote quotes s for a POSIX shell when it needs it.
export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_./:=@%+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

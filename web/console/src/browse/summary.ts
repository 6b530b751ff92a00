// The key fields of an object, per kind, for its page: pods (containers
// with their state and restarts, conditions, node, IP), workloads
// (replicas), jobs, services, nodes; conditions for any kind that has them.

import { age, el, type Child } from "../dom";
import { href, link } from "../router";
import type { KubeObject } from "../views";

/* eslint-disable @typescript-eslint/no-explicit-any */

// dl is a definition list of the pairs whose value is not empty.
export function dl(pairs: [string, Child | Child[] | undefined | null][]): HTMLDListElement {
  const d = el("dl", { class: "fields" });
  for (const [k, v] of pairs) {
    if (v === undefined || v === null || v === "" || (Array.isArray(v) && v.length === 0)) continue;
    d.append(el("dt", {}, k), el("dd", {}, ...(Array.isArray(v) ? v : [v])));
  }
  return d;
}

export function table(caption: string, head: string[], rows: Child[][], attrs: Partial<Record<string, string>> = {}): HTMLElement {
  return el("div", { class: "table-scroll" }, el("table", { class: "fields-table", ...attrs },
    el("caption", {}, caption),
    el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c, i) => (i === 0 ? el("th", { scope: "row" }, c) : el("td", {}, c))))))));
}

function when(ts: string | undefined): Child {
  if (!ts) return "";
  return el("time", { datetime: ts, title: new Date(ts).toLocaleString() }, `${age(ts)} ago`);
}

function labelsOf(m: Record<string, string> | undefined): Child[] {
  const out: Child[] = [];
  for (const [k, v] of Object.entries(m ?? {}).sort(([a], [b]) => a.localeCompare(b))) out.push(el("span", { class: "label" }, `${k}=${v}`), " ");
  return out;
}

// podStatus is kubectl's STATUS of a pod (printPod in kubectl's printers).
export function podStatus(p: KubeObject): { status: string; ready: number; total: number; restarts: number } {
  const st = p.status ?? {};
  const spec = p.spec ?? {};
  let reason: string = st.reason || st.phase || "";
  let restarts = 0;
  let ready = 0;
  const total = (spec.containers ?? []).length;
  let initializing = false;
  const inits: any[] = st.initContainerStatuses ?? [];
  const nInit = (spec.initContainers ?? []).length;
  for (let i = 0; i < inits.length; i++) {
    const c = inits[i];
    restarts += c.restartCount ?? 0;
    if (c.state?.terminated && c.state.terminated.exitCode === 0) continue;
    const sidecar = (spec.initContainers ?? [])[i]?.restartPolicy === "Always";
    if (sidecar && c.started) continue;
    if (c.state?.terminated) {
      const t = c.state.terminated;
      reason = t.reason ? `Init:${t.reason}` : t.signal ? `Init:Signal:${t.signal}` : `Init:ExitCode:${t.exitCode}`;
    } else if (c.state?.waiting?.reason && c.state.waiting.reason !== "PodInitializing") {
      reason = `Init:${c.state.waiting.reason}`;
    } else {
      reason = `Init:${i}/${nInit}`;
    }
    initializing = true;
    break;
  }
  if (!initializing) {
    restarts = 0;
    let running = false;
    const cs: any[] = st.containerStatuses ?? [];
    for (let i = cs.length - 1; i >= 0; i--) {
      const c = cs[i];
      restarts += c.restartCount ?? 0;
      if (c.state?.waiting?.reason) reason = c.state.waiting.reason;
      else if (c.state?.terminated?.reason) reason = c.state.terminated.reason;
      else if (c.state?.terminated) reason = c.state.terminated.signal ? `Signal:${c.state.terminated.signal}` : `ExitCode:${c.state.terminated.exitCode}`;
      else if (c.ready && c.state?.running) { running = true; ready++; }
    }
    if (reason === "Completed" && running) {
      const readyCond = (st.conditions ?? []).some((x: any) => x.type === "Ready" && x.status === "True");
      reason = readyCond ? "Running" : "NotReady";
    }
  }
  if (p.metadata.deletionTimestamp) reason = st.reason === "NodeLost" ? "Unknown" : "Terminating";
  return { status: reason, ready, total, restarts };
}

function containerState(s: any): string {
  if (!s) return "";
  if (s.running) return `Running since ${age(s.running.startedAt)} ago`;
  if (s.waiting) return `Waiting: ${s.waiting.reason ?? ""}${s.waiting.message ? ` (${s.waiting.message})` : ""}`;
  if (s.terminated) {
    const t = s.terminated;
    return `Terminated: ${t.reason ?? ""} (exit code ${t.exitCode}${t.signal ? `, signal ${t.signal}` : ""})${t.finishedAt ? `, ${age(t.finishedAt)} ago` : ""}`;
  }
  return "";
}

function containers(p: KubeObject): HTMLElement {
  const statuses = new Map<string, any>();
  for (const c of [...(p.status?.initContainerStatuses ?? []), ...(p.status?.containerStatuses ?? [])]) statuses.set(c.name, c);
  const rows: Child[][] = [];
  const add = (c: any, init: boolean) => {
    const s = statuses.get(c.name);
    rows.push([
      c.name + (init ? " (init)" : ""), el("code", {}, c.image ?? ""),
      containerState(s?.state) || "Not started", s ? (s.ready ? "yes" : "no") : "no",
      String(s?.restartCount ?? 0), containerState(s?.lastState),
    ]);
  };
  for (const c of p.spec?.initContainers ?? []) add(c, true);
  for (const c of p.spec?.containers ?? []) add(c, false);
  return table("Containers", ["Name", "Image", "State", "Ready", "Restarts", "Last state"], rows, { id: "pod-containers" });
}

export function conditions(o: KubeObject): HTMLElement | null {
  const cs: any[] = o.status?.conditions ?? [];
  if (!Array.isArray(cs) || cs.length === 0) return null;
  return table("Conditions", ["Type", "Status", "Reason", "Message", "Last transition"],
    cs.map((c) => [String(c.type ?? ""), String(c.status ?? ""), String(c.reason ?? ""), String(c.message ?? ""), when(c.lastTransitionTime ?? c.lastUpdateTime)]));
}

function images(tpl: any): Child[] {
  return (tpl?.spec?.containers ?? []).flatMap((c: any) => [el("code", {}, `${c.name}: ${c.image}`), " "]);
}

function selector(s: any): Child[] {
  return labelsOf(s?.matchLabels ?? (typeof s === "object" && s && !s.matchExpressions ? s : undefined));
}

// kindSummary is the kind's own fields, or null for a kind without one.
export function kindSummary(cluster: string, kind: string, o: KubeObject): HTMLElement[] | null {
  const s = o.spec ?? {};
  const st = o.status ?? {};
  const ns = o.metadata.namespace;
  switch (kind) {
    case "Pod": {
      const ps = podStatus(o);
      const node = s.nodeName ? link(href({ view: "object", cluster, res: { resource: "nodes", group: "" }, name: s.nodeName }), s.nodeName) : "(not scheduled)";
      return [dl([
        ["Status", el("span", { class: "pod-status" }, ps.status)],
        ["Ready", `${ps.ready}/${ps.total}`],
        ["Restarts", String(ps.restarts)],
        ["Node", node],
        ["Pod IP", (st.podIPs ?? []).map((x: any) => x.ip).join(", ") || st.podIP],
        ["Host IP", st.hostIP],
        ["QoS class", st.qosClass],
        ["Started", when(st.startTime)],
        ["Service account", s.serviceAccountName],
        ["Message", st.message],
      ]), containers(o)];
    }
    case "Deployment": case "StatefulSet": case "ReplicaSet":
      return [dl([
        ["Replicas", `${s.replicas ?? 1} desired, ${st.replicas ?? 0} current, ${st.readyReplicas ?? 0} ready, ${st.updatedReplicas ?? 0} up to date, ${st.availableReplicas ?? 0} available`],
        ["Strategy", s.strategy?.type ?? s.updateStrategy?.type],
        ["Selector", selector(s.selector)],
        ["Images", images(s.template)],
        ["Paused", s.paused ? "yes" : ""],
      ])];
    case "DaemonSet":
      return [dl([
        ["Pods", `${st.desiredNumberScheduled ?? 0} desired, ${st.currentNumberScheduled ?? 0} current, ${st.numberReady ?? 0} ready, ${st.updatedNumberScheduled ?? 0} up to date, ${st.numberAvailable ?? 0} available`],
        ["Strategy", s.updateStrategy?.type],
        ["Selector", selector(s.selector)],
        ["Images", images(s.template)],
      ])];
    case "Job":
      return [dl([
        ["Completions", `${st.succeeded ?? 0}/${s.completions ?? 1}`],
        ["Parallelism", String(s.parallelism ?? 1)],
        ["Active", String(st.active ?? 0)],
        ["Failed", String(st.failed ?? 0)],
        ["Started", when(st.startTime)],
        ["Completed", when(st.completionTime)],
        ["Images", images(s.template)],
      ])];
    case "CronJob":
      return [dl([
        ["Schedule", el("code", {}, String(s.schedule ?? ""))],
        ["Suspended", s.suspend ? "yes" : "no"],
        ["Active jobs", String((st.active ?? []).length)],
        ["Last scheduled", when(st.lastScheduleTime)],
        ["Last successful", when(st.lastSuccessfulTime)],
        ["Images", images(s.jobTemplate?.spec?.template)],
      ])];
    case "Service":
      return [dl([
        ["Type", s.type],
        ["Cluster IP", (s.clusterIPs ?? [s.clusterIP]).filter(Boolean).join(", ")],
        ["External", [...(s.externalIPs ?? []), ...(st.loadBalancer?.ingress ?? []).map((i: any) => i.ip ?? i.hostname)].join(", ") || s.externalName],
        ["Ports", (s.ports ?? []).map((p: any) => `${p.name ? p.name + " " : ""}${p.port}${p.targetPort !== undefined ? "→" + p.targetPort : ""}/${p.protocol ?? "TCP"}${p.nodePort ? ` (node ${p.nodePort})` : ""}`).join(", ")],
        ["Selector", labelsOf(s.selector)],
      ])];
    case "ConfigMap": {
      const keys = [...Object.keys((o as any).data ?? {}), ...Object.keys((o as any).binaryData ?? {})].sort();
      return [dl([["Keys", keys.length ? keys.flatMap((k) => [el("code", {}, k), " "]) : "(none)"]])];
    }
    case "Node": {
      const ni = st.nodeInfo ?? {};
      return [dl([
        ["Ready", ((st.conditions ?? []).find((c: any) => c.type === "Ready")?.status) ?? "Unknown"],
        ["Schedulable", s.unschedulable ? "no (cordoned)" : "yes"],
        ["Addresses", (st.addresses ?? []).map((a: any) => `${a.type} ${a.address}`).join(", ")],
        ["Kubelet", ni.kubeletVersion],
        ["OS", [ni.osImage, ni.kernelVersion, ni.architecture].filter(Boolean).join(", ")],
        ["Runtime", ni.containerRuntimeVersion],
        ["Capacity", Object.entries(st.capacity ?? {}).map(([k, v]) => `${k} ${v}`).join(", ")],
        ["Allocatable", Object.entries(st.allocatable ?? {}).map(([k, v]) => `${k} ${v}`).join(", ")],
        ["Taints", (s.taints ?? []).map((t: any) => `${t.key}${t.value ? "=" + t.value : ""}:${t.effect}`).join(", ")],
      ])];
    }
    case "Namespace":
      return [dl([["Phase", st.phase]])];
    default:
      void ns;
      return null;
  }
}

export { labelsOf, when };

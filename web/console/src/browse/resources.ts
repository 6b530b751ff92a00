// Resource kinds: what the API server offers (discovery), and the paths of
// collections and objects. Discovery is aggregated discovery (one request
// for /api and one for /apis, apidiscovery.k8s.io/v2, served by
// kube-apiserver 1.30+), falling back to the legacy documents (/api/v1,
// /apis, then one request per group version) when the server answers with
// those instead. CRDs are in both.

import { apiFetch, check, clusterURL, getJSON } from "../api";
import { formatRes, type ResourceRef } from "../router";

export interface Kind {
  group: string; // "" for the core group
  version: string;
  resource: string; // plural
  kind: string;
  namespaced: boolean;
  verbs: string[];
  shortNames: string[];
  categories: string[];
}

const STD_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

// Kinds every cluster has, so that their lists need no discovery round trip
// before the first request (the 5,000-pod list starts at once). Discovery
// still answers for everything else.
const BUILTIN: Kind[] = [
  ["", "v1", "pods", "Pod", true, ["po"]],
  ["", "v1", "services", "Service", true, ["svc"]],
  ["", "v1", "configmaps", "ConfigMap", true, ["cm"]],
  ["", "v1", "secrets", "Secret", true, []],
  ["", "v1", "events", "Event", true, ["ev"]],
  ["", "v1", "serviceaccounts", "ServiceAccount", true, ["sa"]],
  ["", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", true, ["pvc"]],
  ["", "v1", "nodes", "Node", false, ["no"]],
  ["", "v1", "namespaces", "Namespace", false, ["ns"]],
  ["", "v1", "persistentvolumes", "PersistentVolume", false, ["pv"]],
  ["apps", "v1", "deployments", "Deployment", true, ["deploy"]],
  ["apps", "v1", "statefulsets", "StatefulSet", true, ["sts"]],
  ["apps", "v1", "daemonsets", "DaemonSet", true, ["ds"]],
  ["apps", "v1", "replicasets", "ReplicaSet", true, ["rs"]],
  ["batch", "v1", "jobs", "Job", true, []],
  ["batch", "v1", "cronjobs", "CronJob", true, ["cj"]],
  ["networking.k8s.io", "v1", "ingresses", "Ingress", true, ["ing"]],
  ["apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", false, ["crd", "crds"]],
].map(([group, version, resource, kind, namespaced, shortNames]) => ({
  group, version, resource, kind, namespaced, shortNames, verbs: STD_VERBS, categories: [],
} as Kind));

export function builtin(r: ResourceRef): Kind | undefined {
  return BUILTIN.find((k) => k.resource === r.resource && k.group === r.group);
}

// ref is the ResourceRef of a kind (for addresses).
export function ref(k: Kind): ResourceRef {
  return { resource: k.resource, group: k.group };
}

// collectionPath is the API path of k's collection in namespace (all
// namespaces, or a cluster-scoped kind, without one), in cluster.
export function collectionPath(cluster: string, k: Kind, namespace?: string): string {
  const gv = k.group === "" ? `/api/${k.version}` : `/apis/${k.group}/${k.version}`;
  const ns = k.namespaced && namespace ? `/namespaces/${encodeURIComponent(namespace)}` : "";
  return clusterURL(cluster, `${gv}${ns}/${k.resource}`);
}

// objectPath is the API path of one object.
export function objectPath(cluster: string, k: Kind, namespace: string | undefined, name: string): string {
  return `${collectionPath(cluster, k, namespace)}/${encodeURIComponent(name)}`;
}

// Aggregated discovery (KEP-3352). v2 is served from 1.30; v2beta1 before;
// plain JSON (the legacy documents) by servers that have neither.
const ACCEPT_AGGREGATED =
  "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList," +
  "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList;q=0.9," +
  "application/json;q=0.8";

interface AggregatedList {
  kind?: string;
  items?: {
    metadata?: { name?: string };
    versions?: {
      version: string;
      freshness?: string;
      resources?: {
        resource: string;
        responseKind?: { kind?: string };
        scope?: string;
        verbs?: string[];
        shortNames?: string[];
        categories?: string[];
      }[];
    }[];
  }[];
}

interface LegacyResourceList {
  resources?: { name: string; kind: string; namespaced: boolean; verbs?: string[]; shortNames?: string[]; categories?: string[] }[];
}

function fromAggregated(list: AggregatedList): Kind[] {
  const out: Kind[] = [];
  for (const g of list.items ?? []) {
    const group = g.metadata?.name ?? "";
    // Versions come in order of preference: the first is the preferred one.
    const v = g.versions?.[0];
    if (!v) continue;
    for (const r of v.resources ?? []) {
      out.push({
        group, version: v.version, resource: r.resource, kind: r.responseKind?.kind ?? "",
        namespaced: r.scope === "Namespaced", verbs: r.verbs ?? [],
        shortNames: r.shortNames ?? [], categories: r.categories ?? [],
      });
    }
  }
  return out;
}

function fromLegacy(group: string, version: string, list: LegacyResourceList): Kind[] {
  return (list.resources ?? []).filter((r) => !r.name.includes("/")).map((r) => ({
    group, version, resource: r.name, kind: r.kind, namespaced: r.namespaced,
    verbs: r.verbs ?? [], shortNames: r.shortNames ?? [], categories: r.categories ?? [],
  }));
}

async function legacy(cluster: string, signal?: AbortSignal): Promise<Kind[]> {
  const core = await getJSON<LegacyResourceList>(clusterURL(cluster, "/api/v1"), signal);
  const groups = await getJSON<{ groups?: { name: string; preferredVersion?: { version: string } }[] }>(clusterURL(cluster, "/apis"), signal);
  const lists = await Promise.all((groups.groups ?? []).map(async (g) => {
    const v = g.preferredVersion?.version;
    if (!v) return [];
    try {
      return fromLegacy(g.name, v, await getJSON<LegacyResourceList>(clusterURL(cluster, `/apis/${g.name}/${v}`), signal));
    } catch {
      return []; // an aggregated API that is down: its kinds are missing, the rest stand
    }
  }));
  return [...fromLegacy("", "v1", core), ...lists.flat()];
}

export type DiscoveryMode = "aggregated" | "legacy";

async function discover(cluster: string, signal?: AbortSignal): Promise<{ kinds: Kind[]; mode: DiscoveryMode }> {
  const get = async (p: string): Promise<AggregatedList> => {
    const resp = await check(await apiFetch(clusterURL(cluster, p), { signal, headers: { Accept: ACCEPT_AGGREGATED } }));
    return (await resp.json()) as AggregatedList;
  };
  const [core, groups] = await Promise.all([get("/api"), get("/apis")]);
  if (core.kind === "APIGroupDiscoveryList" && groups.kind === "APIGroupDiscoveryList") {
    return { kinds: [...fromAggregated(core), ...fromAggregated(groups)], mode: "aggregated" };
  }
  return { kinds: await legacy(cluster, signal), mode: "legacy" };
}

const TTL_MS = 60_000;
const cache = new Map<string, { at: number; p: Promise<{ kinds: Kind[]; mode: DiscoveryMode }> }>();

// kinds is every kind the API server offers in cluster (kept a minute;
// fresh asks again).
export function kinds(cluster: string, fresh = false): Promise<{ kinds: Kind[]; mode: DiscoveryMode }> {
  const hit = cache.get(cluster);
  if (!fresh && hit && Date.now() - hit.at < TTL_MS) return hit.p;
  const p = discover(cluster);
  cache.set(cluster, { at: Date.now(), p });
  p.catch(() => cache.delete(cluster));
  return p;
}

// resolve finds the kind of r in cluster: a built-in kind at once, any
// other through discovery (asked again once when r is not known: a CRD
// created a moment ago).
export async function resolve(cluster: string, r: ResourceRef): Promise<Kind> {
  const b = builtin(r);
  if (b) return b;
  const find = (ks: Kind[]) => ks.find((k) => k.resource === r.resource && k.group === r.group);
  let k = find((await kinds(cluster)).kinds);
  if (!k) k = find((await kinds(cluster, true)).kinds);
  if (!k) throw new Error(`The cluster offers no resource ${formatRes(r)}.`);
  return k;
}

// kindOf finds the kind named kind in apiVersion (an owner reference's or
// an event's involvedObject), or undefined.
export async function kindOf(cluster: string, apiVersion: string, kind: string): Promise<Kind | undefined> {
  const group = apiVersion.includes("/") ? apiVersion.split("/")[0] : "";
  const b = BUILTIN.find((k) => k.kind === kind && k.group === group);
  if (b) return b;
  try {
    return (await kinds(cluster)).kinds.find((k) => k.kind === kind && k.group === group);
  } catch {
    return undefined;
  }
}

// label is how a kind is named in lists: "Deployment (deployments.apps)".
export function label(k: Kind): string {
  return `${k.kind} (${formatRes(ref(k))})`;
}

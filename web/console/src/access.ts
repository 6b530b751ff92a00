// What the signed-in user may do in a cluster, asked of the cluster
// itself: a SelfSubjectAccessReview through the gateway, answered by the
// cluster's RBAC for the user the agent impersonates. The console offers
// only what the answer allows; the API server still decides each request.

import { clusterURL, sendJSON } from "./api";

export interface ResourceAttributes {
  verb: string;
  resource: string;
  group?: string;
  subresource?: string;
  namespace?: string;
  name?: string;
}

interface SSAR {
  status?: { allowed?: boolean; denied?: boolean; reason?: string };
}

const TTL_MS = 30_000;
const cache = new Map<string, { at: number; allowed: Promise<boolean> }>();

// can reports whether the user may take the action in cluster. Answers are
// kept 30 s; an error counts as "no" (the action is not offered).
export function can(cluster: string, a: ResourceAttributes): Promise<boolean> {
  const key = JSON.stringify([cluster, a.verb, a.group ?? "", a.resource, a.subresource ?? "", a.namespace ?? "", a.name ?? ""]);
  const hit = cache.get(key);
  const now = Date.now();
  if (hit && now - hit.at < TTL_MS) return hit.allowed;
  const allowed = sendJSON<SSAR>("POST", clusterURL(cluster, "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"), {
    apiVersion: "authorization.k8s.io/v1",
    kind: "SelfSubjectAccessReview",
    spec: { resourceAttributes: { ...a, group: a.group ?? "" } },
  }).then((r) => r.status?.allowed === true, () => false);
  cache.set(key, { at: now, allowed });
  return allowed;
}

// forgetAccess drops every kept answer (after sign-in changes, or when an
// action was refused anyway).
export function forgetAccess(): void {
  cache.clear();
}

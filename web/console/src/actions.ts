// Acting on an object, where RBAC allows (docs/console.md, "Act"): scale,
// restart a rollout, delete, and edit YAML (edit.ts). Each is offered only
// when the cluster's discovery lists the verb for the resource and a
// SelfSubjectAccessReview (access.can) says the user may; the API server
// still decides every request, and its own Status message is what the page
// shows when it refuses (403, 409, 422 …).
//
// The providers register with views.registerActions; the object page shows
// what actionsFor returns. renderActions and actionControl render them for
// a page that wants the console's standard rendering.

import { ApiError, apiFetch, check, clusterURL, getJSON, messageOf } from "./api";
import { can, forgetAccess, type ResourceAttributes } from "./access";
import { askConfirm, askNumber } from "./dialog";
import { el } from "./dom";
import { href, link } from "./router";
import { actionsFor, registerActions, type Action, type KubeObject, type ObjectContext } from "./views";

// FIELD_MANAGER names the console in managedFields (every write it makes).
export const FIELD_MANAGER = "keyhole-console";

// RESTARTED_AT is the pod template annotation `kubectl rollout restart`
// sets; changing it rolls the pods.
export const RESTARTED_AT = "kubectl.kubernetes.io/restartedAt";

// ---- discovery ----

interface APIResource {
  name: string;
  kind: string;
  namespaced: boolean;
  verbs: string[];
}

const discovery = new Map<string, Promise<APIResource[]>>();

// resourcesOf is the discovery document of a group version ("v1",
// "apps/v1"), asked once per page load; [] when it cannot be read.
function resourcesOf(cluster: string, gv: string): Promise<APIResource[]> {
  const key = `${cluster} ${gv}`;
  let p = discovery.get(key);
  if (!p) {
    const path = gv.includes("/") ? `/apis/${gv}` : `/api/${gv}`;
    p = getJSON<{ resources?: APIResource[] }>(clusterURL(cluster, path)).then((l) => l.resources ?? []);
    p.catch(() => discovery.delete(key));
    discovery.set(key, p);
  }
  return p.catch(() => []);
}

const preferred = new Map<string, Promise<string>>();

// groupVersionOf is the object's apiVersion or, when the object was read
// without one, its group's preferred version.
export function groupVersionOf(cluster: string, group: string, obj?: KubeObject): Promise<string> {
  if (obj?.apiVersion) return Promise.resolve(obj.apiVersion);
  if (group === "") return Promise.resolve("v1");
  const key = `${cluster} ${group}`;
  let p = preferred.get(key);
  if (!p) {
    p = getJSON<{ preferredVersion?: { groupVersion?: string } }>(clusterURL(cluster, `/apis/${encodeURIComponent(group)}`))
      .then((g) => g.preferredVersion?.groupVersion ?? `${group}/v1`);
    p.catch(() => preferred.delete(key));
    preferred.set(key, p);
  }
  return p;
}

// objectPath is the API path of the object (in its cluster).
export function objectPath(o: Pick<ObjectContext, "cluster" | "namespace" | "res" | "name">, gv: string): string {
  const base = gv.includes("/") ? `/apis/${gv}` : `/api/${gv}`;
  const ns = o.namespace ? `/namespaces/${encodeURIComponent(o.namespace)}` : "";
  return clusterURL(o.cluster, `${base}${ns}/${o.res.resource}/${encodeURIComponent(o.name)}`);
}

// describe names the object for people: `Deployment "web"` (the kind from
// discovery when the object was read from a list, whose items carry none).
export async function describe(o: ObjectContext): Promise<string> {
  let kind = o.object.kind;
  if (!kind) {
    const gv = await groupVersionOf(o.cluster, o.res.group, o.object);
    kind = (await resourcesOf(o.cluster, gv)).find((x) => x.name === o.res.resource)?.kind ?? o.res.resource;
  }
  return `${kind} "${o.name}"`;
}

function attrs(o: ObjectContext, verb: string, subresource?: string): ResourceAttributes {
  return { verb, resource: o.res.resource, group: o.res.group, subresource, namespace: o.namespace, name: o.name };
}

// refused lets a 403 drop the kept access answers (the offer was stale),
// and passes the error on: the page shows the API server's message.
function refused(e: unknown): never {
  if (e instanceof ApiError && e.status === 403) forgetAccess();
  throw e;
}

// rfc3339 is t in RFC 3339 (UTC, whole seconds), as kubectl writes it.
export function rfc3339(t: Date): string {
  return t.toISOString().replace(/\.\d{3}Z$/, "Z");
}

// ---- the actions ----

const RESTARTABLE = new Set(["deployments", "statefulsets", "daemonsets"]);
// Deleting these takes everything in them along: the name must be typed.
const TYPE_TO_DELETE = new Set(["namespaces", "customresourcedefinitions"]);

async function patchJSON(path: string, contentType: string, body: unknown): Promise<KubeObject> {
  const resp = await check(await apiFetch(`${path}?fieldManager=${FIELD_MANAGER}`, {
    method: "PATCH",
    headers: { "Content-Type": contentType },
    body: JSON.stringify(body),
  }));
  return (await resp.json()) as KubeObject;
}

function scaleAction(o: ObjectContext, what: string, path: string, byPatch: boolean): Action {
  return {
    id: "scale",
    label: "Scale",
    run: async () => {
      const current = typeof o.object.spec?.replicas === "number" ? o.object.spec.replicas : 1;
      const n = await askNumber({
        title: `Scale ${what}`,
        body: [`It has ${current} ${current === 1 ? "replica" : "replicas"} now${o.namespace ? ` (namespace "${o.namespace}")` : ""}.`],
        label: "Replicas", value: current, min: 0, max: 2147483647, okLabel: "Scale",
      });
      if (n === null) return;
      try {
        if (byPatch) {
          await patchJSON(`${path}/scale`, "application/merge-patch+json", { spec: { replicas: n } });
        } else {
          // The user may update the scale but not patch it: replace it.
          await check(await apiFetch(`${path}/scale?fieldManager=${FIELD_MANAGER}`, {
            method: "PUT",
            headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ apiVersion: "autoscaling/v1", kind: "Scale", metadata: { name: o.name, namespace: o.namespace }, spec: { replicas: n } }),
          }));
        }
      } catch (e) {
        refused(e);
      }
      o.changed();
      return `${what} scaled to ${n} ${n === 1 ? "replica" : "replicas"}.`;
    },
  };
}

function restartAction(o: ObjectContext, what: string, path: string): Action {
  return {
    id: "restart",
    label: "Restart",
    run: async () => {
      if (o.object.spec?.paused === true) {
        throw new Error(`${what} is paused: resume the rollout before restarting it.`);
      }
      const ok = await askConfirm({
        title: `Restart ${what}?`,
        body: [`Its pods are replaced by new ones, as `, el("code", {}, "kubectl rollout restart"),
          ` does: the pod template gets the annotation `, el("code", {}, RESTARTED_AT), ` with the current time.`],
        okLabel: "Restart",
      });
      if (!ok) return;
      const at = rfc3339(new Date());
      try {
        await patchJSON(path, "application/strategic-merge-patch+json",
          { spec: { template: { metadata: { annotations: { [RESTARTED_AT]: at } } } } });
      } catch (e) {
        refused(e);
      }
      o.changed();
      return `${what} restarted at ${at}.`;
    },
  };
}

function deleteAction(o: ObjectContext, what: string, path: string): Action {
  return {
    id: "delete",
    label: "Delete",
    danger: true,
    run: async () => {
      const where = o.namespace ? ` in namespace "${o.namespace}"` : "";
      const ok = await askConfirm({
        title: `Delete ${what}?`,
        body: [`${what}${where} in cluster "${o.cluster}" will be deleted. This cannot be undone.`],
        okLabel: "Delete", danger: true,
        typeToConfirm: TYPE_TO_DELETE.has(o.res.resource) ? o.name : undefined,
      });
      if (!ok) return;
      let answer: KubeObject;
      try {
        const resp = await check(await apiFetch(path, {
          method: "DELETE",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ apiVersion: "v1", kind: "DeleteOptions", propagationPolicy: "Background" }),
        }));
        answer = (await resp.json()) as KubeObject;
      } catch (e) {
        refused(e);
      }
      o.changed();
      // A graceful deletion answers with the object, marked; otherwise
      // with a Status.
      if (answer.metadata?.deletionTimestamp) return `${what} is terminating (deletion requested).`;
      return `${what} deleted.`;
    },
  };
}

function editAction(o: ObjectContext): Action {
  return {
    id: "edit",
    label: "Edit YAML",
    href: href({ view: "object", cluster: o.cluster, namespace: o.namespace, res: o.res, name: o.name }) + "?tab=edit",
  };
}

// mayEdit reports whether the edit view applies to the object: the
// resource can be patched and the user may patch it.
export async function mayEdit(o: ObjectContext): Promise<boolean> {
  const gv = await groupVersionOf(o.cluster, o.res.group, o.object);
  const r = (await resourcesOf(o.cluster, gv)).find((x) => x.name === o.res.resource);
  return !!r && r.verbs.includes("patch") && can(o.cluster, attrs(o, "patch"));
}

// The provider: at most four SelfSubjectAccessReviews per object (patch,
// delete, patch scale, and update scale when patch is refused), asked
// together and kept 30 s by access.can; discovery is read once per group
// version.
registerActions(async (o) => {
  const gv = await groupVersionOf(o.cluster, o.res.group, o.object);
  const resources = await resourcesOf(o.cluster, gv);
  const r = resources.find((x) => x.name === o.res.resource);
  if (!r) return [];
  const path = objectPath(o, gv);
  const live = !o.object.metadata.deletionTimestamp;
  const scalable = live && resources.some((x) => x.name === `${o.res.resource}/scale` && x.verbs.includes("patch"));
  const scaleUpdatable = live && resources.some((x) => x.name === `${o.res.resource}/scale` && x.verbs.includes("update"));
  const restartable = live && o.res.group === "apps" && RESTARTABLE.has(o.res.resource);
  const no = Promise.resolve(false);
  const [patch, del, scalePatch] = await Promise.all([
    r.verbs.includes("patch") ? can(o.cluster, attrs(o, "patch")) : no,
    r.verbs.includes("delete") ? can(o.cluster, attrs(o, "delete")) : no,
    scalable ? can(o.cluster, attrs(o, "patch", "scale")) : no,
  ]);
  const scaleUpdate = !scalePatch && scaleUpdatable && (await can(o.cluster, attrs(o, "update", "scale")));
  const out: Action[] = [];
  const what = `${o.object.kind ?? r.kind} "${o.name}"`;
  if (scalePatch || scaleUpdate) out.push(scaleAction(o, what, path, scalePatch));
  if (restartable && patch) out.push(restartAction(o, what, path));
  if (patch) out.push(editAction(o));
  if (del) out.push(deleteAction(o, what, path));
  return out;
});

// ---- rendering ----

// Show receives what an action says: a message, or an error (shown with
// role=alert).
export type Show = (text: string, error: boolean) => void;

// runAction runs a: it asks for confirmation when a.confirm is set (the
// actions above ask in their own dialogs), and shows its message or the
// API server's refusal.
export async function runAction(a: Action, show: Show): Promise<void> {
  if (!a.run) return;
  if (a.confirm && !(await askConfirm({ title: a.label, body: [a.confirm], okLabel: a.label, danger: a.danger }))) return;
  try {
    const msg = await a.run();
    if (msg) show(msg, false);
  } catch (e) {
    show(messageOf(e), true);
  }
}

// actionControl is a's control: a link when it navigates, a button when
// it runs; data-action is its id.
export function actionControl(a: Action, show: Show): HTMLElement {
  const cls = a.danger ? "act-action danger" : "act-action";
  if (a.href) return link(a.href, a.label, { "data-action": a.id, class: `button ${cls}` });
  const b = el("button", { type: "button", "data-action": a.id, class: cls }, a.label);
  b.addEventListener("click", () => {
    b.disabled = true;
    void runAction(a, show).finally(() => { b.disabled = false; });
  });
  return b;
}

// renderActions fills container with the object's actions (aria-busy
// while they are asked for; "false" once they are shown). Messages go to
// show.
export async function renderActions(container: HTMLElement, o: ObjectContext, show: Show): Promise<void> {
  container.setAttribute("aria-busy", "true");
  const actions = await actionsFor(o);
  if (o.signal.aborted) return;
  container.replaceChildren(...actions.map((a) => actionControl(a, show)));
  if (actions.length === 0) container.append(el("span", { class: "muted" }, "No actions: you may only look at this object."));
  container.setAttribute("aria-busy", "false");
}

// showIn makes a Show that writes into a status line and an alert box.
export function showIn(status: HTMLElement, alert: HTMLElement): Show {
  return (text, error) => {
    (error ? alert : status).replaceChildren(el("p", {}, text));
    (error ? status : alert).replaceChildren();
  };
}

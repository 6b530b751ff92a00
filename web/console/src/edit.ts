// The edit view of an object (?tab=edit): its YAML in a text area, applied
// with server-side apply as the field manager "keyhole-console". What
// `kubectl edit` users do not want to see is left out (managedFields,
// status, resourceVersion, uid, …); the page checks the YAML before it
// sends anything (an error names its line), and shows the API server's own
// words when it refuses: a conflict with another field manager (409, with
// "Apply anyway (force)"), an invalid object (422, with its causes), a
// Forbidden (403).

import { parseAllDocuments, stringify, type DocumentOptions, type ParseOptions, type SchemaOptions, type ToStringOptions } from "yaml";
import { ApiError, apiFetch, errorOf, getJSON, messageOf } from "./api";
import { forgetAccess } from "./access";
import { FIELD_MANAGER, describe, groupVersionOf, mayEdit, objectPath } from "./actions";
import { askConfirm } from "./dialog";
import { el } from "./dom";
import { registerObjectTab, type KubeObject, type ObjectContext } from "./views";

// The YAML the API server reads is YAML 1.1 (sigs.k8s.io/yaml): "yes",
// "on", "0777" are not strings there. The page reads and writes YAML 1.1
// the same way (without the timestamp type: the server keeps a time as a
// string), and sends the object it parsed as JSON, so what the page
// checked is exactly what the server gets.
const YAML_OPTIONS: ParseOptions & DocumentOptions & SchemaOptions & ToStringOptions = {
  version: "1.1",
  customTags: (tags) => tags.filter((t) => typeof t === "string" || t.tag !== "tag:yaml.org,2002:timestamp"),
  prettyErrors: true,
  lineWidth: 0,
};

// Left out of the editor, as the server sets them (and, for
// resourceVersion, would refuse an apply that carries a stale one).
const NOISE = ["managedFields", "resourceVersion", "uid", "creationTimestamp", "generation", "selfLink",
  "deletionTimestamp", "deletionGracePeriodSeconds"];
const LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration";

// forEdit is obj without what the server owns.
export function forEdit(obj: KubeObject): KubeObject {
  const o = structuredClone(obj);
  delete o.status;
  const m = o.metadata as Record<string, unknown>;
  for (const k of NOISE) delete m[k];
  dropNullTimes(o);
  if (o.metadata.annotations) {
    delete o.metadata.annotations[LAST_APPLIED];
    if (Object.keys(o.metadata.annotations).length === 0) delete o.metadata.annotations;
  }
  // apiVersion and kind first, as kubectl shows them.
  const { apiVersion, kind, ...rest } = o;
  return { apiVersion, kind, ...rest } as KubeObject;
}

// dropNullTimes removes "creationTimestamp: null", which Go writes for the
// embedded metadata of a pod template or a volume claim template.
function dropNullTimes(v: unknown): void {
  if (Array.isArray(v)) {
    for (const x of v) dropNullTimes(x);
  } else if (v !== null && typeof v === "object") {
    const m = v as Record<string, unknown>;
    if (m.creationTimestamp === null) delete m.creationTimestamp;
    for (const x of Object.values(m)) dropNullTimes(x);
  }
}

export function toYAML(obj: KubeObject): string {
  return stringify(obj, YAML_OPTIONS);
}

// Parsed is the editor's text read: the object, or why not (with the line).
// context is the lines around a YAML error, with a caret under it.
export type Parsed = { ok: true; object: KubeObject } | { ok: false; message: string; context?: string };

// parseEdited reads text as one object of the same kind and name as
// original.
export function parseEdited(text: string, original: KubeObject): Parsed {
  const docs = parseAllDocuments(text, YAML_OPTIONS);
  if (!Array.isArray(docs) || docs.length === 0) return { ok: false, message: "The YAML is empty." };
  for (const d of docs) {
    const e = d.errors[0];
    if (e) {
      // With prettyErrors the message is "<what> at line L, column C:",
      // then a blank line and the context.
      const i = e.message.indexOf(":\n\n");
      const head = i < 0 ? e.message : e.message.slice(0, i);
      const where = e.linePos && !/ at line \d+/.test(head) ? ` at line ${e.linePos[0].line}, column ${e.linePos[0].col}` : "";
      return { ok: false, message: `${head}${where}.`, context: i < 0 ? undefined : e.message.slice(i + 3).replace(/\n+$/, "") };
    }
  }
  if (docs.length > 1) return { ok: false, message: `The YAML holds ${docs.length} documents; this page applies one object.` };
  const obj = docs[0].toJS() as unknown;
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) return { ok: false, message: "The YAML is not an object (a mapping)." };
  const o = obj as KubeObject;
  const meta = o.metadata as unknown;
  if (meta === null || typeof meta !== "object" || Array.isArray(meta)) return { ok: false, message: "The object has no metadata." };
  for (const [what, got, want] of [
    ["apiVersion", o.apiVersion, original.apiVersion],
    ["kind", o.kind, original.kind],
    ["metadata.name", o.metadata.name, original.metadata.name],
  ] as const) {
    if (got !== want) return { ok: false, message: `${what} is ${JSON.stringify(got ?? null)}; this page edits ${JSON.stringify(want)}. (To make another object, use kubectl.)` };
  }
  const ns = o.metadata.namespace;
  if (ns !== undefined && ns !== original.metadata.namespace) {
    return { ok: false, message: `metadata.namespace is ${JSON.stringify(ns)}; this page edits the object in ${JSON.stringify(original.metadata.namespace ?? null)}.` };
  }
  return { ok: true, object: o };
}

interface Cause {
  type?: string;
  field?: string;
  message?: string;
}

function causesOf(e: ApiError): Cause[] {
  const d = e.details as { causes?: Cause[] } | undefined;
  return Array.isArray(d?.causes) ? d.causes : [];
}

// isApplyConflict: a 409 that --force-conflicts would resolve (not, say, a
// resourceVersion precondition).
function isApplyConflict(e: ApiError): boolean {
  return e.status === 409 && (causesOf(e).some((c) => c.type === "FieldManagerConflict") || e.message.startsWith("Apply failed"));
}

async function render(o: ObjectContext, panel: HTMLElement): Promise<void> {
  panel.replaceChildren(el("p", { role: "status" }, "Loading…"));
  const what = await describe(o);
  if (!(await mayEdit(o))) {
    panel.replaceChildren(el("p", { role: "status", id: "edit-not-offered" },
      `You may not change ${what}: the cluster's RBAC does not let you patch it, so there is nothing to edit here.`));
    return;
  }
  const gv = await groupVersionOf(o.cluster, o.res.group, o.object);
  const path = objectPath(o, gv);
  if (o.res.group === "" && o.res.resource === "secrets") {
    // A Secret's values are shown only when asked for.
    const reveal = el("button", { type: "button", id: "edit-reveal" }, "Show values and edit");
    panel.replaceChildren(el("p", {}, `Editing ${what} shows its values (base64) in the page.`), reveal);
    await new Promise<void>((resolve) => reveal.addEventListener("click", () => resolve(), { once: true }));
  }

  const area = el("textarea", {
    id: "edit-yaml", class: "act-yaml", spellcheck: "false", autocapitalize: "off", autocomplete: "off",
    wrap: "off", "aria-describedby": "edit-help",
  });
  const apply = el("button", { type: "button", id: "edit-apply" }, "Apply");
  const dry = el("button", { type: "button", id: "edit-dryrun", class: "secondary" }, "Dry run");
  const reload = el("button", { type: "button", id: "edit-reload", class: "secondary" }, "Reload");
  const status = el("div", { id: "edit-status", role: "status", class: "act-status" });
  const alert = el("div", { id: "edit-error", role: "alert", class: "act-alert" });
  let original: KubeObject = o.object;
  let loaded = "";

  const show = (text: string, error: boolean, extra: Node[] = []): void => {
    const box = error ? alert : status;
    box.replaceChildren(el("p", {}, text), ...extra);
    (error ? status : alert).replaceChildren();
    box.scrollIntoView({ block: "nearest" });
  };
  const setText = (obj: KubeObject) => {
    original = obj;
    loaded = toYAML(forEdit(obj));
    area.value = loaded;
    area.rows = Math.min(22, Math.max(10, loaded.split("\n").length + 1));
  };
  const busy = (b: boolean) => {
    for (const x of [apply, dry, reload]) x.disabled = b;
    area.setAttribute("aria-busy", String(b));
  };

  // send applies the text (after checking it in the page).
  const send = async (opts: { force?: boolean; dryRun?: boolean }) => {
    const parsed = parseEdited(area.value, original);
    if (!parsed.ok) {
      show("Nothing was sent: " + parsed.message, true,
        parsed.context ? [el("pre", { class: "act-context" }, parsed.context)] : []);
      return;
    }
    const q = new URLSearchParams({ fieldManager: FIELD_MANAGER });
    if (opts.force) q.set("force", "true");
    if (opts.dryRun) q.set("dryRun", "All");
    busy(true);
    try {
      const resp = await apiFetch(`${path}?${q}`, {
        method: "PATCH",
        headers: { "Content-Type": "application/apply-patch+yaml" },
        body: JSON.stringify(parsed.object),
      });
      if (!resp.ok) {
        const e = await errorOf(resp);
        if (e.status === 403) forgetAccess();
        const extra: Node[] = [];
        const causes = causesOf(e);
        if (e.status === 422 && causes.length > 0) {
          extra.push(el("ul", { class: "act-causes" }, ...causes.map((c) => el("li", {}, c.field ? el("code", {}, c.field) : "", c.field ? ": " : "", c.message ?? ""))));
        }
        if (isApplyConflict(e) && !opts.dryRun) {
          const force = el("button", { type: "button", id: "edit-force", class: "danger" }, "Apply anyway (force)");
          force.addEventListener("click", () => void send({ force: true }));
          extra.push(el("p", { class: "muted" },
            `Forcing makes ${FIELD_MANAGER} the manager of the conflicting fields, with your values; the other manager no longer owns them.`), force);
        }
        show(e.message, true, extra);
        return;
      }
      const obj = (await resp.json()) as KubeObject;
      if (opts.dryRun) {
        show("Dry run: the API server accepts this object. Nothing was changed.", false);
        return;
      }
      setText(obj);
      show(`Applied${opts.force ? " (forced)" : ""}: ${what} is at resource version ${obj.metadata.resourceVersion ?? "?"}.`, false);
    } catch (e) {
      show(messageOf(e), true);
    } finally {
      busy(false);
    }
  };

  // load reads the object anew.
  const load = async () => {
    busy(true);
    try {
      setText(await getJSON<KubeObject>(path, o.signal));
      status.replaceChildren();
      alert.replaceChildren();
    } catch (e) {
      show(messageOf(e), true);
    } finally {
      busy(false);
    }
  };

  apply.addEventListener("click", () => void send({}));
  dry.addEventListener("click", () => void send({ dryRun: true }));
  reload.addEventListener("click", async () => {
    if (area.value !== loaded && !(await askConfirm({ title: "Discard your changes?", body: ["The text is read again from the cluster."], okLabel: "Discard", danger: true }))) return;
    await load();
  });

  panel.replaceChildren(el("section", { class: "act-edit", "aria-labelledby": "edit-title" },
    el("h2", { id: "edit-title" }, `Edit ${what}`),
    el("p", { id: "edit-help", class: "muted" },
      "Applied with server-side apply as ", el("code", {}, FIELD_MANAGER),
      ": the fields in this text become yours; a field another manager owns is a conflict unless you force it. ",
      "Left out, as the server sets them: status, managedFields, resourceVersion, uid, creationTimestamp, generation."),
    el("p", { class: "act-field" }, el("label", { for: "edit-yaml" }, `YAML of ${what}`)),
    area,
    el("div", { class: "act-buttons" }, apply, dry, reload),
    status, alert));
  await load();
}

registerObjectTab({ id: "edit", label: "Edit YAML", available: mayEdit, render });

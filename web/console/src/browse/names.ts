// Names and the filter box the browse views share.

import { el } from "../dom";
import type { Kind } from "./resources";

// pluralTitle is a kind's plural as a heading: "Pods", "Ingresses",
// "NetworkPolicies", or the kind and its resource when the plural is not
// the kind's ("Endpoints").
export function pluralTitle(k: Kind): string {
  const low = k.kind.toLowerCase();
  if (k.resource === low + "s") return k.kind + "s";
  if (k.resource === low + "es") return k.kind + "es";
  if (low.endsWith("y") && k.resource === low.slice(0, -1) + "ies") return k.kind.slice(0, -1) + "ies";
  if (k.resource === low) return k.kind;
  return `${k.kind} (${k.resource})`;
}

// titles names each kind by pluralTitle, adding the group to a name that
// two kinds share (Events and Events (events.k8s.io)).
export function titles(ks: Kind[]): Map<Kind, string> {
  const count = new Map<string, number>();
  for (const k of ks) count.set(pluralTitle(k), (count.get(pluralTitle(k)) ?? 0) + 1);
  return new Map(ks.map((k) => [k, (count.get(pluralTitle(k)) ?? 0) > 1 && k.group ? `${pluralTitle(k)} (${k.group})` : pluralTitle(k)]));
}

// searchBox is a labelled filter whose text is kept in the address (?q=),
// so a filtered view can be bookmarked; onChange runs as the user types.
export function searchBox(id: string, label: string, placeholder: string, initial: string, onChange: (q: string) => void, controls?: string): HTMLElement {
  const input = el("input", { id, type: "search", autocomplete: "off", spellcheck: "false", placeholder });
  if (controls) input.setAttribute("aria-controls", controls);
  input.value = initial;
  let timer = 0;
  input.addEventListener("input", () => {
    const u = new URL(location.href);
    if (input.value) u.searchParams.set("q", input.value);
    else u.searchParams.delete("q");
    history.replaceState(null, "", u);
    window.clearTimeout(timer);
    timer = window.setTimeout(() => onChange(input.value), 120);
  });
  return el("div", { class: "search" }, el("label", { for: id }, label), input);
}

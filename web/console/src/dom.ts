// DOM helpers. The console builds every node with DOM calls and
// textContent only (never innerHTML), so nothing a cluster says can
// become markup.

export type Child = Node | string;

// el creates an element with attributes and children.
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Partial<Record<string, string>> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v !== undefined) e.setAttribute(k, v);
  }
  e.append(...children);
  return e;
}

// formatAgo says how long ago d was: "12 s ago", "5 min ago", "3 h ago",
// "4 d ago".
export function formatAgo(d: Date, now: Date = new Date()): string {
  const s = Math.max(0, Math.round((now.getTime() - d.getTime()) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

// age is kubectl's AGE column for an RFC 3339 timestamp: "12s", "5m",
// "3h", "4d".
export function age(ts: string | undefined, now: Date = new Date()): string {
  if (!ts) return "";
  const t = new Date(ts).getTime();
  if (Number.isNaN(t)) return "";
  const s = Math.max(0, Math.floor((now.getTime() - t) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

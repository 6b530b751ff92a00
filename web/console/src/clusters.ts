// The JSON of /keyhole/v1/clusters (proxy.ClusterStatus) and what the
// clusters view derives from it.

export interface Health {
  lastRoundTrip?: string; // RFC 3339; absent before the first probe
  tunnelRTT: number; // nanoseconds (a Go time.Duration)
  apiServerVersion?: string;
  error?: string;
}

export interface AgentStatus {
  cluster: string;
  id: string;
  fingerprint: string;
  version?: string;
  attributes?: Record<string, string>;
  remote: string;
  connected: string;
  streams: number;
  health: Health;
}

export interface ClusterStatus {
  id: string;
  labels?: Record<string, string>;
  ready: boolean;
  agents: AgentStatus[];
  // kubectlOnly: the cluster's agents verify callers themselves; a browser
  // session cannot reach it (use kubectl with `stub kubeconfig --oidc`).
  kubectlOnly?: boolean;
}

// filterClusters keeps the clusters that match every word of query: a word
// matches a cluster when it is part of its ID or of one of its labels
// written key=value (case-insensitive).
export function filterClusters(clusters: ClusterStatus[], query: string): ClusterStatus[] {
  const words = query.toLowerCase().split(/\s+/).filter((w) => w !== "");
  if (words.length === 0) return clusters;
  return clusters.filter((c) => {
    const hay = [c.id, ...Object.entries(c.labels ?? {}).map(([k, v]) => `${k}=${v}`)].map((s) => s.toLowerCase());
    return words.every((w) => hay.some((h) => h.includes(w)));
  });
}

// lastSeen is the latest successful probe of any of c's agents, or null.
export function lastSeen(c: ClusterStatus): Date | null {
  let best: Date | null = null;
  for (const a of c.agents) {
    if (!a.health.lastRoundTrip) continue;
    const d = new Date(a.health.lastRoundTrip);
    if (!Number.isNaN(d.getTime()) && (best === null || d > best)) best = d;
  }
  return best;
}

// rttOf is the smallest tunnel round trip of c's agents, in milliseconds,
// or null when none has been measured.
export function rttOf(c: ClusterStatus): number | null {
  const rtts = c.agents.map((a) => a.health.tunnelRTT).filter((n) => n > 0);
  return rtts.length === 0 ? null : Math.min(...rtts) / 1e6;
}

// versionsOf lists the distinct API server versions c's agents reported.
export function versionsOf(c: ClusterStatus): string[] {
  return [...new Set(c.agents.map((a) => a.health.apiServerVersion).filter((v): v is string => !!v))].sort();
}

// In-cluster apps (docs/console-apps.md): a Service's own web UI, opened
// from its page in a new tab on an origin of its own (a host under the
// stub's browser.apps.domain), never on the console's. The console only
// asks the stub for a launch URL (POST /keyhole/v1/apps, a cookie request
// like any other) and opens it; the stub turns its ticket into the app
// host's own cookie. Nothing of the app runs here.

import { getJSON, sendJSON } from "./api";
import { can } from "./access";
import { registerActions, type Action, type KubeObject, type ObjectContext } from "./views";

export const APPS_PATH = "/keyhole/v1/apps";

// appsEnabled asks the stub once per page load whether apps are
// configured (an answer with no cluster data); a failure counts as no and
// is asked again next time.
let enabled: Promise<boolean> | null = null;
export function appsEnabled(): Promise<boolean> {
  if (!enabled) {
    enabled = getJSON<{ enabled?: unknown }>(APPS_PATH).then(
      (r) => r.enabled === true,
      () => {
        enabled = null;
        return false;
      },
    );
  }
  return enabled;
}

export interface AppPort {
  // port is what the stub and services/proxy take: the port's name if it
  // has one, else its number.
  port: string;
  scheme: "http" | "https";
  label: string;
}

interface ServicePort {
  name?: string;
  port?: number;
  protocol?: string;
  appProtocol?: string;
}

// appPorts lists the ports of a Service that services/proxy can reach:
// TCP ports of a Service that is not an ExternalName. The scheme is https
// when the port says so (appProtocol https, a name "https" or ending in
// "-https", port 443), http otherwise.
export function appPorts(svc: KubeObject): AppPort[] {
  if (svc.spec?.type === "ExternalName") return [];
  const ports: ServicePort[] = Array.isArray(svc.spec?.ports) ? svc.spec.ports : [];
  const out: AppPort[] = [];
  for (const p of ports) {
    if ((p.protocol ?? "TCP") !== "TCP" || (typeof p.port !== "number" && !p.name)) continue;
    const name = p.name ?? "";
    const https = p.appProtocol === "https" || name === "https" || name.endsWith("-https") || p.port === 443;
    const port = name || String(p.port);
    out.push({ port, scheme: https ? "https" : "http", label: name ? `${name} (${p.port})` : String(p.port) });
  }
  return out;
}

// launchApp asks the stub for the launch URL of a Service's port.
export async function launchApp(cluster: string, namespace: string, service: string, p: AppPort, path = "/"): Promise<string> {
  const r = await sendJSON<{ url?: unknown }>("POST", APPS_PATH, { cluster, namespace, service, port: p.port, scheme: p.scheme, path });
  if (typeof r.url !== "string" || !r.url.startsWith("https://")) throw new Error("the gateway gave no launch URL");
  return r.url;
}

// openTab opens url in a new tab that knows nothing of the console: no
// opener (the app cannot reach this window) and no referrer.
export function openTab(url: string): void {
  const a = document.createElement("a");
  a.href = url;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  a.click();
}

// The "Open <port>" actions of a Service's page: offered when apps are
// configured and the user may get services/proxy on this Service (what
// every request of the app will need; the API server still decides each).
registerActions(async (o: ObjectContext): Promise<Action[]> => {
  if (o.res.group !== "" || o.res.resource !== "services" || !o.namespace) return [];
  const ports = appPorts(o.object);
  if (ports.length === 0) return [];
  const namespace = o.namespace;
  const [on, allowed] = await Promise.all([
    appsEnabled(),
    can(o.cluster, { verb: "get", resource: "services", subresource: "proxy", namespace, name: o.name }),
  ]);
  if (!on || !allowed) return [];
  return ports.map((p) => ({
    id: `open-app-${p.port}`,
    label: `Open ${p.label}`,
    run: async () => {
      openTab(await launchApp(o.cluster, namespace, o.name, p));
      return `Opened ${o.name} ${p.label} in a new tab, on its own origin.`;
    },
  }));
});

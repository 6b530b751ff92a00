// The console's only ways to the stub: same-origin requests with the
// browser session cookie and the header X-Keyhole-Console: 1, which the
// stub requires of every cookie request (proxy/browser.go), to
// /keyhole/v1/… and to /clusters/{id}/… (the cluster's own API, through the
// same gateway path, policy and audit as kubectl). There is no other
// backend API.

export const CONSOLE_HEADER = "X-Keyhole-Console";

// ApiError is a failed request: the HTTP status and, when the body was a
// Kubernetes Status, its message and reason.
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly reason: string = "",
    readonly details: unknown = undefined,
  ) {
    super(message);
  }
}

// Every 401 means the browser session no longer stands: the console shows
// "Sign in" (main.ts sets the handler).
let onSignedOut: (message: string) => void = () => {};
export function setSignedOutHandler(f: (message: string) => void): void {
  onSignedOut = f;
}

// clusterURL is the path of p (an API path such as /api/v1/namespaces) in
// cluster id.
export function clusterURL(id: string, p: string): string {
  return `/clusters/${encodeURIComponent(id)}${p}`;
}

// apiFetch sends a cookie request: same origin, the console header, never
// cached. A 401 calls the signed-out handler and throws; any other status
// is returned for the caller to judge (see check).
export async function apiFetch(path: string, init: RequestInit = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  headers.set(CONSOLE_HEADER, "1");
  if (!headers.has("Accept")) headers.set("Accept", "application/json");
  const resp = await fetch(path, { ...init, headers, credentials: "same-origin", cache: "no-store" });
  if (resp.status === 401) {
    const e = await errorOf(resp);
    onSignedOut(e.message);
    throw e;
  }
  return resp;
}

// errorOf reads a failed response into an ApiError, with the message and
// reason of a Kubernetes Status body when there is one.
export async function errorOf(resp: Response): Promise<ApiError> {
  let text = "";
  try {
    text = await resp.text();
  } catch {
    // the body is gone: the status alone
  }
  try {
    const st = JSON.parse(text) as { kind?: unknown; message?: unknown; reason?: unknown; details?: unknown };
    if (typeof st.message === "string") {
      return new ApiError(resp.status, st.message, typeof st.reason === "string" ? st.reason : "", st.details);
    }
  } catch {
    // not JSON
  }
  return new ApiError(resp.status, text.trim().slice(0, 500) || `HTTP ${resp.status} ${resp.statusText}`);
}

// check returns resp when it is a success, else throws its ApiError.
export async function check(resp: Response): Promise<Response> {
  if (resp.ok) return resp;
  throw await errorOf(resp);
}

// getJSON GETs path and decodes its JSON body, or throws an ApiError.
export async function getJSON<T>(path: string, signal?: AbortSignal): Promise<T> {
  const resp = await check(await apiFetch(path, { signal }));
  return (await resp.json()) as T;
}

// sendJSON sends body (JSON, or a string as is) with method and decodes
// the answer, or throws an ApiError.
export async function sendJSON<T>(method: string, path: string, body: unknown, contentType = "application/json", signal?: AbortSignal): Promise<T> {
  const resp = await check(await apiFetch(path, {
    method, signal,
    headers: { "Content-Type": contentType },
    body: typeof body === "string" ? body : JSON.stringify(body),
  }));
  return (await resp.json()) as T;
}

// messageOf is what to tell the user about e.
export function messageOf(e: unknown): string {
  if (e instanceof ApiError) return e.message;
  if (e instanceof DOMException && e.name === "AbortError") return "cancelled";
  return String(e instanceof Error ? e.message : e);
}

// wsURL is the WebSocket URL of path on this origin (wss: on https:).
// Browsers send no custom header on a WebSocket handshake; the stub checks
// its Origin instead.
export function wsURL(path: string): string {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}${path}`;
}

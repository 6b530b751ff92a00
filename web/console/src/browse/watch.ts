// ListWatch keeps a collection live the way client-go's reflector does:
// one list, then a watch from the list's resourceVersion with bookmarks,
// read as a stream (fetch + ReadableStream, one JSON event per line). When
// the watch ends (the server's timeout, a dropped connection) it watches
// again from the last resourceVersion it saw; only a 410 Gone (that
// version is too old) lists again. It never lists again because something
// changed. Failures are retried with backoff (0.5 s doubling to 30 s, with
// jitter); a refusal (403, 404) is final and reported.

import { ApiError, apiFetch, errorOf, messageOf } from "../api";

export type EventType = "ADDED" | "MODIFIED" | "DELETED";

// ListBody is a list as the API server answers it (a List, a Table, a
// PartialObjectMetadataList): the ListWatch needs only its version.
export interface ListBody {
  metadata?: { resourceVersion?: string };
  [k: string]: unknown;
}

export interface WatchObject {
  metadata?: { resourceVersion?: string };
  [k: string]: unknown;
}

export type WatchState =
  | { state: "listing" }
  | { state: "live" }
  | { state: "reconnecting"; message: string; inMs: number }
  | { state: "failed"; error: ApiError | Error };

export interface ListWatchOptions {
  path: string; // the collection's path (clusterURL(…))
  accept: string;
  watchAccept?: string; // when the watch needs another (PartialObjectMetadata for a list's PartialObjectMetadataList)
  query?: Record<string, string | undefined>; // labelSelector, fieldSelector, includeObject …
  signal: AbortSignal;
  onList(body: ListBody): void; // a full list: replace everything shown
  onEvent(type: EventType, obj: WatchObject): void;
  onState?(s: WatchState): void;
}

// Counters a test or the docs can read (window.__keyholeWatch).
export const watchStats = { lists: 0, watches: 0, events: 0, bookmarks: 0, relists410: 0 };
(window as unknown as { __keyholeWatch: typeof watchStats }).__keyholeWatch = watchStats;

function url(path: string, q: Record<string, string | undefined>): string {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) if (v !== undefined && v !== "") p.set(k, v);
  const s = p.toString();
  return s ? `${path}?${s}` : path;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = window.setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { window.clearTimeout(t); resolve(); }, { once: true });
  });
}

class Gone extends Error {}

export async function listWatch(o: ListWatchOptions): Promise<void> {
  const q = o.query ?? {};
  const headers = { Accept: o.accept };
  const watchHeaders = { Accept: o.watchAccept ?? o.accept };
  let rv = "";
  let needList = true;
  let backoff = 500;
  while (!o.signal.aborted) {
    try {
      if (needList) {
        o.onState?.({ state: "listing" });
        watchStats.lists++;
        const resp = await apiFetch(url(o.path, q), { signal: o.signal, headers });
        if (!resp.ok) throw await errorOf(resp);
        const body = (await resp.json()) as ListBody;
        if (o.signal.aborted) return;
        rv = body.metadata?.resourceVersion ?? "";
        needList = false;
        o.onList(body);
        o.onState?.({ state: "live" });
      }
      watchStats.watches++;
      const started = Date.now();
      let got = 0;
      const resp = await apiFetch(url(o.path, { ...q, watch: "1", resourceVersion: rv, allowWatchBookmarks: "true" }), { signal: o.signal, headers: watchHeaders });
      if (resp.status === 410) throw new Gone();
      if (!resp.ok || !resp.body) throw await errorOf(resp);
      o.onState?.({ state: "live" });
      const reader = resp.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.trim() === "") continue;
          const ev = JSON.parse(line) as { type: string; object: WatchObject & { code?: number; message?: string; reason?: string } };
          if (ev.type === "ERROR") {
            if (ev.object.code === 410) throw new Gone();
            throw new ApiError(ev.object.code ?? 500, ev.object.message ?? "the watch failed", ev.object.reason ?? "");
          }
          const v = ev.object.metadata?.resourceVersion;
          if (v) rv = v;
          got++;
          backoff = 500; // it works: a later failure starts the backoff anew
          if (ev.type === "BOOKMARK") {
            watchStats.bookmarks++;
            continue;
          }
          watchStats.events++;
          o.onEvent(ev.type as EventType, ev.object);
        }
      }
      // The server ended the watch (its timeout) or the connection closed:
      // watch again from rv, without listing; at once after a watch that
      // lasted, with backoff after one that ended as soon as it began.
      if (got === 0 && Date.now() - started < 5000) {
        const wait = Math.round(backoff * (0.8 + Math.random() * 0.4));
        o.onState?.({ state: "reconnecting", message: "the watch ended at once", inMs: wait });
        await sleep(wait, o.signal);
        backoff = Math.min(backoff * 2, 30_000);
      }
    } catch (e) {
      if (o.signal.aborted) return;
      if (e instanceof Gone) {
        watchStats.relists410++;
        needList = true;
        continue;
      }
      if (e instanceof ApiError && (e.status === 401 || e.status === 403 || e.status === 404 || e.status === 406 || e.status === 400)) {
        o.onState?.({ state: "failed", error: e }); // signed out, refused, gone: final
        return;
      }
      const wait = Math.round(backoff * (0.8 + Math.random() * 0.4));
      o.onState?.({ state: "reconnecting", message: messageOf(e), inMs: wait });
      await sleep(wait, o.signal);
      backoff = Math.min(backoff * 2, 30_000);
    }
  }
}

// Accept headers.
export const ACCEPT_TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
// Metadata only: a list asks for PartialObjectMetadataList, its watch for
// PartialObjectMetadata (asked of a watch, the List form fails to convert
// and the server sends the whole objects instead).
export const ACCEPT_METADATA_LIST = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io";
export const ACCEPT_METADATA = "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io";
export const ACCEPT_JSON = "application/json";

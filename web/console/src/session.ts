// Who is signed in, and until when: /keyhole/v1/session (web.SessionInfo),
// shown in the header with the time left and a Sign out button (a form
// POST to the stub's logout, which also ends this session's open streams).

import { getJSON } from "./api";
import { el } from "./dom";

export interface SessionInfo {
  user: string;
  groups?: string[];
  issuer?: string;
  issuerURL?: string;
  expires: string; // RFC 3339: the session's absolute end
  idleTimeoutSeconds: number;
  logoutPath: string;
}

let info: Promise<SessionInfo> | null = null;

// session is the signed-in session (asked once per page load).
export function session(): Promise<SessionInfo> {
  info ??= getJSON<SessionInfo>("/keyhole/v1/session");
  return info;
}

// WARN_MS: the header warns this long before the session's absolute end.
export const WARN_MS = 10 * 60 * 1000;

// timeLeft words the time until end: "1 h 12 min", "9 min", "40 s".
export function timeLeft(end: Date, now: Date = new Date()): string {
  const s = Math.max(0, Math.floor((end.getTime() - now.getTime()) / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

// showSession fills the header's session area; it keeps the time left
// current every 15 s.
export async function showSession(header: HTMLElement): Promise<void> {
  let s: SessionInfo;
  try {
    s = await session();
  } catch {
    return; // signed out: main.ts shows Sign in
  }
  const end = new Date(s.expires);
  const left = el("span", { id: "session-left", title: `The session ends at ${end.toLocaleString()} (sooner after ${Math.round(s.idleTimeoutSeconds / 60)} min without use)` });
  const update = () => {
    const ms = end.getTime() - Date.now();
    left.textContent = ms > 0 ? `${timeLeft(end)} left` : "session ended";
    left.classList.toggle("warn", ms < WARN_MS);
  };
  update();
  window.setInterval(update, 15_000);
  const form = el("form", { method: "post", action: s.logoutPath, class: "signout" },
    el("button", { type: "submit", class: "link" }, "Sign out"));
  const who = el("span", { id: "session-user", title: s.groups?.length ? `Groups: ${s.groups.join(", ")}` : "" }, s.user);
  header.append(el("div", { id: "session", class: "session", "aria-label": "Session" }, who, left, form));
}

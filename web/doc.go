// Package web signs people in to the stub with their browser and keeps
// their sessions: OIDC authorization code with PKCE, state and nonce, done
// by the stub (a backend for frontend); a sealed __Host- session cookie
// that page scripts cannot read; the user's own ID and refresh tokens kept
// in shared state (Store) sealed under a key only the cookie holds;
// refresh redeemed once across requests, tabs and replicas; logout; and the
// landing page. *Sessions implements proxy.BrowserSessions, so a cookie
// request goes through the very authenticator and policy kubectl's tokens
// go through. See docs/browser.md.
package web

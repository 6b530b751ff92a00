// Package audit writes one structured record for every request the stub
// answers, in the shape of the Kubernetes audit Event
// (k8s.io/apiserver/pkg/apis/audit/v1.Event: apiVersion audit.k8s.io/v1,
// kind Event), so tools that already read API server audit logs can read the
// gateway's too.
//
// # What gets a record
//
//   - Every plain request gets one record at stage ResponseComplete: served,
//     refused (401 without a valid token, 403, 404, 503…) or failed (502).
//     A failed authentication is recorded with an empty user.
//   - Every upgraded session (exec, attach, port-forward, or any other 101)
//     gets two: ResponseStarted when the 101 goes out, and ResponseComplete
//     when the session ends, with its duration and the bytes carried each
//     way.
//   - The ResponseComplete record is written however the request ends: the
//     caller hanging up in the middle of a watch, the agent's tunnel
//     failing, the stub stopping. keyhole.dev/ended says which.
//
// # The record
//
// [NewEvent] builds the record from a [Request] (what the stub saw) and an
// [Outcome] (how it ended). The verb and objectRef come from the API
// server's own RequestInfoFactory (prefixes api and apis, groupless api),
// applied to the path inside the cluster, so list, get, watch,
// deletecollection, subresources such as exec, and non-resource paths come
// out exactly as the API server would log them. The record is at level
// Metadata: no request or response body is ever part of it. Gateway facts
// are annotations:
//
//	keyhole.dev/cluster    cluster ID from the path
//	keyhole.dev/agent      agent that served the request, if known
//	keyhole.dev/latency    time until the response (for sessions: until the 101), e.g. "12.3ms"
//	keyhole.dev/bytes-in   request body bytes, or client→cluster bytes of a session
//	keyhole.dev/bytes-out  response body bytes, or cluster→client bytes of a session
//	keyhole.dev/session    exec, attach, portforward (or upgrade), for 101 responses
//	keyhole.dev/duration   length of the session, on its ResponseComplete record
//	keyhole.dev/browser-session  hash of the browser session ID, on cookie requests and browser Events
//	keyhole.dev/browser-event    sign-in, sign-in-refused, refresh-failed, sign-out
//	keyhole.dev/ended      how it ended: complete, client-gone, agent-gone, stub-stopping (or stub-failed)
//
// Durations are Go duration strings (time.ParseDuration reads them back).
//
// # No secrets
//
// A record is built only from the fields of [Request] and [Outcome]; there
// is no field for headers, so Authorization, Cookie and Impersonate-* headers
// can never reach a record. Query parameters that carry credentials
// (access_token, token, anything named like a token, secret, password,
// credential, signature or API key) are replaced by "REDACTED" in requestURI,
// and the unredacted query is never handed to anything that logs. A 401
// record names no user: the token that failed is not recorded in any form.
//
// # Sinks
//
// A [Sink] writes events as JSON lines. [NewWriterSink] commits them in
// groups: events that arrive while a write is under way go out together in
// the next single Write call, so concurrent requests never interleave
// partial lines and cost one system call per group, not per event; each
// Write returns only once its event was written. [OpenFileSink] appends to a
// file created with mode 0600, or writes to stdout for "-": a crash of the
// stub loses no record of an answered request (the record is in the kernel
// before the answer ends), a crash of the machine what the kernel had not
// yet put on disk. A Sink never drops an event silently: Write returns the
// error, and the caller logs it.
//
// # Counting bytes
//
// [CountingConn] counts the bytes of an upgraded connection and keeps its
// CloseWrite (half-close) working. [ResponseWriter] wraps the stub's
// http.ResponseWriter: it records the status code and body bytes, and when
// an httputil.ReverseProxy hijacks the connection for a 101 it hands out a
// CountingConn and calls OnUpgrade, where the ResponseStarted record belongs.
// [CountRequestBody] counts request body bytes.
package audit

package proxy

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/util/sets"
	apirequest "k8s.io/apiserver/pkg/endpoints/request"
)

// A graceful stop of the stub (Stub.Drain). http.Server.Shutdown stops
// accepting connections and waits for requests in flight, which is right for
// plain requests but wrong for the requests that only end when someone ends
// them: a watch or `logs -f` would hold the stop until its timeout and then
// be cut with a reset, and hijacked exec/attach/port-forward connections are
// not waited for at all. Drain ends those itself, each in the way its client
// understands:
//
//   - a streaming response (watch, logs -f) ends with a proper end of the
//     body: the HTTP/1.1 chunked terminator or HTTP/2 END_STREAM, so
//     client-go sees the watch end and re-watches, and kubectl logs -f
//     exits;
//   - an upgraded session (exec, attach, port-forward, cp) is closed, so
//     the client sees its connection end instead of a hang.

// longRunningCheck is kube-apiserver's own split: the verbs and
// subresources kube-apiserver hands to k8s.io/apiserver's
// BasicLongRunningRequestCheck (pkg/server/filters). That package is not
// imported for its five lines: it would bring etcd's client, gRPC and
// OpenTelemetry into the stub's module graph.
var (
	longRunningVerbs        = sets.NewString("watch", "proxy")
	longRunningSubresources = sets.NewString("attach", "exec", "proxy", "log", "portforward")
)

func longRunningCheck(info *apirequest.RequestInfo) bool {
	return longRunningVerbs.Has(info.Verb) || (info.IsResourceRequest && longRunningSubresources.Has(info.Subresource))
}

// longRunning reports whether r (whose path in the cluster is rest) runs
// until someone ends it: an upgrade, a watch (watch= read as the API server
// reads a bool: watch=yes, ?watch and WATCH=TRUE are watches too, on any
// path), a followed log, or what kube-apiserver's own long-running check
// says of the path (a /watch/ path, the proxy subresources, exec, attach,
// portforward). A log without follow is a plain request that ends by
// itself. The path is read as sent and cleaned, as connectTarget does.
func longRunning(r *http.Request, rest string) bool {
	q := r.URL.Query()
	if isUpgrade(r.Header) || boolParam(q, "watch") {
		return true
	}
	for _, p := range []string{rest, path.Clean("/" + rest)} {
		if strings.HasSuffix(p, "/log") {
			if boolParam(q, "follow") {
				return true
			}
			continue
		}
		if !slices.ContainsFunc(strings.Split(p, "/"), func(seg string) bool { return longRunningSegments[seg] }) {
			continue // most requests: no segment that could make them long-running, so no parse
		}
		req := &http.Request{Method: r.Method, URL: &url.URL{Path: p}}
		if info, err := requestInfoFactory.NewRequestInfo(req); err == nil && longRunningCheck(info) {
			return true
		}
	}
	return false
}

// longRunningSegments are the path segments without which longRunningCheck
// cannot say yes (the /watch/ and /proxy/ verb prefixes, the subresources).
var longRunningSegments = map[string]bool{"watch": true, "proxy": true, "attach": true, "exec": true, "portforward": true}

// boolParam reads query parameter name as the API server decodes a bool
// (apimachinery's Convert_Slice_string_To_bool): present, and not "0" or
// "false" in any letter case; an empty value is true.
func boolParam(q url.Values, name string) bool {
	v, ok := q[name]
	return ok && (len(v) == 0 || (v[0] != "0" && !strings.EqualFold(v[0], "false")))
}

func isUpgrade(h http.Header) bool {
	for _, v := range h.Values("Connection") {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				return true
			}
		}
	}
	return false
}

// longReq is one long-running request the stub may have to end.
type longReq struct {
	cancel context.CancelFunc
	// ended is set before cancel when the stub ends the request, so the
	// body's read error is the end of the response, not a failure.
	ended atomic.Bool
	// why is the reason the stub ended it (recheck.go).
	why endReason

	mu     sync.Mutex
	client io.Closer // the client's connection, once upgraded
}

// upgraded hands lr the client's hijacked connection, so that end closes it
// before it cancels the hop to the agent (see end).
func (lr *longReq) upgraded(c io.Closer) {
	lr.mu.Lock()
	lr.client = c
	lr.mu.Unlock()
	if lr.ended.Load() {
		_ = c.Close()
	}
}

// drainer tracks long-running requests.
type drainer struct {
	mu       sync.Mutex
	draining bool
	live     map[*longReq]struct{}
}

// track registers a long-running request and returns its context (cancelled
// by Drain) and a release for when it returns; ok is false once draining.
func (d *drainer) track(ctx context.Context) (_ context.Context, _ *longReq, release func(), ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.draining {
		return nil, nil, nil, false
	}
	ctx, cancel := context.WithCancel(ctx)
	lr := &longReq{cancel: cancel}
	if d.live == nil {
		d.live = map[*longReq]struct{}{}
	}
	d.live[lr] = struct{}{}
	return ctx, lr, func() {
		cancel()
		d.mu.Lock()
		delete(d.live, lr)
		d.mu.Unlock()
	}, true
}

// Drain ends every long-running request for a graceful stop and refuses
// new ones (503 with Retry-After, so clients come back to another replica
// or to this one restarted). Plain requests are left alone: the
// http.Server's Shutdown waits for them. Drain returns when the requests it
// ended have returned, or when ctx ends; ended is how many it ended and left
// how many had not returned.
func (s *Stub) Drain(ctx context.Context) (ended, left int) {
	d := &s.drain
	d.mu.Lock()
	d.draining = true
	for lr := range d.live {
		lr.end(EndedStopping, "the gateway is shutting down")
		ended++
	}
	d.mu.Unlock()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		d.mu.Lock()
		left = len(d.live)
		d.mu.Unlock()
		if left == 0 {
			return ended, 0
		}
		select {
		case <-ctx.Done():
			return ended, left
		case <-t.C:
		}
	}
}

// Draining reports whether Drain has been called: the stub is stopping.
func (s *Stub) Draining() bool {
	s.drain.mu.Lock()
	defer s.drain.mu.Unlock()
	return s.drain.draining
}

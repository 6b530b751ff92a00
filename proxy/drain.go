package proxy

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
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

// longRunning reports whether r runs until someone ends it: a watch, a
// followed log, or an upgrade. The same split as the API server's own
// (verbs watch, subresources exec/attach/portforward/log), except that a
// log without follow is a plain request that ends by itself.
func longRunning(r *http.Request) bool {
	q := r.URL.Query()
	switch {
	case isUpgrade(r.Header):
		return true
	case q.Get("watch") == "true" || q.Get("watch") == "1" || strings.Contains(r.URL.Path, "/watch/"):
		return true
	case strings.HasSuffix(r.URL.Path, "/log") && (q.Get("follow") == "true" || q.Get("follow") == "1"):
		return true
	}
	return false
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

package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/keyhole-dev/keyhole/audit"
	"github.com/keyhole-dev/keyhole/tunnel"
)

// How a request through the stub ended, for its final audit record, log
// line and metrics, which the stub writes however the handler ends.
//
// httputil.ReverseProxy panics with http.ErrAbortHandler when copying a
// response fails part way, whichever side failed: the caller went away (a
// watch whose client hung up: its context is cancelled, so the read from
// the agent fails too) or the agent's side broke (the tunnel stream reset).
// net/http recovers that panic and aborts the connection, so the caller
// sees a truncated response, not a clean end; nothing after
// ReverseProxy.ServeHTTP runs. Stub.forward therefore writes the record in
// a deferred function, from facts gathered on the way:
//
//   - the caller's side: its request context (cancelled when its connection
//     closes or its HTTP/2 stream is reset, and when a write to it fails)
//     and the first failed write or flush (audit.ResponseWriter.Err);
//   - the agent's side: a failed read of the response body (respBody);
//   - an upgraded session: which side's read or write failed or ended
//     first (the hijacked conn's OnError, sessionConn);
//   - a graceful stop: Drain's mark on the long-running request.

// ends collects those facts for one request.
type ends struct {
	// bodyFailed: reading the response from the agent failed (not io.EOF).
	bodyFailed atomic.Bool

	mu sync.Mutex
	// The first end of an upgraded session: the side and its error
	// (io.EOF for a side that closed its direction cleanly). What follows
	// it (the other side's error once ReverseProxy closes both conns) is not
	// how the session ended.
	sessionSet   bool
	sessionAgent bool
	sessionErr   error
}

// sessionEnd notes a failed read or write on one side of a session.
func (e *ends) sessionEnd(agentSide bool, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.sessionSet {
		e.sessionSet, e.sessionAgent, e.sessionErr = true, agentSide, err
	}
}

// session says how an upgraded session ended: complete when the first side
// to end closed its direction cleanly (the command exited, the client
// closed or half-closed), else the side whose connection failed.
func (e *ends) session() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case !e.sessionSet || errors.Is(e.sessionErr, io.EOF):
		return audit.EndedComplete
	case e.sessionAgent:
		return audit.EndedAgentGone
	}
	return audit.EndedClientGone
}

// ended says how the request ended. client is the caller's request
// context; returned is false when ReverseProxy did not return (it
// panicked).
func (st *reqState) ended(client context.Context, aw *audit.ResponseWriter, returned bool) string {
	switch {
	case st.long != nil && st.long.ended.Load():
		reason, _ := st.long.Reason() // stopping, or no longer admitted (recheck.go)
		return reason
	case aw.Upgraded() != nil:
		return st.ends.session()
	case st.failure != nil:
		switch st.failure.ErrStatus.Code {
		case statusClientClosed:
			return audit.EndedClientGone
		case http.StatusBadGateway:
			return audit.EndedAgentGone
		}
		return audit.EndedComplete // the stub's own answer (no agent), delivered
	case returned:
		return audit.EndedComplete
	case client.Err() != nil || aw.Err() != nil:
		return audit.EndedClientGone
	case st.ends.bodyFailed.Load():
		return audit.EndedAgentGone
	}
	return audit.EndedStubFailed
}

// statusClientClosed is the code recorded for a request whose caller went
// away before the agent answered (nginx's 499; nobody receives it).
const statusClientClosed = 499

// respBody is the body of a response from an agent as the stub reads it.
// It notes a failed read, and turns the read error that follows Drain's
// cancel into io.EOF, so that httputil.ReverseProxy finishes the response
// normally (it aborts the response, a reset, on any other error).
type respBody struct {
	io.ReadCloser
	st *reqState
}

func (b *respBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		if b.st.long != nil && b.st.long.ended.Load() {
			return n, io.EOF
		}
		b.st.ends.bodyFailed.Store(true)
	}
	return n, err
}

// sessionConn is the agent's side of an upgraded session (the body of the
// 101 response), noting how it ends. CloseWrite (half-close) is passed on.
type sessionConn struct {
	io.ReadWriteCloser
	st *reqState
}

func (c *sessionConn) Read(p []byte) (int, error) {
	n, err := c.ReadWriteCloser.Read(p)
	if err != nil {
		c.st.ends.sessionEnd(true, err)
	}
	return n, err
}

func (c *sessionConn) Write(p []byte) (int, error) {
	n, err := c.ReadWriteCloser.Write(p)
	if err != nil {
		c.st.ends.sessionEnd(true, err)
	}
	return n, err
}

func (c *sessionConn) CloseWrite() error {
	if cw, ok := c.ReadWriteCloser.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("proxy: %T cannot half-close: %w", c.ReadWriteCloser, errors.ErrUnsupported)
}

// errTunnelGone replaces the io.EOF a tunnel stream reads when its whole
// session ended (the agent died, its connection broke): a yamux stream
// closed with its session reads as cleanly ended as one its peer closed.
var errTunnelGone = errors.New("the tunnel session to the agent ended")

// tunnelConn is a connection to an agent (a tunnel stream) whose reads tell
// the end of the stream from the end of its session (errTunnelGone).
// CloseWrite (half-close) is passed on.
type tunnelConn struct {
	*tunnel.Stream
}

func (c tunnelConn) Read(p []byte) (int, error) {
	n, err := c.Stream.Read(p)
	if err == io.EOF && c.Session().IsClosed() {
		err = errTunnelGone
	}
	return n, err
}

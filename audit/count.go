package audit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
)

// CountingConn wraps a net.Conn and counts the bytes read from it and
// written to it, for upgraded sessions. The counters are atomic: they can
// be read while the session runs.
//
// CloseWrite (half-close) is passed to the wrapped conn when it has one
// (*net.TCPConn, *tls.Conn, a yamux stream); otherwise it returns an error
// wrapping errors.ErrUnsupported, which httputil.ReverseProxy treats like a
// conn without CloseWrite.
//
// Only Read and Write are counted, so the wrapped conn's ReadFrom/WriteTo
// (splice, sendfile) are deliberately not promoted.
type CountingConn struct {
	net.Conn
	read, written atomic.Int64
	// OnError, if set before the conn is first used, is called with the
	// error of every Read or Write that fails, io.EOF included (from the
	// goroutine that called Read or Write). The stub learns from it which
	// side ended an upgraded session.
	OnError func(error)
}

// NewCountingConn wraps c.
func NewCountingConn(c net.Conn) *CountingConn { return &CountingConn{Conn: c} }

func (c *CountingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.read.Add(int64(n))
	}
	if err != nil && c.OnError != nil {
		c.OnError(err)
	}
	return n, err
}

func (c *CountingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.written.Add(int64(n))
	}
	if err != nil && c.OnError != nil {
		c.OnError(err)
	}
	return n, err
}

// CloseWrite half-closes the wrapped conn, if it can.
func (c *CountingConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("audit: %T cannot half-close: %w", c.Conn, errors.ErrUnsupported)
}

// BytesRead is the number of bytes read so far.
func (c *CountingConn) BytesRead() int64 { return c.read.Load() }

// BytesWritten is the number of bytes written so far.
func (c *CountingConn) BytesWritten() int64 { return c.written.Load() }

// Unwrap returns the wrapped conn.
func (c *CountingConn) Unwrap() net.Conn { return c.Conn }

// CountingBody counts the bytes read from a request body.
type CountingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (b *CountingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.n.Add(int64(n))
	}
	return n, err
}

// BytesRead is the number of body bytes read so far.
func (b *CountingBody) BytesRead() int64 { return b.n.Load() }

// CountRequestBody replaces r.Body with a CountingBody and returns it. A
// request without a body (nil or http.NoBody) keeps it, so that transports
// still see "no body"; the returned counter then stays at 0.
func CountRequestBody(r *http.Request) *CountingBody {
	if r.Body == nil || r.Body == http.NoBody {
		return &CountingBody{ReadCloser: http.NoBody}
	}
	b := &CountingBody{ReadCloser: r.Body}
	r.Body = b
	return b
}

// ResponseWriter wraps an http.ResponseWriter to learn what the caller got:
// the status code, the body bytes and, for a 101, the upgraded connection.
// Flush, deadlines and the like reach the wrapped writer through Unwrap
// (http.ResponseController).
//
// Use it from a single handler goroutine (as net/http does), and read Code
// and BytesWritten after the handler returns; the counters of Upgraded may
// be read at any time.
type ResponseWriter struct {
	http.ResponseWriter

	// OnUpgrade, if set, is called when the connection is hijacked for a
	// protocol switch, just before the 101 is written, with the counting
	// conn the session will run on. That is the moment for the
	// ResponseStarted record.
	OnUpgrade func(*CountingConn)

	code     int
	written  int64
	upgraded *CountingConn
	err      error // first failed Write or flush
}

// NewResponseWriter wraps w.
func NewResponseWriter(w http.ResponseWriter) *ResponseWriter {
	return &ResponseWriter{ResponseWriter: w}
}

// WriteHeader records the first final status code (1xx informational
// responses other than 101 are passed on but not recorded).
func (w *ResponseWriter) WriteHeader(code int) {
	if w.code == 0 && (code < 100 || code > 199 || code == http.StatusSwitchingProtocols) {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *ResponseWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.written += int64(n)
	if err != nil && w.err == nil {
		w.err = err
	}
	return n, err
}

// FlushError flushes the wrapped writer (what http.ResponseController
// calls).
func (w *ResponseWriter) FlushError() error {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	err := http.NewResponseController(w.ResponseWriter).Flush()
	if err != nil && w.err == nil && !errors.Is(err, http.ErrNotSupported) {
		w.err = err
	}
	return err
}

// Flush implements http.Flusher.
func (w *ResponseWriter) Flush() { _ = w.FlushError() }

// Hijack takes over the connection (httputil.ReverseProxy does so to write
// a 101 and copy the session). The conn it returns is a CountingConn, also
// available from Upgraded; the status is recorded as 101. An HTTP/2
// writer's error (http.ErrNotSupported) is passed back unchanged.
func (w *ResponseWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	cc := NewCountingConn(conn)
	w.upgraded = cc
	if w.code == 0 {
		w.code = http.StatusSwitchingProtocols
	}
	if w.OnUpgrade != nil {
		w.OnUpgrade(cc)
	}
	return cc, brw, nil
}

// Unwrap returns the wrapped writer, for http.ResponseController.
func (w *ResponseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Code is the status sent: 200 if the handler wrote nothing (as net/http
// does), 101 after a hijack.
func (w *ResponseWriter) Code() int {
	if w.code == 0 {
		return http.StatusOK
	}
	return w.code
}

// BytesWritten is the number of response body bytes written through
// Write (not counting an upgraded session; see Upgraded).
func (w *ResponseWriter) BytesWritten() int64 { return w.written }

// Err is the first error of a Write or a flush: the response did not reach
// the caller whole (it went away). Nil if none failed.
func (w *ResponseWriter) Err() error { return w.err }

// Upgraded is the connection handed out by Hijack, or nil.
func (w *ResponseWriter) Upgraded() *CountingConn { return w.upgraded }

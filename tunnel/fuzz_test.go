package tunnel

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// fuzzDeadline bounds one fuzz input's exchange: by then the stub must have
// answered and closed the connection (the client half-closes after sending,
// so a stub waiting for more input sees EOF at once).
const fuzzDeadline = 5 * time.Second

// fuzzMaxHeaderBytes is the test server's header limit. cmd/stub allows
// 1 MiB; net/http enforces either the same way, before the Server sees the
// request, and a smaller one keeps over-the-limit inputs cheap enough that
// the fuzzer does not spend its time running and minimizing megabyte inputs.
const fuzzMaxHeaderBytes = 64 << 10

// handshakeRequest is the request an agent sends, with extra header lines.
func handshakeRequest(cluster, agent, fp, secret string, extra ...string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: stub.example\r\nConnection: Upgrade\r\nUpgrade: %s\r\n", ConnectPath, UpgradeProtocol)
	fmt.Fprintf(&b, "Authorization: Bearer %s\r\n%s: %s\r\n%s: %s\r\n%s: %s\r\n", secret, HeaderCluster, cluster, HeaderAgent, agent, HeaderFingerprint, fp)
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	return []byte(b.String())
}

// yamuxFrame is a yamux frame header (version 0) followed by body.
func yamuxFrame(typ, flags uint16, stream, length uint32, body []byte) []byte {
	h := []byte{0, byte(typ), byte(flags >> 8), byte(flags),
		byte(stream >> 24), byte(stream >> 16), byte(stream >> 8), byte(stream),
		byte(length >> 24), byte(length >> 16), byte(length >> 8), byte(length)}
	return append(h, body...)
}

// fuzzRun is the state of one fuzz input: a fresh tunnel Server and what the
// handler wrapped around it saw.
type fuzzRun struct {
	srv   *Server
	logs  *observer.ObservedLogs
	httpE bytes.Buffer // the http.Server's own error log

	inflight atomic.Int32 // handler calls not yet returned
	mu       sync.Mutex
	panics   []string
	agents   []AgentInfo // Server.Agents("") right after each handshake
}

func (r *fuzzRun) record(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f()
}

func (r *fuzzRun) report() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, e := range r.logs.All() {
		fmt.Fprintf(&b, "  log %s %q %v\n", e.Level, e.Message, e.ContextMap())
	}
	fmt.Fprintf(&b, "  http.Server errors: %q\n  panics: %q\n  agents: %+v", r.httpE.String(), r.panics, r.agents)
	return b.String()
}

// FuzzHandshake sends arbitrary bytes, as the start of a connection, to the
// tunnel Server's handler behind a real listener. Whatever arrives, the
// handler must not panic, the connection must be answered and closed within
// fuzzDeadline, and no agent may be registered unless the input carries the
// join secret of cluster c1.
func FuzzHandshake(f *testing.F) {
	valid := handshakeRequest("c1", "a1", "fp", "s3cret")
	seeds := [][]byte{
		valid,
		handshakeRequest("c1", "agent-7d9c-x2.zone_b", strings.Repeat("f", 128), "s3cret", "Keyhole-Agent-Version: v1.2.3"),
		handshakeRequest("c1", "a1", "fp", "s3cret", HeaderAttributes+": verifies-callers=jwt&zone=eu+west%2F1"),
		handshakeRequest("c1", "a1", "fp", "s3cret", HeaderAttributes+": k=1&k=2"),
		handshakeRequest("c1", "a1", "fp", "s3cret", HeaderAttributes+": k=%ff%00"),
		handshakeRequest("c1", "a1", "fp", "s3cret", HeaderAttributes+": "+strings.Repeat("k=v&", 40)),
		append(bytes.Clone(valid), yamuxFrame(2, 1, 0, 7, nil)...),                           // then a yamux ping
		append(bytes.Clone(valid), yamuxFrame(0, 1, 1, 5, []byte("hello"))...),               // then a stream SYN with data
		append(bytes.Clone(valid), yamuxFrame(0, 0, 9, 1<<30, nil)...),                       // then a huge data frame length
		append(bytes.Clone(valid), yamuxFrame(3, 0, 0, 1, nil)...),                           // then a go-away
		append(bytes.Clone(valid), "\x07garbage after the upgrade"...),                       // bad yamux version
		append(handshakeRequest("c1", "a1", "fp", "s3cret", "Content-Length: 4"), "body"...), // body left in the buffer
		append([]byte("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"), valid...),                    // keep-alive, then the upgrade
		// Half requests.
		valid[:len(valid)/2],
		valid[:len(valid)-2],
		[]byte("GET " + ConnectPath + " HTTP/1.1\r\nHost: x\r\n"),
		[]byte("GET"),
		{},
		// Refused handshakes.
		handshakeRequest("c1", "a1", "fp", "s3cret-not"),
		handshakeRequest("c1", "a1", "fp", "S3CRET"),
		handshakeRequest("c1", "a1", "fp", ""),
		handshakeRequest("c2", "a1", "fp", "s3cret"),
		handshakeRequest("C1", "a1", "fp", "s3cret"),
		handshakeRequest("c1", "a1", strings.Repeat("f", 129), "s3cret"),
		handshakeRequest("c1", "-bad", "fp", "s3cret"),
		handshakeRequest("c1", "a1", "", "s3cret"),
		bytes.Replace(valid, []byte("Bearer "), []byte("bearer "), 1),
		bytes.Replace(valid, []byte("Bearer "), []byte("Basic "), 1),
		bytes.Replace(valid, []byte("GET "), []byte("POST "), 1),
		bytes.Replace(valid, []byte("HTTP/1.1"), []byte("HTTP/1.0"), 1),
		bytes.Replace(valid, []byte("HTTP/1.1"), []byte("HTTP/2.0"), 1),
		bytes.Replace(valid, []byte("Upgrade: "+UpgradeProtocol), []byte("Upgrade: websocket"), 1),
		bytes.Replace(valid, []byte("Authorization: Bearer s3cret\r\n"), nil, 1),
		handshakeRequest("c1", "a1", "fp", "nope", "Authorization: Bearer s3cret"), // the first one counts
		handshakeRequest("c1", "a1", "fp", "s3cret", "Expect: 100-continue", "Content-Length: 10"),
		append(handshakeRequest("c1", "a1", "fp", "s3cret", "Transfer-Encoding: chunked"), "5\r\nhello\r\n0\r\n\r\n"...),
		// Garbage.
		[]byte("\x00\x01\x02garbage\r\n\r\n"),
		[]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
		[]byte("\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"), // a TLS ClientHello's start
		[]byte("GET /\x00 HTTP/1.1\r\n\r\n"),
		[]byte("\r\n\r\n\r\n"),
		// Huge headers: over the limit, and many or long ones under it.
		handshakeRequest("c1", "a1", "fp", "s3cret", "X-Big: "+strings.Repeat("A", fuzzMaxHeaderBytes+8192)),
		handshakeRequest("c1", "a1", "fp", "wrong", strings.Repeat("X-Many: v\r\n", 4000)+"X-Last: v"),
		handshakeRequest("c1", "a1", "fp", strings.Repeat("s", 32<<10)),
		handshakeRequest("c1", "a1", "fp", "s3cret", "Keyhole-Agent-Version: "+strings.Repeat("v", 32<<10)),
		bytes.Repeat([]byte("A"), fuzzMaxHeaderBytes+8192),
	}
	for _, s := range seeds {
		f.Add(s)
	}

	// One listener for every input; each input gets a fresh Server, which
	// the handler reaches through cur.
	var cur atomic.Pointer[fuzzRun]
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		run := cur.Load()
		run.inflight.Add(1)
		defer run.inflight.Add(-1)
		defer func() {
			if p := recover(); p != nil {
				run.record(func() { run.panics = append(run.panics, fmt.Sprintf("%v\n%s", p, debug.Stack())) })
				panic(http.ErrAbortHandler)
			}
		}()
		run.srv.ServeHTTP(w, r)
		if a := run.srv.Agents(""); len(a) > 0 {
			run.record(func() { run.agents = append(run.agents, a...) })
		}
	}))
	ts.Config.MaxHeaderBytes = fuzzMaxHeaderBytes
	ts.Config.ErrorLog = log.New(writerFunc(func(p []byte) (int, error) {
		if run := cur.Load(); run != nil {
			run.record(func() { run.httpE.Write(p) })
		}
		return len(p), nil
	}), "", 0)
	ts.Start()
	f.Cleanup(ts.Close)
	addr := ts.Listener.Addr().String()

	f.Fuzz(func(t *testing.T, data []byte) {
		core, logs := observer.New(zap.DebugLevel)
		srv, err := NewServer(ServerConfig{Auth: secrets{"c1": "s3cret"}, Logger: zap.New(core)})
		if err != nil {
			t.Fatal(err)
		}
		run := &fuzzRun{srv: srv, logs: logs}
		cur.Store(run)
		closed := false
		closeSrv := func() {
			if !closed {
				closed = true
				srv.Close()
			}
		}
		defer closeSrv()

		resp, err := exchange(addr, data)
		if err != nil {
			t.Fatalf("input %q: %v\n%s", clip(data), err, run.report())
		}
		// The handler may still be finishing a handshake the connection's
		// end raced with (registration comes after the 101).
		for end := time.Now().Add(fuzzDeadline); run.inflight.Load() != 0; time.Sleep(time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("input %q: handler still running %v after the connection ended\n%s", clip(data), fuzzDeadline, run.report())
			}
		}
		run.record(func() { run.agents = append(run.agents, srv.Agents("")...) })

		run.mu.Lock()
		panics, agents := run.panics, run.agents
		run.mu.Unlock()
		if len(panics) > 0 {
			t.Fatalf("input %q: handler panicked\n%s", clip(data), run.report())
		}
		if len(resp) > 0 && !bytes.HasPrefix(resp, []byte("HTTP/1.")) {
			t.Fatalf("input %q: answer is not HTTP: %q", clip(data), clip(resp))
		}
		upgraded := bytes.Contains(resp, []byte("HTTP/1.1 101 "))
		connected := logs.FilterMessage("agent connected").Len() > 0
		hasSecret := bytes.Contains(data, []byte("s3cret")) && bytes.Contains(data, []byte("c1"))
		if !hasSecret && (upgraded || connected || len(agents) > 0) {
			t.Fatalf("input %q without c1's secret was let in: 101 %v, logged connected %v, agents %+v\nanswer %q\n%s",
				clip(data), upgraded, connected, agents, clip(resp), run.report())
		}
		for _, a := range agents {
			if a.Cluster != "c1" {
				t.Fatalf("input %q registered an agent of cluster %q", clip(data), a.Cluster)
			}
			if err := checkAttributes(a.Attributes); err != nil {
				t.Fatalf("input %q registered an agent with attributes out of bounds: %v", clip(data), err)
			}
		}
		if bytes.Equal(data, valid) && (!upgraded || !connected) {
			t.Fatalf("the valid handshake was not accepted: answer %q\n%s", clip(resp), run.report())
		}
		closeSrv()
		if a := srv.Agents(""); len(a) > 0 {
			t.Fatalf("input %q: agents left after Server.Close: %+v", clip(data), a)
		}
	})
}

// exchange connects to addr, sends data, half-closes and reads the answer
// until the stub closes the connection. It fails if that takes longer than
// fuzzDeadline.
func exchange(addr string, data []byte) ([]byte, error) {
	c, err := net.DialTimeout("tcp", addr, fuzzDeadline)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(fuzzDeadline)); err != nil {
		return nil, err
	}
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	resp, rerr := io.ReadAll(c)
	// A stub that answered and closed before reading everything makes the
	// write fail (EPIPE, ECONNRESET) and may reset the read: that is a
	// close. Only running into the deadline is a failure.
	if err := <-werr; errors.Is(err, os.ErrDeadlineExceeded) {
		return resp, fmt.Errorf("stub did not read the input or close within %v (answer so far %q)", fuzzDeadline, clip(resp))
	}
	if errors.Is(rerr, os.ErrDeadlineExceeded) {
		return resp, fmt.Errorf("stub did not answer and close within %v (answer so far %q)", fuzzDeadline, clip(resp))
	}
	return resp, nil
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// clip shortens b for messages.
func clip(b []byte) []byte {
	if len(b) > 512 {
		return append(append([]byte(nil), b[:512]...), fmt.Sprintf("...(%d bytes)", len(b))...)
	}
	return b
}

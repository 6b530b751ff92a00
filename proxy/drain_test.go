package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-dev/keyhole/audit"
)

func TestLongRunning(t *testing.T) {
	for target, want := range map[string]bool{
		"/api/v1/pods?watch=true":                           true,
		"/api/v1/pods?watch=1&resourceVersion=5":            true,
		"/api/v1/watch/namespaces/default/pods":             true,
		"/api/v1/namespaces/default/pods/p/log?follow=true": true,
		"/api/v1/namespaces/default/pods/p/log":             false,
		"/api/v1/pods":                                      false,
		"/api/v1/pods?watch=false":                          false,
		"/apis/apps/v1/deployments?limit=500":               false,
		// The API server reads watch and follow as bools: any value but
		// 0 and false, an empty one included.
		"/api/v1/pods?watch=yes":                       true,
		"/api/v1/pods?watch=TRUE":                      true,
		"/api/v1/pods?watch":                           true,
		"/api/v1/pods?watch=":                          true,
		"/api/v1/pods?watch=False":                     false,
		"/api/v1/namespaces/d/pods/p/log?follow":       true,
		"/api/v1/namespaces/d/pods/p/log?follow=yes":   true,
		"/api/v1/namespaces/d/pods/p/log/?follow=true": true,
		"/api/v1/namespaces/d/pods/p/log?follow=0":     false,
		"/api/v1/namespaces/d/pods/p/proxy/ui":         true,
		"/api/v1/namespaces/d/services/s:80/proxy/":    true,
		"/api/v1/nodes/n/proxy/stats":                  true,
		"/api/v1/namespaces/d/pods/p/exec?command=sh":  true,
	} {
		r, _ := http.NewRequest("GET", "https://x/clusters/c1"+target, nil)
		rest, _, _ := strings.Cut(target, "?")
		if got := longRunning(r, rest); got != want {
			t.Errorf("%s: longRunning %v, want %v", target, got, want)
		}
	}
	r, _ := http.NewRequest("POST", "https://x/api/v1/namespaces/d/pods/p/exec?command=sh", nil)
	r.Header.Set("Connection", "keep-alive, Upgrade")
	if !longRunning(r, "/api/v1/namespaces/d/pods/p/exec") {
		t.Error("an upgrade is long-running")
	}
}

// A graceful stop ends watches with a proper end of the response (HTTP/1.1
// and HTTP/2 alike), closes upgraded sessions, refuses new long-running
// requests with a retryable 503, and leaves plain requests in flight alone.
func TestDrain(t *testing.T) {
	api := newFakeAPI(t)
	c := newChain(t, restFor(api.Server), api)
	h1 := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.pool}} // no h2
	defer h1.CloseIdleConnections()
	open := func(rt http.RoundTripper, path string, hdr ...string) (*http.Response, *bufio.Reader) {
		t.Helper()
		req, _ := http.NewRequest("GET", c.stubURL+path, nil)
		req.Header.Set("Authorization", "Bearer alice-token")
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := rt.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(resp.Body)
		if resp.StatusCode == http.StatusOK {
			if l, err := br.ReadString('\n'); err != nil || !strings.Contains(l, "ADDED") {
				t.Fatalf("%s: first line %q, %v", path, l, err)
			}
		}
		return resp, br
	}
	watch2, w2 := open(c.client.Transport, "/clusters/c1/watch?watch=true")
	defer watch2.Body.Close()
	if watch2.ProtoMajor != 2 {
		t.Fatalf("watch over %s, want HTTP/2", watch2.Proto)
	}
	watch1, w1 := open(h1, "/clusters/c1/watch?watch=true")
	defer watch1.Body.Close()
	if watch1.ProtoMajor != 1 {
		t.Fatalf("watch over %s, want HTTP/1.1", watch1.Proto)
	}
	// The same path without ?watch is a plain request (a slow one: it ends
	// when the API server is released).
	plain, pr := open(c.client.Transport, "/clusters/c1/watch")
	defer plain.Body.Close()
	up, _ := open(h1, "/clusters/c1/upgrade", "Connection", "Upgrade", "Upgrade", "test-proto")
	if up.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %s", up.Status)
	}
	rwc := up.Body.(io.ReadWriteCloser)
	defer rwc.Close()
	if _, err := io.WriteString(rwc, "hello"); err != nil {
		t.Fatal(err)
	}
	// An idle session, like an exec nobody types into: the client sends
	// nothing after the 101, so nothing the client does ends it; the
	// drain has to. (Whether the session above had already forwarded its
	// "hello" when Drain began used to decide whether Drain could end it.)
	idleUp, _ := open(h1, "/clusters/c1/upgrade", "Connection", "Upgrade", "Upgrade", "test-proto")
	if idleUp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("idle upgrade: %s", idleUp.Status)
	}
	idle := idleUp.Body.(io.ReadWriteCloser)
	defer idle.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	ended, left := c.stub.Drain(ctx)
	took := time.Since(start)
	t.Logf("Drain ended %d long-running requests in %v (%d left)", ended, took.Round(time.Microsecond), left)
	if ended != 4 || left != 0 {
		t.Fatalf("Drain ended %d, left %d; want 4 and 0", ended, left)
	}
	// A clean end: io.ReadAll sees io.EOF, not an unexpected EOF (HTTP/1.1
	// without its chunked terminator) or a stream reset (HTTP/2).
	for name, r := range map[string]io.Reader{"HTTP/2 watch": w2, "HTTP/1.1 watch": w1} {
		rest, err := io.ReadAll(r)
		if err != nil {
			t.Errorf("%s ended with %v, want a clean end of the body", name, err)
		}
		if len(rest) != 0 {
			t.Errorf("%s: unexpected %q after the drain", name, rest)
		}
	}
	for name, c := range map[string]io.Reader{"upgraded session": rwc, "idle upgraded session": idle} {
		upDone := make(chan error, 1)
		go func() { _, err := io.ReadAll(c); upDone <- err }()
		select {
		case err := <-upDone:
			t.Logf("%s after the drain: read ended (%v)", name, err)
		case <-time.After(10 * time.Second):
			t.Fatalf("%s was left open by the drain", name)
		}
	}
	if !c.stub.Draining() {
		t.Fatal("Draining() is false after Drain")
	}
	// A new watch is refused, retryably.
	resp, body := c.do(t, "GET", "/clusters/c1/watch?watch=true", "alice-token", nil)
	if st := statusOf(t, body); resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(st.Message, "shutting down") {
		t.Fatalf("watch while draining: %d Retry-After %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	// Plain requests are not the drain's business: the one in flight
	// finishes with all its data, and new ones are still served (the
	// http.Server's Shutdown is what stops new connections).
	close(api.release)
	if rest, err := io.ReadAll(pr); err != nil || !strings.Contains(string(rest), "DELETED") {
		t.Fatalf("the plain request in flight: %q, %v", rest, err)
	}
	if resp, body := c.do(t, "GET", "/clusters/c1/api/v1/pods", "alice-token", nil); resp.StatusCode != 200 {
		t.Fatalf("plain request while draining: %d %s", resp.StatusCode, body)
	}
	// The records say how each ended: the stub stopped the watches and the
	// session; the plain request completed.
	for resp, want := range map[*http.Response]string{watch2: audit.EndedStubStopping, watch1: audit.EndedStubStopping,
		up: audit.EndedStubStopping, plain: audit.EndedComplete} {
		if ev := c.finalRecord(t, resp.Header.Get(HeaderRequestID)); ev.Annotations[audit.AnnotationEnded] != want {
			t.Errorf("%s %s: ended %q, want %q", resp.Request.Method, resp.Request.URL, ev.Annotations[audit.AnnotationEnded], want)
		}
	}
}

// A stub that stops while an upgrade is being set up (the agent's 101 is
// back, the client's connection not yet switched) still ends the session:
// nothing the client does afterwards is needed for Drain to finish.
func TestDrainDuringUpgradeSetup(t *testing.T) {
	api := newFakeAPI(t)
	c := newChain(t, restFor(api.Server), api)
	type drained struct{ ended, left int }
	drainDone := make(chan drained, 1)
	modify := c.stub.rp.ModifyResponse
	c.stub.rp.ModifyResponse = func(resp *http.Response) error {
		if resp.StatusCode == http.StatusSwitchingProtocols {
			// ReverseProxy calls this between the agent's 101 and taking
			// over the client's connection: drain right there.
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				ended, left := c.stub.Drain(ctx)
				drainDone <- drained{ended, left}
			}()
			for deadline := time.Now().Add(10 * time.Second); resp.Request.Context().Err() == nil && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
		}
		return modify(resp)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.pool}}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest("GET", c.stubURL+"/clusters/c1/upgrade", nil)
	req.Header.Set("Authorization", "Bearer alice-token")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "test-proto")
	resp, err := tr.RoundTrip(req)
	if err == nil {
		// The 101 may have made it out before the close; then the
		// session ends by itself. The client sends nothing.
		defer resp.Body.Close()
		t.Logf("client got %s", resp.Status)
	} else {
		t.Logf("client: %v", err)
	}
	select {
	case d := <-drainDone:
		if d.ended != 1 || d.left != 0 {
			t.Fatalf("Drain ended %d, left %d; want 1 and 0", d.ended, d.left)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Drain did not return")
	}
	if err == nil && resp.StatusCode == http.StatusSwitchingProtocols {
		done := make(chan error, 1)
		go func() { _, err := io.ReadAll(resp.Body); done <- err }()
		select {
		case err := <-done:
			t.Logf("session read ended (%v)", err)
		case <-time.After(10 * time.Second):
			t.Fatal("the session set up during the drain was left open")
		}
	}
}

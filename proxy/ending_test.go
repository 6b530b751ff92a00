package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"

	"github.com/keyhole-dev/keyhole/audit"
)

// finalRecord waits for the ResponseComplete record of request id.
func (c *chain) finalRecord(t *testing.T, id string) auditv1.Event {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, ev := range c.audit.events(t) {
			if string(ev.AuditID) == id && ev.Stage == auditv1.StageResponseComplete {
				return ev
			}
		}
	}
	t.Fatalf("no final audit record for request %s", id)
	return auditv1.Event{}
}

// openStreams is the stub's keyhole_open_streams gauge of kind.
func (c *chain) openStreams(t *testing.T, kind string) float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	c.metrics.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	prefix := `keyhole_open_streams{kind="` + kind + `"} `
	for _, l := range strings.Split(rec.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(l, prefix); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return 0 // never set
}

// waitStreams waits until the gauge of kind is 0.
func (c *chain) waitNoStreams(t *testing.T, kind string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); c.openStreams(t, kind) != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("keyhole_open_streams{kind=%q} stays at %v", kind, c.openStreams(t, kind))
		}
	}
}

// openWatch starts a watch through rt and returns its request id, after the
// first event arrived, and the response.
func (c *chain) openWatch(t *testing.T, ctx context.Context, rt http.RoundTripper) (string, *http.Response) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", c.stubURL+"/clusters/c1/watch?watch=true", nil)
	req.Header.Set("Authorization", "Bearer alice-token")
	resp, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if l, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || !strings.Contains(l, "ADDED") {
		t.Fatalf("first line %q, %v", l, err)
	}
	return resp.Header.Get(HeaderRequestID), resp
}

// A watch whose caller hangs up still gets its final record, log line and
// metrics (ReverseProxy aborts the handler with http.ErrAbortHandler), over
// HTTP/2 and HTTP/1.1.
func TestEndedClientGone(t *testing.T) {
	api := newFakeAPI(t)
	c := newChainWith(t, restFor(api.Server), api, chainOpts{metrics: true, observe: true})
	h1 := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.pool}}
	defer h1.CloseIdleConnections()
	const n = 10
	var ids []string
	for _, rt := range []http.RoundTripper{c.client.Transport, h1} {
		for i := 0; i < n; i++ {
			ctx, cancel := context.WithCancel(context.Background())
			id, resp := c.openWatch(t, ctx, rt)
			if got := c.openStreams(t, "request"); got < 1 {
				t.Fatalf("open streams %v with a watch open", got)
			}
			cancel() // the caller hangs up
			resp.Body.Close()
			ids = append(ids, id)
		}
	}
	for _, id := range ids {
		ev := c.finalRecord(t, id)
		if ev.Annotations[audit.AnnotationEnded] != audit.EndedClientGone || ev.ResponseStatus.Code != 200 ||
			ev.Annotations[audit.AnnotationBytesOut] == "0" || ev.Annotations[audit.AnnotationAgent] != "a1" {
			t.Errorf("record of %s: code %d annotations %v", id, ev.ResponseStatus.Code, ev.Annotations)
		}
	}
	c.waitNoStreams(t, "request")
	lines := c.logs.FilterMessage("request").FilterField(zap.String("ended", audit.EndedClientGone)).Len()
	if lines != 2*n {
		t.Errorf("%d log lines say client-gone, want %d", lines, 2*n)
	}
	t.Logf("%d watches hung up by their callers (HTTP/2 and HTTP/1.1): %d final records, %d log lines, open streams back to 0", 2*n, len(ids), lines)
}

// The agent's side failing (its tunnel session gone) ends a watch and a
// session; both get their final record.
func TestEndedAgentGone(t *testing.T) {
	api := newFakeAPI(t)
	c := newChainWith(t, restFor(api.Server), api, chainOpts{metrics: true})
	watchID, watch := c.openWatch(t, context.Background(), c.client.Transport)
	defer watch.Body.Close()
	up := c.upgrade(t)
	if up.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %s", up.Status)
	}
	rwc := up.Body.(io.ReadWriteCloser)
	defer rwc.Close()
	if _, err := io.WriteString(rwc, "hello"); err != nil {
		t.Fatal(err)
	}
	c.tsrv.Close() // every agent session goes at once
	if _, err := io.ReadAll(watch.Body); err == nil {
		t.Error("the watch ended cleanly, as if complete")
	}
	_, _ = io.ReadAll(rwc)
	if ev := c.finalRecord(t, watchID); ev.Annotations[audit.AnnotationEnded] != audit.EndedAgentGone {
		t.Errorf("watch record: %v", ev.Annotations)
	}
	if session := c.finalRecord(t, up.Header.Get(HeaderRequestID)); session.Annotations[audit.AnnotationEnded] != audit.EndedAgentGone {
		t.Errorf("session record: %v", session.Annotations)
	}
	c.waitNoStreams(t, "request")
	c.waitNoStreams(t, "session")
}

// A session whose caller's connection is reset ends as client-gone; one that
// ends by half-close both ways is complete.
func TestEndedSession(t *testing.T) {
	api := newFakeAPI(t)
	c := newChainWith(t, restFor(api.Server), api, chainOpts{metrics: true})

	resp := c.upgrade(t) // TestUpgradeHalfClose's exchange
	rwc := resp.Body.(io.ReadWriteCloser)
	_, _ = io.WriteString(rwc, "hello")
	_ = rwc.(interface{ CloseWrite() error }).CloseWrite()
	if got, _ := io.ReadAll(rwc); string(got) != "HELLObye" {
		t.Fatalf("got %q", got)
	}
	rwc.Close()
	completeID := resp.Header.Get(HeaderRequestID)

	tcp, err := net.Dial("tcp", strings.TrimPrefix(c.stubURL, "https://"))
	if err != nil {
		t.Fatal(err)
	}
	conn := tls.Client(tcp, &tls.Config{RootCAs: c.pool, ServerName: "127.0.0.1", NextProtos: []string{"http/1.1"}})
	_, _ = io.WriteString(conn, "GET /clusters/c1/upgrade HTTP/1.1\r\nHost: stub\r\nAuthorization: Bearer alice-token\r\nConnection: Upgrade\r\nUpgrade: test-proto\r\n\r\n")
	up, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || up.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", up, err)
	}
	_, _ = io.WriteString(conn, "hello")
	time.Sleep(100 * time.Millisecond)
	_ = tcp.(*net.TCPConn).SetLinger(0)
	tcp.Close() // a reset, not a close
	resetID := up.Header.Get(HeaderRequestID)

	if ev := c.finalRecord(t, completeID); ev.Annotations[audit.AnnotationEnded] != audit.EndedComplete {
		t.Errorf("half-closed session: %v", ev.Annotations)
	}
	if ev := c.finalRecord(t, resetID); ev.Annotations[audit.AnnotationEnded] != audit.EndedClientGone {
		t.Errorf("reset session: %v", ev.Annotations)
	}
	c.waitNoStreams(t, "session")
	c.waitNoStreams(t, "request")
}

package proxy

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// A request that fits the stub's limit but, with what the hops add, not the
// API server's (its HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE) is answered 431
// with a Status by the agent, not 503, and never reaches the API server.
func TestAPIServerHeaderLimit(t *testing.T) {
	var hits atomic.Int32
	api := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	api.EnableHTTP2 = true
	api.Config.MaxHeaderBytes = 16 << 10
	api.StartTLS()
	t.Cleanup(api.Close)
	c := newChain(t, restFor(api), nil)
	// The agent's connection to the API server is in use (as it is after
	// the agent's start): its client knows the server's limit.
	if resp, _ := c.do(t, "GET", "/clusters/c1/api", "alice-token", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("a small request: %d", resp.StatusCode)
	}
	hits.Store(0)
	resp, body := c.do(t, "GET", "/clusters/c1/api", "alice-token", http.Header{"X-Big": {strings.Repeat("a", 20<<10)}})
	st := statusOf(t, body)
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || st.Code != http.StatusRequestHeaderFieldsTooLarge ||
		!strings.Contains(st.Message, "larger than the API server accepts") {
		t.Fatalf("got %d %+v", resp.StatusCode, st)
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the API server received %d requests", n)
	}
	if resp, _ := c.do(t, "GET", "/clusters/c1/api", "alice-token", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("a small request afterwards: %d", resp.StatusCode)
	}
}

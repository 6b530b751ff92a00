package proxy

import (
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestConnectTarget(t *testing.T) {
	for _, tc := range []struct {
		method, path string
		sub          string // "" when no review is needed
	}{
		{"GET", "/api/v1/namespaces/default/pods/p/exec", "exec"},
		{"GET", "/api/v1/namespaces/default/pods/p/attach", "attach"},
		{"GET", "/api/v1/namespaces/default/pods/p/portforward", "portforward"},
		{"HEAD", "/api/v1/namespaces/default/pods/p/exec", "exec"},
		{"GET", "/api/v1/namespaces/default/pods/p/./exec", "exec"},
		{"GET", "/api/v1/namespaces/default/pods/p//exec", "exec"},
		{"GET", "/api/v1/namespaces/default/pods/x/../p/exec", "exec"},
		{"POST", "/api/v1/namespaces/default/pods/p/exec", ""}, // SPDY: the API server asks create itself
		{"GET", "/api/v1/namespaces/default/pods/p/log", ""},
		{"GET", "/api/v1/namespaces/default/pods/p/proxy/exec", ""},
		{"GET", "/api/v1/namespaces/exec/pods", ""},
		{"GET", "/apis/example.com/v1/namespaces/default/pods/p/exec", ""},
		{"GET", "/api/v1/namespaces/default/services/p/exec", ""},
	} {
		r, _ := http.NewRequest(tc.method, "https://x"+tc.path, nil)
		info := connectTarget(r)
		got := ""
		if info != nil {
			got = info.Subresource
			if info.Name != "p" || info.Namespace != "default" {
				t.Errorf("%s %s: name %q namespace %q", tc.method, tc.path, info.Name, info.Namespace)
			}
		}
		if got != tc.sub {
			t.Errorf("%s %s: review for %q, want %q", tc.method, tc.path, got, tc.sub)
		}
	}
}

// A pod session over a WebSocket (a GET, which kube-apiserver before 1.35
// authorizes with get) needs create on the subresource, as over SPDY (a
// POST), for the identity the request runs as.
func TestPodSessionsNeedCreate(t *testing.T) {
	api := newFakeAPI(t)
	c := newChain(t, restFor(api.Server), api)
	// Upgrades ride HTTP/1.1, as kubectl sends them.
	h1 := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.pool}}}
	defer h1.CloseIdleConnections()
	do := func(method, path string, h http.Header) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(method, c.stubURL+path, nil)
		req.Header = h.Clone()
		req.Header.Set("Authorization", "Bearer alice-token")
		resp, err := h1.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	ws := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Sec-Websocket-Protocol": {"v5.channel.k8s.io"}}
	asBob := http.Header{"Impersonate-User": {"bob"}}
	merge := func(hs ...http.Header) http.Header {
		out := http.Header{}
		for _, h := range hs {
			for k, v := range h {
				out[k] = v
			}
		}
		return out
	}
	for _, sub := range []string{"exec", "attach", "portforward"} {
		path := "/api/v1/namespaces/default/pods/p/" + sub
		t.Run(sub, func(t *testing.T) {
			// alice may create the subresource: forwarded (the fake API
			// server answers 200, not 101, which is enough here).
			before := len(api.reviews())
			resp, body := do("GET", "/clusters/c1"+path+"?stdout=true", ws)
			if r, _ := api.lastRequest(); resp.StatusCode != 200 || r.URL.Path != path {
				t.Fatalf("alice: %d %s; last request at the API server %s", resp.StatusCode, body, r.URL.Path)
			}
			revs := api.reviews()[before:]
			if len(revs) != 1 || revs[0].User != "alice" || revs[0].ResourceAttributes.Subresource != sub || revs[0].ResourceAttributes.Name != "p" ||
				revs[0].ResourceAttributes.Namespace != "default" || strings.Join(revs[0].Groups, ",") != "dev,ops,system:authenticated" {
				t.Fatalf("reviews %+v", revs)
			}
			// alice --as bob runs as bob, who may not: refused before the
			// API server, in its words.
			_, hits := api.lastRequest()
			resp, body = do("GET", "/clusters/c1"+path+"?stdout=true", merge(ws, asBob))
			want := `pods "p" is forbidden: User "bob" cannot create resource "pods/` + sub + `" in API group "" in the namespace "default"`
			if st := statusOf(t, body); resp.StatusCode != 403 || st.Message != want || st.Reason != "Forbidden" || st.Details == nil || st.Details.Kind != "pods" {
				t.Fatalf("bob: %d %+v, want 403 %q", resp.StatusCode, st, want)
			}
			if r, after := api.lastRequest(); r.URL.Path == path && after > hits {
				t.Fatal("the refused session reached the API server")
			}
			// The same session as a POST (kubectl over SPDY) is the API
			// server's to authorize, with create: no create review at the
			// agent (and --as bob was decided, and kept, just before).
			before = len(api.reviews())
			resp, body = do("POST", "/clusters/c1"+path+"?stdout=true", merge(asBob,
				http.Header{"Connection": {"Upgrade"}, "Upgrade": {"SPDY/3.1"}}))
			if r, _ := api.lastRequest(); resp.StatusCode != 200 || r.URL.Path != path || len(api.reviews()) != before {
				t.Fatalf("POST: %d %s; reviews %+v", resp.StatusCode, body, api.reviews()[before:])
			}
		})
	}
}

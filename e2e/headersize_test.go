package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

// TestRequestHeaderSize sends the input, one header of 1 MiB to
// /clusters/acc/api/…, to the real stub binary with Go's client over
// HTTP/1.1, over HTTP/2 on the connection of a watch, and over HTTP/2 on a
// new connection (whose client has not seen the stub's SETTINGS yet): each
// gets 431 with a Status, decided at the stub (the agent and the API
// server see nothing of it), while the watch goes on delivering events, and
// the same path with a normal header is served. (curl 7.88 cannot send
// such a header over TLS: it stalls above about 128 kB over HTTP/1.1 and
// gives up at 100 kB over HTTP/2.)
func TestRequestHeaderSize(t *testing.T) {
	c := kubetest.Start(t)
	g := startGateway(t, c)
	secretFile, tokenFile := g.install("acc")
	agent := g.startAgent(agentOpts{cluster: "acc", id: "a1", secretFile: secretFile, apiURL: c.URL, tokenFile: tokenFile, c: c})
	alice, aliceTok := g.user("alice", "cluster-admin")
	g.waitAgents(aliceTok, "acc", "a1")
	const probe = "/clusters/acc/api/v1/namespaces/header-size-probe"
	big := strings.Repeat("a", 1<<20)

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(g.caPEM)
	transport := func(h2 bool) *http.Transport {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: h2}
		if !h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		t.Cleanup(tr.CloseIdleConnections)
		return tr
	}
	isRefusal := func(t *testing.T, code int, body string) {
		t.Helper()
		var st struct {
			Kind, Reason, Message string
			Code                  int
		}
		if err := json.Unmarshal([]byte(body), &st); err != nil || code != http.StatusRequestHeaderFieldsTooLarge || st.Kind != "Status" ||
			st.Code != http.StatusRequestHeaderFieldsTooLarge || st.Reason != "RequestHeaderFieldsTooLarge" {
			t.Fatalf("%d %.300q (%v), want 431 and a Status", code, body, err)
		}
	}
	refusals := func() int { return strings.Count(g.stub.logText(), `"request refused: header too large"`) }

	// A watch over HTTP/2, on the transport the big requests below use:
	// one connection for all of them.
	h2 := transport(true)
	wreq, _ := http.NewRequest("GET", g.url+"/clusters/acc/api/v1/namespaces/default/configmaps?watch=true", nil)
	wreq.Header.Set("Authorization", "Bearer "+aliceTok)
	watch, err := h2.RoundTrip(wreq)
	if err != nil || watch.StatusCode != http.StatusOK || watch.ProtoMajor != 2 {
		t.Fatalf("watch: %v %v", watch, err)
	}
	defer watch.Body.Close()
	events := readLines(watch.Body)
	expectEvent := func(name string) {
		t.Helper()
		c.Apply(t, fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: %s, namespace: default}\n", name))
		for {
			l := nextLine(t, events, 30*time.Second, "watch event for "+name)
			if strings.Contains(l.text, `"name":"`+name+`"`) {
				return
			}
		}
	}
	expectEvent("before")

	before := refusals()
	for _, proto := range []struct {
		name string
		tr   *http.Transport
	}{{"HTTP/1.1", transport(false)}, {"HTTP/2", h2}, {"HTTP/2 on a new connection", transport(true)}} {
		t.Run("Go "+proto.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", g.url+probe, nil)
			req.Header.Set("Authorization", "Bearer "+aliceTok)
			req.Header.Set("X-Big", big)
			start := time.Now()
			resp, err := proto.tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(resp)
			if got := fmt.Sprintf("HTTP/%d", resp.ProtoMajor); !strings.HasPrefix(proto.name, got) {
				t.Fatalf("answered over %s", resp.Proto)
			}
			isRefusal(t, resp.StatusCode, body)
			t.Logf("%s: %s in %v: %s", proto.name, resp.Status, time.Since(start), body)
		})
	}
	if n := refusals() - before; n != 3 {
		t.Errorf("the stub logged %d refusals, want 3", n)
	}

	// The watch on the HTTP/2 connection the big requests used goes on.
	expectEvent("after")
	// Nothing of the refused requests reached the agent, which logs every
	// request it forwards at debug; the same path with a normal header does.
	if strings.Contains(agent.logText(), "header-size-probe") {
		t.Fatal("a refused request reached the agent")
	}
	if resp, body := g.get(t, probe, aliceTok); resp.StatusCode != http.StatusNotFound || !strings.Contains(body, `namespaces \"header-size-probe\" not found`) {
		t.Fatalf("the probe path with a normal header: %s %s", resp.Status, body)
	}
	waitFor(t, 10*time.Second, "the agent to log the probe path", func() bool { return strings.Contains(agent.logText(), "header-size-probe") }, agent)
	if out, err := g.kubectl(alice, nil, nil, "get", "ns", "default", "-o", "name"); err != nil || out != "namespace/default\n" {
		t.Fatalf("kubectl afterwards: %q %v", out, err)
	}
	// The stub's audit log: every refusal is a record with its 431 (and no
	// user: nothing was authenticated), and the served request one with
	// the cluster's 404.
	data, _ := os.ReadFile(filepath.Join(g.dir, "audit.log"))
	records := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		if l := sc.Text(); strings.Contains(l, "header-size-probe") && strings.Contains(l, `"stage":"ResponseComplete"`) {
			switch {
			case strings.Contains(l, `"code":431`):
				records["431"]++
			case strings.Contains(l, `"code":404`):
				records["404"]++
			default:
				records["other"]++
			}
		}
	}
	if want := map[string]int{"431": refusals(), "404": 1}; !maps.Equal(records, want) {
		t.Errorf("audit records of the probe path by code: %v, want %v (each refusal, and the served one)", records, want)
	}
}

package e2e

import (
	"crypto/x509"
	"encoding/json"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/keyhole-dev/keyhole/internal/browsertest"
)

// TestBrowserSmoke shows that the browser of the browser tests works
// against the real stub: Chromium from hack/browser.sh starts, reaches the
// stub by a name mapped to 127.0.0.1 (--host-resolver-rules), trusts its
// self-signed certificate by public key (a secure context, as __Host-
// cookies need) and gets the stub's own answer: a 401 Status for a request
// without credentials.
func TestBrowserSmoke(t *testing.T) {
	g := startGateway(t, nil) // no cluster needed: the stub answers by itself
	addr := strings.TrimPrefix(g.url, "https://")
	port := addr[strings.LastIndex(addr, ":")+1:]
	b := browsertest.Start(t, browsertest.Options{
		HostResolverRules: "MAP keyhole.example.test 127.0.0.1, MAP evil.example.test 127.0.0.1, MAP attacker.test 127.0.0.1",
		Trust:             []*x509.Certificate{browsertest.LeafCertificate(t, addr)},
	})
	ua, err := chromedp.Run(b.Ctx, chromedp.Evaluate[string]("navigator.userAgent"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("navigator.userAgent: %s", ua)

	url := "https://keyhole.example.test:" + port + "/keyhole/v1/clusters"
	resp, err := chromedp.Run(b.Ctx, chromedp.NavigateResponse(url))
	if err != nil {
		t.Fatalf("navigate to %s: %v\n--- stub log:\n%s", url, err, g.stub.tail(20))
	}
	if resp.Status != 401 {
		t.Fatalf("%s: HTTP %d, want 401", url, resp.Status)
	}
	text, err := chromedp.Run(b.Ctx, chromedp.Evaluate[string]("document.body.innerText"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Kind, Status, Reason string
		Code                 int
	}
	if err := json.Unmarshal([]byte(text), &st); err != nil || st.Kind != "Status" || st.Code != 401 || st.Reason != "Unauthorized" {
		t.Fatalf("the page shows %q (%v); want the stub's 401 Status", text, err)
	}
	secure, err := chromedp.Run(b.Ctx, chromedp.Evaluate[bool]("window.isSecureContext"))
	if err != nil || !secure {
		t.Fatalf("the stub's page is no secure context (%v, %v): __Host- cookies would be refused", secure, err)
	}
	if loc, _ := chromedp.Run(b.Ctx, chromedp.Location()); loc != url {
		t.Fatalf("location %q, want %q", loc, url)
	}
}

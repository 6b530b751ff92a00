package stub

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-dev/keyhole/config"
	"github.com/keyhole-dev/keyhole/internal/testbed"
	"github.com/keyhole-dev/keyhole/proxy"
)

const testAppsDomain = "apps.keyhole-apps.test"

// TestAppsHosts: with browser.apps, the self-signed certificate covers the
// app hosts, and a request to an app host never reaches the stub's own
// routes (its /healthz, its console, its API): it is the app's, and
// without the app's cookie it is refused with a page that links to the
// console. The console's host still serves the stub.
func TestAppsHosts(t *testing.T) {
	rs := startStub(t, "browser: {apps: {domain: "+testAppsDomain+"}}\n", "c1")
	defer func() { rs.stop(); <-rs.runErr }()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(rs.srv.bundle.CAPEM)
	addr := rs.st.Addr.String()
	_, port, _ := net.SplitHostPort(addr)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr) // every name is this stub
		}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	get := func(u string, hdr ...string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", u, nil)
		for i := 0; i < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	label := proxy.AppTarget{Cluster: "c1", Namespace: "apps", Service: "web", Scheme: "http", Port: "http"}.Label()
	app := "https://" + label + "." + testAppsDomain + ":" + port
	for _, p := range []string{"/", "/healthz", "/console", "/keyhole/v1/clusters", "/clusters/c1/api/v1/namespaces", "/keyhole/login"} {
		resp, b := get(app+p, "Sec-Fetch-Mode", "navigate")
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(b, "open it from the console") || !strings.Contains(b, `href="https://127.0.0.1:1/console"`) {
			t.Errorf("app host %s: %s %s, want 401 and a link to the console", p, resp.Status, b)
		}
		if resp.TLS == nil || resp.TLS.PeerCertificates[0].VerifyHostname(label+"."+testAppsDomain) != nil {
			t.Errorf("app host: the certificate does not cover it")
		}
	}
	// The apps domain itself (its name sent in Host; the certificate
	// covers only the names under it).
	req, _ := http.NewRequest("GET", app+"/healthz", nil)
	req.Host = testAppsDomain + ":" + port
	if resp, err := client.Do(req); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("the apps domain itself: %v %v, want 404", resp, err)
	} else {
		resp.Body.Close()
	}
	if resp, b := get("https://127.0.0.1:" + port + "/healthz"); resp.StatusCode != 200 || b != "ok\n" {
		t.Errorf("the stub's own host: %s %q", resp.Status, b)
	}
	if resp, _ := get("https://127.0.0.1:" + port + proxy.AppsPath); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("%s without a credential: %s, want 401", proxy.AppsPath, resp.Status)
	}
	req, _ = http.NewRequest("GET", "https://127.0.0.1:"+port+proxy.AppsPath, nil)
	req.Header.Set("Authorization", "Bearer "+rs.token)
	if resp, err := client.Do(req); err != nil || resp.StatusCode != 200 {
		t.Errorf("%s with a token: %v %v", proxy.AppsPath, resp, err)
	} else {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.TrimSpace(string(b)) != `{"enabled":true}` {
			t.Errorf("%s: %s", proxy.AppsPath, b)
		}
	}
}

// TestAppsCertificates: app hosts get browser.apps.certFile's certificate
// by SNI (the stub's own for its other names); a certificate that does not
// cover *.<domain> is refused at start-up, naming the key and the fix.
func TestAppsCertificates(t *testing.T) {
	ca, err := testbed.NewCA("apps-test")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pair := func(name string, dns ...string) (string, string) {
		crt, key, err := ca.Issue(name, nil, true, []net.IP{net.ParseIP("127.0.0.1")}, dns)
		if err != nil {
			t.Fatal(err)
		}
		c, k := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
		if err := os.WriteFile(c, crt, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(k, key, 0o600); err != nil {
			t.Fatal(err)
		}
		return c, k
	}
	mainCrt, mainKey := pair("main", "keyhole.example.test")
	appsCrt, appsKey := pair("apps", "*."+testAppsDomain)
	wrongCrt, wrongKey := pair("wrong", "*.elsewhere.test")

	cfgWith := func(extra string) config.Stub {
		cfg, err := config.ParseStub("c.yaml", []byte("apiVersion: keyhole.dev/v1alpha1\nkind: StubConfig\nlisten: 127.0.0.1:0\npublicURL: https://keyhole.example.test\nstateDir: "+
			filepath.Join(dir, "state")+"\n"+extra), config.Env{})
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	for _, tc := range []struct{ name, extra, want string }{
		{"operator cert without the wildcard", "tls: {certFile: " + mainCrt + ", keyFile: " + mainKey + "}\nbrowser: {apps: {domain: " + testAppsDomain + "}}\n",
			`the certificate in tls.certFile "` + mainCrt + `" does not cover "*.` + testAppsDomain + `"`},
		{"apps cert for another name", "tls: {certFile: " + mainCrt + ", keyFile: " + mainKey + "}\nbrowser: {apps: {domain: " + testAppsDomain + ", certFile: " + wrongCrt + ", keyFile: " + wrongKey + "}}\n",
			`browser.apps.certFile "` + wrongCrt + `" does not cover "*.` + testAppsDomain + `"`},
	} {
		if _, err := New(cfgWith(tc.extra), Options{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}

	cfg := cfgWith("tls: {certFile: " + mainCrt + ", keyFile: " + mainKey + "}\nbrowser: {apps: {domain: " + testAppsDomain + ", certFile: " + appsCrt + ", keyFile: " + appsKey + "}}\n")
	s, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	tc, stop, err := serverTLS(cfg, s.bundle, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	for sni, want := range map[string]string{"x." + testAppsDomain: "*." + testAppsDomain, "keyhole.example.test": "keyhole.example.test", "": "keyhole.example.test"} {
		c, err := tc.GetCertificate(&tls.ClientHelloInfo{ServerName: sni})
		if err != nil || c.Leaf == nil || c.Leaf.DNSNames[0] != want {
			t.Errorf("SNI %q: %v %v, want the certificate for %s", sni, c, err, want)
		}
	}
}

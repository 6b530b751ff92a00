package browsertest

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
	"go.uber.org/goleak"

	"github.com/keyhole-dev/keyhole/internal/testbed"
)

// The browser reaches a mapped name, trusts the certificate it was given
// (a secure context) and no other, and leaves no goroutine or process.
func TestBrowser(t *testing.T) {
	ca, err := testbed.NewCA("browsertest CA")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue("keyhole.example.test", nil, true, nil, []string{"keyhole.example.test"})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, "<title>ok</title><p id=host>%s</p>", r.Host)
	})
	trusted := httptest.NewUnstartedServer(handler)
	trusted.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	trusted.StartTLS()
	defer trusted.Close()
	other := httptest.NewUnstartedServer(handler)      // Go's test certificate: not trusted
	other.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes
	other.StartTLS()
	defer other.Close()
	_, trustedPort, _ := net.SplitHostPort(trusted.Listener.Addr().String())
	_, otherPort, _ := net.SplitHostPort(other.Listener.Addr().String())

	goroutines := goleak.IgnoreCurrent()
	var ua string
	t.Run("browser", func(t *testing.T) {
		b := Start(t, Options{
			HostResolverRules: "MAP keyhole.example.test 127.0.0.1, MAP attacker.test 127.0.0.1",
			Trust:             []*x509.Certificate{LeafCertificate(t, trusted.Listener.Addr().String())},
		})
		if err := chromedp.Do(b.Ctx, chromedp.Navigate("https://keyhole.example.test:"+trustedPort+"/")); err != nil {
			t.Fatal(err)
		}
		host, err := chromedp.Run(b.Ctx, chromedp.Text(chromedp.ID("host")))
		if err != nil || host != "keyhole.example.test:"+trustedPort {
			t.Fatalf("page: %q, %v", host, err)
		}
		if secure, err := chromedp.Run(b.Ctx, chromedp.Evaluate[bool]("window.isSecureContext")); err != nil || !secure {
			t.Fatalf("isSecureContext: %v, %v", secure, err)
		}
		if ua, err = chromedp.Run(b.Ctx, chromedp.Evaluate[string]("navigator.userAgent")); err != nil {
			t.Fatal(err)
		}
		// Another certificate, even on a mapped name, is refused.
		tab := b.NewTab(t)
		err = chromedp.Do(tab, chromedp.Navigate("https://attacker.test:"+otherPort+"/"))
		var le *chromedp.LoadError
		if !errors.As(err, &le) || !strings.Contains(le.ErrorText, "CERT") {
			t.Fatalf("an untrusted certificate: %v", err)
		}
	})
	t.Logf("navigator.userAgent: %s", ua)
	if !strings.Contains(ua, "Chrome/") {
		t.Fatalf("userAgent %q", ua)
	}
	goleak.VerifyNone(t, goroutines)
	if pids := chromiumProcesses(t); len(pids) > 0 {
		t.Fatalf("Chromium processes left behind: %v", pids)
	}
}

// chromiumProcesses lists processes running the test binary directory's
// Chromium.
func chromiumProcesses(t *testing.T) []string {
	root := testbed.TestBin(t, "browsertest", "chromium") + "/chromium-root"
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		cmd, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && strings.HasPrefix(string(cmd), root) {
			out = append(out, e.Name())
		}
	}
	return out
}

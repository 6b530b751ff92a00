// Package browsertest runs a real Chromium for tests: Debian's Chromium
// that hack/browser.sh puts in $KEYHOLE_TESTBIN/chromium, driven through
// the DevTools protocol with chromedp.
//
// The browser is headless, starts with a fresh profile and HOME, reaches
// the test's servers by names mapped to 127.0.0.1 (Options.HostResolverRules,
// so that an attacker page can be cross-site and not merely another port)
// and trusts exactly the test's TLS certificates, by the SHA-256 of their
// public keys (--ignore-certificate-errors-spki-list): nothing is
// installed into a certificate store, and a secure context (the
// precondition of __Host- cookies) holds as with a real CA.
//
// Only tests import this package (internal/deptest keeps chromedp out of
// the binaries).
package browsertest

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/keyhole-dev/keyhole/internal/testbed"
)

// StartTimeout bounds the browser's start (process and first tab).
var StartTimeout = 60 * time.Second

// Options are a test's choices for its browser.
type Options struct {
	// HostResolverRules is Chromium's --host-resolver-rules, e.g.
	// "MAP keyhole.example.test 127.0.0.1, MAP attacker.test 127.0.0.1"
	// (MAP keeps the port). Empty: the system's resolver.
	HostResolverRules string
	// Trust are the TLS leaf certificates of the test's servers; the
	// browser accepts exactly these (by public key) on any name.
	Trust []*x509.Certificate
	// Flags are more command-line switches, name (without "--") to value
	// (a string, or true for a switch without value).
	Flags map[string]any
}

// Browser is a running Chromium.
type Browser struct {
	// Ctx is the context of the browser's first tab: pass it to
	// chromedp.Run and chromedp.Do. It ends when the test ends.
	Ctx context.Context
	// Log is the file with the browser's own output (stdout and stderr).
	Log string
}

// Start starts Chromium for t, opens its first tab and returns it. The
// browser is closed and waited for (no process, goroutine or profile
// directory stays) by t.Cleanup; a failing test gets the tail of the
// browser's output in its log.
func Start(t testing.TB, o Options) *Browser {
	t.Helper()
	bin := testbed.TestBin(t, "browsertest", "chromium")
	home := t.TempDir()
	logPath := filepath.Join(t.TempDir(), "chromium.log")
	out, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}

	spki := make([]string, 0, len(o.Trust))
	for _, c := range o.Trust {
		spki = append(spki, SPKIHash(c))
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(filepath.Join(bin, "chromium")),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Env("HOME=" + home),
		chromedp.CombinedOutput(out),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-breakpad", true),
		chromedp.Flag("password-store", "basic"),
		chromedp.Flag("use-mock-keychain", true),
	}
	// No UserDataDir option: chromedp then makes a fresh profile directory
	// of its own, and when the browser exits it kills whatever Chromium
	// process still uses it and removes it.
	if o.HostResolverRules != "" {
		opts = append(opts, chromedp.Flag("host-resolver-rules", o.HostResolverRules))
	}
	if len(spki) > 0 {
		opts = append(opts, chromedp.Flag("ignore-certificate-errors-spki-list", strings.Join(spki, ",")))
	}
	for name, v := range o.Flags {
		opts = append(opts, chromedp.Flag(name, v))
	}

	// chromedp logs from its own goroutines; nothing may reach t after the
	// test is over.
	var mu sync.Mutex
	over := false
	logf := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if !over {
			t.Logf("chromedp: "+format, args...)
		}
	}

	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(allocCtx, chromedp.WithErrorf(logf))
	t.Cleanup(func() {
		// Close the browser gracefully (bounded), then for sure, and wait
		// for the process and chromedp's goroutines.
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_ = chromedp.Cancel(cctx)
		cancel()
		cancelTab()
		cancelAlloc() // waits for the browser to exit and its profile to go
		_ = out.Close()
		mu.Lock()
		over = true
		mu.Unlock()
		if t.Failed() {
			t.Logf("browsertest: last lines of the browser's output (%s):\n%s", logPath, testbed.Tail(logPath, 40))
		}
	})

	// Start the browser and its first tab now, with a deadline on this
	// call only (a deadline on the context would end the browser).
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- chromedp.Do(ctx) }()
	select {
	case err = <-done:
	case <-time.After(StartTimeout):
		err = fmt.Errorf("no first tab after %s", StartTimeout)
		cancelTab() // ends the start; Do returns
		<-done
	}
	if err != nil {
		t.Fatalf("browsertest: start %s: %v\n%s", filepath.Join(bin, "chromium"), err, testbed.Tail(logPath, 40))
	}
	t.Logf("browsertest: Chromium started in %s", time.Since(start).Round(time.Millisecond))
	return &Browser{Ctx: ctx, Log: logPath}
}

// NewTab opens another tab of the browser (same profile, same cookies) and
// returns its context; it is closed when the test ends.
func (b *Browser) NewTab(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := chromedp.NewContext(b.Ctx)
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("browsertest: open a tab: %v", err)
	}
	return ctx
}

// SPKIHash is what --ignore-certificate-errors-spki-list takes for c: the
// base64 of the SHA-256 of its SubjectPublicKeyInfo.
func SPKIHash(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// LeafCertificate connects to the TLS server at addr (host:port) without
// verifying it and returns the certificate it presents: for the Trust of a
// server whose certificate the test does not hold (a stub that made its
// own).
func LeafCertificate(t testing.TB, addr string) *x509.Certificate {
	t.Helper()
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second},
		Config: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // reading the certificate is the point
	conn, err := d.DialContext(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatalf("browsertest: TLS certificate of %s: %v", addr, err)
	}
	defer conn.Close()
	certs := conn.(*tls.Conn).ConnectionState().PeerCertificates
	if len(certs) == 0 {
		t.Fatalf("browsertest: %s presented no certificate", addr)
	}
	return certs[0]
}

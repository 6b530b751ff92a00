package certs

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// TestACMEStopLeavesNothing: StartACME with a CA that cannot be reached
// keeps trying in the background; Stop ends all of it (certmagic's
// maintenance, its obtain job, the start-up goroutine).
func TestACMEStopLeavesNothing(t *testing.T) {
	before := goleak.IgnoreCurrent()
	ln, err := net.Listen("tcp", "127.0.0.1:0") // the "main listener"
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dead, err := net.Listen("tcp", "127.0.0.1:0") // a directory URL nobody answers
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "https://" + dead.Addr().String() + "/dir"
	dead.Close()
	core, logs := observer.New(zap.DebugLevel)
	dir := t.TempDir()
	store, err := NewGuardedStorage(GuardedStorageConfig{Storage: &certmagic.FileStorage{Path: dir}, Where: dir})
	if err != nil {
		t.Fatal(err)
	}
	a, err := StartACME(ACMEConfig{Domains: []string{"keyhole.example.com"}, DirectoryURL: deadURL,
		Challenge: ChallengeTLSALPN, ChallengeAddr: ln.Addr().String(), Storage: store, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for logs.FilterMessageSnippet("will retry").Len() == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if logs.FilterMessageSnippet("will retry").Len() == 0 {
		var msgs []string
		for _, e := range logs.All() {
			msgs = append(msgs, e.Message)
		}
		t.Fatalf("no failed attempt logged against an unreachable CA: %s", strings.Join(msgs, " | "))
	}
	start := time.Now()
	a.Stop()
	// certmagic's file locks are kept fresh by goroutines that notice the
	// released lock file within 5 s (lockFreshnessInterval); give them 15.
	for {
		err := goleak.Find(before)
		if err == nil {
			break
		}
		if time.Since(start) > 15*time.Second {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("Stop returned; no goroutine left %v after it", time.Since(start).Round(time.Millisecond))
}

// TestStartACMEConfigErrors: configuration errors name the key and the fix.
func TestStartACMEConfigErrors(t *testing.T) {
	dir := t.TempDir()
	st := &certmagic.FileStorage{Path: dir}
	for _, tc := range []struct {
		c    ACMEConfig
		want string
	}{
		{ACMEConfig{Challenge: ChallengeTLSALPN, ChallengeAddr: ":443", CAFile: dir + "/missing.pem", Storage: st}, "tls.acme.caFile"},
		{ACMEConfig{Challenge: "dns-01", ChallengeAddr: ":443", Storage: st}, "tls.acme.challenge"},
		{ACMEConfig{Challenge: ChallengeHTTP, ChallengeAddr: "eighty", Storage: st}, `"eighty"`},
		{ACMEConfig{Challenge: ChallengeTLSALPN, ChallengeAddr: ":443"}, "ACMEConfig.Storage"},
	} {
		if _, err := StartACME(tc.c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.c, err, tc.want)
		}
	}
}

package e2e

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyhole-dev/keyhole/certs"
)

// TestOperatorCertificateRenewal: a stub given an operator's certificate
// serves a renewed one, written over the files, without a restart.
func TestOperatorCertificateRenewal(t *testing.T) {
	stubBin, _ := binaries(t)
	dir := t.TempDir()
	pair := func(name, host string) (crt, key string) {
		d := filepath.Join(dir, name)
		if _, err := certs.EnsureSelfSigned(d, []string{host, "127.0.0.1"}); err != nil {
			t.Fatal(err)
		}
		return filepath.Join(d, "server.crt"), filepath.Join(d, "server.key")
	}
	oldCrt, oldKey := pair("old", "old.example")
	newCrt, newKey := pair("new", "new.example")
	crt, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	cp := func(from, to string) {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := statefileWrite(to, string(b)); err != nil {
			t.Fatal(err)
		}
	}
	cp(oldCrt, crt)
	cp(oldKey, key)
	port := freePort(t)
	cfg := filepath.Join(dir, "stub.yaml")
	writeFile(t, cfg, fmt.Sprintf("apiVersion: keyhole.dev/v1alpha1\nkind: StubConfig\nlisten: 127.0.0.1:%d\nstateDir: %s\ntls: {certFile: %s, keyFile: %s}\n",
		port, filepath.Join(dir, "state"), crt, key))
	stub := startProcess(t, "stub", filepath.Join(dir, "stub.log"), nil, stubBin, "serve", "--config", cfg)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	servedName := func() string {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true}) // only reading which certificate is served
		if err != nil {
			return ""
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].DNSNames[0]
	}
	waitFor(t, 30*time.Second, "the stub to serve the first certificate", func() bool { return servedName() == "old.example" }, stub)
	cp(newCrt, crt)
	cp(newKey, key)
	waitFor(t, 15*time.Second, "the renewed certificate to be served", func() bool { return servedName() == "new.example" }, stub)
}

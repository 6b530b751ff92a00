package certs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var bundleFiles = []struct {
	name string
	mode os.FileMode
}{
	{"ca.crt", 0o644},
	{"ca.key", 0o600},
	{"server.crt", 0o644},
	{"server.key", 0o600},
}

// verifyHost checks that b's serving certificate chains to b.CAPEM (and to
// nothing else) for host, as a TLS client pinning that CA would.
func verifyHost(t *testing.T, b *Bundle, host string) error {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b.CAPEM) {
		t.Fatalf("CAPEM holds no certificate: %q", b.CAPEM)
	}
	leaf, err := x509.ParseCertificate(b.Cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	return err
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestEnsureSelfSignedCreates(t *testing.T) {
	cases := []struct {
		name  string
		hosts []string
	}{
		{"one DNS name", []string{"localhost"}},
		{"IPv4", []string{"127.0.0.1"}},
		{"IPv6 loopback", []string{"::1"}},
		{"stub defaults", []string{"localhost", "127.0.0.1", "::1"}},
		{"mixed", []string{"keyhole.example.com", "kh.internal", "10.1.2.3", "::1", "2001:db8::7"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			b, err := EnsureSelfSigned(dir, tc.hosts)
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range bundleFiles {
				fi, err := os.Stat(filepath.Join(dir, f.name))
				if err != nil {
					t.Fatalf("%s: %v", f.name, err)
				}
				if got := fi.Mode(); got != f.mode {
					t.Errorf("%s: mode %v, want %v", f.name, got, f.mode)
				}
			}
			if !bytes.Equal(b.CAPEM, readFile(t, filepath.Join(dir, "ca.crt"))) {
				t.Error("CAPEM differs from ca.crt")
			}
			blk, _ := pem.Decode(readFile(t, filepath.Join(dir, "server.crt")))
			if blk == nil || !bytes.Equal(blk.Bytes, b.Cert.Certificate[0]) {
				t.Error("the bundle's certificate differs from server.crt")
			}
			if _, err := tls.LoadX509KeyPair(filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")); err != nil {
				t.Errorf("server.crt/server.key do not pair: %v", err)
			}
			caBlk, _ := pem.Decode(b.CAPEM)
			if caBlk == nil {
				t.Fatal("CAPEM is not PEM")
			}
			ca, err := x509.ParseCertificate(caBlk.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if !ca.IsCA {
				t.Error("CA certificate is not a CA")
			}
			leaf, err := x509.ParseCertificate(b.Cert.Certificate[0])
			if err != nil {
				t.Fatal(err)
			}
			if leaf.IsCA {
				t.Error("serving certificate is a CA")
			}
			for _, h := range tc.hosts {
				if err := verifyHost(t, b, h); err != nil {
					t.Errorf("host %q does not verify: %v", h, err)
				}
			}
			for _, h := range []string{"other.example.com", "192.0.2.1", "::2"} {
				if err := verifyHost(t, b, h); err == nil {
					t.Errorf("host %q, not asked for, verifies", h)
				}
			}
		})
	}
}

func TestEnsureSelfSignedSecondCall(t *testing.T) {
	cases := []struct {
		name          string
		first, second []string
		reissue       bool
	}{
		{"same hosts", []string{"localhost", "127.0.0.1", "::1"}, []string{"localhost", "127.0.0.1", "::1"}, false},
		{"same hosts reordered", []string{"localhost", "127.0.0.1", "::1"}, []string{"::1", "localhost", "127.0.0.1"}, false},
		{"IPv6 written differently", []string{"::1", "2001:db8::7"}, []string{"0:0:0:0:0:0:0:1", "2001:DB8:0::7"}, false},
		{"added DNS name", []string{"localhost", "127.0.0.1"}, []string{"localhost", "127.0.0.1", "keyhole.example.com"}, true},
		{"added IPv4", []string{"localhost"}, []string{"localhost", "10.0.0.9"}, true},
		{"added IPv6", []string{"localhost", "127.0.0.1"}, []string{"localhost", "127.0.0.1", "::1"}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			b1, err := EnsureSelfSigned(dir, tc.first)
			if err != nil {
				t.Fatal(err)
			}
			caKey1 := readFile(t, filepath.Join(dir, "ca.key"))
			srvKey1 := readFile(t, filepath.Join(dir, "server.key"))
			b2, err := EnsureSelfSigned(dir, tc.second)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b1.CAPEM, b2.CAPEM) {
				t.Error("second call replaced the CA certificate")
			}
			if !bytes.Equal(caKey1, readFile(t, filepath.Join(dir, "ca.key"))) {
				t.Error("second call replaced the CA key")
			}
			sameCert := bytes.Equal(b1.Cert.Certificate[0], b2.Cert.Certificate[0])
			sameKey := bytes.Equal(srvKey1, readFile(t, filepath.Join(dir, "server.key")))
			if tc.reissue {
				if sameCert || sameKey {
					t.Errorf("serving certificate not re-issued (same cert %v, same key %v)", sameCert, sameKey)
				}
			} else if !sameCert || !sameKey {
				t.Errorf("serving certificate re-issued (same cert %v, same key %v)", sameCert, sameKey)
			}
			for _, h := range tc.second {
				if err := verifyHost(t, b2, h); err != nil {
					t.Errorf("host %q does not verify after the second call: %v", h, err)
				}
			}
			// The first bundle's hosts still verify too (re-issuing keeps them when asked).
			for _, h := range tc.first {
				if err := verifyHost(t, b1, h); err != nil {
					t.Errorf("host %q does not verify with the first bundle: %v", h, err)
				}
			}
		})
	}
}

// signLeaf writes a serving certificate for hosts, signed by the CA in dir,
// valid until notAfter.
func signLeaf(t *testing.T, dir string, hosts []string, notAfter time.Time) {
	t.Helper()
	ca, caKey, _, err := loadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: "old"}, DNSNames: hosts,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "server.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "server.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// A serving certificate that is near expiry, signed by another CA, or whose
// files are gone is re-issued under the same CA.
func TestEnsureSelfSignedReissues(t *testing.T) {
	hosts := []string{"localhost", "127.0.0.1"}
	cases := []struct {
		name  string
		spoil func(t *testing.T, dir string)
	}{
		{"expires in 10 days", func(t *testing.T, dir string) {
			signLeaf(t, dir, hosts, time.Now().Add(10*24*time.Hour))
		}},
		{"signed by another CA", func(t *testing.T, dir string) {
			other := t.TempDir()
			if _, err := EnsureSelfSigned(other, hosts); err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{"server.crt", "server.key"} {
				if err := os.WriteFile(filepath.Join(dir, f), readFile(t, filepath.Join(other, f)), 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"server.key removed", func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, "server.key")); err != nil {
				t.Fatal(err)
			}
		}},
		{"server.crt garbage", func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, "server.crt"), []byte("not a certificate"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			b1, err := EnsureSelfSigned(dir, hosts)
			if err != nil {
				t.Fatal(err)
			}
			tc.spoil(t, dir)
			spoiled, _ := os.ReadFile(filepath.Join(dir, "server.crt"))
			b2, err := EnsureSelfSigned(dir, hosts)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b1.CAPEM, b2.CAPEM) {
				t.Error("the CA changed")
			}
			if bytes.Equal(spoiled, readFile(t, filepath.Join(dir, "server.crt"))) {
				t.Error("serving certificate not re-issued")
			}
			for _, h := range hosts {
				if err := verifyHost(t, b2, h); err != nil {
					t.Errorf("host %q: %v", h, err)
				}
			}
			leaf, err := x509.ParseCertificate(b2.Cert.Certificate[0])
			if err != nil {
				t.Fatal(err)
			}
			if time.Until(leaf.NotAfter) < 300*24*time.Hour {
				t.Errorf("re-issued certificate expires %v", leaf.NotAfter)
			}
		})
	}
}

func TestLoadPair(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	for _, d := range []string{a, b} {
		if _, err := EnsureSelfSigned(d, []string{"localhost"}); err != nil {
			t.Fatal(err)
		}
	}
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	if err := os.WriteFile(garbage, []byte("-----BEGIN NOTHING-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "missing.pem")
	cases := []struct {
		name          string
		cert, key     string
		wantErr       bool
		wantErrSubstr string
	}{
		{"matching pair", filepath.Join(a, "server.crt"), filepath.Join(a, "server.key"), false, ""},
		{"missing cert", missing, filepath.Join(a, "server.key"), true, "no such file"},
		{"missing key", filepath.Join(a, "server.crt"), missing, true, "no such file"},
		{"mismatched pair", filepath.Join(a, "server.crt"), filepath.Join(b, "server.key"), true, "does not match"},
		{"CA cert with server key", filepath.Join(a, "ca.crt"), filepath.Join(a, "server.key"), true, "does not match"},
		{"garbage cert", garbage, filepath.Join(a, "server.key"), true, ""},
		{"garbage key", filepath.Join(a, "server.crt"), garbage, true, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bundle, err := LoadPair(tc.cert, tc.key)
			if !tc.wantErr {
				if err != nil {
					t.Fatal(err)
				}
				if bundle.CAPEM != nil {
					t.Error("an operator pair carries a CA")
				}
				if len(bundle.Cert.Certificate) == 0 || bundle.Cert.PrivateKey == nil {
					t.Error("empty certificate")
				}
				return
			}
			if err == nil {
				t.Fatal("loaded")
			}
			for _, w := range []string{tc.cert, tc.key, tc.wantErrSubstr} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// Half a CA on disk is an error, never a silent new CA.
func TestEnsureSelfSignedRefusesHalfACA(t *testing.T) {
	for _, missing := range []string{"ca.key", "ca.crt"} {
		t.Run(missing, func(t *testing.T) {
			dir := t.TempDir()
			if _, err := EnsureSelfSigned(dir, []string{"localhost"}); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(filepath.Join(dir, missing)); err != nil {
				t.Fatal(err)
			}
			_, err := EnsureSelfSigned(dir, []string{"localhost"})
			if err == nil || !strings.Contains(err.Error(), "remove both to start a new CA") {
				t.Fatalf("got %v", err)
			}
		})
	}
}

// An operator's renewed certificate is served without a restart; a broken
// pair keeps the previous one and says why.
func TestReloadingPicksUpRenewal(t *testing.T) {
	first, second := t.TempDir(), t.TempDir()
	if _, err := EnsureSelfSigned(first, []string{"one.example"}); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureSelfSigned(second, []string{"two.example"}); err != nil {
		t.Fatal(err)
	}
	live := t.TempDir()
	copyFile := func(from, to string) {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	crt, key := filepath.Join(live, "tls.crt"), filepath.Join(live, "tls.key")
	copyFile(filepath.Join(first, "server.crt"), crt)
	copyFile(filepath.Join(first, "server.key"), key)
	r, err := NewReloading(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	served := func() string {
		c, err := r.GetCertificate(nil)
		if err != nil {
			t.Fatal(err)
		}
		return c.Leaf.DNSNames[0]
	}
	if got := served(); got != "one.example" {
		t.Fatalf("first: %s", got)
	}
	copyFile(filepath.Join(second, "server.crt"), crt)
	copyFile(filepath.Join(second, "server.key"), key)
	later := time.Now().Add(2 * time.Second)
	_ = os.Chtimes(crt, later, later) // a renewal within the same second still counts
	time.Sleep(1100 * time.Millisecond)
	if got := served(); got != "two.example" {
		t.Fatalf("after renewal: %s", got)
	}
	if err := os.WriteFile(crt, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.Chtimes(crt, later.Add(time.Second), later.Add(time.Second))
	time.Sleep(1100 * time.Millisecond)
	if got := served(); got != "two.example" || r.Err() == nil {
		t.Fatalf("broken pair: served %s, err %v", got, r.Err())
	}
}

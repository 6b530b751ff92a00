// Package certs provides the stub's serving certificate.
//
// A first run needs no certificate: EnsureSelfSigned creates, once, a CA and
// a serving certificate for the configured host names in the state directory,
// and reuses them on later starts (re-issuing the serving certificate when the
// host names change or it nears expiry). Agents pin that CA (the manifest
// `stub register` prints carries it) and kubeconfigs embed it. An operator's
// own certificate and key are loaded with LoadPair instead (Reloading picks
// them up again when they change).
//
// StartACME obtains and renews the certificate from an ACME CA with
// certmagic, keeping its state in a certmagic.Storage: a directory, or
// SecretStorage (Kubernetes Secrets) when replicas share it. GuardedStorage
// wraps either so that a failing store (a full disk) is reported clearly
// and loses nothing already stored. Both are built by NewSecretStorage and
// NewGuardedStorage, which fill in defaults and refuse an incomplete
// config. See docs/tls.md.
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/keyhole-dev/keyhole/internal/statefile"
)

// Bundle is a serving certificate and, for self-signed installs, the CA that
// clients must trust (nil when the certificate chains to a public root).
type Bundle struct {
	Cert  tls.Certificate
	CAPEM []byte
}

// LoadPair loads an operator-supplied certificate and key.
func LoadPair(certFile, keyFile string) (*Bundle, error) {
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("tls.certFile %q / tls.keyFile %q: %w", certFile, keyFile, err)
	}
	return &Bundle{Cert: c}, nil
}

// EnsureSelfSigned returns the self-signed bundle in dir for hosts, creating
// what is missing.
func EnsureSelfSigned(dir string, hosts []string) (*Bundle, error) {
	caCrt, caKey := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	srvCrt, srvKey := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	ca, caPriv, caPEM, err := loadCA(caCrt, caKey)
	if errors.Is(err, os.ErrNotExist) {
		// Only a first run makes a CA. Half a CA on disk means something
		// was lost; a silent new CA would break every agent and kubeconfig
		// that pinned the old one.
		_, crtErr := os.Stat(caCrt)
		_, keyErr := os.Stat(caKey)
		if !errors.Is(crtErr, os.ErrNotExist) || !errors.Is(keyErr, os.ErrNotExist) {
			return nil, fmt.Errorf("self-signed CA in %s: one of ca.crt and ca.key is missing: restore it, or remove both to start a new CA (then re-register every cluster and reissue kubeconfigs, which pin the old one)", dir)
		}
		ca, caPriv, caPEM, err = newCA(caCrt, caKey)
	}
	if err != nil {
		return nil, fmt.Errorf("self-signed CA in %s: %w", dir, err)
	}
	pair, err := tls.LoadX509KeyPair(srvCrt, srvKey)
	if err == nil && covers(pair.Leaf, hosts) && time.Until(pair.Leaf.NotAfter) > 30*24*time.Hour && pair.Leaf.CheckSignatureFrom(ca) == nil {
		return &Bundle{Cert: pair, CAPEM: caPEM}, nil
	}
	pair, err = issue(ca, caPriv, hosts, srvCrt, srvKey)
	if err != nil {
		return nil, fmt.Errorf("serving certificate in %s: %w", dir, err)
	}
	return &Bundle{Cert: pair, CAPEM: caPEM}, nil
}

func covers(leaf *x509.Certificate, hosts []string) bool {
	if leaf == nil {
		return false
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			if !slices.ContainsFunc(leaf.IPAddresses, ip.Equal) {
				return false
			}
		} else if !slices.Contains(leaf.DNSNames, h) {
			return false
		}
	}
	return true
}

func loadCA(crtPath, keyPath string) (*x509.Certificate, *ecdsa.PrivateKey, []byte, error) {
	crtPEM, err := os.ReadFile(crtPath)
	if err != nil {
		return nil, nil, nil, err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, nil, err
	}
	pair, err := tls.X509KeyPair(crtPEM, keyPEM)
	if err != nil {
		return nil, nil, nil, err
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, nil, errors.New("CA key is not ECDSA")
	}
	return pair.Leaf, key, crtPEM, nil
}

func newKey() (*ecdsa.PrivateKey, []byte, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, nil, err
	}
	return k, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

func newCA(crtPath, keyPath string) (*x509.Certificate, *ecdsa.PrivateKey, []byte, error) {
	key, keyPEM, err := newKey()
	if err != nil {
		return nil, nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "keyhole self-signed CA " + now.UTC().Format("2006-01-02")},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(10, 0, 0),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true, MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, nil, err
	}
	crtPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := statefile.WriteAtomic(keyPath, keyPEM, 0o600); err != nil {
		return nil, nil, nil, err
	}
	if err := statefile.WriteAtomic(crtPath, crtPEM, 0o644); err != nil {
		return nil, nil, nil, err
	}
	ca, err := x509.ParseCertificate(der)
	return ca, key, crtPEM, err
}

func issue(ca *x509.Certificate, caKey *ecdsa.PrivateKey, hosts []string, crtPath, keyPath string) (tls.Certificate, error) {
	key, keyPEM, err := newKey()
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "keyhole stub"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	crtPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := statefile.WriteAtomic(keyPath, keyPEM, 0o600); err != nil {
		return tls.Certificate{}, err
	}
	if err := statefile.WriteAtomic(crtPath, crtPEM, 0o644); err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(crtPEM, keyPEM)
}

// Reloading serves an operator's certificate and key and picks them up
// again when either file changes (checked at most once a second, on the
// handshakes that follow), so a renewed certificate needs no restart. A
// pair that does not load is reported by Err and the previous one stays.
type Reloading struct {
	certFile, keyFile string

	mu        sync.Mutex
	cert      *tls.Certificate
	stamp     [2]time.Time
	lastCheck time.Time
	err       error
}

// NewReloading loads the pair now; a pair that does not load is an error.
func NewReloading(certFile, keyFile string) (*Reloading, error) {
	r := &Reloading{certFile: certFile, keyFile: keyFile}
	if err := r.reload(); err != nil {
		return nil, err
	}
	return r, nil
}

func modTime(path string) time.Time {
	if fi, err := os.Stat(path); err == nil {
		return fi.ModTime()
	}
	return time.Time{}
}

func (r *Reloading) reload() error {
	b, err := LoadPair(r.certFile, r.keyFile)
	if err != nil {
		return err
	}
	r.cert = &b.Cert
	r.stamp = [2]time.Time{modTime(r.certFile), modTime(r.keyFile)}
	return nil
}

// GetCertificate is for tls.Config.GetCertificate.
func (r *Reloading) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); now.Sub(r.lastCheck) >= time.Second {
		r.lastCheck = now
		if [2]time.Time{modTime(r.certFile), modTime(r.keyFile)} != r.stamp {
			r.err = r.reload() // on failure the previous certificate stays
		}
	}
	return r.cert, nil
}

// Err is the error of the last failed reload, nil once one succeeds.
func (r *Reloading) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

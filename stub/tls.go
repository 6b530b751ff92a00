package stub

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"

	"github.com/keyhole-dev/keyhole/certs"
	"github.com/keyhole-dev/keyhole/config"
)

// LoadBundle returns the certificate material that kubeconfigs and agent
// manifests need: the self-signed CA, or nothing (a certificate from an
// operator or from ACME chains to roots the clients already trust).
func LoadBundle(cfg config.Stub) (*certs.Bundle, error) {
	switch {
	case cfg.TLS.ACME != nil:
		return &certs.Bundle{}, nil
	case cfg.TLS.CertFile != "":
		return certs.LoadPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
	}
	return certs.EnsureSelfSigned(cfg.TLSDir(), cfg.TLS.Hosts)
}

// acmeMinFree is the free space the file store wants before a write: a
// certificate save is three small files, so this fails a save up front on
// a nearly full disk instead of half-way through it.
const acmeMinFree = 64 << 10

// serverTLS returns the main listener's TLS configuration for cfg, and a
// function that stops what it started (ACME maintenance, the http-01
// listener). Call it once the listener is bound: tls-alpn-01 validation
// may connect as soon as it returns.
func serverTLS(cfg config.Stub, bundle *certs.Bundle, hub kubernetes.Interface, log *zap.Logger) (*tls.Config, func(), error) {
	tc, stop, err := mainTLS(cfg, bundle, hub, log)
	if err != nil {
		return nil, nil, err
	}
	a := cfg.Browser.Apps
	if a == nil || a.CertFile == "" {
		return tc, stop, nil
	}
	// App hosts (browser.apps) get their own certificate, by SNI.
	rl, err := certs.NewReloading(a.CertFile, a.KeyFile)
	if err != nil {
		stop()
		return nil, nil, fmt.Errorf("browser.apps.certFile: %w", err)
	}
	main, mainCerts := tc.GetCertificate, tc.Certificates
	tc = tc.Clone()
	tc.Certificates = nil
	suffix := "." + a.Domain
	tc.GetCertificate = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		if strings.HasSuffix(strings.ToLower(strings.TrimSuffix(hello.ServerName, ".")), suffix) {
			return rl.GetCertificate(hello)
		}
		if main != nil {
			return main(hello)
		}
		return &mainCerts[0], nil
	}
	return tc, stop, nil
}

// checkAppsCertificate checks, with browser.apps, that app hosts will get
// a certificate for their names: browser.apps.certFile's, or else the
// stub's own (an operator's tls.certFile, or the self-signed one, whose
// default hosts include the wildcard). With tls.acme, config validation
// already asked for browser.apps.certFile.
func checkAppsCertificate(cfg config.Stub, bundle *certs.Bundle) error {
	a := cfg.Browser.Apps
	if a == nil {
		return nil
	}
	host := strings.Repeat("a", 32) + "." + a.Domain // an app host's name
	if a.CertFile != "" {
		c, err := tls.LoadX509KeyPair(a.CertFile, a.KeyFile)
		if err != nil {
			return fmt.Errorf("browser.apps.certFile %q / keyFile %q: %w", a.CertFile, a.KeyFile, err)
		}
		if err := c.Leaf.VerifyHostname(host); err != nil {
			return fmt.Errorf("browser.apps.certFile %q does not cover %q, the names of app hosts (%v); use a certificate for that wildcard", a.CertFile, a.Wildcard(), err)
		}
		return nil
	}
	if cfg.TLS.ACME != nil || bundle == nil || bundle.Cert.Leaf == nil {
		return nil
	}
	if err := bundle.Cert.Leaf.VerifyHostname(host); err != nil {
		if cfg.TLS.CertFile != "" {
			return fmt.Errorf("browser.apps.domain %q: the certificate in tls.certFile %q does not cover %q, the names of app hosts (%v); add that name to it, or set browser.apps.certFile/keyFile to a certificate for it", a.Domain, cfg.TLS.CertFile, a.Wildcard(), err)
		}
		return fmt.Errorf("browser.apps.domain %q: the self-signed certificate does not cover %q (%v); add it to tls.hosts", a.Domain, a.Wildcard(), err)
	}
	return nil
}

func mainTLS(cfg config.Stub, bundle *certs.Bundle, hub kubernetes.Interface, log *zap.Logger) (*tls.Config, func(), error) {
	switch {
	case cfg.TLS.ACME != nil:
		return acmeTLS(cfg, hub, log)
	case cfg.TLS.CertFile != "":
		// An operator's certificate is picked up again when renewed.
		rl, err := certs.NewReloading(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			return nil, nil, err
		}
		return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: rl.GetCertificate}, func() {}, nil
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{bundle.Cert}}, func() {}, nil
}

// tlsNote says, for the start banner, where the certificate comes from.
func tlsNote(cfg config.Stub, bundle *certs.Bundle) string {
	switch {
	case cfg.TLS.ACME != nil:
		return fmt.Sprintf("ACME certificate for %v from %s", cfg.TLS.ACME.Domains, cfg.TLS.ACME.DirectoryURL)
	case bundle.CAPEM != nil:
		return "self-signed CA: " + cfg.TLSDir() + "/ca.crt"
	}
	return "certificate: " + cfg.TLS.CertFile
}

// acmeStorage is the certificate store: Secrets in the hub when replicas
// share one (hub is the replica's hub client), else a directory in the
// state directory.
func acmeStorage(cfg config.Stub, hub kubernetes.Interface, log *zap.Logger) (*certs.GuardedStorage, func(), error) {
	if hub != nil {
		ss, err := certs.NewSecretStorage(certs.SecretStorageConfig{Client: hub, Namespace: cfg.Hub.Namespace,
			Holder: cfg.Hub.ReplicaID, Logger: log.Named("storage")})
		if err != nil {
			return nil, nil, err
		}
		g, err := certs.NewGuardedStorage(certs.GuardedStorageConfig{Storage: ss, Logger: log,
			Where: fmt.Sprintf("Secrets in hub namespace %q (hub.namespace)", cfg.Hub.Namespace),
			Fix:   "check that the hub's API server and etcd accept writes (etcd quota, disk) and that the stub may create, update and delete Secrets there",
		})
		if err != nil {
			ss.Close()
			return nil, nil, err
		}
		return g, ss.Close, nil
	}
	dir := filepath.Join(cfg.StateDir, "acme")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("stateDir: %q: creating %s for ACME certificates: %w (give a directory the stub may write)", cfg.StateDir, dir, err)
	}
	g, err := certs.NewGuardedStorage(certs.GuardedStorageConfig{Storage: &certmagic.FileStorage{Path: dir}, Logger: log, Dir: dir, MinFree: acmeMinFree,
		Where: fmt.Sprintf("directory %s (stateDir %q)", dir, cfg.StateDir),
		Fix:   fmt.Sprintf("free space on the filesystem holding %s, or move stateDir to a larger volume", dir),
	})
	if err != nil {
		return nil, nil, err
	}
	return g, func() {}, nil
}

func acmeTLS(cfg config.Stub, hub kubernetes.Interface, log *zap.Logger) (*tls.Config, func(), error) {
	a := cfg.TLS.ACME
	store, closeStore, err := acmeStorage(cfg, hub, log)
	if err != nil {
		return nil, nil, err
	}
	acme := certs.ACMEConfig{Domains: a.Domains, Email: a.Email, DirectoryURL: a.DirectoryURL,
		CAFile: a.CAFile, Challenge: a.Challenge, ChallengeAddr: cfg.Listen, Storage: store,
		RenewCheckInterval: a.RenewCheckInterval.Duration, Logger: log.Named("acme")}
	if a.Challenge != certs.ChallengeHTTP {
		m, err := certs.StartACME(acme)
		if err != nil {
			closeStore()
			return nil, nil, err
		}
		return m.TLSConfig(), func() { m.Stop(); closeStore() }, nil
	}
	// http-01: the challenge listener is bound first, so that certmagic
	// leaves answering to it.
	ln, err := net.Listen("tcp", a.HTTPListen)
	if err != nil {
		closeStore()
		return nil, nil, fmt.Errorf("tls.acme.httpListen: %q: %w (http-01 needs this port; pick a free one, reachable as port 80 of %v)", a.HTTPListen, err, a.Domains)
	}
	acme.ChallengeAddr = a.HTTPListen
	m, err := certs.StartACME(acme)
	if err != nil {
		ln.Close()
		closeStore()
		return nil, nil, err
	}
	hsrv := &http.Server{
		Handler:           m.HTTPHandler(http.NotFoundHandler()),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          zap.NewStdLog(log.Named("http-01")),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := hsrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http-01 listener stopped", zap.String("addr", a.HTTPListen), zap.Error(err))
		}
	}()
	log.Info("answering ACME http-01 challenges", zap.String("addr", ln.Addr().String()))
	return m.TLSConfig(), func() { hsrv.Close(); <-done; m.Stop(); closeStore() }, nil
}

package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// ACME challenge types the stub can answer.
const (
	ChallengeTLSALPN = "tls-alpn-01"
	ChallengeHTTP    = "http-01"
)

// ACMEConfig says how to obtain and renew the serving certificate from an
// ACME CA (Let's Encrypt, a private ACME server, Pebble in tests).
type ACMEConfig struct {
	Domains      []string
	Email        string
	DirectoryURL string
	// CAFile, if set, is a PEM file of roots to trust (in addition to the
	// system's) for the ACME server's own HTTPS.
	CAFile string
	// Challenge is ChallengeTLSALPN (answered on the main listener) or
	// ChallengeHTTP (answered by HTTPHandler on port 80 or HTTPListen).
	Challenge string
	// ChallengeAddr is the address (host:port) the stub answers the
	// challenge on: its main listener for tls-alpn-01, the http-01
	// listener for http-01. It must be bound before StartACME: certmagic
	// then finds it in use and leaves the answering to the stub instead of
	// binding port 443 or 80 for a challenge server of its own.
	ChallengeAddr string
	// Storage holds certificates, keys, ACME account and locks. Replicas
	// that share it share certificates and order each one once.
	Storage certmagic.Storage
	// RenewCheckInterval is how often certificates are checked for renewal
	// (default 10 minutes).
	RenewCheckInterval time.Duration
	Logger             *zap.Logger
}

// ACME obtains and renews certificates for the configured domains in the
// background and serves them (and tls-alpn-01 challenges) through
// TLSConfig. Stop ends its maintenance.
type ACME struct {
	cache  *certmagic.Cache
	cfg    *certmagic.Config
	issuer *certmagic.ACMEIssuer
	cancel context.CancelFunc
	done   chan struct{} // closed when the start-up goroutine is done
}

// StartACME starts managing the certificates. It returns at once; until the
// first certificate is obtained (or loaded from storage), handshakes for the
// domains fail and the progress is logged. Errors returned are
// configuration errors; a store that cannot be read yet is retried.
func StartACME(c ACMEConfig) (*ACME, error) {
	if c.Storage == nil {
		return nil, errors.New("certs: ACMEConfig.Storage is nil; give the certificate store (a GuardedStorage over a directory or a SecretStorage)")
	}
	log := c.Logger
	if log == nil {
		log = zap.NewNop()
	}
	var roots *x509.CertPool
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls.acme.caFile: %q: %w (give a PEM file of the ACME server's CA, or remove the key to trust only system roots)", c.CAFile, err)
		}
		if roots, err = x509.SystemCertPool(); err != nil || roots == nil {
			roots = x509.NewCertPool()
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.acme.caFile: %q holds no PEM certificate; give the ACME server's CA certificate in PEM", c.CAFile)
		}
	}
	if c.Challenge != ChallengeTLSALPN && c.Challenge != ChallengeHTTP {
		return nil, fmt.Errorf("tls.acme.challenge: %q is not %q or %q", c.Challenge, ChallengeTLSALPN, ChallengeHTTP)
	}
	host, portStr, err := net.SplitHostPort(c.ChallengeAddr)
	port, perr := strconv.Atoi(portStr)
	if err != nil || perr != nil || port <= 0 {
		return nil, fmt.Errorf("ACME challenge address %q is not host:port with a port number", c.ChallengeAddr)
	}
	a := &ACME{}
	var cfg *certmagic.Config
	a.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(certmagic.Certificate) (*certmagic.Config, error) { return cfg, nil },
		RenewCheckInterval: c.RenewCheckInterval,
		Logger:             log.Named("cache"),
	})
	cfg = certmagic.New(a.cache, certmagic.Config{
		Storage: c.Storage,
		Logger:  log,
		// Let's Encrypt has no OCSP any more; stapling would only log noise
		// and write staples to the store.
		OCSP: certmagic.OCSPConfig{DisableStapling: true},
	})
	a.issuer = certmagic.NewACMEIssuer(cfg, certmagic.ACMEIssuer{
		CA:                      c.DirectoryURL,
		Email:                   c.Email,
		Agreed:                  true, // config validation requires tls.acme.agreeTOS
		TrustedRoots:            roots,
		DisableHTTPChallenge:    c.Challenge != ChallengeHTTP,
		DisableTLSALPNChallenge: c.Challenge != ChallengeTLSALPN,
		ListenHost:              host,
		AltTLSALPNPort:          port,
		AltHTTPPort:             port,
		Logger:                  log.Named("issuer"),
	})
	cfg.Issuers = []certmagic.Issuer{a.issuer}
	a.cfg = cfg
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.done = make(chan struct{})
	// Managing starts by loading what the store holds; a store that cannot
	// be read yet (the hub's API server restarting, RBAC not applied yet)
	// is retried in the background rather than failing the start.
	go func() {
		defer close(a.done)
		wait := 2 * time.Second
		for {
			// certmagic's ManageAsync only logs a store it cannot read and
			// then leaves the name unmanaged for good; so look into the
			// store first, and retry here while it answers with anything
			// but "not there". Then ManageAsync loads (and renews if due)
			// or obtains, with certmagic's own retries.
			_, err := c.Storage.Stat(ctx, "certificates")
			if errors.Is(err, fs.ErrNotExist) {
				err = nil
			}
			if err == nil {
				err = cfg.ManageAsync(ctx, c.Domains)
			}
			if err == nil {
				log.Info("ACME certificate management started", zap.Strings("domains", c.Domains),
					zap.String("directory", c.DirectoryURL), zap.String("challenge", c.Challenge),
					zap.String("storage", fmt.Sprint(c.Storage)))
				return
			}
			log.Error("cannot start managing the ACME certificate; retrying (handshakes fail until a certificate is there)",
				zap.Strings("domains", c.Domains), zap.String("storage", fmt.Sprint(c.Storage)),
				zap.Error(err), zap.Duration("retry_in", wait))
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			wait = min(2*wait, time.Minute)
		}
	}()
	return a, nil
}

// TLSConfig returns the server TLS configuration: certificates from the
// cache and, for tls-alpn-01, the acme-tls/1 protocol.
func (a *ACME) TLSConfig() *tls.Config {
	t := a.cfg.TLSConfig()
	t.MinVersion = tls.VersionTLS12
	return t
}

// HTTPHandler answers http-01 challenges (also those another replica
// started, through the shared storage) and passes everything else to next.
func (a *ACME) HTTPHandler(next http.Handler) http.Handler {
	return a.issuer.HTTPChallengeHandler(next)
}

// Stop ends certificate maintenance and cancels pending orders.
func (a *ACME) Stop() {
	a.cancel()
	<-a.done
	a.cache.Stop()
}

// ErrStoreFull is returned (wrapped) when the certificate store refuses a
// write because too little space is left.
var ErrStoreFull = errors.New("no space left for the certificate store")

package config

import (
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap/zapcore"
)

// Stub is the stub's configuration (kind StubConfig).
type Stub struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	// Listen is the address of the HTTPS port that kubectl and agents use.
	Listen string `json:"listen"`
	// PublicURL is how kubectl and agents reach the stub; it goes into
	// generated kubeconfigs and agent manifests.
	PublicURL string `json:"publicURL"`
	// StateDir holds registered clusters, token hashes and the self-signed
	// CA of a first run.
	StateDir string    `json:"stateDir"`
	TLS      StubTLS   `json:"tls"`
	Tunnel   TunnelCfg `json:"tunnel"`
	Log      Log       `json:"log"`
}

// StubTLS chooses the serving certificate: an operator-supplied pair, or a
// self-signed one (CA in the state directory) for Hosts.
type StubTLS struct {
	CertFile string   `json:"certFile"`
	KeyFile  string   `json:"keyFile"`
	Hosts    []string `json:"hosts"`
}

// TunnelCfg tunes keepalive on agent sessions.
type TunnelCfg struct {
	KeepAliveInterval Duration `json:"keepAliveInterval"`
	KeepAliveTimeout  Duration `json:"keepAliveTimeout"`
}

// Log sets the log level: debug, info, warn or error.
type Log struct {
	Level string `json:"level"`
}

// DefaultStub returns the embedded defaults: a single stub on :8443 with a
// self-signed certificate and its state under the user's state directory.
func DefaultStub() Stub {
	return Stub{
		APIVersion: APIVersion, Kind: "StubConfig",
		Listen:   ":8443",
		StateDir: defaultStateDir(),
		Tunnel:   TunnelCfg{KeepAliveInterval: Duration{5 * time.Second}, KeepAliveTimeout: Duration{5 * time.Second}},
		Log:      Log{Level: "info"},
	}
}

func defaultStateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "keyhole")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "keyhole")
	}
	return "keyhole-state"
}

// LoadStub reads path ("" = defaults only), applies defaults and validates.
func LoadStub(path string) (Stub, error) {
	c := DefaultStub()
	data, err := readFile(path)
	if err != nil {
		return c, err
	}
	if data != nil {
		if err := decode(path, data, "StubConfig", &c); err != nil {
			return c, err
		}
	}
	return c, c.validate(path)
}

func (c *Stub) validate(path string) error {
	var p problems
	host, port, err := net.SplitHostPort(c.Listen)
	if err != nil {
		p.addf("listen: %q is not host:port; write e.g. \":8443\" or \"127.0.0.1:8443\"", c.Listen)
	} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		p.addf("listen: port %q of %q is not a number from 0 to 65535", port, c.Listen)
	}
	if c.PublicURL == "" && err == nil {
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "localhost"
		}
		c.PublicURL = "https://" + net.JoinHostPort(host, port)
	}
	c.PublicURL = strings.TrimRight(c.PublicURL, "/") // kubeconfigs append /clusters/…
	if u, err := url.Parse(c.PublicURL); err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
		p.addf("publicURL: %q must be an https:// URL with a host and no path, e.g. \"https://keyhole.example.com\"", c.PublicURL)
	}
	if c.StateDir == "" {
		p.addf("stateDir: must not be empty; give a directory the stub may write, e.g. \"/var/lib/keyhole\"")
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		p.addf("tls.certFile %q / tls.keyFile %q: give both (an operator certificate) or neither (self-signed)", c.TLS.CertFile, c.TLS.KeyFile)
	}
	if c.TLS.CertFile != "" && len(c.TLS.Hosts) > 0 {
		p.addf("tls.hosts: only used for the self-signed certificate; remove it or remove tls.certFile/keyFile")
	}
	if len(c.TLS.Hosts) == 0 {
		c.TLS.Hosts = []string{"localhost", "127.0.0.1", "::1"}
		if u, err := url.Parse(c.PublicURL); err == nil && u.Hostname() != "" && u.Hostname() != "localhost" {
			c.TLS.Hosts = append(c.TLS.Hosts, u.Hostname())
		}
	}
	checkTunnel(&p, c.Tunnel)
	checkLevel(&p, c.Log.Level)
	return p.err(path)
}

func checkTunnel(p *problems, t TunnelCfg) {
	if t.KeepAliveInterval.Duration < 100*time.Millisecond {
		p.addf("tunnel.keepAliveInterval: %v is too short; use at least 100ms (default 5s)", t.KeepAliveInterval.Duration)
	}
	if t.KeepAliveTimeout.Duration < 100*time.Millisecond {
		p.addf("tunnel.keepAliveTimeout: %v is too short; use at least 100ms (default 5s)", t.KeepAliveTimeout.Duration)
	}
}

func checkLevel(p *problems, level string) {
	if _, err := zapcore.ParseLevel(level); err != nil {
		p.addf("log.level: %q is not a level; use debug, info, warn or error", level)
	}
}

// ClustersFile, TokensFile and TLSDir are the paths inside the state dir.
func (c Stub) ClustersFile() string { return filepath.Join(c.StateDir, "clusters.yaml") }
func (c Stub) TokensFile() string   { return filepath.Join(c.StateDir, "tokens.yaml") }
func (c Stub) TLSDir() string       { return filepath.Join(c.StateDir, "tls") }

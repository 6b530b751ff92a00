package proxy

import (
	"net"
	"net/http"
	"time"

	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/client-go/rest"
)

// apiMaxIdleConnsPerHost is how many idle connections the agent keeps to
// its API server, as many as the stub keeps to the agents of one cluster
// (NewStub's MaxIdleConnsPerHost). Over HTTP/2, the usual case, there is
// one connection and this does not matter; over HTTP/1.1 (a plain-HTTP or
// HTTP/1.1-only API server) every concurrent request needs a connection of
// its own, and client-go keeps 25 (TLS) or net/http's default 2 (plain
// HTTP: http.DefaultTransport), so under 64 concurrent requests most of
// them dialled and closed a TCP connection each.
const apiMaxIdleConnsPerHost = 256

// apiTransport is the transport the agent forwards requests on: what
// rest.TransportFor(cfg) builds (client-go's TLS and proxy settings, its
// HTTP/2 health checks, its credential wrappers: bearer token file
// reloading, exec plugins), on an http.Transport of the agent's own that
// keeps apiMaxIdleConnsPerHost idle connections.
func apiTransport(cfg *rest.Config) (http.RoundTripper, error) {
	tlsCfg, err := rest.TLSConfigFor(cfg)
	if err != nil {
		return nil, err
	}
	dial := cfg.Dial
	if dial == nil {
		dial = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	proxy := cfg.Proxy
	if proxy == nil {
		proxy = http.ProxyFromEnvironment
	}
	t := utilnet.SetTransportDefaults(&http.Transport{
		Proxy:               proxy,
		TLSHandshakeTimeout: 10 * time.Second,
		TLSClientConfig:     tlsCfg,
		DialContext:         dial,
		MaxIdleConnsPerHost: apiMaxIdleConnsPerHost,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  cfg.DisableCompression,
	})
	return rest.HTTPWrappersForConfig(cfg, t)
}

package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"testing"
)

// BenchmarkChain measures the stub → tunnel → agent → API server chain in
// one process against the same fake API server reached directly, so a CPU
// profile shows what the two hops cost:
//
//	go test -run '^$' -bench Chain -cpuprofile cpu.out ./proxy/
func BenchmarkChain(b *testing.B) {
	api := newFakeAPI(b)
	c := newChain(b, restFor(api.Server), api)
	pool := x509.NewCertPool()
	pool.AddCert(api.Certificate())
	direct := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	defer direct.CloseIdleConnections()
	run := func(b *testing.B, client *http.Client, url, token string) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				req, _ := http.NewRequest("GET", url, nil)
				req.Header.Set("Authorization", "Bearer "+token)
				resp, err := client.Do(req)
				if err != nil {
					b.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	b.Run("direct", func(b *testing.B) { b.SetParallelism(32); run(b, direct, api.URL+"/api/v1/pods", "x") })
	b.Run("gateway", func(b *testing.B) {
		b.SetParallelism(32)
		run(b, c.client, c.stubURL+"/clusters/c1/api/v1/pods", "alice-token")
	})
}

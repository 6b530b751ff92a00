package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

// BenchmarkGateway measures, in one run, the same requests made directly to
// the API server and through stub + two agents, and logs the ratios.
//
//	go test -run '^$' -bench Gateway -benchtime 5s ./e2e/
//
// Both paths use one HTTP/2 client each, as kubectl and client-go do; the
// port-forward and cp scenarios run the real kubectl against a pod of the
// node simulator, with the admin kubeconfig (direct) and a stub kubeconfig.
func BenchmarkGateway(b *testing.B) {
	c := kubetest.Start(b)
	g := startGateway(b, c)
	secret, tokenFile := g.install("bench")
	for _, id := range []string{"a1", "a2"} {
		g.startAgent(agentOpts{cluster: "bench", id: id, secretFile: secret, apiURL: c.URL, tokenFile: tokenFile, c: c, logLevel: "info"})
	}
	aliceKC, aliceTok := g.user("alice", "cluster-admin")
	g.waitAgents(aliceTok, "bench", "a1", "a2")
	fillConfigMaps(b, c, "bulk", 5000)
	c.CreatePod(b, "default", "bench-pod", map[string]string{"nodesim.keyhole.dev/port-8080": startDataServer(b)})

	type target struct {
		name, base, token string
		client            *http.Client
		kubeconfig        string // for kubectl port-forward and cp
	}
	mk := func(caPEM []byte) *http.Client {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(caPEM)
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 100}
		b.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr}
	}
	targets := []target{
		{"direct", c.URL, c.AdminToken, mk(c.CAData), c.AdminKubeconfig},
		{"gateway", g.url + "/clusters/bench", aliceTok, mk(g.caPEM), aliceKC},
	}
	get := func(b *testing.B, t target, path string) int64 {
		req, _ := http.NewRequest("GET", t.base+path, nil)
		req.Header.Set("Authorization", "Bearer "+t.token)
		req.Header.Set("Accept", "application/json")
		resp, err := t.client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("%s %s: %d", t.name, path, resp.StatusCode)
		}
		return n
	}
	const small = "/api/v1/namespaces/default"
	for _, t := range targets {
		get(b, t, small) // open and warm each client's connection
	}
	// Each scenario runs direct, then through the gateway, back to back; the
	// gateway run reports its throughput as a fraction of direct
	// (x-of-direct) and the time it adds per request (added-µs).
	direct := map[string]float64{}
	report := func(b *testing.B, scenario string, t target, elapsed time.Duration) {
		ns := float64(elapsed.Nanoseconds()) / float64(b.N)
		if t.name == "direct" {
			direct[scenario] = ns
			return
		}
		if d := direct[scenario]; d > 0 {
			b.ReportMetric(d/ns, "x-of-direct")
			b.ReportMetric((ns-d)/1e3, "added-µs")
		}
	}
	for _, t := range targets {
		b.Run("get-small-serial/"+t.name, func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			start := time.Now()
			for i := 0; i < b.N; i++ {
				s := time.Now()
				get(b, t, small)
				lat = append(lat, time.Since(s))
			}
			report(b, "serial", t, time.Since(start))
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
	for _, t := range targets {
		b.Run("get-small-64-concurrent/"+t.name, func(b *testing.B) {
			b.SetParallelism((64 + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					get(b, t, small)
				}
			})
			report(b, "parallel", t, time.Since(start))
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
		})
	}
	for _, t := range targets {
		b.Run("list-5000/"+t.name, func(b *testing.B) {
			start := time.Now()
			var n int64
			for i := 0; i < b.N; i++ {
				n = get(b, t, "/api/v1/namespaces/bulk/configmaps")
			}
			report(b, "list", t, time.Since(start))
			b.SetBytes(n)
		})
	}
	// One kubectl port-forward stream (WebSocket, kubectl 1.32's default)
	// to the node simulator's pod, 100 MB each way per op; then kubectl cp
	// of 50 MB to and from the pod (exec of tar over WebSocket).
	const pfBytes, cpBytes = 100 << 20, 50 << 20
	for _, dir := range []string{"from", "to"} {
		for _, t := range targets {
			b.Run("port-forward-"+dir+"-pod/"+t.name, func(b *testing.B) {
				local, stop := portForwardAs(b, c, t.kubeconfig, nil, "bench-pod")
				defer stop()
				download(b, local, 1<<20, 1) // the first connection sets up the stream
				b.ResetTimer()
				start := time.Now()
				for i := 0; i < b.N; i++ {
					if dir == "from" {
						download(b, local, pfBytes, uint64(i))
					} else {
						upload(b, local, pfBytes, uint64(i))
					}
				}
				report(b, "port-forward-"+dir, t, time.Since(start))
				b.SetBytes(pfBytes)
			})
		}
	}
	blob := filepath.Join(b.TempDir(), "blob.bin")
	if err := os.WriteFile(blob, randomBytes(cpBytes, 0), 0o644); err != nil {
		b.Fatal(err)
	}
	podDir := b.TempDir() // the simulated container's filesystem is the host's
	for _, dir := range []string{"to", "from"} {
		for _, t := range targets {
			b.Run("cp-"+dir+"-pod/"+t.name, func(b *testing.B) {
				start := time.Now()
				for i := 0; i < b.N; i++ {
					args := []string{"cp", blob, "bench-pod:" + podDir + "/in.bin"}
					if dir == "from" {
						args = []string{"cp", "bench-pod:" + podDir + "/in.bin", filepath.Join(b.TempDir(), "back.bin")}
					}
					if out, err := g.kubectl(t.kubeconfig, nil, nil, args...); err != nil {
						b.Fatalf("kubectl %v: %v %s", args, err, out)
					}
				}
				report(b, "cp-"+dir, t, time.Since(start))
				b.SetBytes(cpBytes)
			})
		}
	}
}

// randomBytes returns n pseudo-random bytes of seed (a file that does not
// compress).
func randomBytes(n int, seed byte) []byte {
	out := make([]byte, n)
	r := rand.New(rand.NewChaCha8([32]byte{seed}))
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(out[i:], r.Uint64())
	}
	return out
}

func fillConfigMaps(tb testing.TB, c *kubetest.Cluster, ns string, n int) {
	c.EnsureNamespace(tb, ns)
	rc := c.RESTConfig()
	rc.QPS, rc.Burst = 2000, 2000
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	var failed error
	var once sync.Once
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_, err := cs.CoreV1().ConfigMaps(ns).Create(context.Background(), &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("cm-%05d", i)}, Data: map[string]string{"k": strings.Repeat("v", 100)}}, metav1.CreateOptions{})
			if err != nil {
				once.Do(func() { failed = err })
			}
		}()
	}
	wg.Wait()
	if failed != nil {
		tb.Fatal(failed)
	}
}

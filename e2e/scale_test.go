package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkStubScale measures what idle streams cost the real stub binary
// holding 1,000 agent sessions (100 clusters × 10 agents, run as
// tunnel.Agents in this process): its resident memory (VmRSS) and
// goroutines (go_goroutines on its metrics endpoint) with no stream open,
// then with N idle watches (HTTP/2, 250 streams per connection, as client-go
// multiplexes them), then with N idle exec-like sessions (HTTP/1.1 upgraded
// to an opaque byte stream, as kubectl exec over SPDY; the agents' handler
// answers 101 and echoes). Every watch gets one event per 10 s from its
// agent; the benchmark holds the streams 25 s and counts the ones that are
// alive (a watch that got at least two events in the hold, a session that
// echoes a line at its end).
//
//	go test -run '^$' -bench StubScale -benchtime 1x -timeout 30m ./e2e/
//	KEYHOLE_SCALE_STREAMS=1000 go test ...   # N (default 10000)
//
// It reports stub-MiB (RSS with the streams open), KiB/stream (RSS),
// heap+stack-KiB/stream (Go heap and stacks in use) and goroutines/stream
// (each over the agents-only baseline) and alive-%. Not a CI
// test: it takes minutes and most of the machine.
func BenchmarkStubScale(b *testing.B) {
	n := 10000
	if v := os.Getenv("KEYHOLE_SCALE_STREAMS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			b.Fatalf("KEYHOLE_SCALE_STREAMS=%q: want a positive number", v)
		}
	}
	const clusters, perCluster = 100, 10
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g := startGateway(b, nil)
	f := g.startFleet(b, clusters, perCluster, 5*time.Second, scaleHandler(ctx))
	token := tokenOf(b, g.kubeconfig("ops"))
	waitFor(b, 180*time.Second, "1,000 agents to connect", func() bool { return g.connected(token) == clusters*perCluster }, g.stub)
	time.Sleep(3 * time.Second) // let the connect burst's garbage go
	base := g.stubUsage(b)
	b.Logf("stub with %d agent sessions and no stream: RSS %.1f MiB, %d goroutines", clusters*perCluster, base.rssMiB(), base.goroutines)

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(g.caPEM)
	tlsCfg := &tls.Config{RootCAs: pool}
	path := func(i int) string {
		return fmt.Sprintf("/clusters/fleet-%02d/api/v1/namespaces/default/", i%clusters)
	}
	report := func(b *testing.B, kind string, u stubUsage, alive int) {
		b.ReportMetric(u.rssMiB(), "stub-MiB")
		b.ReportMetric(float64(u.rssKiB-base.rssKiB)/float64(n), "KiB/stream")
		b.ReportMetric(float64(u.heapStackKiB-base.heapStackKiB)/float64(n), "heap+stack-KiB/stream")
		b.ReportMetric(float64(u.goroutines-base.goroutines)/float64(n), "goroutines/stream")
		b.ReportMetric(100*float64(alive)/float64(n), "alive-%")
		b.Logf("stub with %d agents and %d idle %s: RSS %.1f MiB (peak %.1f), %d goroutines; %d alive",
			clusters*perCluster, n, kind, u.rssMiB(), float64(u.hwmKiB)/1024, u.goroutines, alive)
		if alive != n {
			b.Errorf("%d of %d %s alive", alive, n, kind)
		}
	}

	b.Run("watch", func(b *testing.B) {
		tr := &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 100}
		defer tr.CloseIdleConnections()
		client := &http.Client{Transport: tr}
		wctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		var opened, failed atomic.Int64
		events := make([]atomic.Int64, n)
		sem := make(chan struct{}, 64)
		for i := range n {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, _ := http.NewRequestWithContext(wctx, "GET", g.url+path(i)+"configmaps?watch=true", nil)
				req.Header.Set("Authorization", "Bearer "+token)
				resp, err := client.Do(req)
				<-sem
				if err != nil || resp.StatusCode != 200 {
					failed.Add(1)
					if err == nil {
						resp.Body.Close()
					}
					return
				}
				defer resp.Body.Close()
				opened.Add(1)
				sc := bufio.NewScanner(resp.Body)
				for sc.Scan() {
					events[i].Add(1)
				}
			}()
		}
		waitFor(b, 10*time.Minute, "the watches to open", func() bool { return opened.Load()+failed.Load() == int64(n) }, g.stub)
		if failed.Load() > 0 {
			b.Errorf("%d watches failed to open", failed.Load())
		}
		start := make([]int64, n)
		for i := range events {
			start[i] = events[i].Load()
		}
		time.Sleep(25 * time.Second)
		u := g.stubUsage(b)
		alive := 0
		for i := range events {
			if events[i].Load()-start[i] >= 2 {
				alive++
			}
		}
		report(b, "watches", u, alive)
		stop()
		wg.Wait()
	})
	g.waitIdle(b, base)

	b.Run("exec", func(b *testing.B) {
		type session struct {
			c  *tls.Conn
			br *bufio.Reader
		}
		sessions := make([]session, n)
		var wg sync.WaitGroup
		var failed atomic.Int64
		var firstErr atomic.Value
		sem := make(chan struct{}, 32)
		addr := strings.TrimPrefix(g.url, "https://")
		for i := range n {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				c, br, err := openSession(addr, tlsCfg, path(i)+"pods/p/exec?command=sh", token)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					return
				}
				sessions[i] = session{c, br}
			}()
		}
		wg.Wait()
		defer func() {
			for _, s := range sessions {
				if s.c != nil {
					s.c.Close()
				}
			}
		}()
		if failed.Load() > 0 {
			b.Errorf("%d sessions failed to open; the first: %v", failed.Load(), firstErr.Load())
		}
		time.Sleep(25 * time.Second)
		u := g.stubUsage(b)
		var alive atomic.Int64
		for i := range sessions {
			s := sessions[i]
			if s.c == nil {
				continue
			}
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				_ = s.c.SetDeadline(time.Now().Add(30 * time.Second))
				if _, err := io.WriteString(s.c, "ping\n"); err != nil {
					return
				}
				if line, err := s.br.ReadString('\n'); err == nil && line == "ping\n" {
					alive.Add(1)
				}
			}()
		}
		wg.Wait()
		report(b, "exec sessions", u, int(alive.Load()))
	})
	f.stop()
}

// openSession opens an exec-like session: HTTP/1.1 over TLS, upgraded.
func openSession(addr string, cfg *tls.Config, path, token string) (*tls.Conn, *bufio.Reader, error) {
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"http/1.1"}
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return nil, nil, err
	}
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n", path, addr, token)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		c.Close()
		return nil, nil, fmt.Errorf("%s: %s", resp.Status, body)
	}
	_ = c.SetDeadline(time.Time{})
	return c, br, nil
}

// scaleHandler is the fleet's API server: a watch gets one event per 10 s
// until it ends; an upgrade request gets 101 and an echo of its stream.
func scaleHandler(ctx context.Context) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "" {
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + r.Header.Get("Upgrade") + "\r\n\r\n")
			if brw.Flush() != nil {
				return
			}
			stop := context.AfterFunc(ctx, func() { c.Close() })
			defer stop()
			_, _ = io.Copy(c, brw)
			return
		}
		if r.URL.Query().Get("watch") != "true" {
			_, _ = io.WriteString(w, "ok")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		rc := http.NewResponseController(w)
		if rc.Flush() != nil {
			return
		}
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-r.Context().Done():
				return
			case <-ctx.Done():
				return
			case <-t.C:
				if _, err := io.WriteString(w, `{"type":"BOOKMARK","object":{"kind":"ConfigMap","apiVersion":"v1","metadata":{"resourceVersion":"1"}}}`+"\n"); err != nil {
					return
				}
				if rc.Flush() != nil {
					return
				}
			}
		}
	})
}

// stubUsage is the stub process's resident memory and goroutines.
type stubUsage struct {
	rssKiB, hwmKiB int64
	// heapStackKiB is the Go heap and stacks in use
	// (go_memstats_heap_inuse_bytes + go_memstats_stack_inuse_bytes): less
	// noisy than RSS, which also holds garbage not yet collected.
	heapStackKiB int64
	goroutines   int
}

func (u stubUsage) rssMiB() float64 { return float64(u.rssKiB) / 1024 }

func (g *gateway) stubUsage(tb testing.TB) stubUsage {
	tb.Helper()
	var u stubUsage
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", g.stub.cmd.Process.Pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == "VmRSS:" || f[0] == "VmHWM:") {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			if f[0] == "VmRSS:" {
				u.rssKiB = v
			} else {
				u.hwmKiB = v
			}
		}
	}
	u.goroutines = int(g.metric(tb, "go_goroutines"))
	if u.goroutines <= 0 {
		tb.Fatal("no go_goroutines on the stub's metrics endpoint")
	}
	u.heapStackKiB = int64((g.metric(tb, "go_memstats_heap_inuse_bytes") + g.metric(tb, "go_memstats_stack_inuse_bytes")) / 1024)
	return u
}

// waitIdle waits until the stub's goroutines are back near base (the
// streams of a finished sub-benchmark are gone).
func (g *gateway) waitIdle(tb testing.TB, base stubUsage) {
	tb.Helper()
	waitFor(tb, 2*time.Minute, "the stub's streams to end", func() bool {
		return g.stubUsage(tb).goroutines < base.goroutines+100
	}, g.stub)
}

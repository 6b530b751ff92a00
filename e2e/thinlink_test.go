package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"golang.org/x/sys/unix"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
	"github.com/keyhole-dev/keyhole/tunnel"
)

// TestThinUplink (issue 9, item 2): the agent's link to the stub is thin
// (2 Mbit/s each way, 100 ms round trip) and full of bulk traffic: ten
// `kubectl exec POD -- head -c 200000000 /dev/zero` through one agent,
// a watch, and a small request every second. The session must survive bulk
// traffic that keeps moving, a dead link must still be noticed within the
// keepalive bound, and the small requests are timed against what the same
// link gives a direct HTTP/2 connection and a direct kubectl.
//
// Topology. Everything runs in the root network namespace on 127.0.0.1
// (the harness as is) except one hop that crosses a veth pair into a
// network namespace made for this test and back:
//
//	agent ──lo──▶ delay relay (127.0.0.1:R, +50 ms each way)
//	          ──veth, tbf 2 Mbit/s──▶ forwarder (listens inside the netns)
//	          ──lo──▶ stub
//
// and the way back through the same sockets, whose veth end is shaped too.
// The baselines take the same kind of path (their own relay and forwarder
// over the same veth) to their servers: an in-process Go HTTP/2 server
// (one client connection, 10 bulk streams) and the kube-apiserver (kubectl
// as a user without Keyhole would run it).
//
// What the relay cannot model: the 100 ms are in user space, so the TCP of
// each endpoint (the agent, the HTTP/2 server, the kube-apiserver) sees only
// its loopback hop to the relay or forwarder, with the loopback MSS (about
// 64 KiB instead of 1448). Linux sizes an auto-tuned send buffer from MSS ×
// congestion window, so every sender here gets the tcp_wmem maximum, 4 MiB
// (about 16 s at 2 Mbit/s), of kernel send buffer: what a sender on a real
// link gets once its window has grown into a bloated queue, and several
// times what the same formula gives on a clean 2 Mbit/s, 100 ms path with
// BBR (about 0.5 MiB). The relay reads no faster than the link carries, so that buffer
// fills: whatever a sender queues behind its bulk data there (a keepalive
// answer, a small response) waits for it. The Send-Q figures (ss) show how
// much each sender's kernel held. Both the gateway and the baselines live
// with the same effect, so their figures compare.
//
// Figures (latencies, throughput, detection time) are logged, not asserted:
// they depend on the machine's load. What is asserted is correctness: no
// session lost under bulk traffic, every small request answered, every
// download still moving, the watch still delivering, and a dead link
// noticed within keepalive interval + timeout plus slack.
func TestThinUplink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestThinUplink needs root: it makes a network namespace, a veth pair and tbf qdiscs (ip, tc)")
	}
	for _, tool := range []string{"ip", "tc", "ss"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("TestThinUplink needs %s (iproute2): %v", tool, err)
		}
	}
	start := time.Now()
	c := kubetest.Start(t)
	link := startThinLink(t)
	t.Logf("link: netns %s, veth %s/%s %s <-> %s, tbf %s on both ends, +%v each way in the relay",
		link.ns, link.hostDev, link.nsDev, link.hostIP, link.nsIP, thinRate, thinOneWay)
	link.calibrate(t)

	// The pod whose exec runs real commands (nodesim runs them on the host).
	c.CreatePod(t, "default", "thin-bulk", nil)

	thinBaselineHTTP2(t, link)
	thinBaselineKubectl(t, c, link)
	thinGateway(t, c, link)
	t.Logf("TestThinUplink took %v", time.Since(start).Round(time.Second))
}

// The link and the load.
const (
	thinRate   = "2mbit"
	thinBitsPS = 2e6
	thinOneWay = 50 * time.Millisecond
	thinBulkN  = 10
	// thinHeadBytes is far more than the link carries in a run: every
	// download is still running when the phase ends.
	thinHeadBytes = "200000000"
	// A phase: bulk streams start, run thinWarmup alone, then a small
	// request starts every second until the phase ends (those in flight
	// then are waited for, bulk still running). The last thinRecent of a
	// phase is where every download must have received bytes.
	thinWarmup        = 5 * time.Second
	thinRecent        = 10 * time.Second
	thinGatewayPhase  = 30 * time.Second
	thinBaselinePhase = 20 * time.Second
	// thinSmallTimeout bounds one small request.
	thinSmallTimeout = 30 * time.Second
	// The dead link must be noticed within the documented bound (keepalive
	// interval + keepalive timeout) plus slack for a loaded machine.
	thinDeadBound = tunnel.DefaultKeepAliveInterval + tunnel.DefaultKeepAliveTimeout
	thinDeadSlack = 10 * time.Second
)

// Buffers of the relay and the forwarder. They must not hide what the
// tunnel does: a relay that soaks up megabytes would let the agent's writes
// through at once, and the queue that matters (in front of the agent's
// keepalive answers and small responses) would sit in the relay instead of
// in the tunnel's own buffers. So:
//
//   - relayRcvBuf: SO_RCVBUF of every socket the relay and forwarder read
//     from, set before connect or listen (ListenConfig.Control and
//     Dialer.Control, so it applies from the handshake on and bounds the
//     window the peer sees). The kernel doubles it for bookkeeping; the
//     window stays a few tens of KiB, enough for 2 Mbit/s on a hop whose
//     round trip is the tbf queue only (the 100 ms are in the relay).
//   - relayNotSent: TCP_NOTSENT_LOWAT of every socket they write into, so
//     a write blocks once 16 KiB are waiting unsent in the kernel, instead
//     of filling an auto-tuned send buffer of up to tcp_wmem[2] (4 MiB).
//   - relayChunk, relayLine: the delay line holds chunks of at most 16 KiB
//     stamped with their arrival time and written at arrival + 50 ms; it
//     holds at most 32 KiB in all. A 50 ms wire at 2 Mbit/s holds 12.5 KB,
//     so 32 KiB lets the link run at full rate and adds at most ~130 ms of
//     queue when the link behind it is busy.
const (
	relayRcvBuf  = 16 << 10
	relayNotSent = 16 << 10
	relayChunk   = 16 << 10
	relayLine    = 32 << 10
)

// --- the link -------------------------------------------------------------

// thinLink is a network namespace reached over a veth pair whose two ends
// are both shaped by tbf at thinRate.
type thinLink struct {
	ns             string
	hostDev, nsDev string
	hostIP, nsIP   string
	mu             sync.Mutex
	paths          []*thinPath
}

func runIP(t testing.TB, args ...string) string {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// startThinLink makes the namespace "khthin<pid>" and a veth pair with a
// /30 in 10.200-249.x.y that no interface here uses, and shapes both ends.
// t.Cleanup deletes the namespace, which deletes the pair.
func startThinLink(t *testing.T) *thinLink {
	t.Helper()
	pid := os.Getpid()
	l := &thinLink{ns: fmt.Sprintf("khthin%d", pid), hostDev: fmt.Sprintf("kth%dh", pid), nsDev: fmt.Sprintf("kth%dn", pid)}
	used := runIP(t, "ip", "-o", "-4", "addr", "show") + runIP(t, "ip", "-4", "route", "show", "table", "all")
	for i := 0; ; i++ {
		if i == 100 {
			t.Fatal("no free 10.x.y.z/30 for the veth pair")
		}
		w, x, y := 200+rand.N(50), rand.N(256), 4*rand.N(64)
		prefix := fmt.Sprintf("10.%d.%d.", w, x)
		if !strings.Contains(used, prefix) {
			l.hostIP, l.nsIP = prefix+strconv.Itoa(y+1), prefix+strconv.Itoa(y+2)
			break
		}
	}
	runIP(t, "ip", "netns", "add", l.ns)
	t.Cleanup(func() {
		l.stopPaths() // before the namespace goes: its listeners are ours
		if out, err := exec.Command("ip", "netns", "del", l.ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v %s", l.ns, err, out)
		}
	})
	runIP(t, "ip", "link", "add", l.hostDev, "type", "veth", "peer", "name", l.nsDev, "netns", l.ns)
	runIP(t, "ip", "addr", "add", l.hostIP+"/30", "dev", l.hostDev)
	runIP(t, "ip", "-n", l.ns, "addr", "add", l.nsIP+"/30", "dev", l.nsDev)
	// No GSO super-packets: with gso_max_segs 1 TCP hands the veth
	// wire-sized segments, so tbf meters what a real link would carry
	// (tbf would otherwise have to split 64 KiB super-packets larger than
	// its burst itself). calibrate checks the resulting rate.
	runIP(t, "ip", "link", "set", l.hostDev, "gso_max_segs", "1", "up")
	runIP(t, "ip", "-n", l.ns, "link", "set", l.nsDev, "gso_max_segs", "1", "up")
	runIP(t, "ip", "-n", l.ns, "link", "set", "lo", "up")
	tbf := []string{"root", "tbf", "rate", thinRate, "burst", "32kbit", "latency", "400ms"}
	runIP(t, append([]string{"tc", "qdisc", "add", "dev", l.hostDev}, tbf...)...)
	runIP(t, append([]string{"tc", "-n", l.ns, "qdisc", "add", "dev", l.nsDev}, tbf...)...)
	return l
}

// relaySockopts is the Control of every listener and dialer of the relay
// and the forwarder: small SO_RCVBUF and TCP_NOTSENT_LOWAT (see relayRcvBuf).
func relaySockopts(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, relayRcvBuf)
		if serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, relayNotSent)
		}
	}); err != nil {
		return err
	}
	return serr
}

// setNotSent sets TCP_NOTSENT_LOWAT on an accepted connection (it is not
// part of what a listener's accepted sockets are guaranteed to inherit).
func setNotSent(c net.Conn) error {
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, relayNotSent)
	}); err != nil {
		return err
	}
	return serr
}

// listenInNS opens a TCP listener on the namespace side of the veth. The
// socket is made on an OS thread that entered the namespace (setns) and
// went back before any other goroutine could run on it; a socket stays in
// the namespace it was made in, and the connections it accepts too.
func (l *thinLink) listenInNS() (net.Listener, error) {
	return listenIn(l.ns, net.JoinHostPort(l.nsIP, "0"), &net.ListenConfig{Control: relaySockopts})
}

// thinPath is one way to a server at target across the link: a delay relay
// on 127.0.0.1 whose connections go over the veth to a forwarder inside the
// namespace, which dials target from the root namespace.
type thinPath struct {
	relay *delayRelay
	fwd   *forwarder
}

// path starts a relay and a forwarder to target; clients dial addr().
func (l *thinLink) path(t *testing.T, target string) *thinPath {
	t.Helper()
	nsLn, err := l.listenInNS()
	if err != nil {
		t.Fatalf("listen in %s: %v", l.ns, err)
	}
	f := startForwarder(nsLn, target)
	r, err := startDelayRelay(nsLn.Addr().String(), thinOneWay)
	if err != nil {
		f.stop()
		t.Fatal(err)
	}
	p := &thinPath{relay: r, fwd: f}
	l.mu.Lock()
	l.paths = append(l.paths, p)
	l.mu.Unlock()
	return p
}

func (p *thinPath) addr() string { return p.relay.ln.Addr().String() }
func (p *thinPath) port() string { return strconv.Itoa(p.relay.ln.Addr().(*net.TCPAddr).Port) }

func (l *thinLink) stopPaths() {
	l.mu.Lock()
	paths := l.paths
	l.paths = nil
	l.mu.Unlock()
	for _, p := range paths {
		p.relay.stop()
		p.fwd.stop()
	}
}

// byteBudget bounds the bytes in a delay line.
type byteBudget struct {
	mu     sync.Mutex
	cond   *sync.Cond
	used   int
	max    int
	closed bool
}

func newByteBudget(max int) *byteBudget {
	b := &byteBudget{max: max}
	b.cond = sync.NewCond(&b.mu)
	return b
}

func (b *byteBudget) take(n int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for !b.closed && b.used+n > b.max {
		b.cond.Wait()
	}
	if b.closed {
		return false
	}
	b.used += n
	return true
}

func (b *byteBudget) give(n int) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
	b.cond.Broadcast()
}

func (b *byteBudget) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.cond.Broadcast()
}

// connSet tracks the connections of a relay or forwarder for stop.
type connSet struct {
	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
	wg     sync.WaitGroup
}

func (s *connSet) add(cs ...net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	if s.conns == nil {
		s.conns = map[net.Conn]bool{}
	}
	for _, c := range cs {
		s.conns[c] = true
	}
	return true
}

func (s *connSet) drop(cs ...net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range cs {
		c.Close()
		delete(s.conns, c)
	}
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.conns = nil
	s.mu.Unlock()
}

// serve accepts on ln until it closes; each connection gets one to target
// (dialled on network), both are kept in s, and pipe copies between them.
// end, called by either direction when it ends, drops both. The accept
// loop is one of s's goroutines.
func (s *connSet) serve(ln net.Listener, network, target string, pipe func(front, back net.Conn, end func())) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		d := net.Dialer{Timeout: 5 * time.Second, Control: relaySockopts}
		for {
			front, err := ln.Accept()
			if err != nil {
				return
			}
			_ = setNotSent(front)
			back, err := d.Dial(network, target)
			if err != nil {
				front.Close()
				continue
			}
			if !s.add(front, back) {
				return
			}
			var ends atomic.Int32
			pipe(front, back, func() {
				if ends.Add(1) == 1 { // either direction ending ends both
					s.drop(front, back)
				}
			})
		}
	}()
}

// delayRelay accepts on 127.0.0.1 and forwards each connection to `to`,
// delaying each direction by `delay` through a bounded delay line.
type delayRelay struct {
	ln    net.Listener
	to    string
	delay time.Duration
	conns connSet
	once  sync.Once
}

func startDelayRelay(to string, delay time.Duration) (*delayRelay, error) {
	ln, err := (&net.ListenConfig{Control: relaySockopts}).Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &delayRelay{ln: ln, to: to, delay: delay}
	r.conns.serve(ln, "tcp4", to, func(front, back net.Conn, end func()) {
		delayPipe(back, front, delay, &r.conns.wg, end)
		delayPipe(front, back, delay, &r.conns.wg, end)
	})
	return r, nil
}

func (r *delayRelay) stop() {
	r.once.Do(func() {
		r.ln.Close()
		r.conns.closeAll()
		r.conns.wg.Wait()
	})
}

type delayedChunk struct {
	b   []byte
	due time.Time
}

// delayPipe copies src to dst, each chunk written delay after it was read.
// The reader takes a chunk's worth of the line's byte budget before each
// read and gives back what the read did not fill; the writer gives back
// what it wrote. When either side fails, end is called (it closes both
// connections) and both goroutines return.
func delayPipe(dst, src net.Conn, delay time.Duration, wg *sync.WaitGroup, end func()) {
	budget := newByteBudget(relayLine)
	line := make(chan delayedChunk, relayLine/512)
	wg.Add(2)
	go func() {
		defer wg.Done()
		defer close(line)
		for budget.take(relayChunk) {
			b := make([]byte, relayChunk)
			n, err := src.Read(b)
			budget.give(relayChunk - n)
			if n > 0 {
				line <- delayedChunk{b[:n], time.Now().Add(delay)}
			}
			if err != nil {
				end()
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		failed := false
		for c := range line {
			if !failed {
				time.Sleep(time.Until(c.due))
				if _, err := dst.Write(c.b); err != nil {
					failed = true
					end()
					budget.close()
				}
			}
			budget.give(len(c.b))
		}
		budget.close()
	}()
}

// forwarder accepts inside the namespace and forwards each connection to
// target (dialed from the root namespace). blackHole makes it stop reading
// and writing on every connection, old and new, without closing any: a path
// that went silent, as a dead link or a middlebox that dropped its state.
type forwarder struct {
	ln     net.Listener
	target string
	conns  connSet
	once   sync.Once

	mu     sync.Mutex
	cond   *sync.Cond
	paused bool
	done   bool
}

func startForwarder(ln net.Listener, target string) *forwarder {
	f := &forwarder{ln: ln, target: target}
	f.cond = sync.NewCond(&f.mu)
	f.conns.serve(ln, "tcp", target, func(front, back net.Conn, end func()) {
		f.conns.wg.Add(2)
		go f.pipe(back, front, end)
		go f.pipe(front, back, end)
	})
	return f
}

// gate waits while the forwarder is black-holed; false once it stopped.
func (f *forwarder) gate() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for f.paused && !f.done {
		f.cond.Wait()
	}
	return !f.done
}

func (f *forwarder) pipe(dst, src net.Conn, end func()) {
	defer f.conns.wg.Done()
	defer end()
	buf := make([]byte, relayChunk)
	for f.gate() {
		n, err := src.Read(buf)
		if n > 0 {
			if !f.gate() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (f *forwarder) blackHole() {
	f.mu.Lock()
	f.paused = true
	f.mu.Unlock()
}

func (f *forwarder) stop() {
	f.once.Do(func() {
		f.mu.Lock()
		f.done = true
		f.mu.Unlock()
		f.cond.Broadcast()
		f.ln.Close()
		f.conns.closeAll()
		f.conns.wg.Wait()
	})
}

// calibrate measures the path's round trip and its rate both ways at once
// (through a relay and forwarder, as every run uses it) and fails if the
// link is not thin or not 100 ms long.
func (l *thinLink) calibrate(t *testing.T) {
	t.Helper()
	const (
		total  = 5 * time.Second
		skip   = 1500 * time.Millisecond // TCP start-up and tbf's burst
		window = total - skip
	)
	srv, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { srv.Close(); wg.Wait() })
	upAt := make(chan int64, 1) // bytes the server received in the window
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := srv.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(total + 5*time.Second))
				mode := make([]byte, 1)
				if _, err := io.ReadFull(c, mode); err != nil {
					return
				}
				switch mode[0] {
				case 'e':
					_, _ = io.Copy(c, c)
				case 'u':
					upAt <- countWindow(c, skip, window)
				case 'd':
					zeros := make([]byte, 32<<10)
					for {
						if _, err := c.Write(zeros); err != nil {
							return
						}
					}
				}
			}()
		}
	}()
	p := l.path(t, srv.Addr().String())
	dial := func(mode byte) net.Conn {
		c, err := net.DialTimeout("tcp4", p.addr(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(total + 5*time.Second))
		if _, err := c.Write([]byte{mode}); err != nil {
			t.Fatal(err)
		}
		return c
	}
	// The round trip, idle: a byte echoed five times.
	echo := dial('e')
	var rtts []time.Duration
	for range 5 {
		begin := time.Now()
		if _, err := echo.Write([]byte{'x'}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(echo, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		rtts = append(rtts, time.Since(begin))
	}
	echo.Close()
	t.Logf("link round trip through relay and forwarder, idle (1-byte echo, 5 times): min %v, max %v",
		slices.Min(rtts).Round(100*time.Microsecond), slices.Max(rtts).Round(100*time.Microsecond))
	if slices.Min(rtts) < 2*thinOneWay {
		t.Fatalf("the path's round trip is %v; the relay should add %v each way", slices.Min(rtts), thinOneWay)
	}
	up, down := dial('u'), dial('d')
	defer up.Close()
	defer down.Close()
	go func() {
		zeros := make([]byte, 32<<10)
		for {
			if _, err := up.Write(zeros); err != nil {
				return
			}
		}
	}()
	downBytes := countWindow(down, skip, window)
	var upBytes int64
	select {
	case upBytes = <-upAt:
	case <-time.After(10 * time.Second):
		t.Fatal("calibration: the upload was never counted")
	}
	upRate, downRate := float64(upBytes)*8/window.Seconds(), float64(downBytes)*8/window.Seconds()
	t.Logf("link calibration (both directions at once, payload bytes over %v after %v): relay->netns %.2f Mbit/s, netns->relay %.2f Mbit/s (tbf %s)",
		window, skip, upRate/1e6, downRate/1e6, thinRate)
	for _, r := range []float64{upRate, downRate} {
		// The tests below mean something only on a thin link.
		if r > 1.25*thinBitsPS || r < 0.25*thinBitsPS {
			t.Fatalf("the shaped link carries %.2f Mbit/s; want about %s (is tbf in place, are GSO packets passing it?)", r/1e6, thinRate)
		}
	}
}

// countWindow reads r for skip+window and returns the bytes read during
// the window.
func countWindow(r io.Reader, skip, window time.Duration) int64 {
	start := time.Now()
	var atSkip, n int64
	skipped := false
	buf := make([]byte, 32<<10)
	for time.Since(start) < skip+window {
		m, err := r.Read(buf)
		n += int64(m)
		if !skipped && time.Since(start) >= skip {
			atSkip, skipped = n, true
		}
		if err != nil {
			break
		}
	}
	return n - atSkip
}

// --- measuring ------------------------------------------------------------

// byteCounter is a Writer that only counts.
type byteCounter struct{ n atomic.Int64 }

func (b *byteCounter) Write(p []byte) (int, error) { b.n.Add(int64(len(p))); return len(p), nil }

// capBuffer keeps the first 4 KiB written to it (stderr of a process).
type capBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (c *capBuffer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := 4<<10 - c.b.Len(); room > 0 {
		c.b.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

func (c *capBuffer) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.TrimSpace(c.b.String())
}

// smallSeries sends a small request every second and keeps its latencies
// and failures.
type smallSeries struct {
	name string
	mu   sync.Mutex
	lat  []time.Duration
	errs []string
	done chan struct{}
}

// startSmall starts a call of f every second (without waiting for the
// previous one, as a user's `kubectl get ns` in a loop of its own would not
// wait for a stuck one), at most 120, until ctx ends. Calls still in flight
// then are waited for: each is bounded by thinSmallTimeout, not by ctx, so
// a slow answer is measured instead of cut.
func startSmall(ctx context.Context, name string, f func(ctx context.Context) error) *smallSeries {
	s := &smallSeries{name: name, done: make(chan struct{})}
	go func() {
		var wg sync.WaitGroup
		defer func() { wg.Wait(); close(s.done) }()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for i := 0; i < 120 && ctx.Err() == nil; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rctx, cancel := context.WithTimeout(context.Background(), thinSmallTimeout)
				defer cancel()
				begin := time.Now()
				err := f(rctx)
				took := time.Since(begin)
				s.mu.Lock()
				defer s.mu.Unlock()
				if err != nil {
					s.errs = append(s.errs, fmt.Sprintf("at %s after %v: %v", begin.Format("15:04:05.000"), took.Round(time.Millisecond), err))
				} else {
					s.lat = append(s.lat, took)
				}
			}()
			select {
			case <-ctx.Done():
			case <-tick.C:
			}
		}
	}()
	return s
}

// report logs the series' latencies and fails the test for its failures.
func (s *smallSeries) report(t *testing.T) {
	t.Helper()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	t.Logf("%s: %s", s.name, latencyFigures(s.lat, len(s.errs)))
	if len(s.lat) == 0 && len(s.errs) == 0 {
		t.Errorf("%s: no request was made", s.name)
	}
	for _, e := range s.errs {
		t.Errorf("%s failed %s", s.name, e)
	}
}

// latencyFigures is "p50 … ms, p95 … ms, max … ms (n ok, m failed)".
func latencyFigures(lat []time.Duration, failed int) string {
	if len(lat) == 0 {
		return fmt.Sprintf("no successful request (%d failed)", failed)
	}
	s := slices.Clone(lat)
	slices.Sort(s)
	q := func(p float64) int64 {
		i := int(float64(len(s))*p+0.5) - 1
		return s[min(max(i, 0), len(s)-1)].Milliseconds()
	}
	return fmt.Sprintf("small request latency p50 %d ms, p95 %d ms, max %d ms (%d ok, %d failed)", q(0.50), q(0.95), s[len(s)-1].Milliseconds(), len(s), failed)
}

// sendQ samples, once a second until ctx ends, the Send-Q (bytes written
// and not yet acknowledged by the peer) summed over the established TCP
// sockets that match an ss filter, e.g. "( dport = :1234 )", and keeps
// ss's details (mss, cwnd, skmem) of the largest sample.
type sendQ struct {
	mu      sync.Mutex
	samples []int64
	largest string
	done    chan struct{}
}

func sampleSendQ(ctx context.Context, filter string) *sendQ {
	q := &sendQ{done: make(chan struct{})}
	go func() {
		defer close(q.done)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for i := 0; i < 120; i++ {
			out, err := exec.CommandContext(ctx, "ss", "-tnmiH", "state", "established", filter).Output()
			if err == nil {
				var sum int64
				for _, line := range strings.Split(string(out), "\n") {
					if f := strings.Fields(line); len(f) >= 2 && line[0] != ' ' && line[0] != '\t' {
						n, _ := strconv.ParseInt(f[1], 10, 64)
						sum += n
					}
				}
				q.mu.Lock()
				if len(q.samples) == 0 || sum > slices.Max(q.samples) {
					q.largest = string(out)
				}
				q.samples = append(q.samples, sum)
				q.mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return q
}

var (
	ssMSS    = regexp.MustCompile(`\bmss:(\d+)`)
	ssCwnd   = regexp.MustCompile(`\bcwnd:(\d+)`)
	ssSndbuf = regexp.MustCompile(`skmem:\([^)]*\btb(\d+)`)
)

func (q *sendQ) figures() string {
	<-q.done
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.samples) == 0 {
		return "no samples"
	}
	s := slices.Clone(q.samples)
	slices.Sort(s)
	kib := func(n int64) string {
		return fmt.Sprintf("%d KiB (%.1f s at %s)", n>>10, float64(n)*8/thinBitsPS, thinRate)
	}
	detail := ""
	for _, re := range []struct {
		name string
		re   *regexp.Regexp
	}{{"mss", ssMSS}, {"cwnd", ssCwnd}, {"send buffer", ssSndbuf}} {
		if m := re.re.FindStringSubmatch(q.largest); m != nil {
			detail += fmt.Sprintf(", %s %s", re.name, m[1])
		}
	}
	return fmt.Sprintf("p50 %s, max %s (%d samples; at the max%s)", kib(s[len(s)/2]), kib(s[len(s)-1]), len(s), detail)
}

// bulkPhase runs a phase: bulk streams are running already; it waits out
// the warm-up, starts the small-request series (each from start), lets the
// phase run to its end and returns the aggregate throughput in Mbit/s over
// the measured part and, per stream, the bytes received in the last
// thinRecent. When it returns, no small request is in flight any more.
func bulkPhase(t *testing.T, name string, phase time.Duration, streams []*byteCounter, small ...func(ctx context.Context) *smallSeries) (mbits float64, recent []int64, series []*smallSeries) {
	t.Helper()
	time.Sleep(thinWarmup)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, s := range small {
		series = append(series, s(ctx))
	}
	sum := func() (n int64) {
		for _, s := range streams {
			n += s.n.Load()
		}
		return n
	}
	snap := func() []int64 {
		out := make([]int64, len(streams))
		for i, s := range streams {
			out[i] = s.n.Load()
		}
		return out
	}
	from, began, cpuFrom := sum(), time.Now(), cpuJiffies()
	time.Sleep(phase - thinWarmup - thinRecent)
	before := snap()
	time.Sleep(thinRecent)
	after := snap()
	mbits = float64(sum()-from) * 8 / time.Since(began).Seconds() / 1e6
	if cpuTo := cpuJiffies(); cpuTo[1] > cpuFrom[1] {
		t.Logf("%s: the machine's CPUs were %.0f%% busy during the measured part (%d CPUs, /proc/stat)",
			name, 100*float64(cpuTo[0]-cpuFrom[0])/float64(cpuTo[1]-cpuFrom[1]), runtime.NumCPU())
	}
	for i := range after {
		recent = append(recent, after[i]-before[i])
	}
	cancel()
	for _, s := range series {
		<-s.done
	}
	return mbits, recent, series
}

// cpuJiffies is the machine's busy and total CPU time so far (the "cpu"
// line of /proc/stat; idle and iowait are not busy).
func cpuJiffies() [2]int64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return [2]int64{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	var busy, total int64
	for i, f := range strings.Fields(line)[1:] {
		n, _ := strconv.ParseInt(f, 10, 64)
		if i >= 8 { // guest time is counted in user already
			break
		}
		total += n
		if i != 3 && i != 4 {
			busy += n
		}
	}
	return [2]int64{busy, total}
}

// --- the runs -------------------------------------------------------------

// thinBaselineHTTP2: one Go HTTP/2 client connection across the link to an
// in-process Go TLS HTTP/2 server (net/http, as kube-apiserver uses),
// carrying 10 endless /bulk streams and a /small request every second.
func thinBaselineHTTP2(t *testing.T, link *thinLink) {
	mux := http.NewServeMux()
	mux.HandleFunc("/bulk", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		rc := http.NewResponseController(w)
		zeros := make([]byte, 32<<10)
		for r.Context().Err() == nil {
			if _, err := w.Write(zeros); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
		}
	})
	small, _ := json.Marshal(map[string]string{"kind": "Small", "pad": strings.Repeat("x", 1000)})
	mux.HandleFunc("/small", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(small)
	})
	ts := httptest.NewUnstartedServer(mux)
	ts.EnableHTTP2 = true
	ts.StartTLS()
	t.Cleanup(ts.Close)
	p := link.path(t, ts.Listener.Addr().String())
	pool := x509.NewCertPool()
	pool.AddCert(ts.Certificate())
	var dials atomic.Int32
	d := net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true, MaxConnsPerHost: 1,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return d.DialContext(ctx, network, addr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr}
	base := "https://" + p.addr()
	getSmall := func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, "GET", base+"/small", nil)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil && (resp.StatusCode != http.StatusOK || !bytes.Equal(b, small)) {
			err = fmt.Errorf("%s, %d bytes", resp.Status, len(b))
		}
		if err == nil && resp.ProtoMajor != 2 {
			err = fmt.Errorf("got %s, want HTTP/2", resp.Proto)
		}
		return err
	}
	// The connection first, so the bulk streams share it.
	if err := bounded(getSmall); err != nil {
		t.Fatalf("baseline HTTP/2: first /small: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	streams := make([]*byteCounter, thinBulkN)
	bulkErrs := make([]error, thinBulkN)
	for i := range streams {
		streams[i] = &byteCounter{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, "GET", base+"/bulk", nil)
			resp, err := client.Do(req)
			if err == nil {
				_, err = io.Copy(streams[i], resp.Body)
				resp.Body.Close()
			}
			if ctx.Err() == nil {
				bulkErrs[i] = err // set only before the end of the phase
			}
		}()
	}
	serverQ := sampleSendQ(ctx, "( sport = :"+strconv.Itoa(ts.Listener.Addr().(*net.TCPAddr).Port)+" )")
	mbits, recent, series := bulkPhase(t, "baseline HTTP/2 direct", thinBaselinePhase, streams, func(ctx context.Context) *smallSeries {
		return startSmall(ctx, "baseline HTTP/2 direct (1 connection, Go client)", getSmall)
	})
	cancel()
	wg.Wait()
	series[0].report(t)
	t.Logf("baseline HTTP/2 direct: aggregate bulk throughput %.2f Mbit/s over %d streams on 1 connection", mbits, thinBulkN)
	t.Logf("baseline HTTP/2 direct: the server socket's Send-Q %s", serverQ.figures())
	if n := dials.Load(); n != 1 {
		t.Errorf("baseline HTTP/2: %d connections dialed, want 1", n)
	}
	for i, r := range recent {
		if bulkErrs[i] != nil || r == 0 {
			t.Errorf("baseline HTTP/2: bulk stream %d: %d bytes in the last %v, %v", i, r, thinRecent, bulkErrs[i])
		}
	}
}

// execDownload is one `kubectl exec POD -- head -c … /dev/zero` whose
// stdout is counted, never kept.
type execDownload struct {
	cmd  *exec.Cmd
	out  byteCounter
	errb capBuffer
	done chan struct{}
	err  error // once done is closed
}

func (d *execDownload) running() bool {
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

// startDownloads starts thinBulkN downloads from pod with kubeconfig; the
// returned stop cancels them (kubectl is killed by PID) and waits.
func startDownloads(t *testing.T, c *kubetest.Cluster, kubeconfig, pod string) ([]*execDownload, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var ds []*execDownload
	for range thinBulkN {
		d := &execDownload{done: make(chan struct{})}
		d.cmd = c.KubectlCmdAs(ctx, kubeconfig, "exec", pod, "--", "head", "-c", thinHeadBytes, "/dev/zero")
		d.cmd.Stdout, d.cmd.Stderr = &d.out, &d.errb
		if err := d.cmd.Start(); err != nil {
			cancel()
			t.Fatal(err)
		}
		go func() { d.err = d.cmd.Wait(); close(d.done) }()
		ds = append(ds, d)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			for _, d := range ds {
				<-d.done
			}
		})
	}
	t.Cleanup(stop)
	return ds, stop
}

func counters(ds []*execDownload) []*byteCounter {
	out := make([]*byteCounter, len(ds))
	for i, d := range ds {
		out[i] = &d.out
	}
	return out
}

// checkDownloads fails the test for every download that ended or received
// nothing in the last thinRecent.
func checkDownloads(t *testing.T, what string, ds []*execDownload, recent []int64) {
	t.Helper()
	for i, d := range ds {
		if !d.running() {
			t.Errorf("%s: download %d ended after %d bytes: %v; stderr: %s", what, i, d.out.n.Load(), d.err, d.errb.String())
		} else if recent[i] == 0 {
			t.Errorf("%s: download %d received nothing in the last %v (%d bytes in all)", what, i, thinRecent, d.out.n.Load())
		}
	}
}

// kubectlSmall is `kubectl get ns -o name`, bounded by ctx.
func kubectlSmall(c *kubetest.Cluster, kubeconfig string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		cmd := c.KubectlCmdAs(ctx, kubeconfig, "get", "ns", "-o", "name")
		var out bytes.Buffer
		var errb capBuffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%v: %s", err, errb.String())
		}
		if !strings.Contains(out.String(), "namespace/kube-system") {
			return fmt.Errorf("unexpected output %q", out.String())
		}
		return nil
	}
}

// traceKubectl runs one `kubectl get ns -v=6` after a while (into the
// bulk phase) and returns, through the func, where its time went: when
// kubectl logged its first line (its start-up done: the config loaded), when
// it sent each request and how long the answer took, from kubectl's own log
// (klog's time stamp of the response line, less its duration).
func traceKubectl(c *kubetest.Cluster, kubeconfig string, after time.Duration) func() string {
	ch := make(chan string, 1)
	go func() {
		time.Sleep(after)
		ctx, cancel := context.WithTimeout(context.Background(), thinSmallTimeout)
		defer cancel()
		cmd := c.KubectlCmdAs(ctx, kubeconfig, "get", "ns", "-o", "name", "-v=6")
		var errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = io.Discard, &errb
		begin := time.Now()
		err := cmd.Run()
		took := time.Since(begin)
		var reqs []string
		first := ""
		for _, l := range strings.Split(errb.String(), "\n") {
			ts, ms, u := klogTime.FindStringSubmatch(l), klogMillis.FindStringSubmatch(l), klogURL.FindStringSubmatch(l)
			if ts == nil {
				continue
			}
			at, perr := time.ParseInLocation("2006 0102 15:04:05.000000", strconv.Itoa(begin.Year())+" "+ts[1]+" "+ts[2], time.Local)
			if perr != nil {
				continue
			}
			if first == "" { // kubectl's start-up is done (it loaded its config)
				first = fmt.Sprintf("first log line at +%d ms", at.Sub(begin).Milliseconds())
			}
			if ms == nil || u == nil {
				continue
			}
			d, _ := strconv.Atoi(ms[1] + ms[2])
			sent := at.Add(-time.Duration(d) * time.Millisecond)
			reqs = append(reqs, fmt.Sprintf("GET %s sent at +%d ms, answered in %d ms", u[1], sent.Sub(begin).Milliseconds(), d))
		}
		ch <- fmt.Sprintf("took %d ms (err %v); %s; %s", took.Milliseconds(), err, first, strings.Join(reqs, "; "))
	}()
	return func() string { return <-ch }
}

// client-go's response line at -v=6, in either of its forms: `GET URL 200
// OK in 5 milliseconds` or `"Response" verb="GET" url="URL" … milliseconds=5`.
var (
	klogTime   = regexp.MustCompile(`^I(\d{4}) (\d\d:\d\d:\d\d\.\d{6}) `)
	klogMillis = regexp.MustCompile(`milliseconds=(\d+)| in (\d+) milliseconds`)
	klogURL    = regexp.MustCompile(`https://[^/\s"]+(/[^"\s?]*)`)
)

// thinBaselineKubectl: kubectl straight to the kube-apiserver across the
// link, as a user without Keyhole would run it.
func thinBaselineKubectl(t *testing.T, c *kubetest.Cluster, link *thinLink) {
	p := link.path(t, strings.TrimPrefix(c.URL, "https://"))
	b, err := os.ReadFile(c.AdminKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), c.URL) {
		t.Fatalf("admin kubeconfig does not name %s", c.URL)
	}
	kc := filepath.Join(c.Dir, "admin-thin.kubeconfig")
	writeFile(t, kc, strings.ReplaceAll(string(b), c.URL, "https://"+p.addr()))
	getNS := kubectlSmall(c, kc)
	if err := bounded(getNS); err != nil { // discovery cache warm, as for a user
		t.Fatalf("baseline kubectl: first get ns: %v", err)
	}
	ds, stop := startDownloads(t, c, kc, "thin-bulk")
	trace := traceKubectl(c, kc, thinWarmup+5*time.Second)
	mbits, recent, series := bulkPhase(t, "baseline kubectl direct", thinBaselinePhase, counters(ds), func(ctx context.Context) *smallSeries {
		return startSmall(ctx, "baseline kubectl direct (get ns)", getNS)
	})
	checkDownloads(t, "baseline kubectl direct", ds, recent)
	stop()
	series[0].report(t)
	t.Logf("baseline kubectl direct: aggregate exec throughput %.2f Mbit/s over %d kubectl exec", mbits, thinBulkN)
	t.Logf("baseline kubectl direct: one get ns -v=6 during the bulk phase %s", trace())
}

// thinGateway: one agent whose tunnel crosses the link, ten downloads, a
// watch and small requests through the stub; then the link goes dead.
func thinGateway(t *testing.T, c *kubetest.Cluster, link *thinLink) {
	g := startGateway(t, c)
	const cluster = "thin"
	secret, tokenFile := g.install(cluster)
	p := link.path(t, strings.TrimPrefix(g.url, "https://"))
	agentGW := *g
	agentGW.url = "https://" + p.addr() // the stub's certificate names 127.0.0.1
	agent := (&agentGW).startAgent(agentOpts{cluster: cluster, id: "thin1", secretFile: secret, apiURL: c.URL, tokenFile: tokenFile, c: c})
	alice, aliceTok := g.user("alice", "cluster-admin")
	g.waitAgents(aliceTok, cluster, "thin1")
	session := g.status(aliceTok)[cluster].Agents[0].Connected

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(g.caPEM)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr}
	goGet := func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, "GET", g.url+"/clusters/"+cluster+"/api/v1/namespaces", nil)
		req.Header.Set("Authorization", "Bearer "+aliceTok)
		req.Header.Set("Accept", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err == nil && (resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"kube-system"`))) {
			err = fmt.Errorf("%s: %.200s", resp.Status, body)
		}
		return err
	}
	getNS := kubectlSmall(c, alice)
	for _, f := range []func(context.Context) error{goGet, getNS} { // connections and discovery cache warm
		if err := bounded(f); err != nil {
			t.Fatalf("gateway: before the bulk phase: %v", err)
		}
	}

	// The watch, open for the whole phase.
	c.EnsureNamespace(t, "thinwatch")
	wctx, wcancel := context.WithCancel(context.Background())
	watch := c.KubectlCmdAs(wctx, alice, "get", "configmaps", "-n", "thinwatch", "--watch-only", "-o", "name")
	watchOut, err := watch.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var watchErr capBuffer
	watch.Stderr = &watchErr
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wcancel(); _ = watch.Wait() })
	watchLines := readLines(watchOut)
	time.Sleep(time.Second) // let the watch be established

	stubFrom, agentFrom := len(g.stub.logText()), len(agent.logText())
	ds, stop := startDownloads(t, c, alice, "thin-bulk")
	trace := traceKubectl(c, alice, thinWarmup+5*time.Second)
	qctx, qcancel := context.WithCancel(context.Background())
	agentQ := sampleSendQ(qctx, "( dport = :"+p.port()+" )") // the agent's socket towards the relay
	mbits, recent, series := bulkPhase(t, "gateway", thinGatewayPhase, counters(ds), func(ctx context.Context) *smallSeries {
		return startSmall(ctx, "gateway kubectl get ns", getNS)
	}, func(ctx context.Context) *smallSeries {
		return startSmall(ctx, "gateway Go HTTP/2 GET /clusters/thin/api/v1/namespaces", goGet)
	})
	qcancel()

	// The session survived the bulk phase.
	stubLog, agentLog := g.stub.logText()[stubFrom:], agent.logText()[agentFrom:]
	lost := false
	for _, l := range grepLines(stubLog, `"agent disconnected"`, "keepalive failed") {
		t.Errorf("gateway: during the bulk phase the stub logged: %s", l)
		lost = true
	}
	for _, l := range grepLines(agentLog, `"tunnel down"`, "keepalive failed") {
		t.Errorf("gateway: during the bulk phase the agent logged: %s", l)
		lost = true
	}
	if as := g.status(aliceTok)[cluster].Agents; len(as) != 1 || !as[0].Connected.Equal(session) {
		t.Errorf("gateway: the session of %v is gone; agents now: %+v", session, as)
		lost = true
	} else {
		t.Logf("gateway: same session after the bulk phase; the stub's last probe: tunnel RTT %v, error %q", as[0].Health.TunnelRTT, as[0].Health.Error)
	}
	checkDownloads(t, "gateway", ds, recent)
	for _, s := range series {
		s.report(t)
	}
	t.Logf("gateway: aggregate exec throughput %.2f Mbit/s over %d kubectl exec through one agent", mbits, thinBulkN)
	t.Logf("gateway: the agent's tunnel socket Send-Q %s", agentQ.figures())
	t.Logf("gateway: one get ns -v=6 during the bulk phase %s", trace())

	// The watch still delivers.
	created := time.Now()
	if _, err := c.Client().CoreV1().ConfigMaps("thinwatch").Create(context.Background(),
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "after-the-bulk"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case l, ok := <-watchLines:
		switch {
		case !ok:
			t.Errorf("gateway: the watch ended during the bulk phase: %s", watchErr.String())
		case l.text != "configmap/after-the-bulk":
			t.Errorf("gateway: the watch printed %q instead of the new ConfigMap: it broke during the bulk phase (%s)", l.text, watchErr.String())
		default:
			t.Logf("gateway: the watch delivered the event %v after creation", l.at.Sub(created).Round(time.Millisecond))
		}
	case <-time.After(30 * time.Second):
		t.Errorf("gateway: the watch delivered no event within 30 s: %s", watchErr.String())
	}

	// The link goes dead under load: the forwarder black-holes both ways
	// (no FIN, no RST, the sockets stay open). Only keepalive can tell.
	if lost {
		// The session of the phase is gone already; measure on the one the
		// agent made since (it carries no bulk traffic any more).
		waitFor(t, 60*time.Second, "the agent to connect again", func() bool {
			return len(g.status(aliceTok)[cluster].Agents) == 1
		}, g.stub, agent)
		session = g.status(aliceTok)[cluster].Agents[0].Connected
	}
	downs := strings.Count(agent.logText(), `"tunnel down"`)
	dead := time.Now()
	p.fwd.blackHole()
	var stubSaw, agentSaw time.Duration
	limit := thinDeadBound + thinDeadSlack
	for stubSaw == 0 || agentSaw == 0 {
		if time.Since(dead) > limit+10*time.Second {
			break
		}
		if stubSaw == 0 {
			if as := g.status(aliceTok)[cluster].Agents; len(as) == 0 || !as[0].Connected.Equal(session) {
				stubSaw = time.Since(dead)
			}
		}
		if agentSaw == 0 && strings.Count(agent.logText(), `"tunnel down"`) > downs {
			agentSaw = time.Since(dead)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("dead link: the stub dropped the session after %v, the agent saw its tunnel down after %v (bound %v + slack %v)",
		stubSaw.Round(10*time.Millisecond), agentSaw.Round(10*time.Millisecond), thinDeadBound, thinDeadSlack)
	if stubSaw == 0 || stubSaw > limit {
		t.Errorf("dead link: the stub did not drop the session within %v (%v):\n%s", limit, stubSaw, g.stub.tail(20))
	}
	if agentSaw == 0 || agentSaw > limit {
		t.Errorf("dead link: the agent did not see its tunnel down within %v (%v):\n%s", limit, agentSaw, agent.tail(20))
	}
	stop()
}

// bounded calls f with a context that ends after thinSmallTimeout.
func bounded(f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), thinSmallTimeout)
	defer cancel()
	return f(ctx)
}

// grepLines returns the lines of text containing any of subs (at most 10).
func grepLines(text string, subs ...string) []string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		for _, s := range subs {
			if strings.Contains(l, s) {
				out = append(out, l)
				break
			}
		}
		if len(out) == 10 {
			break
		}
	}
	return out
}

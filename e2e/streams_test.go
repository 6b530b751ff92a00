package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

var genCount int

func (s *suite) testStreams(t *testing.T, env []string) {
	genCount++
	pod := fmt.Sprintf("shell-%d", genCount)
	data := startDataServer(t)
	s.c.CreatePod(t, "default", pod, map[string]string{"nodesim.keyhole.dev/port-8080": data})

	t.Run("exec exit code", func(t *testing.T) {
		_, err := s.g.kubectl(s.alice, env, nil, "exec", pod, "--", "sh", "-c", "echo out; exit 7")
		if code := kubetest.ExitCode(err); code != 7 {
			t.Fatalf("exit code %d (%v), want 7", code, err)
		}
	})
	t.Run("exec -i stdin EOF ends the command", func(t *testing.T) {
		out, err := s.g.kubectl(s.alice, env, strings.NewReader("hello\nworld"), "exec", "-i", pod, "--", "cat")
		if err != nil || out != "hello\nworld" {
			t.Fatalf("got %q, %v", out, err)
		}
	})
	t.Run("exec -it with a pty and resize", func(t *testing.T) { s.testTTY(t, env, pod) })
	t.Run("attach", func(t *testing.T) {
		out, err := s.g.kubectl(s.alice, env, strings.NewReader("via attach\n"), "attach", "-i", pod, "-c", "main")
		if err != nil || !strings.Contains(out, "via attach") {
			t.Fatalf("got %q, %v", out, err)
		}
	})
	t.Run("cp 50 MB both ways", func(t *testing.T) {
		dir := t.TempDir()
		src := filepath.Join(dir, "src.bin")
		blob := randomBytes(50<<20, byte(genCount))
		if err := os.WriteFile(src, blob, 0o644); err != nil {
			t.Fatal(err)
		}
		want := sha256.Sum256(blob)
		// The simulated container's filesystem is the host's: use a
		// directory of this test as the path "in the pod".
		podDir := filepath.Join(dir, "pod")
		if err := os.Mkdir(podDir, 0o755); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if out, err := s.g.kubectl(s.alice, env, nil, "cp", src, pod+":"+podDir+"/in.bin"); err != nil {
			t.Fatalf("cp to pod: %v %s", err, out)
		}
		up := time.Since(start)
		if got, _ := os.ReadFile(filepath.Join(podDir, "in.bin")); sha256.Sum256(got) != want {
			t.Fatal("file in the pod differs")
		}
		start = time.Now()
		back := filepath.Join(dir, "back.bin")
		if out, err := s.g.kubectl(s.alice, env, nil, "cp", pod+":"+podDir+"/in.bin", back); err != nil {
			t.Fatalf("cp from pod: %v %s", err, out)
		}
		down := time.Since(start)
		if got, _ := os.ReadFile(back); sha256.Sum256(got) != want {
			t.Fatal("file copied back differs")
		}
		t.Logf("kubectl cp 50 MB: to pod %v, from pod %v", up.Round(time.Millisecond), down.Round(time.Millisecond))
	})
	t.Run("port-forward 100 MB and concurrent connections", func(t *testing.T) {
		local, stop := s.portForward(t, env, pod)
		defer stop()
		start := time.Now()
		download(t, local, 100<<20, 1)
		t.Logf("port-forward: 100 MB from the pod in %v", time.Since(start).Round(time.Millisecond))
		start = time.Now()
		upload(t, local, 100<<20, 2)
		t.Logf("port-forward: 100 MB to the pod in %v", time.Since(start).Round(time.Millisecond))
		var wg sync.WaitGroup
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() { defer wg.Done(); download(t, local, 4<<20, uint64(10+i)) }()
		}
		wg.Wait()
	})
}

func (s *suite) testTTY(t *testing.T, env []string, pod string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := s.c.KubectlCmdAs(ctx, s.alice, "exec", "-it", pod, "--", "sh", "-c", "stty size; read x; stty size; exit 3")
	cmd.Env = append(cmd.Env, env...)
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 31, Cols: 97})
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	var mu sync.Mutex
	var screen bytes.Buffer
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ptmx.Read(buf)
			mu.Lock()
			screen.Write(buf[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	seen := func(s string) bool { mu.Lock(); defer mu.Unlock(); return strings.Contains(screen.String(), s) }
	waitFor(t, 30*time.Second, "first stty size 31 97", func() bool { return seen("31 97") })
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 42, Cols: 123}); err != nil { // SIGWINCH to kubectl
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // let kubectl send the resize before the shell asks
	_, _ = ptmx.Write([]byte("\r"))
	waitFor(t, 30*time.Second, "stty size after resize 42 123", func() bool { return seen("42 123") })
	err = cmd.Wait()
	if code := kubetest.ExitCode(err); code != 3 {
		mu.Lock()
		t.Fatalf("exit code %d (%v), want 3; screen %q", code, err, screen.String())
	}
}

var forwarding = regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) -> 8080`)

// portForward runs kubectl port-forward to the pod's 8080 and returns the
// local address.
func (s *suite) portForward(t *testing.T, env []string, pod string) (string, func()) {
	return portForwardAs(t, s.c, s.alice, env, pod)
}

// portForwardAs runs kubectl port-forward to pod's port 8080 with
// kubeconfig and returns the local address and a stop function.
func portForwardAs(t testing.TB, c *kubetest.Cluster, kubeconfig string, env []string, pod string) (string, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	cmd := c.KubectlCmdAs(ctx, kubeconfig, "port-forward", "pod/"+pod, ":8080", "--address", "127.0.0.1")
	cmd.Env = append(cmd.Env, env...)
	out, _ := cmd.StdoutPipe()
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stop := func() { cancel(); _ = cmd.Wait() }
	sc := bufio.NewScanner(out)
	lines := make(chan string)
	go func() {
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				stop()
				t.Fatalf("port-forward ended: %s", errb.String())
			}
			if m := forwarding.FindStringSubmatch(l); m != nil {
				go func() {
					for range lines {
					}
				}()
				return "127.0.0.1:" + m[1], stop
			}
		case <-timeout:
			stop()
			t.Fatalf("port-forward did not start: %s", errb.String())
		}
	}
}

// The data server stands for a process in the pod. A connection sends a
// mode byte and an 8-byte length: 'd' gets that many pseudo-random bytes
// (seeded by the length's high byte), 'u' sends that many and gets back
// their SHA-256.
func startDataServer(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				var hdr [10]byte
				if _, err := io.ReadFull(c, hdr[:]); err != nil {
					return
				}
				n := binary.BigEndian.Uint64(hdr[2:])
				switch hdr[0] {
				case 'd':
					_, _ = io.Copy(c, io.LimitReader(newStream(uint64(hdr[1])), int64(n)))
				case 'u':
					h := sha256.New()
					_, _ = io.CopyN(h, c, int64(n))
					_, _ = c.Write(h.Sum(nil))
				}
			}()
		}
	}()
	return l.Addr().String()
}

type prng struct{ r *rand.ChaCha8 }

func newStream(seed uint64) io.Reader {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	return prng{rand.NewChaCha8(s)}
}
func (p prng) Read(b []byte) (int, error) { return p.r.Read(b) }

func sumOf(seed uint64, n int64) [32]byte {
	h := sha256.New()
	_, _ = io.CopyN(h, newStream(seed), n)
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

func dialData(t testing.TB, addr string, mode byte, seed uint64, n int64) net.Conn {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Error(err)
		return nil
	}
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	var hdr [10]byte
	hdr[0], hdr[1] = mode, byte(seed)
	binary.BigEndian.PutUint64(hdr[2:], uint64(n))
	if _, err := c.Write(hdr[:]); err != nil {
		t.Error(err)
	}
	return c
}

func download(t testing.TB, addr string, n int64, seed uint64) {
	c := dialData(t, addr, 'd', seed, n)
	if c == nil {
		return
	}
	defer c.Close()
	h := sha256.New()
	got, err := io.Copy(h, c)
	if err != nil || got != n {
		t.Errorf("download: %d of %d bytes, %v", got, n, err)
		return
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	if sum != sumOf(seed, n) {
		t.Error("download: data differs")
	}
}

func upload(t testing.TB, addr string, n int64, seed uint64) {
	c := dialData(t, addr, 'u', seed, n)
	if c == nil {
		return
	}
	defer c.Close()
	if _, err := io.CopyN(c, newStream(seed), n); err != nil {
		t.Fatalf("upload: %v", err)
	}
	var sum [32]byte
	if _, err := io.ReadFull(c, sum[:]); err != nil {
		t.Fatalf("upload: reading the sum: %v", err)
	}
	if sum != sumOf(seed, n) {
		t.Fatal("upload: data differs")
	}
}

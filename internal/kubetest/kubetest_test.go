package kubetest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestCluster proves the control plane and the node simulator end to end
// with real kubectl talking directly to kube-apiserver.
func TestCluster(t *testing.T) {
	c := Start(t)
	if c.KubeSystemUID == "" || c.URL == "" || len(c.CAData) == 0 {
		t.Fatalf("incomplete cluster: %+v", c)
	}

	echo := startEchoServer(t)
	const ns, pod = "default", "sim-pod"
	c.CreatePod(t, ns, pod, map[string]string{PortAnnotationPrefix + "8080": echo}, "main", "side")

	t.Run("get nodes", func(t *testing.T) {
		out, err := c.Kubectl(t, "get", "nodes", "-o", "wide")
		if err != nil {
			t.Fatal(err)
		}
		if !regexp.MustCompile(`(?m)^sim-node\s+Ready\s`).MatchString(out) {
			t.Fatalf("sim-node not Ready:\n%s", out)
		}
	})

	t.Run("get pod", func(t *testing.T) {
		out, err := c.Kubectl(t, "get", "pod", pod, "-o", "jsonpath={.status.phase} {.status.podIP} {.spec.nodeName}")
		if err != nil {
			t.Fatal(err)
		}
		if out != "Running 127.0.0.1 sim-node" {
			t.Fatalf("got %q", out)
		}
	})

	// exec and attach, over WebSocket (kubectl 1.32's default) and SPDY.
	for _, proto := range []struct {
		name string
		env  []string
	}{
		{"websocket", []string{"KUBECTL_REMOTE_COMMAND_WEBSOCKETS=true"}},
		{"spdy", []string{"KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false"}},
	} {
		run := func(t *testing.T, stdin string, args ...string) (string, string, error) {
			t.Helper()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := c.KubectlCmd(ctx, args...)
			cmd.Env = append(cmd.Env, proto.env...)
			if stdin != "" {
				cmd.Stdin = strings.NewReader(stdin)
			}
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			start := time.Now()
			err := cmd.Run()
			if ctx.Err() != nil {
				t.Fatalf("kubectl %v did not end within 60s (stdout %q, stderr %q)", args, stdout.String(), stderr.String())
			}
			t.Logf("kubectl %v: %v", args, time.Since(start).Round(time.Millisecond))
			return stdout.String(), stderr.String(), err
		}
		t.Run(proto.name, func(t *testing.T) {
			t.Run("exec exit code", func(t *testing.T) {
				_, stderr, err := run(t, "", "exec", pod, "-c", "main", "--", "sh", "-c", "exit 7")
				if code := ExitCode(err); code != 7 {
					t.Fatalf("exit code %d (err %v), want 7; stderr %q", code, err, stderr)
				}
			})
			t.Run("exec stdout stderr", func(t *testing.T) {
				stdout, stderr, err := run(t, "", "exec", pod, "-c", "side", "--", "sh", "-c", "echo out; echo err >&2; echo $HOSTNAME")
				if err != nil {
					t.Fatalf("%v; stderr %q", err, stderr)
				}
				if stdout != "out\n"+pod+"\n" || !strings.Contains(stderr, "err\n") {
					t.Fatalf("stdout %q stderr %q", stdout, stderr)
				}
			})
			t.Run("exec stdin EOF", func(t *testing.T) {
				stdout, stderr, err := run(t, "hello", "exec", "-i", pod, "-c", "main", "--", "cat")
				if err != nil {
					t.Fatalf("%v; stderr %q", err, stderr)
				}
				if stdout != "hello" {
					t.Fatalf("stdout %q, want hello", stdout)
				}
			})
			t.Run("exec stdin large", func(t *testing.T) {
				in := strings.Repeat("0123456789abcdef", 64*1024) // 1 MiB
				stdout, stderr, err := run(t, in, "exec", "-i", pod, "-c", "main", "--", "sh", "-c", "wc -c; exit 3")
				if ExitCode(err) != 3 {
					t.Fatalf("err %v, want exit 3; stderr %q", err, stderr)
				}
				if strings.TrimSpace(stdout) != fmt.Sprint(len(in)) {
					t.Fatalf("stdout %q, want %d", stdout, len(in))
				}
			})
			t.Run("exec tty resize", func(t *testing.T) {
				// script(1) gives kubectl a terminal of 45x123; kubectl sends
				// that size through the resize stream.
				script, err := exec.LookPath("script")
				if err != nil {
					t.Fatalf("script(1) from util-linux is needed for this test: %v", err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				inner := "stty cols 123 rows 45; exec " + c.KubectlPath + " --kubeconfig=" + c.AdminKubeconfig +
					" exec -it " + pod + " -c main -- sh -c 'stty size; exit 5'"
				cmd := exec.CommandContext(ctx, script, "-qec", inner, "/dev/null")
				cmd.Env = append(os.Environ(), proto.env...)
				cmd.Env = append(cmd.Env, "HOME="+c.Dir)
				out, err := cmd.CombinedOutput()
				if ctx.Err() != nil {
					t.Fatalf("did not end: %q", out)
				}
				if ExitCode(err) != 5 || !strings.Contains(string(out), "45 123\r\n") {
					t.Fatalf("err %v, output %q; want exit 5 and \"45 123\"", err, out)
				}
			})
			t.Run("exec client gone", func(t *testing.T) {
				// When kubectl dies, the command must be killed, not leaked.
				marker := fmt.Sprint(3000 + time.Now().UnixNano()%1000)
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				cmd := c.KubectlCmd(ctx, "exec", "-i", pod, "-c", "main", "--", "sh", "-c", "echo started; exec sleep "+marker)
				cmd.Env = append(cmd.Env, proto.env...)
				stdin, _ := cmd.StdinPipe()
				defer stdin.Close()
				out, _ := cmd.StdoutPipe()
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				line, err := bufio.NewReader(out).ReadString('\n')
				if line != "started\n" {
					t.Fatalf("got %q, %v", line, err)
				}
				// "started" is written before sh execs sleep, so the
				// process may still be sh for a moment.
				for wait := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
					n := countProcs("sleep", marker)
					if n == 1 {
						break
					}
					if n > 1 || time.Now().After(wait) {
						t.Fatalf("%d processes 'sleep %s', want 1", n, marker)
					}
				}
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				deadline := time.Now().Add(15 * time.Second)
				for countProcs("sleep", marker) > 0 {
					if time.Now().After(deadline) {
						t.Fatalf("'sleep %s' still running 15s after kubectl was killed", marker)
					}
					time.Sleep(50 * time.Millisecond)
				}
			})
			t.Run("attach", func(t *testing.T) {
				stdout, stderr, err := run(t, "attached\n", "attach", "-i", pod, "-c", "main")
				if err != nil {
					t.Fatalf("%v; stderr %q", err, stderr)
				}
				if stdout != "attached\n" {
					t.Fatalf("stdout %q stderr %q", stdout, stderr)
				}
			})
		})
	}

	t.Run("logs follow", func(t *testing.T) {
		c.AppendLog(t, ns, pod, "main", "before")
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := c.KubectlCmd(ctx, "logs", "-f", pod, "-c", "main")
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			cancel()
			_ = cmd.Wait()
		}()
		lines := make(chan string, 10)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		expect := func(want string, within time.Duration) time.Duration {
			t.Helper()
			start := time.Now()
			select {
			case got, ok := <-lines:
				if !ok {
					t.Fatalf("logs ended before %q; stderr %q", want, stderr.String())
				}
				if got != want {
					t.Fatalf("got line %q, want %q", got, want)
				}
			case <-time.After(within):
				t.Fatalf("no line %q within %v; stderr %q", want, within, stderr.String())
			}
			return time.Since(start)
		}
		expect("before", 30*time.Second)
		for i := range 5 {
			line := fmt.Sprintf("appended %d", i)
			c.AppendLog(t, ns, pod, "main", line)
			d := expect(line, 5*time.Second)
			// A buffering proxy would hold the line until more output
			// came, so arrival within the bound is the check; the time
			// itself is a figure for the log, not a pass mark.
			t.Logf("%q arrived after %v", line, d.Round(time.Millisecond))
		}
	})

	t.Run("logs tail", func(t *testing.T) {
		for i := range 3 {
			c.AppendLog(t, ns, pod, "side", fmt.Sprintf("side %d", i))
		}
		out, err := c.Kubectl(t, "logs", pod, "-c", "side", "--tail=2")
		if err != nil {
			t.Fatal(err)
		}
		if out != "side 1\nside 2\n" {
			t.Fatalf("got %q", out)
		}
	})

	for _, proto := range []struct {
		name string
		env  []string
	}{
		{"websocket", []string{"KUBECTL_PORT_FORWARD_WEBSOCKETS=true"}},
		{"spdy", []string{"KUBECTL_PORT_FORWARD_WEBSOCKETS=false"}},
	} {
		t.Run("port-forward "+proto.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := c.KubectlCmd(ctx, "port-forward", "--address=127.0.0.1", "pod/"+pod, ":8080")
			cmd.Env = append(cmd.Env, proto.env...)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() {
				_ = cmd.Process.Signal(os.Interrupt)
				done := make(chan struct{})
				go func() { _ = cmd.Wait(); close(done) }()
				select {
				case <-done:
				case <-time.After(10 * time.Second):
					cancel()
					<-done
				}
			}()
			addr := make(chan string, 1)
			go func() {
				sc := bufio.NewScanner(out)
				re := regexp.MustCompile(`Forwarding from (127\.0\.0\.1:\d+) -> 8080`)
				for sc.Scan() {
					if m := re.FindStringSubmatch(sc.Text()); m != nil {
						select {
						case addr <- m[1]:
						default:
						}
					}
				}
			}()
			var local string
			select {
			case local = <-addr:
			case <-time.After(30 * time.Second):
				t.Fatalf("port-forward did not start; stderr %q", stderr.String())
			}
			for i := range 3 { // several connections over one port-forward session
				conn, err := net.DialTimeout("tcp", local, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
				msg := fmt.Sprintf("ping %d\n", i)
				if _, err := io.WriteString(conn, msg); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, len(msg))
				if _, err := io.ReadFull(conn, buf); err != nil {
					t.Fatalf("reading echo: %v; stderr %q", err, stderr.String())
				}
				if string(buf) != msg {
					t.Fatalf("echo %q, want %q", buf, msg)
				}
				conn.Close()
			}
			// Half-close travels to the target; its response and close come back.
			conn, err := net.DialTimeout("tcp", local, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
			if _, err := io.WriteString(conn, "half-closed"); err != nil {
				t.Fatal(err)
			}
			if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(conn)
			if err != nil || string(b) != "half-closed" {
				t.Fatalf("after half-close got %q, %v", b, err)
			}
		})
	}

	t.Run("service account", func(t *testing.T) {
		kc := c.ServiceAccountKubeconfig(t, "team-a", "robot")
		if tok := c.ServiceAccountToken(t, "team-a", "robot"); tok == "" {
			t.Fatal("empty token")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		out, err := runCmd(ctx, c.KubectlCmdAs(ctx, kc, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if out != "system:serviceaccount:team-a:robot" {
			t.Fatalf("whoami %q", out)
		}
		// No RBAC grants: listing pods is forbidden.
		_, err = runCmd(ctx, c.KubectlCmdAs(ctx, kc, "get", "pods"), nil)
		if err == nil || !strings.Contains(err.Error(), "forbidden") {
			t.Fatalf("want forbidden, got %v", err)
		}
	})

	t.Run("apply", func(t *testing.T) {
		c.Apply(t, `apiVersion: v1
kind: ConfigMap
metadata:
  name: applied
  namespace: default
data:
  k: v
`)
		out, err := c.Kubectl(t, "get", "configmap", "applied", "-o", "jsonpath={.data.k}")
		if err != nil || out != "v" {
			t.Fatalf("got %q, %v", out, err)
		}
	})

	t.Run("delete pod", func(t *testing.T) {
		c.CreatePod(t, ns, "short-lived", nil)
		if _, err := c.Kubectl(t, "delete", "pod", "short-lived", "--timeout=30s"); err != nil {
			t.Fatal(err)
		}
	})
}

// countProcs counts processes whose argv is exactly args (Linux /proc).
func countProcs(args ...string) int {
	want := strings.Join(args, "\x00") + "\x00"
	ents, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range ents {
		if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && string(b) == want {
			n++
		}
	}
	return n
}

// startEchoServer serves TCP echo on 127.0.0.1 until the test ends; it
// echoes until the client half-closes, then closes.
func startEchoServer(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_, _ = io.Copy(conn, conn)
			}()
		}
	}()
	return l.Addr().String()
}

// Package testbed runs the local parts of end-to-end tests: processes on free
// loopback ports, stopped by PID, and a test CA.
package testbed

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Proc is a process started by StartProc. Name and LogPath are read-only.
type Proc struct {
	Name    string // used in messages ("<Name> exited: …")
	LogPath string // the process's stdout and stderr

	cmd  *exec.Cmd
	done chan struct{}
	err  error // valid after done is closed
}

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM to the process (by PID), then SIGKILL after a grace
// period, and waits for it to exit.
func (p *Proc) Stop(grace time.Duration) {
	if p.Exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// StartProc starts path with args, its stdout and stderr appended to logPath
// after a "### path args" line. On Linux the process is killed when the test
// process dies. A failure to open the log is returned as is; a failure to
// start is returned as "starting <name>: …".
func StartProc(name, logPath, path string, args ...string) (*Proc, error) {
	lf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(lf, "### %s %s\n", path, strings.Join(args, " "))
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = os.Environ()
	setProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	lf.Close() // the child holds its own copy
	p := &Proc{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// WaitFor polls ok every 100 ms until it returns true, the process exits, or
// timeout.
func WaitFor(p *Proc, timeout time.Duration, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for {
		if ok() {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited: %v", p.Name, p.err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v", timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Poll calls ok every interval until it returns true or ctx is done.
func Poll(ctx context.Context, interval time.Duration, ok func() bool) error {
	for {
		if ok() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// HTTPOK reports whether GET url (with a bearer token, if not "") answers
// 200 with a body (its first 64 KiB) containing want. A nil client means one
// with a 2 s timeout.
func HTTPOK(client *http.Client, url, token, want string) bool {
	if client == nil {
		client = &http.Client{Timeout: 2 * time.Second}
	}
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return resp.StatusCode == http.StatusOK && strings.Contains(string(b), want)
}

var (
	portMu   sync.Mutex
	usedPort = map[int]bool{}
)

// FreePort returns a port in 20000-32767 (below the ephemeral range, which
// outgoing connections use) that was free on 127.0.0.1 just now and that no
// earlier call in this process returned. Callers retry on a clash. If none
// is found, the test fails with "<name>: no free port found".
func FreePort(t testing.TB, name string) int {
	t.Helper()
	portMu.Lock()
	defer portMu.Unlock()
	for i := 0; i < 1000; i++ {
		n, err := rand.Int(rand.Reader, big.NewInt(32767-20000))
		if err != nil {
			t.Fatal(err)
		}
		port := 20000 + int(n.Int64())
		if usedPort[port] {
			continue
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue
		}
		l.Close()
		usedPort[port] = true
		return port
	}
	t.Fatalf("%s: no free port found", name)
	return 0
}

// Tail returns the last n lines of a file, or "(<error>)" if it cannot be
// read.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/creack/pty"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	remotecommandconsts "k8s.io/apimachinery/pkg/util/remotecommand"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/kubelet/pkg/cri/streaming/portforward"
	remotecommandserver "k8s.io/kubelet/pkg/cri/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"

	osexec "os/exec"
	"syscall"
)

// Same values as the kubelet's streaming server (streaming.DefaultConfig).
const (
	streamIdleTimeout     = 4 * time.Hour
	streamCreationTimeout = remotecommandconsts.DefaultStreamCreationTimeout
)

// PortAnnotationPrefix + "<port>" on a pod names the TCP address that pod
// port is forwarded to.
const PortAnnotationPrefix = "nodesim.keyhole.dev/port-"

func (s *sim) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	for _, m := range []string{"GET", "POST"} {
		mux.HandleFunc(m+" /exec/{ns}/{pod}/{container}", s.serveExec)
		mux.HandleFunc(m+" /exec/{ns}/{pod}/{uid}/{container}", s.serveExec)
		mux.HandleFunc(m+" /attach/{ns}/{pod}/{container}", s.serveAttach)
		mux.HandleFunc(m+" /attach/{ns}/{pod}/{uid}/{container}", s.serveAttach)
		// The kubelet's path is /portForward; /portforward is accepted too.
		for _, pf := range []string{"/portForward", "/portforward"} {
			mux.HandleFunc(m+" "+pf+"/{ns}/{pod}", s.servePortForward)
			mux.HandleFunc(m+" "+pf+"/{ns}/{pod}/{uid}", s.servePortForward)
		}
	}
	mux.HandleFunc("GET /containerLogs/{ns}/{pod}/{container}", s.serveLogs)
	return logRequests(mux)
}

func logRequests(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.Printf("%s %s (upgrade %q)", r.Method, r.URL.RequestURI(), r.Header.Get("Upgrade"))
		h.ServeHTTP(w, r)
	})
}

// lookup finds the pod (and, if container != "", the container) of a request.
func (s *sim) lookup(w http.ResponseWriter, r *http.Request, container string) (*corev1.Pod, *corev1.Container, bool) {
	ns, name := r.PathValue("ns"), r.PathValue("pod")
	pod, ok := s.pods.get(ns, name)
	if !ok {
		http.Error(w, "pod does not exist", http.StatusNotFound)
		return nil, nil, false
	}
	if uid := r.PathValue("uid"); uid != "" && types.UID(uid) != pod.UID {
		http.Error(w, "pod not found", http.StatusNotFound)
		return nil, nil, false
	}
	if container == "" {
		return pod, nil, true
	}
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == container {
			return pod, &pod.Spec.Containers[i], true
		}
	}
	http.Error(w, fmt.Sprintf("container %q not found in pod %s/%s", container, ns, name), http.StatusNotFound)
	return nil, nil, false
}

// --- exec / attach ------------------------------------------------------

// The kubelet's getExec/getAttach parse the options with
// remotecommandserver.NewOptions and (through the CRI streaming server) call
// ServeExec/ServeAttach with these timeouts and protocols; so does nodesim.

func (s *sim) serveExec(w http.ResponseWriter, r *http.Request) {
	opts, err := remotecommandserver.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	pod, _, ok := s.lookup(w, r, r.PathValue("container"))
	if !ok {
		return
	}
	cmd := r.URL.Query()[corev1.ExecCommandParam]
	w, r, cancel := notifyOnDisconnect(w, r)
	defer cancel()
	remotecommandserver.ServeExec(w, r, &runner{s: s, pod: pod}, pod.Namespace+"/"+pod.Name, pod.UID,
		r.PathValue("container"), cmd, opts, streamIdleTimeout, streamCreationTimeout,
		remotecommandconsts.SupportedStreamingProtocols)
}

func (s *sim) serveAttach(w http.ResponseWriter, r *http.Request) {
	opts, err := remotecommandserver.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	pod, _, ok := s.lookup(w, r, r.PathValue("container"))
	if !ok {
		return
	}
	w, r, cancel := notifyOnDisconnect(w, r)
	defer cancel()
	remotecommandserver.ServeAttach(w, r, &runner{s: s, pod: pod}, pod.Namespace+"/"+pod.Name, pod.UID,
		r.PathValue("container"), opts, streamIdleTimeout, streamCreationTimeout,
		remotecommandconsts.SupportedStreamingProtocols)
}

// notifyOnDisconnect returns a request whose context is cancelled when the
// hijacked (upgraded) connection fails or is closed. net/http stops watching
// a connection once it is hijacked, so without this a command would keep
// running after its client went away. (The command is killed when the
// context ends.)
func notifyOnDisconnect(w http.ResponseWriter, r *http.Request) (http.ResponseWriter, *http.Request, context.CancelFunc) {
	ctx, cancel := context.WithCancel(r.Context())
	return &hijackNotifier{ResponseWriter: w, cancel: cancel}, r.WithContext(ctx), cancel
}

type hijackNotifier struct {
	http.ResponseWriter
	cancel context.CancelFunc
}

func (h *hijackNotifier) Unwrap() http.ResponseWriter { return h.ResponseWriter }

func (h *hijackNotifier) Flush() {
	if f, ok := h.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (h *hijackNotifier) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := h.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("connection cannot be hijacked")
	}
	conn, rw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	nc := &notifyConn{Conn: conn, cancel: h.cancel}
	// Route every later read through nc, starting with what net/http
	// has already buffered.
	buffered, _ := rw.Reader.Peek(rw.Reader.Buffered())
	rd := io.MultiReader(bytes.NewReader(append([]byte(nil), buffered...)), nc)
	return nc, bufio.NewReadWriter(bufio.NewReader(rd), bufio.NewWriter(nc)), nil
}

type notifyConn struct {
	net.Conn
	cancel context.CancelFunc
}

func (c *notifyConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.cancel()
	}
	return n, err
}

func (c *notifyConn) Close() error {
	c.cancel()
	return c.Conn.Close()
}

// runner implements remotecommandserver.Executor and Attacher.
type runner struct {
	s   *sim
	pod *corev1.Pod
}

func (r *runner) container(name string) (*corev1.Container, error) {
	for i := range r.pod.Spec.Containers {
		if r.pod.Spec.Containers[i].Name == name {
			return &r.pod.Spec.Containers[i], nil
		}
	}
	return nil, fmt.Errorf("container %q not found", name)
}

func (r *runner) ExecInContainer(ctx context.Context, _ string, _ types.UID, container string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, _ time.Duration) error {
	c, err := r.container(container)
	if err != nil {
		return err
	}
	if len(cmd) == 0 {
		return errors.New("no command given")
	}
	return r.s.runCommand(ctx, r.pod, c, cmd, in, out, errw, tty, resize)
}

func (r *runner) AttachContainer(ctx context.Context, _ string, _ types.UID, container string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) error {
	c, err := r.container(container)
	if err != nil {
		return err
	}
	cmd := append(append([]string{}, c.Command...), c.Args...)
	if len(cmd) == 0 {
		cmd = []string{"cat"}
	}
	err = r.s.runCommand(ctx, r.pod, c, cmd, in, out, errw, tty, resize)
	var exitErr utilexec.CodeExitError
	if errors.As(err, &exitErr) {
		// Attaching reports no exit code; the session simply ends.
		return nil
	}
	return err
}

// killOnWriteError kills the process group when the client is gone.
type killOnWriteError struct {
	w   io.Writer
	pid *atomic.Int64
}

func (k *killOnWriteError) Write(p []byte) (int, error) {
	n, err := k.w.Write(p)
	if err != nil {
		if pid := k.pid.Load(); pid > 0 {
			_ = syscall.Kill(-int(pid), syscall.SIGKILL)
		}
	}
	return n, err
}

// runCommand runs cmd on the host for a container of pod, wired to the
// streams of an exec or attach session. A non-zero exit is returned as
// utilexec.CodeExitError, which ServeExec reports as NonZeroExitCode.
func (s *sim) runCommand(ctx context.Context, pod *corev1.Pod, c *corev1.Container, argv []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) error {
	dir := filepath.Join(s.cfg.dataDir, "pods", pod.Namespace+"_"+pod.Name, c.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if c.WorkingDir != "" && filepath.IsAbs(c.WorkingDir) {
		if fi, err := os.Stat(c.WorkingDir); err == nil && fi.IsDir() {
			dir = c.WorkingDir
		}
	}
	cmd := osexec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOSTNAME="+pod.Name)
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			cmd.Env = append(cmd.Env, e.Name+"="+e.Value)
		}
	}
	cmd.WaitDelay = 2 * time.Second

	pid := new(atomic.Int64) // process group, once started
	var stdout, stderr io.Writer = io.Discard, io.Discard
	if out != nil {
		stdout = &killOnWriteError{w: out, pid: pid}
	}
	if errw != nil {
		stderr = &killOnWriteError{w: errw, pid: pid}
	}

	s.wg.Add(1)
	defer s.wg.Done()

	if tty {
		// As containerd and Docker do for a session with a tty.
		cmd.Env = append(cmd.Env, "TERM=xterm")
		return s.runTTY(ctx, cmd, in, stdout, resize, pid)
	}

	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stdin io.WriteCloser
	if in != nil {
		var err error
		if stdin, err = cmd.StdinPipe(); err != nil {
			return err
		}
	}
	if err := cmd.Start(); err != nil {
		if stdin != nil {
			stdin.Close()
		}
		return err // e.g. executable not found: reported as an internal error, like a runtime does
	}
	pgid := cmd.Process.Pid
	pid.Store(int64(pgid))
	s.addProc(pgid)
	defer s.removeProc(pgid)
	if stdin != nil {
		// Not waited for: the process may end while the client's stdin is
		// still open. When the client's stdin ends, the process's stdin is
		// closed (EOF), so `printf x | kubectl exec -i pod -- cat` ends.
		go func() {
			_, _ = io.Copy(stdin, in)
			_ = stdin.Close()
		}()
	}
	stopCtx := context.AfterFunc(ctx, func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) })
	defer stopCtx()
	return exitError(cmd.Wait())
}

func (s *sim) runTTY(ctx context.Context, cmd *osexec.Cmd, in io.Reader, out io.Writer, resize <-chan remotecommand.TerminalSize, pgid *atomic.Int64) error {
	// kubectl sends the terminal size right after the streams are set up;
	// wait a little for it so the command starts with the right size.
	size := &pty.Winsize{Rows: 24, Cols: 80}
	if resize != nil {
		select {
		case sz, ok := <-resize:
			if ok {
				size = &pty.Winsize{Rows: sz.Height, Cols: sz.Width}
			}
		case <-time.After(time.Second):
		}
	}
	ptmx, err := pty.StartWithSize(cmd, size) // setsid + controlling tty: pgid == pid
	if err != nil {
		return err
	}
	defer ptmx.Close()
	pid := cmd.Process.Pid
	pgid.Store(int64(pid))
	s.addProc(pid)
	defer s.removeProc(pid)

	done := make(chan struct{})
	defer close(done)
	if resize != nil {
		go func() {
			for {
				select {
				case <-done:
					return
				case sz, ok := <-resize:
					if !ok {
						return
					}
					_ = pty.Setsize(ptmx, &pty.Winsize{Rows: sz.Height, Cols: sz.Width})
				}
			}
		}()
	}
	if in != nil {
		go func() {
			_, err := io.Copy(ptmx, in)
			if err == nil {
				// Client stdin ended: send EOF (^D) as a terminal would.
				_, _ = ptmx.Write([]byte{4})
			}
		}()
	}
	outDone := make(chan struct{})
	go func() {
		_, _ = io.Copy(out, ptmx) // ends with EIO once every holder of the tty is gone
		close(outDone)
	}()
	stopCtx := context.AfterFunc(ctx, func() { _ = syscall.Kill(-pid, syscall.SIGKILL) })
	defer stopCtx()
	werr := cmd.Wait()
	select {
	case <-outDone:
	case <-time.After(2 * time.Second): // a background process still holds the tty
	}
	return exitError(werr)
}

func exitError(err error) error {
	var ee *osexec.ExitError
	if errors.As(err, &ee) {
		code := ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		if code == 0 {
			return nil
		}
		return utilexec.CodeExitError{Err: err, Code: code}
	}
	if errors.Is(err, osexec.ErrWaitDelay) {
		return nil
	}
	return err
}

// --- port-forward ---------------------------------------------------------

func (s *sim) servePortForward(w http.ResponseWriter, r *http.Request) {
	// As the kubelet's getPortForward: NewV4Options, then ServePortForward.
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	pod, _, ok := s.lookup(w, r, "")
	if !ok {
		return
	}
	portforward.ServePortForward(w, r, &forwarder{s: s}, pod.Namespace+"/"+pod.Name, pod.UID, opts,
		streamIdleTimeout, streamCreationTimeout, portforward.SupportedProtocols)
}

type forwarder struct{ s *sim }

// PortForward copies between stream and the pod port's target address, with
// half-close in both directions.
func (f *forwarder) PortForward(ctx context.Context, name string, _ types.UID, port int32, stream io.ReadWriteCloser) error {
	ns, podName, _ := strings.Cut(name, "/")
	target := net.JoinHostPort(f.s.cfg.address, strconv.Itoa(int(port)))
	if pod, ok := f.s.pods.get(ns, podName); ok {
		if a := pod.Annotations[PortAnnotationPrefix+strconv.Itoa(int(port))]; a != "" {
			target = a
		}
	}
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := d.DialContext(dctx, "tcp", target)
	cancel()
	if err != nil {
		return fmt.Errorf("dial %s: %w", target, err)
	}
	defer conn.Close()
	tcp := conn.(*net.TCPConn)

	go func() {
		_, err := io.Copy(tcp, stream)
		if err != nil {
			tcp.Close() // client stream broken: drop the connection
			return
		}
		_ = tcp.CloseWrite() // client finished sending
	}()
	_, err = io.Copy(stream, tcp)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		log.Printf("port-forward %s port %d: %v", name, port, err)
	}
	return nil // the caller closes the stream
}

// --- logs -----------------------------------------------------------------

func (s *sim) serveLogs(w http.ResponseWriter, r *http.Request) {
	container := r.PathValue("container")
	pod, _, ok := s.lookup(w, r, "")
	if !ok {
		return
	}
	if !hasContainer(pod, container) {
		http.Error(w, fmt.Sprintf("container %q in pod %q is not valid", container, pod.Name), http.StatusBadRequest)
		return
	}
	q := r.URL.Query()
	previous := q.Get("previous") == "true" || q.Get("previous") == "1"
	timestamps := q.Get("timestamps") == "true" || q.Get("timestamps") == "1"
	follow := q.Get("follow") == "true" || q.Get("follow") == "1"
	tail := int64(-1)
	if v := q.Get("tailLines"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "invalid tailLines", http.StatusBadRequest)
			return
		}
		tail = n
	}
	limit := int64(-1)
	if v := q.Get("limitBytes"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			http.Error(w, "invalid limitBytes", http.StatusBadRequest)
			return
		}
		limit = n
	}
	path := s.logPath(pod.Namespace, pod.Name, container)
	if previous {
		// The previous instance's log: <ns>_<pod>_<container>.previous.log
		// (a container name has no dot). Without it, the kubelet's answer.
		path = s.logPath(pod.Namespace, pod.Name, container+".previous")
		if _, err := os.Stat(path); err != nil {
			http.Error(w, fmt.Sprintf("previous terminated container %q in pod %q not found", container, pod.Name), http.StatusBadRequest)
			return
		}
		follow = false // a terminated instance's log does not grow
	}

	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	flush := func() {
		if flusher != nil {
			flusher.Flush()
		}
	}
	flush()

	const poll = 20 * time.Millisecond
	var f *os.File
	for f == nil {
		var err error
		f, err = os.Open(path)
		if err == nil {
			break
		}
		if !follow {
			return // no log yet: empty
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(poll):
		}
	}
	defer f.Close()

	if tail >= 0 {
		off, err := tailOffset(f, tail)
		if err != nil {
			return
		}
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			return
		}
	}
	var dst io.Writer = w
	var lw *limitedWriter
	if limit > 0 {
		lw = &limitedWriter{w: w, n: limit}
		dst = lw
	}
	if timestamps {
		dst = &timestampWriter{w: dst, start: true}
	}
	buf := make([]byte, 32*1024)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
			if lw != nil && lw.n <= 0 {
				flush()
				return
			}
			continue
		}
		if err != nil && err != io.EOF {
			return
		}
		// At the end of the file.
		flush()
		if !follow {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(poll):
		}
	}
}

// hasContainer reports whether pod has a container, init container or
// ephemeral container of that name (all of which have logs).
func hasContainer(pod *corev1.Pod, name string) bool {
	for _, c := range pod.Spec.Containers {
		if c.Name == name {
			return true
		}
	}
	for _, c := range pod.Spec.InitContainers {
		if c.Name == name {
			return true
		}
	}
	for _, c := range pod.Spec.EphemeralContainers {
		if c.Name == name {
			return true
		}
	}
	return false
}

// timestampWriter starts every line with the time nodesim read it, in the
// kubelet's format (RFC 3339 with nanoseconds, then a space). A kubelet
// gives the time the runtime wrote the line; for a followed log the two
// are within the 20 ms poll.
type timestampWriter struct {
	w     io.Writer
	start bool // the next byte starts a line
}

func (t *timestampWriter) Write(p []byte) (int, error) {
	n := len(p)
	var b []byte
	for len(p) > 0 {
		if t.start {
			b = time.Now().UTC().AppendFormat(b, "2006-01-02T15:04:05.000000000Z07:00")
			b = append(b, ' ')
			t.start = false
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			b = append(b, p...)
			break
		}
		b = append(b, p[:i+1]...)
		p = p[i+1:]
		t.start = true
	}
	if _, err := t.w.Write(b); err != nil {
		return 0, err
	}
	return n, nil
}

type limitedWriter struct {
	w io.Writer
	n int64
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.w.Write(p)
	l.n -= int64(n)
	return n, err
}

// tailOffset returns the offset of the start of the last n lines of f.
func tailOffset(f *os.File, n int64) (int64, error) {
	var starts []int64 // offsets of line starts
	var off int64
	rd := bufio.NewReaderSize(f, 64*1024)
	starts = append(starts, 0)
	for {
		chunk, err := rd.ReadSlice('\n')
		off += int64(len(chunk))
		if len(chunk) > 0 && chunk[len(chunk)-1] == '\n' {
			starts = append(starts, off)
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			break
		}
	}
	// If the file ends with '\n', the last start is the (empty) line after it.
	lines := starts
	if lines[len(lines)-1] == off {
		lines = lines[:len(lines)-1]
	}
	if int64(len(lines)) <= n {
		return 0, nil
	}
	if n == 0 {
		return off, nil
	}
	return lines[int64(len(lines))-n], nil
}

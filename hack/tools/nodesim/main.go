// Command nodesim simulates one Kubernetes node for end-to-end tests on
// machines where no kubelet (and no container runtime) can run.
//
// It registers a Ready Node whose kubelet endpoint is nodesim's own HTTPS
// listener on 127.0.0.1, marks every Pod bound to that node (spec.nodeName)
// Running and Ready, and serves the kubelet endpoints that kube-apiserver
// calls for exec, attach, port-forward and logs, using the kubelet's own
// streaming server code (k8s.io/kubelet/pkg/cri/streaming/...), so SPDY and
// WebSocket (which kube-apiserver 1.33 translates to SPDY toward the kubelet)
// work as with a real kubelet.
//
// Documented simplifications (this is a test double, not a sandbox):
//
//   - exec: the "container" is the host. The command runs on the host as
//     nodesim's user with os/exec; its working directory is a per-pod
//     directory <data-dir>/pods/<ns>_<pod>/<container> (or the container's
//     workingDir if that exists on the host), but absolute paths (for example
//     the ones `kubectl cp` passes to tar) refer to the host file system.
//     Environment: nodesim's own plus literal `env` values of the container
//     spec plus HOSTNAME=<pod> (and TERM=xterm with -t, as containerd
//     sets it). Exit codes are passed back (a signal N gives
//     128+N), stdin EOF closes the command's stdin, -t uses a real pty whose
//     size follows the client's resize events (EOF on stdin sends ^D). The
//     command's process group is killed when the client goes away.
//   - attach: there is no long-running container process. Each attach session
//     starts the container's command (spec `command`+`args`, default `cat`)
//     with the attach streams and ends when that process ends.
//   - port-forward (/portForward/{ns}/{pod}, like the kubelet): pod port P is
//     forwarded to the TCP address in the pod annotation
//     "nodesim.keyhole.dev/port-P" (e.g. "127.0.0.1:23456"), otherwise to
//     127.0.0.1:P. Half-close is passed on in both directions.
//   - logs: the log of a container is the file
//     <data-dir>/logs/<ns>_<pod>_<container>.log (created empty when the pod
//     starts); follow=true polls it every 20 ms until the client goes away.
//     Init and ephemeral containers have logs too. tailLines and limitBytes
//     are honoured; previous=true serves <ns>_<pod>_<container>.previous.log
//     (400 "previous terminated container … not found", as the kubelet, when
//     there is none); timestamps=true starts each line with the time nodesim
//     read it (the kubelet's format); other options are ignored.
//   - Pods being deleted are removed at once (grace period 0), as a kubelet
//     does once its containers are stopped. Init containers are reported as
//     completed without running anything; nothing is ever run at pod start.
//   - The kubelet API requires a client certificate signed by --client-ca-file
//     but does no authorization (a real kubelet would ask the API server).
//   - No Lease in kube-node-lease; the Node status is refreshed every
//     --heartbeat instead. SIGTERM/SIGINT: stop serving, kill running
//     exec/attach commands, exit 0.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func main() {
	var (
		kubeconfig   = flag.String("kubeconfig", "", "kubeconfig used to talk to the API server (needs rights on nodes, pods, pods/status)")
		nodeName     = flag.String("node-name", "sim-node", "name of the simulated Node")
		address      = flag.String("address", "127.0.0.1", "IP address to serve the kubelet API on; also the node's InternalIP and every pod's IP")
		port         = flag.Int("port", 0, "HTTPS port of the kubelet API (0: let the OS choose; the Node reports the actual port)")
		portFile     = flag.String("port-file", "", "if set, write the actual kubelet API port to this file once listening")
		certFile     = flag.String("tls-cert-file", "", "serving certificate (PEM) of the kubelet API")
		keyFile      = flag.String("tls-private-key-file", "", "private key (PEM) of --tls-cert-file")
		clientCAFile = flag.String("client-ca-file", "", "CA bundle (PEM) that must have signed the client certificates (kube-apiserver's --kubelet-client-certificate)")
		dataDir      = flag.String("data-dir", "", "directory for container logs (<data-dir>/logs) and exec working directories (<data-dir>/pods)")
		heartbeat    = flag.Duration("heartbeat", 10*time.Second, "interval of Node status updates")
	)
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("nodesim: ")
	for name, v := range map[string]string{"kubeconfig": *kubeconfig, "tls-cert-file": *certFile, "tls-private-key-file": *keyFile, "client-ca-file": *clientCAFile, "data-dir": *dataDir} {
		if v == "" {
			log.Fatalf("--%s is required", name)
		}
	}
	ip := net.ParseIP(*address)
	if ip == nil {
		log.Fatalf("--address %q is not an IP address", *address)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, config{
		kubeconfig: *kubeconfig, nodeName: *nodeName, address: ip.String(), port: *port, portFile: *portFile,
		certFile: *certFile, keyFile: *keyFile, clientCAFile: *clientCAFile, dataDir: *dataDir, heartbeat: *heartbeat,
	}); err != nil {
		log.Fatalf("%v", err)
	}
	log.Printf("stopped")
}

type config struct {
	kubeconfig, nodeName, address string
	port                          int
	portFile                      string
	certFile, keyFile             string
	clientCAFile, dataDir         string
	heartbeat                     time.Duration
}

func run(ctx context.Context, cfg config) error {
	for _, d := range []string{"logs", "pods"} {
		if err := os.MkdirAll(filepath.Join(cfg.dataDir, d), 0o755); err != nil {
			return err
		}
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", cfg.kubeconfig)
	if err != nil {
		return fmt.Errorf("loading kubeconfig: %w", err)
	}
	restCfg.UserAgent = "nodesim/" + cfg.nodeName
	restCfg.QPS, restCfg.Burst = 100, 200
	cs, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}

	tlsCfg, err := serverTLS(cfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.address, strconv.Itoa(cfg.port)))
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	actualPort := ln.Addr().(*net.TCPAddr).Port
	log.Printf("kubelet API on https://%s", ln.Addr())

	s := &sim{
		cfg:   cfg,
		cs:    cs,
		port:  int32(actualPort),
		procs: map[int]struct{}{},
	}
	if err := s.startPods(ctx); err != nil {
		ln.Close()
		return err
	}

	srv := &http.Server{
		Handler:           s.routes(),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 30 * time.Second,
		// HTTP/1.1 only: upgrades (SPDY, WebSocket) need it and a kubelet
		// behaves the same for the requests the API server sends.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     log.Default(),
	}
	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.Serve(tls.NewListener(ln, tlsCfg)) }()

	if err := s.registerNode(ctx); err != nil {
		srv.Close()
		return err
	}
	if cfg.portFile != "" {
		tmp := cfg.portFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(strconv.Itoa(actualPort)+"\n"), 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, cfg.portFile); err != nil {
			return err
		}
	}
	go s.heartbeatLoop(ctx)
	log.Printf("node %q registered and ready", cfg.nodeName)

	select {
	case <-ctx.Done():
		log.Printf("shutting down")
	case err := <-srvErr:
		return fmt.Errorf("kubelet API server: %w", err)
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutCtx) // stops listening; hijacked (streaming) connections are not tracked…
	s.killAll()               // …so end their processes, which ends those sessions.
	waited := make(chan struct{})
	go func() { s.wg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		log.Printf("some exec/attach sessions did not end")
	}
	return nil
}

func serverTLS(cfg config) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(cfg.certFile, cfg.keyFile)
	if err != nil {
		return nil, fmt.Errorf("loading serving certificate: %w", err)
	}
	caPEM, err := os.ReadFile(cfg.clientCAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("no certificate found in --client-ca-file")
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"http/1.1"},
	}, nil
}

// sim is the simulated node.
type sim struct {
	cfg  config
	cs   kubernetes.Interface
	port int32

	pods podLister

	mu      sync.Mutex
	closing bool
	procs   map[int]struct{} // process group ids of running exec/attach commands
	wg      sync.WaitGroup   // running exec/attach commands
}

func (s *sim) addProc(pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		return
	}
	s.procs[pid] = struct{}{}
}

func (s *sim) removeProc(pid int) {
	s.mu.Lock()
	delete(s.procs, pid)
	s.mu.Unlock()
}

func (s *sim) killAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing = true
	for pid := range s.procs {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}

// podLister is the read side of the pod informer.
type podLister interface {
	get(namespace, name string) (*corev1.Pod, bool)
}

package tunnel

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// notSentLowat is the tunnel socket's TCP_NOTSENT_LOWAT: the kernel holds
// at most this much not yet sent, beyond what is in flight. Without it the
// socket's send buffer grows to megabytes on a thin link under bulk load,
// and a small answer written after bulk data waits for all of it to drain;
// with it, the waiting happens above the socket, where frames of other
// streams are queued one at a time. 16 KiB is one TLS record (what
// Cloudflare uses for HTTP/2 prioritization, for the same reason).
const notSentLowat = maxRecord

// setSockLowat is a net.Dialer / net.ListenConfig Control function that
// sets TCP_NOTSENT_LOWAT on a TCP socket. It never fails the dial: a kernel
// without the option only loses the latency bound.
func setSockLowat(network, _ string, c syscall.RawConn) error {
	if network != "tcp" && network != "tcp4" && network != "tcp6" {
		return nil
	}
	_ = c.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, notSentLowat)
	})
	return nil
}

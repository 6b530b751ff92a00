package tunnel

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// Stream is one yamux stream as a net.Conn with half-close.
//
// CloseWrite sends FIN (yamux's Close is already a half-close: reads keep
// working until the peer closes too). Close ends the stream for us: it sends
// FIN if not yet sent and then discards whatever the peer still sends until
// the peer closes, for at most 30 s. hashicorp/yamux has no stream reset, so
// without that drain a peer blocked writing into a full window would wait for
// the five-minute StreamCloseTimeout; with it, the peer's writes complete, its
// next read sees our FIN and it closes its side promptly.
//
// A stream has one reader at a time: yamux's Read is not made for two
// goroutines waiting on one stream (a wake-up meant for one can be taken by
// the other, and one can wait for good). Close therefore makes a Read in
// progress return at once and starts draining only after it did; a Read
// after Close returns net.ErrClosed.
type Stream struct {
	*yamux.Stream
	once    sync.Once
	onClose func()

	readMu  sync.Mutex // held by the one Read in progress, or by the drain
	writeMu sync.Mutex // keeps one Write's frames together
	closed  atomic.Bool
}

func newStream(s *yamux.Stream, onClose func()) *Stream {
	return &Stream{Stream: s, onClose: onClose}
}

// Read reads from the stream; after Close it returns net.ErrClosed.
func (s *Stream) Read(b []byte) (int, error) {
	s.readMu.Lock()
	defer s.readMu.Unlock()
	if s.closed.Load() {
		return 0, net.ErrClosed
	}
	return s.Stream.Read(b)
}

// Write writes b in data frames of at most maxFrameData bytes (16 KiB with
// their header), so streams take turns on the link at that grain; see
// link. Concurrent Writes do not interleave.
func (s *Stream) Write(b []byte) (int, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	done := 0
	for done < len(b) {
		n, err := s.Stream.Write(b[done:min(len(b), done+maxFrameData)])
		done += n
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// CloseWrite half-closes the stream: the peer reads EOF, we can still read.
func (s *Stream) CloseWrite() error { return s.Stream.Close() }

// Close closes the stream in both directions. It is safe to call more than
// once and after CloseWrite.
func (s *Stream) Close() error {
	var err error
	s.once.Do(func() {
		s.closed.Store(true)
		err = s.Stream.Close()
		if s.onClose != nil {
			s.onClose()
		}
		// A deadline in the past wakes a Read in progress, which returns.
		_ = s.Stream.SetReadDeadline(time.Now())
		// The drain goroutine is owned by the stream and ends on the peer's
		// FIN, a reset, the session's end or the deadline, whichever is first.
		go func() {
			s.readMu.Lock() // once no Read is in progress
			defer s.readMu.Unlock()
			_ = s.Stream.SetReadDeadline(time.Now().Add(drainTimeout))
			_, _ = io.Copy(io.Discard, s.Stream)
		}()
	})
	return err
}

var _ net.Conn = (*Stream)(nil)

// listener serves a session's incoming streams as a net.Listener whose
// connections support CloseWrite. Close stops Accept but leaves the session
// and its streams alone, so http.Server.Shutdown can drain them.
type listener struct {
	sess   *yamux.Session
	ctx    context.Context
	cancel context.CancelFunc
}

func newListener(sess *yamux.Session) *listener {
	ctx, cancel := context.WithCancel(context.Background())
	return &listener{sess: sess, ctx: ctx, cancel: cancel}
}

// Accept returns the session's next incoming stream. After Close it still
// returns the streams already waiting to be accepted, and then
// net.ErrClosed: a drain (GoAway, then http.Server.Shutdown, which closes
// the listener) serves the requests the stub sent before it saw the
// GoAway instead of leaving them unanswered until the drain times out.
func (l *listener) Accept() (net.Conn, error) {
	st, err := l.sess.AcceptStreamWithContext(l.ctx)
	if err != nil && l.ctx.Err() != nil {
		st, err = l.waiting()
	}
	if err != nil {
		return nil, err
	}
	return newStream(st, nil), nil
}

// waiting returns a stream already waiting to be accepted, or
// net.ErrClosed. A context that ends a moment later, not an ended one: a
// select with both ready would pick at random.
func (l *listener) waiting() (*yamux.Stream, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
	defer cancel()
	st, err := l.sess.AcceptStreamWithContext(ctx)
	if err != nil {
		return nil, net.ErrClosed
	}
	return st, nil
}
func (l *listener) Close() error   { l.cancel(); return nil }
func (l *listener) Addr() net.Addr { return l.sess.Addr() }

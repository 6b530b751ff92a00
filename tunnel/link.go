package tunnel

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
	"go.uber.org/zap"
)

// link is the connection under one yamux session, as yamux sees it. It
// counts what crosses it, so that liveness is judged by whether bytes move
// (see watch), and it writes each data frame's 12-byte header together with
// its body.
//
// Coalescing: yamux's send loop (the link's only writer) writes a frame's
// header and body separately; over TLS that is two records and two syscalls
// per frame. Measured on this kind of machine, writing them together took
// small-request throughput from 3.5k to 5.0k req/s.
//
// Pieces: what goes to the connection is written in pieces of at most one
// TLS record (16 KiB), and each piece that completes counts as progress, so
// a write that is slow because the link is thin is told from one that is
// stuck.
type link struct {
	io.ReadWriteCloser

	// Times on the link's own monotonic clock (ns since epoch, see now):
	// of the last read that returned bytes, and of the last progress of a
	// write (its start, or a piece written).
	epoch    time.Time
	received atomic.Int64
	sent     atomic.Int64
	writing  atomic.Bool // a write to the connection is in progress

	rtt      atomic.Int64  // the last ping's round trip, ns; 0: none answered yet
	rttAt    atomic.Int64  // when it was answered, UnixNano
	answered chan struct{} // closed when the first ping is answered

	// Only yamux's send loop writes: no lock.
	pending bool
	buf     []byte
}

const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
	// maxRecord is TLS's largest record payload (RFC 8446 §5.1): the
	// link's unit of write progress.
	maxRecord = 16 << 10
	// maxFrameData bounds the body of a data frame, so that a frame and its
	// header fill one TLS record and streams take turns on the link at
	// that grain (HTTP/2's default SETTINGS_MAX_FRAME_SIZE is the same
	// 16 KiB). yamux alone sends up to the stream's whole window (256 KiB)
	// in one frame, and a small answer queued behind a few of those waits
	// seconds on a thin link.
	maxFrameData = maxRecord - yamuxHeaderSize
)

// StreamWriteSize is the largest write to a Stream that goes out as one
// frame in one TLS record (16,372 bytes): a copy loop that writes pieces of
// this size into a stream costs the link one record and one system call a
// piece, where a 16 KiB piece costs two of each (a full one and one of 24
// bytes).
const StreamWriteSize = maxFrameData

func newLink(rwc io.ReadWriteCloser) *link {
	return &link{ReadWriteCloser: rwc, epoch: time.Now(), answered: make(chan struct{})}
}

// now is the time on the link's monotonic clock.
func (l *link) now() int64 { return int64(time.Since(l.epoch)) }

func (l *link) Read(p []byte) (int, error) {
	n, err := l.ReadWriteCloser.Read(p)
	if n > 0 {
		l.received.Store(l.now())
	}
	return n, err
}

func (l *link) Write(p []byte) (int, error) {
	if !l.pending && len(p) == yamuxHeaderSize && p[1] == yamuxTypeData && binary.BigEndian.Uint32(p[8:12]) > 0 {
		l.buf = append(l.buf[:0], p...)
		l.pending = true
		return len(p), nil
	}
	if !l.pending {
		return l.write(p)
	}
	l.pending = false
	l.buf = append(l.buf, p...)
	n, err := l.write(l.buf)
	if cap(l.buf) > 1<<20 {
		l.buf = nil // do not pin a large buffer after a burst
	}
	n -= yamuxHeaderSize
	if n < 0 {
		n = 0
	}
	return n, err
}

// write writes p in pieces of at most one TLS record, counting each.
func (l *link) write(p []byte) (int, error) {
	l.sent.Store(l.now())
	l.writing.Store(true)
	defer l.writing.Store(false)
	done := 0
	for done < len(p) {
		n, err := l.ReadWriteCloser.Write(p[done:min(len(p), done+maxRecord)])
		done += n
		if n > 0 {
			l.sent.Store(l.now())
		}
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// lastRTT is the round trip of the last ping answered within the last
// dead-after span, or an error saying how long none was answered. On a
// session so young that no ping was answered yet, it waits for the first
// answer (the first ping goes at once), at most the dead-after span.
func (s *session) lastRTT(lv liveness) (time.Duration, error) {
	l := s.link
	if l.rttAt.Load() == 0 {
		t := time.NewTimer(lv.deadAfter())
		defer t.Stop()
		select {
		case <-l.answered:
		case <-s.CloseChan():
			return 0, yamux.ErrSessionShutdown
		case <-t.C:
		}
	}
	at := l.rttAt.Load()
	if at == 0 || time.Since(time.Unix(0, at)) > lv.deadAfter() {
		return 0, fmt.Errorf("no tunnel ping answered in the last %v", lv.deadAfter())
	}
	return time.Duration(l.rtt.Load()), nil
}

// session is a yamux session with the link under it and its liveness watch.
type session struct {
	*yamux.Session
	link    *link
	watched chan struct{} // closed when the watch returned
}

// startSession starts yamux over rwc (the stub is the yamux client, the
// agent the server) and the session's liveness watch, which ends when the
// session closes.
func startSession(rwc io.ReadWriteCloser, client bool, mc *yamux.Config, lv liveness, log *zap.Logger) (*session, error) {
	l := newLink(rwc)
	open := yamux.Server
	if client {
		open = yamux.Client
	}
	ys, err := open(l, mc)
	if err != nil {
		return nil, err
	}
	s := &session{Session: ys, link: l, watched: make(chan struct{})}
	go func() { defer close(s.watched); l.watch(ys, lv, log) }()
	return s, nil
}

// Close closes the session and waits for its watch to end.
func (s *session) Close() error {
	err := s.Session.Close()
	<-s.watched
	return err
}

// liveness says when a session counts as dead: see link.watch.
type liveness struct {
	interval time.Duration // how often each end pings
	timeout  time.Duration // grace beyond the interval
}

func newLiveness(interval, timeout time.Duration) liveness {
	return liveness{interval: cmp.Or(max(interval, 0), DefaultKeepAliveInterval), timeout: cmp.Or(max(timeout, 0), DefaultKeepAliveTimeout)}
}

// deadAfter is how long a session may go without a byte received, or with
// a write that makes no progress, before it is closed.
func (lv liveness) deadAfter() time.Duration { return lv.interval + lv.timeout }

// watch judges whether sess is alive, and closes it when it is not; it
// returns when sess closes (by anyone). Each end runs it for its own session.
//
// A session is alive while bytes arrive and what it sends makes progress.
// yamux's own keepalive (off: see MuxConfig) judged liveness by one ping's
// answer alone; that answer queues behind every data frame already waiting
// to be sent, so on a thin link under bulk load a busy session was taken
// for a dead one and dropped with all its streams. Here any frame counts:
// data, window updates and pings alike. Each end pings every interval, so
// an idle session still receives something at least that often, and a
// middlebox sees traffic. The session is closed when, for
// interval+timeout, nothing was received, or a write to the connection
// did not complete one TLS record (16 KiB), so a link moving 16 KiB per
// 10 s (with the defaults) is alive, and a black-holed one is noticed
// 10 s after the last byte arrived (a stuck write within a quarter of the
// smaller setting more).
func (l *link) watch(sess *yamux.Session, lv liveness, log *zap.Logger) {
	dead := int64(lv.deadAfter())
	step := int64(max(min(lv.interval, lv.timeout)/4, time.Millisecond)) // how soon a stuck write is seen
	type answer struct {
		rtt time.Duration
		err error
	}
	// Pings go every interval whether or not the last one was answered:
	// on a link busy one way, an answer waits behind that way's data, and
	// waiting for it would leave the peer hearing nothing from us. At most
	// maxPings are in flight (each one is a goroutine until answered or the
	// session closes).
	const maxPings = 4
	answers := make(chan answer, maxPings) // a ping in flight sends here and ends
	pinging := 0
	l.received.Store(l.now()) // the session starts alive
	nextPing := l.now()       // the first ping at once: its answer is the first round trip
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		now := l.now()
		var why string
		var quiet int64
		if q := now - l.received.Load(); q >= dead {
			why, quiet = "nothing received", q
		} else if q := now - l.sent.Load(); l.writing.Load() && q >= dead {
			why, quiet = "sending made no progress", q
		}
		if why != "" {
			log.Warn("tunnel dead; closing the session", zap.String("reason", why), zap.Duration("for", time.Duration(quiet)))
			_ = sess.Close()
			return
		}
		if now >= nextPing {
			nextPing = now + int64(lv.interval)
			if pinging < maxPings {
				pinging++
				go func() {
					rtt, err := sess.Ping() // ends on the answer or when sess closes
					answers <- answer{rtt, err}
				}()
			}
		}
		// Wake when the quiet would reach the bound, for the next ping, or
		// a step on to look at writes.
		wake := min(l.received.Load()+dead, now+step, nextPing)
		timer.Reset(time.Duration(max(wake-now, 0)))
		select {
		case <-sess.CloseChan():
			return
		case a := <-answers:
			pinging--
			if a.err == nil {
				l.rtt.Store(int64(a.rtt))
				if l.rttAt.Swap(time.Now().UnixNano()) == 0 {
					close(l.answered)
				}
			}
		case <-timer.C:
		}
	}
}

// setNotSentLowat sets TCP_NOTSENT_LOWAT (see lowat_linux.go) on the TCP
// socket under conn, looking through TLS and other wrappers that expose
// the connection they wrap; conns with no TCP socket under them are left
// alone.
func setNotSentLowat(conn net.Conn) {
	for range 8 {
		switch c := conn.(type) {
		case interface{ NetConn() net.Conn }:
			conn = c.NetConn()
			continue
		case syscall.Conn:
			if raw, err := c.SyscallConn(); err == nil {
				_ = setSockLowat("tcp", "", raw)
			}
		}
		return
	}
}

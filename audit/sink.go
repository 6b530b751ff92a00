package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
)

// Sink receives events. Implementations are safe for concurrent use and
// never lose an event silently: Write returns an error, which the caller
// logs.
type Sink interface {
	Write(*auditv1.Event) error
	Close() error
}

// ErrClosed is returned (wrapped) by Write after Close.
var ErrClosed = errors.New("audit: sink is closed")

// writerSink writes JSON lines to w with group commit: events that arrive
// while a write is under way are gathered into one batch, which the first
// of them writes with a single Write call once that write returns. Every
// Write returns only after the Write call that carried its line returned,
// so an event is in w (for a file: in the kernel) before the request it
// records is answered.
type writerSink struct {
	// mu guards pending and closed; it is never held across w.Write.
	mu      sync.Mutex
	pending *batch
	closed  bool
	// accepted counts events taken before Close that are not yet written
	// (Add under mu while not closed), so Close can wait for them.
	accepted sync.WaitGroup

	// writeMu serializes Write calls to w, and guards torn.
	writeMu sync.Mutex
	w       io.Writer
	closer  io.Closer // nil: the writer is not ours to close
	sync    func() error
	// torn is set when a write failed part way: the next batch starts with
	// a newline, so the torn line costs only its own batch.
	torn bool
}

// batch is the lines gathered for one Write call to the sink's writer.
type batch struct {
	buf     bytes.Buffer
	written bool  // under writeMu
	err     error // under writeMu, once written
}

// NewWriterSink writes each event to w as one JSON object followed by a
// newline. Lines never interleave: each Write call to w carries one or more
// whole lines (more when events arrive while an earlier call is under way),
// and Write returns once the call that carried its event returned. Close
// does not close w. w must not be nil.
func NewWriterSink(w io.Writer) Sink {
	if w == nil {
		panic("audit: NewWriterSink with a nil writer")
	}
	return &writerSink{w: w}
}

// OpenFileSink appends events to the file at path, creating it with mode
// 0600 (an existing file keeps its mode). "-" means stdout, which Close
// leaves open. Writes are batched as NewWriterSink says: an event is in the
// kernel when Write returns, so a crash of the process loses no event whose
// request was answered; a crash of the machine loses what the kernel had
// not yet written to disk (the file is synced on Close only, as
// kube-apiserver's own log backend does).
func OpenFileSink(path string) (Sink, error) {
	switch path {
	case "":
		return nil, errors.New("audit: empty audit log path")
	case "-":
		return &writerSink{w: os.Stdout}, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: open audit log: %w", err)
	}
	s := &writerSink{w: f, closer: f}
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		s.sync = f.Sync // a pipe or a device cannot be synced
	}
	return s, nil
}

// lineBufs holds encoding buffers between events.
var lineBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func (s *writerSink) Write(ev *auditv1.Event) error {
	if ev == nil {
		return errors.New("audit: nil event")
	}
	line := lineBufs.Get().(*bytes.Buffer)
	defer func() {
		if line.Cap() <= 64<<10 { // do not keep a buffer grown by an odd event
			line.Reset()
			lineBufs.Put(line)
		}
	}()
	if err := json.NewEncoder(line).Encode(ev); err != nil { // with its newline
		return fmt.Errorf("audit: encode event %s: %w", ev.AuditID, err)
	}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("audit: event %s: %w", ev.AuditID, ErrClosed)
	}
	b := s.pending
	if b == nil {
		b = &batch{}
		s.pending = b
	}
	b.buf.Write(line.Bytes())
	s.accepted.Add(1)
	s.mu.Unlock()
	defer s.accepted.Done()

	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if !b.written {
		// The first of the batch to get here writes it all; events that
		// come meanwhile start the next batch.
		s.mu.Lock()
		if s.pending == b {
			s.pending = nil
		}
		s.mu.Unlock()
		b.err = s.writeBatch(b.buf.Bytes())
		b.written = true
	}
	if b.err != nil {
		return fmt.Errorf("audit: write event %s: %w", ev.AuditID, b.err)
	}
	return nil
}

// writeBatch writes whole lines to w in one call; writeMu is held.
func (s *writerSink) writeBatch(p []byte) error {
	if s.torn {
		p = append([]byte{'\n'}, p...)
	}
	n, err := s.w.Write(p)
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		if n > 0 {
			s.torn = true
		}
		return err
	}
	s.torn = false
	return nil
}

// Close refuses further events, waits for any write under way, and syncs
// and closes the file it opened.
func (s *writerSink) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.accepted.Wait() // every event accepted before Close is written
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	var errs []error
	if s.sync != nil {
		errs = append(errs, s.sync())
	}
	if s.closer != nil {
		errs = append(errs, s.closer.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("audit: close audit log: %w", err)
	}
	return nil
}

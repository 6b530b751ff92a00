package audit

import (
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

// writerSink writes JSON lines to w, one Write call per event.
type writerSink struct {
	mu     sync.Mutex
	w      io.Writer
	closer io.Closer // nil: the writer is not ours to close
	sync   func() error
	closed bool
	// torn is set when a write failed part way: the next event starts with
	// a newline, so the torn line costs only itself.
	torn bool
}

// NewWriterSink writes each event to w as one JSON object followed by a
// newline, in a single Write call made under a lock, so concurrent events
// never interleave. Close does not close w. w must not be nil.
func NewWriterSink(w io.Writer) Sink {
	if w == nil {
		panic("audit: NewWriterSink with a nil writer")
	}
	return &writerSink{w: w}
}

// OpenFileSink appends events to the file at path, creating it with mode
// 0600 (an existing file keeps its mode). "-" means stdout, which Close
// leaves open.
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

func (s *writerSink) Write(ev *auditv1.Event) error {
	if ev == nil {
		return errors.New("audit: nil event")
	}
	line, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("audit: encode event %s: %w", ev.AuditID, err)
	}
	line = append(line, '\n')

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("audit: event %s: %w", ev.AuditID, ErrClosed)
	}
	if s.torn {
		line = append([]byte{'\n'}, line...)
	}
	n, err := s.w.Write(line)
	if err == nil && n < len(line) {
		err = io.ErrShortWrite
	}
	if err != nil {
		if n > 0 {
			s.torn = true
		}
		return fmt.Errorf("audit: write event %s: %w", ev.AuditID, err)
	}
	s.torn = false
	return nil
}

func (s *writerSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
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

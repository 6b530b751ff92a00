package audit

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
	"time"

	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
)

// gateWriter holds its first Write call until released, and records every
// call.
type gateWriter struct {
	entered, release chan struct{}
	mu               sync.Mutex
	calls            [][]byte
}

func (w *gateWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	first := len(w.calls) == 0
	w.calls = append(w.calls, bytes.Clone(p))
	w.mu.Unlock()
	if first {
		close(w.entered)
		<-w.release
	}
	return len(p), nil
}

// TestGroupCommit: events that arrive while a write is under way go out in
// one Write call, and none of their Writes returns before that call did.
func TestGroupCommit(t *testing.T) {
	w := &gateWriter{entered: make(chan struct{}), release: make(chan struct{})}
	s := NewWriterSink(w).(*writerSink)
	ev := func(id string) *auditv1.Event {
		return NewEvent(Request{ID: id, Received: time.Now(), Method: "GET", Path: "/api"}, auditv1.StageResponseComplete, nil)
	}
	errs := make(chan error, 10)
	go func() { errs <- s.Write(ev("first")) }()
	<-w.entered
	const waiting = 9
	for i := range waiting {
		go func() { errs <- s.Write(ev(fmt.Sprint(i))) }()
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		s.mu.Lock()
		n := 0
		if s.pending != nil {
			n = bytes.Count(s.pending.buf.Bytes(), []byte("\n"))
		}
		s.mu.Unlock()
		if n == waiting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d events pending, want %d", n, waiting)
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case err := <-errs:
		t.Fatalf("a Write returned (%v) before its line was written", err)
	default:
	}
	close(w.release)
	for range waiting + 1 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if len(w.calls) != 2 || bytes.Count(w.calls[1], []byte("\n")) != waiting {
		t.Fatalf("Write calls: %d, lines in the second: %d; want 2 and %d", len(w.calls), bytes.Count(w.calls[len(w.calls)-1], []byte("\n")), waiting)
	}
}

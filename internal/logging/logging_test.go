package logging

import (
	"context"
	"errors"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"k8s.io/klog/v2"
)

// What client-go logs through klog reaches the zap logger: klog's own
// calls, and the contextual logger client-go's rate limiter writes to
// (klog.FromContext(ctx).V(3)), at debug; verbosity above
// KlogMaxVerbosity is dropped.
func TestRouteKlog(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	RouteKlog(zap.New(core).Named("client-go"))
	t.Cleanup(klog.ClearLogger)

	klog.InfoS("plain info", "k", "v")
	klog.ErrorS(errors.New("boom"), "an error")
	ctxLog := klog.FromContext(context.Background())
	ctxLog.V(3).Info("Waited before sending request", "delay", "1.2s")
	ctxLog.V(1).Info("verbose 1")
	ctxLog.V(4).Info("a whole response body")
	klog.Flush()

	type line struct {
		level zapcore.Level
		msg   string
	}
	var got []line
	for _, e := range logs.All() {
		if e.LoggerName != "client-go" {
			t.Errorf("%q logged by %q, want client-go", e.Message, e.LoggerName)
		}
		got = append(got, line{e.Level, e.Message})
	}
	want := []line{
		{zapcore.InfoLevel, "plain info"},
		{zapcore.ErrorLevel, "an error"},
		{zapcore.DebugLevel, "Waited before sending request"},
		{zapcore.DebugLevel, "verbose 1"},
	}
	if len(got) != len(want) {
		t.Fatalf("logged %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if e := logs.FilterMessage("Waited before sending request").All(); len(e) != 1 || e[0].ContextMap()["v"] != int64(3) {
		t.Errorf("the throttling line: %+v, want field v=3", e)
	}

	// At info, only verbosity 0 and errors.
	core, logs = observer.New(zapcore.InfoLevel)
	RouteKlog(zap.New(core))
	klog.FromContext(context.Background()).V(3).Info("Waited before sending request")
	klog.InfoS("plain info")
	if n := logs.Len(); n != 1 {
		t.Fatalf("at info: %d lines %+v, want 1", n, logs.All())
	}
}

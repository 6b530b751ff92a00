// Package logging builds the zap logger both binaries use: JSON lines on
// stderr at a level parsed strictly from the configuration. RouteKlog sends
// what Kubernetes libraries log through klog (client-go's rate limiter,
// among others) to the same logger.
package logging

import (
	"fmt"

	"github.com/go-logr/zapr"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/klog/v2"
)

// New returns a production JSON logger at level.
func New(level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("log.level %q: %w", level, err)
	}
	c := zap.NewProductionConfig()
	c.Level = zap.NewAtomicLevelAt(lvl)
	c.EncoderConfig.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	c.Sampling = nil
	return c.Build()
}

// KlogMaxVerbosity is the highest klog verbosity RouteKlog passes on, at
// debug. client-go logs a request that waited for its rate limiter at 3
// ("Waited before sending request", with the delay; one that waited over
// a second also at 0, at most every 10 s), and whole requests and
// responses from 4 on.
const KlogMaxVerbosity = 3

// RouteKlog makes log the backend of klog, for the whole process: klog's
// own calls and the loggers client-go takes from a context
// (klog.FromContext) both write to it. Verbosity 0 is info, 1 to
// KlogMaxVerbosity are debug (with the verbosity as field "v"), higher ones
// are dropped. Call it once, at start-up, before client-go is used; it
// replaces klog's default output (stderr) for good.
func RouteKlog(log *zap.Logger) {
	l := log.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return verbosityCore{c} }))
	klog.SetLoggerWithOptions(zapr.NewLoggerWithOptions(l, zapr.LogInfoLevel("v")), klog.ContextualLogger(true))
}

// verbosityCore maps zapr's levels (klog verbosity n is zap level -n) onto
// the levels a zap logger has: -1 to -KlogMaxVerbosity become debug, lower
// ones are not enabled.
type verbosityCore struct{ zapcore.Core }

func (c verbosityCore) level(l zapcore.Level) (zapcore.Level, bool) {
	if l >= zapcore.DebugLevel {
		return l, true
	}
	return zapcore.DebugLevel, l >= -KlogMaxVerbosity
}

func (c verbosityCore) Enabled(l zapcore.Level) bool {
	l, ok := c.level(l)
	return ok && c.Core.Enabled(l)
}

func (c verbosityCore) With(f []zapcore.Field) zapcore.Core { return verbosityCore{c.Core.With(f)} }

func (c verbosityCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	l, ok := c.level(e.Level)
	if !ok {
		return ce
	}
	e.Level = l
	return c.Core.Check(e, ce)
}

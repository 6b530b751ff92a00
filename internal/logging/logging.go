// Package logging builds the zap logger both binaries use, on stderr at a
// level parsed strictly from the configuration: JSON lines for log
// collectors, or readable console lines for a person at a terminal, with
// the same keys in both. RouteKlog sends what Kubernetes libraries log
// through klog (client-go's rate limiter and leader election, among others)
// to the same logger.
package logging

import (
	"fmt"
	"os"

	"github.com/go-logr/zapr"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/term"
	"k8s.io/klog/v2"
)

// The formats New takes (config's log.format).
const (
	FormatJSON    = "json"
	FormatConsole = "console"
)

// New returns a logger at level ("debug", "info", "warn" or "error") that
// writes to stderr in format: FormatJSON, FormatConsole, or "" for console
// when stderr is a terminal and JSON otherwise. Errors name the key and the
// values allowed.
func New(level, format string) (*zap.Logger, error) {
	return build(level, format, zapcore.Lock(os.Stderr), term.IsTerminal(int(os.Stderr.Fd())))
}

// build is New writing to w; terminal says whether w is one (console
// lines then also get coloured levels).
func build(level, format string, w zapcore.WriteSyncer, terminal bool) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("log.level %q: %w", level, err)
	}
	// The production keys (ts, level, logger, caller, msg, stacktrace) in
	// both formats: the console encoder writes the same entries, the first
	// five as columns and the fields as one JSON object after the message.
	ec := zap.NewProductionEncoderConfig()
	var enc zapcore.Encoder
	switch format {
	case FormatJSON:
	case FormatConsole:
	case "":
		format = FormatJSON
		if terminal {
			format = FormatConsole
		}
	default:
		return nil, fmt.Errorf("log.format %q: use json or console, or leave it out for console on a terminal and JSON otherwise", format)
	}
	if format == FormatConsole {
		ec.EncodeTime = zapcore.TimeEncoderOfLayout("2006-01-02T15:04:05.000Z07:00")
		ec.EncodeLevel = zapcore.CapitalLevelEncoder
		if terminal {
			ec.EncodeLevel = zapcore.CapitalColorLevelEncoder
		}
		ec.ConsoleSeparator = " "
		enc = zapcore.NewConsoleEncoder(ec)
	} else {
		ec.EncodeTime = zapcore.RFC3339NanoTimeEncoder
		enc = zapcore.NewJSONEncoder(ec)
	}
	// As zap.NewProductionConfig().Build(), without sampling: callers, and
	// stack traces on errors.
	return zap.New(zapcore.NewCore(enc, w, zap.NewAtomicLevelAt(lvl)),
		zap.AddCaller(), zap.AddStacktrace(zapcore.ErrorLevel), zap.ErrorOutput(w)), nil
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

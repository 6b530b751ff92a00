// Package logging builds the zap logger both binaries use: JSON lines on
// stderr at a level parsed strictly from the configuration.
package logging

import (
	"fmt"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
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

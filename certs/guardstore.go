package certs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// GuardedStorageConfig configures a GuardedStorage.
type GuardedStorageConfig struct {
	// Storage is the certificate store being wrapped (required).
	Storage certmagic.Storage
	// Where names the store for operators, e.g. `stateDir "/var/lib/keyhole"
	// (certificates in /var/lib/keyhole/acme)`.
	Where string
	// Fix tells the operator what to do when writes fail.
	Fix string
	// Dir, if set, is the directory whose filesystem is checked for MinFree
	// bytes free before each write (MinFree 0: no check).
	Dir     string
	MinFree uint64
	Logger  *zap.Logger
}

// GuardedStorage wraps the certificate store so that a write that fails
// (a full disk, a quota, a read-only volume) is reported with where it went
// and what to do, and so that such a failure loses nothing already stored.
//
// certmagic saves a certificate as three keys (private key, certificate,
// metadata) and, when one write fails, deletes the keys it already wrote in
// that save. On a renewal those keys held the current certificate, so that
// rollback would delete a working key pair. GuardedStorage remembers the
// value each Store replaced and, for a Delete of such a key shortly after a
// failed write, puts the previous value back instead. For a directory on
// disk it also refuses a write up front when less than MinFree bytes are
// free, so that a nearly full disk fails the first write of a save (nothing
// replaced) rather than a later one.
//
// Load, Exists, List, Stat, Lock and Unlock pass through to the wrapped
// store, and so does TryLock when the wrapped store can try a lock.
type GuardedStorage struct {
	store certmagic.Storage
	cfg   GuardedStorageConfig // defaults filled in
	log   *zap.Logger

	mu       sync.Mutex
	prev     map[string]replaced
	failedAt time.Time
}

var (
	_ certmagic.Storage   = (*GuardedStorage)(nil)
	_ certmagic.TryLocker = (*GuardedStorage)(nil)
)

// NewGuardedStorage validates cfg and wraps cfg.Storage.
func NewGuardedStorage(cfg GuardedStorageConfig) (*GuardedStorage, error) {
	var errs []error
	if cfg.Storage == nil {
		errs = append(errs, errors.New("GuardedStorageConfig.Storage is nil; give the certificate store to wrap"))
	}
	if cfg.MinFree > 0 && cfg.Dir == "" {
		errs = append(errs, fmt.Errorf("GuardedStorageConfig.MinFree %d needs Dir, the directory whose filesystem is checked", cfg.MinFree))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("certs: %w", errors.Join(errs...))
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	return &GuardedStorage{store: cfg.Storage, cfg: cfg, log: cfg.Logger, prev: map[string]replaced{}}, nil
}

type replaced struct {
	value []byte
	at    time.Time
}

// restoreWindow bounds how long after a failed write a Delete of a just
// replaced key is taken for certmagic's rollback.
const restoreWindow = time.Minute

// Store writes key after the free-space check, remembering the value it
// replaces.
func (g *GuardedStorage) Store(ctx context.Context, key string, value []byte) error {
	if g.cfg.Dir != "" && g.cfg.MinFree > 0 {
		if free, ok := freeBytes(g.cfg.Dir); ok && free < g.cfg.MinFree+uint64(len(value)) {
			return g.failed(key, fmt.Errorf("%w: %d bytes free in %s, want at least %d: %w",
				ErrStoreFull, free, g.cfg.Dir, g.cfg.MinFree+uint64(len(value)), syscall.ENOSPC))
		}
	}
	old, loadErr := g.store.Load(ctx, key)
	if err := g.store.Store(ctx, key, value); err != nil {
		return g.failed(key, err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	for k, r := range g.prev {
		if now.Sub(r.at) > restoreWindow {
			delete(g.prev, k)
		}
	}
	if loadErr == nil {
		g.prev[key] = replaced{value: old, at: now}
	} else {
		delete(g.prev, key)
	}
	return nil
}

func (g *GuardedStorage) failed(key string, err error) error {
	g.mu.Lock()
	g.failedAt = time.Now()
	g.mu.Unlock()
	g.log.Error("cannot write to the certificate store; the stub keeps serving its current certificate and retries",
		zap.String("store", g.cfg.Where), zap.String("key", key), zap.Error(err), zap.String("fix", g.cfg.Fix))
	return fmt.Errorf("certificate store %s: writing %q: %w (%s)", g.cfg.Where, key, err, g.cfg.Fix)
}

// Delete removes key, except that a key replaced just before a failed
// write gets its previous value back (see the type's comment).
func (g *GuardedStorage) Delete(ctx context.Context, key string) error {
	g.mu.Lock()
	r, ok := g.prev[key]
	rollback := ok && !g.failedAt.Before(r.at) && time.Since(r.at) < restoreWindow
	if rollback {
		delete(g.prev, key)
	}
	g.mu.Unlock()
	if !rollback {
		return g.store.Delete(ctx, key)
	}
	if err := g.store.Store(ctx, key, r.value); err != nil {
		g.log.Error("cannot restore the previous value after a failed save; the stub keeps it in memory and serves it",
			zap.String("store", g.cfg.Where), zap.String("key", key), zap.Error(err), zap.String("fix", g.cfg.Fix))
		return errors.Join(fmt.Errorf("certificate store %s: restoring %q", g.cfg.Where, key), err)
	}
	g.log.Warn("kept the previous value of a key after a failed save", zap.String("store", g.cfg.Where), zap.String("key", key))
	return nil
}

// TryLock passes through when the wrapped storage can try a lock.
func (g *GuardedStorage) TryLock(ctx context.Context, name string) (bool, error) {
	if t, ok := g.store.(certmagic.TryLocker); ok {
		return t.TryLock(ctx, name)
	}
	return false, errors.New("the certificate store cannot try a lock")
}

// String names the store (Where).
func (g *GuardedStorage) String() string { return g.cfg.Where }

// Load passes through to the wrapped store.
func (g *GuardedStorage) Load(ctx context.Context, key string) ([]byte, error) {
	return g.store.Load(ctx, key)
}

// Exists passes through to the wrapped store.
func (g *GuardedStorage) Exists(ctx context.Context, key string) bool {
	return g.store.Exists(ctx, key)
}

// List passes through to the wrapped store.
func (g *GuardedStorage) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	return g.store.List(ctx, path, recursive)
}

// Stat passes through to the wrapped store.
func (g *GuardedStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	return g.store.Stat(ctx, key)
}

// Lock passes through to the wrapped store.
func (g *GuardedStorage) Lock(ctx context.Context, name string) error {
	return g.store.Lock(ctx, name)
}

// Unlock passes through to the wrapped store.
func (g *GuardedStorage) Unlock(ctx context.Context, name string) error {
	return g.store.Unlock(ctx, name)
}

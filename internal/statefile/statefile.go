// Package statefile holds a small file that the stub reads on every use and
// that other commands (or an operator) change while it runs: the value is
// re-parsed when the file's modification time or size changes, checked at
// most once a second, and writes replace the file atomically. A change that
// does not parse leaves the previous value in force; Err reports it.
package statefile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// File is a parsed file kept up to date with the disk.
type File[T any] struct {
	path  string
	parse func([]byte) (T, error)

	mu        sync.Mutex
	val       T
	stamp     stamp
	lastCheck time.Time
	err       error
}

type stamp struct {
	mod  time.Time
	size int64
}

// Open parses path now; a missing file parses as nil input (parse(nil)), so
// a stub can start before anything was registered.
func Open[T any](path string, parse func([]byte) (T, error)) (*File[T], error) {
	f := &File[T]{path: path, parse: parse}
	if err := f.reload(true); err != nil {
		return nil, err
	}
	f.lastCheck = time.Now()
	return f, nil
}

// Get returns the current value, re-reading the file if it changed.
func (f *File[T]) Get() T {
	f.mu.Lock()
	defer f.mu.Unlock()
	if now := time.Now(); now.Sub(f.lastCheck) >= time.Second {
		f.lastCheck = now
		f.err = f.reload(false)
	}
	return f.val
}

// Fresh is Get without the once-a-second throttle: it stats the file now.
// Callers use it after a miss (an unknown token or cluster), so that what a
// command just wrote is seen at once; a miss costs one stat.
func (f *File[T]) Fresh() T {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastCheck = time.Now()
	f.err = f.reload(false)
	return f.val
}

// Reload re-reads the file now, whatever its time stamp says.
func (f *File[T]) Reload() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = f.reload(true)
	return f.err
}

// Err is the error of the last reload that failed, nil once one succeeds.
func (f *File[T]) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// Path is the file's path.
func (f *File[T]) Path() string { return f.path }

func (f *File[T]) reload(force bool) error {
	var st stamp
	var data []byte
	fi, err := os.Stat(f.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return err
	default:
		st = stamp{fi.ModTime(), fi.Size()}
		if !force && st == f.stamp {
			return nil
		}
		if data, err = os.ReadFile(f.path); err != nil {
			return err
		}
	}
	if !force && st == f.stamp {
		return nil
	}
	v, err := f.parse(data)
	if err != nil {
		return fmt.Errorf("%s: %w", f.path, err)
	}
	f.val, f.stamp = v, st
	return nil
}

// WriteAtomic writes data to a temporary file beside path and renames it into
// place, so readers see the old or the new file, never half of one.
func WriteAtomic(path string, data []byte, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

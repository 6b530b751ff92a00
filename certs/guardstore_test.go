package certs

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap/zaptest"
)

// TestGuardedStorageKeepsPair: a renewal whose second write fails (here the
// certificate's file name is taken by a non-empty directory, so the real
// FileStorage's rename fails) must not lose the stored key. certmagic's
// save (storeTx) writes key, certificate, metadata and deletes what it
// wrote when a later write fails; GuardedStorage puts the old key back.
func TestGuardedStorageKeepsPair(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	g, err := NewGuardedStorage(GuardedStorageConfig{Storage: &certmagic.FileStorage{Path: dir}, Where: "directory " + dir, Fix: "free space", Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	key, crt := "certificates/ca/x/x.key", "certificates/ca/x/x.crt"
	for k, v := range map[string]string{key: "old key", crt: "old cert"} {
		if err := g.Store(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	// Make the certificate unwritable: a non-empty directory in its place
	// (the old certificate stays in memory for the check below).
	crtPath := filepath.Join(dir, filepath.FromSlash(crt))
	if err := os.Remove(crtPath); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(crtPath, "in-the-way"), 0o700); err != nil {
		t.Fatal(err)
	}
	// certmagic's storeTx, step by step.
	if err := g.Store(ctx, key, []byte("new key")); err != nil {
		t.Fatal(err)
	}
	err = g.Store(ctx, crt, []byte("new cert"))
	if err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "free space") {
		t.Fatalf("failed write: %v (want the store and the fix named)", err)
	}
	if err := g.Delete(ctx, key); err != nil { // the rollback
		t.Fatal(err)
	}
	if b, err := g.Load(ctx, key); err != nil || string(b) != "old key" {
		t.Fatalf("key after the failed save: %q %v, want the old key", b, err)
	}
	// Deletes that are not such a rollback still delete.
	if err := g.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	if g.Exists(ctx, key) {
		t.Fatal("second delete did not delete")
	}
}

// TestGuardedStorageMinFree: below MinFree a write is refused before it
// touches the store, naming the directory and the fix.
func TestGuardedStorageMinFree(t *testing.T) {
	dir := t.TempDir()
	free, ok := freeBytes(dir)
	if !ok {
		t.Fatal("statfs failed on a temporary directory")
	}
	guarded := func(minFree uint64) *GuardedStorage {
		g, err := NewGuardedStorage(GuardedStorageConfig{Storage: &certmagic.FileStorage{Path: dir}, Where: "directory " + dir,
			Fix: "free space on " + dir, Dir: dir, MinFree: minFree})
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	g := guarded(free + 1<<30)
	err := g.Store(context.Background(), "a/b", []byte("x"))
	if err == nil || !strings.Contains(err.Error(), "no space left on device") || !strings.Contains(err.Error(), "free space on "+dir) {
		t.Fatalf("write with too little free space: %v", err)
	}
	if g.Exists(context.Background(), "a/b") {
		t.Fatal("refused write reached the store")
	}
	if err := guarded(1).Store(context.Background(), "a/b", []byte("x")); err != nil {
		t.Fatal(err)
	}
}

// TestNewGuardedStorageConfig: a missing store and a MinFree with no
// directory to check are errors naming the field; the rest is optional.
func TestNewGuardedStorageConfig(t *testing.T) {
	st := &certmagic.FileStorage{Path: t.TempDir()}
	for _, tc := range []struct {
		name string
		c    GuardedStorageConfig
		want []string // substrings of the error; none: no error
	}{
		{"store only", GuardedStorageConfig{Storage: st}, nil},
		{"no store", GuardedStorageConfig{Where: "x"}, []string{"GuardedStorageConfig.Storage"}},
		{"MinFree without Dir", GuardedStorageConfig{Storage: st, MinFree: 1}, []string{"GuardedStorageConfig.MinFree 1 needs Dir"}},
		{"both", GuardedStorageConfig{MinFree: 1}, []string{"GuardedStorageConfig.Storage", "GuardedStorageConfig.MinFree"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := NewGuardedStorage(tc.c)
			if len(tc.want) == 0 {
				if err != nil || g == nil || g.log == nil {
					t.Fatalf("%v %v", g, err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
}

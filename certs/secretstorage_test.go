package certs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

// TestSecretStorage runs SecretStorage against a real kube-apiserver.
func TestSecretStorage(t *testing.T) {
	c := kubetest.Start(t)
	t.Run("same answers as FileStorage", func(t *testing.T) {
		ns := "acme-kv"
		c.EnsureNamespace(t, ns)
		defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
		ss := newSecretStorage(t, SecretStorageConfig{Client: c.Client(), Namespace: ns, Holder: "r1", Logger: zaptest.NewLogger(t)})
		defer ss.Close()
		sameAsFileStorage(t, ss, &certmagic.FileStorage{Path: t.TempDir()})
		// Names are hashes; the key is in an annotation.
		sec, err := c.Client().CoreV1().Secrets(ns).Get(context.Background(), SecretName("a/d/e.crt"), metav1.GetOptions{})
		if err != nil || sec.Annotations[AnnotationKey] != "a/d/e.crt" || sec.Type != SecretTypeValue {
			t.Fatalf("Secret of a/d/e.crt: %v %+v", err, sec)
		}
	})
	t.Run("lock contention", func(t *testing.T) {
		ns := "acme-lock"
		c.EnsureNamespace(t, ns)
		defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
		lockContention(t, c, ns)
	})
	t.Run("stale lock taken over", func(t *testing.T) {
		ns := "acme-stale"
		c.EnsureNamespace(t, ns)
		defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
		staleLock(t, c, ns)
	})
}

func newSecretStorage(t *testing.T, cfg SecretStorageConfig) *SecretStorage {
	t.Helper()
	ss, err := NewSecretStorage(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return ss
}

// TestNewSecretStorageConfig: a missing client, namespace or holder and a
// negative duration are errors naming the field, all of them at once; zero
// durations take the defaults.
func TestNewSecretStorageConfig(t *testing.T) {
	cs := fake.NewClientset()
	ok := SecretStorageConfig{Client: cs, Namespace: "ns", Holder: "r1"}
	with := func(f func(*SecretStorageConfig)) SecretStorageConfig {
		c := ok
		f(&c)
		return c
	}
	for _, tc := range []struct {
		name string
		c    SecretStorageConfig
		want []string // substrings of the error; none: no error
	}{
		{"defaults", ok, nil},
		{"no client", with(func(c *SecretStorageConfig) { c.Client = nil }), []string{"SecretStorageConfig.Client"}},
		{"no namespace", with(func(c *SecretStorageConfig) { c.Namespace = "" }), []string{"SecretStorageConfig.Namespace"}},
		{"no holder", with(func(c *SecretStorageConfig) { c.Holder = "" }), []string{"SecretStorageConfig.Holder"}},
		{"negative LockTTL", with(func(c *SecretStorageConfig) { c.LockTTL = -time.Second }), []string{"SecretStorageConfig.LockTTL -1s must not be negative"}},
		{"negative LockPoll", with(func(c *SecretStorageConfig) { c.LockPoll = -1 }), []string{"SecretStorageConfig.LockPoll"}},
		{"negative RequestTimeout", with(func(c *SecretStorageConfig) { c.RequestTimeout = -1 }), []string{"SecretStorageConfig.RequestTimeout"}},
		{"everything missing", SecretStorageConfig{LockPoll: -1},
			[]string{"SecretStorageConfig.Client", "SecretStorageConfig.Namespace", "SecretStorageConfig.Holder", "SecretStorageConfig.LockPoll"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ss, err := NewSecretStorage(tc.c)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				defer ss.Close()
				if ss.cfg.LockTTL != DefaultLockTTL || ss.cfg.LockPoll != DefaultLockPoll || ss.cfg.RequestTimeout != DefaultRequestTimeout || ss.log == nil {
					t.Fatalf("defaults not filled in: %+v", ss.cfg)
				}
				return
			}
			if err == nil {
				ss.Close()
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

// sameAsFileStorage does the same operations on both stores and compares
// what certmagic would see.
func sameAsFileStorage(t *testing.T, ss, fsto certmagic.Storage) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	keys := map[string]string{
		"a/b/c.crt":         "cert",
		"a/b/c.key":         "key",
		"a/b/c.json":        "{}",
		"a/d/e.crt":         "other",
		"acme/users/u.json": "user",
		"top":               "file at the top",
	}
	for _, st := range []certmagic.Storage{ss, fsto} {
		for k, v := range keys {
			if err := st.Store(ctx, k, []byte(v)); err != nil {
				t.Fatalf("%v: store %s: %v", st, k, err)
			}
		}
		if err := st.Store(ctx, "a/b/c.crt", []byte("cert v2")); err != nil {
			t.Fatal(err)
		}
	}
	type answer struct {
		Val      string
		Err      bool
		NotExist bool
	}
	ask := func(st certmagic.Storage, op string) answer {
		var a answer
		var err error
		switch op {
		case "load a/b/c.crt", "load a/b", "load nope":
			var b []byte
			b, err = st.Load(ctx, op[5:])
			a.Val = string(b)
		case "list a", "list a/b", "list nope":
			var l []string
			l, err = st.List(ctx, op[5:], false)
			slices.Sort(l)
			a.Val = fmt.Sprint(l)
		case "walk a":
			var l []string
			l, err = st.List(ctx, "a", true)
			slices.Sort(l)
			a.Val = fmt.Sprint(l)
		case "stat a/b/c.crt", "stat a/b", "stat nope":
			var ki certmagic.KeyInfo
			ki, err = st.Stat(ctx, op[5:])
			a.Val = fmt.Sprintf("%s terminal=%v", ki.Key, ki.IsTerminal)
			if ki.IsTerminal { // a directory's size is the file system's business
				a.Val += fmt.Sprintf(" size=%d", ki.Size)
			}
		case "exists a", "exists a/b/c.key", "exists nope", "exists a/b/c":
			a.Val = fmt.Sprint(st.Exists(ctx, op[7:]))
		}
		a.Err, a.NotExist = err != nil, errors.Is(err, fs.ErrNotExist)
		return a
	}
	ops := []string{"load a/b/c.crt", "load nope", "list a", "list a/b", "list nope", "walk a",
		"stat a/b/c.crt", "stat a/b", "stat nope", "exists a", "exists a/b/c.key", "exists nope", "exists a/b/c"}
	compare := func() {
		t.Helper()
		for _, op := range ops {
			got, want := ask(ss, op), ask(fsto, op)
			if got != want {
				t.Errorf("%s: SecretStorage %+v, FileStorage %+v", op, got, want)
			}
		}
	}
	compare()
	if a := ask(ss, "stat a/b/c.crt"); a.Val != "a/b/c.crt terminal=true size=7" {
		t.Errorf("stat: %+v", a)
	}
	// A directory delete takes everything under it; deleting what is not
	// there is not an error.
	for _, st := range []certmagic.Storage{ss, fsto} {
		if err := st.Delete(ctx, "a/b"); err != nil {
			t.Fatal(err)
		}
		if err := st.Delete(ctx, "a/b"); err != nil {
			t.Fatalf("%v: second delete: %v", st, err)
		}
	}
	compare()
	if got := ask(ss, "walk a").Val; got != "[a/d a/d/e.crt]" {
		t.Errorf("after delete: %s", got)
	}
}

func lockContention(t *testing.T, c *kubetest.Cluster, ns string) {
	const replicas, rounds = 4, 3
	var inside, maxInside, entries atomic.Int32
	var wg sync.WaitGroup
	start := time.Now()
	errs := make(chan error, replicas*rounds)
	for r := range replicas {
		ss := newSecretStorage(t, SecretStorageConfig{Client: c.Client(), Namespace: ns, Holder: fmt.Sprintf("r%d", r),
			LockTTL: 10 * time.Second, LockPoll: 50 * time.Millisecond, Logger: zaptest.NewLogger(t)})
		defer ss.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				err := ss.Lock(ctx, "issue_cert_keyhole.example.com")
				if err != nil {
					cancel()
					errs <- err
					return
				}
				n := inside.Add(1)
				for {
					m := maxInside.Load()
					if n <= m || maxInside.CompareAndSwap(m, n) {
						break
					}
				}
				entries.Add(1)
				time.Sleep(30 * time.Millisecond)
				inside.Add(-1)
				if err := ss.Unlock(ctx, "issue_cert_keyhole.example.com"); err != nil {
					errs <- err
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d lock holds by %d replicas in %v; at most %d inside at once", entries.Load(), replicas, time.Since(start), maxInside.Load())
	if entries.Load() != replicas*rounds || maxInside.Load() != 1 {
		t.Fatalf("entries %d (want %d), max inside %d (want 1)", entries.Load(), replicas*rounds, maxInside.Load())
	}
	// Released locks leave no Secret behind.
	l, err := c.Client().CoreV1().Secrets(ns).List(context.Background(), metav1.ListOptions{LabelSelector: LabelStorage + "=lock"})
	if err != nil || len(l.Items) != 0 {
		t.Fatalf("lock Secrets left: %v %d", err, len(l.Items))
	}
	// Within one process a second Lock waits too.
	ss := newSecretStorage(t, SecretStorageConfig{Client: c.Client(), Namespace: ns, Holder: "same", LockPoll: 50 * time.Millisecond})
	defer ss.Close()
	ctx := context.Background()
	if err := ss.Lock(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if ok, err := ss.TryLock(ctx, "x"); ok || err != nil {
		t.Fatalf("second TryLock in the same process: %v %v", ok, err)
	}
	if err := ss.Unlock(ctx, "x"); err != nil {
		t.Fatal(err)
	}
}

func staleLock(t *testing.T, c *kubetest.Cluster, ns string) {
	const ttl = 2 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	crashed := newSecretStorage(t, SecretStorageConfig{Client: c.Client(), Namespace: ns, Holder: "crashed", LockTTL: ttl, Logger: zaptest.NewLogger(t)})
	defer crashed.Close()
	waiter := newSecretStorage(t, SecretStorageConfig{Client: c.Client(), Namespace: ns, Holder: "waiter", LockTTL: ttl, LockPoll: 100 * time.Millisecond, Logger: zaptest.NewLogger(t)})
	defer waiter.Close()
	if err := crashed.Lock(ctx, "issue_cert_x"); err != nil {
		t.Fatal(err)
	}
	// Held and renewed: a waiter does not get it for well over the TTL.
	held := time.Now()
	for time.Since(held) < 2*ttl {
		if ok, err := waiter.TryLock(ctx, "issue_cert_x"); ok || err != nil {
			t.Fatalf("lock taken while its holder renews it: %v %v", ok, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The holder "crashes": it stops renewing and never unlocks.
	crashed.mu.Lock()
	h := crashed.held["issue_cert_x"]
	delete(crashed.held, "issue_cert_x")
	crashed.mu.Unlock()
	close(h.stop)
	<-h.stopped
	crashedAt := time.Now()
	if err := waiter.Lock(ctx, "issue_cert_x"); err != nil {
		t.Fatalf("stale lock not taken over: %v", err)
	}
	took := time.Since(crashedAt)
	t.Logf("stale lock (TTL %v) taken over %v after its holder stopped", ttl, took)
	if took > ttl+30*time.Second {
		t.Fatalf("takeover took %v, TTL %v", took, ttl)
	}
	// The crashed holder coming back and releasing does not free the
	// waiter's lock.
	if err := crashed.release(ctx, "issue_cert_x", h); err != nil {
		t.Fatal(err)
	}
	sec, err := c.Client().CoreV1().Secrets(ns).Get(ctx, LockSecretName("issue_cert_x"), metav1.GetOptions{})
	if err != nil || sec.Annotations[AnnotationHolder] == h.token {
		t.Fatalf("lock after the old holder's release: %v %+v", err, sec)
	}
	if err := waiter.Unlock(ctx, "issue_cert_x"); err != nil {
		t.Fatal(err)
	}
}

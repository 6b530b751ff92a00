package certs

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
)

// Labels, annotations and Secret types of SecretStorage. A value Secret
// holds one certmagic key; a lock Secret is one certmagic lock.
const (
	LabelStorage      = "keyhole.dev/acme-storage" // value: "value" or "lock"
	LabelManagedBy    = "app.kubernetes.io/managed-by"
	ManagedBy         = "keyhole-certmagic"    // LabelManagedBy's value (install/kustomize/stub/role.yaml)
	AnnotationKey     = "keyhole.dev/acme-key" // the certmagic key or lock name, verbatim
	AnnotationHolder  = "keyhole.dev/acme-lock-holder"
	AnnotationExpires = "keyhole.dev/acme-lock-expires" // RFC 3339, UTC
	AnnotationModTime = "keyhole.dev/acme-modified"     // RFC 3339 with nanoseconds, UTC
	SecretTypeValue   = corev1.SecretType("keyhole.dev/acme-value")
	SecretTypeLock    = corev1.SecretType("keyhole.dev/acme-lock")
	secretValueKey    = "value"
)

// Defaults of SecretStorageConfig.
const (
	DefaultLockTTL        = 30 * time.Second
	DefaultLockPoll       = time.Second
	DefaultRequestTimeout = 15 * time.Second
)

// SecretStorageConfig configures a SecretStorage.
type SecretStorageConfig struct {
	// Client reaches the API server that holds the Secrets (required).
	Client kubernetes.Interface
	// Namespace holds the Secrets (required).
	Namespace string
	// Holder names this process in lock Secrets, e.g. the replica ID
	// (required).
	Holder string
	// LockTTL is how long a lock outlives its last renewal (default
	// DefaultLockTTL); LockPoll is how often a waiter looks again (default
	// DefaultLockPoll).
	LockTTL  time.Duration
	LockPoll time.Duration
	// RequestTimeout bounds each API call (default DefaultRequestTimeout).
	RequestTimeout time.Duration
	Logger         *zap.Logger
}

// SecretStorage is a certmagic.Storage that keeps certificates, keys, ACME
// account data and locks in Kubernetes Secrets of one namespace, so that
// stub replicas share them: one replica orders a certificate, the others
// load it.
//
// Each key is one Secret named keyhole-acme-<sha256 of the key> (keys may
// hold characters Secret names may not), with the key itself in an
// annotation and a label that List uses to find them. Locks are Secrets
// named keyhole-acme-lock-<sha256 of the name> carrying their holder and an
// expiry: the holder renews the expiry while it holds the lock, so a replica
// that crashed holding one loses it after LockTTL, and a waiter takes it
// over (an Update conditional on the resourceVersion it read, so only one
// waiter wins).
type SecretStorage struct {
	cfg SecretStorageConfig // defaults filled in
	log *zap.Logger

	mu     sync.Mutex
	held   map[string]*heldLock // lock name -> renewal state
	closed bool
	wg     sync.WaitGroup
}

type heldLock struct {
	token   string
	rv      string // resourceVersion of our last write of the lock Secret
	stop    chan struct{}
	stopped chan struct{}
	mu      sync.Mutex
}

var (
	_ certmagic.Storage   = (*SecretStorage)(nil)
	_ certmagic.TryLocker = (*SecretStorage)(nil)
)

// NewSecretStorage validates cfg, fills in its defaults and returns the
// storage. It makes no API call: a Secret that cannot be read yet is the
// error of the first operation. Close releases the locks it holds.
func NewSecretStorage(cfg SecretStorageConfig) (*SecretStorage, error) {
	var errs []error
	if cfg.Client == nil {
		errs = append(errs, errors.New("SecretStorageConfig.Client is nil; give a client of the API server that holds the Secrets"))
	}
	if cfg.Namespace == "" {
		errs = append(errs, errors.New("SecretStorageConfig.Namespace is empty; name the namespace that holds the Secrets"))
	}
	if cfg.Holder == "" {
		errs = append(errs, errors.New("SecretStorageConfig.Holder is empty; name this process in lock Secrets (the replica ID)"))
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"LockTTL", &cfg.LockTTL, DefaultLockTTL},
		{"LockPoll", &cfg.LockPoll, DefaultLockPoll},
		{"RequestTimeout", &cfg.RequestTimeout, DefaultRequestTimeout},
	} {
		switch {
		case *d.v < 0:
			errs = append(errs, fmt.Errorf("SecretStorageConfig.%s %v must not be negative (0: %v)", d.name, *d.v, d.def))
		case *d.v == 0:
			*d.v = d.def
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("certs: %w", errors.Join(errs...))
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	return &SecretStorage{cfg: cfg, log: cfg.Logger}, nil
}

func (s *SecretStorage) reqCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.cfg.RequestTimeout)
}

func (s *SecretStorage) secrets() corev1client.SecretInterface {
	return s.cfg.Client.CoreV1().Secrets(s.cfg.Namespace)
}

func hashName(prefix, key string) string {
	sum := sha256.Sum256([]byte(key))
	return prefix + hex.EncodeToString(sum[:20])
}

// SecretName returns the name of the Secret holding key.
func SecretName(key string) string { return hashName("keyhole-acme-", key) }

// LockSecretName returns the name of the Secret that is the lock name.
func LockSecretName(name string) string { return hashName("keyhole-acme-lock-", name) }

func (s *SecretStorage) where(key string) string {
	return fmt.Sprintf("Secret %s/%s (key %q)", s.cfg.Namespace, SecretName(key), key)
}

// Store puts value at key, creating or replacing its Secret.
func (s *SecretStorage) Store(ctx context.Context, key string, value []byte) error {
	name := SecretName(key)
	now := time.Now().UTC().Format(time.RFC3339Nano)
	for attempt := 0; attempt < 5; attempt++ {
		rctx, cancel := s.reqCtx(ctx)
		cur, err := s.secrets().Get(rctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			sec := &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: s.cfg.Namespace,
					Labels:      map[string]string{LabelStorage: "value", LabelManagedBy: ManagedBy},
					Annotations: map[string]string{AnnotationKey: key, AnnotationModTime: now}},
				Type: SecretTypeValue,
				Data: map[string][]byte{secretValueKey: value},
			}
			_, err = s.secrets().Create(rctx, sec, metav1.CreateOptions{})
		case err == nil:
			if got := cur.Annotations[AnnotationKey]; got != key {
				cancel()
				return fmt.Errorf("%s: holds key %q instead; delete that Secret if it is not the stub's", s.where(key), got)
			}
			cur.Data = map[string][]byte{secretValueKey: value}
			cur.Annotations[AnnotationModTime] = now
			_, err = s.secrets().Update(rctx, cur, metav1.UpdateOptions{})
		}
		cancel()
		if err == nil {
			return nil
		}
		if !apierrors.IsConflict(err) && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("storing %s: %w", s.where(key), err)
		}
	}
	return fmt.Errorf("storing %s: still conflicting after 5 attempts", s.where(key))
}

// Load returns the value at key, or an error wrapping fs.ErrNotExist.
func (s *SecretStorage) Load(ctx context.Context, key string) ([]byte, error) {
	rctx, cancel := s.reqCtx(ctx)
	defer cancel()
	sec, err := s.secrets().Get(rctx, SecretName(key), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%s: %w", s.where(key), fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", s.where(key), err)
	}
	if got := sec.Annotations[AnnotationKey]; got != key {
		return nil, fmt.Errorf("%s: holds key %q instead: %w", s.where(key), got, fs.ErrNotExist)
	}
	return sec.Data[secretValueKey], nil
}

// entries lists every value Secret: key -> Secret.
func (s *SecretStorage) entries(ctx context.Context) (map[string]*corev1.Secret, error) {
	rctx, cancel := s.reqCtx(ctx)
	defer cancel()
	l, err := s.secrets().List(rctx, metav1.ListOptions{LabelSelector: LabelStorage + "=value"})
	if err != nil {
		return nil, fmt.Errorf("listing Secrets in %s with label %s=value: %w", s.cfg.Namespace, LabelStorage, err)
	}
	m := make(map[string]*corev1.Secret, len(l.Items))
	for i := range l.Items {
		if k, ok := l.Items[i].Annotations[AnnotationKey]; ok {
			m[k] = &l.Items[i]
		}
	}
	return m, nil
}

// under reports whether key is prefix itself or inside the "directory"
// prefix (component-wise, as certmagic defines prefixes).
func under(key, prefix string) bool {
	return prefix == "" || key == prefix || strings.HasPrefix(key, prefix+"/")
}

// Delete removes key and, if it is a directory, everything under it.
func (s *SecretStorage) Delete(ctx context.Context, key string) error {
	all, err := s.entries(ctx)
	if err != nil {
		return err
	}
	for k := range all {
		if !under(k, key) {
			continue
		}
		rctx, cancel := s.reqCtx(ctx)
		err := s.secrets().Delete(rctx, SecretName(k), metav1.DeleteOptions{})
		cancel()
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting %s: %w", s.where(k), err)
		}
	}
	return nil
}

// Exists reports whether key is a stored value or a directory of values.
func (s *SecretStorage) Exists(ctx context.Context, key string) bool {
	_, err := s.Stat(ctx, key)
	return err == nil
}

// List returns the keys directly in prefix (files and directories), or all
// keys below it when recursive.
func (s *SecretStorage) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	all, err := s.entries(ctx)
	if err != nil {
		return nil, err
	}
	prefix = strings.Trim(prefix, "/")
	seen := map[string]bool{}
	for k := range all {
		if k == prefix || !under(k, prefix) {
			continue
		}
		if recursive {
			// Files and the directories leading to them, like FileStorage's walk.
			rest := strings.TrimPrefix(strings.TrimPrefix(k, prefix), "/")
			parts := strings.Split(rest, "/")
			for i := 1; i <= len(parts); i++ {
				seen[path.Join(prefix, strings.Join(parts[:i], "/"))] = true
			}
			continue
		}
		rest := strings.TrimPrefix(strings.TrimPrefix(k, prefix), "/")
		first, _, _ := strings.Cut(rest, "/")
		seen[path.Join(prefix, first)] = true
	}
	if len(seen) == 0 {
		return nil, fmt.Errorf("no keys under %q in Secrets of %s: %w", prefix, s.cfg.Namespace, fs.ErrNotExist)
	}
	keys := make([]string, 0, len(seen))
	for k := range seen {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys, nil
}

// Stat describes key: a value (terminal, with size and modification time)
// or a directory of values.
func (s *SecretStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	key = strings.Trim(key, "/")
	rctx, cancel := s.reqCtx(ctx)
	sec, err := s.secrets().Get(rctx, SecretName(key), metav1.GetOptions{})
	cancel()
	if err == nil && sec.Annotations[AnnotationKey] == key {
		mod, _ := time.Parse(time.RFC3339Nano, sec.Annotations[AnnotationModTime])
		return certmagic.KeyInfo{Key: key, Modified: mod, Size: int64(len(sec.Data[secretValueKey])), IsTerminal: true}, nil
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return certmagic.KeyInfo{}, fmt.Errorf("stat %s: %w", s.where(key), err)
	}
	all, err := s.entries(ctx)
	if err != nil {
		return certmagic.KeyInfo{}, err
	}
	for k := range all {
		if k != key && under(k, key) {
			return certmagic.KeyInfo{Key: key, IsTerminal: false}, nil
		}
	}
	return certmagic.KeyInfo{}, fmt.Errorf("%s: %w", s.where(key), fs.ErrNotExist)
}

// String names the storage (certmagic logs it).
func (s *SecretStorage) String() string {
	return "kubernetes Secrets in namespace " + s.cfg.Namespace
}

func newToken(holder string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return holder + "/" + hex.EncodeToString(b)
}

// Lock takes the named lock, waiting (until ctx ends) while another holder
// has it and it has not expired. While held, a goroutine renews its expiry;
// Unlock (or Close) stops it.
func (s *SecretStorage) Lock(ctx context.Context, name string) error {
	for {
		ok, err := s.TryLock(ctx, name)
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for lock %q (%s/%s): %w", name, s.cfg.Namespace, LockSecretName(name), ctx.Err())
		case <-time.After(s.cfg.LockPoll):
		}
	}
}

// TryLock takes the named lock if it is free or expired, without waiting.
func (s *SecretStorage) TryLock(ctx context.Context, name string) (bool, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false, errors.New("secret storage is closed")
	}
	if _, mine := s.held[name]; mine {
		s.mu.Unlock()
		return false, nil // another goroutine of this process holds it
	}
	s.mu.Unlock()

	token := newToken(s.cfg.Holder)
	secName := LockSecretName(name)
	expires := func() string { return time.Now().Add(s.cfg.LockTTL).UTC().Format(time.RFC3339Nano) }
	rctx, cancel := s.reqCtx(ctx)
	defer cancel()
	secrets := s.secrets()
	created, err := secrets.Create(rctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: secName, Namespace: s.cfg.Namespace,
			Labels:      map[string]string{LabelStorage: "lock", LabelManagedBy: ManagedBy},
			Annotations: map[string]string{AnnotationKey: name, AnnotationHolder: token, AnnotationExpires: expires()}},
		Type: SecretTypeLock,
	}, metav1.CreateOptions{})
	if err == nil {
		return s.hold(name, token, created.ResourceVersion), nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return false, fmt.Errorf("taking lock %q (Secret %s/%s): %w", name, s.cfg.Namespace, secName, err)
	}
	cur, err := secrets.Get(rctx, secName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil // released meanwhile: the next try creates it
	}
	if err != nil {
		return false, fmt.Errorf("reading lock %q (Secret %s/%s): %w", name, s.cfg.Namespace, secName, err)
	}
	exp, perr := time.Parse(time.RFC3339Nano, cur.Annotations[AnnotationExpires])
	if perr == nil && time.Now().Before(exp) {
		return false, nil
	}
	// Expired (or unreadable): its holder stopped renewing it. Take it over,
	// conditional on the version read so that only one waiter wins.
	prev := cur.Annotations[AnnotationHolder]
	if cur.Annotations == nil {
		cur.Annotations = map[string]string{}
	}
	cur.Annotations[AnnotationKey] = name
	cur.Annotations[AnnotationHolder] = token
	cur.Annotations[AnnotationExpires] = expires()
	upd, err := secrets.Update(rctx, cur, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("taking over expired lock %q (Secret %s/%s): %w", name, s.cfg.Namespace, secName, err)
	}
	s.log.Warn("took over an expired ACME storage lock", zap.String("lock", name),
		zap.String("secret", s.cfg.Namespace+"/"+secName), zap.String("previous_holder", prev),
		zap.String("expired", cur.Annotations[AnnotationExpires]))
	return s.hold(name, token, upd.ResourceVersion), nil
}

func (s *SecretStorage) hold(name, token, rv string) bool {
	h := &heldLock{token: token, rv: rv, stop: make(chan struct{}), stopped: make(chan struct{})}
	s.mu.Lock()
	if s.closed {
		// Close ran while this lock was being taken: no renewal may start
		// after Close waited for them, so give the lock back at once.
		s.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.release(ctx, name, h); err != nil {
			s.log.Warn("releasing an ACME storage lock taken during close", zap.Error(err))
		}
		return false
	}
	if s.held == nil {
		s.held = map[string]*heldLock{}
	}
	s.held[name] = h
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer close(h.stopped)
		s.renew(name, h)
	}()
	return true
}

// renew keeps the lock's expiry in the future until stopped.
func (s *SecretStorage) renew(name string, h *heldLock) {
	every := s.cfg.LockTTL / 3
	secName := LockSecretName(name)
	for {
		select {
		case <-h.stop:
			return
		case <-time.After(every):
		}
		ctx, cancel := s.reqCtx(context.Background())
		go func() { // cancel the request when stopped
			select {
			case <-h.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		cur, err := s.secrets().Get(ctx, secName, metav1.GetOptions{})
		if err == nil {
			if cur.Annotations[AnnotationHolder] != h.token {
				cancel()
				s.log.Error("lost an ACME storage lock to another holder (renewals did not reach the API server in time)",
					zap.String("lock", name), zap.String("holder", cur.Annotations[AnnotationHolder]))
				return
			}
			cur.Annotations[AnnotationExpires] = time.Now().Add(s.cfg.LockTTL).UTC().Format(time.RFC3339Nano)
			var upd *corev1.Secret
			if upd, err = s.secrets().Update(ctx, cur, metav1.UpdateOptions{}); err == nil {
				h.mu.Lock()
				h.rv = upd.ResourceVersion
				h.mu.Unlock()
			}
		}
		cancel()
		if err != nil && ctx.Err() == nil {
			s.log.Warn("renewing ACME storage lock", zap.String("lock", name), zap.Error(err))
		}
	}
}

// Unlock releases a lock taken by Lock or TryLock.
func (s *SecretStorage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	h, ok := s.held[name]
	delete(s.held, name)
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("unlock %q: not held by this process", name)
	}
	close(h.stop)
	<-h.stopped
	return s.release(ctx, name, h)
}

func (s *SecretStorage) release(ctx context.Context, name string, h *heldLock) error {
	h.mu.Lock()
	rv := h.rv
	h.mu.Unlock()
	rctx, cancel := s.reqCtx(ctx)
	defer cancel()
	// Only our own version: a lock taken over by another holder stays theirs.
	err := s.secrets().Delete(rctx, LockSecretName(name),
		metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv}})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("releasing lock %q (Secret %s/%s): %w", name, s.cfg.Namespace, LockSecretName(name), err)
	}
	return nil
}

// Close stops renewing and releases every lock still held. Safe to call
// more than once.
func (s *SecretStorage) Close() {
	s.mu.Lock()
	s.closed = true
	held := s.held
	s.held = nil
	s.mu.Unlock()
	for name, h := range held {
		close(h.stop)
		<-h.stopped
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := s.release(ctx, name, h); err != nil {
			s.log.Warn("releasing ACME storage lock on close", zap.Error(err))
		}
		cancel()
	}
	s.wg.Wait()
}

package ha

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"

	"github.com/keyhole-dev/keyhole/internal/statefile"
)

// StateSecret is the Secret that holds the state the replicas share: the
// registered clusters and the static token hashes, one key per file.
const StateSecret = "keyhole-state"

// State mirrors the shared state Secret into files of the state directory,
// where the stub's readers (stub.State) pick changes up as they do for a
// single stub. Writers (the register and kubeconfig commands, the leader's
// token pruning) change the Secret through Update; every replica's mirror
// then writes the files. When the hub cannot be reached
// the files stay as they were: the stub serves on what it knows.
type State struct {
	cs    kubernetes.Interface
	ns    string
	files map[string]string // Secret key -> file path
	log   *zap.Logger

	mu      sync.Mutex
	synced  time.Time // last time the files matched the Secret
	lastErr error
}

// NewState mirrors the keys of files (Secret key -> file path).
func NewState(cs kubernetes.Interface, namespace string, files map[string]string, log *zap.Logger) *State {
	if log == nil {
		log = zap.NewNop()
	}
	return &State{cs: cs, ns: namespace, files: files, log: log}
}

// Pull reads the Secret once and writes the files; a missing Secret means
// no state yet (the files are removed).
func (s *State) Pull(ctx context.Context) error {
	sec, err := s.cs.CoreV1().Secrets(s.ns).Get(ctx, StateSecret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		sec, err = nil, nil
	}
	if err != nil {
		s.note(err)
		return fmt.Errorf("read Secret %s/%s from the hub: %w", s.ns, StateSecret, err)
	}
	return s.apply(sec)
}

// Run keeps the files in step with the Secret until ctx ends (a watch, so a
// change reaches every replica within a second or so).
func (s *State) Run(ctx context.Context) {
	lw := cache.NewListWatchFromClient(s.cs.CoreV1().RESTClient(), "secrets", s.ns,
		fields.OneTermEqualSelector("metadata.name", StateSecret))
	inf := cache.NewSharedIndexInformer(lw, &corev1.Secret{}, 0, cache.Indexers{})
	_ = inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
		// An expired resource version or a closed watch is routine (the
		// informer lists again); anything else means the hub is not
		// answering as it should.
		if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return
		}
		s.note(err)
	})
	write := func(obj any) {
		if sec, ok := obj.(*corev1.Secret); ok {
			if err := s.apply(sec); err != nil {
				s.log.Error("mirror shared state", zap.Error(err))
			}
		}
	}
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    write,
		UpdateFunc: func(_, obj any) { write(obj) },
		DeleteFunc: func(any) {
			if err := s.apply(nil); err != nil {
				s.log.Error("mirror shared state", zap.Error(err))
			}
		},
	})
	inf.Run(ctx.Done()) // returns when ctx ends, its goroutines stopped
}

func (s *State) apply(sec *corev1.Secret) error {
	for key, path := range s.files {
		var want []byte
		if sec != nil {
			want = sec.Data[key]
		}
		have, err := os.ReadFile(path)
		switch {
		case want == nil && errors.Is(err, os.ErrNotExist):
			continue
		case want == nil:
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("remove %s: %w", path, err)
			}
			s.log.Info("shared state key gone; removed its file", zap.String("key", key))
		case err == nil && bytes.Equal(have, want):
			continue
		default:
			if err := statefile.WriteAtomic(path, want, 0o600); err != nil {
				return fmt.Errorf("write %s (state directory; is it writable and not full?): %w", path, err)
			}
			s.log.Info("shared state updated", zap.String("key", key), zap.Int("bytes", len(want)))
		}
	}
	s.note(nil)
	return nil
}

func (s *State) note(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.synced, s.lastErr = time.Now(), nil
		return
	}
	if s.lastErr == nil {
		s.log.Warn("hub unreachable: serving on the last shared state mirrored", zap.Error(err))
	}
	s.lastErr = err
}

// Update changes key of the shared state: edit gets the key's current
// value (nil if none) and returns the new one; the result is written to the
// Secret with optimistic concurrency (a concurrent writer makes it retry,
// calling edit again on the new value), then to the local mirror file. An
// error from edit ends Update with that error and writes nothing.
func (s *State) Update(ctx context.Context, key string, edit func(cur []byte) ([]byte, error)) error {
	secrets := s.cs.CoreV1().Secrets(s.ns)
	// Writers are people and CI jobs, rarely more than a few at once; give
	// them room (about 20 tries over some seconds) before giving up.
	backoff := wait.Backoff{Steps: 20, Duration: 10 * time.Millisecond, Factor: 1.5, Jitter: 1, Cap: time.Second}
	return retry.RetryOnConflict(backoff, func() error {
		sec, err := secrets.Get(ctx, StateSecret, metav1.GetOptions{})
		create := apierrors.IsNotFound(err)
		if create {
			sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: StateSecret, Namespace: s.ns,
				Labels: map[string]string{"app.kubernetes.io/name": "keyhole-stub", "app.kubernetes.io/component": "state"}},
				Type: corev1.SecretTypeOpaque}
		} else if err != nil {
			return fmt.Errorf("read Secret %s/%s from the hub: %w", s.ns, StateSecret, err)
		}
		next, err := edit(sec.Data[key])
		if err != nil {
			return err
		}
		if sec.Data == nil {
			sec.Data = map[string][]byte{}
		}
		sec.Data[key] = next
		if create {
			_, err = secrets.Create(ctx, sec, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				return apierrors.NewConflict(corev1.Resource("secrets"), StateSecret, err) // lost the race: retry on theirs
			}
		} else {
			_, err = secrets.Update(ctx, sec, metav1.UpdateOptions{})
		}
		if err == nil {
			if path, ok := s.files[key]; ok {
				_ = statefile.WriteAtomic(path, next, 0o600)
			}
		}
		return err
	})
}

// Health reports when the files last matched the Secret and the hub error
// since then, if any.
func (s *State) Health() (synced time.Time, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced, s.lastErr
}

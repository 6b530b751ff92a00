package stub

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/keyhole-dev/keyhole/internal/statefile"
	"github.com/keyhole-dev/keyhole/web"
)

// Browser sessions: *State is the web.Store. With a directory, a record is
// the file sessions/<name>.json (0600, replaced atomically; its "version"
// changes on every write and is compared under the state directory's lock),
// and the sealing keys are session-keys.yaml. With the hub, a record is a
// Secret of its own, keyhole-session-<name> (optimistic concurrency on its
// resourceVersion), read through an informer (RunSessions) with a live GET
// on a miss; the keys are the key session-keys.yaml of the shared state
// Secret, mirrored into the directory like clusters.yaml.
//
// Not one shared Secret for every record: it would reach the 1 MiB limit at
// some dozens of users with large tokens, and every refresh would send all
// of it to every replica.

var _ web.Store = (*State)(nil)

// Labels and type of the hub's session Secrets.
const (
	// SessionSecretPrefix + a record's name is its Secret.
	SessionSecretPrefix = "keyhole-session-"
	// SessionLabel (value "record") marks session Secrets; the informer
	// selects on it.
	SessionLabel      = "keyhole.dev/browser-session"
	sessionSecretType = corev1.SecretType("keyhole.dev/browser-session")
	sessionDataKey    = "record"
	sessionsDir       = "sessions"
)

// Timing of key rotation.
const (
	// SessionKeyLead is how long a new key waits before it seals: every
	// replica mirrors it before any cookie sealed with it arrives.
	SessionKeyLead = 2 * time.Minute
	// sessionKeyGrace is kept beyond the longest cookie lifetime before a
	// key that no longer seals is dropped.
	sessionKeyGrace = 10 * time.Minute
	// keysPullEvery bounds how often a fresh read of the keys asks the hub
	// (a cookie with an unknown key ID asks for one, so strangers must not
	// be able to make every request a hub round trip).
	keysPullEvery = time.Second
)

// sessionCache is the State's memory of session records.
type sessionCache struct {
	mu       sync.Mutex
	files    map[string]cachedSession  // directory: name → record as last read
	inf      cache.SharedIndexInformer // hub: nil unless RunSessions runs
	lastPull time.Time                 // hub: last fresh read of the keys
}

type cachedSession struct {
	stamp fileStamp
	rec   web.Record
}

// fileStamp tells a replaced file from the one read before: every write
// renames a new file into place, so the inode changes along with the time.
type fileStamp struct {
	ino  uint64
	mod  time.Time
	size int64
}

// sessionFile is a record as the directory stores it.
type sessionFile struct {
	Version string `json:"version"`
	web.Record
}

// ValidSessionName reports whether name is a record name web.Store accepts:
// 1 to 64 lower-case hex digits.
func ValidSessionName(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for _, c := range name {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func checkSessionName(name string) error {
	if !ValidSessionName(name) {
		return fmt.Errorf("browser session record name %q: want 1 to 64 lower-case hex digits", name)
	}
	return nil
}

func (s *State) sessionPath(name string) string {
	return filepath.Join(s.dir, sessionsDir, name+".json")
}

func newVersion() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func cloneRecord(r *web.Record) *web.Record {
	c := *r
	if r.Lease != nil {
		l := *r.Lease
		c.Lease = &l
	}
	c.Sealed = slices.Clone(r.Sealed)
	return &c
}

// GetSession implements web.Store.
func (s *State) GetSession(ctx context.Context, name string, fresh bool) (*web.Record, error) {
	if err := checkSessionName(name); err != nil {
		return nil, err
	}
	if s.hubClient != nil {
		return s.hubGetSession(ctx, name, fresh)
	}
	return s.dirGetSession(name, fresh)
}

// CreateSession implements web.Store. On success r.Version is the stored
// record's version, so r can be updated next without a read. A record of
// that name already there is web.ErrConflict.
func (s *State) CreateSession(ctx context.Context, name string, r *web.Record) error {
	if err := checkSessionName(name); err != nil {
		return err
	}
	if s.hubClient != nil {
		return s.hubCreateSession(ctx, name, r)
	}
	return s.locked(func() error {
		if _, err := os.Lstat(s.sessionPath(name)); err == nil {
			return fmt.Errorf("record %s exists: %w", name, web.ErrConflict)
		}
		return s.dirWriteSession(name, r)
	})
}

// UpdateSession implements web.Store: web.ErrConflict when r.Version is not
// the stored record's, also when the record is gone (signed out). On
// success r.Version is the new version.
func (s *State) UpdateSession(ctx context.Context, name string, r *web.Record) error {
	if err := checkSessionName(name); err != nil {
		return err
	}
	if s.hubClient != nil {
		return s.hubUpdateSession(ctx, name, r)
	}
	return s.locked(func() error {
		cur, _, err := readSessionFile(s.sessionPath(name))
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("record %s is gone: %w", name, web.ErrConflict)
		}
		if err != nil {
			return err
		}
		if r.Version == "" || cur.Version != r.Version {
			return fmt.Errorf("record %s: version %q, now %q: %w", name, r.Version, cur.Version, web.ErrConflict)
		}
		return s.dirWriteSession(name, r)
	})
}

// DeleteSession implements web.Store.
func (s *State) DeleteSession(ctx context.Context, name string) error {
	if err := checkSessionName(name); err != nil {
		return err
	}
	if s.hubClient != nil {
		err := s.hubClient.CoreV1().Secrets(s.hubNS).Delete(ctx, SessionSecretPrefix+name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete browser session Secret %s/%s%s: %w", s.hubNS, SessionSecretPrefix, name, err)
		}
		return nil
	}
	err := s.locked(func() error {
		err := os.Remove(s.sessionPath(name))
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	})
	s.sessions.mu.Lock()
	delete(s.sessions.files, name)
	s.sessions.mu.Unlock()
	return err
}

// PruneSessions removes the records whose absolute end (Expires) is before
// now and returns how many it removed. Their cookies are refused anyway;
// this keeps the directory or the hub from filling up. A record that does
// not parse is left alone and reported.
func (s *State) PruneSessions(ctx context.Context, now time.Time) (int, error) {
	if s.hubClient != nil {
		return s.hubPruneSessions(ctx, now)
	}
	ents, err := os.ReadDir(filepath.Join(s.dir, sessionsDir))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !ValidSessionName(name) {
			continue
		}
		err := s.locked(func() error {
			f, _, err := readSessionFile(s.sessionPath(name))
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			if err != nil {
				return err
			}
			if !f.Expires.Before(now) {
				return nil
			}
			if err := os.Remove(s.sessionPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			n++
			return nil
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	s.sessions.mu.Lock()
	for name := range s.sessions.files {
		if _, err := os.Lstat(s.sessionPath(name)); errors.Is(err, os.ErrNotExist) {
			delete(s.sessions.files, name)
		}
	}
	s.sessions.mu.Unlock()
	return n, errors.Join(errs...)
}

// --- directory backend ----------------------------------------------------

// readSessionFile reads a record and the stamp of the very file it read.
func readSessionFile(path string) (*sessionFile, fileStamp, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fileStamp{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fileStamp{}, err
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fileStamp{}, err
	}
	var sf sessionFile
	if err := json.Unmarshal(data, &sf); err != nil {
		return nil, fileStamp{}, fmt.Errorf("%s: %w", path, err)
	}
	return &sf, stampOf(fi), nil
}

func stampOf(fi os.FileInfo) fileStamp {
	st := fileStamp{mod: fi.ModTime(), size: fi.Size()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = sys.Ino
	}
	return st
}

func (s *State) dirGetSession(name string, fresh bool) (*web.Record, error) {
	path := s.sessionPath(name)
	if !fresh {
		fi, err := os.Stat(path)
		if errors.Is(err, os.ErrNotExist) {
			s.sessions.mu.Lock()
			delete(s.sessions.files, name)
			s.sessions.mu.Unlock()
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		s.sessions.mu.Lock()
		c, ok := s.sessions.files[name]
		s.sessions.mu.Unlock()
		if ok && c.stamp == stampOf(fi) {
			return cloneRecord(&c.rec), nil
		}
	}
	sf, st, err := readSessionFile(path)
	if errors.Is(err, os.ErrNotExist) {
		s.sessions.mu.Lock()
		delete(s.sessions.files, name)
		s.sessions.mu.Unlock()
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	rec := sf.Record
	rec.Version = sf.Version
	s.sessions.mu.Lock()
	if s.sessions.files == nil {
		s.sessions.files = map[string]cachedSession{}
	}
	s.sessions.files[name] = cachedSession{stamp: st, rec: *cloneRecord(&rec)}
	s.sessions.mu.Unlock()
	return &rec, nil
}

// dirWriteSession writes r under a new version (the caller holds the lock)
// and sets r.Version to it.
func (s *State) dirWriteSession(name string, r *web.Record) error {
	v := newVersion()
	data, err := json.Marshal(sessionFile{Version: v, Record: *r})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(s.dir, sessionsDir), 0o700); err != nil {
		return fmt.Errorf("stateDir: %w", err)
	}
	if err := statefile.WriteAtomic(s.sessionPath(name), data, 0o600); err != nil {
		return err
	}
	r.Version = v
	return nil
}

// --- hub backend ----------------------------------------------------------

func (s *State) sessionSecret(name string, r *web.Record) (*corev1.Secret, error) {
	data, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: SessionSecretPrefix + name, Namespace: s.hubNS, ResourceVersion: r.Version,
			Labels: map[string]string{"app.kubernetes.io/managed-by": "keyhole-stub", SessionLabel: "record"}},
		Type: sessionSecretType,
		Data: map[string][]byte{sessionDataKey: data},
	}, nil
}

func decodeSessionSecret(sec *corev1.Secret) (*web.Record, error) {
	var r web.Record
	if err := json.Unmarshal(sec.Data[sessionDataKey], &r); err != nil {
		return nil, fmt.Errorf("browser session Secret %s/%s: %w", sec.Namespace, sec.Name, err)
	}
	r.Version = sec.ResourceVersion
	return &r, nil
}

func (s *State) hubGetSession(ctx context.Context, name string, fresh bool) (*web.Record, error) {
	if !fresh {
		s.sessions.mu.Lock()
		inf := s.sessions.inf
		s.sessions.mu.Unlock()
		if inf != nil && inf.HasSynced() {
			obj, ok, err := inf.GetStore().GetByKey(s.hubNS + "/" + SessionSecretPrefix + name)
			if sec, isSec := obj.(*corev1.Secret); err == nil && ok && isSec {
				return decodeSessionSecret(sec)
			}
			// A miss: created a moment ago on another replica? Ask.
		}
	}
	sec, err := s.hubClient.CoreV1().Secrets(s.hubNS).Get(ctx, SessionSecretPrefix+name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read browser session Secret %s/%s%s from the hub: %w", s.hubNS, SessionSecretPrefix, name, err)
	}
	return decodeSessionSecret(sec)
}

func (s *State) hubCreateSession(ctx context.Context, name string, r *web.Record) error {
	in := *r
	in.Version = ""
	sec, err := s.sessionSecret(name, &in)
	if err != nil {
		return err
	}
	out, err := s.hubClient.CoreV1().Secrets(s.hubNS).Create(ctx, sec, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("browser session Secret %s exists: %w", sec.Name, web.ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("create browser session Secret %s/%s on the hub: %w", s.hubNS, sec.Name, err)
	}
	r.Version = out.ResourceVersion
	return nil
}

func (s *State) hubUpdateSession(ctx context.Context, name string, r *web.Record) error {
	if r.Version == "" {
		return fmt.Errorf("browser session record %s has no version (not read from the store): %w", name, web.ErrConflict)
	}
	sec, err := s.sessionSecret(name, r)
	if err != nil {
		return err
	}
	out, err := s.hubClient.CoreV1().Secrets(s.hubNS).Update(ctx, sec, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
		return fmt.Errorf("browser session Secret %s: %w", sec.Name, web.ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("update browser session Secret %s/%s on the hub: %w", s.hubNS, sec.Name, err)
	}
	r.Version = out.ResourceVersion
	return nil
}

func (s *State) hubPruneSessions(ctx context.Context, now time.Time) (int, error) {
	secrets := s.hubClient.CoreV1().Secrets(s.hubNS)
	list, err := secrets.List(ctx, metav1.ListOptions{LabelSelector: SessionLabel + "=record"})
	if err != nil {
		return 0, fmt.Errorf("list browser session Secrets on the hub: %w", err)
	}
	n := 0
	var errs []error
	for i := range list.Items {
		sec := &list.Items[i]
		r, err := decodeSessionSecret(sec)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !r.Expires.Before(now) {
			continue
		}
		rv := sec.ResourceVersion
		err = secrets.Delete(ctx, sec.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv}})
		switch {
		case err == nil:
			n++
		case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
		default:
			errs = append(errs, fmt.Errorf("delete browser session Secret %s: %w", sec.Name, err))
		}
	}
	return n, errors.Join(errs...)
}

// RunSessions keeps a replica's view of the hub's browser session Secrets
// (an informer on their label) until ctx ends, so that a cookie request
// costs no hub round trip; a record missing from it is looked up live.
// Nothing to do for a single stub (it returns at once).
func (s *State) RunSessions(ctx context.Context) {
	if s.hubClient == nil {
		return
	}
	secrets := s.hubClient.CoreV1().Secrets(s.hubNS)
	sel := SessionLabel + "=record"
	lw := &cache.ListWatch{
		ListFunc: func(o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = sel
			return secrets.List(ctx, o)
		},
		WatchFunc: func(o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = sel
			return secrets.Watch(ctx, o)
		},
	}
	inf := cache.NewSharedIndexInformer(lw, &corev1.Secret{}, 0, cache.Indexers{})
	s.sessions.mu.Lock()
	s.sessions.inf = inf
	s.sessions.mu.Unlock()
	defer func() {
		s.sessions.mu.Lock()
		if s.sessions.inf == inf {
			s.sessions.inf = nil
		}
		s.sessions.mu.Unlock()
	}()
	inf.Run(ctx.Done())
}

// --- keys -----------------------------------------------------------------

// SessionKeys implements web.Store: the sealing keys, oldest first,
// creating the first one (active at once) when there is none. fresh reads
// the keys file now; with a hub it also reads the shared state Secret, at
// most once a second.
func (s *State) SessionKeys(ctx context.Context, fresh bool) ([]web.Key, error) {
	keys, err := s.sessionKeys(ctx, fresh)
	if err != nil {
		return nil, err
	}
	if len(keys) > 0 {
		return keys, nil
	}
	err = editDoc(ctx, s, sessionKeysFile, sessionKeysKind, func(b []byte) error { _, err := parseSessionKeys(b); return err },
		func(doc *sessionKeysDoc) error {
			if len(doc.Keys) > 0 {
				return errUnchanged // another writer was first
			}
			now := s.now().UTC().Truncate(time.Second)
			doc.Keys = append(doc.Keys, newSessionKey(nil, now, now))
			return nil
		})
	if err != nil && !errors.Is(err, errUnchanged) {
		return nil, fmt.Errorf("create the first browser session key: %w", err)
	}
	if err := s.keys.Reload(); err != nil {
		return nil, err
	}
	return s.sessionKeys(ctx, false)
}

func (s *State) sessionKeys(ctx context.Context, fresh bool) ([]web.Key, error) {
	var keys []web.Key
	if fresh {
		if s.mirror != nil {
			s.sessions.mu.Lock()
			pull := time.Since(s.sessions.lastPull) >= keysPullEvery
			if pull {
				s.sessions.lastPull = time.Now()
			}
			s.sessions.mu.Unlock()
			if pull {
				if err := s.Pull(ctx); err != nil {
					s.log.Warn("read the browser session keys from the hub; using the mirrored ones", zap.Error(err))
				}
			}
		}
		keys = s.keys.Fresh()
	} else {
		keys = s.keys.Get()
	}
	s.report(sessionKeysFile, s.keys.Err())
	if len(keys) == 0 {
		if err := s.keys.Err(); err != nil {
			return nil, err // broken, and no good contents to fall back on
		}
	}
	out := make([]web.Key, len(keys))
	for i, k := range keys {
		out[i] = k
		out[i].Secret = slices.Clone(k.Secret)
	}
	return out, nil
}

// RotateSessionKeys adds a sealing key when the newest is older than every
// (it seals from now+SessionKeyLead, once every replica has it) and drops
// each key that no cookie can need any more: one whose successor has been
// sealing for longer than maxAge (the longest session) plus a margin. A
// stub with no keys (no browser ever signed in) writes nothing. Run it
// every few minutes; nothing is written when nothing is due.
func (s *State) RotateSessionKeys(ctx context.Context, now time.Time, every, maxAge time.Duration) error {
	now = now.UTC().Truncate(time.Second)
	err := editDoc(ctx, s, sessionKeysFile, sessionKeysKind, func(b []byte) error { _, err := parseSessionKeys(b); return err },
		func(doc *sessionKeysDoc) error {
			if len(doc.Keys) == 0 {
				return errUnchanged
			}
			sortKeys(doc.Keys)
			changed := false
			newest := slices.MaxFunc(doc.Keys, func(a, b web.Key) int { return a.Created.Compare(b.Created) })
			if now.Sub(newest.Created) >= every {
				doc.Keys = append(doc.Keys, newSessionKey(doc.Keys, now, now.Add(SessionKeyLead)))
				changed = true
			}
			kept := doc.Keys[:0:0]
			for i, k := range doc.Keys {
				if i+1 < len(doc.Keys) && now.After(doc.Keys[i+1].ActiveFrom.Add(maxAge+sessionKeyGrace)) {
					changed = true
					continue
				}
				kept = append(kept, k)
			}
			if !changed {
				return errUnchanged
			}
			doc.Keys = kept
			return nil
		})
	if errors.Is(err, errUnchanged) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("rotate the browser session keys: %w", err)
	}
	return nil
}

// sortKeys orders keys by when they start sealing (then by creation).
func sortKeys(keys []web.Key) {
	slices.SortStableFunc(keys, func(a, b web.Key) int {
		if c := a.ActiveFrom.Compare(b.ActiveFrom); c != 0 {
			return c
		}
		return a.Created.Compare(b.Created)
	})
}

// newSessionKey returns a key with a random 32-byte secret and an ID unused
// among have.
func newSessionKey(have []web.Key, created, activeFrom time.Time) web.Key {
	for {
		id := make([]byte, 4)
		_, _ = rand.Read(id)
		k := web.Key{ID: hex.EncodeToString(id), Created: created, ActiveFrom: activeFrom, Secret: make([]byte, 32)}
		if slices.ContainsFunc(have, func(h web.Key) bool { return h.ID == k.ID }) {
			continue
		}
		_, _ = rand.Read(k.Secret)
		return k
	}
}

func parseSessionKeys(data []byte) ([]web.Key, error) {
	var doc sessionKeysDoc
	if err := decodeDoc(data, sessionKeysKind, &doc); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for i, k := range doc.Keys {
		if len(k.ID) != 8 || !ValidSessionName(k.ID) {
			return nil, fmt.Errorf("keys[%d].id %q: want 8 lower-case hex digits", i, k.ID)
		}
		if seen[k.ID] {
			return nil, fmt.Errorf("keys[%d].id %q: listed twice", i, k.ID)
		}
		seen[k.ID] = true
		if len(k.Secret) != 32 {
			return nil, fmt.Errorf("keys[%d].secret: want 32 bytes (base64), got %d", i, len(k.Secret))
		}
		if k.Created.IsZero() || k.ActiveFrom.IsZero() {
			return nil, fmt.Errorf("keys[%d]: created and activeFrom are required", i)
		}
	}
	sortKeys(doc.Keys)
	return doc.Keys, nil
}

package stub

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
	"github.com/keyhole-dev/keyhole/web"
)

const (
	sessA = "0123456789abcdef0123456789abcdef"
	sessB = "fedcba9876543210fedcba9876543210"
)

func testRecord(expires time.Time) *web.Record {
	now := time.Now().UTC().Truncate(time.Second)
	return &web.Record{User: "alice", Issuer: "dex", Created: now, Expires: expires,
		IDTokenExpires: now.Add(time.Minute), Sealed: []byte("sealed tokens")}
}

// sessionOps runs the web.Store contract on two States over one store: what
// one writes, the other reads.
func sessionOps(t *testing.T, st, other *State) {
	ctx := context.Background()
	if r, err := other.GetSession(ctx, sessA, false); r != nil || err != nil {
		t.Fatalf("missing record: %v, %v", r, err)
	}
	for _, bad := range []string{"", "ABC", "../x", strings.Repeat("a", 65), "g0"} {
		if _, err := st.GetSession(ctx, bad, true); err == nil {
			t.Fatalf("name %q accepted", bad)
		}
	}
	r := testRecord(time.Now().Add(time.Hour))
	if err := st.CreateSession(ctx, sessA, r); err != nil {
		t.Fatal(err)
	}
	if r.Version == "" {
		t.Fatal("CreateSession set no version")
	}
	if err := st.CreateSession(ctx, sessA, testRecord(time.Now())); !errors.Is(err, web.ErrConflict) {
		t.Fatalf("second create: %v", err)
	}
	got, err := other.GetSession(ctx, sessA, false)
	if err != nil || got == nil {
		t.Fatalf("read at the other: %v, %v", got, err)
	}
	if got.User != "alice" || string(got.Sealed) != "sealed tokens" || got.Version != r.Version || !got.Expires.Equal(r.Expires) {
		t.Fatalf("read back %+v, wrote %+v", got, r)
	}
	// Update with the version read; a second update with the same (now
	// stale) version conflicts.
	stale := *got
	got.Lease = &web.Lease{Holder: "replica-1/x", Until: time.Now().Add(20 * time.Second)}
	if err := other.UpdateSession(ctx, sessA, got); err != nil {
		t.Fatal(err)
	}
	if got.Version == stale.Version {
		t.Fatal("UpdateSession kept the version")
	}
	if err := st.UpdateSession(ctx, sessA, &stale); !errors.Is(err, web.ErrConflict) {
		t.Fatalf("stale update: %v", err)
	}
	waitFor(t, "the lease at the writer", func() bool {
		r, err := st.GetSession(ctx, sessA, false)
		return err == nil && r != nil && r.Lease != nil && r.Lease.Holder == "replica-1/x"
	})
	fresh, err := st.GetSession(ctx, sessA, true)
	if err != nil || fresh.Version != got.Version {
		t.Fatalf("fresh read: %+v, %v (want version %s)", fresh, err, got.Version)
	}
	// A record handed out is a copy: changing it changes nothing stored.
	fresh.Sealed[0], fresh.Lease.Holder = 'X', "mallory"
	if again, _ := st.GetSession(ctx, sessA, false); again.Sealed[0] == 'X' || again.Lease.Holder == "mallory" {
		t.Fatal("GetSession shares memory with the cache")
	}

	// Delete: gone for both; an update of a deleted record conflicts.
	if err := other.DeleteSession(ctx, sessA); err != nil {
		t.Fatal(err)
	}
	if err := other.DeleteSession(ctx, sessA); err != nil {
		t.Fatalf("delete of a missing record: %v", err)
	}
	waitFor(t, "the deletion at the writer", func() bool {
		r, err := st.GetSession(ctx, sessA, false)
		return err == nil && r == nil
	})
	if err := st.UpdateSession(ctx, sessA, fresh); !errors.Is(err, web.ErrConflict) {
		t.Fatalf("update of a deleted record: %v", err)
	}

	// Prune: only the expired record goes.
	if err := st.CreateSession(ctx, sessA, testRecord(time.Now().Add(-time.Minute))); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateSession(ctx, sessB, testRecord(time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	if n, err := other.PruneSessions(ctx, time.Now()); n != 1 || err != nil {
		t.Fatalf("prune: %d, %v; want 1 removed", n, err)
	}
	if r, err := st.GetSession(ctx, sessA, true); r != nil || err != nil {
		t.Fatalf("expired record after prune: %v, %v", r, err)
	}
	if r, err := st.GetSession(ctx, sessB, true); r == nil || err != nil {
		t.Fatalf("live record after prune: %v, %v", r, err)
	}
	if n, err := other.PruneSessions(ctx, time.Now()); n != 0 || err != nil {
		t.Fatalf("second prune: %d, %v", n, err)
	}
}

// casCounter has n goroutines, alternating between two States, each add 1
// to a counter in a record by read-modify-UpdateSession, retrying on
// web.ErrConflict: every increment must land exactly once.
func casCounter(t *testing.T, a, b *State, goroutines, each int) {
	ctx := context.Background()
	const name = "00000000000000000000000000000ca5"
	r := testRecord(time.Now().Add(time.Hour))
	r.User = "0"
	if err := a.CreateSession(ctx, name, r); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conflicts := 0
	errs := make(chan error, goroutines)
	for i := range goroutines {
		st := a
		if i%2 == 1 {
			st = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				for {
					cur, err := st.GetSession(ctx, name, true)
					if err != nil {
						errs <- err
						return
					}
					n, _ := strconv.Atoi(cur.User)
					cur.User = strconv.Itoa(n + 1)
					err = st.UpdateSession(ctx, name, cur)
					if errors.Is(err, web.ErrConflict) {
						mu.Lock()
						conflicts++
						mu.Unlock()
						continue
					}
					if err != nil {
						errs <- err
						return
					}
					break
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got, err := a.GetSession(ctx, name, true)
	if err != nil {
		t.Fatal(err)
	}
	if got.User != strconv.Itoa(goroutines*each) {
		t.Fatalf("counter %s after %d increments: updates were lost", got.User, goroutines*each)
	}
	t.Logf("%d increments, %d conflicts retried", goroutines*each, conflicts)
}

func TestSessionsDirectory(t *testing.T) {
	dir := t.TempDir()
	st, err := OpenState(StateConfig{Dir: dir, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	other, err := OpenState(StateConfig{Dir: dir, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	sessionOps(t, st, other)
	fi, err := os.Stat(filepath.Join(dir, "sessions", sessB+".json"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("record file mode %v, want 0600", fi.Mode().Perm())
	}
	if fi, err := os.Stat(filepath.Join(dir, "sessions")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("sessions directory: %v, %v", fi.Mode(), err)
	}
}

// Sixteen goroutines over two States (as two stub processes would be) on
// one directory: the version check under the lock loses no update.
func TestSessionsDirectoryCAS(t *testing.T) {
	dir := t.TempDir()
	a, err := OpenState(StateConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	b, err := OpenState(StateConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	casCounter(t, a, b, 16, 10)
}

func TestSessionKeys(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := OpenState(StateConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	// No key yet: rotation writes nothing (a stub without browsers).
	if err := st.RotateSessionKeys(ctx, time.Now(), time.Hour, 12*time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "session-keys.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("rotation without keys wrote the file: %v", err)
	}

	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	st.now = func() time.Time { return t0 }
	keys, err := st.SessionKeys(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || len(keys[0].ID) != 8 || len(keys[0].Secret) != 32 || !keys[0].ActiveFrom.Equal(t0) || !keys[0].Created.Equal(t0) {
		t.Fatalf("first key: %+v", keys)
	}
	first := keys[0]
	data, err := os.ReadFile(filepath.Join(dir, "session-keys.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"apiVersion: keyhole.dev/v1alpha1", "kind: SessionKeys", "secret: "} {
		if !strings.Contains(string(data), want) {
			t.Fatalf("keys file lacks %q:\n%s", want, data)
		}
	}
	// An ID of hex digits only ("83477155", 2 % of them) is written quoted,
	// as YAML would otherwise read a number.
	if !strings.Contains(string(data), "id: "+first.ID+"\n") && !strings.Contains(string(data), `id: "`+first.ID+`"`) {
		t.Fatalf("keys file lacks the key's ID %s:\n%s", first.ID, data)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "session-keys.yaml")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("keys file mode %v", fi.Mode())
	}
	// Another process sees the same key; a second call creates none.
	other, err := OpenState(StateConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if k, err := other.SessionKeys(ctx, true); err != nil || len(k) != 1 || k[0].ID != first.ID || string(k[0].Secret) != string(first.Secret) {
		t.Fatalf("other process: %+v, %v", k, err)
	}

	every, maxAge := 7*24*time.Hour, 12*time.Hour
	// Not due: nothing changes.
	if err := st.RotateSessionKeys(ctx, t0.Add(every-time.Minute), every, maxAge); err != nil {
		t.Fatal(err)
	}
	if k, _ := other.SessionKeys(ctx, true); len(k) != 1 {
		t.Fatalf("rotation before it was due: %+v", k)
	}
	// Due: a second key, sealing from 2 minutes on; the first stays.
	t1 := t0.Add(every)
	if err := st.RotateSessionKeys(ctx, t1, every, maxAge); err != nil {
		t.Fatal(err)
	}
	k, err := other.SessionKeys(ctx, true)
	if err != nil || len(k) != 2 || k[0].ID != first.ID || !k[1].ActiveFrom.Equal(t1.Add(SessionKeyLead)) || !k[1].Created.Equal(t1) || k[1].ID == first.ID {
		t.Fatalf("after rotation: %+v, %v", k, err)
	}
	second := k[1]
	// The first key stays while a cookie it sealed may live: until its
	// successor has sealed for maxAge + 10 minutes.
	if err := st.RotateSessionKeys(ctx, second.ActiveFrom.Add(maxAge+10*time.Minute), every, maxAge); err != nil {
		t.Fatal(err)
	}
	if k, _ := other.SessionKeys(ctx, true); len(k) != 2 {
		t.Fatalf("first key dropped too early: %+v", k)
	}
	if err := st.RotateSessionKeys(ctx, second.ActiveFrom.Add(maxAge+11*time.Minute), every, maxAge); err != nil {
		t.Fatal(err)
	}
	if k, _ := other.SessionKeys(ctx, true); len(k) != 1 || k[0].ID != second.ID {
		t.Fatalf("after the first key's grace: %+v", k)
	}
	// Long idle (no rotation ran for weeks): a new key is added, and the
	// last one stays until the new one has sealed long enough.
	t3 := t1.Add(5 * every)
	if err := st.RotateSessionKeys(ctx, t3, every, maxAge); err != nil {
		t.Fatal(err)
	}
	if k, _ := other.SessionKeys(ctx, true); len(k) != 2 || k[0].ID != second.ID {
		t.Fatalf("after a long idle: %+v", k)
	}
}

func TestSessionKeysFileErrors(t *testing.T) {
	for name, body := range map[string]string{
		"short secret": "apiVersion: keyhole.dev/v1alpha1\nkind: SessionKeys\nkeys:\n- {id: 0a0b0c0d, created: 2026-01-01T00:00:00Z, activeFrom: 2026-01-01T00:00:00Z, secret: AAAA}\n",
		"bad id":       "apiVersion: keyhole.dev/v1alpha1\nkind: SessionKeys\nkeys:\n- {id: xyz, created: 2026-01-01T00:00:00Z, activeFrom: 2026-01-01T00:00:00Z, secret: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=}\n",
		"wrong kind":   "apiVersion: keyhole.dev/v1alpha1\nkind: Clusters\nclusters: []\n",
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "session-keys.yaml"), []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := OpenState(StateConfig{Dir: dir}); err == nil {
				t.Fatal("a broken keys file was accepted at start")
			}
		})
	}
	// Broken after start: SessionKeys fails rather than overwrite it.
	dir := t.TempDir()
	st, err := OpenState(StateConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "session-keys.yaml"), []byte("kind: Nope\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := st.SessionKeys(context.Background(), true); err == nil {
		t.Fatal("SessionKeys over a broken file")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "session-keys.yaml")); string(b) != "kind: Nope\n" {
		t.Fatalf("broken file overwritten: %q", b)
	}
}

// The hub: a Secret per record on a real kube-apiserver, one State writing
// and a replica reading through its informer; CAS by resourceVersion; the
// keys in the shared state Secret.
func TestSessionsHub(t *testing.T) {
	c := kubetest.Start(t)
	ns := "keyhole-sessions"
	c.EnsureNamespace(t, ns)
	log := zaptest.NewLogger(t)
	open := func() *State {
		st, err := OpenState(StateConfig{Dir: t.TempDir(), Hub: c.Client(), Namespace: ns, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	writer, replica := open(), open()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); replica.mirror.Run(ctx) }()
	go func() { defer wg.Done(); replica.RunSessions(ctx) }()
	defer func() { cancel(); wg.Wait() }()

	sessionOps(t, writer, replica)

	sec, err := c.Client().CoreV1().Secrets(ns).Get(context.Background(), SessionSecretPrefix+sessB, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sec.Type != sessionSecretType || sec.Labels[SessionLabel] != "record" || sec.Labels["app.kubernetes.io/managed-by"] != "keyhole-stub" {
		t.Fatalf("session Secret: type %q labels %v", sec.Type, sec.Labels)
	}
	if strings.Contains(string(sec.Data[sessionDataKey]), "version") {
		t.Fatalf("the Secret stores a version of its own: %s", sec.Data[sessionDataKey])
	}

	casCounter(t, writer, replica, 8, 4)

	// Keys: the first is created once, in the shared state Secret, and
	// the replica reads the same.
	k, err := writer.SessionKeys(context.Background(), false)
	if err != nil || len(k) != 1 {
		t.Fatalf("first key on the hub: %+v, %v", k, err)
	}
	waitFor(t, "the key at the replica", func() bool {
		rk, err := replica.SessionKeys(context.Background(), false)
		return err == nil && len(rk) == 1 && rk[0].ID == k[0].ID && string(rk[0].Secret) == string(k[0].Secret)
	})
	state, err := c.Client().CoreV1().Secrets(ns).Get(context.Background(), "keyhole-state", metav1.GetOptions{})
	if err != nil || !strings.Contains(string(state.Data["session-keys.yaml"]), k[0].ID) {
		t.Fatalf("keys not in the state Secret: %v", err)
	}
	if err := writer.RotateSessionKeys(context.Background(), time.Now().Add(200*time.Hour), 168*time.Hour, 12*time.Hour); err != nil {
		t.Fatal(err)
	}
	if rk, err := replica.SessionKeys(context.Background(), true); err != nil || len(rk) != 2 {
		t.Fatalf("rotated key at the replica (fresh read): %+v, %v", rk, err)
	}
}

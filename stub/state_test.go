package stub

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/internal/kubetest"
	"github.com/keyhole-dev/keyhole/tunnel"
)

func openDir(t *testing.T) *State {
	t.Helper()
	st, err := OpenState(StateConfig{Dir: t.TempDir(), Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// The operations of the state, against either backend.
func stateOps(t *testing.T, st, reader *State) {
	ctx := context.Background()
	if err := reader.AuthenticateAgent("prod", "x"); !errors.Is(err, tunnel.ErrUnknownCluster) {
		t.Fatalf("empty state: %v", err)
	}
	secret, err := st.Register(ctx, "prod", RegisterOptions{Labels: map[string]string{"env": "prod"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Register(ctx, "prod", RegisterOptions{}); !errors.Is(err, ErrClusterExists) {
		t.Fatalf("double registration: %v", err)
	}
	if _, err := st.Register(ctx, "Not_A_Label", RegisterOptions{}); !errors.Is(err, ErrInvalidClusterID) {
		t.Fatalf("bad ID: %v", err)
	}
	if !strings.HasPrefix(secret, joinSecretPrefix) || len(secret) != len(joinSecretPrefix)+43 {
		t.Fatalf("join secret %q: want khj_ and 256 bits", secret)
	}
	waitFor(t, "the registration at the reader", func() bool { return reader.AuthenticateAgent("prod", secret) == nil })
	if err := reader.AuthenticateAgent("prod", secret+"x"); !errors.Is(err, tunnel.ErrBadSecret) {
		t.Fatalf("altered secret: %v", err)
	}
	if c, _ := reader.Cluster("prod"); c.Labels["env"] != "prod" {
		t.Fatalf("labels: %+v", c)
	}
	if _, err := st.Rotate(ctx, "nope", RotateOptions{}); !errors.Is(err, ErrClusterNotFound) {
		t.Fatalf("rotate of an unknown cluster: %v", err)
	}
	// A rotation keeps the old secret for open sessions, not handshakes.
	rotated, err := st.Rotate(ctx, "prod", RotateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	old := sha256.Sum256([]byte(secret))
	waitFor(t, "the rotation at the reader", func() bool { return reader.AuthenticateAgent("prod", rotated) == nil })
	if reader.AuthenticateAgent("prod", secret) == nil || reader.CheckSession("prod", old) != nil {
		t.Fatal("a plain rotation: the old secret must open no session and keep the open ones")
	}
	if c, _ := reader.Cluster("prod"); c.Labels["env"] != "prod" {
		t.Fatalf("rotation lost labels: %+v", c)
	}
	// Rotate and disconnect: the old secret's sessions must close.
	oldRotated := sha256.Sum256([]byte(rotated))
	past := time.Now().Add(-time.Second)
	expired, err := st.Rotate(ctx, "prod", RotateOptions{Disconnect: true, Expires: &past})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second rotation at the reader", func() bool {
		return errors.Is(reader.CheckSession("prod", oldRotated), tunnel.ErrBadSecret)
	})
	if err := reader.AuthenticateAgent("prod", expired); !errors.Is(err, tunnel.ErrSecretExpired) || !strings.Contains(err.Error(), "--rotate") {
		t.Fatalf("expired secret: %v (want ErrSecretExpired saying how to get a new one)", err)
	}
	if err := reader.CheckSession("prod", sha256.Sum256([]byte(expired))); !errors.Is(err, tunnel.ErrSecretExpired) {
		t.Fatalf("session of an expired secret: %v", err)
	}
	if err := st.Unregister(ctx, "prod"); err != nil {
		t.Fatal(err)
	}
	if err := st.Unregister(ctx, "prod"); !errors.Is(err, ErrClusterNotFound) {
		t.Fatalf("unregistered twice: %v", err)
	}
	waitFor(t, "the removal at the reader", func() bool {
		return errors.Is(reader.CheckSession("prod", sha256.Sum256([]byte(expired))), tunnel.ErrUnknownCluster)
	})

	// Tokens: minted, stored as hashes, expired ones refused and pruned.
	alice, err := st.AddToken(ctx, TokenRequest{User: "alice", Groups: []string{"dev"}})
	if err != nil {
		t.Fatal(err)
	}
	old2 := time.Now().Add(-time.Minute)
	gone, err := st.AddToken(ctx, TokenRequest{User: "old", Expires: &old2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddToken(ctx, TokenRequest{User: "system:kube-proxy"}); err == nil {
		t.Fatal("minted a token for a system: user")
	}
	waitFor(t, "the token at the reader", func() bool { _, err := reader.AuthenticateToken(alice); return err == nil })
	if u, _ := reader.AuthenticateToken(alice); u.Name != "alice" || strings.Join(u.Groups, ",") != "dev" {
		t.Fatalf("token of %+v", u)
	}
	for _, bad := range []string{gone, alice + "x", ""} {
		if _, err := reader.AuthenticateToken(bad); !errors.Is(err, authn.ErrInvalidToken) {
			t.Fatalf("token %q: %v", bad, err)
		}
	}
	if n, err := st.PruneTokens(ctx, time.Now()); n != 1 || err != nil {
		t.Fatalf("pruned %d, %v; want 1", n, err)
	}
	if n, err := st.PruneTokens(ctx, time.Now()); n != 0 || err != nil {
		t.Fatalf("second prune: %d, %v; want 0 and nothing written", n, err)
	}
	if _, err := reader.AuthenticateToken(alice); err != nil {
		t.Fatalf("pruning removed a valid token: %v", err)
	}
	// Neither file holds a secret or a token.
	for _, name := range []string{clustersFile, tokensFile} {
		data, _ := os.ReadFile(filepath.Join(reader.dir, name))
		for _, s := range []string{secret, rotated, alice} {
			if strings.Contains(string(data), s) {
				t.Fatalf("%s holds a secret in clear", name)
			}
		}
		if fi, err := os.Stat(filepath.Join(reader.dir, name)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v, want mode 0600", name, fi.Mode(), err)
		}
	}
}

func TestStateDirectory(t *testing.T) {
	st := openDir(t)
	stateOps(t, st, st)
}

// Commands run at once (several `stub register` or `kubeconfig`) all land:
// writes take a lock in the state directory.
func TestStateDirectoryConcurrentWriters(t *testing.T) {
	dir := t.TempDir()
	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := OpenState(StateConfig{Dir: dir}) // one per "process"
			if err != nil {
				errs <- err
				return
			}
			_, err = st.Register(context.Background(), fmt.Sprintf("c%d", i), RegisterOptions{})
			errs <- err
			_, err = st.AddToken(context.Background(), TokenRequest{User: fmt.Sprintf("u%d", i)})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	st, _ := OpenState(StateConfig{Dir: dir})
	if got := len(st.Clusters()); got != n {
		t.Fatalf("%d clusters after %d concurrent registrations", got, n)
	}
	if got := len(st.tokens.Get()); got != n {
		t.Fatalf("%d tokens after %d concurrent additions", got, n)
	}
}

// A broken state file is refused with a message naming the entry, and a
// broken edit of a running stub's file keeps the previous contents.
func TestStateFileErrors(t *testing.T) {
	h := strings.Repeat("a", 64)
	cases := []struct{ name, file, body, want string }{
		{"cluster id", clustersFile, "kind: Clusters\nclusters: [{id: Bad_ID, secretSHA256: " + h + "}]", "clusters[0].id"},
		{"cluster hash", clustersFile, "kind: Clusters\nclusters: [{id: a, secretSHA256: abc}]", "clusters[0].secretSHA256"},
		{"cluster twice", clustersFile, "kind: Clusters\nclusters: [{id: a, secretSHA256: " + h + "}, {id: a, secretSHA256: " + h + "}]", "registered twice"},
		{"cluster kind", clustersFile, "kind: StaticTokens\nclusters: []", "want keyhole.dev/v1alpha1/Clusters"},
		{"unknown key", tokensFile, "kind: StaticTokens\ntokens: [{user: u, token: abc}]", "unknown field"},
		{"system user", tokensFile, "kind: StaticTokens\ntokens: [{user: 'system:admin', sha256: " + h + "}]", "tokens[0]"},
		{"system group", tokensFile, "kind: StaticTokens\ntokens: [{user: u, groups: ['system:masters'], sha256: " + h + "}]", "tokens[0]"},
		{"token hash", tokensFile, "kind: StaticTokens\ntokens: [{user: u, sha256: abc}]", "tokens[0].sha256"},
		{"empty user", tokensFile, "kind: StaticTokens\ntokens: [{user: '', sha256: " + h + "}]", "tokens[0]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			body := "apiVersion: keyhole.dev/v1alpha1\n" + tc.body + "\n"
			if err := os.WriteFile(filepath.Join(dir, tc.file), []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := OpenState(StateConfig{Dir: dir})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error naming %q", err, tc.want)
			}
		})
	}
	t.Run("broken edit while running", func(t *testing.T) {
		st := openDir(t)
		tok, err := st.AddToken(context.Background(), TokenRequest{User: "alice"})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(st.dir, tokensFile), []byte("tokens: [{user: x, sha256: zz}]\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := st.tokens.Reload(); err == nil || st.Err() == nil {
			t.Fatal("broken file accepted")
		}
		if _, err := st.AuthenticateToken(tok); err != nil {
			t.Fatalf("the last good tokens were dropped: %v", err)
		}
		if _, err := st.AddToken(context.Background(), TokenRequest{User: "bob"}); err == nil || !strings.Contains(err.Error(), tokensFile) {
			t.Fatalf("an edit on a broken file: %v, want an error naming the file", err)
		}
	})
}

// The hub backend against a real kube-apiserver: a writer (the CLI) changes
// the shared Secret, a replica's mirror follows, and writers racing each
// other all land (optimistic concurrency).
func TestStateHub(t *testing.T) {
	c := kubetest.Start(t)
	ns := "keyhole-state"
	c.EnsureNamespace(t, ns)
	log := zaptest.NewLogger(t)
	writer, err := OpenState(StateConfig{Dir: t.TempDir(), Hub: c.Client(), Namespace: ns, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	replica, err := OpenState(StateConfig{Dir: t.TempDir(), Hub: c.Client(), Namespace: ns, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); replica.mirror.Run(ctx) }()
	defer func() { cancel(); <-done }()
	stateOps(t, writer, replica)

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := OpenState(StateConfig{Dir: t.TempDir(), Hub: c.Client(), Namespace: ns})
			if err == nil {
				_, err = st.Register(context.Background(), fmt.Sprintf("race%d", i), RegisterOptions{})
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "8 racing registrations at the replica", func() bool { return len(replica.Clusters()) == 8 })
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A caller audience belongs to one cluster: a second registration with it
// is refused, and a state file that gives two clusters one is refused too.
func TestStateCallerAudience(t *testing.T) {
	st := openDir(t)
	ctx := context.Background()
	if _, err := st.Register(ctx, "acc", RegisterOptions{CallerAudience: "keyhole-acc"}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Register(ctx, "other", RegisterOptions{CallerAudience: "keyhole-acc"}); !errors.Is(err, ErrAudienceInUse) || !strings.Contains(err.Error(), `"acc"`) {
		t.Fatalf("a second cluster with the same audience: %v", err)
	}
	if _, err := st.Register(ctx, "plain", RegisterOptions{}); err != nil {
		t.Fatal(err)
	}
	reg := st.Registry()
	if c, ok := reg.ByCallerAudience("keyhole-acc"); !ok || c.ID != "acc" || c.CallerAudience != "keyhole-acc" {
		t.Fatalf("ByCallerAudience: %+v %v", c, ok)
	}
	if _, ok := reg.ByCallerAudience(""); ok {
		t.Fatal("the empty audience names a cluster")
	}
	if c, _ := reg.Cluster("plain"); c.CallerAudience != "" {
		t.Fatalf("plain cluster: %+v", c)
	}
	// Unregistering retires the audience: tokens for it stay bound to the
	// gone cluster, and no cluster may take it again.
	if err := st.Unregister(ctx, "acc"); err != nil {
		t.Fatal(err)
	}
	if c, ok := reg.ByCallerAudience("keyhole-acc"); !ok || !c.Unregistered || c.ID != "acc" {
		t.Fatalf("a retired audience: %+v %v", c, ok)
	}
	if _, err := st.Register(ctx, "acc", RegisterOptions{CallerAudience: "keyhole-acc"}); !errors.Is(err, ErrAudienceRetired) {
		t.Fatalf("re-registering with a retired audience: %v", err)
	}
	if _, err := st.Register(ctx, "acc", RegisterOptions{CallerAudience: "keyhole-acc-2"}); err != nil {
		t.Fatalf("re-registering with a new audience: %v", err)
	}
	h := strings.Repeat("a", 64)
	dir := t.TempDir()
	body := "apiVersion: keyhole.dev/v1alpha1\nkind: Clusters\nclusters:\n- {id: a, secretSHA256: " + h + ", callerAudience: x}\n- {id: b, secretSHA256: " + h + ", callerAudience: x}\n"
	if err := os.WriteFile(filepath.Join(dir, clustersFile), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenState(StateConfig{Dir: dir}); err == nil || !strings.Contains(err.Error(), `clusters[1].callerAudience "x": also cluster "a"'s`) {
		t.Fatalf("two clusters with one audience in the file: %v", err)
	}
}

// Labels follow Kubernetes' rules, checked before anything is written.
func TestStateLabels(t *testing.T) {
	st := openDir(t)
	for _, l := range []map[string]string{{"Bad Key": "v"}, {"k": "bad value!"}, {"": "v"}} {
		if _, err := st.Register(context.Background(), "c", RegisterOptions{Labels: l}); !errors.Is(err, ErrInvalidLabel) {
			t.Errorf("labels %v: %v, want ErrInvalidLabel", l, err)
		}
	}
	if len(st.Clusters()) != 0 {
		t.Fatal("a refused registration was written")
	}
	if _, err := st.Register(context.Background(), "c", RegisterOptions{Labels: map[string]string{"env": "prod", "example.com/team": "a-b_c.d"}}); err != nil {
		t.Fatal(err)
	}
}

// A state file broken by hand is reported once, its last good contents
// stay in force, and its repair is reported once.
func TestStateReportsBrokenFile(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	st, err := OpenState(StateConfig{Dir: t.TempDir(), Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := st.AddToken(context.Background(), TokenRequest{User: "eve"})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(st.dir, tokensFile)
	good, _ := os.ReadFile(path)
	// Half of an entry deleted, as a hand edit may leave it.
	var kept []string
	for _, l := range strings.Split(string(good), "\n") {
		if !strings.Contains(l, "sha256:") {
			kept = append(kept, l)
		}
	}
	if err := os.WriteFile(path, []byte(strings.Join(kept, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(2 * time.Second)
	_ = os.Chtimes(path, later, later)
	_, _ = st.AuthenticateToken("khu_unknown") // a miss re-reads at once
	for range 3 {
		if _, err := st.AuthenticateToken(tok); err != nil {
			t.Fatalf("a broken edit revoked the token: %v", err)
		}
	}
	if n := logs.FilterMessageSnippet("does not parse").Len(); n != 1 {
		t.Fatalf("the broken file was reported %d times, want once", n)
	}
	if err := os.WriteFile(path, good, 0o600); err != nil {
		t.Fatal(err)
	}
	later = later.Add(2 * time.Second)
	_ = os.Chtimes(path, later, later)
	_, _ = st.AuthenticateToken("khu_unknown") // a miss re-reads at once
	if n := logs.FilterMessageSnippet("parses again").Len(); n != 1 {
		t.Fatalf("the repair was reported %d times, want once", n)
	}
}

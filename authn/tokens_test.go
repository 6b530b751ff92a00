package authn

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestTokenFileLifecycle(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens.yaml")
	f, err := OpenTokenFile(path) // missing file: no tokens yet
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.AuthenticateToken("anything"); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("empty file accepted a token: %v", err)
	}
	alice, err := AddToken(path, "alice", []string{"dev"}, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-time.Minute)
	expired, err := AddToken(path, "old", nil, &past, "")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	if strings.Contains(string(data), alice) {
		t.Fatal("token stored in clear")
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
	if err := f.file.Reload(); err != nil {
		t.Fatal(err)
	}
	u, err := f.AuthenticateToken(alice)
	if err != nil || u.Name != "alice" || strings.Join(u.Groups, ",") != "dev" {
		t.Fatalf("%+v %v", u, err)
	}
	if _, err := f.AuthenticateToken(expired); !errors.Is(err, ErrInvalidToken) {
		t.Fatal("expired token accepted")
	}
	if _, err := f.AuthenticateToken(alice + "x"); !errors.Is(err, ErrInvalidToken) {
		t.Fatal("altered token accepted")
	}
	// Revoke by editing the file: the running authenticator follows.
	if err := os.WriteFile(path, []byte("apiVersion: keyhole.dev/v1alpha1\nkind: StaticTokens\ntokens: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.file.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.AuthenticateToken(alice); !errors.Is(err, ErrInvalidToken) {
		t.Fatal("revoked token accepted")
	}
	// A broken edit keeps the last good contents and reports why.
	if err := os.WriteFile(path, []byte("tokens: [{user: x, sha256: zz}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.file.Reload(); err == nil || f.Err() == nil {
		t.Fatal("broken file accepted")
	}
}

func TestTokenFileRefusesBadEntries(t *testing.T) {
	cases := map[string]string{
		"system user":  "tokens: [{user: 'system:admin', sha256: " + strings.Repeat("a", 64) + "}]",
		"system group": "tokens: [{user: u, groups: ['system:masters'], sha256: " + strings.Repeat("a", 64) + "}]",
		"short hash":   "tokens: [{user: u, sha256: abc}]",
		"unknown key":  "tokens: [{user: u, token: abc}]",
		"empty user":   "tokens: [{user: '', sha256: " + strings.Repeat("a", 64) + "}]",
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "t.yaml")
			_ = os.WriteFile(path, []byte("apiVersion: keyhole.dev/v1alpha1\nkind: StaticTokens\n"+body+"\n"), 0o600)
			if _, err := OpenTokenFile(path); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	if _, err := AddToken(filepath.Join(t.TempDir(), "t.yaml"), "system:kube-proxy", nil, nil, ""); err == nil {
		t.Fatal("minted a token for a system: user")
	}
}

func FuzzAuthenticateToken(f *testing.F) {
	path := filepath.Join(f.TempDir(), "tokens.yaml")
	good, err := AddToken(path, "alice", nil, nil, "")
	if err != nil {
		f.Fatal(err)
	}
	tf, err := OpenTokenFile(path)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add("")
	f.Add(good[:len(good)-1])
	f.Fuzz(func(t *testing.T, tok string) {
		u, err := tf.AuthenticateToken(tok)
		if (err == nil) != (tok == good) || (err == nil && u.Name != "alice") {
			t.Fatalf("token %q: %+v %v", tok, u, err)
		}
	})
}

// A token minted by another process is accepted at once, without waiting
// for the once-a-second re-check.
func TestNewTokenSeenAtOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens.yaml")
	f, err := OpenTokenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.AuthenticateToken("warm-up") // the throttle window starts now
	tok, err := AddToken(path, "dave", nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if u, err := f.AuthenticateToken(tok); err != nil || u.Name != "dave" {
		t.Fatalf("%+v %v", u, err)
	}
}

func TestPruneExpired(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens.yaml")
	past, future := time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	old, err := AddToken(path, "old", nil, &past, "")
	if err != nil {
		t.Fatal(err)
	}
	keep, _ := AddToken(path, "keep", nil, &future, "")
	forever, _ := AddToken(path, "forever", nil, nil, "")
	n, err := PruneExpired(path, time.Now())
	if err != nil || n != 1 {
		t.Fatalf("pruned %d, %v; want 1", n, err)
	}
	f, err := OpenTokenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for tok, want := range map[string]bool{old: false, keep: true, forever: true} {
		if _, err := f.AuthenticateToken(tok); (err == nil) != want {
			t.Errorf("token valid=%v after pruning, want %v", err == nil, want)
		}
	}
	if n, err := PruneExpired(path, time.Now()); n != 0 || err != nil {
		t.Fatalf("second prune: %d, %v", n, err)
	}
}

package authn

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/keyhole-dev/keyhole/internal/statefile"
)

// User is an authenticated caller.
type User struct {
	Name   string
	Groups []string
}

// ErrInvalidToken is returned for a token that is unknown, expired or revoked.
var ErrInvalidToken = errors.New("invalid bearer token")

// TokenFileAPIVersion and TokenFileKind identify the static token file.
const (
	TokenFileAPIVersion = "keyhole.dev/v1alpha1"
	TokenFileKind       = "StaticTokens"
	tokenPrefix         = "khu_"
)

// TokenEntry is one token in the file. Only the token's hash is stored.
type TokenEntry struct {
	User        string     `json:"user"`
	Groups      []string   `json:"groups,omitempty"`
	SHA256      string     `json:"sha256"`
	Expires     *time.Time `json:"expires,omitempty"`
	Description string     `json:"description,omitempty"`
}

type tokenFileDoc struct {
	APIVersion string       `json:"apiVersion"`
	Kind       string       `json:"kind"`
	Tokens     []TokenEntry `json:"tokens"`
}

// TokenFile authenticates bearer tokens against a static token file that
// is re-read when it changes (see package statefile).
type TokenFile struct {
	file *statefile.File[[]parsedEntry]
	now  func() time.Time
}

type parsedEntry struct {
	user    User
	hash    [sha256.Size]byte
	expires *time.Time
}

// OpenTokenFile loads path. A missing file is an empty token set (every
// token is refused) so a first run can start before any token exists.
func OpenTokenFile(path string) (*TokenFile, error) {
	f, err := statefile.Open(path, parseTokenFile)
	if err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	return &TokenFile{file: f, now: time.Now}, nil
}

// Err returns the error of the last failed reload, if the file is broken now.
func (f *TokenFile) Err() error { return f.file.Err() }

func parseTokenFile(data []byte) ([]parsedEntry, error) {
	if len(data) == 0 {
		return nil, nil
	}
	var doc tokenFileDoc
	if err := yaml.UnmarshalStrict(data, &doc); err != nil {
		return nil, err
	}
	if doc.APIVersion != TokenFileAPIVersion || doc.Kind != TokenFileKind {
		return nil, fmt.Errorf("apiVersion/kind %q/%q: want %s/%s", doc.APIVersion, doc.Kind, TokenFileAPIVersion, TokenFileKind)
	}
	out := make([]parsedEntry, 0, len(doc.Tokens))
	for i, e := range doc.Tokens {
		if err := ValidateIdentity(e.User, e.Groups); err != nil {
			return nil, fmt.Errorf("tokens[%d]: %w", i, err)
		}
		h, err := hex.DecodeString(e.SHA256)
		if err != nil || len(h) != sha256.Size {
			return nil, fmt.Errorf("tokens[%d].sha256: want 64 hex digits (the SHA-256 of the token), got %q", i, e.SHA256)
		}
		pe := parsedEntry{user: User{Name: e.User, Groups: e.Groups}, expires: e.Expires}
		copy(pe.hash[:], h)
		out = append(out, pe)
	}
	return out, nil
}

// ValidateIdentity refuses empty names and anything in the reserved
// "system:" space, which only the cluster itself may hand out.
// It is the default IdentityRules.
func ValidateIdentity(name string, groups []string) error {
	return IdentityRules{}.Check(name, groups)
}

// AuthenticateToken maps a bearer token to its user.
func (f *TokenFile) AuthenticateToken(token string) (*User, error) {
	sum := sha256.Sum256([]byte(token))
	match := find(f.file.Get(), sum)
	if match == nil {
		match = find(f.file.Fresh(), sum) // a token minted a moment ago
	}
	if match == nil || (match.expires != nil && !f.now().Before(*match.expires)) {
		return nil, ErrInvalidToken
	}
	u := match.user
	u.Groups = append([]string(nil), u.Groups...)
	return &u, nil
}

// find compares sum against every entry, in constant time each, so timing
// says nothing about which (if any) entry was close.
func find(entries []parsedEntry, sum [sha256.Size]byte) *parsedEntry {
	var match *parsedEntry
	for i := range entries {
		if subtle.ConstantTimeCompare(entries[i].hash[:], sum[:]) == 1 {
			match = &entries[i]
		}
	}
	return match
}

// NewToken returns a fresh random token (256 bits) and its hex SHA-256.
func NewToken() (token, hash string) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	token = tokenPrefix + base64.RawURLEncoding.EncodeToString(b)
	sum := sha256.Sum256([]byte(token))
	return token, hex.EncodeToString(sum[:])
}

// AddToken mints a token for user, appends its hash to the file at path
// (creating it, mode 0600) and returns the token, which is shown once and
// stored nowhere.
func AddToken(path string, user string, groups []string, expires *time.Time, description string) (string, error) {
	if err := ValidateIdentity(user, groups); err != nil {
		return "", err
	}
	doc := tokenFileDoc{APIVersion: TokenFileAPIVersion, Kind: TokenFileKind}
	if data, err := os.ReadFile(path); err == nil {
		if err := yaml.UnmarshalStrict(data, &doc); err != nil {
			return "", fmt.Errorf("token file %s: %w", path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	token, hash := NewToken()
	doc.Tokens = append(doc.Tokens, TokenEntry{User: user, Groups: groups, SHA256: hash, Expires: expires, Description: description})
	out, err := yaml.Marshal(doc)
	if err != nil {
		return "", err
	}
	if err := statefile.WriteAtomic(path, out, 0o600); err != nil {
		return "", err
	}
	return token, nil
}

// PruneExpired removes tokens that expired before now from the file at
// path (they are refused anyway; this keeps the file from growing) and
// returns how many it removed. A missing file has nothing to prune.
func PruneExpired(path string, now time.Time) (int, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	} else if err != nil {
		return 0, err
	}
	var doc tokenFileDoc
	if err := yaml.UnmarshalStrict(data, &doc); err != nil {
		return 0, fmt.Errorf("token file %s: %w", path, err)
	}
	kept := doc.Tokens[:0]
	for _, e := range doc.Tokens {
		if e.Expires == nil || e.Expires.After(now) {
			kept = append(kept, e)
		}
	}
	n := len(doc.Tokens) - len(kept)
	if n == 0 {
		return 0, nil
	}
	doc.Tokens = kept
	out, err := yaml.Marshal(doc)
	if err != nil {
		return 0, err
	}
	return n, statefile.WriteAtomic(path, out, 0o600)
}

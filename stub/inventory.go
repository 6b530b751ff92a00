package stub

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/config"
)

// The operator's view of the state, for `stub clusters` and `stub tokens`:
// what is registered and minted, without a secret, a token or a hash of
// either, and the changes operators used to make by editing tokens.yaml.
// Reads go to the backend that writes go to (the directory, or the hub's
// Secret, pulled first), so a command sees what it would change.

// ErrTokenNotFound: a token ID that no static token has.
var ErrTokenNotFound = errors.New("no static token has this ID (`stub tokens list` shows them)")

// TokenIDLength is the length of a TokenID in hex digits.
const TokenIDLength = 12

// TokenID is the short ID by which operators name a static token whose
// SHA-256 is sha256Hex (as tokens.yaml keeps it): the first 12 hex digits
// of SHA-256("keyhole-token-id:" + sha256Hex). It is derived, not stored,
// so tokens minted before IDs existed have one too; it is neither the
// token nor its hash, and nothing can be matched against it but an ID.
func TokenID(sha256Hex string) string {
	h := sha256.Sum256([]byte("keyhole-token-id:" + strings.ToLower(sha256Hex)))
	return hex.EncodeToString(h[:])[:TokenIDLength]
}

// TokenIDOf is the TokenID of token itself (what `stub kubeconfig` minted).
func TokenIDOf(token string) string {
	h := sha256.Sum256([]byte(token))
	return TokenID(hex.EncodeToString(h[:]))
}

// ValidTokenID reports whether id has a TokenID's shape.
func ValidTokenID(id string) bool {
	if len(id) != TokenIDLength {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil && strings.ToLower(id) == id
}

// TokenInfo is a static token as operators see it.
type TokenInfo struct {
	ID     string   `json:"id"`
	User   string   `json:"user"`
	Groups []string `json:"groups,omitempty"`
	// Created is when it was minted, as `stub kubeconfig` records it in
	// the description ("kubeconfig <RFC 3339 time>"); nil when unknown.
	Created     *time.Time `json:"created,omitempty"`
	Expires     *time.Time `json:"expires,omitempty"`
	Description string     `json:"description,omitempty"`
}

// mintedPrefix starts the description AddToken's callers write.
const mintedPrefix = "kubeconfig "

func (t Token) info() TokenInfo {
	ti := TokenInfo{ID: TokenID(t.SHA256), User: t.User, Groups: t.Groups, Expires: t.Expires, Description: t.Description}
	if s, ok := strings.CutPrefix(t.Description, mintedPrefix); ok {
		if c, err := time.Parse(time.RFC3339, s); err == nil {
			ti.Created = &c
		}
	}
	return ti
}

// read returns state file name's current contents: for replicas the hub
// Secret's (pulled into the directory first), else the file's.
func (s *State) read(ctx context.Context, name string) ([]byte, error) {
	if err := s.Pull(ctx); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(s.path(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

// TokenInfos lists the static tokens in the order they were minted.
func (s *State) TokenInfos(ctx context.Context) ([]TokenInfo, error) {
	b, err := s.read(ctx, tokensFile)
	if err != nil {
		return nil, err
	}
	if _, err := parseTokens(b); err != nil {
		return nil, fmt.Errorf("%s: %w", tokensFile, err)
	}
	var doc tokensDoc
	if err := decodeDoc(b, tokensKind, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", tokensFile, err)
	}
	out := make([]TokenInfo, len(doc.Tokens))
	for i, t := range doc.Tokens {
		out[i] = t.info()
	}
	return out, nil
}

// RevokeTokenIDs removes the static tokens with these IDs and returns
// them. If an ID is malformed or matches no token, nothing is removed
// (ErrTokenNotFound). Requests with them are refused at once; their open
// streams end within the stub's recheck interval, as with RevokeTokens.
func (s *State) RevokeTokenIDs(ctx context.Context, ids []string) ([]TokenInfo, error) {
	if len(ids) == 0 {
		return nil, errors.New("stub: RevokeTokenIDs without an ID")
	}
	var removed []TokenInfo
	err := s.editTokens(ctx, func(doc *tokensDoc) error {
		removed = nil
		for _, id := range ids {
			if !slices.ContainsFunc(doc.Tokens, func(t Token) bool { return TokenID(t.SHA256) == id }) {
				return fmt.Errorf("%q: %w", id, ErrTokenNotFound)
			}
		}
		doc.Tokens = slices.DeleteFunc(doc.Tokens, func(t Token) bool {
			if slices.Contains(ids, TokenID(t.SHA256)) {
				removed = append(removed, t.info())
				return true
			}
			return false
		})
		return nil
	})
	return removed, err
}

// ExpireToken sets the expiry of the static token with this ID to at
// (truncated to the second) and returns it as it is now. at must be in the
// future: a token to end now is revoked (RevokeTokenIDs). Requests are
// refused from at on; streams it opened end within the stub's recheck
// interval after at (a stream keeps the expiry it was admitted with when
// that is earlier). ErrTokenNotFound if no token has the ID.
func (s *State) ExpireToken(ctx context.Context, id string, at time.Time) (TokenInfo, error) {
	at = at.UTC().Truncate(time.Second)
	if !at.After(s.now()) {
		return TokenInfo{}, fmt.Errorf("expiry %s is not in the future", at.Format(time.RFC3339))
	}
	var out TokenInfo
	err := s.editTokens(ctx, func(doc *tokensDoc) error {
		i := slices.IndexFunc(doc.Tokens, func(t Token) bool { return TokenID(t.SHA256) == id })
		if i < 0 {
			return fmt.Errorf("%q: %w", id, ErrTokenNotFound)
		}
		doc.Tokens[i].Expires = &at
		out = doc.Tokens[i].info()
		return nil
	})
	return out, err
}

// ClusterInfo is a registered cluster as operators see it: no secret hash.
type ClusterInfo struct {
	ID         string            `json:"id"`
	Labels     map[string]string `json:"labels,omitempty"`
	Registered time.Time         `json:"registered"`
	// SecretIssued is when the current join secret was issued: at
	// registration, or at the last rotation.
	SecretIssued  time.Time  `json:"secretIssued"`
	SecretExpires *time.Time `json:"secretExpires,omitempty"`
	// PreviousSecretLive: sessions opened with the secret before the last
	// rotation may stay up (a rotation without --disconnect).
	PreviousSecretLive bool   `json:"previousSecretLive,omitempty"`
	CallerAudience     string `json:"callerAudience,omitempty"`
}

func (c Cluster) info() ClusterInfo {
	ci := ClusterInfo{ID: c.ID, Labels: c.Labels, Registered: c.Registered, SecretIssued: c.Registered,
		SecretExpires: c.SecretExpires, PreviousSecretLive: c.PreviousSecretSHA256 != "", CallerAudience: c.CallerAudience}
	if c.SecretRotated != nil {
		ci.SecretIssued = *c.SecretRotated
	}
	return ci
}

// ClusterInfos lists the registered clusters by ID.
func (s *State) ClusterInfos(ctx context.Context) ([]ClusterInfo, error) {
	b, err := s.read(ctx, clustersFile)
	if err != nil {
		return nil, err
	}
	set, err := parseClusters(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", clustersFile, err)
	}
	out := make([]ClusterInfo, 0, len(set.byID))
	for _, c := range set.byID {
		out = append(out, c.info())
	}
	slices.SortFunc(out, func(a, b ClusterInfo) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// StaticTokenReach returns, for the config's policy, the function that
// says which of clusters a static token of user and groups may reach: those
// the policy admits it to, except clusters whose agents verify callers
// (they accept no static token).
func StaticTokenReach(cfg config.Stub, clusters []ClusterInfo) (func(user string, groups []string) []string, error) {
	pol, err := cfg.BuildPolicy()
	if err != nil {
		return nil, err
	}
	return func(user string, groups []string) []string {
		u := &authn.User{Name: user, Groups: groups}
		var ids []string
		for _, c := range clusters {
			if c.CallerAudience == "" && pol.Allowed(u, c.ID, c.Labels) {
				ids = append(ids, c.ID)
			}
		}
		return ids
	}, nil
}

package authn

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"time"
)

// User is an authenticated caller.
type User struct {
	Name   string
	Groups []string
	// Expires is when the credential that proved this identity ends (a
	// static token's expiry); zero when it has none or the authenticator
	// does not say (see CredentialExpiry for a JWT's exp).
	Expires time.Time
}

// ErrInvalidToken is returned for a token that is unknown, expired or revoked.
var ErrInvalidToken = errors.New("invalid bearer token")

// StaticToken is one static bearer token as the stub keeps it: only the
// SHA-256 of the token, never the token (the stub's state owns the list;
// see package stub).
type StaticToken struct {
	User    User
	SHA256  [sha256.Size]byte
	Expires *time.Time // nil: no expiry
}

// StaticTokens authenticates a static bearer token (Chain's second step).
type StaticTokens interface {
	AuthenticateToken(token string) (*User, error)
}

// MatchToken returns the user of token among list, or ErrInvalidToken if
// none matches or the match expired at now. It compares the token's hash
// with every entry, in constant time each, so timing says nothing about
// which (if any) entry was close. The returned User is a copy.
func MatchToken(list []StaticToken, token string, now time.Time) (*User, error) {
	sum := sha256.Sum256([]byte(token))
	var match *StaticToken
	for i := range list {
		if subtle.ConstantTimeCompare(list[i].SHA256[:], sum[:]) == 1 {
			match = &list[i]
		}
	}
	if match == nil || (match.Expires != nil && !now.Before(*match.Expires)) {
		return nil, ErrInvalidToken
	}
	u := match.User
	u.Groups = append([]string(nil), u.Groups...)
	if match.Expires != nil {
		u.Expires = *match.Expires
	}
	return &u, nil
}

// ValidateIdentity refuses empty names and anything in the reserved
// "system:" space, which only the cluster itself may hand out.
// It is the default IdentityRules.
func ValidateIdentity(name string, groups []string) error {
	return IdentityRules{}.Check(name, groups)
}

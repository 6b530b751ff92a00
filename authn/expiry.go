package authn

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"time"
)

// CredentialExpiry is when the credential token, which authenticated as u,
// ends: u.Expires if the authenticator set it, else a JWT's exp claim, else
// zero (no end known). Call it only after token was verified: it reads the
// exp claim without checking the signature.
func CredentialExpiry(token string, u *User) time.Time {
	if !u.Expires.IsZero() || !LooksLikeJWT(token) {
		return u.Expires
	}
	parts := strings.Split(token, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}
	}
	var c struct {
		Exp json.Number `json:"exp"`
	}
	if json.Unmarshal(payload, &c) != nil {
		return time.Time{}
	}
	sec, err := c.Exp.Float64()
	if err != nil || sec <= 0 {
		return time.Time{}
	}
	return time.Unix(int64(sec), 0)
}

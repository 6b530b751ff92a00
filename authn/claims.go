package authn

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"time"
)

// Reading claims of a token that was verified already. CredentialExpiry
// and TokenAudiences parse a JWT's payload without checking its signature:
// call them only for a token an authenticator accepted.

// jwtPayload is the decoded (not verified) payload of a JWT.
func jwtPayload(token string) ([]byte, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, errors.New("malformed token")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, errors.New("malformed token payload")
	}
	return payload, nil
}

// unverifiedClaims decodes the payload of a JWT (nil if it is not one).
func unverifiedClaims(token string) map[string]json.RawMessage {
	payload, err := jwtPayload(token)
	if err != nil {
		return nil
	}
	var c map[string]json.RawMessage
	if json.Unmarshal(payload, &c) != nil {
		return nil
	}
	return c
}

// CredentialExpiry is when the credential token, which authenticated as u,
// ends: u.Expires if the authenticator set it, else a JWT's exp claim, else
// zero (no end known).
func CredentialExpiry(token string, u *User) time.Time {
	if !u.Expires.IsZero() {
		return u.Expires
	}
	var exp json.Number
	if raw, ok := unverifiedClaims(token)["exp"]; !ok || json.Unmarshal(raw, &exp) != nil {
		return time.Time{}
	}
	sec, err := exp.Float64()
	if err != nil || sec <= 0 {
		return time.Time{}
	}
	return time.Unix(int64(sec), 0)
}

// TokenAudiences is a JWT's aud claim (a string or a list of strings; nil
// for a token that is no JWT or has none).
func TokenAudiences(token string) []string {
	raw, ok := unverifiedClaims(token)["aud"]
	if !ok {
		return nil
	}
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return []string{one}
	}
	var many []string
	if json.Unmarshal(raw, &many) == nil {
		return many
	}
	return nil
}

// TokenNonce is a JWT's nonce claim ("" for a token that is no JWT or has
// none). Call it only for a token an authenticator accepted.
func TokenNonce(token string) string {
	raw, ok := unverifiedClaims(token)["nonce"]
	if !ok {
		return ""
	}
	var nonce string
	if json.Unmarshal(raw, &nonce) != nil {
		return ""
	}
	return nonce
}

// TokenIssuedAt is a JWT's iat claim (zero for a token that is no JWT or
// has none). Call it only for a token an authenticator accepted.
func TokenIssuedAt(token string) time.Time {
	var iat json.Number
	if raw, ok := unverifiedClaims(token)["iat"]; !ok || json.Unmarshal(raw, &iat) != nil {
		return time.Time{}
	}
	sec, err := iat.Float64()
	if err != nil || sec <= 0 {
		return time.Time{}
	}
	return time.Unix(int64(sec), 0)
}

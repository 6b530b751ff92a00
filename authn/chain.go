package authn

import (
	"context"
	"errors"
)

// Chain authenticates a bearer token: a JWT (three dot-separated parts) by
// the issuer it names, anything else as a static token. Static tokens
// ("khu_…") never contain dots, so the two never compete for a token.
type Chain struct {
	Static StaticTokens // may be nil
	JWT    *JWT         // may be nil
}

// Authenticate maps token to a user or says why it cannot.
func (c *Chain) Authenticate(ctx context.Context, token string) (*User, error) {
	if len(token) > MaxTokenBytes {
		return nil, ErrTokenTooLarge
	}
	if LooksLikeJWT(token) {
		if c.JWT == nil {
			return nil, errors.New("this gateway accepts no OIDC tokens (no issuer configured)")
		}
		return c.JWT.AuthenticateJWT(ctx, token)
	}
	if c.Static == nil {
		return nil, ErrInvalidToken
	}
	return c.Static.AuthenticateToken(token)
}

package authn

import (
	"encoding/base64"
	"slices"
	"testing"
	"time"
)

func fakeJWT(payload string) string {
	return "eyJhbGciOiJub25lIn0." + base64.RawURLEncoding.EncodeToString([]byte(payload)) + ".sig"
}

func TestClaimsOfVerifiedTokens(t *testing.T) {
	for _, tc := range []struct {
		token string
		exp   int64
		aud   []string
	}{
		{fakeJWT(`{"exp":1700000000,"aud":"keyhole"}`), 1700000000, []string{"keyhole"}},
		{fakeJWT(`{"exp":1.7e9,"aud":["keyhole","keyhole-acc"]}`), 1700000000, []string{"keyhole", "keyhole-acc"}},
		{fakeJWT(`{"aud":42}`), 0, nil},
		{fakeJWT(`not json`), 0, nil},
		{"khu_static", 0, nil},
		{"a.%%%.c", 0, nil},
	} {
		got := CredentialExpiry(tc.token, &User{})
		if (tc.exp == 0) != got.IsZero() || (tc.exp != 0 && got.Unix() != tc.exp) {
			t.Errorf("CredentialExpiry(%q) = %v, want %d", tc.token, got, tc.exp)
		}
		if a := TokenAudiences(tc.token); !slices.Equal(a, tc.aud) {
			t.Errorf("TokenAudiences(%q) = %q, want %q", tc.token, a, tc.aud)
		}
	}
	for token, want := range map[string]string{
		fakeJWT(`{"nonce":"n-1"}`): "n-1", fakeJWT(`{"nonce":42}`): "", fakeJWT(`{}`): "", "khu_static": "",
	} {
		if got := TokenNonce(token); got != want {
			t.Errorf("TokenNonce(%q) = %q, want %q", token, got, want)
		}
	}
	if got := TokenIssuedAt(fakeJWT(`{"iat":1700000000}`)); got.Unix() != 1700000000 {
		t.Errorf("TokenIssuedAt = %v", got)
	}
	if got := TokenIssuedAt(fakeJWT(`{}`)); !got.IsZero() {
		t.Errorf("TokenIssuedAt of no iat = %v", got)
	}
	at := time.Unix(1800000000, 0)
	if got := CredentialExpiry(fakeJWT(`{"exp":1700000000}`), &User{Expires: at}); !got.Equal(at) {
		t.Errorf("the authenticator's expiry should win: %v", got)
	}
}

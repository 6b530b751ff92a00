package authn

import (
	"crypto/sha256"
	"errors"
	"testing"
	"time"
)

func TestMatchToken(t *testing.T) {
	now := time.Now()
	past, future := now.Add(-time.Minute), now.Add(time.Minute)
	list := []StaticToken{
		{User: User{Name: "alice", Groups: []string{"dev"}}, SHA256: sha256.Sum256([]byte("khu_alice"))},
		{User: User{Name: "old"}, SHA256: sha256.Sum256([]byte("khu_old")), Expires: &past},
		{User: User{Name: "soon"}, SHA256: sha256.Sum256([]byte("khu_soon")), Expires: &future},
	}
	for tok, want := range map[string]string{"khu_alice": "alice", "khu_soon": "soon", "khu_old": "", "khu_alicex": "", "": ""} {
		u, err := MatchToken(list, tok, now)
		switch {
		case want == "" && !errors.Is(err, ErrInvalidToken):
			t.Errorf("%q: %+v %v, want ErrInvalidToken", tok, u, err)
		case want != "" && (err != nil || u.Name != want):
			t.Errorf("%q: %+v %v, want %s", tok, u, err, want)
		}
	}
	// The caller gets a copy: changing it changes nothing in the list.
	u, _ := MatchToken(list, "khu_alice", now)
	u.Groups[0] = "admins"
	if list[0].User.Groups[0] != "dev" {
		t.Fatal("MatchToken returned the list's own groups")
	}
}

func FuzzMatchToken(f *testing.F) {
	good := "khu_good"
	list := []StaticToken{{User: User{Name: "alice"}, SHA256: sha256.Sum256([]byte(good))}}
	f.Add(good)
	f.Add("")
	f.Add(good[:len(good)-1])
	f.Fuzz(func(t *testing.T, tok string) {
		u, err := MatchToken(list, tok, time.Now())
		if (err == nil) != (tok == good) || (err == nil && u.Name != "alice") {
			t.Fatalf("token %q: %+v %v", tok, u, err)
		}
	})
}

package web

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Sealed values (cookies) are
//
//	base64url(version 0x01 ‖ key ID (4 bytes) ‖ nonce (12) ‖ AES-256-GCM ciphertext ‖ tag (16))
//
// with the additional data name ‖ 0x00 ‖ key ID, where name is the
// cookie's name: a value sealed for one cookie never opens as another (a
// login cookie is never a session cookie). The newest key whose ActiveFrom
// has come seals; every key the Store lists opens. Nonces are random
// (cipher.NewGCMWithRandomNonce): with a new key every week or so, the 2^32
// seals per key that random 96-bit nonces allow are far off.

const sealVersion = 0x01

// Errors of opening a sealed value. Callers answer all of them alike (the
// value is not valid); they differ for logs and tests.
var (
	errMalformed  = errors.New("sealed value is malformed")
	errUnknownKey = errors.New("sealed with a key this stub does not know")
	errForged     = errors.New("sealed value does not authenticate (tampered, or sealed for another use)")
	errNoKey      = errors.New("no session key is active yet")
)

// freshKeysEvery bounds how often an unknown key ID makes the sealer read
// the keys afresh: a cookie with a made-up key ID must not make every
// request a read of shared state.
const freshKeysEvery = time.Second

// sealer seals and opens values with the Store's session keys.
type sealer struct {
	store Store
	now   func() time.Time

	mu        sync.Mutex
	aeads     map[string]aeadOf // by key ID
	lastFresh time.Time
}

type aeadOf struct {
	secret []byte
	aead   cipher.AEAD
}

func newSealer(store Store, now func() time.Time) *sealer {
	return &sealer{store: store, now: now, aeads: map[string]aeadOf{}}
}

// aead returns the cipher of k, built once per key.
func (s *sealer) aead(k Key) (cipher.AEAD, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a, ok := s.aeads[k.ID]; ok && bytes.Equal(a.secret, k.Secret) {
		return a.aead, nil
	}
	if len(k.Secret) != 32 {
		return nil, fmt.Errorf("session key %s: %d bytes, want 32", k.ID, len(k.Secret))
	}
	block, err := aes.NewCipher(k.Secret)
	if err != nil {
		return nil, err
	}
	a, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return nil, err
	}
	s.aeads[k.ID] = aeadOf{secret: k.Secret, aead: a}
	return a, nil
}

// keyID decodes a key's ID (8 hex digits) to its 4 bytes.
func keyID(id string) ([]byte, error) {
	b, err := hex.DecodeString(id)
	if err != nil || len(b) != 4 {
		return nil, fmt.Errorf("session key ID %q is not 8 hex digits", id)
	}
	return b, nil
}

func additionalData(name string, kid []byte) []byte {
	ad := make([]byte, 0, len(name)+1+len(kid))
	ad = append(ad, name...)
	ad = append(ad, 0)
	return append(ad, kid...)
}

// sealingKey is the newest key of keys whose ActiveFrom has come.
func sealingKey(keys []Key, now time.Time) (Key, bool) {
	var best Key
	found := false
	for _, k := range keys {
		if k.ActiveFrom.After(now) {
			continue
		}
		if !found || k.ActiveFrom.After(best.ActiveFrom) || (k.ActiveFrom.Equal(best.ActiveFrom) && k.Created.After(best.Created)) {
			best, found = k, true
		}
	}
	return best, found
}

// seal seals plaintext for the cookie called name.
func (s *sealer) seal(ctx context.Context, name string, plaintext []byte) (string, error) {
	keys, err := s.store.SessionKeys(ctx, false)
	if err != nil {
		return "", fmt.Errorf("read session keys: %w", err)
	}
	k, ok := sealingKey(keys, s.now())
	if !ok {
		return "", errNoKey
	}
	kid, err := keyID(k.ID)
	if err != nil {
		return "", err
	}
	a, err := s.aead(k)
	if err != nil {
		return "", err
	}
	out := make([]byte, 0, 1+len(kid)+a.NonceSize()+len(plaintext)+a.Overhead())
	out = append(out, sealVersion)
	out = append(out, kid...)
	out = a.Seal(out, nil, plaintext, additionalData(name, kid))
	return base64.RawURLEncoding.EncodeToString(out), nil
}

// open opens value, sealed for the cookie called name. A key ID it does
// not know makes it read the keys afresh, at most once per
// freshKeysEvery.
func (s *sealer) open(ctx context.Context, name, value string) ([]byte, error) {
	raw, err := base64.RawURLEncoding.DecodeString(value)
	if err != nil || len(raw) < 1+4+12+16 || raw[0] != sealVersion {
		return nil, errMalformed
	}
	kid := raw[1:5]
	id := hex.EncodeToString(kid)
	k, err := s.key(ctx, id)
	if err != nil {
		return nil, err
	}
	a, err := s.aead(k)
	if err != nil {
		return nil, err
	}
	plain, err := a.Open(nil, nil, raw[5:], additionalData(name, kid))
	if err != nil {
		return nil, errForged
	}
	return plain, nil
}

// key finds the key called id, reading the keys afresh if it is not
// listed (another replica may have added it).
func (s *sealer) key(ctx context.Context, id string) (Key, error) {
	keys, err := s.store.SessionKeys(ctx, false)
	if err != nil {
		return Key{}, fmt.Errorf("read session keys: %w", err)
	}
	if k, ok := findKey(keys, id); ok {
		return k, nil
	}
	s.mu.Lock()
	now := s.now()
	due := now.Sub(s.lastFresh) >= freshKeysEvery || now.Before(s.lastFresh)
	if due {
		s.lastFresh = now
	}
	s.mu.Unlock()
	if !due {
		return Key{}, errUnknownKey
	}
	keys, err = s.store.SessionKeys(ctx, true)
	if err != nil {
		return Key{}, fmt.Errorf("read session keys: %w", err)
	}
	if k, ok := findKey(keys, id); ok {
		return k, nil
	}
	return Key{}, errUnknownKey
}

func findKey(keys []Key, id string) (Key, bool) {
	for _, k := range keys {
		if k.ID == id {
			return k, true
		}
	}
	return Key{}, false
}

// sealRecord seals plaintext (a record's tokens) under the per-session
// record key rk, bound to the record's name: only the cookie holds rk, so
// a copy of the shared state holds no usable token.
func sealRecord(rk []byte, name string, plaintext []byte) ([]byte, error) {
	a, err := recordAEAD(rk)
	if err != nil {
		return nil, err
	}
	return a.Seal(nil, nil, plaintext, []byte("keyhole.dev/record\x00"+name)), nil
}

func openRecord(rk []byte, name string, sealed []byte) ([]byte, error) {
	a, err := recordAEAD(rk)
	if err != nil {
		return nil, err
	}
	plain, err := a.Open(nil, nil, sealed, []byte("keyhole.dev/record\x00"+name))
	if err != nil {
		return nil, errForged
	}
	return plain, nil
}

func recordAEAD(rk []byte) (cipher.AEAD, error) {
	if len(rk) != 32 {
		return nil, errMalformed
	}
	block, err := aes.NewCipher(rk)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCMWithRandomNonce(block)
}

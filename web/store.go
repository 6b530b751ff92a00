package web

import (
	"context"
	"errors"
	"time"
)

// ErrConflict is what Store.UpdateSession returns when the record changed
// since it was read (its Version is stale).
var ErrConflict = errors.New("browser session record changed concurrently")

// Record is a browser session as stored in shared state. Tokens are never
// stored in the clear: Sealed is AES-256-GCM, under a key that only the
// session cookie holds, of the session's ID and refresh tokens; a copy of
// the state (a backup, the hub Secret) holds no usable token.
type Record struct {
	// Version is the store's optimistic-concurrency version: set by the
	// Store on read, checked by UpdateSession. Callers never set it.
	Version string `json:"-"`

	User           string    `json:"user"`   // the authenticated user name, for operators listing sessions
	Issuer         string    `json:"issuer"` // the ID of the login (authentication.jwt[] issuer) used
	Created        time.Time `json:"created"`
	Expires        time.Time `json:"expires"`        // absolute end of the session
	IDTokenExpires time.Time `json:"idTokenExpires"` // when the current ID token expires
	// Lease, when set and Until is in the future, says that Holder is
	// redeeming the refresh token now; others wait for it.
	Lease  *Lease `json:"lease,omitempty"`
	Sealed []byte `json:"sealed"`
}

// Lease marks a refresh in progress.
type Lease struct {
	Holder string    `json:"holder"`
	Until  time.Time `json:"until"`
}

// Key is a sealing key of session cookies and records.
type Key struct {
	ID         string    `json:"id"` // 8 hex digits
	Created    time.Time `json:"created"`
	ActiveFrom time.Time `json:"activeFrom"` // seals from then on; opens always
	Secret     []byte    `json:"secret"`     // 32 bytes
}

// Store is the shared state sessions live in: a directory for one stub,
// the hub for replicas (stub.State implements it). Names are hex strings
// of at most 64 characters. Every method is safe for concurrent use, also
// across processes sharing the store.
type Store interface {
	// GetSession returns the record called name, or nil, nil when there is
	// none. fresh asks for the store's latest (no cache).
	GetSession(ctx context.Context, name string, fresh bool) (*Record, error)
	// CreateSession stores a new record.
	CreateSession(ctx context.Context, name string, r *Record) error
	// UpdateSession replaces the record if r.Version is still current, or
	// returns ErrConflict.
	UpdateSession(ctx context.Context, name string, r *Record) error
	// DeleteSession removes the record; deleting a missing one is no error.
	DeleteSession(ctx context.Context, name string) error
	// SessionKeys returns the sealing keys, creating the first one if
	// there is none. fresh asks for the store's latest (an unknown key ID
	// in a cookie may have been added by another replica).
	SessionKeys(ctx context.Context, fresh bool) ([]Key, error)
}

package stub

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"

	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/config"
	"github.com/keyhole-dev/keyhole/ha"
	"github.com/keyhole-dev/keyhole/internal/statefile"
	"github.com/keyhole-dev/keyhole/proxy"
	"github.com/keyhole-dev/keyhole/tunnel"
	"github.com/keyhole-dev/keyhole/web"
)

// Cluster is one registered cluster as the state keeps it: the SHA-256 of
// its join secret (the secret itself is shown once, at registration, and
// stored nowhere) and its labels.
type Cluster struct {
	ID           string `json:"id"`
	SecretSHA256 string `json:"secretSHA256"`
	// SecretExpires, when set, ends the join secret: handshakes with it are
	// refused afterwards and sessions it opened are closed.
	SecretExpires *time.Time `json:"secretExpires,omitempty"`
	// PreviousSecretSHA256 is the secret before the last rotation: no new
	// handshake may use it, but sessions it opened stay up (so a rotation
	// breaks nothing while agents get the new secret). Empty after a
	// rotation with Disconnect: those sessions are closed.
	PreviousSecretSHA256 string `json:"previousSecretSHA256,omitempty"`
	// SecretRotated is when the current join secret was issued by a
	// rotation (nil: the secret is the one issued at registration).
	SecretRotated *time.Time        `json:"secretRotated,omitempty"`
	Labels        map[string]string `json:"labels,omitempty"`
	Registered    time.Time         `json:"registered"`
	// CallerAudience, when set, says that the cluster's agents verify
	// callers themselves (stub register --caller-audience): the stub hands
	// them a caller's ID token only when its audience includes this value,
	// and accepts a token with this audience for this cluster only. Unique
	// among clusters.
	CallerAudience string `json:"callerAudience,omitempty"`
}

// Token is one static bearer token as the state keeps it: the SHA-256 of
// the token (hex), never the token.
type Token struct {
	User        string     `json:"user"`
	Groups      []string   `json:"groups,omitempty"`
	SHA256      string     `json:"sha256"`
	Expires     *time.Time `json:"expires,omitempty"`
	Description string     `json:"description,omitempty"`
}

// Errors of the state's operations; callers (the CLI) add their own
// wording around them.
var (
	// ErrClusterExists: Register of an ID already registered.
	ErrClusterExists = errors.New("cluster is already registered")
	// ErrClusterNotFound: Rotate or Unregister of an unknown ID.
	ErrClusterNotFound = errors.New("cluster is not registered")
	// ErrAudienceInUse: a caller audience another cluster has already.
	ErrAudienceInUse = errors.New("caller audience is another cluster's")
	// ErrAudienceRetired: a caller audience of a cluster that was
	// unregistered; tokens issued for it may have been seen by that
	// cluster's agents.
	ErrAudienceRetired = errors.New("caller audience belonged to an unregistered cluster; tokens issued for it may have been seen by that cluster's agents: pick a new one")
	// ErrInvalidClusterID: an ID that is not a DNS label.
	ErrInvalidClusterID = errors.New("cluster ID must be a DNS label: lower-case letters, digits and '-', at most 63 characters")
	// ErrInvalidLabel: a label that Kubernetes would not accept.
	ErrInvalidLabel = errors.New("cluster labels follow Kubernetes' rules for label keys and values")
	// errUnchanged ends an edit that has nothing to write.
	errUnchanged = errors.New("unchanged")
)

// Secret and token prefixes: a leaked string says what it is.
const (
	joinSecretPrefix = "khj_"
	userTokenPrefix  = "khu_"
)

// StateConfig says where the state lives.
type StateConfig struct {
	// Dir is the state directory: the files the stub reads (clusters.yaml,
	// tokens.yaml), written directly for a single stub and mirrored from
	// the hub for a set of replicas. Required.
	Dir string
	// Hub, when set, makes the hub's Secret ha.StateSecret in Namespace the
	// state, shared by every replica; Dir then holds its mirror.
	Hub       kubernetes.Interface
	Namespace string
	Logger    *zap.Logger
}

// State is the one owner of the stub's state: registered clusters and
// static tokens. It has two backends: a directory (a single stub; writes
// are serialised between processes by a lock file) and the hub's shared
// Secret (replicas; writes use optimistic concurrency, and every replica
// mirrors the Secret into its directory). Readers always read the
// directory, re-reading a file when it changes, so what `stub register`
// writes reaches a running stub within a second and a miss (an unknown
// cluster or token) looks again at once.
//
// State implements tunnel.AgentAuthenticator and tunnel.SessionChecker
// (join secrets), authn.StaticTokens (user tokens), and, through Registry,
// proxy.ClusterRegistry.
type State struct {
	dir       string
	mirror    *ha.State            // nil for a single stub
	hubClient kubernetes.Interface // nil for a single stub
	hubNS     string               // the hub's namespace
	clusters  *statefile.File[clusterSet]
	tokens    *statefile.File[[]authn.StaticToken]
	keys      *statefile.File[[]web.Key] // browser session sealing keys
	sessions  sessionCache               // browser session records (sessions.go)
	now       func() time.Time
	log       *zap.Logger

	mu      sync.Mutex
	lastErr map[string]string // file → the error last reported ("" once fixed)
}

// OpenState reads the state in cfg.Dir (a missing file is an empty list,
// so a first run needs nothing) and, with a hub, prepares the mirror; call
// Pull to bring it up to date before serving.
func OpenState(cfg StateConfig) (*State, error) {
	if cfg.Dir == "" {
		return nil, errors.New("stub: StateConfig.Dir is empty")
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	s := &State{dir: cfg.Dir, now: time.Now, hubClient: cfg.Hub, hubNS: cfg.Namespace, log: cfg.Logger, lastErr: map[string]string{}}
	if cfg.Hub != nil {
		s.mirror = ha.NewState(cfg.Hub, cfg.Namespace, map[string]string{
			clustersFile: s.path(clustersFile), tokensFile: s.path(tokensFile),
			sessionKeysFile: s.path(sessionKeysFile)}, cfg.Logger)
	}
	var err error
	if s.clusters, err = statefile.Open(s.path(clustersFile), parseClusters); err != nil {
		return nil, fmt.Errorf("clusters file: %w", err)
	}
	if s.tokens, err = statefile.Open(s.path(tokensFile), parseTokens); err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	if s.keys, err = statefile.Open(s.path(sessionKeysFile), parseSessionKeys); err != nil {
		return nil, fmt.Errorf("session keys file: %w", err)
	}
	return s, nil
}

// StateFor opens the state that cfg names: the state directory, and with
// hub.enabled the hub's shared Secret (through a client of hub.kubeconfig
// or the pod's ServiceAccount).
func StateFor(cfg config.Stub, log *zap.Logger) (*State, error) {
	sc := StateConfig{Dir: cfg.StateDir, Logger: log}
	if cfg.Hub.Enabled {
		cs, err := ha.NewClient(ha.ClientConfig{Kubeconfig: cfg.Hub.Kubeconfig, ReplicaID: cfg.Hub.ReplicaID})
		if err != nil {
			return nil, err
		}
		sc.Hub, sc.Namespace = cs, cfg.Hub.Namespace
	}
	return OpenState(sc)
}

func (s *State) path(name string) string { return filepath.Join(s.dir, name) }

// Pull brings the directory up to date with the hub's Secret (nothing to
// do for a single stub).
func (s *State) Pull(ctx context.Context) error {
	if s.mirror == nil {
		return nil
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("stateDir: %q: %w", s.dir, err)
	}
	if err := s.mirror.Pull(ctx); err != nil {
		return err
	}
	_ = s.clusters.Reload()
	_ = s.tokens.Reload()
	_ = s.keys.Reload()
	return nil
}

// clusterMap and tokenList read the state files (re-read when they changed;
// fresh: at once) and report a file that stopped parsing, or parses again.
func (s *State) clusterMap(fresh bool) map[string]Cluster { return s.clusterSet(fresh).byID }

func (s *State) clusterSet(fresh bool) clusterSet {
	var m clusterSet
	if fresh {
		m = s.clusters.Fresh()
	} else {
		m = s.clusters.Get()
	}
	s.report(clustersFile, s.clusters.Err())
	return m
}

func (s *State) tokenList(fresh bool) []authn.StaticToken {
	var l []authn.StaticToken
	if fresh {
		l = s.tokens.Fresh()
	} else {
		l = s.tokens.Get()
	}
	s.report(tokensFile, s.tokens.Err())
	return l
}

// report logs once when a state file stops parsing (its last good contents
// stay in force, so a half-done edit revokes nothing) and once when it
// parses again.
func (s *State) report(name string, err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastErr[name] == msg {
		return
	}
	if msg != "" {
		s.log.Error("state file does not parse: its last good contents stay in force until it is fixed", zap.String("file", s.path(name)), zap.String("error", msg))
	} else {
		s.log.Info("state file parses again; its contents are in force", zap.String("file", s.path(name)))
	}
	s.lastErr[name] = msg
}

// Err is the error of a state file that does not parse now (the previous
// contents stay in force), or nil.
func (s *State) Err() error { return errors.Join(s.clusters.Err(), s.tokens.Err(), s.keys.Err()) }

// edit changes one state file: fn gets the file's current contents and
// returns the new ones.
func (s *State) edit(ctx context.Context, name string, fn func(cur []byte) ([]byte, error)) error {
	var err error
	if s.mirror != nil {
		err = s.mirror.Update(ctx, name, fn)
		if err != nil && !errors.Is(err, errUnchanged) {
			err = fmt.Errorf("shared state Secret %s (key %s): %w", ha.StateSecret, name, err)
		}
	} else {
		err = s.editFile(name, fn)
	}
	if err == nil {
		switch name {
		case clustersFile:
			_ = s.clusters.Reload()
		case tokensFile:
			_ = s.tokens.Reload()
		case sessionKeysFile:
			_ = s.keys.Reload()
		}
	}
	return err
}

// editFile is edit for a single stub: read, change and atomically replace
// the file under an exclusive lock, so that two commands run at once both
// land.
func (s *State) editFile(name string, fn func(cur []byte) ([]byte, error)) error {
	return s.locked(func() error {
		cur, err := os.ReadFile(s.path(name))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		next, err := fn(cur)
		if err != nil {
			return err
		}
		return statefile.WriteAtomic(s.path(name), next, 0o600)
	})
}

// locked runs fn holding the state directory's exclusive lock (.lock), which
// serialises every writer of a single stub's state: commands, the stub, and
// goroutines of one process alike (each call opens the lock file anew, and
// flock locks belong to the open file).
func (s *State) locked(fn func() error) error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("stateDir: %q: %w", s.dir, err)
	}
	lock, err := os.OpenFile(s.path(".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("stateDir: %q: %w", s.dir, err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN) //nolint:errcheck // Close releases it anyway
	return fn()
}

// editDoc edits state file name of kind: the current contents must parse
// (check), then fn changes the decoded document, which is encoded back.
func editDoc[D any, P interface {
	*D
	header
}](ctx context.Context, s *State, name, kind string, check func([]byte) error, fn func(doc P) error) error {
	return s.edit(ctx, name, func(cur []byte) ([]byte, error) {
		if err := check(cur); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		doc := P(new(D))
		if err := decodeDoc(cur, kind, doc); err != nil {
			return nil, err
		}
		if err := fn(doc); err != nil {
			return nil, err
		}
		return encodeDoc(kind, doc)
	})
}

// editClusters decodes, changes and encodes the clusters file.
func (s *State) editClusters(ctx context.Context, fn func(doc *clustersDoc) error) error {
	return editDoc(ctx, s, clustersFile, clustersKind, func(b []byte) error { _, err := parseClusters(b); return err }, fn)
}

// editTokens decodes, changes and encodes the token file.
func (s *State) editTokens(ctx context.Context, fn func(doc *tokensDoc) error) error {
	return editDoc(ctx, s, tokensFile, tokensKind, func(b []byte) error { _, err := parseTokens(b); return err }, fn)
}

// RegisterOptions are the choices of a new registration.
type RegisterOptions struct {
	Labels map[string]string
	// Expires, when set, is the join secret's end.
	Expires *time.Time
	// CallerAudience, when set, makes the cluster's agents verify callers
	// (Cluster.CallerAudience). ErrAudienceInUse if another cluster has it.
	CallerAudience string
}

// Register adds cluster id and returns its join secret (256 bits), which is
// stored nowhere. ErrClusterExists if id is registered already.
func (s *State) Register(ctx context.Context, id string, o RegisterOptions) (string, error) {
	if !tunnel.ValidClusterID(id) {
		return "", fmt.Errorf("%q: %w", id, ErrInvalidClusterID)
	}
	for k, v := range o.Labels {
		if errs := append(validation.IsQualifiedName(k), validation.IsValidLabelValue(v)...); len(errs) > 0 {
			return "", fmt.Errorf("label %q=%q: %s: %w", k, v, strings.Join(errs, "; "), ErrInvalidLabel)
		}
	}
	secret, sum := mint(joinSecretPrefix)
	err := s.editClusters(ctx, func(doc *clustersDoc) error {
		if slices.ContainsFunc(doc.Clusters, func(c Cluster) bool { return c.ID == id }) {
			return fmt.Errorf("%q: %w", id, ErrClusterExists)
		}
		if i := slices.IndexFunc(doc.Clusters, func(c Cluster) bool { return o.CallerAudience != "" && c.CallerAudience == o.CallerAudience }); i >= 0 {
			return fmt.Errorf("%q (cluster %q): %w", o.CallerAudience, doc.Clusters[i].ID, ErrAudienceInUse)
		}
		if i := slices.IndexFunc(doc.RetiredCallerAudiences, func(r RetiredAudience) bool { return r.Audience == o.CallerAudience }); o.CallerAudience != "" && i >= 0 {
			return fmt.Errorf("%q (cluster %q): %w", o.CallerAudience, doc.RetiredCallerAudiences[i].Cluster, ErrAudienceRetired)
		}
		doc.Clusters = append(doc.Clusters, Cluster{ID: id, SecretSHA256: sum, SecretExpires: o.Expires, Labels: o.Labels,
			Registered: s.now().UTC().Truncate(time.Second), CallerAudience: o.CallerAudience})
		return nil
	})
	if err != nil {
		return "", err
	}
	return secret, nil
}

// RotateOptions are the choices of a join secret rotation.
type RotateOptions struct {
	// Disconnect also ends the sessions the old secret opened (a secret
	// that leaked); without it they stay up while agents get the new one.
	Disconnect bool
	// Expires, when set, is the new secret's end.
	Expires *time.Time
}

// Rotate issues a new join secret for cluster id and returns it; labels and
// registration time stay. ErrClusterNotFound if id is not registered.
func (s *State) Rotate(ctx context.Context, id string, o RotateOptions) (string, error) {
	secret, sum := mint(joinSecretPrefix)
	err := s.editClusters(ctx, func(doc *clustersDoc) error {
		i := slices.IndexFunc(doc.Clusters, func(c Cluster) bool { return c.ID == id })
		if i < 0 {
			return fmt.Errorf("%q: %w", id, ErrClusterNotFound)
		}
		c := &doc.Clusters[i]
		c.PreviousSecretSHA256 = c.SecretSHA256
		if o.Disconnect {
			c.PreviousSecretSHA256 = ""
		}
		now := s.now().UTC().Truncate(time.Second)
		c.SecretSHA256, c.SecretExpires, c.SecretRotated = sum, o.Expires, &now
		return nil
	})
	if err != nil {
		return "", err
	}
	return secret, nil
}

// Unregister removes cluster id: its join secret stops working and the
// stubs close its agents' sessions within tunnel.SessionCheckInterval. Its
// caller audience, if any, is retired: tokens issued for it are refused
// for every cluster, and no cluster may take it again.
// ErrClusterNotFound if id is not registered.
func (s *State) Unregister(ctx context.Context, id string) error {
	return s.editClusters(ctx, func(doc *clustersDoc) error {
		i := slices.IndexFunc(doc.Clusters, func(c Cluster) bool { return c.ID == id })
		if i < 0 {
			return fmt.Errorf("%q: %w", id, ErrClusterNotFound)
		}
		if aud := doc.Clusters[i].CallerAudience; aud != "" {
			// Tokens issued for it stay bound to it: refused everywhere.
			doc.RetiredCallerAudiences = append(doc.RetiredCallerAudiences,
				RetiredAudience{Audience: aud, Cluster: id, Retired: s.now().UTC().Truncate(time.Second)})
		}
		doc.Clusters = slices.Delete(doc.Clusters, i, i+1)
		return nil
	})
}

// TokenRequest describes a static token to mint.
type TokenRequest struct {
	User   string
	Groups []string
	// Expires, when set, is the token's end (expired tokens are refused,
	// and the leader prunes them).
	Expires     *time.Time
	Description string
}

// AddToken mints a static token (256 bits) for r.User, stores its hash and
// returns the token, which is stored nowhere. A user or group in the
// reserved "system:" space is refused.
func (s *State) AddToken(ctx context.Context, r TokenRequest) (string, error) {
	if err := authn.ValidateIdentity(r.User, r.Groups); err != nil {
		return "", err
	}
	token, sum := mint(userTokenPrefix)
	err := s.editTokens(ctx, func(doc *tokensDoc) error {
		doc.Tokens = append(doc.Tokens, Token{User: r.User, Groups: r.Groups, SHA256: sum, Expires: r.Expires, Description: r.Description})
		return nil
	})
	if err != nil {
		return "", err
	}
	return token, nil
}

// RevokeTokens removes every static token of user and returns how many it
// removed (0 and nothing written if user has none). Requests with them are
// refused at once; their open streams end within the stub's recheck
// interval (proxy/recheck.go).
func (s *State) RevokeTokens(ctx context.Context, user string) (int, error) {
	n := 0
	err := s.editTokens(ctx, func(doc *tokensDoc) error {
		before := len(doc.Tokens)
		doc.Tokens = slices.DeleteFunc(doc.Tokens, func(t Token) bool { return t.User == user })
		if n = before - len(doc.Tokens); n == 0 {
			return errUnchanged
		}
		return nil
	})
	if errors.Is(err, errUnchanged) {
		return 0, nil
	}
	return n, err
}

// PruneTokens removes tokens that expired before now (they are refused
// anyway; this keeps the list from growing) and returns how many it
// removed. Nothing is written when none expired.
func (s *State) PruneTokens(ctx context.Context, now time.Time) (int, error) {
	n := 0
	err := s.editTokens(ctx, func(doc *tokensDoc) error {
		kept := doc.Tokens[:0]
		for _, t := range doc.Tokens {
			if t.Expires == nil || t.Expires.After(now) {
				kept = append(kept, t)
			}
		}
		n = len(doc.Tokens) - len(kept)
		if n == 0 {
			return errUnchanged
		}
		doc.Tokens = kept
		return nil
	})
	if errors.Is(err, errUnchanged) {
		return 0, nil
	}
	return n, err
}

// mint returns a new random secret (256 bits, base64url after prefix) and
// its hex SHA-256.
func mint(prefix string) (secret, sum string) {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	secret = prefix + base64.RawURLEncoding.EncodeToString(b)
	h := sha256.Sum256([]byte(secret))
	return secret, hex.EncodeToString(h[:])
}

// Cluster returns registered cluster id.
func (s *State) Cluster(id string) (Cluster, bool) {
	c, ok := s.clusterMap(false)[id]
	if !ok {
		c, ok = s.clusterMap(true)[id] // registered a moment ago?
	}
	return c, ok
}

// Clusters lists the registered clusters by ID.
func (s *State) Clusters() []Cluster {
	m := s.clusterMap(false)
	out := make([]Cluster, 0, len(m))
	for _, c := range m {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// AuthenticateAgent implements tunnel.AgentAuthenticator: secret must be
// cluster's current join secret, not expired.
func (s *State) AuthenticateAgent(cluster, secret string) error {
	c, ok := s.Cluster(cluster)
	if !ok {
		return tunnel.ErrUnknownCluster
	}
	if !sameHash(c.SecretSHA256, sha256.Sum256([]byte(secret))) {
		return tunnel.ErrBadSecret
	}
	if c.SecretExpires != nil && !s.now().Before(*c.SecretExpires) {
		return fmt.Errorf("%w at %s; `stub register %s --rotate` issues a new one",
			tunnel.ErrSecretExpired, c.SecretExpires.UTC().Format(time.RFC3339), cluster)
	}
	return nil
}

// CheckSession implements tunnel.SessionChecker: a session may stay while
// the secret it presented is the cluster's current one (not expired) or
// the one before the last rotation.
func (s *State) CheckSession(cluster string, secretSHA256 [sha256.Size]byte) error {
	c, ok := s.clusterMap(false)[cluster]
	if !ok {
		return tunnel.ErrUnknownCluster
	}
	switch {
	case sameHash(c.SecretSHA256, secretSHA256):
		if c.SecretExpires != nil && !s.now().Before(*c.SecretExpires) {
			return tunnel.ErrSecretExpired
		}
		return nil
	case c.PreviousSecretSHA256 != "" && sameHash(c.PreviousSecretSHA256, secretSHA256):
		return nil
	}
	return tunnel.ErrBadSecret
}

func sameHash(hexSum string, sum [sha256.Size]byte) bool {
	want, _ := hex.DecodeString(hexSum)
	return subtle.ConstantTimeCompare(want, sum[:]) == 1
}

// AuthenticateToken implements authn.StaticTokens.
func (s *State) AuthenticateToken(token string) (*authn.User, error) {
	u, err := authn.MatchToken(s.tokenList(false), token, s.now())
	if err != nil {
		u, err = authn.MatchToken(s.tokenList(true), token, s.now()) // minted a moment ago?
	}
	return u, err
}

// Registry is the state as proxy.ClusterRegistry: what the stub hop needs
// to know of a cluster (that it is registered, and its labels for policy).
func (s *State) Registry() proxy.ClusterRegistry { return registry{s} }

type registry struct{ s *State }

func (c Cluster) forProxy() proxy.Cluster {
	return proxy.Cluster{ID: c.ID, Labels: c.Labels, CallerAudience: c.CallerAudience}
}

func (r registry) Cluster(id string) (proxy.Cluster, bool) {
	c, ok := r.s.Cluster(id)
	return c.forProxy(), ok
}

func (r registry) Clusters() []proxy.Cluster {
	list := r.s.Clusters()
	out := make([]proxy.Cluster, len(list))
	for i, c := range list {
		out[i] = c.forProxy()
	}
	return out
}

// ByCallerAudience finds the cluster whose caller audience is aud (a scan:
// only JWT callers ask, once per audience of their token).
func (r registry) ByCallerAudience(aud string) (proxy.Cluster, bool) {
	set := r.s.clusterSet(false)
	for _, c := range set.byID {
		if c.CallerAudience != "" && c.CallerAudience == aud {
			return c.forProxy(), true
		}
	}
	if ra, ok := set.retired[aud]; ok {
		return proxy.Cluster{ID: ra.Cluster, CallerAudience: aud, Unregistered: true}, true
	}
	return proxy.Cluster{}, false
}

// clusterSet is the parsed clusters file.
type clusterSet struct {
	byID    map[string]Cluster
	retired map[string]RetiredAudience // by audience
}

func parseClusters(data []byte) (clusterSet, error) {
	var doc clustersDoc
	if err := decodeDoc(data, clustersKind, &doc); err != nil {
		return clusterSet{}, err
	}
	out := clusterSet{byID: make(map[string]Cluster, len(doc.Clusters)), retired: map[string]RetiredAudience{}}
	auds := map[string]string{} // caller audience → cluster
	for i, r := range doc.RetiredCallerAudiences {
		if r.Audience == "" {
			return clusterSet{}, fmt.Errorf("retiredCallerAudiences[%d].audience: empty", i)
		}
		out.retired[r.Audience], auds[r.Audience] = r, r.Cluster+" (unregistered)"
	}
	for i, c := range doc.Clusters {
		if !tunnel.ValidClusterID(c.ID) {
			return clusterSet{}, fmt.Errorf("clusters[%d].id %q: must be a DNS label", i, c.ID)
		}
		if h, err := hex.DecodeString(c.SecretSHA256); err != nil || len(h) != sha256.Size {
			return clusterSet{}, fmt.Errorf("clusters[%d].secretSHA256: want 64 hex digits", i)
		}
		if h, err := hex.DecodeString(c.PreviousSecretSHA256); c.PreviousSecretSHA256 != "" && (err != nil || len(h) != sha256.Size) {
			return clusterSet{}, fmt.Errorf("clusters[%d].previousSecretSHA256: want 64 hex digits or nothing", i)
		}
		if _, dup := out.byID[c.ID]; dup {
			return clusterSet{}, fmt.Errorf("clusters[%d].id %q: registered twice", i, c.ID)
		}
		if c.CallerAudience != "" {
			if other, dup := auds[c.CallerAudience]; dup {
				return clusterSet{}, fmt.Errorf("clusters[%d].callerAudience %q: also cluster %q's; a token bound to one would be accepted for both", i, c.CallerAudience, other)
			}
			auds[c.CallerAudience] = c.ID
		}
		out.byID[c.ID] = c
	}
	return out, nil
}

func parseTokens(data []byte) ([]authn.StaticToken, error) {
	var doc tokensDoc
	if err := decodeDoc(data, tokensKind, &doc); err != nil {
		return nil, err
	}
	out := make([]authn.StaticToken, 0, len(doc.Tokens))
	for i, t := range doc.Tokens {
		if err := authn.ValidateIdentity(t.User, t.Groups); err != nil {
			return nil, fmt.Errorf("tokens[%d]: %w", i, err)
		}
		h, err := hex.DecodeString(t.SHA256)
		if err != nil || len(h) != sha256.Size {
			return nil, fmt.Errorf("tokens[%d].sha256: want 64 hex digits (the SHA-256 of the token), got %q", i, t.SHA256)
		}
		st := authn.StaticToken{User: authn.User{Name: t.User, Groups: t.Groups}, Expires: t.Expires}
		copy(st.SHA256[:], h)
		out = append(out, st)
	}
	return out, nil
}

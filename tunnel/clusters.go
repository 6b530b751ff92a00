package tunnel

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/keyhole-dev/keyhole/internal/statefile"
)

// ClustersFile is the stub's list of registered clusters: for each, the
// SHA-256 of its join secret and its labels. The secret itself is shown once,
// at registration, and never stored. The file is re-read when it changes, so
// `stub register` takes effect on a running stub.
type ClustersFile struct {
	file *statefile.File[map[string]ClusterEntry]
}

// ClusterEntry is one registered cluster.
type ClusterEntry struct {
	ID           string `json:"id"`
	SecretSHA256 string `json:"secretSHA256"`
	// SecretExpires, when set, ends the join secret: handshakes with it are
	// refused afterwards and sessions it opened are closed.
	SecretExpires *time.Time `json:"secretExpires,omitempty"`
	// PreviousSecretSHA256 is the secret before the last rotation: no new
	// handshake may use it, but sessions it opened stay up (so a rotation
	// breaks nothing while agents get the new secret). Empty after
	// `register --rotate --disconnect`: those sessions are closed.
	PreviousSecretSHA256 string            `json:"previousSecretSHA256,omitempty"`
	Labels               map[string]string `json:"labels,omitempty"`
	Registered           time.Time         `json:"registered"`
}

type clustersDoc struct {
	APIVersion string         `json:"apiVersion"`
	Kind       string         `json:"kind"`
	Clusters   []ClusterEntry `json:"clusters"`
}

const (
	clustersAPIVersion = "keyhole.dev/v1alpha1"
	clustersKind       = "Clusters"
	secretPrefix       = "khj_"
)

func parseClusters(data []byte) (map[string]ClusterEntry, error) {
	out := map[string]ClusterEntry{}
	if len(data) == 0 {
		return out, nil
	}
	var doc clustersDoc
	if err := yaml.UnmarshalStrict(data, &doc); err != nil {
		return nil, err
	}
	if doc.APIVersion != clustersAPIVersion || doc.Kind != clustersKind {
		return nil, fmt.Errorf("apiVersion/kind %q/%q: want %s/%s", doc.APIVersion, doc.Kind, clustersAPIVersion, clustersKind)
	}
	for i, c := range doc.Clusters {
		if !ValidClusterID(c.ID) {
			return nil, fmt.Errorf("clusters[%d].id %q: must be a DNS label", i, c.ID)
		}
		if h, err := hex.DecodeString(c.SecretSHA256); err != nil || len(h) != sha256.Size {
			return nil, fmt.Errorf("clusters[%d].secretSHA256: want 64 hex digits", i)
		}
		if h, err := hex.DecodeString(c.PreviousSecretSHA256); c.PreviousSecretSHA256 != "" && (err != nil || len(h) != sha256.Size) {
			return nil, fmt.Errorf("clusters[%d].previousSecretSHA256: want 64 hex digits or nothing", i)
		}
		if _, dup := out[c.ID]; dup {
			return nil, fmt.Errorf("clusters[%d].id %q: registered twice", i, c.ID)
		}
		out[c.ID] = c
	}
	return out, nil
}

// OpenClustersFile loads path; a missing file means no clusters yet.
func OpenClustersFile(path string) (*ClustersFile, error) {
	f, err := statefile.Open(path, parseClusters)
	if err != nil {
		return nil, fmt.Errorf("clusters file: %w", err)
	}
	return &ClustersFile{file: f}, nil
}

// Get returns the registered cluster id.
func (c *ClustersFile) Get(id string) (ClusterEntry, bool) {
	e, ok := c.file.Get()[id]
	if !ok {
		e, ok = c.file.Fresh()[id] // registered a moment ago?
	}
	return e, ok
}

// List returns every registered cluster.
func (c *ClustersFile) List() []ClusterEntry {
	m := c.file.Get()
	out := make([]ClusterEntry, 0, len(m))
	for _, e := range m {
		out = append(out, e)
	}
	return out
}

// AuthenticateAgent implements Authenticator.
func (c *ClustersFile) AuthenticateAgent(cluster, secret string) error {
	e, ok := c.Get(cluster)
	if !ok {
		return ErrUnknownCluster
	}
	got := sha256.Sum256([]byte(secret))
	if !sameHash(e.SecretSHA256, got) {
		return ErrBadSecret
	}
	if e.SecretExpires != nil && !time.Now().Before(*e.SecretExpires) {
		return fmt.Errorf("%w at %s", ErrSecretExpired, e.SecretExpires.UTC().Format(time.RFC3339))
	}
	return nil
}

// CheckSession implements SessionChecker: a session may stay while the
// secret it presented is the cluster's current one (not expired) or the one
// before the last rotation.
func (c *ClustersFile) CheckSession(cluster string, secretSHA256 [sha256.Size]byte) error {
	e, ok := c.file.Get()[cluster]
	if !ok {
		return ErrUnknownCluster
	}
	switch {
	case sameHash(e.SecretSHA256, secretSHA256):
		if e.SecretExpires != nil && !time.Now().Before(*e.SecretExpires) {
			return ErrSecretExpired
		}
		return nil
	case e.PreviousSecretSHA256 != "" && sameHash(e.PreviousSecretSHA256, secretSHA256):
		return nil
	}
	return ErrBadSecret
}

func sameHash(hexSum string, sum [sha256.Size]byte) bool {
	want, _ := hex.DecodeString(hexSum)
	return subtle.ConstantTimeCompare(want, sum[:]) == 1
}

// Unregister removes cluster id from the file at path; its agents' sessions
// are closed by the stubs within SessionCheckInterval.
func Unregister(path, id string) error {
	doc, err := readClustersDoc(path)
	if err != nil {
		return err
	}
	n := len(doc.Clusters)
	doc.Clusters = slices.DeleteFunc(doc.Clusters, func(e ClusterEntry) bool { return e.ID == id })
	if len(doc.Clusters) == n {
		return fmt.Errorf("cluster %q is not registered", id)
	}
	return writeClustersDoc(path, doc)
}

func readClustersDoc(path string) (clustersDoc, error) {
	doc := clustersDoc{APIVersion: clustersAPIVersion, Kind: clustersKind}
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if _, err := parseClusters(data); err != nil {
			return doc, fmt.Errorf("clusters file %s: %w", path, err)
		}
		_ = yaml.Unmarshal(data, &doc)
	case !errors.Is(err, os.ErrNotExist):
		return doc, err
	}
	return doc, nil
}

func writeClustersDoc(path string, doc clustersDoc) error {
	out, err := yaml.Marshal(doc)
	if err != nil {
		return err
	}
	return statefile.WriteAtomic(path, out, 0o600)
}

// RegisterOptions are the choices of `stub register`.
type RegisterOptions struct {
	Labels map[string]string
	// Rotate issues a new secret for a registered cluster.
	Rotate bool
	// Disconnect (with Rotate) also ends the sessions the old secret
	// opened, for a secret that leaked.
	Disconnect bool
	// Expires, when set, is the secret's end.
	Expires *time.Time
}

// Register adds cluster id (or, with Rotate, replaces its secret) in the
// file at path and returns the new join secret.
func Register(path, id string, o RegisterOptions) (string, error) {
	if !ValidClusterID(id) {
		return "", fmt.Errorf("cluster ID %q must be a DNS label: lower-case letters, digits and '-', at most 63", id)
	}
	if o.Disconnect && !o.Rotate {
		return "", errors.New("--disconnect goes with --rotate")
	}
	doc, err := readClustersDoc(path)
	if err != nil {
		return "", err
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	secret := secretPrefix + base64.RawURLEncoding.EncodeToString(b)
	sum := sha256.Sum256([]byte(secret))
	entry := ClusterEntry{ID: id, SecretSHA256: hex.EncodeToString(sum[:]), SecretExpires: o.Expires, Labels: o.Labels,
		Registered: time.Now().UTC().Truncate(time.Second)}
	found := false
	for i := range doc.Clusters {
		if doc.Clusters[i].ID == id {
			if !o.Rotate {
				return "", fmt.Errorf("cluster %q is already registered (use --rotate to issue a new join secret)", id)
			}
			entry.Labels, entry.Registered = doc.Clusters[i].Labels, doc.Clusters[i].Registered
			if !o.Disconnect {
				entry.PreviousSecretSHA256 = doc.Clusters[i].SecretSHA256
			}
			doc.Clusters[i] = entry
			found = true
		}
	}
	if !found {
		if o.Rotate {
			return "", fmt.Errorf("cluster %q is not registered: register it without --rotate", id)
		}
		doc.Clusters = append(doc.Clusters, entry)
	}
	return secret, writeClustersDoc(path, doc)
}

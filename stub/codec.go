package stub

import (
	"fmt"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/keyhole-dev/keyhole/web"
)

// The state files share one versioned shape:
//
//	apiVersion: keyhole.dev/v1alpha1
//	kind: Clusters        # or StaticTokens
//	clusters: [...]       # or tokens: [...]
//
// decodeDoc and encodeDoc are its one codec. Decoding is strict (an
// unknown key is an error, so a file written by a newer stub is refused
// rather than half understood); empty input is an empty document, so a
// stub starts before anything was registered.
const stateAPIVersion = "keyhole.dev/v1alpha1"

// Kinds of the state files, and their file names in the state directory
// (which are also their keys in the hub's shared state Secret).
const (
	clustersKind    = "Clusters"
	tokensKind      = "StaticTokens"
	sessionKeysKind = "SessionKeys"
	clustersFile    = "clusters.yaml"
	tokensFile      = "tokens.yaml"
	sessionKeysFile = "session-keys.yaml"
)

type clustersDoc struct {
	APIVersion string    `json:"apiVersion"`
	Kind       string    `json:"kind"`
	Clusters   []Cluster `json:"clusters"`
	// RetiredCallerAudiences are the caller audiences of clusters that were
	// unregistered: tokens issued for them stay bound to nothing, so what
	// their agents saw is refused everywhere, and no cluster may take one
	// again.
	RetiredCallerAudiences []RetiredAudience `json:"retiredCallerAudiences,omitempty"`
}

// RetiredAudience is the caller audience of a cluster that was unregistered.
type RetiredAudience struct {
	Audience string    `json:"audience"`
	Cluster  string    `json:"cluster"`
	Retired  time.Time `json:"retired"`
}

type tokensDoc struct {
	APIVersion string  `json:"apiVersion"`
	Kind       string  `json:"kind"`
	Tokens     []Token `json:"tokens"`
}

// sessionKeysDoc holds the sealing keys of browser session cookies and
// records (web.Key: id, created, activeFrom, secret as base64).
type sessionKeysDoc struct {
	APIVersion string    `json:"apiVersion"`
	Kind       string    `json:"kind"`
	Keys       []web.Key `json:"keys"`
}

// header is implemented by the document types; it lets one codec check
// and stamp apiVersion and kind.
type header interface {
	head() (apiVersion, kind *string)
}

func (d *clustersDoc) head() (*string, *string)    { return &d.APIVersion, &d.Kind }
func (d *tokensDoc) head() (*string, *string)      { return &d.APIVersion, &d.Kind }
func (d *sessionKeysDoc) head() (*string, *string) { return &d.APIVersion, &d.Kind }

// decodeDoc decodes data into doc, which must come back with kind.
func decodeDoc(data []byte, kind string, doc header) error {
	av, k := doc.head()
	if len(data) == 0 {
		*av, *k = stateAPIVersion, kind
		return nil
	}
	if err := yaml.UnmarshalStrict(data, doc); err != nil {
		return err
	}
	if *av != stateAPIVersion || *k != kind {
		return fmt.Errorf("apiVersion/kind %q/%q: want %s/%s", *av, *k, stateAPIVersion, kind)
	}
	return nil
}

// encodeDoc stamps apiVersion and kind and encodes doc.
func encodeDoc(kind string, doc header) ([]byte, error) {
	av, k := doc.head()
	*av, *k = stateAPIVersion, kind
	return yaml.Marshal(doc)
}

package main

import (
	"bytes"
	"encoding/json"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// emptyConfig is OCI 1.1's empty descriptor content, the config of an
// artifact that has none.
var emptyConfig = []byte("{}")

const emptyMediaType types.MediaType = "application/vnd.oci.empty.v1+json"

// artifact is an OCI 1.1 artifact manifest (an image manifest with an
// artifactType, the empty config and one blob) that refers to subject: the
// form `oras attach` and `cosign attach sbom --type spdx` produce, found by
// registries' referrers API (GET /v2/<name>/referrers/<digest>).
// go-containerregistry has no constructor that sets artifactType, so the
// manifest is written here and partial.CompressedToImage completes it.
type artifact struct {
	manifest []byte
	blob     v1.Layer
}

// newArtifact makes the artifact of one blob of mediaType about subject,
// with annotations on its manifest.
func newArtifact(blob []byte, mediaType types.MediaType, subject v1.Descriptor, annotations map[string]string) (v1.Image, error) {
	l := static.NewLayer(blob, mediaType)
	d, err := partial.Descriptor(l)
	if err != nil {
		return nil, err
	}
	cfg, _, err := v1.SHA256(bytes.NewReader(emptyConfig))
	if err != nil {
		return nil, err
	}
	subject = v1.Descriptor{MediaType: subject.MediaType, Size: subject.Size, Digest: subject.Digest}
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  string(mediaType),
		Config:        v1.Descriptor{MediaType: emptyMediaType, Size: int64(len(emptyConfig)), Digest: cfg, Data: emptyConfig},
		Layers:        []v1.Descriptor{{MediaType: mediaType, Size: d.Size, Digest: d.Digest}},
		Annotations:   annotations,
		Subject:       &subject,
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return partial.CompressedToImage(&artifact{manifest: raw, blob: l})
}

func (a *artifact) RawConfigFile() ([]byte, error)      { return emptyConfig, nil }
func (a *artifact) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
func (a *artifact) RawManifest() ([]byte, error)        { return a.manifest, nil }

// LayerByDigest returns the artifact's blob.
func (a *artifact) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if d, err := a.blob.Digest(); err == nil && d == h {
		return a.blob, nil
	}
	return nil, fmt.Errorf("artifact: no blob %s", h)
}

package install

import (
	"bytes"
	"fmt"
	"strings"

	"sigs.k8s.io/yaml"
)

// AgentChartValues are the values of the agent's Helm chart
// (install/helm/keyhole-agent) that AgentHelmValues sets; the chart's
// values.yaml documents each.
type AgentChartValues struct {
	Cluster    string          `json:"cluster"`
	StubURL    string          `json:"stubURL"`
	JoinSecret string          `json:"joinSecret"`
	StubCA     string          `json:"stubCA,omitempty"`
	Image      AgentChartImage `json:"image"`
	Replicas   *int32          `json:"replicas,omitempty"`
}

// AgentChartImage is the chart's image: a repository and a tag or digest.
type AgentChartImage struct {
	Repository string `json:"repository"`
	Tag        string `json:"tag,omitempty"`
	Digest     string `json:"digest,omitempty"`
}

// AgentHelmValues returns a values file for the agent's Helm chart that
// installs what AgentManifest(p) does: the same cluster, stub URL, join
// secret, stub CA, image and replicas, so that the chart renders
// AgentManifest's objects but the Namespace (Helm's --create-namespace
// makes it; p.Namespace goes into the helm command of the file's header
// comment). Like the manifest it holds the join secret: keep it as a Secret.
func AgentHelmValues(p AgentParams) ([]byte, error) {
	var missing []string
	for _, f := range []struct{ name, v string }{{"a cluster ID", p.Cluster}, {"the stub URL", p.StubURL}, {"the join secret", p.JoinSecret}, {"an image", p.Image}} {
		if f.v == "" {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("install: the agent's Helm values need %s", strings.Join(missing, ", "))
	}
	if p.Namespace == "" {
		p.Namespace = "keyhole-system"
	}
	img, err := splitImage(p.Image)
	if err != nil {
		return nil, err
	}
	v := AgentChartValues{Cluster: p.Cluster, StubURL: p.StubURL, JoinSecret: p.JoinSecret, StubCA: string(p.StubCAPEM), Image: img}
	if p.Replicas != 0 {
		v.Replicas = &p.Replicas
	}
	out, err := yaml.Marshal(v)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "# Values of the keyhole-agent Helm chart for cluster %q. They hold its join\n", p.Cluster)
	fmt.Fprintf(&buf, "# secret: keep this file as you would a Secret, or delete it after the install.\n")
	fmt.Fprintf(&buf, "#\n#   helm install keyhole-agent install/helm/keyhole-agent -n %s --create-namespace -f THIS-FILE\n", p.Namespace)
	buf.Write(out)
	return buf.Bytes(), nil
}

// splitImage splits an image reference into the chart's repository and tag
// or digest: "reg:5000/a/b:v1" is reg:5000/a/b and v1, "a/b:v1@sha256:…"
// is a/b, v1 and the digest (the chart renders it back the same), and
// "a/b" is a/b:latest, as a container runtime reads it.
func splitImage(ref string) (AgentChartImage, error) {
	if repo, digest, ok := strings.Cut(ref, "@"); ok {
		if repo == "" || !strings.HasPrefix(digest, "sha256:") {
			return AgentChartImage{}, fmt.Errorf("install: image %q: want REPOSITORY@sha256:DIGEST", ref)
		}
		img := AgentChartImage{Repository: repo, Digest: digest}
		if i := strings.LastIndexByte(repo, ':'); i > strings.LastIndexByte(repo, '/') {
			img.Repository, img.Tag = repo[:i], repo[i+1:] // kept for the reader; the digest decides
		}
		return img, nil
	}
	repo, tag := ref, "latest"
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		repo, tag = ref[:i], ref[i+1:]
	}
	if repo == "" || tag == "" {
		return AgentChartImage{}, fmt.Errorf("install: image %q: want REPOSITORY[:TAG] or REPOSITORY@sha256:DIGEST", ref)
	}
	return AgentChartImage{Repository: repo, Tag: tag}, nil
}

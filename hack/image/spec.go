package main

// imageSpec is what one image holds and how it starts: the parts the
// Dockerfile states too (TestDockerfileEquivalent checks that both agree).
type imageSpec struct {
	// Name is the image's name without registry ("keyhole-stub").
	Name string
	// Package is the main package built into it, relative to the module root.
	Package string
	// Binary is the path of that binary in the image.
	Binary string
	// Entrypoint and Cmd are the image config's; Cmd may be empty.
	Entrypoint []string
	Cmd        []string
	// Ports are the exposed ports ("8443/tcp").
	Ports []string
	// Title and Description become the org.opencontainers.image labels.
	Title, Description string
}

// nonroot is the numeric user and group of both images: Kubernetes can
// only verify runAsNonRoot for a numeric user.
const nonroot = "65532:65532"

// specs are Keyhole's two images.
var specs = []imageSpec{
	{
		Name:        "keyhole-stub",
		Package:     "./cmd/stub",
		Binary:      "/usr/local/bin/keyhole-stub",
		Entrypoint:  []string{"/usr/local/bin/keyhole-stub"},
		Cmd:         []string{"serve", "--config", "/etc/keyhole/stub.yaml"},
		Ports:       []string{"8443/tcp"},
		Title:       "Keyhole stub",
		Description: "Keyhole's public side: authenticates kubectl, browsers and CI, and forwards their Kubernetes API requests through agent tunnels.",
	},
	{
		Name:        "keyhole-agent",
		Package:     "./cmd/agent",
		Binary:      "/usr/local/bin/keyhole-agent",
		Entrypoint:  []string{"/usr/local/bin/keyhole-agent"},
		Title:       "Keyhole agent",
		Description: "Keyhole's agent: runs in a private cluster, dials out to the stub and serves its requests with impersonation.",
	},
}

// platforms are the architectures of every image (all linux).
var platforms = []string{"amd64", "arm64"}

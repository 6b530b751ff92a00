// Command image builds Keyhole's container images without Docker: the stub
// and the agent, each an OCI image index for linux/amd64 and linux/arm64,
// assembled from pinned parts with go-containerregistry and written as an
// OCI image layout, plus one docker-archive per platform for `podman load`
// and `kind load image-archive`.
//
//	hack/image.sh [--version V] [--platforms amd64,arm64] OUT_DIR
//
// What an image holds (the Dockerfile at the repository root describes the
// same images for people who build with Docker; TestDockerfileEquivalent
// keeps the two in step):
//
//   - a base layer in place of gcr.io/distroless/static:nonroot: the CA
//     bundle /etc/ssl/certs/ca-certificates.crt (the Mozilla roots of the Go
//     module golang.org/x/crypto/x509roots/fallback, pinned in go.mod and
//     checked against go.sum, so every machine with a Go module proxy gets
//     the same bytes, with no apt archive that drops old versions), /etc/passwd
//     and /etc/group with root, nobody and nonroot (65532), nonroot's home,
//     /tmp;
//   - a layer with the static binary (CGO_ENABLED=0, -trimpath,
//     -ldflags "-s -w -X main.version=V") at /usr/local/bin, the LICENSE
//     and the SBOM (/usr/share/doc/keyhole/sbom.spdx.json);
//   - the config: user 65532:65532, the entrypoint, command and port of the
//     Dockerfile, and the org.opencontainers.image.* labels.
//
// The SBOM (SPDX 2.3 JSON, from the binary's embedded Go build information
// and the CA bundle's module) is in the image, where it survives every copy
// and load, and is also attached to each platform's manifest as an OCI 1.1
// artifact in the image index (platform unknown/unknown, as BuildKit places
// its attestations, so runtimes never pick it), so that `crane push` of
// the layout uploads it with the image and registries list it as a
// referrer of that manifest.
//
// Reproducible: the same checkout, Go version and flags give the same
// digests. Every timestamp is SOURCE_DATE_EPOCH (default: the last commit's
// time), tar entries are sorted with fixed owners and modes, gzip runs at a
// fixed level with an empty header, and the Go build is -trimpath with a
// fixed environment.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	modulePath = "github.com/keyhole-dev/keyhole"
	sourceURL  = "https://github.com/keyhole-dev/keyhole"
	license    = "Apache-2.0"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); errors.Is(err, flag.ErrHelp) {
		return
	} else if err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

// options are the inputs of a build besides the checkout.
type options struct {
	Root      string    // the Keyhole checkout
	Out       string    // output directory
	Version   string    // main.version and the image tag
	Repo      string    // registry and path in front of the image names
	Revision  string    // the org.opencontainers.image.revision label
	Created   time.Time // every timestamp
	Platforms []string  // GOARCH values
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: hack/image.sh [flags] OUT_DIR\n\nBuilds the keyhole-stub and keyhole-agent images (OCI layouts and docker-archives) into OUT_DIR.\n\nFlags:")
		fs.PrintDefaults()
	}
	version := fs.String("version", "dev", "the version: main.version of the binaries, the image tag and the version label")
	repo := fs.String("repo", "ghcr.io/keyhole-dev", "registry and path the archives' image names start with (what `stub register` and the install manifests name)")
	root := fs.String("root", "", "the Keyhole checkout (default: the module root above the working directory)")
	plats := fs.String("platforms", strings.Join(platforms, ","), "comma-separated linux architectures (GOARCH values)")
	epoch := fs.String("source-date-epoch", os.Getenv("SOURCE_DATE_EPOCH"), "seconds since 1970 for every timestamp (default: $SOURCE_DATE_EPOCH, else the last commit's time)")
	revision := fs.String("revision", "", "the revision label (default: git rev-parse HEAD)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errors.New("give one OUT_DIR, e.g. hack/image.sh out/images")
	}
	o := options{Out: fs.Arg(0), Version: *version, Repo: strings.TrimSuffix(*repo, "/"), Revision: *revision}
	var err error
	if o.Root, err = findRoot(*root); err != nil {
		return err
	}
	for _, p := range strings.Split(*plats, ",") {
		if p = strings.TrimSpace(p); p != "" {
			o.Platforms = append(o.Platforms, p)
		}
	}
	if len(o.Platforms) == 0 {
		return errors.New("--platforms is empty: give e.g. amd64,arm64")
	}
	if *epoch == "" {
		if *epoch, err = git(o.Root, "log", "-1", "--format=%ct"); err != nil {
			return fmt.Errorf("no --source-date-epoch or $SOURCE_DATE_EPOCH, and git cannot tell the last commit's time: %w", err)
		}
	}
	sec, err := strconv.ParseInt(*epoch, 10, 64)
	if err != nil || sec < 0 {
		return fmt.Errorf("source date epoch %q: want seconds since 1970, e.g. $(git log -1 --format=%%ct)", *epoch)
	}
	o.Created = time.Unix(sec, 0).UTC()
	if o.Revision == "" {
		if o.Revision, err = git(o.Root, "rev-parse", "HEAD"); err != nil {
			return fmt.Errorf("no --revision, and git rev-parse HEAD failed: %w", err)
		}
		if st, err := git(o.Root, "status", "--porcelain", "--untracked-files=no"); err == nil && st != "" {
			fmt.Fprintf(stderr, "image: WARNING: the checkout has uncommitted changes; the revision label %s does not describe them\n", o.Revision)
		}
	}
	sum, err := build(o, stderr)
	if err != nil {
		return err
	}
	b, _ := json.MarshalIndent(sum, "", "  ")
	if err := os.WriteFile(filepath.Join(o.Out, "images.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	for _, im := range sum {
		fmt.Fprintf(stdout, "%s  index %s\n", im.Name, im.Index)
		for _, p := range im.Platforms {
			fmt.Fprintf(stdout, "  linux/%-5s manifest %s  image ID %s  %.1f MiB compressed  %s\n",
				p.Arch, p.Manifest, p.Config, float64(p.CompressedBytes)/(1<<20), p.Archive)
		}
	}
	return nil
}

// summary describes one built image; images.json holds a list of them.
type summary struct {
	Name string `json:"name"`
	// Layout is the OCI layout directory, relative to OUT_DIR; Index the
	// digest of its image index.
	Layout    string            `json:"layout"`
	Index     string            `json:"index"`
	Platforms []platformSummary `json:"platforms"`
}

// platformSummary is one platform's image.
type platformSummary struct {
	Arch     string `json:"arch"`
	Manifest string `json:"manifest"`
	// Config is the config digest: the image ID podman and Docker show.
	Config string `json:"config"`
	// SBOM is the digest of the attached SBOM artifact's manifest.
	SBOM string `json:"sbom"`
	// CompressedBytes is config plus layers as stored in a registry;
	// UncompressedBytes the unpacked layers.
	CompressedBytes   int64 `json:"compressedBytes"`
	UncompressedBytes int64 `json:"uncompressedBytes"`
	// Archive is the docker-archive (relative to OUT_DIR) and Tag the
	// name it carries.
	Archive string `json:"archive"`
	Tag     string `json:"tag"`
}

// build builds every image of specs for every platform into o.Out.
func build(o options, log io.Writer) ([]summary, error) {
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, err
	}
	ca, caCount := caBundle()
	base, err := layer(baseEntries(ca), o.Created)
	if err != nil {
		return nil, err
	}
	caMod := moduleOf(caModule)
	if caMod == nil {
		return nil, fmt.Errorf("this program was built without %s (go run it from hack/image)", caModule)
	}
	lic, err := os.ReadFile(filepath.Join(o.Root, "LICENSE"))
	if err != nil {
		return nil, err
	}
	bins, err := os.MkdirTemp("", "keyhole-image-bin-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(bins)
	for _, arch := range o.Platforms {
		start := time.Now()
		if err := goBuild(o.Root, filepath.Join(bins, arch), arch, o.Version); err != nil {
			return nil, err
		}
		fmt.Fprintf(log, "image: go build linux/%s: %.0fs\n", arch, time.Since(start).Seconds())
	}

	var out []summary
	for _, s := range specs {
		sum := summary{Name: s.Name, Layout: s.Name}
		idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
		var adds []mutate.IndexAddendum
		for _, arch := range o.Platforms {
			bin, err := os.ReadFile(filepath.Join(bins, arch, binaryName(s.Package)))
			if err != nil {
				return nil, err
			}
			doc, err := sbom(sbomInput{Spec: s, Arch: arch, Version: o.Version, Revision: o.Revision, Created: o.Created, Binary: bin, CAModule: caMod, CACount: caCount})
			if err != nil {
				return nil, err
			}
			img, err := image(o, s, arch, base, bin, lic, doc, caCount, caMod.Version)
			if err != nil {
				return nil, fmt.Errorf("%s linux/%s: %w", s.Name, arch, err)
			}
			desc, err := partialDescriptor(img)
			if err != nil {
				return nil, err
			}
			att, err := newArtifact(doc, sbomMediaType, desc, map[string]string{
				"org.opencontainers.image.created":     o.Created.Format(time.RFC3339),
				"org.opencontainers.image.description": fmt.Sprintf("SPDX SBOM of %s linux/%s", s.Name, arch),
			})
			if err != nil {
				return nil, err
			}
			attDigest, _ := att.Digest()
			adds = append(adds,
				mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch, Variant: variant(arch)}}},
				mutate.IndexAddendum{Add: att, Descriptor: v1.Descriptor{
					ArtifactType: sbomMediaType,
					Platform:     &v1.Platform{OS: "unknown", Architecture: "unknown"},
					Annotations:  map[string]string{"vnd.docker.reference.digest": desc.Digest.String()},
				}})
			ps, err := describe(img, arch)
			if err != nil {
				return nil, err
			}
			ps.SBOM = attDigest.String()
			ps.Tag = fmt.Sprintf("%s/%s:%s", o.Repo, s.Name, o.Version)
			tag, err := name.NewTag(ps.Tag, name.StrictValidation)
			if err != nil {
				return nil, fmt.Errorf("image name %q: %w (check --repo and --version: a tag is [A-Za-z0-9_.-], up to 128 characters)", ps.Tag, err)
			}
			ps.Archive = fmt.Sprintf("%s-linux-%s.tar", s.Name, arch)
			if err := tarball.WriteToFile(filepath.Join(o.Out, ps.Archive), tag, img); err != nil {
				return nil, err
			}
			sum.Platforms = append(sum.Platforms, ps)
		}
		idx = mutate.AppendManifests(idx, adds...)
		idx = mutate.Annotations(idx, annotations(o, s)).(v1.ImageIndex)
		dir := filepath.Join(o.Out, s.Name)
		if err := os.RemoveAll(dir); err != nil {
			return nil, err
		}
		p, err := layout.Write(dir, empty.Index)
		if err != nil {
			return nil, err
		}
		if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{
			"org.opencontainers.image.ref.name": o.Version,
		})); err != nil {
			return nil, err
		}
		d, err := idx.Digest()
		if err != nil {
			return nil, err
		}
		sum.Index = d.String()
		out = append(out, sum)
	}
	return out, nil
}

// image assembles one platform's image of s.
func image(o options, s imageSpec, arch string, base v1.Layer, bin, lic, doc []byte, caCount int, caVersion string) (v1.Image, error) {
	app, err := layer([]entry{
		{Path: s.Binary, Mode: 0o755, Data: bin},
		{Path: "/usr/share/doc/keyhole/LICENSE", Mode: 0o644, Data: lic},
		{Path: sbomPath, Mode: 0o644, Data: doc},
	}, o.Created)
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	created := v1.Time{Time: o.Created}
	img, err = mutate.Append(img,
		mutate.Addendum{Layer: base, MediaType: types.OCILayer, History: v1.History{Created: created,
			CreatedBy: fmt.Sprintf("keyhole hack/image: base (CA bundle: %d roots of %s@%s; users root, nobody, nonroot 65532; /tmp)", caCount, caModule, caVersion),
			Comment:   "replaces gcr.io/distroless/static:nonroot"}},
		mutate.Addendum{Layer: app, MediaType: types.OCILayer, History: v1.History{Created: created,
			CreatedBy: fmt.Sprintf("keyhole hack/image: %s (CGO_ENABLED=0 GOOS=linux GOARCH=%s go build -trimpath -ldflags \"-s -w -X main.version=%s\" %s), LICENSE, SBOM", s.Binary, arch, o.Version, s.Package)}},
	)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Created, cf.OS, cf.Architecture, cf.Variant = created, "linux", arch, variant(arch)
	cf.Config = v1.Config{
		User:       nonroot,
		Entrypoint: s.Entrypoint,
		Cmd:        s.Cmd,
		Env: []string{
			"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
		},
		WorkingDir: "/",
		Labels:     annotations(o, s),
	}
	if len(s.Ports) > 0 {
		cf.Config.ExposedPorts = map[string]struct{}{}
		for _, p := range s.Ports {
			cf.Config.ExposedPorts[p] = struct{}{}
		}
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, err
	}
	return mutate.Annotations(img, annotations(o, s)).(v1.Image), nil
}

// variant is the platform variant of arch, as containerd and Docker
// normalize it (arm64 is v8).
func variant(arch string) string {
	if arch == "arm64" {
		return "v8"
	}
	return ""
}

// annotations are the org.opencontainers.image labels of s, also set as
// annotations on its manifests and index.
func annotations(o options, s imageSpec) map[string]string {
	return map[string]string{
		"org.opencontainers.image.source":      sourceURL,
		"org.opencontainers.image.url":         sourceURL,
		"org.opencontainers.image.version":     o.Version,
		"org.opencontainers.image.revision":    o.Revision,
		"org.opencontainers.image.created":     o.Created.Format(time.RFC3339),
		"org.opencontainers.image.licenses":    license,
		"org.opencontainers.image.title":       s.Title,
		"org.opencontainers.image.description": s.Description,
	}
}

// describe is the summary of one platform's image.
func describe(img v1.Image, arch string) (platformSummary, error) {
	ps := platformSummary{Arch: arch}
	d, err := img.Digest()
	if err != nil {
		return ps, err
	}
	c, err := img.ConfigName()
	if err != nil {
		return ps, err
	}
	m, err := img.Manifest()
	if err != nil {
		return ps, err
	}
	ps.Manifest, ps.Config, ps.CompressedBytes = d.String(), c.String(), m.Config.Size
	ls, err := img.Layers()
	if err != nil {
		return ps, err
	}
	for _, l := range ls {
		n, err := l.Size()
		if err != nil {
			return ps, err
		}
		ps.CompressedBytes += n
		rc, err := l.Uncompressed()
		if err != nil {
			return ps, err
		}
		u, err := io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return ps, err
		}
		ps.UncompressedBytes += u
	}
	return ps, nil
}

// partialDescriptor is img's descriptor (media type, size, digest).
func partialDescriptor(img v1.Image) (v1.Descriptor, error) {
	mt, err := img.MediaType()
	if err != nil {
		return v1.Descriptor{}, err
	}
	d, err := img.Digest()
	if err != nil {
		return v1.Descriptor{}, err
	}
	n, err := img.Size()
	if err != nil {
		return v1.Descriptor{}, err
	}
	return v1.Descriptor{MediaType: mt, Digest: d, Size: n}, nil
}

// moduleOf is the module path as this program was built with it.
func moduleOf(path string) *debug.Module {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return nil
	}
	for _, d := range bi.Deps {
		if d.Path == path {
			if d.Replace != nil {
				return d.Replace
			}
			return d
		}
	}
	return nil
}

// findRoot is dir, or the directory above the working directory whose
// go.mod is Keyhole's.
func findRoot(dir string) (string, error) {
	if dir != "" {
		return filepath.Abs(dir)
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && strings.HasPrefix(string(b), "module "+modulePath+"\n") {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no Keyhole checkout (go.mod of %s) above %s: give --root", modulePath, wd)
		}
	}
}

// git runs git in dir and returns its trimmed output.
func git(dir string, args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, ee.Stderr)
		}
		return "", fmt.Errorf("git %s: %w", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}

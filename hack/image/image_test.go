package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	cranecmd "github.com/google/go-containerregistry/cmd/crane/cmd"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/mod/modfile"
)

// TestReproducible builds both images for both platforms twice, into
// different directories, with this program as hack/image.sh runs it (a
// separate process: not slowed down by the race detector), and requires the
// same digests (and byte-identical index.json files), then checks what the
// images hold: owners and modes, a static binary, the labels, and the SBOM
// (in the image and attached), and that crane can push them.
func TestReproducible(t *testing.T) {
	root, err := findRoot("")
	if err != nil {
		t.Fatal(err)
	}
	o := options{Root: root, Version: "v0.0.0-repro", Repo: "ghcr.io/keyhole-dev", Revision: "0123456789abcdef0123456789abcdef01234567",
		Created: time.Unix(1767225600, 0).UTC(), Platforms: platforms}
	tool := filepath.Join(t.TempDir(), "image")
	if b, err := exec.Command("go", "build", "-o", tool, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	var sums [2][]summary
	var dirs [2]string
	for i := range 2 {
		dirs[i] = filepath.Join(t.TempDir(), "out") // a different path each time
		start := time.Now()
		cmd := exec.Command(tool, "--root", root, "--version", o.Version, "--revision", o.Revision,
			"--source-date-epoch", "1767225600", "--platforms", strings.Join(o.Platforms, ","), dirs[i])
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, b)
		}
		raw, err := os.ReadFile(filepath.Join(dirs[i], "images.json"))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, &sums[i]); err != nil {
			t.Fatal(err)
		}
		t.Logf("build %d into %s: %.0fs", i+1, dirs[i], time.Since(start).Seconds())
	}
	a, _ := json.MarshalIndent(sums[0], "", " ")
	b, _ := json.MarshalIndent(sums[1], "", " ")
	if !bytes.Equal(a, b) {
		t.Fatalf("two builds of the same checkout differ:\n%s\n---\n%s", a, b)
	}
	t.Logf("both builds:\n%s", a)
	for _, s := range sums[0] {
		x, _ := os.ReadFile(filepath.Join(dirs[0], s.Layout, "index.json"))
		y, _ := os.ReadFile(filepath.Join(dirs[1], s.Layout, "index.json"))
		if len(x) == 0 || !bytes.Equal(x, y) {
			t.Errorf("%s: index.json differs:\n%s\n---\n%s", s.Name, x, y)
		}
		if len(s.Platforms) != len(platforms) {
			t.Errorf("%s: %d platforms, want %d", s.Name, len(s.Platforms), len(platforms))
		}
	}
	checkImages(t, dirs[0], o, sums[0])
	t.Run("crane push of the layout", func(t *testing.T) { checkPush(t, dirs[0], o, sums[0]) })
}

// checkPush runs `crane push LAYOUT REF` (go-containerregistry's own
// command, at the version go.mod pins) against a registry on 127.0.0.1
// (go-containerregistry's, with the OCI referrers API), then checks that the
// registry holds the index by the digest the build reported and lists each
// platform's SBOM as a referrer of that platform's manifest.
func checkPush(t *testing.T, dir string, o options, sums []summary) {
	srv := httptest.NewServer(registry.New(registry.WithReferrersSupport(true), registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	for _, s := range sums {
		ref := host + "/keyhole-dev/" + s.Name + ":" + o.Version
		c := cranecmd.New("crane", "crane", nil)
		var out bytes.Buffer
		c.SetOut(&out)
		c.SetErr(&out)
		c.SetArgs([]string{"push", filepath.Join(dir, s.Layout), ref})
		if err := c.Execute(); err != nil {
			t.Fatalf("crane push %s %s: %v\n%s", s.Layout, ref, err, out.String())
		}
		r, err := name.ParseReference(ref)
		if err != nil {
			t.Fatal(err)
		}
		d, err := remote.Head(r)
		if err != nil {
			t.Fatal(err)
		}
		if d.Digest.String() != s.Index || d.MediaType != "application/vnd.oci.image.index.v1+json" {
			t.Errorf("%s: the registry has %s %s, the build reported index %s", ref, d.MediaType, d.Digest, s.Index)
		}
		for _, ps := range s.Platforms {
			refs, err := remote.Referrers(r.Context().Digest(ps.Manifest))
			if err != nil {
				t.Fatal(err)
			}
			m, _ := refs.IndexManifest()
			// (Not m.Manifests[0].ArtifactType: this test registry reports
			// config.mediaType there, ignoring the manifest's artifactType;
			// pkg/registry/manifest.go at v0.22.1. The manifest is read below.)
			if len(m.Manifests) != 1 || m.Manifests[0].Digest.String() != ps.SBOM {
				t.Errorf("%s linux/%s: referrers %+v, want the SBOM %s", s.Name, ps.Arch, m.Manifests, ps.SBOM)
				continue
			}
			got, err := remote.Get(r.Context().Digest(ps.SBOM))
			if err != nil {
				t.Fatal(err)
			}
			var am v1.Manifest
			if err := json.Unmarshal(got.Manifest, &am); err != nil {
				t.Fatal(err)
			}
			if am.ArtifactType != sbomMediaType || am.Subject == nil || am.Subject.Digest.String() != ps.Manifest {
				t.Errorf("%s linux/%s: the pushed SBOM manifest has artifactType %q, subject %+v", s.Name, ps.Arch, am.ArtifactType, am.Subject)
			}
		}
	}
}

// checkImages opens the layouts and archives of a build and checks them.
func checkImages(t *testing.T, dir string, o options, sums []summary) {
	gomod, err := os.ReadFile(filepath.Join(o.Root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	mf, err := modfile.Parse("go.mod", gomod, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range sums {
		spec := specs[i]
		p, err := layout.FromPath(filepath.Join(dir, s.Layout))
		if err != nil {
			t.Fatal(err)
		}
		top, err := p.ImageIndex()
		if err != nil {
			t.Fatal(err)
		}
		tm, _ := top.IndexManifest()
		if len(tm.Manifests) != 1 || tm.Manifests[0].Digest.String() != s.Index {
			t.Fatalf("%s: index.json should name exactly the image index %s: %+v", s.Name, s.Index, tm.Manifests)
		}
		idx, err := top.ImageIndex(tm.Manifests[0].Digest)
		if err != nil {
			t.Fatal(err)
		}
		im, _ := idx.IndexManifest()
		if im.Annotations["org.opencontainers.image.version"] != o.Version {
			t.Errorf("%s: index annotations %v", s.Name, im.Annotations)
		}
		for _, ps := range s.Platforms {
			h, _ := v1.NewHash(ps.Manifest)
			img, err := idx.Image(h)
			if err != nil {
				t.Fatal(err)
			}
			var found, sbomFound bool
			for _, d := range im.Manifests {
				if d.Digest == h && d.Platform != nil && d.Platform.OS == "linux" && d.Platform.Architecture == ps.Arch {
					found = true
				}
				if d.Digest.String() == ps.SBOM && d.ArtifactType == sbomMediaType {
					sbomFound = true
				}
			}
			if !found || !sbomFound {
				t.Errorf("%s linux/%s: the index lacks the platform's manifest (%v) or its SBOM (%v): %+v", s.Name, ps.Arch, found, sbomFound, im.Manifests)
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			c := cf.Config
			if cf.Architecture != ps.Arch || cf.OS != "linux" || c.User != nonroot || !slices.Equal(c.Entrypoint, spec.Entrypoint) || !slices.Equal(c.Cmd, spec.Cmd) {
				t.Errorf("%s linux/%s: config %s/%s user %q entrypoint %q cmd %q", s.Name, ps.Arch, cf.OS, cf.Architecture, c.User, c.Entrypoint, c.Cmd)
			}
			for k, v := range map[string]string{
				"source": sourceURL, "version": o.Version, "revision": o.Revision, "created": "2026-01-01T00:00:00Z",
				"licenses": "Apache-2.0", "title": spec.Title, "description": spec.Description,
			} {
				if got := c.Labels["org.opencontainers.image."+k]; got != v {
					t.Errorf("%s: label org.opencontainers.image.%s = %q, want %q", s.Name, k, got, v)
				}
			}
			files := imageFiles(t, img)
			checkFile(t, files, "/etc/passwd", 0o644, 0, 0)
			checkFile(t, files, "/tmp", 0o1777, 0, 0)
			checkFile(t, files, "/home/nonroot", 0o700, 65532, 65532)
			checkFile(t, files, spec.Binary, 0o755, 0, 0)
			if !strings.Contains(string(files["/etc/passwd"].data), "nonroot:x:65532:65532:") {
				t.Errorf("/etc/passwd lacks nonroot: %s", files["/etc/passwd"].data)
			}
			if n := strings.Count(string(files["/etc/ssl/certs/ca-certificates.crt"].data), "BEGIN CERTIFICATE"); n < 100 {
				t.Errorf("the CA bundle holds %d certificates", n)
			}
			checkStatic(t, files[spec.Binary].data, ps.Arch)

			// The SBOM: the same document in the image and attached.
			doc := files[sbomPath].data
			art, err := idx.Image(mustHash(t, ps.SBOM))
			if err != nil {
				t.Fatal(err)
			}
			am, _ := art.Manifest()
			if am.ArtifactType != sbomMediaType || am.Subject == nil || am.Subject.Digest != h || len(am.Layers) != 1 {
				t.Fatalf("SBOM artifact manifest: %+v", am)
			}
			l, err := art.LayerByDigest(am.Layers[0].Digest)
			if err != nil {
				t.Fatal(err)
			}
			rc, _ := l.Compressed()
			attached, _ := io.ReadAll(rc)
			rc.Close()
			if !bytes.Equal(doc, attached) {
				t.Errorf("%s linux/%s: the attached SBOM differs from %s", s.Name, ps.Arch, sbomPath)
			}
			var sb spdxDoc
			if err := json.Unmarshal(doc, &sb); err != nil {
				t.Fatalf("SBOM: %v", err)
			}
			versions := map[string]string{}
			for _, pk := range sb.Packages {
				versions[pk.Name] = pk.VersionInfo
			}
			// Spot checks against go.mod: a module both binaries link in.
			for _, r := range mf.Require {
				if r.Mod.Path == "github.com/hashicorp/yamux" && versions[r.Mod.Path] != r.Mod.Version {
					t.Errorf("SBOM: %s at %q, go.mod says %s", r.Mod.Path, versions[r.Mod.Path], r.Mod.Version)
				}
			}
			if !bytes.Contains(doc, []byte(`"git+`+sourceURL+"@"+o.Revision+`"`)) {
				t.Errorf("SBOM: the binary's download location lacks the revision %s", o.Revision)
			}
			if versions[modulePath] != o.Version || versions[caModule] == "" || !strings.HasPrefix(versions["stdlib"], "go1.") {
				t.Errorf("SBOM lacks the binary, the CA bundle or the standard library: %v", versions)
			}

			// The docker-archive is the same image (same image ID).
			ai, err := tarball.ImageFromPath(filepath.Join(dir, ps.Archive), nil)
			if err != nil {
				t.Fatal(err)
			}
			if cn, _ := ai.ConfigName(); cn.String() != ps.Config {
				t.Errorf("%s: the archive's image ID %s, the layout's %s", ps.Archive, cn, ps.Config)
			}
		}
	}
}

func mustHash(t *testing.T, s string) v1.Hash {
	t.Helper()
	h, err := v1.NewHash(s)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// file is one tar entry of an image.
type file struct {
	mode     int64
	uid, gid int
	mtime    time.Time
	data     []byte
}

// imageFiles reads every file of img's layers (later layers win).
func imageFiles(t *testing.T, img v1.Image) map[string]file {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]file{}
	for _, l := range ls {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		var names []string
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			names = append(names, h.Name)
			data, _ := io.ReadAll(tr)
			files["/"+strings.TrimSuffix(h.Name, "/")] = file{h.Mode, h.Uid, h.Gid, h.ModTime, data}
		}
		rc.Close()
		if !slices.IsSorted(names) {
			t.Errorf("layer entries not sorted: %q", names)
		}
	}
	return files
}

func checkFile(t *testing.T, files map[string]file, path string, mode int64, uid, gid int) {
	t.Helper()
	f, ok := files[path]
	if !ok {
		t.Errorf("no %s in the image", path)
		return
	}
	if f.mode != mode || f.uid != uid || f.gid != gid || !f.mtime.Equal(time.Unix(1767225600, 0)) {
		t.Errorf("%s: mode %o owner %d:%d mtime %v, want %o %d:%d 2026-01-01", path, f.mode, f.uid, f.gid, f.mtime, mode, uid, gid)
	}
}

// checkStatic fails unless bin is an ELF executable for arch with no
// program interpreter (statically linked: the image has no libc).
func checkStatic(t *testing.T, bin []byte, arch string) {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[arch]
	if f.Machine != want {
		t.Errorf("binary for %s is %v", arch, f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("binary for %s is dynamically linked", arch)
		}
	}
	if f.Section(".symtab") != nil {
		t.Errorf("binary for %s is not stripped (-s)", arch)
	}
}

// TestLayerReproducible checks the layer function alone: order of the
// entries given does not matter, the timestamp does.
func TestLayerReproducible(t *testing.T) {
	at := time.Unix(1e9, 0)
	es := baseEntries([]byte("ca"))
	d := func(es []entry, at time.Time) string {
		l, err := layer(es, at)
		if err != nil {
			t.Fatal(err)
		}
		h, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return h.String()
	}
	rev := slices.Clone(es)
	slices.Reverse(rev)
	if d(es, at) != d(rev, at) {
		t.Error("the order of the entries changes the layer")
	}
	if d(es, at) == d(es, at.Add(time.Second)) {
		t.Error("the timestamp does not reach the layer")
	}
	if _, err := layer(append(es, es[0]), at); err == nil {
		t.Error("a path given twice was accepted")
	}
}

package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

// dockerStage is what the Dockerfile says of one stage.
type dockerStage struct {
	From       string
	Copies     [][]string // COPY arguments, flags included
	Runs       []string
	User       string
	Entrypoint []string
	Cmd        []string
	Expose     []string
	json       map[string]bool // instruction → written in JSON form
}

// parseDockerfile parses a Dockerfile with BuildKit's own parser (the one
// `docker build` uses) into its stages by name (FROM ... AS name).
func parseDockerfile(src []byte) (map[string]*dockerStage, error) {
	res, err := parser.Parse(bytes.NewReader(src))
	if err != nil {
		return nil, err
	}
	stages := map[string]*dockerStage{}
	var cur *dockerStage
	for _, n := range res.AST.Children {
		var args []string
		for a := n.Next; a != nil; a = a.Next {
			args = append(args, a.Value)
		}
		switch strings.ToLower(n.Value) {
		case "from":
			cur = &dockerStage{json: map[string]bool{}}
			if len(args) == 3 && strings.EqualFold(args[1], "as") {
				stages[args[2]] = cur
			}
			flags := strings.Join(n.Flags, " ")
			cur.From = strings.TrimSpace(flags + " " + args[0])
			continue
		case "arg":
			continue
		}
		if cur == nil {
			return nil, fmt.Errorf("line %d: %s before FROM", n.StartLine, n.Value)
		}
		cur.json[strings.ToLower(n.Value)] = n.Attributes["json"]
		switch strings.ToLower(n.Value) {
		case "copy":
			cur.Copies = append(cur.Copies, append(slices.Clone(n.Flags), args...))
		case "run":
			cur.Runs = append(cur.Runs, strings.Join(args, " "))
		case "user":
			cur.User = strings.Join(args, " ")
		case "entrypoint":
			cur.Entrypoint = args
		case "cmd":
			cur.Cmd = args
		case "expose":
			for _, p := range args {
				if !strings.Contains(p, "/") {
					p += "/tcp"
				}
				cur.Expose = append(cur.Expose, p)
			}
		}
	}
	return stages, nil
}

// dockerfileDiffs lists every way the Dockerfile's images differ from the
// images this program builds: the same binaries from the same packages,
// built the same way, at the same paths, the same user, entrypoint, command
// and ports. cfgs are the image configs this program makes, by image name.
func dockerfileDiffs(src []byte, cfgs map[string]v1.Config) ([]string, error) {
	stages, err := parseDockerfile(src)
	if err != nil {
		return nil, err
	}
	var diffs []string
	add := func(format string, a ...any) { diffs = append(diffs, fmt.Sprintf(format, a...)) }
	build := stages["build"]
	if build == nil {
		return []string{"no stage \"build\" (FROM ... AS build)"}, nil
	}
	runs := strings.Join(build.Runs, "\n")
	for _, want := range []string{"CGO_ENABLED=0", "GOARCH=$TARGETARCH", "-trimpath", `-ldflags "` + ldflags("$VERSION") + `"`, "-o /out/"} {
		if !strings.Contains(runs, want) {
			add("build stage: its go build lacks %s (hack/image builds with it)", want)
		}
	}
	for _, s := range specs {
		target := strings.TrimPrefix(s.Name, "keyhole-")
		st := stages[target]
		if st == nil {
			add("%s: no stage %q (docker build --target %s)", s.Name, target, target)
			continue
		}
		if !strings.Contains(runs, " "+s.Package) {
			add("%s: the build stage does not build %s", s.Name, s.Package)
		}
		if st.From != "$BASE_IMAGE" {
			add("%s: FROM %s, want FROM $BASE_IMAGE (distroless static nonroot, which hack/image's base stands for)", s.Name, st.From)
		}
		wantCopy := []string{"--from=build", "/out/" + binaryName(s.Package), s.Binary}
		if !slices.ContainsFunc(st.Copies, func(c []string) bool { return slices.Equal(c, wantCopy) }) {
			add("%s: no COPY %s (have %q)", s.Name, strings.Join(wantCopy, " "), st.Copies)
		}
		cfg := cfgs[s.Name]
		if st.User != cfg.User {
			add("%s: USER %q, image config user %q", s.Name, st.User, cfg.User)
		}
		if !slices.Equal(st.Entrypoint, cfg.Entrypoint) || (len(st.Entrypoint) > 0 && !st.json["entrypoint"]) {
			add("%s: ENTRYPOINT %q (JSON form: %v), image config %q", s.Name, st.Entrypoint, st.json["entrypoint"], cfg.Entrypoint)
		}
		if !slices.Equal(st.Cmd, cfg.Cmd) || (len(st.Cmd) > 0 && !st.json["cmd"]) {
			add("%s: CMD %q (JSON form: %v), image config %q", s.Name, st.Cmd, st.json["cmd"], cfg.Cmd)
		}
		var ports []string
		for p := range cfg.ExposedPorts {
			ports = append(ports, p)
		}
		slices.Sort(ports)
		expose := slices.Sorted(slices.Values(st.Expose))
		if !slices.Equal(expose, ports) {
			add("%s: EXPOSE %q, image config %q", s.Name, expose, ports)
		}
	}
	return diffs, nil
}

// builtConfigs are the configs image() gives the images of specs (with a
// stand-in binary: the config does not depend on it).
func builtConfigs(t *testing.T) map[string]v1.Config {
	t.Helper()
	o := options{Version: "test", Repo: "example.com/x", Revision: "0123", Created: time.Unix(1e9, 0).UTC(), Platforms: []string{"amd64"}}
	base, err := layer(baseEntries([]byte("ca")), o.Created)
	if err != nil {
		t.Fatal(err)
	}
	cfgs := map[string]v1.Config{}
	for _, s := range specs {
		img, err := image(o, s, "amd64", base, []byte("binary"), []byte("license"), []byte("{}"), 1, "v0")
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cfgs[s.Name] = cf.Config
	}
	return cfgs
}

// TestDockerfileEquivalent keeps the Dockerfile (for people who build with
// Docker) and hack/image (what CI builds and runs) describing the same
// images.
func TestDockerfileEquivalent(t *testing.T) {
	root, err := findRoot("")
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	cfgs := builtConfigs(t)
	diffs, err := dockerfileDiffs(src, cfgs)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range diffs {
		t.Errorf("Dockerfile and hack/image differ: %s (change both, or neither)", d)
	}

	// The check itself: each of these edits to the Dockerfile is caught.
	for _, tc := range []struct{ old, new, want string }{
		{"USER 65532:65532\nENTRYPOINT [\"/usr/local/bin/keyhole-agent\"]", "USER 0\nENTRYPOINT [\"/usr/local/bin/keyhole-agent\"]", "keyhole-agent: USER"},
		{`ENTRYPOINT ["/usr/local/bin/keyhole-stub"]`, `ENTRYPOINT /usr/local/bin/keyhole-stub`, "keyhole-stub: ENTRYPOINT"},
		{`CMD ["serve", "--config", "/etc/keyhole/stub.yaml"]`, `CMD ["serve"]`, "keyhole-stub: CMD"},
		{"EXPOSE 8443", "EXPOSE 9443", "keyhole-stub: EXPOSE"},
		{"/out/agent /usr/local/bin/keyhole-agent", "/out/agent /bin/keyhole-agent", "keyhole-agent: no COPY"},
		{"-trimpath", "", "lacks -trimpath"},
		{"./cmd/stub ./cmd/agent", "./cmd/stub", "does not build ./cmd/agent"},
		{"FROM $BASE_IMAGE AS stub", "FROM alpine AS stub", "keyhole-stub: FROM alpine"},
	} {
		if !bytes.Contains(src, []byte(tc.old)) {
			t.Errorf("self-check: the Dockerfile no longer contains %q; update this test's edits", tc.old)
			continue
		}
		diffs, err := dockerfileDiffs(bytes.Replace(src, []byte(tc.old), []byte(tc.new), 1), cfgs)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(diffs, func(d string) bool { return strings.Contains(d, tc.want) }) {
			t.Errorf("self-check: replacing %q by %q went unnoticed (want a difference containing %q, got %q)", tc.old, tc.new, tc.want, diffs)
		}
	}
}

package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// goBuild cross-compiles the main packages of specs for linux/arch into
// dir, as the Dockerfile does: static (CGO_ENABLED=0), -trimpath, stripped,
// with main.version set. The toolchain's environment is fixed here (GOAMD64,
// GOARM64, no GOFLAGS or GOEXPERIMENT from the caller), so that the same
// checkout and Go version give the same bytes.
func goBuild(root, dir, arch, version string) error {
	args := []string{"build", "-trimpath", "-buildvcs=auto", "-ldflags", ldflags(version), "-o", dir + string(filepath.Separator)}
	for _, s := range specs {
		args = append(args, s.Package)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	env := []string{}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "GOFLAGS", "GOOS", "GOARCH", "GOAMD64", "GOARM64", "CGO_ENABLED", "GOEXPERIMENT", "GOWORK", "GO111MODULE":
			continue
		}
		env = append(env, kv)
	}
	cmd.Env = append(env, "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch,
		"GOAMD64=v1", "GOARM64=v8.0", "GOFLAGS=-mod=readonly", "GOWORK=off")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s (GOARCH=%s, in %s): %v\n%s", strings.Join(args, " "), arch, root, err, out.Bytes())
	}
	return nil
}

// ldflags are the linker flags of a release binary: stripped, with
// main.version set (the Dockerfile passes the same, with $VERSION).
func ldflags(version string) string { return "-s -w -X main.version=" + version }

// binaryName is the file go build writes for a main package.
func binaryName(pkg string) string { return filepath.Base(pkg) }

package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/pem"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/crypto/x509roots/fallback/bundle"
)

// entry is one file or directory of a layer. Owner is 0:0 unless UID/GID
// say otherwise; every entry gets the same modification time.
type entry struct {
	Path     string // absolute, e.g. /etc/passwd
	Dir      bool
	Mode     int64
	UID, GID int
	Data     []byte
}

// layer builds a reproducible OCI layer from entries: missing parent
// directories added (0755, root), entries sorted by path, one fixed time,
// no user or group names, gzip at a fixed level with an empty header. The
// same entries and time give the same bytes, hence the same digest.
func layer(entries []entry, mtime time.Time) (v1.Layer, error) {
	all := map[string]entry{}
	for _, e := range entries {
		p := path.Clean("/" + e.Path)
		if _, dup := all[p]; dup {
			return nil, fmt.Errorf("layer: %s twice", p)
		}
		e.Path = p
		all[p] = e
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if _, ok := all[d]; !ok {
				all[d] = entry{Path: d, Dir: true, Mode: 0o755}
			}
		}
	}
	paths := make([]string, 0, len(all))
	for p := range all {
		paths = append(paths, p)
	}
	slices.Sort(paths)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		e := all[p]
		h := &tar.Header{
			Name:    strings.TrimPrefix(p, "/"),
			Mode:    e.Mode,
			Uid:     e.UID,
			Gid:     e.GID,
			ModTime: mtime,
			Format:  tar.FormatPAX,
		}
		if e.Dir {
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.Data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.Data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	// Compressed once, here: go-containerregistry would compress again for
	// every read of an uncompressed layer (digest, layout, each archive).
	// gzip.Writer's header has no name and a zero time.
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(buf.Bytes()); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	b := gz.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// caBundle is the PEM bundle of /etc/ssl/certs/ca-certificates.crt: the
// Mozilla NSS roots as Go's golang.org/x/crypto/x509roots/fallback module
// ships them (pinned in this module's go.mod, checked against go.sum), in
// the module's order. Roots that carry a constraint X.509 cannot express
// (a distrust-after date) are left out: a PEM file would trust them without
// it. It returns the bundle and how many roots it holds.
func caBundle() ([]byte, int) {
	var b bytes.Buffer
	n := 0
	for r := range bundle.Roots() {
		if r.Constraint != nil {
			continue
		}
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: r.Certificate})
		n++
	}
	return b.Bytes(), n
}

// baseEntries is the base both images share, in place of
// gcr.io/distroless/static:nonroot: the CA bundle, the users root,
// nobody and nonroot (65532) with their groups, nonroot's home, /tmp, and
// an nsswitch.conf that has host names looked up in /etc/hosts first.
func baseEntries(ca []byte) []entry {
	return []entry{
		{Path: "/etc/group", Mode: 0o644, Data: []byte("root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n")},
		{Path: "/etc/passwd", Mode: 0o644, Data: []byte(
			"root:x:0:0:root:/root:/sbin/nologin\n" +
				"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n" +
				"nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		{Path: "/etc/nsswitch.conf", Mode: 0o644, Data: []byte("hosts: files dns\n")},
		{Path: "/etc/ssl/certs/ca-certificates.crt", Mode: 0o644, Data: ca},
		{Path: "/home/nonroot", Dir: true, Mode: 0o700, UID: 65532, GID: 65532},
		{Path: "/root", Dir: true, Mode: 0o700},
		{Path: "/tmp", Dir: true, Mode: 0o1777},
	}
}

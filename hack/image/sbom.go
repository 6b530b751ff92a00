package main

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"runtime/debug"
	"strings"
	"time"
)

// The SBOM is SPDX 2.3 JSON (https://spdx.github.io/spdx-spec/v2.3/), one
// document per image and platform, written into the image at sbomPath and
// attached to the image's manifest as an OCI artifact (see attach).
const (
	sbomPath      = "/usr/share/doc/keyhole/sbom.spdx.json"
	sbomMediaType = "application/spdx+json"
)

// caModule is the Go module the CA bundle comes from.
const caModule = "golang.org/x/crypto/x509roots/fallback"

type spdxDoc struct {
	SPDXVersion       string             `json:"spdxVersion"`
	DataLicense       string             `json:"dataLicense"`
	SPDXID            string             `json:"SPDXID"`
	Name              string             `json:"name"`
	DocumentNamespace string             `json:"documentNamespace"`
	CreationInfo      spdxCreation       `json:"creationInfo"`
	Packages          []spdxPackage      `json:"packages"`
	Relationships     []spdxRelationship `json:"relationships"`
}

type spdxCreation struct {
	Created  string   `json:"created"`
	Creators []string `json:"creators"`
}

type spdxPackage struct {
	Name                  string         `json:"name"`
	SPDXID                string         `json:"SPDXID"`
	VersionInfo           string         `json:"versionInfo,omitempty"`
	Supplier              string         `json:"supplier,omitempty"`
	DownloadLocation      string         `json:"downloadLocation"`
	FilesAnalyzed         bool           `json:"filesAnalyzed"`
	Checksums             []spdxChecksum `json:"checksums,omitempty"`
	LicenseConcluded      string         `json:"licenseConcluded"`
	LicenseDeclared       string         `json:"licenseDeclared"`
	CopyrightText         string         `json:"copyrightText"`
	Comment               string         `json:"comment,omitempty"`
	ExternalRefs          []spdxRef      `json:"externalRefs,omitempty"`
	PrimaryPackagePurpose string         `json:"primaryPackagePurpose,omitempty"`
}

type spdxChecksum struct {
	Algorithm string `json:"algorithm"`
	Value     string `json:"checksumValue"`
}

type spdxRef struct {
	Category string `json:"referenceCategory"`
	Type     string `json:"referenceType"`
	Locator  string `json:"referenceLocator"`
}

type spdxRelationship struct {
	Element string `json:"spdxElementId"`
	Type    string `json:"relationshipType"`
	Related string `json:"relatedSpdxElement"`
}

// sbomInput is what an SBOM describes.
type sbomInput struct {
	Spec    imageSpec
	Arch    string
	Version string
	// Revision is the commit built (the revision label).
	Revision string
	Created  time.Time
	// Binary is the built binary's content.
	Binary []byte
	// CAModule is the CA bundle's module as this program was built with it
	// (version and go.sum hash); CACount how many roots the bundle holds.
	CAModule *debug.Module
	CACount  int
}

// sbom writes the SPDX document of one image: the image, the binary (the
// main module, with the build settings Go embedded in it, and the commit),
// the Go standard library and every module linked in, from the binary's
// own build information (debug/buildinfo), and the CA bundle's module.
// Module hashes are go.sum's h1: hashes (base64 SHA-256 of the module's
// file list), given as SHA256 checksums in hex as Syft does, and verbatim in
// each package's comment.
func sbom(in sbomInput) ([]byte, error) {
	bi, err := buildinfo.Read(bytes.NewReader(in.Binary))
	if err != nil {
		return nil, fmt.Errorf("sbom: build information of %s: %w", in.Spec.Binary, err)
	}
	binSum := sha256.Sum256(in.Binary)
	settings := map[string]string{}
	var shown []string
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
		shown = append(shown, s.Key+"="+s.Value)
	}
	doc := spdxDoc{
		SPDXVersion: "SPDX-2.3", DataLicense: "CC0-1.0", SPDXID: "SPDXRef-DOCUMENT",
		Name: fmt.Sprintf("%s %s linux/%s", in.Spec.Name, in.Version, in.Arch),
		// Unique per content (SPDX asks for a unique URI), and the same for
		// the same build.
		DocumentNamespace: fmt.Sprintf("%s/spdx/%s/%s/linux-%s/%s", sourceURL, in.Spec.Name, in.Version, in.Arch, hex.EncodeToString(binSum[:])),
		CreationInfo: spdxCreation{
			Created:  in.Created.UTC().Format(time.RFC3339),
			Creators: []string{"Tool: keyhole-hack-image", "Organization: Keyhole"},
		},
	}
	add := func(p spdxPackage) {
		if p.LicenseConcluded == "" {
			p.LicenseConcluded = "NOASSERTION"
		}
		if p.LicenseDeclared == "" {
			p.LicenseDeclared = "NOASSERTION"
		}
		if p.CopyrightText == "" {
			p.CopyrightText = "NOASSERTION"
		}
		if p.DownloadLocation == "" {
			p.DownloadLocation = "NOASSERTION"
		}
		doc.Packages = append(doc.Packages, p)
	}
	rel := func(a, typ, b string) {
		doc.Relationships = append(doc.Relationships, spdxRelationship{a, typ, b})
	}

	add(spdxPackage{
		Name: in.Spec.Name, SPDXID: "SPDXRef-Image", VersionInfo: in.Version,
		Supplier: "Organization: Keyhole", DownloadLocation: sourceURL,
		LicenseDeclared: license, PrimaryPackagePurpose: "CONTAINER",
		Comment: fmt.Sprintf("The container image %s for linux/%s.", in.Spec.Name, in.Arch),
	})
	rel("SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-Image")

	add(spdxPackage{
		Name: bi.Main.Path, SPDXID: "SPDXRef-Binary", VersionInfo: in.Version,
		Supplier: "Organization: Keyhole", DownloadLocation: sourceURL,
		Checksums:       []spdxChecksum{{"SHA256", hex.EncodeToString(binSum[:])}},
		LicenseDeclared: license, PrimaryPackagePurpose: "APPLICATION",
		Comment: fmt.Sprintf("%s (package %s), built with %s; build settings: %s",
			in.Spec.Binary, bi.Path, bi.GoVersion, strings.Join(shown, " ")),
		ExternalRefs: []spdxRef{purl(bi.Main.Path, in.Version)},
	})
	rel("SPDXRef-Image", "CONTAINS", "SPDXRef-Binary")
	if rev := cmp.Or(in.Revision, settings["vcs.revision"]); rev != "" { // the revision label's commit, as --revision gives it
		doc.Packages[len(doc.Packages)-1].DownloadLocation = "git+" + sourceURL + "@" + rev
	}

	add(spdxPackage{
		Name: "stdlib", SPDXID: "SPDXRef-Go-stdlib", VersionInfo: bi.GoVersion,
		Supplier: "Organization: Go", DownloadLocation: "https://go.dev/dl/",
		LicenseDeclared: "BSD-3-Clause", PrimaryPackagePurpose: "LIBRARY",
		ExternalRefs: []spdxRef{purl("stdlib", bi.GoVersion)},
	})
	rel("SPDXRef-Binary", "DEPENDS_ON", "SPDXRef-Go-stdlib")

	for i, d := range bi.Deps {
		m := d
		comment := ""
		if d.Replace != nil {
			comment = fmt.Sprintf("%s@%s replaced by %s@%s. ", d.Path, d.Version, d.Replace.Path, d.Replace.Version)
			m = d.Replace
		}
		id := fmt.Sprintf("SPDXRef-Go-module-%d", i)
		add(modulePackage(id, m, comment))
		rel("SPDXRef-Binary", "DEPENDS_ON", id)
	}

	if in.CAModule != nil {
		p := modulePackage("SPDXRef-CA-bundle", in.CAModule,
			fmt.Sprintf("/etc/ssl/certs/ca-certificates.crt: the %d unconstrained Mozilla NSS roots of this module. ", in.CACount))
		p.LicenseDeclared = "BSD-3-Clause AND MPL-2.0"
		p.PrimaryPackagePurpose = "DATA"
		add(p)
		rel("SPDXRef-Image", "CONTAINS", "SPDXRef-CA-bundle")
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// modulePackage is the SPDX package of a Go module.
func modulePackage(id string, m *debug.Module, comment string) spdxPackage {
	p := spdxPackage{
		Name: m.Path, SPDXID: id, VersionInfo: m.Version,
		DownloadLocation:      "https://proxy.golang.org/" + escapePath(m.Path) + "/@v/" + m.Version + ".zip",
		PrimaryPackagePurpose: "LIBRARY",
		ExternalRefs:          []spdxRef{purl(m.Path, m.Version)},
	}
	if h, ok := strings.CutPrefix(m.Sum, "h1:"); ok {
		if raw, err := base64.StdEncoding.DecodeString(h); err == nil {
			p.Checksums = []spdxChecksum{{"SHA256", hex.EncodeToString(raw)}}
		}
		comment += "go.sum hash " + m.Sum + "."
	}
	p.Comment = strings.TrimSpace(comment)
	return p
}

// purl is a Go package URL (https://github.com/package-url/purl-spec).
func purl(path, version string) spdxRef {
	return spdxRef{"PACKAGE-MANAGER", "purl", "pkg:golang/" + path + "@" + version}
}

// escapePath is the module proxy's case encoding: each upper-case letter
// becomes '!' and its lower-case form.
func escapePath(p string) string {
	var b strings.Builder
	for _, r := range p {
		if 'A' <= r && r <= 'Z' {
			b.WriteByte('!')
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

#!/usr/bin/env bash
# Builds the keyhole-stub and keyhole-agent container images without Docker
# (hack/image: go-containerregistry, pinned in its own module so its
# dependencies stay out of Keyhole's go.mod):
#
#   hack/image.sh [--version V] [--platforms amd64,arm64] OUT_DIR
#
# OUT_DIR/keyhole-{stub,agent}/ are OCI image layouts (one multi-platform
# image index each, SBOMs attached); OUT_DIR/keyhole-{stub,agent}-linux-ARCH.tar
# are docker-archives for `podman load` and `kind load image-archive`;
# OUT_DIR/images.json lists digests and sizes. Same checkout, same digests:
# timestamps come from SOURCE_DATE_EPOCH (default: the last commit's time).
# See docs/operations.md, "Images".
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/keyhole-image.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
(cd "$root/hack/image" && GOWORK=off GOFLAGS=-mod=readonly go build -o "$tmp/image" .)
"$tmp/image" --root "$root" "$@"

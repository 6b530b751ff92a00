#!/usr/bin/env bash
# The one test command (README; .ci/run runs exactly this). On a fresh
# machine it builds and caches the real control plane first (hack/testbin.sh),
# then runs every package's tests with the race detector, including the
# end-to-end suite that drives the real kubectl through stub and agents,
# and one pass of the gateway-vs-direct benchmark so it cannot rot. Before
# the Go tests it checks that the committed console bundle (web/console/dist)
# is what hack/console.sh builds from its sources (npm's cache in
# ~/.cache/keyhole/npm).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v kubectl >/dev/null || { echo "test: kubectl is not on PATH (the e2e tests drive the real kubectl)" >&2; exit 1; }
KEYHOLE_TESTBIN="$(hack/testbin.sh)"
export KEYHOLE_TESTBIN

echo "== console bundle (hack/console.sh --check)" >&2
export npm_config_cache="${npm_config_cache:-$HOME/.cache/keyhole/npm}"
hack/console.sh --check

echo "== go vet" >&2
go vet ./...
echo "== go test -race ./..." >&2
go test -race -count=1 -timeout 45m ./...
echo "== hack/image: reproducible images (two builds, same digests), Dockerfile equivalence" >&2
# A separate module (go-containerregistry, BuildKit's Dockerfile parser stay
# out of Keyhole's go.mod). Cross-compiles both binaries for amd64 and arm64
# twice (the second from the build cache; docs/operations.md, "Images").
(cd hack/image && GOWORK=off go vet ./... && GOWORK=off go test -race -count=1 -timeout 30m ./...)
echo "== benchmark smoke run (figures: docs/benchmarks.md)" >&2
# BenchmarkStubScale with 200 streams here (its default, 10,000, takes minutes
# and more than a GiB).
KEYHOLE_SCALE_STREAMS=200 go test -count=1 -run '^$' -bench . -benchtime 1x -timeout 10m ./e2e/

# syntax=docker/dockerfile:1
# Keyhole images: one static binary each, on distroless static (CA roots for
# OIDC discovery and the stub's public certificate, no shell), as a numeric
# non-root user so Kubernetes' runAsNonRoot can verify it.
#
#   docker build --target stub  -t keyhole-stub  .
#   docker build --target agent -t keyhole-agent .
#
# CI does not build this file (there is no Docker engine there): it builds
# the same images without Docker, reproducibly, with SBOMs, for amd64 and
# arm64 (hack/image.sh; docs/operations.md, "Images"), runs them with podman
# (e2e/image_test.go), and checks that this file still describes them: same
# binaries and paths, user, entrypoint, command and port
# (hack/image/dockerfile_test.go). Change both together.
#
# Base images are pinned; bump them deliberately (BUILD_IMAGE by exact tag,
# matching go.mod's toolchain; BASE_IMAGE by digest).
ARG BUILD_IMAGE=golang:1.26.8-bookworm
ARG BASE_IMAGE=gcr.io/distroless/static:nonroot@sha256:e2e927ec666bae08560abb3c55d0659eceabb657f56b6782ab500a9fc7f555e3

FROM --platform=$BUILDPLATFORM $BUILD_IMAGE AS build
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X main.version=$VERSION" -o /out/ ./cmd/stub ./cmd/agent

FROM $BASE_IMAGE AS agent
COPY --from=build /out/agent /usr/local/bin/keyhole-agent
# Kubernetes only verifies numeric users (runAsNonRoot).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/keyhole-agent"]

FROM $BASE_IMAGE AS stub
COPY --from=build /out/stub /usr/local/bin/keyhole-stub
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/keyhole-stub"]
CMD ["serve", "--config", "/etc/keyhole/stub.yaml"]

#!/usr/bin/env bash
# Builds the real Helm of the chart tests into DIR (hack/testbin.sh calls it
# with its cache directory):
#
#   DIR/helm    Helm v4.3.1 (helm.sh/helm/v4, module hack/helm/v4)
#   DIR/helm3   Helm v3.22.0 (helm.sh/helm/v3, module hack/helm/v3)
#
# Usage: hack/helm.sh DIR
#
# Each Helm is built from pinned Go modules in a module of its own, so that
# Helm's Kubernetes libraries never meet the main module's (or each other's).
# The charts (install/helm) must work with both majors; e2e/helm_test.go
# runs helm for everything and helm3 for lint and template.
#
# Running it again is cheap: DIR/.helm-stamp records a hash of this script,
# of both modules' go.mod and go.sum and of the Go version, and a match ends
# the run at once. Concurrent runs on one DIR are serialised by a lock
# (DIR/.helm.lock). Measured: cold (empty module and build caches) 50 min
# for both on a 2-core machine shared with three other builds (load 15 to
# 30); with a warm build cache (e.g. after a change of this script) 45 s;
# a stamp match, instant. Progress goes to stderr.
set -euo pipefail

main() {
	HELM_VERSION=v4.3.1   # = helm.sh/helm/v4 in hack/helm/v4/go.mod
	HELM3_VERSION=v3.22.0 # = helm.sh/helm/v3 in hack/helm/v3/go.mod

	log() { echo "helm: $*" >&2; }

	[[ $# -eq 1 && -d "$1" ]] || { log "usage: $0 DIR (an existing directory)"; exit 2; }
	out="$(cd "$1" && pwd)"
	root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
	command -v go >/dev/null || { log "go is not on PATH"; exit 1; }

	export GOWORK=off
	export GOFLAGS="-mod=readonly -buildvcs=false"
	unset GOOS GOARCH

	stamp="$(
		{
			sha256sum <"$root/hack/helm.sh" | cut -d' ' -f1
			for m in v4 v3; do
				sha256sum <"$root/hack/helm/$m/go.mod" | cut -d' ' -f1
				sha256sum <"$root/hack/helm/$m/go.sum" | cut -d' ' -f1
			done
			(cd "$root/hack/helm/v4" && go env GOVERSION GOOS GOARCH)
			(cd "$root/hack/helm/v3" && go env GOVERSION)
		} | sha256sum | cut -d' ' -f1
	)"

	exec 9>"$out/.helm.lock"
	flock 9
	if [[ -x "$out/helm" && -x "$out/helm3" && "$(cat "$out/.helm-stamp" 2>/dev/null)" == "$stamp" ]]; then
		return 0 # built by this very script from these modules
	fi
	start=$SECONDS

	# build MODULE_DIR VERSION PKG NAME [LDFLAGS]: into a temporary name,
	# checked, then renamed, so no half-written helm is ever runnable.
	build() {
		local mod="$1" version="$2" pkg="$3" name="$4" extra="${5:-}" major
		major="$(basename "$mod")"
		log "go build $pkg $version (cold: minutes; warm: seconds)"
		(cd "$mod" && CGO_ENABLED=0 go build -trimpath \
			-ldflags "-X helm.sh/helm/$major/internal/version.version=$version -X helm.sh/helm/$major/internal/version.gitTreeState=clean $extra" \
			-o "$out/.$name.tmp" "$pkg")
		local got
		got="$("$out/.$name.tmp" version --template '{{.Version}}')"
		if [[ "$got" != "$version" ]]; then
			log "$name reports version $got, want $version"
			exit 1
		fi
		mv -f "$out/.$name.tmp" "$out/$name"
	}
	rm -f "$out/.helm-stamp"
	build "$root/hack/helm/v4" "$HELM_VERSION" helm.sh/helm/v4/cmd/helm helm
	# Helm 3 takes the Kubernetes version it renders and lints for without a
	# cluster (.Capabilities.KubeVersion, a chart's kubeVersion) from
	# ldflags, derived from its client-go as its Makefile does (v0.37.x ->
	# 1.37); without them it says v1.20. Helm 4 reads its build info.
	local cg k8s3=""
	cg="$(cd "$root/hack/helm/v3" && go list -f '{{.Version}}' -m k8s.io/client-go)" # v0.MINOR.PATCH
	cg="${cg#v0.}"
	for p in pkg/lint/rules pkg/chartutil; do
		k8s3+=" -X helm.sh/helm/v3/$p.k8sVersionMajor=1 -X helm.sh/helm/v3/$p.k8sVersionMinor=${cg%%.*}"
	done
	build "$root/hack/helm/v3" "$HELM3_VERSION" helm.sh/helm/v3/cmd/helm helm3 "$k8s3"
	echo "$stamp" >"$out/.helm-stamp"
	log "installed helm $HELM_VERSION and helm3 $HELM3_VERSION into $out in $((SECONDS - start))s"
}

main "$@"
exit
